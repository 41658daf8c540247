"""Runs from Python: ``l2b.train``, ``l2b.compare`` and ``l2b.Run`` make and read the runs the
command line makes, with its checks."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

import l2b
from l2b.cli import main
from l2b.config import TrainConfig
from l2b.trainer import train as train_config

TINY = dict(data="digits", model="mlp", width=16, epochs=2, progress="none", threads=1)
FLAGS = ["--data", "digits", "--model", "mlp", "--width", "16", "--epochs", "2", "--progress", "none", "--threads", "1"]


def same_weights(a, b) -> bool:
    x, y = (torch.load(p / "checkpoint.pt", weights_only=True)["model"] for p in (a, b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_l2b_train_is_the_command_line_run_to_the_bit(tmp_path, capsys):
    run = l2b.train(tmp_path / "py", method="l2b", normalize="softmax", **TINY)
    assert main(["train", *FLAGS, "--method", "l2b", "--normalize", "softmax", "--out", str(tmp_path / "cli")]) == 0
    capsys.readouterr()
    assert same_weights(run.path, tmp_path / "cli")
    assert run.finished and run.epochs_done == 2 and run.config.method_args == {"normalize": "softmax"}
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert run.metrics["test_acc_last"] == cli["test_acc_last"]
    assert [h["val_acc"] for h in run.history] == [h["val_acc"] for h in cli["history"]]
    w, labels = run.weights, run.labels
    assert w["alpha"].shape == w["beta"].shape == labels["noisy"].shape == (1197,)
    assert (labels["noisy"] != labels["true"]).sum() == labels["is_noisy"].sum() > 0
    assert repr(run) == (f"Run('{tmp_path / 'py'}': l2b on digits, noise symmetric:0.4, 2/2 epochs, "
                         f"test {cli['test_acc_last']:.1f}% at the last epoch)")


def test_settings_come_from_a_yaml_file_then_the_keywords(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: ce\nepochs: 5\nlr: 0.05\n")
    run = l2b.train(tmp_path / "r", config=cfg, **TINY)  # TINY's epochs=2 wins over the file's 5
    assert (run.config.method, run.config.epochs, run.config.lr) == ("ce", 2, 0.05)


def test_bad_keywords_are_one_line_errors_before_any_data_are_read(tmp_path):
    with pytest.raises(TypeError, match=r"unknown setting 'epoch'; did you mean 'epochs'\?"):
        l2b.train(tmp_path / "r", epoch=3)
    with pytest.raises(ValueError, match="forget-rate is an option of coteaching, not of method .ce."):
        l2b.train(tmp_path / "r", method="ce", forget_rate=0.2, **TINY)
    with pytest.raises(ValueError, match="resume continues the run in its own directory"):
        l2b.train(tmp_path / "a", resume=tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="no config.json, so nothing to resume"):
        l2b.train(resume=tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="missing.csv"):  # a Path is taken as its text
        l2b.train(tmp_path / "r", exclude=tmp_path / "missing.csv", **TINY)
    assert not (tmp_path / "r").exists()


def test_a_stopped_run_reads_as_stopped_and_resumes_to_the_uninterrupted_run(tmp_path):
    cfg = TrainConfig(**{**TINY, "epochs": 3}, method="l2b", out=str(tmp_path / "stopped"))
    train_config(cfg, stop_after_epoch=0)
    run = l2b.Run(cfg.out)
    assert (run.finished, run.epochs_done, run.metrics) == (False, 1, None)
    assert "1/3 epochs" in repr(run)
    with pytest.raises(ValueError, match=r"lr 0.5 \(the run has 0.1\) would change its results"):
        run.resume(lr=0.5)
    with pytest.raises(ValueError, match=r"normalize 'softmax' \(the run has 'sum'\) would change its results"):
        run.resume(normalize="softmax")
    assert run.resume(threads=1, progress="none").finished
    train_config(replace(cfg, out=str(tmp_path / "whole")))
    assert same_weights(run.path, tmp_path / "whole")


def test_the_command_line_refuses_a_method_option_changed_on_resume(tmp_path, capsys):
    cfg = TrainConfig(**{**TINY, "epochs": 3}, method="l2b", out=str(tmp_path / "stopped"))
    train_config(cfg, stop_after_epoch=0)
    assert main(["train", "--resume", cfg.out, "--normalize", "softmax"]) == 2  # it was taken and ignored
    assert "--normalize 'softmax' (the run has 'sum') would change its results" in capsys.readouterr().err
    assert main(["train", "--resume", cfg.out, "--normalize", "sum", "--progress", "none"]) == 0  # the run's own value


def test_label_issues_rows_are_the_csv_rows(tmp_path):
    run = l2b.train(tmp_path / "r", method="l2b", **TINY)
    with pytest.warns(UserWarning, match="the flagged count can run high"):  # the console's note, as a warning
        found = run.label_issues()
    with open(run.path / "label_issues.csv", newline="", encoding="utf-8") as fh:
        listed = list(csv.DictReader(fh))
    assert found["issues"] == len(found["rows"]) == len(listed) > 0
    for row, text in zip(found["rows"], listed):
        assert (row["index"], row["given_class"], row["suggested_label"]) == \
            (int(text["index"]), text["given_class"], int(text["suggested_label"]))
        assert f"{row['score']:.6f}" == text["score"]
    assert 0 < found["precision"] <= 1


def test_compare_runs_a_grid_and_returns_its_summary(tmp_path, capsys):
    rows = l2b.compare(tmp_path / "g", methods="ce,l2b", noise="symmetric:0.4", seeds=1, **TINY)  # as on the CLI
    assert [(r["method"], r["noise"], r["seeds"]) for r in rows] == [("ce", "symmetric:0.4", 1),
                                                                   ("l2b", "symmetric:0.4", 1)]
    with open(tmp_path / "g" / "summary.csv", newline="") as fh:
        assert [float(r["test_acc_last_mean"]) for r in csv.DictReader(fh)] == [r["test_acc_last_mean"] for r in rows]
    assert "2 runs: 2 methods × 1 noise settings × 1 seeds" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="is a grid of 2 runs: give one of them"):
        l2b.Run(tmp_path / "g")
    with pytest.raises(TypeError, match="did you mean 'seed'"):
        l2b.compare(tmp_path / "g2", methods="ce", noise="none", seeed=1)
    grid = tmp_path / "grid.yaml"  # l2b compare --grid's file: the grid and its settings, arguments over them
    grid.write_text("methods: [ce]\nnoise: [symmetric:0.2]\nseeds: 1\nepochs: 1\nlr: 0.05\n")
    rows = l2b.compare(tmp_path / "g3", grid=grid, **{**TINY, "epochs": 2})
    assert [(r["method"], r["noise"], r["seeds"]) for r in rows] == [("ce", "symmetric:0.2", 1)]
    cell = l2b.Run(tmp_path / "g3" / "ce" / "symmetric_0.2" / "seed0").config
    assert (cell.epochs, cell.lr) == (2, 0.05)


def test_a_cut_history_line_is_named(tmp_path):
    run = l2b.train(tmp_path / "r", method="ce", **TINY)
    with open(run.path / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "lr"')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 3: not a JSON object"):
        run.history


def test_a_script_that_runs_a_grid_at_its_top_level_runs_it_once(tmp_path):
    """A grid's cells in parallel workers. Spawned workers run the main script again to find what it
    defines; a script that calls l2b.compare(jobs=2) without `if __name__ == "__main__":` used to
    start the grid again in each worker, which died of it ("a grid worker ended abruptly")."""
    script = tmp_path / "sweep.py"
    script.write_text("import l2b\n"
                      "print('the script ran')\n"
                      "rows = l2b.compare('grid', methods=['ce'], noise=['symmetric:0.2', 'symmetric:0.4'], jobs=2,\n"
                      "                   data='digits', model='mlp', width=16, epochs=1)\n"
                      "print(len(rows), 'rows')\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("the script ran") == 1 and "2 rows" in out.stdout
    assert len(list((tmp_path / "grid").rglob("metrics.json"))) == 2


def test_your_torch_is_as_it_was_after_a_run(tmp_path):
    """A run seeds torch and may set its threads; l2b train's process ends with them, a Python
    caller's goes on: the threads and the random generators are given back as they were."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(123)
        expected = torch.rand(3)
        torch.manual_seed(123)
        l2b.train(tmp_path / "r", method="ce", **TINY)  # threads=1, seed 0
        assert torch.get_num_threads() == 2
        assert torch.equal(torch.rand(3), expected)
    finally:
        torch.set_num_threads(threads)


def test_on_epoch_hears_every_epoch_and_can_stop_the_run_resumably(tmp_path):
    rows = []
    run = l2b.train(tmp_path / "r", method="l2b", on_epoch=rows.append, **{**TINY, "epochs": 3})
    assert rows == run.history and [r["epoch"] for r in rows] == [0, 1, 2]

    class Pruned(Exception):
        pass

    def prune(row):  # e.g. a tuner stopping a trial that is going nowhere
        if row["epoch"] == 1:
            raise Pruned

    with pytest.raises(Pruned):
        l2b.train(tmp_path / "p", method="l2b", on_epoch=prune, **{**TINY, "epochs": 3})
    stopped = l2b.Run(tmp_path / "p")
    assert (stopped.finished, stopped.epochs_done) == (False, 2)
    heard = []
    stopped.resume(on_epoch=heard.append)
    assert [r["epoch"] for r in heard] == [2] and same_weights(stopped.path, run.path)
