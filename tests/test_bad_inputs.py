"""Bad input and faults, as a user meets them: one row per case of docs/reliability.md.

Every case ends in a one-line ``l2b ...: error:`` naming the problem, exit code 2, nothing run
that should not run, and no traceback.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from l2b.cli import main as cli_main


class Exploit:
    """Unpickling this runs ``touch MARKER``: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def craft(path: Path, marker: Path) -> None:
    """Overwrite ``path`` with a checkpoint whose unpickling executes a shell command."""
    torch.save({"model": Exploit(marker), "epoch": 0}, path)


@pytest.fixture(scope="module")
def finished_ce_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ce") / "run"
    assert cli_main(["train", "--data", "digits", "--model", "mlp", "--width", "16", "--epochs", "1",
                     "--method", "ce", "--val-per-class", "5", "--progress", "none", "--out", str(out)]) == 0
    return out


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _grid_with_crafted_cell(tmp_path: Path, src: Path, marker: Path) -> list[str]:
    """A compare grid whose only cell is unfinished (a checkpoint, no metrics.json)."""
    grid = tmp_path / "grid"
    cell = grid / "ce" / "symmetric_0.4" / "seed0"
    cell.parent.mkdir(parents=True)
    _copy_run(src, cell)
    (cell / "metrics.json").unlink()
    craft(cell / "checkpoint.pt", marker)
    return ["compare", "--methods", "ce", "--noise", "symmetric:0.4", "--seeds", "1", "--data", "digits",
            "--model", "mlp", "--width", "16", "--epochs", "1", "--val-per-class", "5", "--out", str(grid)]


def _resume(tmp_path, src, marker):
    run = _copy_run(src, tmp_path / "run")
    craft(run / "checkpoint.pt", marker)
    return ["train", "--resume", str(run)]


def _label_issues(tmp_path, src, marker):
    run = _copy_run(src, tmp_path / "run")  # a CE run has no weights.npz: the model is scored
    assert not (run / "weights.npz").exists()
    craft(run / "checkpoint.pt", marker)
    return ["label-issues", str(run)]


def _pretrained(tmp_path, src, marker):
    craft(tmp_path / "weights.pt", marker)
    return ["train", "--data", "digits", "--model", "mlp", "--width", "16", "--epochs", "1", "--method", "ce",
            "--pretrained", str(tmp_path / "weights.pt"), "--out", str(tmp_path / "new"), "--progress", "none"]


@pytest.mark.parametrize("build", [_resume, _label_issues, _grid_with_crafted_cell, _pretrained],
                         ids=["train --resume", "label-issues", "compare resume", "--pretrained"])
def test_crafted_checkpoint_runs_no_code(tmp_path, capsys, finished_ce_run, build):
    marker = tmp_path / "PWNED"
    argv = build(tmp_path, finished_ce_run, marker)
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert not marker.exists(), "unpickling the crafted file ran code"
    assert len(err.splitlines()) == 1 and "error:" in err and "refused to load" in err
    assert ".pt" in err  # names the file


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_checkpoint_is_a_one_line_error_naming_the_file(tmp_path, capsys, finished_ce_run, damage):
    run = _copy_run(finished_ce_run, tmp_path / "run")
    ckpt = run / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a checkpoint at all")
    assert cli_main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(ckpt) in err and "corrupted or truncated" in err
