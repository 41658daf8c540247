"""The data of one run, from its config: the dataset, the clean validation split, the noise,
and the three splits (noisy train, clean validation, test) ready to batch on the device."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .calibrate import uncovered_classes
from .config import TrainConfig, labels_as_given, own_labels
from .config_checks import parse_holdout
from .data import FILE_DATASETS, ArrayDataset, FileDataset, clean_val_split, load_dataset
from .data.batches import FileData, TensorData
from .metaset import class_name
from .console import warn
from .noise import apply_noise, transition_matrix
from .rundir import read_json


@dataclass
class Prepared:
    """The data of one run: the clean split taken, the noise applied."""

    ds: ArrayDataset | FileDataset
    train_idx: np.ndarray  # positions in the dataset's training set
    val_idx: np.ndarray | None  # clean validation positions in it (None: the dataset's own set)
    y_true: np.ndarray  # true labels of the training samples used
    y_noisy: np.ndarray  # their noisy labels
    noise_rate: float
    transition: np.ndarray
    clean_source: str = ""  # where the clean set comes from, in words
    excluded: tuple[int, int] = (0, 0)  # training and clean samples left out by --exclude
    relabelled: tuple[int, int] = (0, 0)  # labels --relabel changed, and the samples it named that kept theirs


def prepare_data(cfg: TrainConfig, needs_clean: bool) -> Prepared:
    options = {"on_bad_images": cfg.on_bad_images, "image_size": cfg.image_size}
    name = cfg.data.partition(":")[0]
    ds = load_dataset(cfg.data, **(options if name in FILE_DATASETS else {}))
    y_all = ds.y_train.numpy()
    own_val = bool((isinstance(ds, ArrayDataset) and ds.x_val is not None) or (isinstance(ds, FileDataset) and ds.val))
    own = own_labels(cfg.data)
    where = {"npz": "npz: x_val and y_val", "csv": "rows with split val", "isic2019": "val.txt",
             "clothing1m": "clean_val_key_list.txt"}.get(name, "a val/ folder")
    if cfg.val_per_class is not None or cfg.val_total is not None:
        train_idx, val_idx = clean_val_split(y_all, per_class=cfg.val_per_class, total=cfg.val_total, seed=cfg.seed,
                                             class_names=list(ds.classes))
        size = f"{cfg.val_per_class} per class" if cfg.val_per_class is not None else f"{cfg.val_total} in all"
        if labels_as_given(cfg.data, cfg.noise):
            source = f"drawn from your training labels, {size}, unverified"
            warn(f"the clean set is drawn from your own training labels ({size}), which nobody has verified: it "
                 f"inherits their errors. Give a verified clean set ({where}) if you have one; `l2b label-issues` "
                 f"scores these samples too")
        else:
            source = f"drawn from the training set on its true labels, {size}"
        if own_val:
            warn(f"the dataset's own clean set ({where}) is NOT used: --val-per-class/--val-total draws one from the "
                 f"training labels instead; leave both out to use the dataset's own")
    elif own_val:
        train_idx, val_idx, source = np.arange(len(y_all)), None, "the dataset's own clean set"
        _warn_uncovered(ds, y_all, where)
    elif needs_clean and own:
        raise ValueError(
            f"method {cfg.method!r} needs a clean (verified) set and {cfg.data} has none of its own: add one "
            f"({where}), or draw one from your training labels with --val-per-class K or --val-total M (it then "
            f"inherits their errors)")
    elif needs_clean:
        raise ValueError(
            f"method {cfg.method!r} needs a clean validation set: give --val-per-class K "
            f"(or --val-total M), or use a dataset with its own clean set"
        )
    else:
        train_idx, val_idx, source = np.arange(len(y_all)), np.array([], dtype=np.int64), "no clean set"
    # Noise is applied to the whole training set (a pure function of it, so CIFAR-N files line
    # up), then the clean validation samples keep their true labels.
    features = None
    if cfg.noise.startswith("instance:"):
        if not isinstance(ds, ArrayDataset):
            raise ValueError("instance noise needs in-memory images; not available for image-file datasets")
        features = ds.x_train.reshape(len(ds.x_train), -1).numpy()
    noisy = apply_noise(
        y_all, cfg.noise, num_classes=ds.num_classes,
        seed=cfg.seed if cfg.noise_seed is None else cfg.noise_seed,
        coarse_labels=None if ds.coarse_train is None else ds.coarse_train.numpy(),
        mapping=ds.asymmetric_map, features=features, data_dir=ds.root,
    )
    given, relabels = noisy.labels, (0, 0)
    if cfg.relabel:  # the labels given, corrected after the clean draw and the noise: the run without the list, but for them
        positions, labels, kept = corrected_labels(Path(cfg.relabel), ds)
        if labels_as_given(cfg.data, cfg.noise):  # your own labels: a clean set drawn from them is corrected too
            ds = with_labels(ds, positions, labels)
            y_all = ds.y_train.numpy()
        elif val_idx is not None and np.isin(positions, val_idx).any():
            clean = positions[np.isin(positions, val_idx)]
            raise ValueError(f"--relabel {cfg.relabel}: names {len(clean)} sample(s) of the clean set (the first: index "
                             f"{clean[0]}), whose labels are the dataset's true ones; name training samples only")
        given = given.copy()
        changed = int((given[positions] != labels).sum())
        given[positions] = labels
        relabels = (changed, len(positions) - changed + kept)
    if cfg.train_subset is not None:
        if cfg.train_subset > len(train_idx):
            raise ValueError(f"train_subset={cfg.train_subset} exceeds the {len(train_idx)} training samples")
        rng = np.random.Generator(np.random.PCG64(cfg.seed))
        train_idx = np.sort(rng.choice(train_idx, cfg.train_subset, replace=False))
    excluded = (0, 0)
    if cfg.exclude:  # the run without it, less these samples (the same clean draw and subset);
        # before a fold is held out, so that a cross-fit's folds split the run's own training samples
        gone = excluded_positions(Path(cfg.exclude), ds)
        kept_train = np.setdiff1d(train_idx, gone)
        kept_val = None if val_idx is None else np.setdiff1d(val_idx, gone)
        excluded = (len(train_idx) - len(kept_train), 0 if val_idx is None else len(val_idx) - len(kept_val))
        train_idx, val_idx = kept_train, kept_val
        if not len(train_idx):
            raise ValueError(f"--exclude {cfg.exclude} leaves out every training sample; nothing is left to train on")
    if cfg.holdout is not None:
        fold, folds = parse_holdout(cfg.holdout)
        train_idx = np.delete(train_idx, fold_positions(given[train_idx], fold, folds, cfg.seed))
    y_true, y_noisy = y_all[train_idx], given[train_idx]
    return Prepared(ds, train_idx, val_idx, y_true, y_noisy, float((y_true != y_noisy).mean()),
                    transition_matrix(y_true, y_noisy, ds.num_classes), source, excluded, relabels)


def excluded_positions(path: Path, ds) -> np.ndarray:
    """The training-set positions a csv names (``--exclude``), as :func:`named_samples` reads them."""
    return np.unique(np.array([position for _, position, _ in named_samples(path, ds, "--exclude")[1]],
                              dtype=np.int64))


def named_samples(path: Path, ds, flag: str):
    """The header of a csv that names training samples (``--exclude``, ``--relabel``), and its
    rows as (where, position, cells): by an ``index`` column (positions in the dataset's training
    set, as label_issues.csv writes them), else by a path column (image-file datasets: as
    label_issues.csv writes it, or relative to the csv's folder). One line names the file, the
    line and the value of a row that names no training sample, or a test sample."""
    from .data.files import CSV_COLUMNS, csv_table, listed_file

    header, reader = csv_table(path)
    by_path = isinstance(ds, FileDataset) and "index" not in header
    names = ("index",) + (CSV_COLUMNS["path"] if by_path else ())
    column = next((i for i, h in enumerate(header) if h in names), None)
    if column is None:
        raise ValueError(f"{flag} {path}: no {' or '.join(names)} column in its header ({', '.join(header) or 'empty'}); "
                         f"give a csv like label_issues.csv, whose index column names each sample")
    split = header.index("split") if "split" in header else None
    n = len(ds.y_train)
    known = {}
    if by_path:
        for i, (p, _) in enumerate(ds.train):
            known[ds.shown_path(p)] = known[str(Path(p).resolve())] = i

    def rows():
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            where = f"{flag} {path} line {reader.line_num}"
            value = row[column].strip() if column < len(row) else ""
            if split is not None and split < len(row) and row[split].strip().lower() == "test":
                raise ValueError(f"{where}: a test sample ({value}); only training samples can be "
                                 f"{'left out' if flag == '--exclude' else 'relabelled'}")
            if by_path:
                i = known.get(value, known.get(str(listed_file(path, value).resolve())))
                if i is None:
                    raise ValueError(f"{where}: {value!r} is not one of the training images; give paths as "
                                     f"label_issues.csv writes them, or relative to {path.parent}")
                yield where, i, row
                continue
            try:
                i = int(value)
            except ValueError:
                raise ValueError(f"{where}: index {value!r} is not a whole number") from None
            if not 0 <= i < n:
                raise ValueError(f"{where}: index {i} is outside the dataset's {n} training samples (0..{n - 1})")
            yield where, i, row

    return header, rows()


# the column of --relabel's csv that holds the label to carry, the first found: one's own, else label_issues.csv's
RELABEL_COLUMNS = ("label", "class", "suggested_class", "suggested_label")


def corrected_labels(path: Path, ds) -> tuple[np.ndarray, np.ndarray, int]:
    """The training-set positions a csv names (``--relabel``), the labels they are to carry and the
    number of rows that leave theirs as given (an empty label cell: reviewed and right). A label
    is a class name, or a number 0..K-1 (``suggested_label``: a number only)."""
    header, rows = named_samples(path, ds, "--relabel")
    column = next((c for c in RELABEL_COLUMNS if c in header), None)
    if column is None:
        raise ValueError(f"--relabel {path}: no label column ({', '.join(RELABEL_COLUMNS)}) in its header "
                         f"({', '.join(header) or 'empty'}); add a column label with each sample's right class")
    at, k = header.index(column), len(ds.classes)
    names = {} if column == "suggested_label" else {name: i for i, name in enumerate(ds.classes)}
    # label_issues.csv names each suggestion twice: one edited and not the other is a contradiction
    twin = header.index("suggested_label") if column == "suggested_class" and "suggested_label" in header else None
    labels: dict[int, int] = {}
    kept = 0
    for where, position, row in rows:
        value = row[at].strip() if at < len(row) else ""
        number = row[twin].strip() if twin is not None and twin < len(row) else None
        if not value or number == "":  # blank: reviewed, and right as given
            kept += 1
            continue
        label = names.get(value)
        if label is None and value.isdigit() and int(value) < k:
            label = int(value)
        if label is None:
            shown = ", ".join(ds.classes[:10]) + (", ..." if k > 10 else "")
            raise ValueError(f"{where}: {column} {value!r} is not a class of the dataset ({shown}); give a class name "
                             f"or a number 0..{k - 1}")
        if number is not None and number != str(label):
            raise ValueError(f"{where}: suggested_class {value!r} (class {label}) but suggested_label {number}; edit "
                             f"both alike, or give the right class in a column label")
        if labels.setdefault(position, label) != label:
            raise ValueError(f"{where}: names training sample {position} again, with another label "
                             f"({ds.classes[labels[position]]!r}, then {ds.classes[label]!r}); give each sample one")
    positions = np.array(sorted(labels), dtype=np.int64)
    return positions, np.array([labels[i] for i in positions], dtype=np.int64), kept


def with_labels(ds, positions: np.ndarray, labels: np.ndarray):
    """``ds`` with the training labels at ``positions`` replaced (a copy of its labels: a loaded
    dataset may be cached and shared)."""
    from dataclasses import replace

    if isinstance(ds, FileDataset):
        train = list(ds.train)
        for i, label in zip(positions.tolist(), labels.tolist()):
            train[i] = (train[i][0], label)
        return replace(ds, train=train)
    y = ds.y_train.clone()
    y[torch.from_numpy(positions)] = torch.from_numpy(labels)
    return replace(ds, y_train=y)


def fold_positions(labels: np.ndarray, fold: int, folds: int, seed: int) -> np.ndarray:
    """The positions (into ``labels``, sorted) of the ``fold``-th (1-based) of ``folds`` folds:
    each class's positions, shuffled by ``seed``, dealt in turn to the folds (a stratified split,
    every fold within one sample of the others in every class and in all)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    owner = np.empty(len(labels), dtype=np.int64)
    dealt = 0
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        owner[members] = (dealt + np.arange(len(members))) % folds
        dealt += len(members)
    return np.flatnonzero(owner == fold - 1)


def _warn_uncovered(ds, y_train: np.ndarray, where: str) -> None:
    """A dataset's own clean set without a sample of some labelled class: the run goes on, but
    nothing steers or validates that class (and label-issues cannot calibrate by the clean set)."""
    y_val = ds.y_val.numpy() if isinstance(ds, ArrayDataset) else np.array([label for _, label in ds.val])
    missing = uncovered_classes(y_train, y_val)
    if len(missing):
        names = ", ".join(class_name(ds.classes, int(c)) for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
        warn(f"the clean set ({where}) has no sample of class(es) {names} ({len(missing)} of the "
             f"{len(np.unique(y_train))} training classes): a meta step has nothing of them to steer by and the clean "
             f"accuracy does not measure them; add clean samples of every class")


def has_test(prep: Prepared) -> bool:
    """Whether the dataset has a test set (your own data may come without one)."""
    return len(prep.ds.test if isinstance(prep.ds, FileDataset) else prep.ds.y_test) > 0


def truth_in_words(cfg: TrainConfig) -> str | None:
    """What the training samples' true labels (``Prepared.y_true``) are, in words; None where nobody
    knows them: your own labels as given (or a real-noise dataset's), with no noise injected."""
    if labels_as_given(cfg.data, cfg.noise):
        return None
    return "your labels before the injected noise" if own_labels(cfg.data) else "the true labels"


def data_line(cfg: TrainConfig, prep: Prepared, splits, start_epoch: int = 0) -> str:
    """What is done to the data, in one line (printed as a run starts): the dataset, the sizes of
    the three splits, where the clean set comes from, the injected noise, and a resumed epoch."""
    train, val, test = splits
    if cfg.noise == "none":
        noise = "no noise injected" + (" (your own labels as given)" if own_labels(cfg.data) else "")
    else:
        noise = (f"noise {cfg.noise} injected" + (" on top of your own labels" if own_labels(cfg.data) else "")
                 + f" ({100 * prep.noise_rate:.1f}% of the training labels changed)")
    tested = f"test {len(test)}" if has_test(prep) else "no test set (nothing held out to measure accuracy by)"
    text = f"data {cfg.data}: train {len(train)}, clean {len(val)} ({prep.clean_source}), {tested}; {noise}"
    if isinstance(prep.ds, FileDataset):
        text += f"; {prep.ds.image_size}-px crops"
    if cfg.holdout is not None:
        text += f"; fold {cfg.holdout} of the training samples held out"
    if cfg.exclude:
        train_out, clean_out = prep.excluded
        text += (f"; {train_out} training sample{'s' if train_out != 1 else ''} left out (--exclude)"
                 + (f", and {clean_out} of the clean set" if clean_out else ""))
    if cfg.relabel:
        changed, kept = prep.relabelled
        text += (f"; {changed} label{'s' if changed != 1 else ''} corrected (--relabel)"
                 + (f", {kept} named there kept {'theirs' if kept != 1 else 'its own'}" if kept else ""))
    if cfg.train_on_clean:
        text += "; the clean set also trains"
    if cfg.meta_set != "clean":
        text += (f"; meta set {cfg.meta_set} from the noisy data after {cfg.warmup_epochs} warm-up epoch(s)"
                 + (f", again every {cfg.meta_refresh}" if cfg.meta_refresh else ""))
    if start_epoch >= cfg.epochs:  # resumed after its last epoch: its files stay as they are
        return text + f"; already trained all {cfg.epochs} epochs, nothing to resume"
    return text + (f"; resuming at epoch {start_epoch + 1}/{cfg.epochs}" if start_epoch else "")


def model_inputs(ds) -> dict[str, Any]:
    """How a dataset's images reach its model (recorded in config.json as ``data.inputs``): for
    in-memory arrays their channels, size and per-channel normalisation; for image files the crop
    size, the transform, the normalisation and whether they are read as one's own photos."""
    if isinstance(ds, FileDataset):
        return {"kind": "images", "channels": ds.in_channels, "size": ds.image_size, "transform": ds.transform,
                "mean": [float(v) for v in ds.mean], "std": [float(v) for v in ds.std], "own_photos": ds.own_photos}
    mean, std = ds.mean_std()
    _, c, h, w = ds.x_train.shape
    return {"kind": "arrays", "channels": int(c), "height": int(h), "width": int(w),
            "mean": mean.tolist(), "std": std.tolist()}


def build_splits(cfg: TrainConfig, prep: Prepared, device: torch.device, shard=(0, 1)):
    ds = prep.ds
    if isinstance(ds, ArrayDataset):
        mean, std = ds.mean_std()
        aug = {"crop_padding": 0, "flip": False} if cfg.augment == "none" else (
            {"crop_padding": 4, "flip": True} if cfg.augment == "crop-flip" else ds.augment)

        def split(x, y):
            return TensorData(x, y, device, mean, std, aug, shard)

        train = split(ds.x_train[prep.train_idx], prep.y_noisy)
        if prep.val_idx is None:
            val = split(ds.x_val, ds.y_val.numpy())
        else:
            val = split(ds.x_train[prep.val_idx], ds.y_train.numpy()[prep.val_idx])
        test = split(ds.x_test, ds.y_test.numpy())
    else:
        train = FileData(ds, [ds.train[i] for i in prep.train_idx], prep.y_noisy, device, cfg.resolved_workers(), shard)
        if prep.val_idx is None:
            val = FileData(ds, ds.val, [y for _, y in ds.val], device, cfg.resolved_workers(), shard)
        else:
            val = FileData(ds, [ds.train[i] for i in prep.val_idx], ds.y_train.numpy()[prep.val_idx],
                           device, cfg.resolved_workers(), shard)
        test = FileData(ds, ds.test, [y for _, y in ds.test], device, cfg.resolved_workers(), shard)
    return train, val, test


def data_fingerprint(cfg: TrainConfig, prep: Prepared, splits) -> dict:
    """What a run's checkpoint is bound to: the sizes of its splits, a hash of its labels (the
    given and the true training labels, the clean and test labels, and which samples are which)
    and the noise. ``--resume`` refuses other data."""
    import hashlib

    _, val, test = splits
    h = hashlib.sha256()
    for a in (prep.train_idx, prep.y_noisy, prep.y_true, np.array([]) if prep.val_idx is None else prep.val_idx,
              np.asarray(val.y.cpu() if hasattr(val.y, "cpu") else val.y),
              np.asarray(test.y.cpu() if hasattr(test.y, "cpu") else test.y)):
        h.update(np.ascontiguousarray(np.asarray(a, dtype=np.int64)).tobytes())
    return {"train": len(prep.y_noisy), "clean": len(val), "test": len(test), "classes": int(prep.ds.num_classes),
            "labels_sha256": h.hexdigest()[:16], "noise": cfg.noise}


def check_same_data(out, fingerprint: dict, resuming: bool = True) -> None:
    """The data must be what the run started on (its config.json's fingerprint): to resume it, or
    (``resuming=False``) to score its labels with its model."""
    saved = read_json(Path(out) / "config.json").get("data", {}).get("fingerprint")
    if saved is None:  # a run of an earlier version: nothing to compare
        return
    changed = [f"{k} {saved[k]} -> {fingerprint.get(k)}" if k != "labels_sha256" else "the labels (their hash differs)"
               for k in saved if saved[k] != fingerprint.get(k)]
    if changed:
        raise ValueError(
            f"--resume {out}: the data changed since the run started ({'; '.join(changed)}); its checkpoint belongs to "
            f"the old data. Restore that data, or start a new run with another --out" if resuming else
            f"{out}: the data changed since the run trained ({'; '.join(changed)}); its model and labels belong to the "
            f"old data. Restore that data, or give where it is now with --data")
