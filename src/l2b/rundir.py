"""The files of a run directory: environment record, atomic writes, safe checkpoint loading,
progress display and TensorBoard.

Checkpoints are read with ``torch.load(weights_only=True)``: only tensors and plain containers
(dict, list, tuple, str, numbers, None) can come back, so a crafted ``checkpoint.pt`` cannot run
code. Everything l2b writes into a checkpoint fits that (docs/reliability.md).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import platform
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .runlock import LOCK_NAME, SPACE_ERRNOS, atomic_write, state_bytes
from .version import __version__


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded safely: crafted, corrupted or truncated."""


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> Any:
    """The contents of a checkpoint, best-model or weights file, loaded without running code.

    Raises ``CheckpointError`` naming the file when it holds anything but tensors and plain
    containers (a file l2b wrote never does), or when it is corrupted or truncated.
    """
    path = Path(path)
    if path.is_file() and not zipfile.is_zipfile(path):  # torch.save always writes a zip archive
        raise CheckpointError(f"{path}: corrupted or truncated (not a PyTorch zip archive); "
                              f"delete it (or the run directory) and train again")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        first = lines[0] if lines else type(err).__name__
        raise CheckpointError(
            f"{path}: refused to load: it holds Python objects other than tensors and plain "
            f"containers, which l2b never writes and which could run code ({first}). "
            f"Use a checkpoint written by l2b, or delete the file to start the run afresh"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise CheckpointError(
            f"{path}: corrupted or truncated ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            f"delete it (or the run directory) and train again"
        ) from None


def read_json(path: str | Path, need: tuple[str, ...] = ()) -> dict[str, Any]:
    """A run file's JSON object, or a one-line error naming the file (truncated, edited, not JSON,
    not an object, or without one of the keys ``need`` names)."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); it was "
                         f"truncated or edited: restore it, or start the run again with --overwrite") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file; restore it, or start the run again with --overwrite") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: holds a JSON {type(value).__name__}, not the record l2b writes; it was edited or "
                         f"replaced: restore it, or start the run again with --overwrite")
    missing = [k for k in need if not isinstance(value.get(k), dict)]
    if missing:
        raise ValueError(f"{path}: has no {', '.join(missing)} record; it was edited or replaced: restore it, or start "
                         f"the run again with --overwrite")
    return value


def read_npz(path: str | Path, need: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """A run's .npz file (labels, weights), read whole, or a one-line error naming the file when it
    is truncated, not an npz archive, or lacks one of the arrays ``need`` names."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: corrupted or truncated ({' '.join(str(err).split()) or type(err).__name__}); "
                         f"start the run again with --overwrite") from None
    missing = [k for k in need if k not in arrays]
    if missing:
        raise ValueError(f"{path}: has no {', '.join(missing)} (it holds {', '.join(arrays) or 'nothing'}); it was "
                         f"edited or replaced: start the run again with --overwrite")
    return arrays


def writable_dir(out: Path, remedy: str = "write elsewhere with --out DIR") -> Path:
    """``out`` created and writable, or a one-line error ending with ``remedy``."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create {out} ({err.strerror}); {remedy}") from None
    if not os.access(out, os.W_OK):
        raise ValueError(f"{out} is not writable; {remedy}")
    return out


# Settings that may differ between a run and its resumption (or a grid cell and its rerun)
# without changing its results.
NOT_RESULTS = ("progress", "workers", "eval_batch_size", "device", "threads", "out")


def config_differences(saved: dict[str, Any], current: dict[str, Any],
                       defaults: dict[str, Any] | None = None) -> dict[str, tuple[Any, Any]]:
    """{setting: (saved value, current value)} for the settings that change a run's results. A
    setting that a run of an earlier version did not record counts as its default (``defaults``)."""
    defaults = defaults or {}
    keys = sorted((set(saved) | set(current)) - set(NOT_RESULTS))
    old = {k: saved.get(k, defaults.get(k)) for k in keys}
    return {k: (old[k], current.get(k)) for k in keys if old[k] != current.get(k)}


def prepare_out(out: Path, config: dict[str, Any], resume: bool, overwrite: bool,
                defaults: dict[str, Any] | None = None) -> None:
    """Make ``out`` ready before any data are read: writable, and not holding another run.

    A directory with files of a DIFFERENT run (or files that are not a run's) is refused
    unless ``overwrite``, which clears it; the same run's directory is reused.
    """
    if resume:
        return
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()):
        saved = out / "config.json"
        same = False
        if saved.is_file():
            try:
                same = not config_differences(read_json(saved).get("config", {}), config, defaults)
            except (ValueError, AttributeError):
                same = False
        if overwrite:
            for child in (p for p in out.iterdir() if p.name != LOCK_NAME):
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        elif not same:
            what = "an earlier run with other settings" if saved.is_file() else "files that are not an l2b run"
            raise ValueError(f"--out {out}: holds {what}; give --overwrite to clear it, or another --out")
        else:  # the same run again: nothing of the old one may survive
            for name in ("weights.npz", "label_issues.csv", "metrics.json", "best_model.pt", "early_model.pt",
                         "checkpoint.pt", "model_source.py"):
                (out / name).unlink(missing_ok=True)
    created = next((p for p in reversed([out, *out.parents]) if not p.exists()), None)  # topmost new dir
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".l2b-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"--out {out}: cannot write there ({err.strerror or err}); choose a writable directory") from None
    if created is not None:  # made again when the run writes its config: a run that fails early leaves nothing
        # remove only the directories made here, deepest first, and only while empty: a parallel
        # grid worker may meanwhile have created its own run below the same new parent
        for path in [out, *out.parents]:
            try:
                path.rmdir()
            except OSError:
                break
            if path == created:
                break


def append_row(out: Path, row: dict, writer=None) -> None:
    """One epoch's row: a line of metrics.jsonl, and its numbers as TensorBoard scalars."""
    line = json.dumps(finite_json(row)) + "\n"
    try:
        with open(out / "metrics.jsonl", "a") as fh:
            fh.write(line)
    except OSError as err:
        if err.errno not in SPACE_ERRNOS:
            raise
        raise OSError(err.errno, f"{out}: no space left to append to metrics.jsonl ({len(line)} bytes); free some "
                                 f"space or choose another --out") from None
    if writer is not None:
        for k, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                writer.add_scalar(k, v, row["epoch"])


def rewrite_rows(out: Path, rows: list[dict]) -> None:
    """metrics.jsonl holding exactly ``rows`` (a resumed run's checkpointed epochs)."""
    with open(out / "metrics.jsonl", "w") as fh:
        fh.writelines(json.dumps(finite_json(row)) + "\n" for row in rows)


def finite_json(obj):
    """``obj`` with every NaN or infinite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def atomic_save(obj: Any, path: Path) -> None:
    """Write with torch.save to a temporary file, then rename: a reader never sees half a file;
    out of space, the previous file stays and the error is one line (l2b.runlock.atomic_write)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp), needed=state_bytes(obj))


def atomic_json(path: Path, obj: Any, **kwargs) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, **kwargs)))


def atomic_npz(path: Path, **arrays) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez would add ".npz" to a path
            np.savez(fh, **arrays)

    atomic_write(path, write, needed=sum(np.asarray(a).nbytes for a in arrays.values()))


def environment() -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {"l2b": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "git_commit": commit}


class Progress:
    """A tqdm bar with ETA on a terminal; plain lines otherwise (logs, CI)."""

    def __init__(self, mode: str, total: int, desc: str) -> None:
        self.bar = None
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode
        if mode == "bar":
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True)
            except ImportError:
                self.mode = "lines"

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def epoch_done(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)
        elif self.mode == "lines":
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def tensorboard(out: Path):
    """A SummaryWriter into ``out/tensorboard``, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


def not_a_run(run: Path, command: str, missing: str) -> FileNotFoundError:
    """The error for a directory that is no run: a grid of ``l2b compare`` names one of its runs
    (an l2b one where there is) for ``command``; anything else names the file it lacks."""
    inside = sorted(f.parent for f in Path(run).glob("*/*/seed*/labels.npz"))
    if inside:
        example = next((d for d in inside if d.parts[-3] == "l2b"), inside[0])
        return FileNotFoundError(f"{run} is a grid of {len(inside)} run{'s' if len(inside) > 1 else ''}: give one of "
                                 f"them, e.g. l2b {command} {example}")
    return FileNotFoundError(missing)
