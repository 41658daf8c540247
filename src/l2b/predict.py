"""A trained run's model on new inputs: :func:`load_model` (Python) and ``l2b predict`` (the CLI).

A run directory is all it needs: config.json records the architecture, the class names and how
the training data were fed to the model (``data.inputs``: the normalisation, and for image files
the crop and transform), so new inputs are prepared exactly as the run's test set was, without
the training data. Runs of l2b versions that did not record it rebuild it from their dataset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .rundir import load_checkpoint, not_a_run, read_json

WHICH = {"auto": "best_model.pt where a clean set chose it, else the final model (a meta set selected from the "
                 "noisy data chose its own: biased)",
         "best": "best_model.pt (the best clean-validation epoch)",
         "final": "the last epoch's model (checkpoint.pt)",
         "early": "early_model.pt (the last epoch before it began to memorise its labels)"}


@dataclass
class Classifier:
    """A run's model, ready for new inputs: ``predict_proba`` (n x K probabilities, float32) and
    ``predict`` (class names). ``which``: best, final or early; ``epoch``: the 1-based epoch whose
    weights these are (None where the run does not say)."""

    model: torch.nn.Module
    classes: tuple[str, ...]
    inputs: dict[str, Any]
    device: torch.device
    which: str
    epoch: int | None
    epochs: int
    batch_size: int = 256

    @property
    def description(self) -> str:
        name = "checkpoint.pt" if self.which == "final" else f"{self.which}_model.pt"
        return name + (f" (epoch {self.epoch} of {self.epochs})" if self.epoch is not None else "")

    def predict_proba(self, inputs, workers: int = 0) -> np.ndarray:
        """Probabilities of every class (columns in the order of ``classes``), one row per input.

        A run on image files takes image paths (str or Path) or PIL images, each decoded, resized
        and centre-cropped as the run's test images were. A run on in-memory arrays takes a uint8
        array of images of the run's size and channels, stored N×H×W or N×H×W×C as in an npz, or
        N×C×H×W (PyTorch's order); a numpy array or a torch tensor. ``workers``: loader processes that
        decode image files (0: in this process)."""
        return self._probabilities(self._prepared(inputs, workers))

    def _probabilities(self, batches) -> np.ndarray:
        from .models import eval_mode

        rows = []
        with torch.no_grad(), eval_mode(self.model):  # eval mode even if the caller trained the model since
            for batch in batches:
                rows.append(torch.softmax(self.model(batch.to(self.device)).float(), dim=1).cpu())
        if not rows:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return torch.cat(rows).numpy()

    def prepare(self, inputs, workers: int = 0) -> torch.Tensor:
        """The inputs as the model takes them: float N×C×H×W, decoded, resized, cropped and
        normalised as the run's test set was (``inputs`` describes how), e.g. to export the model
        or to read its features."""
        batches = list(self._prepared(inputs, workers))
        return torch.cat(batches) if batches else torch.zeros(0, self.inputs["channels"], 0, 0)

    def predict(self, inputs, workers: int = 0) -> list[str]:
        """The most probable class of each input, by name."""
        return [self.classes[k] for k in self.predict_proba(inputs, workers).argmax(axis=1)]

    def _prepared(self, inputs, workers: int = 0, where: str = "the input"):
        """The inputs as normalised float batches for the model."""
        if self.inputs["kind"] == "images":
            return self._image_batches(inputs, workers)
        from .data.augment import normalize_batch

        x = as_images(inputs, self.inputs, where)
        mean, std = torch.tensor(self.inputs["mean"]), torch.tensor(self.inputs["std"])
        return (normalize_batch(x[k:k + self.batch_size], mean, std) for k in range(0, len(x), self.batch_size))

    def _image_batches(self, inputs, workers: int):
        from .data.images import ImageFiles, pil_image

        if isinstance(inputs, (str, Path)) or not isinstance(inputs, Sequence):
            raise ValueError(f"this model classifies image files: give a list of image paths or PIL images, "
                             f"not a {type(inputs).__name__}")
        image = pil_image().Image
        for i, item in enumerate(inputs):
            if not isinstance(item, (str, Path, image)):
                raise ValueError(f"input {i} is a {type(item).__name__}; give image paths or PIL images")
        spec = self.inputs
        ds = ImageFiles([(item, -1) for item in inputs], spec["size"], train=False, transform=spec["transform"],
                        mean=spec["mean"], std=spec["std"], own_photos=spec["own_photos"])
        loader = torch.utils.data.DataLoader(ds, batch_size=self.batch_size, num_workers=workers)
        return (x for x, _, _ in loader)


def as_images(inputs, spec: dict[str, Any], where: str = "the input") -> torch.Tensor:
    """New images for an array-trained model: uint8 N×C×H×W, checked against the run's channels and
    size (``spec``: config.json's ``data.inputs``), one line naming the mismatch otherwise."""
    from .data.npz import nchw

    x = inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
    if x.dtype.kind in "USO":
        raise ValueError(f"{where}: this model classifies images given as arrays (it trained on in-memory arrays), "
                         f"not {x.dtype} values such as file paths")
    want = (spec["channels"], spec["height"], spec["width"])
    if x.ndim == 4 and tuple(x.shape[1:]) == want and want[0] != want[2]:  # N×C×H×W already (PyTorch's order)
        x = x.transpose(0, 2, 3, 1)
    images = nchw(x, where, "x")
    if tuple(images.shape[1:]) != want:
        got = tuple(images.shape[1:])
        raise ValueError(f"{where}: images of {_shape(got)}, but the model trained on images of {_shape(want)}: give "
                         f"images of that size and channels")
    return images


def _shape(chw: tuple[int, int, int]) -> str:
    c, h, w = chw
    return f"{h}×{w}" + (f"×{c} (H×W×C)" if c != 1 else " (H×W, grayscale)")


def load_model(run: str | Path, which: str = "auto", device: str | torch.device | None = None,
               data: str | None = None, batch_size: int | None = None) -> Classifier:
    """The model of a run directory (an ``l2b train --out``), in eval mode, for new inputs.

    ``which``: ``auto`` (best_model.pt, the best clean-validation epoch's model, where the run has
    one chosen by a clean set, else the final model), ``best``, ``final`` or ``early``. ``device``: where it runs (default:
    the run's device where this machine has it, else the CPU). ``data``: the run's dataset where it
    is now, needed only by runs of l2b versions that did not record how their inputs were prepared."""
    from .config import TrainConfig
    from .config_checks import check_device
    from .run_model import build_model, own_builder, resolve_device, usable_device

    run = Path(run)
    if which not in WHICH:
        raise ValueError(f"unknown model {which!r}; choose one of {', '.join(WHICH)}")
    for name in ("config.json", "checkpoint.pt"):
        if not (run / name).is_file():
            raise not_a_run(run, "predict", f"{run}: no {name}; give the directory of an l2b run (its --out)")
    saved = read_json(run / "config.json", need=("config",))
    cfg = TrainConfig.from_dict(saved["config"], str(run / "config.json"))
    recorded = saved.get("data", {})
    inputs, classes = recorded.get("inputs"), tuple(recorded.get("classes") or ())
    if not inputs or not classes:  # a run of a version that did not record them: read from its dataset
        from .run_data import model_inputs

        ds = _run_dataset(run, data)
        inputs, classes = inputs or model_inputs(ds), classes or tuple(ds.classes)
    if which == "auto":  # a meta set selected from the noisy data is no fair judge of its own model
        which = "best" if (run / "best_model.pt").is_file() and cfg.meta_set == "clean" else "final"
    path = run / ("checkpoint.pt" if which == "final" else f"{which}_model.pt")
    if not path.is_file():
        from .run_scores import saved_model_origin

        raise FileNotFoundError(f"{path}: not found (it is {saved_model_origin(which)}); use the final model "
                                f"(--model final; which='final')")
    if device is not None:
        check_device(str(device))  # a one-line error for a name torch does not know or CUDA it does not have
    dev = resolve_device(usable_device(cfg.device) if device is None else str(device))
    shape = type("Inputs", (), {"num_classes": len(classes), "in_channels": inputs["channels"],
                                "image_size": inputs["size"] if inputs["kind"] == "images" else inputs["width"]})
    model = build_model(cfg, shape, dev, own_builder(cfg, saved, run))
    state = load_checkpoint(path, dev)
    try:
        model.load_state_dict(state["model"] if which == "final" else state)
    except (RuntimeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: its weights do not fit the model {run / 'config.json'} describes ({cfg.model}, "
                         f"width {cfg.width}, {len(classes)} classes): {str(err).splitlines()[0]}; was config.json "
                         f"edited, or the file copied from another run?") from None
    model.eval()
    return Classifier(model, classes, inputs, dev, which, _epoch(run, which, state), cfg.epochs,
                      batch_size or cfg.eval_batch_size)


def _epoch(run: Path, which: str, state: dict) -> int | None:
    """The 1-based epoch whose weights a run's model holds, as the run recorded it."""
    if which == "final":
        return int(state["epoch"]) + 1 if "epoch" in state else None
    if (run / "metrics.json").is_file():
        epoch = read_json(run / "metrics.json").get(f"{which}_epoch")
    elif which == "best":  # a run that has not finished: its checkpoint knows its best epoch so far
        epoch = (load_checkpoint(run / "checkpoint.pt").get("best") or {}).get("epoch")
    else:
        epoch = None
    return None if epoch is None or epoch < 0 else int(epoch) + 1


def _run_dataset(run: Path, data: str | None):
    """The dataset of a run that did not record how its inputs were prepared."""
    from .trainer import load_run

    try:
        return load_run(run, device="cpu", data=data)[1].ds
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}. (This run was trained by an l2b version that did not record how its inputs "
                                f"were prepared, so its dataset is read for it.)") from None


def input_images(paths: Sequence[str | Path], on_bad_images: str = "error") -> list[tuple[Path, str]]:
    """(image file, its name in the csv) for everything ``paths`` names: image files as given;
    folders searched through (as a class folder is: sub-folders included, hidden files left out);
    lists of images (a .csv with a path column, a .txt of one path a line, each relative to the
    list's folder and named as listed). Unreadable images are an error naming them, or with
    ``on_bad_images="skip"`` left out with a warning naming them."""
    from .data.files import IMAGE_SUFFIXES, image_files
    from .data.images import check_images

    found: list[tuple[Path, str]] = []
    for given in map(Path, paths):
        if given.is_dir():
            inside = image_files(given)
            if not inside:
                raise ValueError(f"{given}: a folder without image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            found += [(p, str(p)) for p in inside]
        elif given.is_file() and given.suffix.lower() in (".csv", ".txt"):
            found += listed_images(given)
        elif given.is_file():
            found.append((given, str(given)))
        else:
            raise FileNotFoundError(f"{given}: no such file or folder")
    if not found:
        raise ValueError("no inputs given: name image files, folders of them, or lists of them")
    return check_images(found, on_bad_images, "the inputs")  # (file, name) pairs, as it takes (file, label)


def listed_images(path: Path) -> list[tuple[Path, str]]:
    """The images a list names, relative to its folder: a .csv with a header naming a path column
    (as a csv dataset's; other columns ignored) or a .txt of one path a line."""
    from .data.files import CSV_COLUMNS, csv_text, csv_table, listed_file

    if path.suffix.lower() == ".txt":
        names = [line.strip() for line in csv_text(path).splitlines()]
    else:
        header, reader = csv_table(path)
        column = next((i for i, h in enumerate(header) if h in CSV_COLUMNS["path"]), None)
        if column is None:
            raise ValueError(f"{path}: no path column ({' or '.join(CSV_COLUMNS['path'])}) in its header "
                             f"({', '.join(header) or 'empty'}); a list of images has one")
        names = []
        for row in reader:
            if len(row) <= column and any(cell.strip() for cell in row):
                raise ValueError(f"{path} line {reader.line_num}: {len(row)} fields, no path")
            names.append(row[column].strip() if len(row) > column else "")
    listed = [(listed_file(path, name), name) for name in names if name]
    if not listed:
        raise ValueError(f"{path}: lists no images")
    return listed


def input_arrays(paths: Sequence[str | Path], array: str | None = None) -> list[tuple[str, np.ndarray]]:
    """(name, images) of every .npz or .npy file: an npz's array ``array``, or where not named, its
    only array, else its ``x`` or ``x_test``."""
    import zipfile

    out = []
    for p in map(Path, paths):
        if p.is_dir():
            raise ValueError(f"{p}: a folder, but this model classifies arrays of images (it trained on them): give "
                             f".npz or .npy files")
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file")
        try:
            z = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"{p}: not a readable .npz or .npy file ({type(err).__name__}); this model classifies "
                             f"arrays of images, saved with np.savez or np.save") from None
        if isinstance(z, np.ndarray):
            out.append((str(p), z))
            continue
        names = z.files
        key = array or (names[0] if len(names) == 1 else next((k for k in ("x", "x_test") if k in names), None))
        if key not in names:
            raise ValueError(f"{p}: " + (f"no array {array!r}" if array else "which array holds the images?") +
                             f" It holds {', '.join(names) or 'none'}; name one with --array NAME")
        try:
            out.append((f"{p}[{key}]", z[key]))
        except ValueError as err:
            raise ValueError(f"{p}: {key} cannot be read ({str(err).splitlines()[0]}); store a uint8 array of "
                             f"images") from None
    return out


def write_predictions(run: str | Path, inputs: Sequence[str | Path], out: str | Path | None = None,
                      which: str = "auto", top: int = 1, on_bad_images: str = "error", array: str | None = None,
                      workers: int | None = None, device: str | None = None, data: str | None = None,
                      batch_size: int | None = None) -> dict[str, Any]:
    """``l2b predict``: classify ``inputs`` (image files and folders of them, or .npz/.npy arrays,
    as the run trained) with a model of ``run``, and write a csv (default RUN/predictions.csv) of
    each input's ``top`` most probable classes. ``workers``: processes that decode image files
    (default: none for a batch or less, else as many as training takes by default). Returns what
    was done, for the console."""
    import csv

    from .runlock import atomic_write

    if top < 1:
        raise ValueError(f"--top {top}: give 1 or more")
    clf = load_model(run, which, device=device, data=data, batch_size=batch_size)
    top = min(top, len(clf.classes))
    if clf.inputs["kind"] == "images":
        files = input_images(inputs, on_bad_images)
        if workers is None:
            workers = 0 if len(files) <= clf.batch_size else min(8, os.cpu_count() or 1)
        probs = clf.predict_proba([f for f, _ in files], workers)
        names = [[shown] for _, shown in files]
        head = ["path"]
    else:
        names, parts = [], []
        for where, x in input_arrays(inputs, array):
            parts.append(clf._probabilities(clf._prepared(x, where=where)))
            names += [[where.split("[")[0], i] for i in range(len(parts[-1]))]
        probs = np.concatenate(parts)
        head = ["file", "index"]
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top]
    head += ["predicted", "probability"] + [f"{c}_{k}" for k in range(2, top + 1) for c in ("class", "probability")]
    path = Path(out) if out is not None else Path(run) / "predictions.csv"

    def rows(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(head)
            for name, best, p in zip(names, order, probs):
                writer.writerow(name + [v for k in best for v in (clf.classes[k], f"{p[k]:.4f}")])

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, rows)
    counts = np.bincount(order[:, 0], minlength=len(clf.classes)) if len(order) else np.zeros(len(clf.classes), int)
    return {"csv": path, "inputs": len(probs), "model": clf.description,
            "counts": {clf.classes[k]: int(counts[k]) for k in np.argsort(-counts, kind="stable") if counts[k]}}


def console_line(s: dict[str, Any]) -> str:
    """What ``l2b predict`` prints: how many inputs, by which model, the classes it gave, the csv."""
    shown = list(s["counts"].items())
    counts = ", ".join(f"{c} {n}" for c, n in shown[:10]) + (f", {len(shown) - 10} more classes" if len(shown) > 10 else "")
    return f"wrote {s['csv']}: {s['inputs']} input{'s' if s['inputs'] != 1 else ''} classified by {s['model']}; predicted {counts or 'nothing'}"
