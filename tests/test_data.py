"""Every dataset format loads from a tiny fixture, and bad files give clear errors."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from l2b.data import augment_batch, clean_val_split, load_dataset
from l2b.data.idx import FASHION_MNIST_DIR
from l2b.safe_pickle import UnsafePickleError, load_pickle


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def make_idx_dir(root: Path, gz: bool = False, n_train: int = 30, n_test: int = 10) -> Path:
    rng = np.random.Generator(np.random.PCG64(0))
    root.mkdir(exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, gz)
    return root


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files_load(tmp_path, gz):
    ds = load_dataset(f"mnist:{make_idx_dir(tmp_path / 'm', gz)}")
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_train.dtype == torch.uint8
    assert ds.y_test.tolist() == list(range(10))
    assert ds.num_classes == 10 and ds.augment == {"crop_padding": 0, "flip": False}


def test_idx_errors_name_file_and_problem(tmp_path):
    root = make_idx_dir(tmp_path / "m")
    img = root / "train-images-idx3-ubyte"
    good = img.read_bytes()
    img.write_bytes(b"\x00\x00\x09\x03" + good[4:])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte: wrong magic number 00000903"):
        load_dataset(f"mnist:{root}")
    img.write_bytes(good[:-100])
    with pytest.raises(ValueError, match="truncated"):
        load_dataset(f"mnist:{root}")
    img.write_bytes(good)
    write_idx(root / "train-labels-idx1-ubyte", np.arange(29) % 10)
    with pytest.raises(ValueError, match="train has 30 images but 29 labels"):
        load_dataset(f"mnist:{root}")
    (root / "t10k-labels-idx1-ubyte").unlink()
    write_idx(root / "train-labels-idx1-ubyte", np.arange(30) % 10)
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz found"):
        load_dataset(f"mnist:{root}")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_dataset(f"mnist:{tmp_path / 'missing'}")


def test_idx_labels_outside_classes_are_rejected(tmp_path):
    root = make_idx_dir(tmp_path / "m")
    write_idx(root / "train-labels-idx1-ubyte", np.r_[np.arange(29) % 10, 12])
    with pytest.raises(ValueError, match="train label 12 at index 29 is outside \\[0, 10\\)"):
        load_dataset(f"mnist:{root}")


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_from_debian_package():
    ds = load_dataset("fashion-mnist")
    assert ds.x_train.shape == (60_000, 1, 28, 28) and ds.x_test.shape == (10_000, 1, 28, 28)
    assert torch.bincount(ds.y_train).tolist() == [6000] * 10
    assert ds.classes[0] == "T-shirt/top" and ds.asymmetric_map[6] == 0


def test_digits_has_a_fixed_balanced_test_split():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.x_train.shape == (1297, 1, 8, 8) and a.x_test.shape == (500, 1, 8, 8)
    assert torch.equal(a.y_test, b.y_test) and torch.equal(a.x_train, b.x_train)
    assert torch.bincount(a.y_test).tolist() == [50] * 10
    assert a.x_train.max() == 255


def _cifar_dir(root: Path, n: int = 20) -> Path:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.Generator(np.random.PCG64(0))
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, n).tolist())}
        (base / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


def test_cifar10_python_pickles_load(tmp_path):
    ds = load_dataset(f"cifar10:{_cifar_dir(tmp_path)}")
    assert ds.x_train.shape == (100, 3, 32, 32) and ds.x_test.shape == (20, 3, 32, 32)
    assert ds.augment == {"crop_padding": 4, "flip": True}
    raw = load_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_1")
    assert torch.equal(ds.x_train[0], torch.from_numpy(raw[b"data"][0].reshape(3, 32, 32)))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_pickle_does_not_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = _cifar_dir(tmp_path / "c")
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil()}))
    with pytest.raises(UnsafePickleError, match="data_batch_3: refusing to load posix.system"):
        load_dataset(f"cifar10:{root}")
    assert not (tmp_path / "PWNED").exists()


def test_truncated_cifar_batch_is_reported(tmp_path):
    root = _cifar_dir(tmp_path)
    f = root / "cifar-10-batches-py" / "test_batch"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(ValueError, match="test_batch: not a readable pickle.*truncated"):
        load_dataset(f"cifar10:{root}")


def test_cifar100_exposes_coarse_labels_and_superclass_map(tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    rng = np.random.Generator(np.random.PCG64(0))
    fine_to_coarse = (np.arange(100) * 7) % 20  # not contiguous blocks
    for name, n in (("train", 300), ("test", 50)):
        fine = rng.integers(0, 100, n)
        fine[:100] = np.arange(100) if name == "train" else fine[:100]
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"fine_labels": fine.tolist(), b"coarse_labels": fine_to_coarse[fine].tolist()}
        (base / name).write_bytes(pickle.dumps(batch, protocol=2))
    ds = load_dataset(f"cifar100:{tmp_path}")
    assert ds.num_classes == 100 and torch.equal(ds.coarse_train, torch.from_numpy(fine_to_coarse[ds.y_train.numpy()]))
    for src, dst in ds.asymmetric_map.items():
        assert fine_to_coarse[src] == fine_to_coarse[dst] and src != dst


def test_npz_with_and_without_a_given_clean_set(tmp_path):
    rng = np.random.Generator(np.random.PCG64(0))
    f = tmp_path / "mine.npz"
    arrays = dict(x_train=rng.integers(0, 256, (40, 12, 12, 3), dtype=np.uint8), y_train=np.arange(40) % 4,
                  x_test=rng.integers(0, 256, (8, 12, 12, 3), dtype=np.uint8), y_test=np.arange(8) % 4)
    np.savez(f, **arrays, classes=np.array(["a", "b", "c", "d"]))
    ds = load_dataset(f"npz:{f}")
    assert ds.x_train.shape == (40, 3, 12, 12) and ds.x_val is None and ds.classes == ("a", "b", "c", "d")
    assert torch.equal(ds.x_train[1, 2], torch.from_numpy(arrays["x_train"][1, :, :, 2]))
    np.savez(f, **arrays, x_val=arrays["x_test"], y_val=arrays["y_test"])
    assert load_dataset(f"npz:{f}").x_val.shape == (8, 3, 12, 12)
    np.savez(f, **{**arrays, "x_train": arrays["x_train"].astype(np.float32)})
    with pytest.raises(ValueError, match=r"x_train has dtype float32 \(values \d+\.\.\d+\); store images as uint8 \(0-255\): x_train = x_train.round\(\)\.astype"):
        load_dataset(f"npz:{f}")
    np.savez(f, x_train=arrays["x_train"], y_train=arrays["y_train"])  # no test set: allowed, and empty
    assert load_dataset(f"npz:{f}").x_test.shape == (0, 3, 12, 12)
    np.savez(f, x_train=arrays["x_train"], y_train=arrays["y_train"], x_test=arrays["x_test"])
    with pytest.raises(ValueError, match=r"give both x_test and y_test, or neither"):
        load_dataset(f"npz:{f}")
    np.savez(f, x_test=arrays["x_test"], y_test=arrays["y_test"])
    with pytest.raises(ValueError, match=r"missing arrays \['x_train', 'y_train'\]"):
        load_dataset(f"npz:{f}")


def _png(path: Path, color) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), color).save(path)


def _folder(root: Path) -> Path:
    for split in ("train", "test", "val"):
        for c, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            for i in range(3):
                _png(root / split / c / f"{i}.png", color)
    return root


def test_image_folder_streams_normalised_batches(tmp_path):
    ds = load_dataset(f"folder:{_folder(tmp_path)}", image_size=8)
    assert ds.classes == ("cat", "dog") and len(ds.train) == 6 and len(ds.val) == 6
    x, y, idx = next(iter(ds.loader(ds.test, batch_size=6, train=False, workers=0)))
    assert x.shape == (6, 3, 8, 8) and y.tolist() == [0, 0, 0, 1, 1, 1]
    red = (torch.tensor([1.0, 0, 0]) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(x[0, :, 4, 4], red)
    xb, _, _ = next(iter(ds.loader(ds.train, batch_size=4, train=True, workers=1)))
    assert xb.shape == (4, 3, 8, 8)


def _speckled_folder(root: Path) -> Path:
    """Seven noisy 20x16 images of two classes: random crops and flips of them all differ."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(7):
        path = root / "train" / ("cat", "dog")[i % 2] / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(path)
    return root


def _file_split(root: Path, workers: int):
    from l2b.data.batches import FileData

    ds = load_dataset(f"folder:{root}", image_size=8)
    return FileData(ds, ds.train, [y for _, y in ds.train], torch.device("cpu"), workers)


def _same_batches(a, b) -> bool:
    return len(a) == len(b) and all(all(u == v if isinstance(u, int) else torch.equal(u, v) for u, v in zip(p, q))
                                    for p, q in zip(a, b))


def test_image_file_batches_are_the_same_whatever_the_number_of_loader_workers(tmp_path):
    """Each sample's random crop and flip are seeded by its place in the epoch, so --workers (which a
    resumed run may change) changes no batch; the augmentation still differs from epoch to epoch."""
    root = _speckled_folder(tmp_path)
    runs = [list(_file_split(root, w).epoch(3, seed=5, augment=True)) for w in (0, 1, 2)]
    assert _same_batches(runs[0], runs[1]) and _same_batches(runs[0], runs[2])
    plain = torch.cat([x for x, _, _, _ in _file_split(root, 0).epoch(7, seed=5, augment=False)])
    positions = torch.cat([idx for _, _, idx, _ in runs[0]])
    assert not torch.equal(torch.cat([x for x, _, _, _ in runs[0]]), plain[positions])  # cropped and flipped
    again = list(_file_split(root, 0).epoch(3, seed=5, augment=True))
    assert _same_batches(runs[0], again)


@pytest.mark.parametrize("sampling", ["cycle", "random"])
def test_clean_batches_of_image_files_come_through_one_loader_and_resume_exactly(tmp_path, monkeypatch, sampling):
    """A clean set of image files streams its passes through one DataLoader (a small clean set
    would otherwise start a loader, and its workers, at every step), batch for batch what its
    epochs give, and continues from a checkpointed position exactly."""
    from l2b.data.batches import CleanBatches

    data = _file_split(_speckled_folder(tmp_path), 1)
    loaders = []
    make = data.ds.loader
    monkeypatch.setattr(data.ds, "loader", lambda *a, **k: loaders.append(1) or make(*a, **k))
    clean = CleanBatches(data, 3, seed=2, sampling=sampling)
    drawn = [clean.next() for _ in range(8)]  # four passes of 3 + 3 (a last batch of one is dropped)
    assert len(loaders) == 1
    if sampling == "cycle":
        expected = [(x, y) for p in range(4) for x, y, _, _ in data.epoch(3, 2 * 7919 + p, augment=True)]
    else:
        expected = [next(iter(data.epoch(3, 2 * 7919 + 104729 + k, augment=True, batches=1)))[:2] for k in range(8)]
    assert _same_batches(drawn, expected)
    for stop in (2, 4, 5):  # mid-pass, at a pass's end, just after
        first = CleanBatches(data, 3, seed=2, sampling=sampling)
        for _ in range(stop):
            first.next()
        resumed = CleanBatches(data, 3, seed=2, sampling=sampling)
        resumed.load_state_dict(first.state_dict())
        assert _same_batches([resumed.next() for _ in range(8 - stop)], drawn[stop:])


def test_clean_batches_dropped_unclosed_stop_their_loader_workers_at_once(tmp_path):
    """A clean stream left without close() (a caller's error path) is freed as its last reference
    goes, and its loader's workers stop then: in a reference cycle it waited for the collector,
    whose shutdown of each loader took 5 s, at whatever later moment it ran."""
    import gc
    import multiprocessing

    from l2b.data.batches import CleanBatches

    data = _file_split(_speckled_folder(tmp_path), 1)
    before = {p.pid for p in multiprocessing.active_children()}
    clean = CleanBatches(data, 3, seed=2)
    clean.next()
    workers = [p for p in multiprocessing.active_children() if p.pid not in before]  # its loader's
    assert workers
    gc.disable()
    try:
        del clean  # no collector: freed by its reference count alone
        for w in workers:
            w.join(timeout=10)
        assert not any(w.is_alive() for w in workers)
    finally:
        gc.enable()


def test_where_loader_workers_are_costly_to_start_every_pass_reads_through_one_kept_loader(tmp_path, monkeypatch):
    """Where a loader worker starts as a fresh interpreter (spawn: macOS, Windows), the passes of a
    run (training epochs, evaluations, of any split) read through one loader whose workers start
    once; the batches are those of a loader per pass. A pass asked for while another is being read
    gets a loader of its own; closing the readers stops the workers."""
    import l2b.data.batches as batches
    from l2b.data.reader import _READERS, close_readers

    root = _speckled_folder(tmp_path)
    plain = _file_split(root, 0)
    expected = [list(plain.epoch(3, seed=s, augment=True)) for s in (5, 6)] + [list(plain.epoch(4, 0, augment=False))]
    monkeypatch.setattr(batches, "costly_worker_start", lambda: True)
    data = _file_split(root, 2)
    other = data.take([6, 0, 3])  # another split of the same dataset shares the reader
    pids = []
    for s in (5, 6):
        assert _same_batches(list(data.epoch(3, seed=s, augment=True)), expected[s - 5])
        (reader,) = [r for (i, _), r in _READERS.items() if i == id(data.ds)]
        pids.append(sorted(w.pid for w in reader.loader._iterator._workers))
    assert _same_batches(list(data.epoch(4, 0, augment=False)), expected[2])
    took = torch.cat([x for x, _, _, _ in other.epoch(3, 0, augment=False)])
    assert torch.equal(took, torch.cat([x for x, _, _, _ in expected[2]])[[6, 0, 3]])
    assert pids[0] == pids[1] == sorted(w.pid for w in reader.loader._iterator._workers)
    outer = data.epoch(3, seed=5, augment=True)
    first = next(outer)
    assert reader.busy and _same_batches(list(data.epoch(3, seed=6, augment=True)), expected[1])  # a loader of its own
    assert _same_batches([first, *outer], expected[0]) and not reader.busy
    left = data.epoch(3, seed=6, augment=True)
    next(left)
    left.close()  # a pass left early (an error mid-epoch): what the workers read ahead is discarded
    assert not reader.busy and _same_batches(list(data.epoch(3, seed=5, augment=True)), expected[0])
    workers = reader.loader._iterator._workers
    close_readers(data.ds)
    for w in workers:
        w.join(timeout=10)
    assert not any(w.is_alive() for w in workers) and not any(i == id(data.ds) for i, _ in _READERS)


def test_the_kept_loader_reads_the_same_batches_with_spawned_workers(tmp_path):
    """The kept loader where workers really are spawned: its dataset and keys cross to a fresh
    interpreter, and the batches equal those read without workers."""
    root = _speckled_folder(tmp_path)
    script = tmp_path / "spawned.py"
    script.write_text(
        "import multiprocessing, sys, torch\n"
        "from l2b.data import load_dataset\n"
        "from l2b.data.batches import FileData\n"
        "if __name__ == '__main__':\n"
        "    multiprocessing.set_start_method(sys.argv[2], force=True)\n"
        "    ds = load_dataset(f'folder:{sys.argv[1]}', image_size=8)\n"
        "    data = FileData(ds, ds.train, [y for _, y in ds.train], torch.device('cpu'), int(sys.argv[3]))\n"
        "    out = [b for s in (5, 6) for b in data.epoch(3, seed=s, augment=True)] + list(data.epoch(4, 0, augment=False))\n"
        "    torch.save([(x, y, i) for x, y, i, _ in out], sys.argv[4])\n")
    proc = subprocess.run([sys.executable, str(script), str(root), "spawn", "1", str(tmp_path / "spawned")],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = _file_split(root, 0)
    plain = [b for s in (5, 6) for b in data.epoch(3, seed=s, augment=True)] + list(data.epoch(4, 0, augment=False))
    assert _same_batches(torch.load(tmp_path / "spawned"), [(x, y, i) for x, y, i, _ in plain])


def test_unreadable_images_fail_or_skip_explicitly(tmp_path):
    root = _folder(tmp_path)
    bad = root / "train" / "dog" / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="1 unreadable image.*broken.png.*on_bad_images='skip'"):
        load_dataset(f"folder:{root}")
    with pytest.warns(UserWarning, match="skipped 1 unreadable image.*broken.png"):
        ds = load_dataset(f"folder:{root}", on_bad_images="skip")
    assert len(ds.train) == 6


def test_isic2019_csv_and_split_lists(tmp_path):
    header = "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK\n"
    rows = []
    for i in range(6):
        onehot = ["0.0"] * 9
        onehot[i % 8] = "1.0"
        rows.append(f"ISIC_{i:07d}," + ",".join(onehot))
        _png(tmp_path / "ISIC_2019_Training_Input" / f"ISIC_{i:07d}.jpg", (i * 40, 0, 0))
    (tmp_path / "ISIC_2019_Training_GroundTruth.csv").write_text(header + "\n".join(rows) + "\n")
    for split, ids in (("train", [0, 1, 2]), ("val", [3]), ("test", [4, 5])):
        (tmp_path / f"{split}.txt").write_text("".join(f"ISIC_{i:07d}\n" for i in ids))
    ds = load_dataset(f"isic2019:{tmp_path}")
    assert [y for _, y in ds.train] == [0, 1, 2] and [y for _, y in ds.test] == [4, 5]
    assert len(ds.val) == 1 and ds.num_classes == 8
    assert ds.transform == "isic" and ds.meta_augment
    (tmp_path / "val.txt").write_text("ISIC_9999999\n")
    with pytest.raises(ValueError, match="val.txt: image 'ISIC_9999999' is not in"):
        load_dataset(f"isic2019:{tmp_path}")
    for split in ("train", "val", "test"):  # the authors' ISIC/*.lst split files work as well
        (tmp_path / f"{split}.txt").rename(tmp_path / f"{split}.lst")
    (tmp_path / "val.lst").write_text("ISIC_0000003\n")
    ds = load_dataset(f"isic2019:{tmp_path}")
    assert [y for _, y in ds.train] == [0, 1, 2] and ds.val[0][1] == 3


def test_isic_transforms_are_the_authors(tmp_path):
    from PIL import Image

    from l2b.data.images import ImageFiles, _resized_crop_box

    path = tmp_path / "a.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
    test = ImageFiles([(path, 1)], 16, train=False, transform="isic")
    x, y, _ = test[0]
    with Image.open(path) as im:  # Resize((16, 16)), ToTensor, Normalize(ImageNet)
        ref = torch.from_numpy(np.asarray(im.convert("RGB").resize((16, 16), Image.BILINEAR)).copy())
    ref = ref.permute(2, 0, 1).float() / 255
    ref = (ref - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(x, ref) and None
    train = ImageFiles([(path, 1)], 16, train=True, transform="isic")
    torch.manual_seed(0)
    a = train[0][0]
    torch.manual_seed(0)
    assert torch.equal(a, train[0][0]) and a.shape == (3, 16, 16)
    assert not torch.equal(a, train[0][0])  # random flip / rotation / crop
    # RandomResizedCrop(scale=(0.3, 1)): the box covers 30-100% of the area, ratio in [3/4, 4/3]
    torch.manual_seed(1)
    for _ in range(200):
        top, left, h, w = _resized_crop_box(40, 30, (0.3, 1.0), (3 / 4, 4 / 3))
        assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 40
        assert 0.3 * 1200 * 0.9 <= h * w <= 1200 and 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_clothing1m_list_files(tmp_path):
    keys = [f"images/0/{i}.jpg" for i in range(6)]
    for i, k in enumerate(keys):
        _png(tmp_path / k, (0, i * 30, 0))
    (tmp_path / "noisy_label_kv.txt").write_text("".join(f"{k} {i % 14}\n" for i, k in enumerate(keys[:4])))
    (tmp_path / "clean_label_kv.txt").write_text("".join(f"{k} {13 - i}\n" for i, k in enumerate(keys)))
    (tmp_path / "noisy_train_key_list.txt").write_text("\n".join(keys[:4]))
    (tmp_path / "clean_val_key_list.txt").write_text(keys[4])
    (tmp_path / "clean_test_key_list.txt").write_text(keys[5])
    ds = load_dataset(f"clothing1m:{tmp_path}", image_size=8)
    assert [y for _, y in ds.train] == [0, 1, 2, 3] and ds.val[0][1] == 9 and ds.test[0][1] == 8
    assert ds.num_classes == 14
    # the authors' Clothing1M statistics, and the meta (clean) batches use the test transform
    assert ds.mean == (0.6959, 0.6537, 0.6371) and ds.std == (0.3113, 0.3192, 0.3214) and not ds.meta_augment
    (tmp_path / "clean_label_kv.txt").write_text(f"{keys[0]} 14\n")
    with pytest.raises(ValueError, match="clean_label_kv.txt, line 1"):
        load_dataset(f"clothing1m:{tmp_path}")


def test_unknown_dataset_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; valid datasets: digits, mnist"):
        load_dataset("imagenet:/x")


def test_clean_val_split_is_balanced_disjoint_reproducible():
    y = np.random.Generator(np.random.PCG64(0)).integers(0, 10, 5000)
    train, val = clean_val_split(y, per_class=100, seed=1)
    assert np.bincount(y[val]).tolist() == [100] * 10
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 5000
    t2, v2 = clean_val_split(y, total=1000, seed=1)
    assert np.array_equal(val, v2) and np.array_equal(train, t2)
    assert not np.array_equal(val, clean_val_split(y, per_class=100, seed=2)[1])


def test_clean_val_split_errors():
    y = np.r_[np.zeros(50, int), np.ones(5, int)]
    with pytest.raises(ValueError, match="class '1' has only 5 samples, fewer than the 10 per class"):
        clean_val_split(y, per_class=10)
    with pytest.raises(ValueError, match=r"a clean set of 15 cannot be split evenly over 2 classes; give a multiple of 2 \(--val-total; total= in Python\)"):
        clean_val_split(y, total=15)


def test_batched_crop_and_flip_take_windows_of_the_padded_image():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.uint8).reshape(2, 3, 5, 5)
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x, crop_padding=2, generator=g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, a:a + 5, b:b + 5] for a in range(5) for b in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    flipped = augment_batch(x.repeat(50, 1, 1, 1), flip=True, generator=torch.Generator().manual_seed(0))
    is_flipped = [torch.equal(f, x[i % 2].flip(-1)) for i, f in enumerate(flipped)]
    same = [torch.equal(f, x[i % 2]) for i, f in enumerate(flipped)]
    assert all(a or b for a, b in zip(is_flipped, same)) and 10 < sum(is_flipped) < 90
    again = augment_batch(x, crop_padding=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_mean_std_from_the_histogram_equals_the_float64_statistics():
    from l2b.data.arrays import ArrayDataset

    rng = np.random.Generator(np.random.PCG64(3))
    x = rng.integers(0, 256, (37, 3, 5, 4)).astype(np.uint8)
    x[:, 2] = 17  # a constant channel: its std is clamped, not zero
    ds = ArrayDataset("t", torch.from_numpy(x), torch.zeros(37, dtype=torch.int64), torch.from_numpy(x[:2]),
                      torch.zeros(2, dtype=torch.int64), ("a", "b"))
    mean, std = ds.mean_std()
    ref = x.astype(np.float64) / 255.0
    assert mean.dtype == std.dtype == torch.float32
    np.testing.assert_array_equal(mean.numpy(), ref.mean(axis=(0, 2, 3)).astype(np.float32))
    np.testing.assert_array_equal(std.numpy(), np.maximum(ref.std(axis=(0, 2, 3), ddof=1), 1e-3).astype(np.float32))


def test_idx_files_are_read_once_and_again_when_they_change(tmp_path):
    from l2b.data.idx import read_idx

    root = make_idx_dir(tmp_path / "m")
    img = root / "train-images-idx3-ubyte"
    first = read_idx(img)
    assert read_idx(img) is first and not first.flags.writeable  # shared, so nobody may change it
    ds = load_dataset(f"mnist:{root}")
    ds.x_train.zero_()  # a loaded dataset owns its tensors: changing them leaves the file's copy alone
    assert load_dataset(f"mnist:{root}").x_train.flatten().tolist() == first.flatten().tolist()
    write_idx(img, 255 - first.astype(np.int64))  # the same size, new content
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))
    assert read_idx(img).flatten().tolist() == (255 - first.astype(np.int64)).flatten().tolist()
