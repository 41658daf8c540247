"""Faults of the environment: a run directory held by another run, data changed under a resumed
run, a full disk, and a setting that stops the model from training. Each is one line, exit 2,
and nothing the user had is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from l2b.cli import main

TINY = ["--data", "digits", "--model", "mlp", "--width", "16", "--epochs", "1", "--progress", "none"]


def test_a_second_run_into_a_locked_directory_names_the_holder(tmp_path, capsys):
    from l2b.runlock import RunLock

    out = tmp_path / "run"
    lock = RunLock(out).acquire()  # what a training run holds
    try:
        assert main(["train", *TINY, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert f"another l2b run (pid {os.getpid()}) is training in it" in err
        assert main(["train", *TINY, "--out", str(out), "--overwrite"]) == 2  # --overwrite cannot clear it either
    finally:
        lock.release()
    assert main(["train", *TINY, "--out", str(out)]) == 0  # released: the run goes ahead


def test_the_lock_dies_with_its_process_even_on_kill_9(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from l2b.runlock import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
                               "print('locked', flush=True); time.sleep(60)", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", *TINY, "--out", str(out)]) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert main(["train", *TINY, "--out", str(out)]) == 0


def test_a_released_lock_is_free_while_a_process_forked_during_the_run_lives_on(tmp_path):
    """DataLoader workers are forked while a run holds its lock and share the locked file: the run's
    release frees the directory even while such a worker is still alive."""
    from l2b.runlock import RunLock

    out = tmp_path / "run"
    lock = RunLock(out).acquire()
    child = os.fork()
    if child == 0:  # a worker that outlives the run by a moment
        import time

        time.sleep(30)
        os._exit(0)
    try:
        lock.release()
        RunLock(out).acquire().release()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def _children(pid: int) -> set[int]:
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            kids.add(int(stat.parent.name))
    return kids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_grid_killed_with_sigterm_leaves_no_worker_training_on(tmp_path):
    """A scheduler's SIGTERM of `l2b compare --jobs 2` ends its workers too: none trains on holding its
    cell's lock (the grid run again would otherwise be refused those cells)."""
    grid = tmp_path / "grid"
    argv = [sys.executable, "-m", "l2b", "compare", "--methods", "ce,l2rw", "--noise", "symmetric:0.4", "--jobs", "2",
            "--data", "digits", "--model", "mlp", "--width", "16", "--epochs", "400", "--out", str(grid)]
    parent = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import time

        started = time.monotonic()
        while len(list(grid.rglob("metrics.jsonl"))) < 2 and time.monotonic() - started < 60:
            time.sleep(0.2)  # both workers training
        workers = {k for k in _children(parent.pid) if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()}
        assert len(workers) == 2
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{k}").exists() for k in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(Path(f"/proc/{k}").exists() for k in workers)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    from l2b.runlock import RunLock

    for cell in {p.parent for p in grid.rglob("metrics.jsonl")}:
        RunLock(cell).acquire().release()  # free: a live worker would hold it


def test_a_grid_worker_killed_is_a_one_line_error_that_says_to_run_again(tmp_path):
    """A worker killed under the grid (kill -9, the kernel's out-of-memory killer) ends the grid in
    one line: how many cells are done and that the same command continues; no traceback."""
    import time

    grid = tmp_path / "grid"
    argv = [sys.executable, "-m", "l2b", "compare", "--methods", "ce,l2rw", "--noise", "symmetric:0.4", "--jobs", "2",
            "--data", "digits", "--model", "mlp", "--width", "16", "--epochs", "400", "--out", str(grid)]
    parent = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = time.monotonic()
        while len(list(grid.rglob("metrics.jsonl"))) < 2 and time.monotonic() - started < 60:
            time.sleep(0.2)
        workers = sorted(k for k in _children(parent.pid) if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes())
        os.kill(workers[0], signal.SIGKILL)
        _, err = parent.communicate(timeout=60)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert parent.returncode == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "l2b compare: error: a grid worker ended abruptly (killed, or out of memory)" in last
    assert "0 of 2 cells are done: run the same command again to continue" in last


def test_a_run_that_fails_before_writing_leaves_no_directory(tmp_path):
    out = tmp_path / "new" / "run"
    assert main(["train", *TINY, "--method", "l2b", "--val-per-class", "none", "--out", str(out)]) == 2
    assert not (tmp_path / "new").exists()


def _npz(path: Path, n: int, relabel: bool = False) -> Path:
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.images * 16).clip(0, 255).astype(np.uint8), d.target.astype(np.int64)
    y_train = y[300:300 + n].copy()
    if relabel:
        y_train = (y_train + 1) % 10
    np.savez(path, x_train=x[300:300 + n], y_train=y_train, x_test=x[:300], y_test=y[:300])
    return path


@pytest.mark.parametrize("change, expected", [
    (lambda f: _npz(f, 900), r"train 1000 -> 900"),
    (lambda f: _npz(f, 1000, relabel=True), r"the labels \(their hash differs\)"),
], ids=["fewer samples", "same size, relabelled"])
def test_resume_refuses_data_that_changed(tmp_path, capsys, change, expected):
    import re

    from l2b.config import TrainConfig
    from l2b.trainer import train

    f = _npz(tmp_path / "mine.npz", 1000)
    cfg = TrainConfig(data=f"npz:{f}", model="mlp", width=16, epochs=3, method="ce", out=str(tmp_path / "run"),
                      progress="none")
    train(cfg, stop_after_epoch=0)
    change(f)
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the data changed since the run started" in err and re.search(expected, err)
    _npz(f, 1000)  # the data restored: the run continues
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0


def test_a_full_disk_is_one_line_keeps_no_tmp_file_and_the_last_good_checkpoint(tmp_path):
    """A file-size limit makes every write past it fail as a full disk does (EFBIG)."""
    out = tmp_path / "run"
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "from l2b.cli import main; main(['train', '--data', 'digits', '--model', 'mlp', '--width', '16', "
            f"'--epochs', '1', '--method', 'ce', '--progress', 'none', '--out', {str(out)!r}]); "
            "size = __import__('os').path.getsize(sys.argv[1]); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, resource.RLIM_INFINITY)); "
            "sys.exit(main(['train', '--data', 'digits', '--model', 'mlp', '--width', '256', '--epochs', '2', "
            f"'--method', 'ce', '--progress', 'none', '--out', {str(tmp_path / 'big')!r}]))")
    first = out / "checkpoint.pt"
    proc = subprocess.run([sys.executable, "-c", code, str(first)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "no space left to write" in err and "choose another --out" in err, err
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file left behind


def test_a_checkpoint_write_that_runs_out_of_space_keeps_the_previous_one(tmp_path, monkeypatch):
    import errno

    import torch

    from l2b.rundir import atomic_save

    path = tmp_path / "checkpoint.pt"
    atomic_save({"w": torch.ones(3)}, path)

    def full(obj, f):
        Path(f).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match=r"no space left to write checkpoint.pt \(needs about"):
        atomic_save({"w": torch.ones(1000)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["w"], torch.ones(3)) and not (tmp_path / "checkpoint.pt.tmp").exists()


def test_an_epoch_of_all_zero_weights_stops_the_run_naming_the_setting(tmp_path, capsys):
    argv = ["train", *TINY, "--epochs", "3", "--method", "l2b", "--normalize", "hard", "--threshold", "2",
            "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "epoch 1: every step's per-sample weights were all zero" in err and "'threshold': 2.0" in err


def test_a_run_without_a_clean_set_prints_no_nan_and_no_epoch_minus_one(tmp_path, capsys):
    assert main(["train", *TINY, "--method", "ce", "--val-per-class", "none", "--out", str(tmp_path / "run")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(line)
    assert "NaN" not in line and "best_epoch" not in result and result["test_acc_last"] > 0


def test_folder_data_says_what_it_cannot_train_on_and_how_it_is_scaled(tmp_path, capsys):
    pytest.importorskip("PIL")
    from PIL import Image

    from l2b.data import load_dataset

    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            Image.new("RGB", (16, 16), (200, 0, 0)).save(tmp_path / "imgs" / split / c / "0.png")
    (tmp_path / "imgs" / "train" / "bird").mkdir()  # a class folder with no image
    load_dataset(f"folder:{tmp_path / 'imgs'}", image_size=224)
    err = capsys.readouterr().err
    assert "class folder(s) 'bird' hold no image" in err
    assert "images are about 16 px" in err and "upscales them 14x; leave --image-size out (the images' own size, 16)" in err


def test_a_truncated_config_json_is_named(tmp_path, capsys):
    from l2b.config import TrainConfig
    from l2b.trainer import train

    train(TrainConfig(data="digits", model="mlp", width=16, epochs=2, method="ce", out=str(tmp_path / "run"),
                      progress="none"), stop_after_epoch=0)
    saved = tmp_path / "run" / "config.json"
    saved.write_text(saved.read_text()[:40])
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{saved}: not valid JSON" in err


def test_demo_with_no_seeds_is_one_line(capsys):
    assert main(["demo", "--seeds", "0"]) == 2
    assert "--seeds must be at least 1, got 0" in capsys.readouterr().err


def test_label_issues_on_a_diverged_run_says_why_and_what_to_do(tmp_path, capsys):
    out = tmp_path / "run"
    (out).mkdir()
    (out / "labels.npz").write_bytes(b"")
    np.savez(out / "labels.npz", noisy=np.zeros(3), true=np.zeros(3), train_index=np.arange(3), val_index=np.arange(0))
    (out / "metrics.json").write_text(json.dumps({"diverged": {"epoch": 2, "step": 5, "what": "the loss"}}))
    assert main(["label-issues", str(out)]) == 2
    err = capsys.readouterr().err
    assert "diverged (the loss became NaN/inf at epoch 3)" in err and "lower --lr" in err


def test_a_closed_pipe_under_compare_ends_quietly(tmp_path):
    cmd = (f"{sys.executable} -m l2b compare --methods ce --noise symmetric:0.4,symmetric:0.2 --seeds 2 "
           f"--data digits --model mlp --width 8 --epochs 1 --out {tmp_path / 'grid'} | head -c 1")
    proc = subprocess.run(["bash", "-c", cmd + "; exit ${PIPESTATUS[0]}"], capture_output=True, text=True)
    assert "Traceback" not in proc.stderr and proc.returncode in (0, 141), proc.stderr


def test_l2b_warnings_print_as_one_line_and_others_as_python_prints_them():
    import l2b
    from l2b.console import format_warning

    inside = str(Path(l2b.__file__).parent / "data" / "__init__.py")
    assert format_warning(UserWarning("class(es) [3] have no training sample"), UserWarning, inside, 43,
                           "return DATASETS[name](path or None)") == "l2b: warning: class(es) [3] have no training sample\n"
    other = format_warning(DeprecationWarning("old"), DeprecationWarning, "/usr/lib/python3/x.py", 7, "x()")
    assert other.startswith("/usr/lib/python3/x.py:7: DeprecationWarning: old")


def test_warnings_are_said_once_under_torchrun(monkeypatch, capsys):
    import l2b
    from l2b.console import format_warning
    from l2b.console import warn

    inside = str(Path(l2b.__file__).parent / "run_data.py")
    for rank, said in (("0", True), ("1", False)):
        monkeypatch.setenv("RANK", rank)
        warn("an empty class folder")
        assert ("l2b: warning: an empty class folder" in capsys.readouterr().err) is said
        assert bool(format_warning(UserWarning("a gap"), UserWarning, inside, 1)) is said


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_a_run_trained_on_a_gpu_is_scored_and_cross_fitted_on_a_machine_without_one(tmp_path, capsys):
    """A run directory copied from a GPU server (its config says --device cuda) to a laptop:
    label-issues scores it, and trains its cross-fit folds, on the CPU instead of failing."""
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(run)]) == 0
    saved = json.loads((run / "config.json").read_text())
    saved["config"]["device"] = "cuda"
    (run / "config.json").write_text(json.dumps(saved))
    assert main(["label-issues", str(run), "--out", str(tmp_path / "in")]) == 0
    assert main(["label-issues", str(run), "--cross-fit", "2", "--out", str(tmp_path / "out")]) == 0
    assert json.loads((run / "cross-fit" / "2-fold-1" / "config.json").read_text())["config"]["device"] == "cpu"
    assert main(["report", str(run)]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_label_issues_finds_moved_data_with_data_and_refuses_changed_data(tmp_path, capsys):
    """The data a run trained on, moved since (a copied run directory, a reorganised disk), is
    given with --data; data that changed is refused (its labels would be matched to the wrong
    samples), as --resume refuses it."""
    data = _npz(tmp_path / "d.npz", 1000)
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data", f"npz:{data}", "--noise", "symmetric:0.3", "--val-per-class", "5",
                 "--out", str(run)]) == 0
    moved = data.rename(tmp_path / "moved.npz")
    capsys.readouterr()
    assert main(["label-issues", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{data}: file not found (the data of the run {run})" in err and "with --data" in err
    assert main(["label-issues", str(run), "--data", f"npz:{moved}", "--show", "4"]) == 0
    assert (run / "label_issues.png").is_file()
    _npz(moved, 1000, relabel=True)
    capsys.readouterr()
    assert main(["label-issues", str(run), "--data", f"npz:{moved}"]) == 2
    assert "the data changed since the run trained (the labels (their hash differs))" in capsys.readouterr().err
    assert main(["label-issues", str(run), "--data", f"npz:{moved}", "--cross-fit", "2"]) == 2
    assert "--data with --cross-fit" in capsys.readouterr().err


def test_resume_finds_moved_data_with_data_and_records_its_new_place(tmp_path, capsys):
    """A run stopped, its data moved: --resume names --data; --resume --data gives the new place
    (the same data by its fingerprint, so the run continues bit for bit), and config.json records
    it for label-issues; other data is refused."""
    from l2b.trainer import TrainConfig, train

    data = _npz(tmp_path / "d.npz", 300)
    settings = dict(model="mlp", width=8, epochs=2, noise="symmetric:0.3", val_per_class=5, progress="none")
    train(TrainConfig(data=f"npz:{data}", out=str(tmp_path / "whole"), **settings))
    run = tmp_path / "run"
    train(TrainConfig(data=f"npz:{data}", out=str(run), **settings), stop_after_epoch=0)
    moved = data.rename(tmp_path / "moved.npz")
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{data}: file not found (the data the run began on; if it moved" in err and "--data SPEC" in err
    _npz(tmp_path / "other.npz", 300, relabel=True)
    assert main(["train", "--resume", str(run), "--data", f"npz:{tmp_path / 'other.npz'}"]) == 2
    assert "the data changed since the run started" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--data", f"npz:{moved}"]) == 0
    import torch

    a, b = (torch.load(d / "checkpoint.pt", weights_only=True)["model"] for d in (tmp_path / "whole", run))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run / "config.json").read_text())["config"]["data"] == f"npz:{moved}"
    assert main(["label-issues", str(run)]) == 0  # no --data needed any more


def test_resume_of_a_run_stopped_before_its_first_epoch_ended_begins_it_again(tmp_path, capsys):
    """Ctrl-C in the first epoch leaves config.json and labels.npz but no checkpoint; the message
    says to resume, and --resume then trains the run from epoch 1 as it was set (the same weights
    as a whole run). A finished run whose checkpoint is gone still has nothing to resume."""
    import torch

    from l2b.trainer import TrainConfig, train

    settings = dict(data="digits", model="mlp", width=8, epochs=2, method="l2b", val_per_class=5, progress="none")
    train(TrainConfig(out=str(tmp_path / "whole"), **settings))
    run = tmp_path / "run"
    train(TrainConfig(out=str(run), **settings), stop_after_epoch=0)
    (run / "checkpoint.pt").unlink()  # as if stopped during epoch 1
    (run / "best_model.pt").unlink()
    assert main(["train", "--resume", str(run), "--progress", "lines"]) == 0
    assert f"{run}: no epoch had finished before it stopped; it starts again from epoch 1" in capsys.readouterr().out
    whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["model"]
    again = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(whole[k], again[k]) for k in whole)
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    (run / "checkpoint.pt").unlink()
    assert main(["train", "--resume", str(run)]) == 2
    assert "checkpoint.pt: no checkpoint to resume from" in capsys.readouterr().err
