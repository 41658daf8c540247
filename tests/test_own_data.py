"""Training on your own labels: no noise injected unless asked, the data's own clean set used by
default, a clean set drawn from unverified labels warned about, and one line that says it all."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from l2b.cli import main
from l2b.config import TrainConfig


def digits_npz(path: Path, with_val: bool = True, flip: int = 0) -> Path:
    """The real digits as an npz of one's own: 8x8 uint8 images, with a clean set of 10 per class
    when ``with_val``; ``flip`` training labels moved to the next class (the user's own mistakes)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images * 16).clip(0, 255).astype(np.uint8)
    y = d.target.astype(np.int64)
    rng = np.random.Generator(np.random.PCG64(0))
    order = rng.permutation(len(y))
    test, val, train = order[:300], order[300:400], order[400:]
    y_train = y[train].copy()
    y_train[:flip] = (y_train[:flip] + 1) % 10
    arrays = dict(x_train=x[train], y_train=y_train, x_test=x[test], y_test=y[test])
    if with_val:
        arrays.update(x_val=x[val], y_val=y[val])
    np.savez(path, **arrays)
    return path


def run(tmp_path, capsys, *flags: str):
    code = main(["train", "--model", "mlp", "--width", "16", "--epochs", "1", "--batch-size", "128",
                 "--out", str(tmp_path / "run"), "--overwrite", "--progress", "lines", *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_defaults_resolve_by_whose_labels_they_are():
    assert TrainConfig().noise == "symmetric:0.4" and TrainConfig().val_per_class == 10  # research data
    for data in ("npz:x.npz", "folder:imgs", "isic2019:d", "clothing1m:d"):
        cfg = TrainConfig(data=data)
        assert cfg.noise == "none" and cfg.val_per_class is None
    assert TrainConfig(data="npz:x.npz", noise="symmetric:0.2").noise == "symmetric:0.2"  # asked by name
    cfg = TrainConfig(val_total=50)  # --val-total alone is not "both"
    assert cfg.val_per_class is None
    cfg.validate()


def test_own_npz_trains_on_its_labels_with_its_clean_set_and_says_so(tmp_path, capsys):
    f = digits_npz(tmp_path / "mine.npz", flip=40)
    code, out, err = run(tmp_path, capsys, "--data", f"npz:{f}", "--method", "l2b")
    assert code == 0, err
    line = next(t for t in out.splitlines() if t.startswith("data "))
    assert "train 1397, clean 100 (the dataset's own clean set), test 300" in line
    assert "no noise injected (your own labels as given)" in line
    labels = np.load(tmp_path / "run" / "labels.npz")
    assert np.array_equal(labels["noisy"], np.load(f)["y_train"])  # nothing injected
    assert len(labels["val_index"]) == 0  # no clean sample taken out of the training labels
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["config"]["noise"] == "none" and saved["data"]["clean_val"] == 100


def test_npz_images_of_a_wider_integer_type_within_0_255_load_unchanged(tmp_path):
    from l2b.data import load_dataset

    f = digits_npz(tmp_path / "mine.npz")
    z = dict(np.load(f))
    np.savez(tmp_path / "wide.npz", **{**z, "x_train": z["x_train"].astype(np.int64)})  # np.array of Python ints
    a, b = load_dataset(f"npz:{f}"), load_dataset(f"npz:{tmp_path / 'wide.npz'}")
    assert b.x_train.dtype == torch.uint8 and torch.equal(a.x_train, b.x_train)


def test_test_and_clean_images_that_copy_training_images_are_named(tmp_path, capsys):
    pytest.importorskip("PIL")
    import shutil

    from l2b.data import load_dataset

    f = digits_npz(tmp_path / "mine.npz")
    z = dict(np.load(f))
    z["x_test"][7] = z["x_train"][40]  # a training image also in the test set
    z["x_val"][[0, 1]] = z["x_train"][[3, 5]]  # verified images copied into the clean set, left in training
    np.savez(f, **z)
    with pytest.warns(UserWarning) as caught:
        load_dataset(f"npz:{f}")
    said = [str(w.message) for w in caught]
    assert any("1 of the 300 test images are copies of training images (e.g. x_test[7] = x_train[40])" in t for t in said)
    assert any("2 of the 100 clean images are copies of training images (e.g. x_val[0] = x_train[3])" in t for t in said)
    root = tmp_path / "photos"
    two_class_folder(root, {"train": 2}, side=lambda i: (12 + i, 12))
    two_class_folder(root, {"test": 1}, side=lambda i: (20, 12))  # no image the same as another
    shutil.copy(root / "train" / "dog" / "1.png", root / "test" / "dog" / "again.png")
    load_dataset(f"folder:{root}")
    err = capsys.readouterr().err
    assert f"1 of the 3 test images are copies of training images (e.g. {root / 'test' / 'dog' / 'again.png'} = " \
           f"{root / 'train' / 'dog' / '1.png'})" in err and "clean images" not in err


@pytest.mark.parametrize("method", ["glc", "distill"])
def test_the_data_line_comes_first_even_where_a_method_trains_before_its_epochs(tmp_path, capsys, method):
    f = digits_npz(tmp_path / "mine.npz")
    code, out, err = run(tmp_path, capsys, "--data", f"npz:{f}", "--method", method)
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"data npz:{f}: train 1397, clean 100")


def test_own_data_without_a_test_set_trains_compares_reports_and_finds_label_issues(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    f = digits_npz(tmp_path / "mine.npz", flip=60)
    z = dict(np.load(f))
    del z["x_test"], z["y_test"]  # labelled images, a verified clean set, and nothing held out
    np.savez(f, **z)
    code, out, err = run(tmp_path, capsys, "--data", f"npz:{f}", "--method", "l2b")
    assert code == 0, err
    assert "clean 100 (the dataset's own clean set), no test set (nothing held out to measure accuracy by)" in out
    assert " test " not in out.splitlines()[1] and "nan" not in out.lower()  # the epoch line: no test accuracy
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test_acc_last"] is None and metrics["test_acc_at_best_val"] is None
    assert main(["label-issues", str(tmp_path / "run")]) == 0
    assert main(["compare", "--data", f"npz:{f}", "--methods", "ce", "--model", "mlp", "--width", "16", "--epochs", "1",
                 "--out", str(tmp_path / "grid")]) == 0
    assert "| ce | no test set |" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "grid")]) == 0
    assert "Clean-set accuracy per epoch (no test set)" in (tmp_path / "grid" / "report.html").read_text()


def test_injected_noise_on_own_labels_is_named_in_the_line(tmp_path, capsys):
    f = digits_npz(tmp_path / "mine.npz")
    code, out, _ = run(tmp_path, capsys, "--data", f"npz:{f}", "--method", "ce", "--noise", "symmetric:0.4")
    assert code == 0
    assert "noise symmetric:0.4 injected on top of your own labels" in out


def test_clean_set_drawn_from_own_labels_is_warned_about(tmp_path, capsys):
    f = digits_npz(tmp_path / "mine.npz", with_val=False)
    code, _, err = run(tmp_path, capsys, "--data", f"npz:{f}", "--method", "l2b")
    assert code == 2 and "needs a clean (verified) set" in err and "--val-per-class K" in err
    code, out, err = run(tmp_path, capsys, "--data", f"npz:{f}", "--method", "l2b", "--val-total", "50")
    assert code == 0, err
    assert "inherits their errors" in err and "clean 50 (drawn from your training labels, 50 in all, unverified)" in out
    f = digits_npz(tmp_path / "mine.npz", with_val=True)
    code, _, err = run(tmp_path, capsys, "--data", f"npz:{f}", "--method", "l2b", "--val-per-class", "5")
    assert code == 0 and "own clean set (npz: x_val and y_val) is NOT used" in err


def test_compare_on_own_labels_needs_no_noise_flag(tmp_path, capsys):
    f = digits_npz(tmp_path / "mine.npz")
    assert main(["compare", "--data", f"npz:{f}", "--methods", "ce", "--model", "mlp", "--width", "16", "--epochs", "1",
                 "--out", str(tmp_path / "grid")]) == 0
    assert (tmp_path / "grid" / "ce" / "none" / "seed0" / "metrics.json").is_file()  # nothing injected
    assert "| ce | " in capsys.readouterr().out
    summary = (tmp_path / "grid" / "summary.md").read_text()
    assert "| method | your labels (no noise injected) | s / epoch |" in summary
    assert summary.startswith(f"Data: npz:{f}\n")  # what the grid trained on heads its summary
    (tmp_path / "fix.csv").write_text("index,label\n3,7\n")
    assert main(["compare", "--data", f"npz:{f}", "--methods", "ce", "--model", "mlp", "--width", "16", "--epochs", "1",
                 "--relabel", str(tmp_path / "fix.csv"), "--out", str(tmp_path / "fixed")]) == 0
    assert (tmp_path / "fixed" / "summary.md").read_text().startswith(f"Data: npz:{f}; --relabel {tmp_path / 'fix.csv'}\n")
    capsys.readouterr()
    assert main(["label-issues", str(tmp_path / "grid")]) == 2  # a grid, not a run: named, with one of its runs
    assert f"grid of 1 run: give one of them, e.g. l2b label-issues {tmp_path / 'grid' / 'ce' / 'none' / 'seed0'}" in \
        capsys.readouterr().err
    assert main(["compare", "--data", "digits", "--methods", "ce", "--out", str(tmp_path / "g2")]) == 2  # research data: named
    assert "(--methods M1,M2 and --noise SPEC1,SPEC2, or a --grid file with them)" in capsys.readouterr().err


def test_resumed_run_says_where_it_continues(tmp_path, capsys):
    from l2b.trainer import train

    cfg = TrainConfig(data="digits", model="mlp", width=16, epochs=3, method="ce", out=str(tmp_path / "run"),
                      progress="lines")
    train(cfg, stop_after_epoch=0)
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0
    assert "resuming at epoch 2/3" in capsys.readouterr().out
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0  # finished: said so, not "epoch 4/3"
    assert "already trained all 3 epochs, nothing to resume" in capsys.readouterr().out


def two_class_folder(root, sizes, side=lambda i: (12, 12)) -> None:
    """root/{train,val,test}/{cat,dog}/i.png: ``sizes`` images per class and split, the i-th of ``side(i)``."""
    from PIL import Image

    for split, n in sizes.items():
        for c, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", side(i), color).save(root / split / c / f"{i}.png")


def test_folder_val_is_used_by_default(tmp_path, capsys):
    pytest.importorskip("PIL")
    two_class_folder(tmp_path / "imgs", {"train": 6, "val": 2, "test": 2})
    code, out, err = run(tmp_path, capsys, "--data", f"folder:{tmp_path / 'imgs'}", "--method", "l2b",
                         "--image-size", "8", "--workers", "0")
    assert code == 0, err
    assert "train 12, clean 4 (the dataset's own clean set), test 4; no noise injected" in out


def test_folder_classes_read_their_sub_folders_and_skip_hidden_files(tmp_path, capsys):
    pytest.importorskip("PIL")
    from PIL import Image

    from l2b.data import load_dataset

    two_class_folder(tmp_path, {"train": 3, "test": 1})
    (tmp_path / "train" / "dog" / "puppies").mkdir()  # as torchvision's ImageFolder reads it: still a dog
    Image.new("RGB", (12, 12)).save(tmp_path / "train" / "dog" / "puppies" / "p.png")
    (tmp_path / "train" / "cat" / "._0.png").write_bytes(b"\0\5Mac")  # macOS's metadata twin, not an image
    (tmp_path / "train" / "cat" / ".thumbs").mkdir()
    Image.new("RGB", (12, 12)).save(tmp_path / "train" / "cat" / ".thumbs" / "t.png")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "val").mkdir()  # made, never filled
    ds = load_dataset(f"folder:{tmp_path}")
    assert "val: holds no image in class folders (val/<class>/*), so the dataset has no clean set of its own" in \
        capsys.readouterr().err
    assert ds.val == []
    names = sorted(str(f.relative_to(tmp_path / "train")) for f, _ in ds.train)
    assert names == ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png", "dog/2.png", "dog/puppies/p.png"]
    assert dict(ds.train)[tmp_path / "train" / "dog" / "puppies" / "p.png"] == ds.classes.index("dog")


def test_a_folder_of_class_folders_without_train_is_the_training_set_and_says_so(tmp_path, capsys):
    """torchvision's ImageFolder layout, DIR/<class>/*: the training set alone (no clean or test
    set), said on the console with how to give them; cropped at the images' own size. Hidden
    folders are no class, in either layout; val/ or test/ without train/ is still refused."""
    pytest.importorskip("PIL")
    from PIL import Image

    from l2b.data import load_dataset

    two_class_folder(tmp_path / "nested", {"train": 4})
    flat = tmp_path / "nested" / "train"
    (flat / ".ipynb_checkpoints").mkdir()  # Jupyter's, beside the class folders
    ds = load_dataset(f"folder:{flat}")
    err = capsys.readouterr().err
    assert f"{flat}: no train/ folder, so its 2 class folders (cat, dog) are the training set, with no clean or " \
        "test set" in err
    assert ds.classes == ("cat", "dog") and ds.val is None and ds.test == []
    nested = load_dataset(f"folder:{tmp_path / 'nested'}")  # the same images through DIR/train/
    assert [(f, y) for f, y in ds.train] == [(f, y) for f, y in nested.train]
    (flat / "cat" / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (12, 12)).save(flat / "cat" / ".ipynb_checkpoints" / "0-checkpoint.png")
    assert len(load_dataset(f"folder:{flat}").train) == 8  # nor its images
    code, out, err = run(tmp_path, capsys, "--data", f"folder:{flat}", "--method", "l2b", "--val-per-class", "1",
                         "--workers", "0")
    assert code == 0, err
    assert "train 6, clean 2 (drawn from your training labels, 1 per class, unverified), no test set" in out
    assert "12-px crops" in out
    (tmp_path / "only-val" / "val" / "cat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"only-val/train: not found; the folder layout is DIR/train/<class>/\*"):
        load_dataset(f"folder:{tmp_path / 'only-val'}")
    with pytest.raises(FileNotFoundError, match=r"nowhere: not found; the folder layout is"):
        load_dataset(f"folder:{tmp_path / 'nowhere'}")


def test_sixteen_bit_grayscale_is_read_over_its_full_range_and_float_pixels_are_refused(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    from l2b.data import load_dataset
    from l2b.data.images import ImageFiles

    two_class_folder(tmp_path, {"train": 2, "test": 1})
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1040)  # 0 .. 65520: an X-ray's 16 bits
    Image.fromarray(ramp).save(tmp_path / "train" / "cat" / "xray.png")
    assert Image.open(tmp_path / "train" / "cat" / "xray.png").mode.startswith("I")
    ds = load_dataset(f"folder:{tmp_path}")
    item = next(i for i, (f, _) in enumerate(ds.train) if f.name == "xray.png")
    x, _, _ = ImageFiles(ds.train, 7, train=False, mean=(0, 0, 0), std=(1, 1, 1))[item]  # 8 px: no resize, a 7-px crop
    # value / 257 in 8 bits (Pillow's own convert clips at 255: this ramp would be 98% white)
    assert torch.allclose(x[0], torch.from_numpy(np.rint(ramp[:7, :7] / 257.0) / 255.0).float(), atol=1e-6)
    assert (x[0] < 1).float().mean() > 0.95 and torch.equal(x[0], x[1])
    from types import SimpleNamespace

    from l2b.label_issue_files import sample_image

    shown = sample_image(SimpleNamespace(ds=ds), item)  # the suspects' picture reads it the same way
    assert np.array_equal(shown[..., 0], np.rint(ramp / 257.0).astype(np.uint8))
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(tmp_path / "train" / "dog" / "depth.tif")
    with pytest.raises(ValueError, match=r"depth.tif \(pixel mode F cannot be read as RGB; save it as 8- or 16-bit\)"):
        load_dataset(f"folder:{tmp_path}")


def test_a_large_photo_is_decoded_at_a_reduced_scale_to_nearly_the_same_crop(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    from PIL import Image

    import l2b.data.images as images
    from l2b.data import load_dataset

    two_class_folder(tmp_path, {"train": 2, "test": 1})
    yy, xx = np.mgrid[0:1200, 0:1600]
    photo = np.stack([xx * 255 // 1600, yy * 255 // 1200, (xx + yy) * 255 // 2800], axis=-1).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "train" / "cat" / "photo.jpg", quality=95)
    ds = load_dataset(f"folder:{tmp_path}", image_size=32)
    assert ds.own_photos  # the papers' datasets decode whole, as their authors' code does
    decoded, as_rgb = [], images.as_rgb
    monkeypatch.setattr(images, "as_rgb", lambda im: (decoded.append(im.size), as_rgb(im))[1])
    item = next(i for i, (f, _) in enumerate(ds.train) if f.name == "photo.jpg")
    whole = images.ImageFiles(ds.train, 32, train=False)[item][0]
    drafted = images.ImageFiles(ds.train, 32, train=False, own_photos=True)[item][0]
    assert decoded == [(1600, 1200), (200, 150)]  # 1/8 scale: its short side 150 still covers the 37-px resize
    assert (whole - drafted).abs().max() < 0.05 * 4.4  # within 5% of the pixel range (4.4: 1 / ImageNet's std)


def test_a_photo_is_turned_as_its_camera_tagged_it(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    from l2b.data.images import ImageFiles

    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :32, 0] = 255  # left half red, right half blue, as the sensor stored it
    stored[:, 32:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: shown turned 90 degrees clockwise, the left half on top
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    raw = ImageFiles([(tmp_path / "phone.jpg", 0)], 28, train=False, mean=(0, 0, 0), std=(1, 1, 1))[0][0]
    shown = ImageFiles([(tmp_path / "phone.jpg", 0)], 28, train=False, mean=(0, 0, 0), std=(1, 1, 1),
                       own_photos=True)[0][0]
    assert raw[0, :, :8].mean() > 0.9 and raw[2, :, -8:].mean() > 0.9  # the papers' datasets: as stored
    assert shown[0, :8].mean() > 0.9 and shown[2, -8:].mean() > 0.9  # your photos: red on top, blue below


def test_folder_images_keep_their_own_size_unless_a_size_or_pretrained_weights_ask_otherwise(tmp_path, capsys):
    pytest.importorskip("PIL")
    from l2b.config import TrainConfig

    # mixed sizes, short sides 10 and 14: the crop is the median short side of the training images
    two_class_folder(tmp_path / "imgs", {"train": 4, "val": 1, "test": 1}, lambda i: (19, 14) if i % 2 else (15, 10))
    code, out, err = run(tmp_path, capsys, "--data", f"folder:{tmp_path / 'imgs'}", "--method", "ce", "--workers", "0")
    assert code == 0, err
    assert "12-px crops" in out and "upscales" not in err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["image_size"] == 12
    # ImageNet-sized crops for pretrained weights and the paper's image datasets; a size given is kept
    assert TrainConfig(data=f"folder:{tmp_path / 'imgs'}", pretrained="w.pt").image_size == 224
    assert TrainConfig(data="isic2019:/data/isic").image_size == 224
    assert TrainConfig(data=f"folder:{tmp_path / 'imgs'}", image_size=20).image_size == 20
    # an unreadable image among those sized is passed over (loading names it, or skips it when asked)
    (tmp_path / "imgs" / "train" / "cat" / "0.png").write_bytes(b"not a png")
    assert TrainConfig(data=f"folder:{tmp_path / 'imgs'}", on_bad_images="skip").image_size == 14  # 3 of 10 px, 4 of 14


# ---------------------------------------------------------------- label issues on one's own labels

@pytest.mark.parametrize("labels, probs, expected", [
    ([0, -1, 1], [[0.9, 0.1]] * 3, r"labels\[1\] = -1: labels must be class indices 0..K-1, not negative"),
    ([0, 2, 1], [[0.9, 0.1]] * 3, r"labels\[1\] = 2 but pred_probs has 2 columns"),
    ([0, 1, 1], [[2.0, -1.0]] * 3, r"row 0 has negative entries: these look like logits"),
    ([0, 1, 1], [[3.0, 1.0]] * 3, r"row 0 sums to 4, not 1 .*apply a softmax"),
    ([0, 1, 1], [[0.9, 0.1], [np.nan, 0.5], [0.2, 0.8]], r"row 1 holds NaN or inf"),
    ([0.5, 1, 1], [[0.9, 0.1]] * 3, r"labels\[0\] = 0.5 is not a class index"),
    ([[0, 1]], [[0.9, 0.1]], r"labels must be 1-D"),
    ([0, 1], [[0.9, 0.1]] * 3, r"pred_probs must be \(n, classes\) with n = len\(labels\) = 2"),
], ids=["label -1", "label >= K", "logits", "rows not summing to 1", "NaN row", "float label", "2-D labels",
        "length mismatch"])
def test_find_label_issues_refuses_what_is_not_labels_and_probabilities(labels, probs, expected):
    import l2b

    with pytest.raises(ValueError, match=expected):
        l2b.find_label_issues(np.array(labels), np.array(probs))


def test_find_label_issues_takes_a_softmax_taken_in_bfloat16():
    """A softmax under bfloat16 autocast rounds each probability to 8 bits, and its rows sum to 1
    only within a few parts in a thousand: these are probabilities, taken as such (each row scaled
    to sum to 1, the caller's array untouched), flagging what the float64 softmax flags."""
    import l2b

    torch.manual_seed(0)
    logits = torch.randn(500, 100) * 3
    rng = np.random.default_rng(0)
    labels = logits.argmax(1).numpy()
    moved = rng.random(500) < 0.2
    labels[moved] = (labels[moved] + rng.integers(1, 100, int(moved.sum()))) % 100  # 20% of the labels wrong
    rough = torch.softmax(logits.bfloat16(), 1).double().numpy()
    assert np.abs(rough.sum(1) - 1).max() > 1e-3  # beyond float32's rounding
    before = rough.copy()
    exact = torch.softmax(logits.double(), 1).numpy()
    flagged = l2b.find_label_issues(labels, rough)
    assert np.array_equal(rough, before) and moved[flagged].sum() == moved.sum()  # every wrong label flagged
    from_exact = set(l2b.find_label_issues(labels, exact))
    assert len(from_exact ^ set(flagged)) <= 0.05 * len(from_exact)  # what the float64 softmax flags, to rounding


def test_label_issues_and_meta_set_selection_take_a_models_tensors_as_they_come():
    """Labels and probabilities straight from a model: torch tensors, still requiring grad, in
    bfloat16; the same answer as their float64 numpy values."""
    import l2b

    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    probs = torch.softmax(model(torch.randn(60, 5)), 1)  # requires grad
    labels = torch.randint(0, 3, (60,))
    expected = l2b.find_label_issues(labels.numpy(), probs.detach().double().numpy())
    assert len(expected) > 0
    for p in (probs, probs.detach().bfloat16()):
        flagged = l2b.find_label_issues(labels, p)
        assert len(set(flagged) ^ set(expected)) <= 1, p.dtype  # bfloat16 rounds a probability or two
        chosen = l2b.select_meta_set(labels, p, per_class=2, kind="small-loss")
        assert len(chosen.indices) == 6
    r = l2b.rank_label_issues(labels, torch.rand(60), torch.rand(60))  # weights as tensors
    assert len(r.score) == 60


_W = np.full(3, 0.5)
_P = np.array([[0.9, 0.1]] * 3)


@pytest.mark.parametrize("kwargs, expected", [
    (dict(alpha=np.array([0.5, np.nan, 0.5]), beta=_W), r"alpha holds NaN or inf \(epoch row 0, sample 1; 1 in all\)"),
    (dict(alpha=_W, beta=_W, seen=np.ones((2, 3), bool)), r"seen must have the shape of alpha or pseudo_labels \(\(1, 3\)\)"),
    (dict(alpha=_W, beta=_W, pseudo_labels=np.array([0.0, 1.0, 1.0])), r"pseudo_labels must be integer classes"),
    (dict(pred_probs=_P, alpha=_W, beta=_W, pseudo_labels=np.array([0, 5, 1])),
     r"pseudo_labels hold class 5, but there are 2 classes"),
    (dict(pred_probs=_P, clean_labels=np.array([0, 1]), clean_pred_probs=_P),
     r"clean_pred_probs must be \(n, classes\) with n = len\(clean_labels\) = 2, got shape \(3, 2\)"),
    (dict(pred_probs=_P, clean_labels=np.array([0, 2]), clean_pred_probs=np.full((2, 3), 1 / 3)),
     r"clean_pred_probs has 3 columns and pred_probs 2"),
], ids=["NaN weight", "seen's shape", "float pseudo-labels", "pseudo-label >= K", "clean length", "clean columns"])
def test_rank_label_issues_refuses_companions_that_do_not_fit(kwargs, expected):
    import l2b

    with pytest.raises(ValueError, match=expected):
        l2b.rank_label_issues(np.array([0, 1, 1]), **kwargs)


def test_the_calibrated_cut_follows_the_estimated_number_when_the_model_is_unsure():
    """A model that is right but unsure (0.4 on the true class of 10) fails a fixed 0.5 cut on
    every sample; confident learning's per-class thresholds still find the 30 wrong labels."""
    import l2b
    from l2b.calibrate import estimated_issues

    rng = np.random.Generator(np.random.PCG64(0))
    k, n = 10, 300
    true = np.arange(n) % k
    given = true.copy()
    wrong = rng.choice(n, 30, replace=False)
    given[wrong] = (true[wrong] + 1 + rng.integers(0, k - 1, 30)) % k
    probs = np.full((n, k), 0.6 / (k - 1))
    probs[np.arange(n), true] = 0.4
    probs += rng.uniform(0, 0.01, probs.shape)
    probs /= probs.sum(axis=1, keepdims=True)
    assert len(l2b.find_label_issues(given, probs, threshold=0.5)) == n  # the fixed cut flags everything
    assert estimated_issues(given, probs).sum() == 30
    flagged = l2b.find_label_issues(given, probs)
    assert sorted(flagged.tolist()) == sorted(wrong.tolist())
    for cut in ("per-class", "confident"):
        assert sorted(l2b.find_label_issues(given, probs, cut=cut).tolist()) == sorted(wrong.tolist())
    # held-out clean samples scored by the same model (exchangeable with the correct training labels):
    # every wrong label falls below 90% of their true-label probabilities, and about 10% of the
    # correct ones do (the conformal guarantee). A held-out set checks the count: confident learning
    # would flag none of its correct labels here, so the count stands.
    right = np.setdiff1d(np.arange(n), wrong)
    held = rng.choice(right, 100, replace=False)
    clean = {"clean_labels": true[held], "clean_pred_probs": probs[held]}
    checked = l2b.rank_label_issues(given, pred_probs=probs, **clean)
    assert checked.cut == "checked-count" and checked.false_alarms == 0.0
    assert sorted(checked.indices.tolist()) == sorted(wrong.tolist())
    r = l2b.rank_label_issues(given, pred_probs=probs, cut="clean-quantile", **clean)
    assert r.cut == "clean-quantile" and set(wrong.tolist()) <= set(r.indices.tolist())
    false_flags = len(set(r.indices.tolist()) - set(wrong.tolist()))
    assert 0 < false_flags <= 0.2 * len(right)
    # clean samples that steered training (a meta step) are treated by the model as it treats the
    # training samples of their class: the default is then the number their confusion explains,
    # here exactly the 30 wrong labels, the most suspect first
    s = l2b.rank_label_issues(given, pred_probs=probs, clean_steered=True, **clean)
    assert s.cut == "clean-confusion" and sorted(s.indices.tolist()) == sorted(wrong.tolist())
    with pytest.raises(ValueError, match="give clean_labels and clean_pred_probs together"):
        l2b.find_label_issues(given, probs, clean_labels=true[held])


def confusing_model(seed: int, mistake: list[float]):
    """A model over three classes that scores every other sample of class 0 around ``mistake`` and
    the rest around their own class: a function from true classes to its probabilities (seeded)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    around = {"0": [0.8, 0.1, 0.1], "0 as 1": mistake, "1": [0.1, 0.8, 0.1], "2": [0.1, 0.1, 0.8]}

    def scored(classes):
        kinds = ["0 as 1" if c == 0 and i % 2 else str(c) for i, c in enumerate(classes)]
        return np.stack([rng.dirichlet(200 * np.array(around[k])) for k in kinds])
    return scored


def test_a_held_out_clean_set_caps_the_count_where_confident_learning_flags_its_correct_labels():
    """The model confidently calls half of class 0 class 1, on held-out clean samples as on
    training samples; 40 samples of class 2 are labelled 0. Confident learning counts the model's
    mistakes as wrong labels, and flags as many of the clean set's correct labels: its false alarms
    reach 15%, so the default takes the smaller number, the one the clean set's confusion explains."""
    import l2b
    from l2b.calibrate import FALSE_ALARM_LIMIT, clean_confusion_issues, estimated_issues, false_alarms

    scored = confusing_model(seed=1, mistake=[0.05, 0.9, 0.05])  # sure of its mistake

    true = np.repeat(np.arange(3), 200)
    given = true.copy()
    given[400:440] = 0
    probs, clean_y = scored(true), np.repeat(np.arange(3), 40)
    clean_p = scored(clean_y)
    counted, explained = estimated_issues(given, probs).sum(), clean_confusion_issues(given, probs, (clean_y, clean_p)).sum()
    assert counted > 3 * 40 and abs(explained - 40) <= 0.25 * 40  # the count 3x, the mix within the target
    alarms = false_alarms(given, probs, (clean_y, clean_p))
    assert alarms >= FALSE_ALARM_LIMIT
    r = l2b.rank_label_issues(given, pred_probs=probs, clean_labels=clean_y, clean_pred_probs=clean_p)
    assert r.cut == "checked-count" and r.false_alarms == alarms and len(r.indices) == round(explained)
    # the same clean set, its mistakes taken away (a model sure of class 0): the count stands
    sure = clean_p.copy()
    sure[clean_y == 0] = scored(np.full(40, 2))[:, [2, 1, 0]]
    assert false_alarms(given, probs, (clean_y, sure)) < FALSE_ALARM_LIMIT
    assert len(l2b.find_label_issues(given, probs, clean_labels=clean_y, clean_pred_probs=sure)) == counted


def test_clean_confusion_counts_each_class_through_a_model_that_confuses_classes():
    """The model calls half of class 0 class 1, on clean and training samples alike; 30 samples of
    class 2 are labelled 0 and 20 of class 1 labelled 2. Confident learning counts the model's own
    mistakes on class 0 as wrong labels (and misses some in class 2); the clean set's confusion
    explains those mistakes, and what it leaves is the wrong labels, class by class."""
    import l2b
    from l2b.calibrate import clean_confusion_issues, estimated_issues

    scored = confusing_model(seed=0, mistake=[0.3, 0.6, 0.1])  # unsure of it

    true = np.repeat(np.arange(3), 200)
    given = true.copy()
    given[400:430], given[200:220] = 0, 2
    probs, clean_y = scored(true), np.repeat(np.arange(3), 50)
    clean = {"clean_labels": clean_y, "clean_pred_probs": scored(clean_y)}
    explained = clean_confusion_issues(given, probs, (clean_y, clean["clean_pred_probs"]))
    assert np.allclose(explained, [30, 0, 20], atol=2)
    counted = estimated_issues(given, probs)
    assert counted[0] > 45 and counted.sum() > 60  # the model's mistakes on class 0, counted as issues
    # the default where the clean set steered training: the smaller of the two numbers, most suspect first
    r = l2b.rank_label_issues(given, pred_probs=probs, clean_steered=True, **clean)
    assert r.cut == "clean-confusion" and len(r.indices) == round(explained.sum())
    assert np.array_equal(l2b.find_label_issues(given, probs, clean_steered=True, **clean), r.indices)
    wrong = np.flatnonzero(given != true)
    assert len(np.intersect1d(r.indices, wrong)) >= 0.9 * len(wrong)
    # a held-out clean set checks the count, and keeps it here: this model's mistakes on class 0 are
    # unsure ones (0.6 of class 1, below its threshold), so confident learning flags none of the
    # clean labels; the check sees confident mistakes only (the next test)
    held_out = l2b.rank_label_issues(given, pred_probs=probs, **clean)
    assert held_out.cut == "checked-count" and held_out.false_alarms == 0.0
    assert len(held_out.indices) == counted.sum()
    # a clean set without a labelled class leaves the default at the count, and asked for by name
    # it is one line naming the class
    partial = {k: v[clean_y != 2] for k, v in clean.items()}
    assert l2b.rank_label_issues(given, pred_probs=probs, clean_steered=True, **partial).cut == "count"
    with pytest.raises(ValueError, match="class 2 has none"):
        l2b.rank_label_issues(given, pred_probs=probs, cut="clean-confusion", **partial)
    with pytest.raises(ValueError, match="needs pred_probs and held-out clean samples"):
        l2b.find_label_issues(given, probs, cut="clean-confusion")


def test_label_issues_on_own_npz_score_the_drawn_clean_set_too(tmp_path, capsys):
    f = digits_npz(tmp_path / "mine.npz", with_val=False, flip=60)
    code, _, err = run(tmp_path, capsys, "--data", f"npz:{f}", "--method", "l2b", "--val-per-class", "5",
                       "--epochs", "8")
    assert code == 0, err
    run_dir = tmp_path / "run"
    assert main(["label-issues", str(run_dir), "--show", "12", "--out", str(tmp_path / "issues")]) == 0
    out = capsys.readouterr().out
    assert "50 clean samples drawn from your labels scored too" in out
    import csv

    rows = list(csv.DictReader(open(tmp_path / "issues" / "label_issues.csv")))
    assert {r["split"] for r in rows} <= {"train", "clean"}
    assert (tmp_path / "issues" / "label_issues.png").read_bytes()[:4] == b"\x89PNG"
    assert not (run_dir / "label_issues.csv").exists()  # --out: nothing written into the run
    # the report shows the picture when it sits in the run directory
    assert main(["label-issues", str(run_dir), "--show", "4"]) == 0
    # asked for more than are flagged, it draws (and says) the flagged ones
    capsys.readouterr()
    assert main(["label-issues", str(run_dir), "--threshold", "0.1", "--show", "512", "--out", str(tmp_path / "few")]) == 0
    flagged = len(list(csv.DictReader(open(tmp_path / "few" / "label_issues.csv"))))
    assert 0 < flagged < 512 and f"label_issues.png: the top {flagged} suspects" in capsys.readouterr().out
    assert main(["report", str(run_dir)]) == 0
    assert "data-file='label_issues.png'" in (run_dir / "report.html").read_text()
    # a cut that reads a verified clean set, asked for by name, says why this one is none
    capsys.readouterr()
    assert main(["label-issues", str(run_dir), "--cut", "clean-confusion", "--out", str(tmp_path / "cc")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--cut clean-confusion reads a verified clean set" in err and "drawn from your own training labels" in err
    assert "use --cut auto or count" in err


def test_a_clean_set_missing_a_class_is_named_at_training_and_at_label_issues(tmp_path, capsys):
    f = digits_npz(tmp_path / "mine.npz", flip=60)
    z = dict(np.load(f))
    keep = z["y_val"] != 7  # the user's clean set has no seven
    z["x_val"], z["y_val"] = z["x_val"][keep], z["y_val"][keep]
    np.savez(f, **z)
    code, _, err = run(tmp_path, capsys, "--data", f"npz:{f}", "--method", "l2b")
    assert code == 0, err
    assert "clean set (npz: x_val and y_val) has no sample of class(es) '7' (1 of the 10 training classes)" in err
    assert main(["label-issues", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    # the count the clean set would calibrate needs every class: the default says why it fell back
    assert "the clean set has no sample of class(es) '7', so the count is confident learning's estimate" in captured.err
    assert "(the estimated number of issues" in captured.out
    # a held-out clean set (CE) that lacks a class cannot check the count either: said too
    code, _, err = run(tmp_path, capsys, "--data", f"npz:{f}", "--method", "ce")
    assert code == 0, err
    assert main(["label-issues", str(tmp_path / "run")]) == 0
    assert "confident learning's estimate, unchecked by the held-out clean set" in capsys.readouterr().err


def test_report_on_own_labels_draws_no_noise_it_cannot_know(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    import l2b.report as report

    f = digits_npz(tmp_path / "mine.npz", flip=60)
    code, _, err = run(tmp_path, capsys, "--data", f"npz:{f}", "--method", "l2b")
    assert code == 0, err
    titles, save = [], report._save
    monkeypatch.setattr(report, "_save", lambda fig, path: titles.extend(a.get_title() for a in fig.axes) or save(fig, path))
    assert main(["report", str(tmp_path / "run")]) == 0
    assert "your own labels, no noise injected (mean of 1 seed)" in titles  # not "noise none"
    page = (tmp_path / "run" / "report.html").read_text()
    # which labels are wrong is unknown: no pseudo-label correctness, no identity "noise" matrix, no NaN
    assert "which labels are wrong is not known here" in page
    assert "alpha_minus_beta.png" not in page and "transition.png" not in page and "NaN" not in page
    assert "weights.png" in page


def test_label_issues_into_a_read_only_run_names_the_out_flag(tmp_path, capsys, monkeypatch):
    f = digits_npz(tmp_path / "mine.npz")
    assert run(tmp_path, capsys, "--data", f"npz:{f}", "--method", "ce")[0] == 0
    run_dir = tmp_path / "run"
    (tmp_path / "file").write_text("x")
    assert main(["label-issues", str(run_dir), "--out", str(tmp_path / "file" / "sub")]) == 2
    assert "write elsewhere with --out DIR" in capsys.readouterr().err.splitlines()[-1]
    import l2b.rundir

    # a read-only run directory (simulated: tests may run as root, who can write anywhere)
    monkeypatch.setattr(l2b.rundir.os, "access", lambda path, mode: Path(path) != run_dir)
    assert main(["label-issues", str(run_dir)]) == 2
    assert f"{run_dir} is not writable; write elsewhere with --out DIR" in capsys.readouterr().err
    assert main(["label-issues", str(run_dir), "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "label_issues.csv").is_file()
    assert main(["report", str(run_dir)]) == 2  # the report too names its --out
    assert f"{run_dir} is not writable; write elsewhere with --out DIR" in capsys.readouterr().err
    assert main(["report", str(run_dir), "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "report.html").is_file() and not (run_dir / "report.html").exists()


def test_label_issues_csv_of_an_image_folder_has_paths_and_class_names(tmp_path, capsys):
    pytest.importorskip("PIL")
    from PIL import Image

    colors = {"10": (255, 0, 0), "2": (0, 0, 255)}  # folder names that sort unlike numbers
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        for c, color in colors.items():
            for i in range(n):
                (tmp_path / "imgs" / split / c).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (12, 12), color).save(tmp_path / "imgs" / split / c / f"{i}.png")
    moved = tmp_path / "imgs" / "train" / "2" / "from-10.png"
    Image.new("RGB", (12, 12), colors["10"]).save(moved)  # a red image filed under "2"
    code, _, err = run(tmp_path, capsys, "--data", f"folder:{tmp_path / 'imgs'}", "--method", "ce",
                       "--image-size", "8", "--workers", "0", "--epochs", "15", "--lr", "0.05")
    assert code == 0, err
    assert main(["label-issues", str(tmp_path / "run"), "--show", "3"]) == 0
    import csv

    rows = list(csv.DictReader(open(tmp_path / "run" / "label_issues.csv")))
    assert rows and rows[0]["path"] == str(moved)
    assert rows[0]["given_class"] == "2" and rows[0]["suggested_class"] == "10"


def csv_dataset(root: Path, rows: list[tuple[str, str, str]], header: str = "path,label,split") -> Path:
    """root/labels.csv listing ``rows`` (path, label, split); each path not yet there becomes a 12-px
    image under root, red for label "10", else blue."""
    from PIL import Image

    for image, label, _ in rows:
        (root / image).parent.mkdir(parents=True, exist_ok=True)
        if not (root / image).exists():
            Image.new("RGB", (12, 12), (255, 0, 0) if label == "10" else (0, 0, 255)).save(root / image)
    (root / "labels.csv").write_text(header + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
    return root / "labels.csv"


def test_a_csv_of_paths_labels_and_splits_trains_and_its_label_issues_name_the_files(tmp_path, capsys):
    pytest.importorskip("PIL")
    from PIL import Image

    from l2b.data import load_dataset

    rows = [(f"img/{s}-{label}-{i}.png", label, s) for s, n in (("train", 12), ("val", 3), ("test", 3))
            for label in ("10", "2") for i in range(n)]
    (tmp_path / "img").mkdir()
    Image.new("RGB", (12, 12), (255, 0, 0)).save(tmp_path / "img" / "moved.png")  # a red image labelled "2"
    f = csv_dataset(tmp_path, rows + [("img/moved.png", "2", "train")])
    ds = load_dataset(f"csv:{f}")
    assert ds.classes == ("2", "10")  # numbers in number order, not "10" before "2"
    text = f.read_text()
    f.write_text(text.replace("img/", "img\\"))  # the same list, as written on Windows
    assert load_dataset(f"csv:{f}").train == ds.train
    f.write_bytes(text.replace(",", "\t").encode("utf-16"))  # as Excel's "Unicode Text" saves it
    assert load_dataset(f"csv:{f}").train == ds.train
    f.write_bytes(text.replace("moved", "d\u00e9plac\u00e9").encode("cp1252"))  # a Windows code page
    with pytest.raises(ValueError, match=rf"labels.csv, line {len(rows) + 2}: not UTF-8 text \(byte 0xe9\); save the list as 'CSV UTF-8'"):
        load_dataset(f"csv:{f}")
    f.write_text(text)
    assert len(ds.train) == 25 and len(ds.val) == 6 and len(ds.test) == 6 and ds.image_size == 12
    code, out, err = run(tmp_path, capsys, "--data", f"csv:{f}", "--method", "ce", "--workers", "0", "--epochs", "15",
                         "--lr", "0.05")
    assert code == 0, err
    assert "train 25, clean 6 (the dataset's own clean set), test 6; no noise injected" in out
    assert main(["label-issues", str(tmp_path / "run")]) == 0
    import csv

    top = next(csv.DictReader(open(tmp_path / "run" / "label_issues.csv")))
    assert top["path"] == "img/moved.png"  # as the list gives it: the rows join the user's own list
    assert top["given_class"] == "2" and top["suggested_class"] == "10"


def test_label_issues_scores_with_the_model_from_before_memorising_when_the_final_model_memorised(tmp_path, capsys):
    """CE trained long without weight decay fits every noisy label, and the probability of the
    given label then finds few issues. label-issues scores with the last epoch's model from before
    it began to memorise (early_model.pt; saying so), which finds about as many as were corrupted;
    a run without one (earlier versions) falls back to the best clean-validation epoch's; --model
    final keeps the final model and warns, naming what to score instead. L2B's model of the same
    data (a few epochs, not memorised) gets none of this."""
    from l2b.label_issues import write_label_issues

    common = ["--data", "digits", "--noise", "symmetric:0.4", "--weight-decay", "0", "--progress", "none"]
    assert main(["train", *common, "--method", "ce", "--epochs", "100", "--out", str(tmp_path / "ce")]) == 0
    assert main(["train", *common, "--method", "l2b", "--epochs", "3", "--out", str(tmp_path / "l2b")]) == 0
    metrics = json.loads((tmp_path / "ce" / "metrics.json").read_text())
    best_epoch, early_epoch = metrics["best_epoch"] + 1, metrics["early_epoch"] + 1
    assert best_epoch < 100 and early_epoch < 100
    capsys.readouterr()
    assert main(["label-issues", str(tmp_path / "ce")]) == 0
    captured = capsys.readouterr()
    assert "l2b: note: the final model agrees with 100.0% of its training labels against" in captured.err
    assert f"at the last epoch before it began to memorise ({early_epoch})" in captured.err
    assert "(early_model.pt)" in captured.err and "warning" not in captured.err
    auto = write_label_issues(tmp_path / "ce", out=tmp_path / "auto")
    final = write_label_issues(tmp_path / "ce", out=tmp_path / "final", model="final")
    assert (auto["model"], auto["model_epoch"], final["model"]) == ("early", early_epoch, "final")
    # the memorised model flags almost nothing; the earlier one about as many as were corrupted
    assert final["issues"] < 0.2 * final["corrupted"] and abs(auto["issues"] / auto["corrupted"] - 1) <= 0.25
    assert auto["precision"] >= 0.8
    assert "it has memorised its labels" in final["warning"] and "(--cross-fit 5" in final["warning"]
    assert "an L2B run of the same data" in final["warning"]
    assert main(["label-issues", str(tmp_path / "ce"), "--model", "final"]) == 0
    assert "l2b: warning: the model agrees with 100.0% of its training labels" in capsys.readouterr().err
    # a run trained before early_model.pt existed: the best clean-validation epoch's model
    (tmp_path / "ce" / "early_model.pt").unlink()
    older = write_label_issues(tmp_path / "ce", out=tmp_path / "older")
    assert (older["model"], older["model_epoch"]) == ("best", best_epoch)
    assert f"at the best clean-validation epoch ({best_epoch})" in older["note"]
    with pytest.raises(FileNotFoundError, match="no early_model.pt: .* nor by earlier l2b versions"):
        write_label_issues(tmp_path / "ce", out=tmp_path / "early", model="early")
    assert main(["label-issues", str(tmp_path / "l2b")]) == 0
    err = capsys.readouterr().err
    # the final L2B model is kept: no note on the model (only that its 10 clean per class are few)
    assert "memorised" not in err and "clean-validation epoch" not in err and "note: the 100 clean samples" in err
    assert write_label_issues(tmp_path / "l2b", out=tmp_path / "l2b-auto")["model"] == "final"


def test_memorised_judges_agreement_against_held_out_accuracy_and_its_rise_since_an_earlier_model():
    from l2b.run_scores import memorised

    assert memorised((0.95, 0.80))  # agrees with 95% of its labels, right on 80% held out
    assert not memorised((0.70, 0.88))  # 30% disagreement: the labels it distrusts
    # agreement up 15 points since the earlier model while held-out accuracy fell 2: memorised since
    assert memorised((0.70, 0.88), earlier=(0.55, 0.90))
    assert not memorised((0.60, 0.93), earlier=(0.59, 0.93))
    assert not memorised((0.70, 0.95), earlier=(0.60, 0.90))  # a rise that held-out accuracy shares


def test_label_issues_on_a_run_without_any_clean_set(tmp_path, capsys):
    """Own labels, no clean set, the meta set selected from the training data: label-issues loads
    the run as it trained (no clean set asked for) and flags by the estimated count."""
    from l2b.label_issues import write_label_issues

    f = digits_npz(tmp_path / "mine.npz", with_val=False, flip=60)
    code, _, err = run(tmp_path, capsys, "--data", f"npz:{f}", "--method", "l2b", "--epochs", "2",
                       "--warmup-epochs", "1", "--meta-set", "select:confident")
    assert code == 0, err
    s = write_label_issues(tmp_path / "run")
    assert s["cut"] == "count" and s["issues"] == s["estimated"] > 0 and s["warning"] is None
    assert s["model"] == "final" and s["clean_scored"] == 0
    assert s["count_note"].startswith("no verified clean set checked this count")  # nothing checked it: said


def test_a_meta_set_selected_from_own_labels_claims_no_purity_it_cannot_know(tmp_path, capsys):
    """On your own labels as given nobody knows which are wrong, so a selected meta set's purity is
    unknown (null), not 100%; with noise injected on them it is measured against your labels. An
    epoch with nothing to select on prints no NaN."""
    f = digits_npz(tmp_path / "mine.npz", with_val=False, flip=60)
    flags = ("--data", f"npz:{f}", "--method", "l2b", "--epochs", "2", "--warmup-epochs", "1",
             "--meta-set", "select:confident", "--meta-set-size", "5")
    code, out, err = run(tmp_path, capsys, *flags)
    assert code == 0, err
    assert "purity unknown (your own labels, no noise injected" in out and "nan" not in out
    assert "epoch 1/2 loss" in out and " val - " in out.split("epoch 1/2")[1].splitlines()[0]
    record = json.loads((tmp_path / "run" / "meta_set.json").read_text())["selections"][0]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["purity"] is None and metrics["meta_set"][0]["purity"] is None
    if importlib.util.find_spec("matplotlib"):  # the report marks the best-val numbers the selected set chose
        assert main(["report", str(tmp_path / "run")]) == 0
        assert "* measured on the meta set selected from the noisy training data" in \
            (tmp_path / "run" / "report.html").read_text()
    code, out, err = run(tmp_path, capsys, *flags, "--noise", "symmetric:0.2", "--lr", "0.2")
    assert code == 0, err
    purity = json.loads((tmp_path / "run" / "meta_set.json").read_text())["selections"][0]["purity"]
    assert 0 < purity < 1 and f"purity {100 * purity:.1f}% against your labels before the injected noise" in out


def test_label_issues_finds_a_relative_data_path_from_another_directory(tmp_path, monkeypatch, capsys):
    """A run trained on npz:mine.npz (relative to where it was trained) is loaded again from
    anywhere: the run records where it found its data."""
    (tmp_path / "work").mkdir()
    (tmp_path / "elsewhere").mkdir()
    digits_npz(tmp_path / "work" / "mine.npz", flip=40)
    monkeypatch.chdir(tmp_path / "work")
    assert main(["train", "--data", "npz:mine.npz", "--method", "l2b", "--model", "mlp", "--width", "16",
                 "--epochs", "1", "--out", "run", "--progress", "none"]) == 0
    saved = json.loads((tmp_path / "work" / "run" / "config.json").read_text())
    assert saved["config"]["data"] == "npz:mine.npz"  # the settings as given
    assert saved["data"]["located"] == f"npz:{tmp_path / 'work' / 'mine.npz'}"
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["label-issues", str(tmp_path / "work" / "run")]) == 0
    assert "suspected label issues flagged" in capsys.readouterr().out


def test_the_suspects_picture_keeps_every_title_clear_of_the_images():
    """Two rows of 8: each two-line title (given → suggested, score) sits above its own image and
    overlaps no image, in particular not the row above."""
    pytest.importorskip("matplotlib")
    from l2b.label_issue_files import suspects_figure

    images = [np.full((28, 28), 40 * (i % 6), dtype=np.uint8) for i in range(16)]
    fig = suspects_figure(images, [f"pullover → coat\nscore 0.{i:02d}" for i in range(16)], "top 16")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [ax.get_window_extent(renderer) for ax in fig.axes]
    for ax in fig.axes:
        title = ax.title.get_window_extent(renderer)
        assert not any(title.overlaps(box) for box in boxes)


@pytest.mark.parametrize("config, steered", [
    ({"method": "l2b"}, True), ({"method": "l2rw"}, True),
    ({"method": "mwnet"}, False),  # its meta step tunes a shared loss-to-weight net: the clean set stays held out
    ({"method": "ce"}, False), ({"method": "coteaching"}, False),
    ({"method": "l2b", "meta_set": "select:confident"}, False),  # the clean set is not read at all
    ({"method": "no-such-method"}, False),
])
def test_clean_steered_names_the_runs_whose_meta_step_fitted_the_model_to_the_clean_set(tmp_path, config, steered):
    from l2b.label_issues import clean_steered

    assert clean_steered(config, tmp_path) is steered


def test_a_clean_set_the_model_learned_from_only_caps_the_count(tmp_path, capsys, monkeypatch):
    """A model trained on its clean set too (--train-on-clean) is at least as sure of those samples
    as of its correct training labels: the count they explain errs high, so the default takes it
    only where it is below confident learning's; no cut that treats the set as held out reads it."""
    from l2b.label_issues import console_lines, write_label_issues

    code, _, err = run(tmp_path, capsys, "--data", "digits", "--method", "ce", "--train-on-clean", "--epochs", "2",
                       "--val-per-class", "5", "--noise", "symmetric:0.4")
    assert code == 0, err
    s = write_label_issues(tmp_path / "run")
    assert s["cut"] == "clean-confusion" and s["clean_learned"] and not s["clean_steered"]
    assert 0 < s["issues"] <= s["estimated"]
    assert "the model learned from the clean samples" in console_lines(s)[0][0]
    with pytest.raises(ValueError, match="its model learned from its clean set, which then serves --cut clean-confusion only"):
        write_label_issues(tmp_path / "run", cut="clean-quantile", out=tmp_path / "quantile")
    plain = write_label_issues(tmp_path / "run", cut="count", out=tmp_path / "count")
    assert plain["issues"] == s["estimated"] and not plain["clean_learned"]
    assert plain["count_note"] is None  # a count asked for by name is not second-guessed
    # nor is memorisation judged against it: the model is chosen as for a run without a held-out set
    import l2b.label_issues as li

    asked = []
    real = li.run_model_scores
    monkeypatch.setattr(li, "run_model_scores",
                        lambda run, which, held_out, **kw: asked.append(held_out) or real(run, which, held_out, **kw))
    write_label_issues(tmp_path / "run", out=tmp_path / "again")
    assert asked == [False]


@pytest.mark.parametrize("given_classes", [False, True])
def test_npz_labels_given_as_class_names_train_the_run_their_numbers_train(tmp_path, capsys, given_classes):
    """Class names as labels (a labelling tool's export) are numbered as folder and csv labels
    are (alphabetically, or in the order of the npz's ``classes``): the same run, to the bit, as
    the integer labels with those names."""
    f = digits_npz(tmp_path / "numbers.npz", flip=40)
    arrays = dict(np.load(f))
    words = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    order = list(words) if given_classes else sorted(words)
    renumber = np.array([order.index(w) for w in words])
    named = {k: (words[v] if k.startswith("y_") else v) for k, v in arrays.items()}
    numbered = {k: (renumber[v] if k.startswith("y_") else v) for k, v in arrays.items()}
    if given_classes:
        named["classes"] = words
    np.savez(tmp_path / "names.npz", **named)
    np.savez(tmp_path / "numbers.npz", **numbered, classes=np.array(order))
    weights = {}
    for name in ("names", "numbers"):
        code, _, err = run(tmp_path, capsys, "--data", f"npz:{tmp_path / name}.npz", "--method", "l2b")
        assert code == 0, err
        saved = json.loads((tmp_path / "run" / "config.json").read_text())
        assert saved["data"]["classes"] == order
        weights[name] = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(weights["names"][k], weights["numbers"][k]) for k in weights["numbers"])


def test_the_table_of_features_example_in_the_docs_runs_as_written():
    """docs/data.md's example for a table (not images): the drop-in step on 400 rows with 30% of
    the labels flipped, then find_label_issues with the clean rows that steered it; it flags the
    flipped labels within the targets the cut is measured by (count ±25%, precision ≥ 0.8)."""
    pytest.importorskip("sklearn")
    text = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    section = text[text.index("### A table of features, not images"):]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(code, "docs/data.md", "exec"), scope)
    issues, flip = scope["issues"], scope["flip"]
    assert 0.75 * flip.sum() <= len(issues) <= 1.25 * flip.sum() and flip[issues].mean() >= 0.8
    assert len(set(issues.tolist())) == len(issues) and issues.max() < 400


def test_a_csv_without_a_split_column_is_the_training_set_and_says_so(tmp_path, capsys):
    """The list most labelling tools export, path and label only: every row a training image (no
    clean or test set), said on the console with how to give them; the same images and labels
    as the list with every row marked train."""
    pytest.importorskip("PIL")
    from l2b.data import load_dataset

    two_class_folder(tmp_path, {"train": 3})
    files = sorted((tmp_path / "train").rglob("*.png"))
    (tmp_path / "plain.csv").write_text("path,label\n" + "".join(f"{f},{f.parent.name}\n" for f in files))
    (tmp_path / "split.csv").write_text("path,label,split\n" + "".join(f"{f},{f.parent.name},train\n" for f in files))
    plain = load_dataset(f"csv:{tmp_path / 'plain.csv'}")
    assert "plain.csv: no split column, so every row is a training image, with no clean or test set" in \
        capsys.readouterr().err
    split = load_dataset(f"csv:{tmp_path / 'split.csv'}")
    assert "no split column" not in capsys.readouterr().err
    assert plain.train == split.train and plain.classes == split.classes == ("cat", "dog")
    assert plain.val is None and plain.test == [] and plain.image_size == split.image_size == 12


def test_a_home_folder_in_a_data_spec_is_written_out(tmp_path, monkeypatch):
    """``--data npz:~/mine.npz``: the shell leaves a ``~`` after ``npz:`` as typed; l2b reads the
    home folder's file, and the run records where it is."""
    from l2b.data import load_dataset

    monkeypatch.setenv("HOME", str(tmp_path))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "mine.npz", x_train=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), y_train=np.arange(20) % 2)
    assert len(load_dataset("npz:~/mine.npz").y_train) == 20
    assert TrainConfig(data="npz:~/mine.npz").data == f"npz:{tmp_path / 'mine.npz'}"
    assert TrainConfig(data="digits").data == "digits"


def test_class_names_that_differ_only_in_case_are_named(tmp_path, capsys):
    """A labelling tool's export writing one class two ways ("Cat", "cat") makes two classes: a
    csv, an npz of class names and a folder each say so, naming the pair; distinct names do not."""
    pytest.importorskip("PIL")
    from PIL import Image

    from l2b.data import load_dataset

    for name in ("Cat", "cat", "dog"):
        (tmp_path / "imgs" / "train" / name).mkdir(parents=True)
        Image.new("RGB", (12, 12)).save(tmp_path / "imgs" / "train" / name / f"{name}.png")
    assert load_dataset(f"folder:{tmp_path / 'imgs'}").classes == ("Cat", "cat", "dog")
    assert "class names 'Cat' and 'cat' differ only in case or spaces, so they are two classes" in \
        capsys.readouterr().err
    files = sorted((tmp_path / "imgs" / "train").rglob("*.png"))
    (tmp_path / "l.csv").write_text("path,label\n" + "".join(f"{f},{f.parent.name.lower()}\n" for f in files[:2]) +
                                    f"{files[2]},DOG\n")
    assert len(load_dataset(f"csv:{tmp_path / 'l.csv'}").classes) == 2
    assert "differ only in case" not in capsys.readouterr().err  # cat and DOG: distinct classes
    np.savez(tmp_path / "n.npz", x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.array(["dog", "cat", "Dog ", "cat"]))
    assert load_dataset(f"npz:{tmp_path / 'n.npz'}").classes == ("Dog ", "cat", "dog")
    assert "n.npz: class names 'Dog ' and 'dog' differ only in case or spaces" in capsys.readouterr().err


def test_a_csv_of_annotators_votes_takes_each_images_majority(tmp_path, capsys):
    """Crowd labels as a labelling platform exports them, a row per annotator and image: each
    image's label is the majority of its votes (a tie: the label voted first), said on the console;
    the dataset is the list of those labels written one row per image."""
    pytest.importorskip("PIL")
    from l2b.data import load_dataset

    two_class_folder(tmp_path, {"train": 3})
    files = sorted((tmp_path / "train").rglob("*.png"))  # cat/0..2, dog/0..2
    votes = {files[0]: ["cat", "cat", "dog"], files[1]: ["dog", "cat"], files[2]: ["cat"],
             files[3]: ["dog", "dog", "cat"], files[4]: ["cat", "dog", "dog"], files[5]: ["dog"]}
    lines = [f"{f},{label},w{k}" for f, labels in votes.items() for k, label in enumerate(labels)]
    (tmp_path / "votes.csv").write_text("path,label,worker_id\n" + "\n".join(lines[::2] + lines[1::2]) + "\n")
    ds = load_dataset(f"csv:{tmp_path / 'votes.csv'}")
    err = capsys.readouterr().err
    assert "the votes of 3 annotators; each image's label is the majority of its votes (4 images with more than one " \
           "vote, 1 of them tied: the label voted first taken)" in err
    # cat/1.png's tie: its cat vote (worker w1) stands before its dog vote in the shuffled file
    majority = {files[0]: "cat", files[1]: "cat", files[2]: "cat", files[3]: "dog", files[4]: "dog", files[5]: "dog"}
    (tmp_path / "one.csv").write_text("path,label\n" + "".join(f"{f},{majority[f]}\n" for f in votes))
    single = load_dataset(f"csv:{tmp_path / 'one.csv'}")
    assert sorted(ds.train) == sorted(single.train) and ds.classes == single.classes == ("cat", "dog")
    # label_issues.csv shows each image's votes beside the label the model doubts, most first
    code, _, err = run(tmp_path, capsys, "--data", f"csv:{tmp_path / 'votes.csv'}", "--method", "ce", "--workers", "0")
    assert code == 0, err
    assert main(["label-issues", str(tmp_path / "run"), "--threshold", "1.0"]) == 0  # flag every sample
    with open(tmp_path / "run" / "label_issues.csv", newline="") as fh:
        listed = {r["path"]: r["votes"] for r in csv.DictReader(fh)}
    assert listed == {str(f.relative_to(tmp_path)): {0: "cat 2, dog 1", 1: "cat 1, dog 1", 2: "cat 1", 3: "dog 2, cat 1", 4: "dog 2, cat 1",
                               5: "dog 1"}[k] for k, f in enumerate(files)}


@pytest.mark.parametrize("rows, message", [
    (["a.png,cat,w1", "a.png,dog,w1"], "line 3: worker 'w1' labels a.png again (first at line 2); one vote per annotator"),
    (["a.png,cat,w1", "a.png,dog,"], "line 3: empty worker"),
])
def test_a_bad_vote_is_one_line_naming_its_line(tmp_path, rows, message):
    pytest.importorskip("PIL")
    from PIL import Image

    from l2b.data import load_dataset

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "votes.csv").write_text("path,label,worker\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_dataset(f"csv:{tmp_path / 'votes.csv'}")
    (tmp_path / "split.csv").write_text("path,label,split,annotator\na.png,cat,train,x\na.png,cat,test,y\n")
    with pytest.raises(ValueError, match=r"line 3: a.png is in split test here and train at line 2; give an image one split"):
        load_dataset(f"csv:{tmp_path / 'split.csv'}")
