"""What the benchmarks' tables share: a cell "mean ± std", the noise-detection AUC of a run,
Spearman's rho, and writing a table into a Markdown file (RESULTS.md, README.md) between its
markers."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def fmt(mean, std, digits=2) -> str:
    return "—" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def noise_auc(run_dir: Path) -> float | None:
    """ROC-AUC of -alpha (last epoch) for "this label is corrupted"; None without weights."""
    from l2b.detect import roc_auc

    path = run_dir / "weights.npz"
    if not path.is_file():
        return None
    w = np.load(path)
    return roc_auc(-w["alpha"], w["is_noisy"]) if w["is_noisy"].any() else None


def check_device_arg(parser, name: str) -> None:
    """A benchmark's --device, checked as `l2b train` checks it: a one-line usage error (exit 2)."""
    from l2b.config_checks import check_device

    try:
        check_device(name)
    except ValueError as err:
        parser.error(str(err))


def on_gpu(config: dict) -> bool:
    """Whether a run (its config.json "config") was trained on a GPU: its time is not this CPU's."""
    return str(config.get("device", "")).startswith("cuda")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho: the Pearson correlation of the ranks (ties get their mean rank)."""
    def ranks(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
        sums = np.bincount(inverse, weights=r)
        return (sums / counts)[inverse]

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")  # nan: a constant vector


def write_block(path: Path, name: str, block: str, heading: str) -> None:
    """Put ``block`` between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in ``path``,
    replacing what was there; the first time, append it under ``heading``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.is_file() else ""
    new = f"{begin}\n{block}{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + new + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n{heading}\n\n" + new + "\n"
    path.write_text(text)


def provenance(command: str, device: str | None = None) -> dict:
    """What a result needs to be compared with a later run: the command, the date, the commit
    (with "+dirty" when the tree had changes) and the machine."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    import torch

    return {"command": command, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "commit": commit,
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                        "device": device or "cpu"}}


def record(key: str, heading: str, block: str, data: dict, command: str, device: str | None = None,
           readme: bool = False) -> Path:
    """A benchmark's latest result: its section of RESULTS.md (between ``key``'s markers, under
    ``heading`` the first time), ``results/KEY.json`` with its provenance and ``data``, and with
    ``readme`` the same block in README.md (between the same markers)."""
    meta = provenance(command, device)
    text = f"Measured {meta['date']} (commit {meta['commit'][:12]}).  \n" + block
    write_block(HERE / "RESULTS.md", key, text, heading)
    if readme:
        write_block(HERE.parent / "README.md", key, text, heading)
    path = HERE / "results" / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, **data}, indent=2) + "\n")
    return path
