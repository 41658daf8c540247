"""Bad input and faults, as a user meets them: one row per case of docs/reliability.md.

Every case ends in a one-line ``l2b ...: error:`` naming the problem, exit code 2, nothing run
that should not run, and no traceback.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
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


def _finished_run(tmp_path_factory, method: str) -> Path:
    """A one-epoch run of ``method`` on digits (an MLP, 5 clean per class)."""
    out = tmp_path_factory.mktemp(method) / "run"
    assert cli_main(["train", "--data", "digits", "--model", "mlp", "--width", "16", "--epochs", "1",
                     "--method", method, "--val-per-class", "5", "--progress", "none", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def finished_ce_run(tmp_path_factory):
    return _finished_run(tmp_path_factory, "ce")


@pytest.fixture(scope="module")
def finished_l2b_run(tmp_path_factory):  # a run with weights.npz
    return _finished_run(tmp_path_factory, "l2b")


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


def _npz_of(path: Path, **arrays) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


RUN_FILE_DAMAGE = [
    ("labels.npz", lambda f: f.write_bytes(f.read_bytes()[:100]), r"labels.npz: corrupted or truncated"),
    ("weights.npz", lambda f: f.write_bytes(b"not an archive"), r"weights.npz: corrupted or truncated"),
    # label-issues reads the labels from it, the report the realised noise
    ("labels.npz", lambda f: _npz_of(f, noisy=np.zeros(3)), r"labels.npz: has no (true, train_index, val_index|transition) \(it holds noisy\)"),
    ("metrics.json", lambda f: f.write_text("[]"), r"metrics.json: holds a JSON list, not the record l2b writes"),
    ("config.json", lambda f: f.write_text("{}"), r"config.json: has no config record"),
]


@pytest.mark.parametrize("name, damage, expected", RUN_FILE_DAMAGE,
                         ids=["labels truncated", "weights garbage", "labels without arrays", "metrics a list", "config empty"])
@pytest.mark.parametrize("command", ["label-issues", "report"])
def test_a_damaged_run_file_is_a_one_line_error_naming_it(tmp_path, capsys, finished_l2b_run, name, damage, expected,
                                                          command):
    run = _copy_run(finished_l2b_run, tmp_path / "run")
    damage(run / name)
    assert cli_main([command, str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(expected, err) and "start the run again" in err, err


@pytest.mark.parametrize("which", ["best", "early"])
def test_label_issues_model_best_or_early_without_its_file_is_a_one_line_error(tmp_path, capsys, finished_ce_run, which):
    run = _copy_run(finished_ce_run, tmp_path / "run")
    (run / f"{which}_model.pt").unlink(missing_ok=True)
    assert cli_main(["label-issues", str(run), "--model", which]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"no {which}_model.pt" in err and "use --model final" in err


# ----------------------------------------------------------------------------- the table

TINY = ["--data", "digits", "--model", "mlp", "--width", "8", "--epochs", "1", "--progress", "none"]


def _yaml(tmp_path, text):
    f = tmp_path / "cfg.yaml"
    f.write_text(text)
    return ["train", "--config", str(f), "--out", str(tmp_path / "out"), "--progress", "none"]


def _grid(tmp_path, text):
    f = tmp_path / "grid.yaml"
    f.write_text(text)
    return ["compare", "--grid", str(f), "--out", str(tmp_path / "out")]


def _npz(tmp_path, y_train, y_test):
    import numpy as np

    f = tmp_path / "d.npz"
    images = np.arange(len(y_train) + len(y_test), dtype=np.uint8)[:, None, None] * np.ones((4, 4), np.uint8)
    np.savez(f, x_train=images[:len(y_train)], y_train=np.array(y_train),  # every image its own: no copies to warn of
             x_test=images[len(y_train):], y_test=np.array(y_test))
    return f


def _idx(tmp_path):
    root = tmp_path / "fm"
    root.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (root / stem).write_bytes(b"\x00\x00\x08\x03\x00\x00")  # a header cut after 6 bytes
    return root


def _finished(tmp_path, method="l2b"):
    out = tmp_path / "done"
    assert cli_main(["train", *TINY, "--method", method, "--val-per-class", "3", "--out", str(out)]) == 0
    return out


# (case, argv builder, expected one-line error) -- docs/reliability.md lists the same cases
CASES = [
    ("lr nan", lambda t: ["train", *TINY, "--lr", "nan", "--out", str(t / "out")], r"--lr must be a finite number > 0, got nan"),
    ("momentum 5", lambda t: ["train", *TINY, "--momentum", "5", "--out", str(t / "out")], r"--momentum must be in \[0, 1\), got 5"),
    ("adamw with mwnet", lambda t: ["train", *TINY, "--optimizer", "adamw", "--method", "mwnet", "--out", str(t / "out")],
     r"--optimizer adamw: method 'mwnet' looks ahead with an SGD step .* train it with --optimizer sgd"),
    ("adamw with momentum", lambda t: ["train", *TINY, "--optimizer", "adamw", "--momentum", "0.5", "--out", str(t / "out")],
     r"--momentum is SGD's, and this run trains with --optimizer adamw; drop it \(AdamW's first moment is --adam-beta1\)"),
    ("sgd with adam-beta2", lambda t: ["train", *TINY, "--adam-beta2", "0.99", "--out", str(t / "out")],
     r"--adam-beta2 is AdamW's, and this run trains with --optimizer sgd; drop it"),
    ("adam-beta1 1", lambda t: ["train", *TINY, "--optimizer", "adamw", "--adam-beta1", "1", "--out", str(t / "out")],
     r"--adam-beta1 must be in \[0, 1\), got 1"),
    ("optimizer adam", lambda t: ["train", *TINY, "--optimizer", "adam", "--out", str(t / "out")],
     r"unknown optimizer 'adam'; choose sgd or adamw"),
    ("clip -1", lambda t: ["train", *TINY, "--clip-grad-norm", "-1", "--out", str(t / "out")], r"--clip-grad-norm must be a finite number > 0"),
    ("grid methods 3", lambda t: _grid(t, "methods: 3\nnoise: [symmetric:0.2]\n"),
     r"grid.yaml: methods must be a list of names, e.g. methods: \[ce, l2b\]; got 3"),
    ("grid noise 0.2", lambda t: _grid(t, "methods: [ce]\nnoise: [0.2]\n"), r"grid.yaml: noise must be a list of names"),
    ("grid seeds two", lambda t: _grid(t, "methods: [ce]\nnoise: [symmetric:0.2]\nseeds: two\n"),
     r"grid.yaml: seeds must be a whole number \(how many seeds each cell runs\), got 'two'"),
    ("grid with a cell's method", lambda t: _grid(t, "methods: [ce]\nnoise: [symmetric:0.2]\nmethod: l2b\n"),
     r"grid.yaml: method is set for each cell \(by methods:, seeds: and --out\); drop it from the grid file"),
    ("grid method twice", lambda t: _grid(t, "methods: ce,l2b,ce\nnoise: [symmetric:0.2]\n"),
     r"methods lists 'ce' more than once; give each once"),
    ("compare jobs 0", lambda t: ["compare", *TINY[:6], "--methods", "ce", "--noise", "symmetric:0.2", "--jobs", "0",
                                  "--out", str(t / "out")], r"--jobs must be at least 1, got 0"),
    ("compare a bad device after a good one", lambda t: ["compare", *TINY[:6], "--methods", "ce,l2b", "--noise", "symmetric:0.2",
                                                         "--devices", "cpu,bogus", "--out", str(t / "out")],
     r"--devices cpu,bogus: --device 'bogus': choose auto, cpu, cuda or cuda:N"),
    ("compare noise twice", lambda t: ["compare", "--methods", "ce", "--noise", "symmetric:0.2,symmetric:0.2",
                                       "--out", str(t / "out")], r"noise lists 'symmetric:0.2' more than once"),
    ("yaml epochs two", lambda t: _yaml(t, "epochs: two\n"), r"epochs='two' is not an integer"),
    ("yaml milestones 5", lambda t: _yaml(t, "milestones: 5\n"), r"milestones=5 is not a list of integers"),
    ("yaml batch_size [64]", lambda t: _yaml(t, "batch_size: [64]\n"), r"batch_size=\[64\] is not an integer"),
    ("yaml seed null", lambda t: _yaml(t, "seed: null\n"), r"seed=None is not a valid int \(this setting cannot be empty\)"),
    ("width 0", lambda t: ["train", *TINY[:4], "--width", "0", "--out", str(t / "out")], r"--width must be at least 1, got 0"),
    ("epochs 0", lambda t: ["train", *TINY[:6], "--epochs", "0", "--out", str(t / "out")], r"--epochs must be at least 1, got 0"),
    ("batch-size 0", lambda t: ["train", *TINY, "--batch-size", "0", "--out", str(t / "out")], r"--batch-size must be at least 1, got 0"),
    ("seed -1", lambda t: ["train", *TINY, "--seed", "-1", "--out", str(t / "out")], r"--seed must be in 0 \.\. 2\*\*32 - 1, got -1"),
    ("noise-seed 2**32", lambda t: ["train", *TINY, "--noise-seed", str(2**32), "--out", str(t / "out")],
     r"--noise-seed must be in 0 \.\. 2\*\*32 - 1, got 4294967296"),
    ("val-batch-size 0", lambda t: ["train", *TINY, "--val-batch-size", "0", "--out", str(t / "out")], r"--val-batch-size must be at least 1"),
    ("eval-batch-size 0", lambda t: ["train", *TINY, "--eval-batch-size", "0", "--out", str(t / "out")], r"--eval-batch-size must be at least 1"),
    ("device cuda", lambda t: ["train", *TINY, "--device", "cuda", "--out", str(t / "out")], r"--device cuda: CUDA is not available"),
    ("compare bad noise", lambda t: ["compare", "--methods", "ce", "--noise", "symmetric:0.2,a", "--data", "digits",
                                     "--epochs", "1", "--out", str(t / "out")], r"unknown noise 'a'"),
    ("compare seeds 0", lambda t: ["compare", "--methods", "ce", "--noise", "symmetric:0.2", "--seeds", "0",
                                   "--out", str(t / "out")], r"--seeds must be at least 1, got 0"),
    ("compare --seed is not --seeds", lambda t: ["compare", "--methods", "ce", "--noise", "symmetric:0.2", "--seed", "3",
                                                 "--out", str(t / "out")], r"unrecognized arguments: --seed 3"),
    ("label-issues threshold 1.5", lambda t: ["label-issues", str(t), "--threshold", "1.5"], r"1.5 is outside \[0, 1\]"),
    ("label-issues threshold and a cut", lambda t: ["label-issues", str(t), "--threshold", "0.3", "--cut", "count"],
     r"--threshold 0.3 is a fixed cut and --cut count another: give one of them"),
    ("label-issues cross-fit 1", lambda t: ["label-issues", str(t), "--cross-fit", "1"], r"1 folds: give 2 or more"),
    ("forward's estimator diverges", lambda t: ["train", *TINY, "--method", "forward", "--lr", "1e6", "--out", str(t / "out")],
     r"forward: estimator \(noisy labels\): the loss became NaN or inf at epoch 1, step \d+; it trains with the run's "
     r"--lr and schedule, unclipped: lower --lr or raise --batch-size"),
    ("GLC's phase 1 diverges", lambda t: ["train", *TINY, "--method", "glc", "--lr", "1e6", "--out", str(t / "out")],
     r"GLC phase 1 \(noisy labels\): the loss became NaN or inf at epoch 1"),
    ("label-issues show -1", lambda t: ["label-issues", str(t), "--show", "-1"],
     r"--show -1: give 0 \(no picture\) to 512 suspects to draw; every flagged sample is listed in label_issues.csv"),
    ("label-issues show 513", lambda t: ["label-issues", str(t), "--show", "513"], r"--show 513: give 0 \(no picture\) to 512"),
    ("label-issues cross-fit with a weight score", lambda t: ["label-issues", str(t), "--cross-fit", "5", "--score", "trust"],
     r"--cross-fit scores with the fold models' probabilities; --score trust reads this run's weights"),
    ("holdout 6/5", lambda t: ["train", *TINY, "--holdout", "6/5", "--out", str(t / "out")],
     r"--holdout '6/5': give F/K, the F-th of K >= 2 folds"),
    ("compare holdout", lambda t: ["compare", "--methods", "ce", "--noise", "symmetric:0.2", "--holdout", "1/5",
                                   "--out", str(t / "out")], r"--holdout 1/5 trains a fold of l2b label-issues --cross-fit"),
    ("holdout half", lambda t: ["train", *TINY, "--holdout", "half", "--out", str(t / "out")], r"--holdout 'half': give F/K"),
    ("mwnet normalize maybe", lambda t: ["train", *TINY, "--method", "mwnet", "--method-arg", "normalize=maybe",
                                         "--out", str(t / "out")], r"normalize='maybe' is not a bool"),
    ("l2b normalize softmx", lambda t: ["train", *TINY, "--method-arg", "normalize=softmx", "--out", str(t / "out")],
     r"normalize='softmx' is not one of"),
    ("flag engine jpv", lambda t: ["train", *TINY, "--engine", "jpv", "--out", str(t / "out")],
     r"engine='jpv' is not one of 'jvp', 'jvp-lean', 'unroll'"),
    ("flag virtual-step adam", lambda t: ["train", *TINY, "--virtual-step", "adam", "--out", str(t / "out")],
     r"virtual_step='adam' is not one of 'optimizer', 'sgd'"),
    ("flag mwnet normalize maybe", lambda t: ["train", *TINY, "--method", "mwnet", "--normalize", "maybe", "--out", str(t / "out")],
     r"normalize='maybe' is not a bool"),
    ("yaml normalize softmx", lambda t: _yaml(t, "normalize: softmx\n"), r"normalize='softmx' is not one of"),
    ("flag of another method", lambda t: ["train", *TINY, "--method", "ce", "--forget-rate", "0.3", "--out", str(t / "out")],
     r"--forget-rate is an option of coteaching, not of method 'ce'"),
    ("bootstrap beta 1.5", lambda t: ["train", *TINY, "--method", "bootstrap", "--beta", "1.5", "--out", str(t / "out")],
     r"beta=1.5 must be in \[0, 1\]"),
    ("compare flag no method declares", lambda t: ["compare", "--methods", "ce,mixup", "--noise", "symmetric:0.2",
                                                   "--normalize", "softmax", "--out", str(t / "out")],
     r"--normalize is an option of l2b, l2rw, mwnet, none of which is in this grid"),
    ("compare flag typed per method", lambda t: ["compare", "--methods", "l2b,mwnet", "--noise", "symmetric:0.2",
                                                 "--normalize", "softmax", "--out", str(t / "out")],
     r"--normalize means different things to l2b, mwnet in this grid; give it to one method: "
     r"--method-arg l2b.normalize=softmax or --method-arg mwnet.normalize=softmax"),
    ("compare flag of two meanings", lambda t: ["compare", "--methods", "l2b,distill", "--noise", "symmetric:0.2",
                                                "--temperature", "10", "--out", str(t / "out")],
     r"--temperature means different things to l2b, distill"),
    ("compare option of a method not in the grid", lambda t: ["compare", "--methods", "ce,l2b", "--noise", "symmetric:0.2",
                                                             "--method-arg", "mwnet.variant=reference", "--out", str(t / "out")],
     r"--method-arg mwnet.variant: 'mwnet' is not in this grid \(ce, l2b\)"),
    ("amp on the cpu", lambda t: ["train", *TINY, "--amp", "--device", "cpu", "--out", str(t / "out")],
     r"--amp is bf16 autocast on CUDA, and this run is on the CPU"),
    ("milestones with cosine", lambda t: ["train", *TINY, "--milestones", "5,10", "--out", str(t / "out")],
     r"--milestones \[5, 10\] apply to --schedule step only, not cosine"),
    ("image size of in-memory data", lambda t: ["train", *TINY, "--image-size", "4", "--out", str(t / "out")],
     r"--image-size 4: digits is held in memory at its own size; the crop size applies to image files \(folder, csv, "
     r"isic2019, clothing1m\); drop it"),
    ("npz class names twice", lambda t: ["train", "--data", "npz:" + str(_arrays(
        t, classes=np.array(list("abcdefghia")), x_test=np.full((4, 8, 8), 7, np.uint8))), "--out", str(t / "out")],
     r"class name\(s\) \['a'\] given more than once in 'classes'; give each class its own name"),
    ("npz given a directory", lambda t: ["train", "--data", f"npz:{t}", "--out", str(t / "out")],
     r"a directory; npz:FILE takes one .npz file \(a folder of class folders is folder:DIR\)"),
    ("npz splits of other sizes", lambda t: ["train", "--data", f"npz:{_arrays(t, x_test=np.zeros((4, 16, 16), np.uint8))}",
                                             "--out", str(t / "out")],
     r"x_test images are 16×16 with 1 channel but x_train's are 8×8 with 1 channel"),
    ("npz gray train, rgb test", lambda t: ["train", "--data", f"npz:{_arrays(t, x_test=np.zeros((4, 8, 8, 3), np.uint8))}",
                                            "--out", str(t / "out")],
     r"x_test images are 8×8 with 3 channels but x_train's are 8×8 with 1 channel"),
    ("npz stored N×C×H×W", lambda t: ["train", "--data", f"npz:{_arrays(t, x_train=np.zeros((20, 3, 8, 8), np.uint8))}",
                                      "--out", str(t / "out")],
     r"looks like N×C×H×W \(PyTorch's order\); store N×H×W×C: x_train = x_train.transpose\(0, 2, 3, 1\)"),
    ("npz float images in [0, 1]", lambda t: ["train", "--data", f"npz:{_arrays(t, x_train=np.full((20, 8, 8), 0.5, np.float32))}",
                                              "--out", str(t / "out")],
     r"x_train has dtype float32 \(values 0.5\.\.0.5\); store images as uint8 \(0-255\): x_train = \(x_train \* 255\).round\(\).astype\(np.uint8\)"),
    ("npz truncated", lambda t: ["train", "--data", f"npz:{_truncated(t)}", "--out", str(t / "out")],
     r"mine.npz: not a readable .npz \(truncated or not written by np.savez"),
    ("npz object arrays", lambda t: ["train", "--data", f"npz:{_arrays(t, x_train=np.array([np.zeros((8, 8)), np.zeros((4, 4))], dtype=object))}",
                                     "--out", str(t / "out")],
     r"x_train is an object array"),
    ("npz empty test set", lambda t: ["train", "--data", f"npz:{_arrays(t, x_test=np.zeros((0, 8, 8), np.uint8), y_test=np.zeros(0, np.int64))}",
                                      "--out", str(t / "out")],
     r"x_test is empty"),
    ("npz label 99", lambda t: ["train", "--data", f"npz:{_arrays(t, y_train=np.array([99] + [i % 10 for i in range(19)]))}",
                                "--out", str(t / "out")],
     r"11 distinct values, but the largest, 99, would make 100 classes"),
    ("npz 12-bit images in uint16", lambda t: ["train", "--data", f"npz:{_arrays(t, x_train=np.full((20, 8, 8), 4095, np.uint16))}",
                                               "--out", str(t / "out")],
     r"x_train has dtype uint16 \(values 4095..4095\); store images as uint8 \(0-255\), by one linear map for every split "
     r".*e.g. x_train = \(x_train \* \(255 / 4095\)\).round\(\).astype\(np.uint8\)"),
    ("npz standardised float images", lambda t: ["train", "--data", f"npz:{_arrays(t, x_train=np.linspace(-2, 3, 20 * 64).reshape(20, 8, 8))}",
                                                 "--out", str(t / "out")],
     r"x_train has dtype float64 \(values -2\.\.3\); store images as uint8 \(0-255\), by one linear map for every split "
     r"\(the widest range over them; this is x_train's\), e.g. x_train = \(\(x_train - \(-2\)\) \* \(255 / 5\)\)"),
    ("npz CT numbers in int16", lambda t: ["train", "--data", f"npz:{_arrays(t, x_train=np.tile(np.array([-1024, 3071], np.int16), (20, 8, 4)))}",
                                           "--out", str(t / "out")],
     r"x_train has dtype int16 \(values -1024\.\.3071\); .*x_train = \(\(x_train - \(-1024\)\) \* \(255 / 4095\)\)"),
    ("npz NaN in float images", lambda t: ["train", "--data", f"npz:{_arrays(t, x_train=np.where(np.arange(20 * 64).reshape(20, 8, 8) == 70, np.nan, 0.5))}",
                                           "--out", str(t / "out")],
     r"x_train has dtype float64 and holds 1 NaN or inf value\(s\), the first at x_train\[1, 0, 6\]: mend or drop"),
    ("npz a table of features", lambda t: ["train", "--data", f"npz:{_arrays(t, x_train=np.zeros((20, 30), np.float32))}",
                                           "--out", str(t / "out")],
     r"x_train has shape \(20, 30\): a row of 30 values per sample, not images .* drop-in step l2b.L2B .*'A table of features, not images'"),
    ("npz boolean masks as images", lambda t: ["train", "--data", f"npz:{_arrays(t, x_train=np.zeros((20, 8, 8), bool))}",
                                               "--out", str(t / "out")],
     r"x_train has dtype bool; store images as uint8 \(0-255\): x_train = x_train.astype\(np.uint8\) \* 255"),
    ("npz class names in one split, numbers in another",
     lambda t: ["train", "--data", f"npz:{_arrays(t, y_train=np.array(['cat', 'dog'] * 10))}", "--out", str(t / "out")],
     r"y_test holds numbers \(dtype int64\) where y_train holds class names; give every split's labels the same way"),
    ("npz a class name that 'classes' lacks",
     lambda t: ["train", "--data", f"npz:{_arrays(t, y_train=np.array(['cat', 'dog'] * 9 + ['cow', 'cat']), y_test=np.array(['cat', 'dog'] * 2), classes=np.array(['cat', 'dog']))}",
                "--out", str(t / "out")],
     r"y_train\[18\] is 'cow', which 'classes' does not name \(it names cat, dog\)"),
    ("npz an empty class name",
     lambda t: ["train", "--data", f"npz:{_arrays(t, y_train=np.array(['cat', 'dog'] * 9 + ['', 'cat']), y_test=np.array(['cat', 'dog'] * 2))}",
                "--out", str(t / "out")],
     r"y_train\[18\] is an empty class name"),
    ("npz one-hot labels", lambda t: ["train", "--data", f"npz:{_arrays(t, y_train=np.eye(10)[np.arange(20) % 10])}",
                                      "--out", str(t / "out")],
     r"y_train has shape \(20, 10\); store one integer label per sample \(y_train = y_train.argmax\(axis=1\)"),
    ("npz fewer class names than labels", lambda t: ["train", "--data", f"npz:{_arrays(t, classes=np.array(['a', 'b']))}",
                                                     "--out", str(t / "out")],
     r"y_train holds label 9 \(at index 9\) but 'classes' names 2 class\(es\): give one name per class"),
    ("csv without a label column", lambda t: ["train", "--data", f"csv:{_csv(t, ['file,choice', 'a.png,cat'])}", "--out", str(t / "out")],
     r"labels.csv: no label column \(label or class\); a csv dataset has a header with path and label columns, and "
     r"optionally split \(train, val or test\); found: file, choice"),
    ("csv ragged row", lambda t: ["train", "--data", f"csv:{_csv(t, ['path,label,split', 'a.png,cat,train', 'b.png,dog'])}",
                                  "--out", str(t / "out")],
     r"labels.csv line 3: 2 fields, the header has 3"),
    ("csv unknown split", lambda t: ["train", "--data", f"csv:{_csv(t, ['path,label,split', 'a.png,cat,valid'])}",
                                     "--out", str(t / "out")],
     r"labels.csv line 2: split 'valid' is not train, val \(your verified clean set\) or test"),
    ("csv empty label", lambda t: ["train", "--data", f"csv:{_csv(t, ['path,label,split', 'a.png,,train'])}", "--out", str(t / "out")],
     r"labels.csv line 2: empty label"),
    ("csv image listed twice", lambda t: ["train", "--data", f"csv:{_csv(t, ['path,label,split', 'a.png,cat,train', 'b.png,dog,test', 'a.png,cat,test'])}",
                                          "--out", str(t / "out")],
     r"labels.csv line 4: a.png is listed again \(first at line 2\); list every image once"),
    ("csv annotators' votes, one row each", lambda t: ["train", "--data", f"csv:{_csv(t, ['path,label', 'a.png,cat', 'b.png,dog', 'a.png,dog'])}",
                                                        "--out", str(t / "out")],
     r"labels.csv line 4: a.png is listed again \(first at line 2\) with label 'dog' where line 2 gives 'cat': several "
     r"annotators' labels\? Give one per image \(e.g. their majority vote\)"),
    ("csv without training rows", lambda t: ["train", "--data", f"csv:{_csv(t, ['path,label,split', 'a.png,cat,val', 'b.png,dog,test'])}",
                                             "--out", str(t / "out")],
     r"labels.csv: no rows with split train; a csv dataset needs training images"),
    ("csv naming a missing image", lambda t: ["train", "--data", f"csv:{_csv(t, ['path,label,split', 'a.png,cat,train', 'b.png,dog,train', 'gone.png,cat,train', 'c.png,dog,test'])}",
                                              "--out", str(t / "out")],
     r"labels.csv \(train\): 1 unreadable image\(s\): .*gone.png .*--on-bad-images skip"),
    ("glc with lr nan fits nothing", lambda t: ["train", *TINY, "--method", "glc", "--lr", "nan", "--out", str(t / "out")],
     r"--lr must be a finite number"),
    ("unwritable out", lambda t: (t.joinpath("file").write_text("x"), ["train", *TINY, "--method", "glc", "--val-per-class", "3",
                                                                     "--out", str(t / "file" / "run")])[1],
     r"--out .*file/run: cannot write there"),
    ("truncated IDX header", lambda t: ["train", "--data", f"fashion-mnist:{_idx(t)}", "--epochs", "1", "--out", str(t / "out")],
     r"train-images-idx3-ubyte: truncated header"),
    ("one-class dataset", lambda t: ["train", "--data", f"npz:{_npz(t, [0] * 20, [0] * 5)}", "--method", "ce",
                                     "--val-per-class", "none", "--out", str(t / "out")], r"1 class\(es\); a classifier needs at least 2"),
]


def _arrays(t: Path, **given) -> Path:
    """An npz of 20 gray 8x8 training and 4 test images, with ``given`` arrays replaced."""
    import numpy as np

    arrays = dict(x_train=np.zeros((20, 8, 8), np.uint8), y_train=np.arange(20) % 10,
                  x_test=np.zeros((4, 8, 8), np.uint8), y_test=np.arange(4))
    arrays.update(given)
    np.savez(t / "mine.npz", **arrays)
    return t / "mine.npz"


def _csv(t: Path, lines: list[str]) -> Path:
    """t/labels.csv of ``lines``, beside three real 8-px images a.png, b.png and c.png."""
    from PIL import Image

    for name in ("a", "b", "c"):
        Image.new("RGB", (8, 8)).save(t / f"{name}.png")
    (t / "labels.csv").write_text("\n".join(lines) + "\n")
    return t / "labels.csv"


def _truncated(t: Path) -> Path:
    f = _arrays(t)
    f.write_bytes(f.read_bytes()[:300])
    return f


@pytest.mark.parametrize("case, build, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_one_line_error_before_any_work(tmp_path, capsys, case, build, expected):
    import re

    argv = build(tmp_path)
    try:
        code = cli_main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    last = err.splitlines()[-1]
    assert "error:" in last and re.search(expected, last), err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "file" / "run").exists()  # nothing left behind


def test_yaml_nesterov_no_is_false(tmp_path):
    from l2b.config import TrainConfig

    cfg = TrainConfig.from_dict({"nesterov": "no", "momentum": 0.9, "epochs": "3"}, "cfg.yaml")
    assert cfg.nesterov is False and cfg.epochs == 3


def test_resume_refuses_flags_that_change_results(tmp_path, capsys):
    out = _finished(tmp_path)
    assert cli_main(["train", "--resume", str(out), "--epochs", "20"]) == 2
    err = capsys.readouterr().err
    assert "--epochs 20 (the run has 1) would change its results" in err
    assert cli_main(["train", "--resume", str(out), "--progress", "none"]) == 0  # allowed


def test_the_same_settings_again_leave_nothing_of_the_old_run(tmp_path):
    out = _finished(tmp_path, "ce")
    for name in ("label_issues.csv", "early_model.pt", "best_model.pt", "weights.npz"):
        (out / name).write_bytes(b"stale")
    assert cli_main(["train", *TINY, "--method", "ce", "--val-per-class", "3", "--out", str(out)]) == 0
    assert not (out / "label_issues.csv").exists() and not (out / "weights.npz").exists()
    from l2b.rundir import load_checkpoint

    for name in ("early_model.pt", "best_model.pt"):  # written again by the new run, not the stale bytes
        assert load_checkpoint(out / name, "cpu").keys()


def test_out_holding_another_run_is_refused_then_overwritten(tmp_path, capsys):
    out = _finished(tmp_path, "l2b")
    assert (out / "weights.npz").is_file()
    argv = ["train", *TINY, "--method", "ce", "--val-per-class", "3", "--out", str(out)]
    assert cli_main(argv) == 2
    assert "holds an earlier run with other settings; give --overwrite" in capsys.readouterr().err
    assert cli_main(argv + ["--overwrite"]) == 0
    assert not (out / "weights.npz").exists()  # nothing of the l2b run survives


def test_compare_refuses_cells_run_with_other_settings(tmp_path, capsys):
    argv = ["compare", "--methods", "ce", "--noise", "symmetric:0.4", "--data", "digits", "--model", "mlp",
            "--width", "8", "--epochs", "1", "--val-per-class", "3", "--out", str(tmp_path / "grid")]
    assert cli_main(argv) == 0
    capsys.readouterr()
    argv2 = [a if a != "1" else "2" for a in argv]  # --epochs 2
    assert cli_main(argv2) == 2
    err = capsys.readouterr().err
    assert "1 grid cell(s) hold runs with other settings" in err and "(epochs=1, now 2)" in err
    assert cli_main(argv2 + ["--overwrite"]) == 0
    import json

    m = json.loads((tmp_path / "grid" / "ce" / "symmetric_0.4" / "seed0" / "metrics.json").read_text())
    assert len(m["history"]) == 2


def test_divergence_stops_with_epoch_and_step_and_keeps_the_checkpoint(tmp_path, capsys):
    import json

    out = tmp_path / "run"
    argv = ["train", *TINY[:-4], "--epochs", "2", "--method", "ce", "--lr", "1e30", "--val-per-class", "3",
            "--progress", "none", "--out", str(out)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "became NaN or inf at epoch 1, step" in err
    m = json.loads((out / "metrics.json").read_text())
    assert m["diverged"]["epoch"] == 0 and not (out / "checkpoint.pt").exists()


def test_metrics_json_has_no_nan(tmp_path):
    from l2b.config import TrainConfig
    from l2b.trainer import train

    out = tmp_path / "run"  # CE without a clean set: validation accuracy is undefined
    train(TrainConfig(data="digits", model="mlp", width=8, epochs=1, method="ce", val_per_class=None,
                      progress="none", out=str(out)))
    text = (out / "metrics.json").read_text() + (out / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text


def test_meta_weights_raise_on_a_nan_pixel():
    import l2b

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    x[2, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"the training inputs x hold NaN or inf \(first at sample 2\)"):
        l2b.meta_weights(model, x, y, torch.randn(3, 1, 4, 4), torch.tensor([0, 1, 2]), lr=0.1)


def test_label_gaps_keep_the_class_count_and_warn(tmp_path):
    from l2b.data import load_dataset

    f = _npz(tmp_path, [0, 5] * 10, [0, 5, 3])
    with pytest.warns(UserWarning, match=r"class\(es\) \[1, 2, 3, 4\] have no training sample"):
        ds = load_dataset(f"npz:{f}")
    assert ds.num_classes == 6  # the union of train and test labels, gaps included


def test_a_meta_method_that_diverges_names_epoch_and_step(tmp_path, capsys):
    import json

    out = tmp_path / "run"
    argv = ["train", *TINY[:-4], "--epochs", "2", "--method", "l2b", "--lr", "1e30", "--clip-grad-norm", "0",
            "--val-per-class", "3", "--progress", "none", "--out", str(out)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "diverged at epoch 1, step" in err and "no checkpoint was written" in err
    assert json.loads((out / "metrics.json").read_text())["diverged"]["epoch"] == 0


def test_preparing_a_run_directory_never_removes_a_parallel_workers_run(tmp_path, monkeypatch):
    """Two grid workers start runs below the same new directory at once: the first one's clean-up
    of the directories it created must leave the second one's run alone."""
    from pathlib import Path

    from l2b.rundir import prepare_out

    grid = tmp_path / "grid"
    other = grid / "mwnet" / "symmetric_0.2" / "seed1"
    real_write = Path.write_text

    def write_and_race(self, text, *a, **kw):  # the other worker creates its run meanwhile
        if self.name == ".l2b-write-test":
            other.mkdir(parents=True, exist_ok=True)
            real_write(other / "config.json", "{}")
        return real_write(self, text, *a, **kw)

    monkeypatch.setattr(Path, "write_text", write_and_race)
    mine = grid / "mwnet" / "symmetric_0.2" / "seed0"
    prepare_out(mine, {}, resume=False, overwrite=False)
    assert (other / "config.json").is_file()  # the other worker's run survives
    assert not mine.exists()  # what this call created for itself is gone again


def test_a_grid_cell_of_an_earlier_version_counts_missing_settings_as_their_defaults(tmp_path, capsys):
    """Settings added later (test_every, weight_epochs) are absent from an older config.json: the
    cell is the same run when the new settings are at their defaults, and another one otherwise."""
    import json

    argv = ["compare", "--methods", "ce", "--noise", "symmetric:0.4", "--data", "digits", "--model", "mlp",
            "--width", "8", "--epochs", "1", "--val-per-class", "3", "--out", str(tmp_path / "grid")]
    assert cli_main(argv) == 0
    saved = tmp_path / "grid" / "ce" / "symmetric_0.4" / "seed0" / "config.json"
    old = json.loads(saved.read_text())
    for name in ("test_every", "weight_epochs"):
        del old["config"][name]
    saved.write_text(json.dumps(old))
    assert cli_main(argv) == 0 and "skip" in capsys.readouterr().out  # the same run: finished, skipped
    assert cli_main(argv + ["--test-every", "2"]) == 2
    assert "(test_every=1, now 2)" in capsys.readouterr().err


@pytest.mark.parametrize("method, flags", [("l2rw", ["--val-batch-size", "1"]), ("mlc", ["--val-batch-size", "3"])])
def test_a_lone_sample_at_a_1x1_batchnorm_names_the_batch_sizes_to_raise(tmp_path, capsys, method, flags):
    """PreActResNet-18 on 8x8 digits ends at a 1x1 map: a clean batch of one (or MLC's half of
    three) cannot be normalised there; the error says which flags give two or more."""
    argv = ["train", "--data", "digits", "--model", "preact-resnet18", "--width", "4", "--epochs", "1",
            "--val-per-class", "3", "--method", method, *flags, "--progress", "none", "--out", str(tmp_path / "out")]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "epoch 1, step 1: a BatchNorm layer of --model preact-resnet18" in err
    assert f"--val-batch-size {flags[1]}" in err and "--model mlp" in err


def test_report_given_a_file_of_a_run_names_its_directory(tmp_path, capsys, finished_ce_run):
    assert cli_main(["report", str(finished_ce_run / "metrics.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"metrics.json: a file; give the directory of a run or a grid (e.g. {finished_ce_run})"), err
