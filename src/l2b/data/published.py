"""The published datasets of image files the paper trains on: ISIC 2019 and Clothing1M, read from
their own label files and split lists."""

from __future__ import annotations

import csv
from pathlib import Path

from .files import IMAGENET_SIZE, FileDataset
from .images import check_images

CLOTHING1M_MEAN = (0.6959, 0.6537, 0.6371)  # the L2B authors' ultils.py
CLOTHING1M_STD = (0.3113, 0.3192, 0.3214)
ISIC_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
CLOTHING1M_CLASSES = ("T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker",
                      "Jacket", "Downcoat", "Suit", "Shawl", "Dress", "Vest", "Underwear")


def _read_list(path: Path) -> list[str]:
    if not path.is_file() and path.with_suffix(".lst").is_file():  # the authors' ISIC/*.lst
        path = path.with_suffix(".lst")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split list not found (a .txt or the authors' .lst)")
    return [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def load_isic2019(path: str | None, *, on_bad_images: str = "error", image_size: int = IMAGENET_SIZE) -> FileDataset:
    """ISIC 2019: ground-truth CSV (image, MEL, NV, ...; one-hot), images, split lists.

    Layout: DIR/ISIC_2019_Training_GroundTruth.csv, DIR/ISIC_2019_Training_Input/<image>.jpg, and
    DIR/train.txt, DIR/val.txt, DIR/test.txt with one image id per line (or the authors'
    train.lst / val.lst / test.lst from yuyinzhou/L2B's ISIC folder; the paper's split is
    20,400 / 640 / 4,291). The UNK column, empty in the training data, is ignored. Images go
    through the authors' ISIC transforms (``ImageFiles``), the clean (meta) set through the
    training transform, as in their code.
    """
    if not path:
        raise ValueError("isic2019 needs a directory: isic2019:DIR")
    root = Path(path)
    gt = root / "ISIC_2019_Training_GroundTruth.csv"
    if not gt.is_file():
        raise FileNotFoundError(f"{gt}: ground-truth CSV not found")
    labels = {}
    with open(gt, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or header[0] != "image" or list(header[1:9]) != list(ISIC_CLASSES):
            raise ValueError(f"{gt}: header must start with image,{','.join(ISIC_CLASSES)}; got {header}")
        for lineno, row in enumerate(reader, 2):
            try:
                onehot = [float(v) for v in row[1:9]]
            except ValueError:
                raise ValueError(f"{gt}, line {lineno}: non-numeric diagnosis column in {row}") from None
            if sorted(onehot) != [0.0] * 7 + [1.0]:
                raise ValueError(f"{gt}, line {lineno}: diagnosis columns must be one-hot, got {row[1:9]}")
            labels[row[0]] = onehot.index(1.0)
    images = root / "ISIC_2019_Training_Input"

    def items(split: str):
        out = []
        for image_id in _read_list(root / f"{split}.txt"):
            if image_id not in labels:
                raise ValueError(f"{root / f'{split}.txt'}: image {image_id!r} is not in {gt.name}")
            out.append((images / f"{image_id}.jpg", labels[image_id]))
        return check_images(out, on_bad_images, f"isic2019 {split}")

    return FileDataset("isic2019", items("train"), items("test"), ISIC_CLASSES, val=items("val"),
                       image_size=image_size, root=root, transform="isic", meta_augment=True)


def load_clothing1m(path: str | None, *, image_size: int = IMAGENET_SIZE, **_) -> FileDataset:
    """Clothing1M's list files: noisy_label_kv.txt, clean_label_kv.txt ('<key> <label>' lines),
    noisy_train_key_list.txt, clean_val_key_list.txt, clean_test_key_list.txt; keys are image
    paths relative to DIR. Training uses the noisy labels, val and test the clean ones. Images are
    decoded lazily: an unreadable one is reported, by path, when it is first read. As in the
    authors' code: Resize(256) + random crop + flip for training, Resize(256) + centre crop for
    the test AND the clean (meta) batches, normalised with Clothing1M's own mean and std."""
    if not path:
        raise ValueError("clothing1m needs a directory: clothing1m:DIR")
    root = Path(path)

    def kv(name: str) -> dict[str, int]:
        out = {}
        f = root / name
        if not f.is_file():
            raise FileNotFoundError(f"{f}: not found")
        for lineno, line in enumerate(f.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit() or not 0 <= int(parts[1]) < 14:
                raise ValueError(f"{f}, line {lineno}: expected '<image path> <label 0-13>', got {line!r}")
            out[parts[0]] = int(parts[1])
        return out

    noisy, clean = kv("noisy_label_kv.txt"), kv("clean_label_kv.txt")

    def items(list_name: str, table: dict[str, int], which: str):
        keys = _read_list(root / list_name)
        missing = [k for k in keys if k not in table]
        if missing:
            raise ValueError(f"{root / list_name}: {len(missing)} keys have no {which} label (first: {missing[0]})")
        return [(root / k, table[k]) for k in keys]

    return FileDataset(
        "clothing1m", items("noisy_train_key_list.txt", noisy, "noisy"),
        items("clean_test_key_list.txt", clean, "clean"), CLOTHING1M_CLASSES,
        val=items("clean_val_key_list.txt", clean, "clean"), image_size=image_size, root=root,
        mean=CLOTHING1M_MEAN, std=CLOTHING1M_STD, meta_augment=False,
    )
