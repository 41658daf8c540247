"""Datasets of image files, decoded lazily with Pillow: your own (a folder of class folders, a csv
list); the published ones are in :mod:`l2b.data.published`."""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..console import warn as warn_data
from .class_names import label_order, warn_twin_classes
from .copies import copies_message, file_copies
from .dicom import DICOM_SUFFIXES, is_dicom
from .images import IMAGENET_MEAN, IMAGENET_STD, ImageFiles, check_images, checked_size, seeded_keys

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", *DICOM_SUFFIXES}
IMAGENET_SIZE = 224  # the crop of ImageNet-pretrained models, and native_size's cap
SAMPLED_SIDES = 32  # images whose size native_size reads (headers only), spread over the list


@dataclass
class FileDataset:
    """Lists of (image path, label) for train / test (/ val, the dataset's own clean set)."""

    name: str
    train: list[tuple[Path, int]]
    test: list[tuple[Path, int]]
    classes: tuple[str, ...]
    val: list[tuple[Path, int]] | None = None
    image_size: int = IMAGENET_SIZE  # crop size; images are resized so the short side is 8/7 of it
    in_channels: int = 3
    root: Path | None = None
    asymmetric_map: dict[int, int] | None = None
    coarse_train: None = None
    # ImageFiles transforms: "resize-crop" (short side 8/7 of the crop, random / centre crop,
    # flip) or "isic" (the authors' ISIC transforms); and the normalisation statistics
    transform: str = "resize-crop"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    meta_augment: bool = True  # the clean (meta) batches use the training transform
    own_photos: bool = False  # read as ImageFiles reads your own photos (reduced-scale JPEGs, EXIF orientation)
    votes: dict | None = None  # a csv of annotators' votes: each image's votes by label, {path: {label: count}}
    listed: bool = False  # the images are named by a list (csv): by their path relative to ``root``, as listed

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def shown_path(self, path: Path) -> str:
        """How an image is named to the user: as a list names it (relative to the list's folder, so
        that a result's rows join the list), else by its full path."""
        return path.relative_to(self.root).as_posix() if self.listed and path.is_relative_to(self.root) else str(path)

    @property
    def y_train(self) -> torch.Tensor:
        return torch.tensor([y for _, y in self.train], dtype=torch.int64)

    def loader(self, items, *, train: bool, batch_size: int | None = None, batches=None,
               workers: int = 4, seed: int = 0, pin_memory: bool | None = None) -> torch.utils.data.DataLoader:
        """A DataLoader over ``items`` ((path, label) pairs) yielding normalised float batches
        with their positions in ``items``: either ``batches``, in order (lists of positions, or of
        (position, seed) keys whose seed drives that sample's random transforms; any iterable, an
        endless one included, read as the loader goes), or ``batch_size`` (shuffled by ``seed`` when
        ``train``, each sample's transforms seeded by its place in the shuffle). Seeded per sample,
        a batch is the same whatever the number of ``workers``."""
        ds = ImageFiles(items, self.image_size, train=train, transform=self.transform, mean=self.mean, std=self.std,
                        own_photos=self.own_photos)
        if batches is None:
            if train:
                keys = seeded_keys(torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist(),
                                   seed)
            else:
                keys = list(range(len(items)))
            batches = [keys[k:k + batch_size] for k in range(0, len(keys), batch_size)]
        return torch.utils.data.DataLoader(
            ds, batch_sampler=batches, num_workers=workers, persistent_workers=False,
            pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory)


def image_files(folder: Path) -> list[Path]:
    """The image files of one class folder and its sub-folders (as torchvision's ImageFolder reads
    them; DICOM files without a suffix too), sorted by path; hidden files and folders
    (``.DS_Store``, macOS's ``._x.jpg``) left out."""
    found = []
    for here, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__MACOSX"]
        found += [Path(here) / f for f in files if not f.startswith(".") and (
            Path(f).suffix.lower() in IMAGE_SUFFIXES or not Path(f).suffix and is_dicom(Path(here) / f))]
    return sorted(found)


def class_folders(folder: Path) -> list[Path]:
    """The class folders of ``folder``, sorted by name: its sub-directories, hidden ones
    (``.ipynb_checkpoints``) and macOS's ``__MACOSX`` left out."""
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name != "__MACOSX")


def folder_splits(root: Path) -> dict[str, Path]:
    """The split folders of folder:DIR: train, and val and test where present; DIR itself as the
    training set where it holds class folders and no train/, val/ or test/."""
    layout = "DIR/train/<class>/*, optional DIR/val/<class>/* and DIR/test/<class>/*"
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not found; the folder layout is {layout}")
    splits = {split: root / split for split in ("train", "val", "test") if (root / split).is_dir()}
    if "train" not in splits and (splits or not class_folders(root)):
        raise FileNotFoundError(f"{root / 'train'}: not found; the folder layout is {layout}")
    return splits if "train" in splits else {"train": root}


def load_folder(path: str | None, *, on_bad_images: str = "error", image_size: int | None = None) -> FileDataset:
    """ImageFolder layout: DIR/train/<class>/*, optional DIR/val/<class>/* (a verified clean set) and
    DIR/test/<class>/* (without it, no test set); or torchvision's own, DIR/<class>/* with no
    train/, val/ or test/ beside, as the training set alone (said on the console).
    ``image_size`` None: the training images' own size (``native_size``)."""
    if not path:
        raise ValueError("folder needs a directory: folder:DIR (DIR/train/<class>/..., optional DIR/val/<class>/... "
                         "and DIR/test/<class>/...)")
    root = Path(path)
    splits = folder_splits(root)
    classes = tuple(d.name for d in class_folders(splits["train"]))
    if splits["train"] == root:
        shown = ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else "")
        warn_data(f"{root}: no train/ folder, so its {len(classes)} class folders ({shown}) are the training set, "
                  f"with no clean or test set of its own; to give them, move the class folders into {root / 'train'} "
                  f"and add {root / 'val'}/<class>/* (verified labels) and {root / 'test'}/<class>/*")
    warn_twin_classes(classes, splits["train"])
    if not classes:
        raise ValueError(f"{splits['train']}: no class sub-directories")

    def items(split: str):
        out = []
        if split not in splits:  # no test set (train/ is checked above)
            return out
        for d in class_folders(splits[split]):
            if d.name not in classes:
                raise ValueError(f"{d}: class {d.name!r} does not exist under {splits['train']}")
            out += [(f, classes.index(d.name)) for f in image_files(d)]
        return check_images(out, on_bad_images, f"{splits[split]}")

    empty = [c for c in classes if not image_files(splits["train"] / c)]
    if empty:
        warn_data(f"{splits['train']}: class folder(s) {', '.join(map(repr, empty[:5]))}"
                  f"{' ...' if len(empty) > 5 else ''} hold no image; they stay classes the model can predict, with no "
                  f"training sample (remove the folders if they are not classes)")
    val = items("val") if "val" in splits else None
    if val == []:
        warn_data(f"{root / 'val'}: holds no image in class folders (val/<class>/*), so the dataset has no clean set "
                  f"of its own; fill it, or remove it")
    return _own_images("folder", items, classes, val, image_size, root, root)


def _own_images(name: str, items, classes: tuple[str, ...], val, image_size: int | None, root: Path,
                where: Path, listed: bool = False) -> FileDataset:
    """Your own images (a folder, a list) as a FileDataset: ``items(split)`` lists a split; cropped
    at their own size unless ``image_size`` is given (then said when it blows them up, naming
    ``where``); large JPEGs decoded at a reduced scale."""
    train, test = items("train"), items("test")
    if image_size is None:
        image_size = native_size(train)
    else:
        _warn_upscaling(train, image_size, where)
    for split, others in (("test", test), ("val", val or [])):
        text = copies_message(split, len(others), file_copies([f for f, _ in train], [f for f, _ in others]))
        if text:
            warn_data(f"{where}: {text}")
    return FileDataset(name, train, test, classes, val=val, image_size=image_size, root=root, own_photos=True,
                       listed=listed)


def short_side(items) -> int | None:
    """The median short side of up to SAMPLED_SIDES images spread over ``items`` (headers only;
    unreadable ones are passed over: loading names them); None where none can be read."""
    sides = []
    for path, _ in items[:: max(1, len(items) // SAMPLED_SIDES)][:SAMPLED_SIDES]:
        try:
            sides.append(min(checked_size(path)))
        except (OSError, ValueError, SyntaxError):
            continue
    return int(np.median(sides)) if sides else None


def native_size(items) -> int:
    """The crop size of a folder's images when none is given: their own (median short side), at
    least 8 and at most IMAGENET_SIZE px."""
    side = short_side(items)
    return IMAGENET_SIZE if side is None else min(IMAGENET_SIZE, max(8, side))


def own_image_size(kind: str, path: str) -> int:
    """``native_size`` of the training images of folder:PATH or csv:FILE, for a run's settings;
    IMAGENET_SIZE where they cannot be read, for loading them to name the fault (a missing folder,
    no image, a malformed list, an unreadable file, no Pillow)."""
    try:
        if kind == "csv":
            return native_size(csv_rows(Path(path)).rows["train"])
        train = folder_splits(Path(path))["train"]
        return native_size([(f, 0) for d in class_folders(train) for f in image_files(d)])
    except (OSError, ValueError, KeyError, ImportError):
        return IMAGENET_SIZE


CSV_COLUMNS = {"path": ("path", "file", "filename", "image"), "label": ("label", "class"), "split": ("split",)}
CSV_SPLITS = ("train", "val", "test")


def csv_text(path: Path) -> str:
    """The text of a list: UTF-8 (with or without the byte-order mark Excel writes), or UTF-16 with
    its mark (Excel's "Unicode Text"); anything else one line naming the line of the first bad byte."""
    data = path.read_bytes()
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the list as "
                         f"'CSV UTF-8' (Excel) or UTF-8 text") from None


def csv_table(path: Path):
    """(header, rows) of a list: the header's names stripped and lower-cased; the rows a csv reader
    (its ``line_num`` the file's line) in the list's own dialect (``,``, or ``;`` as Excel writes
    where the decimal mark is a comma, or tabs), its text read as :func:`csv_text` reads it."""
    text = csv_text(path)
    try:
        dialect = csv.Sniffer().sniff(text.split("\n", 1)[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text, newline=""), dialect)  # a quoted cell may hold a line break
    return [h.strip().lower() for h in next(reader, [])], reader


def listed_file(path: Path, name: str) -> Path:
    """The file a list at ``path`` names: relative to the list's folder (an absolute path stays as
    it is); from a list written on Windows (img\\cat\\1.jpg), with its separators read."""
    file = path.parent / name
    if "\\" in name and os.sep == "/" and not file.exists():
        file = path.parent / name.replace("\\", "/")
    return file


# a column naming who gave each label: the list then holds several annotators' votes, an image a row each
ANNOTATOR_COLUMNS = ("annotator", "annotator_id", "worker", "worker_id", "rater")


@dataclass
class ListedImages:
    """csv:FILE read: its images by split, as (image path, label as written); the class names in
    label order; whether it has a split column; and, for a list of annotators' votes, how many
    annotators voted and each image's votes by label, most first (a tie in the file's order)."""

    rows: dict[str, list[tuple[Path, str]]]
    classes: list[str]
    has_split: bool
    annotators: int = 0
    tallies: dict[Path, dict[str, int]] | None = None


def csv_rows(path: Path) -> ListedImages:
    """The images of csv:FILE by split (numbered in label order: numerically where every label is
    a number, else alphabetically; without a split column every row is a training row). With an
    annotator column each row is one annotator's vote and an image's label is the majority of its
    votes (a tie: the label voted first). One-line errors name the file and line: a missing
    column, a ragged row, an empty cell, an unknown split, an image listed twice (or voted twice by
    one annotator, or in two splits)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    header, reader = csv_table(path)
    column = {}
    for key, names in CSV_COLUMNS.items():
        found = [i for i, h in enumerate(header) if h in names]
        if not found and key == "split":
            continue
        if not found:
            raise ValueError(f"{path}: no {key} column ({' or '.join(names)}); a csv dataset has a header with "
                             f"path and label columns, and optionally split (train, val or test); found: {', '.join(header) or 'none'}")
        column[key] = found[0]
    voter = next((i for i, h in enumerate(header) if h in ANNOTATOR_COLUMNS), None)
    ballots: dict[Path, tuple[int, str, dict[str, tuple[str, int]]]] = {}  # first line, split, annotator -> vote
    for row in reader:
        line = reader.line_num  # the file's line where the row ends
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"{path} line {line}: {len(row)} fields, the header has {len(header)} (a comma inside a "
                             f"path or label needs quotes)")
        image, label = (row[column[k]].strip() for k in ("path", "label"))
        split = row[column["split"]].strip().lower() if "split" in column else "train"
        who = row[voter].strip() if voter is not None else ""
        cells = [("path", image), ("label", label), ("split", split)] + ([(header[voter], who)] if voter is not None else [])
        for key, value in cells:
            if not value:
                raise ValueError(f"{path} line {line}: empty {key}")
        if split not in CSV_SPLITS:
            raise ValueError(f"{path} line {line}: split {split!r} is not train, val (your verified clean set) or test")
        file = listed_file(path, image)
        first, where, votes = ballots.setdefault(file, (line, split, {}))
        if voter is None and votes:
            before = votes[""][0]
            hint = (f" with label {label!r} where line {first} gives {before!r}: several annotators' labels? Give "
                    f"one per image (e.g. their majority vote), or name who gave each in a column annotator"
                    if label != before else "")
            raise ValueError(f"{path} line {line}: {image} is listed again (first at line {first}){hint}; list every "
                             f"image once, in one split, with one label")
        if where != split:
            raise ValueError(f"{path} line {line}: {image} is in split {split} here and {where} at line {first}; give "
                             f"an image one split")
        if who in votes:
            raise ValueError(f"{path} line {line}: {header[voter]} {who!r} labels {image} again (first at line "
                             f"{votes[who][1]}); one vote per annotator and image")
        votes[who] = (label, line)
    rows: dict[str, list[tuple[Path, str]]] = {s: [] for s in CSV_SPLITS}
    tallies = {}
    for file, (_, split, votes) in ballots.items():
        # most first; a tie in the file's order (most_common keeps the order of first appearance among equals)
        tallies[file] = dict(Counter(label for label, _ in votes.values()).most_common())
        rows[split].append((file, next(iter(tallies[file]))))
    classes = label_order(label for items in rows.values() for _, label in items)
    if voter is None:
        return ListedImages(rows, classes, "split" in column)
    annotators = len({who for _, _, votes in ballots.values() for who in votes})
    return ListedImages(rows, classes, "split" in column, annotators, tallies)


def load_csv(path: str | None, *, on_bad_images: str = "error", image_size: int | None = None) -> FileDataset:
    """csv:FILE: one image a row, with its path (relative to the file's folder, or absolute), its
    label (a class name or number) and its split: ``train``, ``val`` (a clean set you verified)
    or ``test``; without a split column every row trains (said on the console). ``image_size``
    None: the training images' own size (``native_size``)."""
    if not path:
        raise ValueError("csv needs a file: csv:FILE (columns path, label, and optionally split)")
    listed = csv_rows(Path(path))
    rows, classes = listed.rows, listed.classes
    warn_twin_classes(classes, path)
    if listed.tallies is not None:
        counts = [list(votes.values()) for votes in listed.tallies.values()]
        voted = sum(sum(c) > 1 for c in counts)
        ties = sum(len(c) > 1 and c[0] == c[1] for c in counts)
        warn_data(f"{path}: the votes of {listed.annotators} annotators; each image's label is the majority of its "
                  f"votes ({voted} images with more than one vote, {ties} of them tied: the label voted first taken)")
    if not listed.has_split:
        warn_data(f"{path}: no split column, so every row is a training image, with no clean or test set of its own; "
                  f"to give them, add a column split: train, val (labels you verified) or test")
    if not rows["train"]:
        raise ValueError(f"{path}: no rows with split train; a csv dataset needs training images (val: a verified "
                         f"clean set, test: held out to measure accuracy by, are optional)")
    index = {name: i for i, name in enumerate(classes)}

    def items(split: str):
        return check_images([(f, index[label]) for f, label in rows[split]], on_bad_images, f"{path} ({split})")

    untrained = sorted(set(classes) - {label for _, label in rows["train"]})
    if untrained:
        warn_data(f"{path}: class(es) {', '.join(map(repr, untrained[:5]))} have no training image (they appear in "
                  f"val or test only); they stay classes the model can predict")
    ds = _own_images("csv", items, tuple(classes), items("val") or None, image_size, Path(path).parent, Path(path),
                     listed=True)
    ds.votes = listed.tallies
    return ds


def _warn_upscaling(items, image_size: int, root: Path) -> None:
    """Say so when --image-size blows the images up more than 2x (e.g. 16-px icons to 224)."""
    side = short_side(items)
    if side is not None and image_size > 2 * side:
        warn_data(f"{root}: images are about {side} px (e.g. {items[0][0].name}) and --image-size {image_size} "
                  f"upscales them {image_size / side:.0f}x; leave --image-size out (the images' own size, "
                  f"{max(8, side)}) or give a small model, unless the upscaling is meant (e.g. for "
                  f"ImageNet-pretrained weights)")
