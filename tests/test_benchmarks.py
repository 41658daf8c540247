"""The Fashion-MNIST benchmark script end to end in its --quick mode (real data, tiny schedule)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
ROW_FIELDS = {"method", "noise", "seeds", "test_acc_last_mean", "test_acc_last_std",
              "test_acc_at_best_val_mean", "test_acc_at_best_val_std", "epoch_seconds", "noise_auc"}


@pytest.fixture(scope="session")
def fashion_part(tmp_path_factory):
    """``fashion-mnist:DIR`` for the first 6,000 training and 1,000 test images, in the same IDX
    files: the quick modes check what their runs write, and scoring the whole test set at every
    epoch of every run cost them more than their training."""
    import struct

    from l2b.data.idx import read_idx

    root = tmp_path_factory.mktemp("fashion-part")
    for prefix, n in (("train", 6000), ("t10k", 1000)):
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            a = read_idx(FASHION_MNIST_DIR / f"{prefix}-{kind}.gz")[:n]
            header = bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
            (root / f"{prefix}-{kind}").write_bytes(header + a.tobytes())
    return f"fashion-mnist:{root}"


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_benchmark_quick_mode_writes_every_row(tmp_path, fashion_part):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fashion_mnist.py"), "--quick",
                           "--jobs", "1", "--data", fashion_part, "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "results.json").read_text())
    assert result["command"].startswith("python benchmarks/fashion_mnist.py --quick")
    from l2b.methods import METHODS

    rows = {(r["method"], r["noise"]): r for r in result["rows"]}
    # every registered method at the quick noise setting, plus the clean-label CE ceiling
    assert set(rows) == {(m, "symmetric:0.4") for m in METHODS} | {("ce", "none")}
    for (method, _), row in rows.items():
        assert ROW_FIELDS <= set(row)
        assert row["seeds"] == 1 and row["test_acc_last_std"] == 0.0
        assert 10.0 < row["test_acc_last_mean"] <= 100.0 and row["epoch_seconds"] > 0
        if method in ("l2b", "l2rw", "mwnet", "mlc"):
            assert row["noise_auc"] > 0.5  # the meta methods' weights detect noise better than chance
        else:
            assert row["noise_auc"] is None
    # the committed results are only rewritten by a full run
    assert "symmetric:0.4" in (out / "results.md").read_text()


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_memorisation_benchmark_quick_mode_writes_every_row_and_the_paired_differences(tmp_path, fashion_part):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memorisation.py"), "--quick", "--jobs", "1",
                           "--data", fashion_part, "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "results.json").read_text())
    from l2b.methods import METHODS

    rows = {(r["method"], r["noise"]): r for r in result["rows"]}
    assert set(rows) == {(m, "symmetric:0.4") for m in METHODS} | {("ce", "none")}
    l2b_row = rows[("l2b", "symmetric:0.4")]
    for (method, noise), row in rows.items():
        assert ROW_FIELDS <= set(row) and row["total_seconds"] > 0
        if method != "l2b" and noise != "none":  # L2B minus the method on the same seed, exactly
            d = row["l2b_minus_last"]
            assert d["mean"] == pytest.approx(l2b_row["seed_last"]["0"] - row["seed_last"]["0"], abs=1e-3)
    assert result["regime"]["noise"] == "symmetric:0.4" and "gap" in result["regime"]
    (variant,) = result["variants"]  # L2B with the last-layer engine beside exact L2B
    assert variant["method"] == "l2b-last-layer" and variant["minus_exact_last"]["seeds"] == 1
    table = (out / "results.md").read_text()
    assert "Does L2B beat every other method" in table and "paired by seed" in table
    for png in ("accuracy.png", "separation.png"):
        assert (out / "figures" / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_paper_regime_benchmark_quick_mode_covers_grid_ablations_and_sweep(tmp_path, fashion_part):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paper_regime.py"), "--quick", "--jobs", "1",
                           "--data", fashion_part, "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "results.json").read_text())
    from l2b.methods import METHODS

    recipe = result["recipe"]
    assert recipe["val_batch_size"] == recipe["batch_size"]  # a clean batch as large as the training batch
    assert {r["method"] for r in result["rows"]} == set(METHODS) | {"ce+clean"}
    for row in result["rows"]:
        assert {"method", "noise", "last_mean", "last_std", "best_val_mean", "seeds"} <= set(row)
    # CE on noisy + clean trained on more samples than CE alone: the clean set joined its stream
    grid_ce = json.loads((out / "grid/ce/symmetric_0.4/seed0/config.json").read_text())["data"]
    plus = json.loads((out / "ce-plus-clean/ce/symmetric_0.4/seed0/config.json").read_text())["data"]
    assert plus["train"] == grid_ce["train"] + grid_ce["clean_val"]
    variants = {a["variant"] for a in result["ablations"]}
    assert {"alpha=0", "beta=0", "alpha+beta=1", "sigmoid", "softmax-t10", "bootstrap-beta0.2",
            "l2b (alpha,beta>=0; sum)"} <= variants
    sweep = result["clean_sweep"]
    assert {(s["method"], s["clean_fraction"]) for s in sweep} == {
        (m, f) for m in ("l2b", "l2rw", "glc", "mlc", "distill", "ce-clean-only", "ce+clean") for f in (0.1, 0.2)}
    # the sweep keeps the grid's noisy set and nests its clean sets; the 2%-like point is the grid's split
    small, large = (np.load(out / f"sweep/data/seed0-clean{k}.npz") for k in (3, 6))
    assert np.array_equal(small["y_train"], large["y_train"]) and np.array_equal(small["x_train"], large["x_train"])
    assert {a.tobytes() for a in small["x_val"]} <= {a.tobytes() for a in large["x_val"]}
    labels = np.load(out / "grid/ce/symmetric_0.4/seed0/labels.npz")
    assert np.array_equal(small["y_train"], labels["noisy"])
    assert set(result["curves"]) >= {"ce|symmetric:0.4", "l2b|symmetric:0.4", "l2rw|symmetric:0.4"}
    for png in ("fig1a_bootstrap_beta.png", "fig2_test_accuracy_by_epoch.png", "clean_fraction_sweep.png"):
        assert (out / "figures" / png).read_bytes()[:4] == b"\x89PNG"


def test_label_issue_cut_benchmark_quick_mode_meets_the_targets_on_unsure_models(tmp_path):
    """The 3-epoch digits runs of the README's example: the fixed 0.5 cut flags far too many
    labels; the default cut flags within 25% of the corrupted count, at precision >= 0.8."""
    out = tmp_path / "cut"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "label_issue_cut.py"), "--quick",
                           "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "results.json").read_text())
    assert len(result["rows"]) == 3
    for row in result["rows"]:  # "default": what l2b label-issues flags on that run
        assert row["default_cut"] == ("clean-confusion" if row["clean_steered"] else "checked-count")
        assert abs(row["default"]["count_ratio"] - 1) <= 0.25 and row["default"]["precision"] >= 0.8
        assert row["threshold"]["count_ratio"] > 1.5  # the fixed cut over-flags these unsure models
        assert row["reachable"]  # the default's own count shows some count of the ranking's top meets both
    assert next(iter(result["summary"].values()))["default"]["reachable"] == "3/3"
    # cleanlab's own flags on the same probabilities: a column where cleanlab is installed, and none without
    try:
        import cleanlab  # noqa: F401
        installed = True
    except ImportError:
        installed = False
    assert all(("cleanlab" in row) == installed for row in result["rows"])
    assert all(("cleanlab" in part) == installed for part in result["summary"].values())
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from label_issue_cut import CLEANLAB, columns

    rows = result["rows"]
    assert (CLEANLAB in columns(rows)) == installed
    assert CLEANLAB not in columns([*rows, {k: v for k, v in rows[0].items() if k != CLEANLAB}])  # one row lacks it


def test_label_issue_cut_learned_part_holds_only_runs_that_learned_from_their_clean_labels(tmp_path):
    """Every run of the part that measures the methods learning from their clean labels does (so
    its summary measures what it names); one of them, trained and measured, takes clean-confusion,
    capped by the count, as l2b label-issues does."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from label_issue_cut import learned_clean_runs, measure

    from l2b.grid import run_one
    from l2b.methods import learns_from_clean

    cells = learned_clean_runs(tmp_path)
    assert len(cells) == 80
    assert all(learns_from_clean(cfg.method, cfg.method_args, cfg.train_on_clean) for _, cfg in cells)
    name, cfg = next((n, c) for n, c in cells if n.startswith("digits") and c.train_on_clean)
    run_one(cfg.__dict__)
    row = measure(name, Path(cfg.out))
    assert row["clean_learned"] and not row["clean_steered"] and row["default_cut"] == "clean-confusion"
    assert row["default"]["flagged"] <= row["count"]["flagged"] == row["estimated"]


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_label_issue_cut_references_separate_the_clean_sets_push_on_one_own_data_run(tmp_path):
    """The own-data table of the cut benchmark on one run of its first setting (1,000 images, 10
    clean per class, 20% moved): the mix fitted on the correct training labels, the reference it
    assumes, counts the moved labels within 25%; the held-out test set counts fewer than the clean
    set that steered training; and the tried bias correction is reported with a verdict."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from label_issue_cut import own_data_runs
    from label_issue_references import references

    from l2b.grid import run_one

    name, cfg = own_data_runs(tmp_path, range(1))[0]
    run_one(cfg.__dict__)
    r = references(name, Path(cfg.out))
    assert r["per_class"] == 10 and abs(r["correct_train"] - 1) <= 0.25
    assert r["test"] < r["clean"] and r["test_draws"] > r["test"]  # the held-out set; a few of it push up
    assert set(r["corrected_default"]) == {"count_ratio", "precision", "both"}
    assert 0 <= r["corrected_default"]["precision"] <= 1 and r["clean_corrected"] >= 0


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_no_clean_set_benchmark_quick_mode_writes_rows_with_purity(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "no_clean_set.py"), "--quick", "--jobs", "1",
                           "--out", str(out),
                           "--grid", str(tmp_path / "no-grid")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["meta_set"] for r in rows} == {"select-small-loss", "select-confident", "select-small-loss-leaves",
                                             "select-confident-leaves", "select-confident-refresh10",
                                             "select-confident-defaults"}
    for r in rows:
        assert r["noise"] == "symmetric:0.4" and 0 < r["last_mean"] <= 100 and 0 < r["purity"] <= 1
    meta = json.loads((out / "select-small-loss" / "l2b" / "symmetric_0.4" / "seed0" / "meta_set.json").read_text())
    assert meta["selections"][0]["size"] == 30  # 3 per class, as the quick recipe's clean set


def test_the_step_cost_authors_row_runs_the_same_step_as_ours(float64):
    """benchmarks/step_cost.py times the public code's step through `higher`; it must compute what
    our L2B step computes (parameters equal after two steps), or its timing compares unlike work."""
    pytest.importorskip("higher")
    import torch

    import l2b
    from reference import assert_same_parameters, digit_batches, model_pair

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from step_cost import authors_step

    ours, theirs = model_pair()
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    step = l2b.L2B(ours, opt_ours, clip_grad_norm=0.8)
    for x, y, x_val, y_val in digit_batches(steps=2):
        step.step(x, y, x_val, y_val)
        authors_step(theirs, opt_theirs, x, y, x_val, y_val, clip=0.8)
    assert_same_parameters(ours, theirs, rtol=1e-7)  # theirs divides by sum(w) + 1e-10


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_label_issue_benchmark_quick_mode_scores_every_source(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "label_issues.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "results.json").read_text())
    methods = [r["method"] for r in result["rows"]]
    assert methods[:6] == ["l2b:trust", "l2b:trust-mean", "l2b:weights-mean", "l2b:model", "l2b:combined", "ce:model"]
    try:
        import cleanlab  # noqa: F401
        assert methods[6].startswith("cleanlab") and len(methods) == 7
    except ImportError:
        assert len(methods) == 6 and "cleanlab is not installed" in result["notes"][0]
    labels = np.load(out / "symmetric_0.4" / "seed0" / "l2b" / "labels.npz")
    assert result["seeds"] == 1 and all(r["seeds"] == 1 for r in result["rows"])
    corrupted = int((labels["noisy"] != labels["true"]).sum())
    for r in result["rows"]:
        assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and 0 <= r["auc"] <= 1 and r["train_seconds"] > 0
        assert r["corrupted"] == corrupted  # the count the flagged count is judged against
        if r["flagged"]:  # precision and recall agree with the counts they come from
            assert round(r["precision"] * r["flagged"]) == round(r["recall"] * corrupted)


def test_bf16_meta_weights_agree_with_float32_on_the_cpu():
    """The agreement check of benchmarks/bf16_agreement.py, tiny: bf16 autocast weights rank and
    weigh the samples as float32 ones do, and the model state is left as it was."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch

    from bf16_agreement import compare, make_data
    from l2b.models import PreActResNet18

    gen = torch.Generator().manual_seed(0)
    protos = torch.randn(10, 3, 32, 32, generator=gen)
    x, y_true, y = make_data(protos, 48, 0.4, gen, "cpu")
    xv, yv, _ = make_data(protos, 32, 0.0, gen, "cpu")
    torch.manual_seed(0)
    model = PreActResNet18(10, width=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = compare(model, opt, [(x, y, y != y_true, xv, yv)], "jvp-lean")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert r["rho_alpha"] > 0.95 and r["tv"] < 0.05 and r["zero_agree"] > 0.95 and r["pseudo_agree"] > 0.9
    assert 0 < r["rel_err"] < 0.1  # the raw meta-gradient: bf16 moves it, a little


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_bf16_agreement_runs_on_real_images(tmp_path):
    """``--data fashion-mnist``: the same comparison on real images, 32x32x3 as the model takes
    them, its test split the clean set; a row per engine with a relative error in [0, 1)."""
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bf16_agreement.py"), "--device", "cpu",
                          "--data", "fashion-mnist", "--n", "256", "--width", "4", "--batch", "32", "--steps", "1",
                          "--batches", "1", "--no-record"], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'benchmarks'}"})
    assert run.returncode == 0, run.stderr
    rows = [line.split(" | ") for line in run.stdout.splitlines() if line.startswith("| 0 |") or line.startswith("| 1 |")]
    assert len(rows) == 6 and {r[1] for r in rows} == {"jvp-lean", "jvp", "last-layer"}
    assert all(0 <= float(r[2]) < 1 for r in rows)


BAD_ARGUMENTS = [
    ("memorisation.py", ["--noises", "symmetric:0.5"], "--noises symmetric:0.5: choose among"),
    ("memorisation.py", ["--device", "gpu"], "--device 'gpu': choose auto, cpu, cuda or cuda:N"),
    ("step_cost.py", ["--device", "tpu"], "--device 'tpu': choose auto, cpu, cuda or cuda:N"),
    ("bf16_agreement.py", ["--device", "cuda:x"], "--device 'cuda:x': choose auto, cpu, cuda or cuda:N"),
    ("label_issues.py", ["--grid", "no-such-grid"], "--grid no-such-grid: not a directory"),
    ("label_issues.py", ["--train-here", "--grid", "."], "--train-here trains every run here: leave --grid out"),
]
# each case runs the script as its own __main__, as `python benchmarks/SCRIPT ARGS` does, all in one
# process (a process each paid torch's import six times over); what it wrote to stderr, how it exited
REFUSE = """
import contextlib, io, json, runpy, sys, traceback
results = []
for script, args in json.loads(sys.argv[1]):
    sys.argv = [script, *args]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as stop:
            code = stop.code
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    cases = [[str(ROOT / "benchmarks" / script), args] for script, args, _ in BAD_ARGUMENTS]
    proc = subprocess.run([sys.executable, "-c", REFUSE, json.dumps(cases)], capture_output=True, text=True,
                          cwd=tmp_path_factory.mktemp("refusals"),
                          env={**os.environ, "PYTHONPATH": str(ROOT / "benchmarks")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("case", range(len(BAD_ARGUMENTS)),
                         ids=["memorisation --noises", "memorisation --device", "step_cost --device",
                              "bf16_agreement --device", "label_issues --grid", "label_issues --train-here --grid"])
def test_benchmark_scripts_refuse_bad_arguments_in_one_line(refusals, case):
    code, stderr = refusals[case]
    message = BAD_ARGUMENTS[case][2]
    assert code == 2 and message in stderr and "Traceback" not in stderr, stderr[-800:]


def test_cells_carry_a_grid_between_checkouts_without_overwriting_local_runs(tmp_path):
    """What a grid's tables read is packed and unpacked; a cell begun locally is left alone."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from cells import pack, unpack

    grid = tmp_path / "grid"
    for name in ("a/seed0", "b/seed0"):
        cell = grid / name
        cell.mkdir(parents=True)
        (cell / "config.json").write_text('{"config": {}}')
        (cell / "metrics.json").write_text('{"test_acc_last": 1.0}')
        np.savez(cell / "weights.npz", alpha=np.ones(3), beta=np.zeros(3), alpha_history=np.ones((5, 3)))
    (grid / "a/seed0/checkpoint.pt").write_bytes(b"model")
    assert pack(grid, tmp_path / "cells.tar.xz") == 2
    other = tmp_path / "other"
    (other / "b/seed0").mkdir(parents=True)  # begun here: not overwritten
    assert unpack(tmp_path / "cells.tar.xz", other) == 1
    assert (other / "a/seed0/metrics.json").read_text() == '{"test_acc_last": 1.0}'
    assert not (other / "a/seed0/checkpoint.pt").exists() and not (other / "b/seed0/metrics.json").exists()
    w = np.load(other / "a/seed0/weights.npz")
    assert set(w.files) == {"alpha", "beta"}  # the last epoch only


def _sweep(values: dict[str, list[float]], std: float = 0.5) -> list[dict]:
    fractions = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2]
    return [{"method": m, "clean_fraction": f, "last_mean": v, "last_std": std}
            for m, vs in values.items() for f, v in zip(fractions, vs)]


def test_the_crossover_sentence_names_where_training_on_the_clean_labels_overtakes_l2b():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from paper_regime_tables import crossover

    l2b = [75, 78, 80, 81, 82, 83]
    glc_from_5 = crossover(_sweep({"l2b": l2b, "glc": [70, 76, 79, 82.5, 84, 85], "ce-clean-only": [40, 50, 60, 70, 78, 84]}))
    assert glc_from_5.startswith("Up to 2% of the noisy set, spend the clean set on L2B's meta-gradient; from 5% on, glc")
    assert "plain CE overtook L2B from 20% (ce-clean-only: 84.00% vs 83.00%)" in glc_from_5
    # within the seeds' spread is not ahead
    level = crossover(_sweep({"l2b": l2b, "ce+clean": [v + 0.4 for v in l2b]}))
    assert level.startswith("At every clean-set size measured (0.5% to 20% of the noisy set) no method")
    first = crossover(_sweep({"l2b": l2b, "mlc": [v + 2 for v in l2b]}))
    assert first.startswith("Even at 0.5%, mlc") and "never overtook L2B up to 20%" in first


def test_the_no_clean_set_sentence_says_what_share_of_the_gain_is_kept_and_where_it_fails():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from no_clean_set import kept_gain

    def row(name, noise, value):
        return {"meta_set": name, "noise": noise, "last_mean": value, "purity": 0.95}

    table = [row("ce", "symmetric:0.4", 70), row("clean", "symmetric:0.4", 80),
             row("ce", "asymmetric:0.4", 60), row("clean", "asymmetric:0.4", 80),
             row("select-confident", "symmetric:0.4", 79), row("select-confident", "asymmetric:0.4", 64),
             row("select-small-loss", "symmetric:0.4", 71), row("select-small-loss", "asymmetric:0.4", 62),
             row("select-pseudo", "symmetric:0.4", 76), row("select-pseudo", "asymmetric:0.4", 76)]
    sentence = kept_gain(table)
    # pseudo: 60% and 80% (mean 70%); confident: 90% and 20% (mean 55%); small-loss: 10% and 10%
    assert sentence.startswith("L2B with a selected meta set (select:pseudo, stays in the stream, selected once; "
                               "last epoch) keeps 60%–80% of the true clean set's gain over CE (symmetric:0.4 60%, "
                               "asymmetric:0.4 80%)")
    assert "select:confident, stays in the stream, selected once: under half of the gain at 1 of 2 (55%" in sentence
    assert "select:small-loss, stays in the stream, selected once: under half of the gain at 2 of 2 (10%" in sentence
    table = [r for r in table if not r["meta_set"].startswith(("select-confident", "select-small-loss"))]
    table += [{"meta_set": "select-pseudo", "noise": "instance:0.4", "last_mean": 61, "purity": 0.7},
              row("ce", "instance:0.4", 60), row("clean", "instance:0.4", 80)]
    assert kept_gain(table).endswith("(symmetric:0.4 60%, asymmetric:0.4 80%) and fails at instance:0.4 (5% of the "
                                     "gain; the set 70% pure).")


def test_label_issue_cross_fit_benchmark_quick_mode_scores_in_and_out_of_fold(tmp_path):
    """The cross-fit benchmark on a 2-epoch digits CE run, 2 folds: both scorings of every run,
    as l2b label-issues writes them, and fold runs that each left out half of the samples."""
    out = tmp_path / "xf"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "label_issue_cross_fit.py"), "--quick",
                           "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "results.json").read_text())
    (row,) = result["rows"]
    assert result["folds"] == 2 and row["in_sample"]["model"] == "final" and row["cross_fit"]["model"] == "2 folds"
    for key in ("in_sample", "cross_fit"):
        r = row[key]
        assert r["corrupted"] > 0 and r["flagged"] == round(r["count_ratio"] * r["corrupted"])
        assert r["meets_both"] == (abs(r["count_ratio"] - 1) <= 0.25 and (r["auc"] < 0.95 or r["precision"] >= 0.8))
    run = out / "digits-ce"
    n = len(np.load(run / "labels.npz")["noisy"])
    sizes = [len(np.load(run / "cross-fit" / f"2-fold-{f}" / "labels.npz")["noisy"]) for f in (1, 2)]
    assert sorted(sizes) == [n // 2, n - n // 2] and row["fold_seconds"] >= 0


def test_decode_benchmark_quick_mode_times_both_reads_and_writes_nothing():
    pytest.importorskip("PIL")
    before = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode.py"), "--quick"], capture_output=True,
                          text=True, cwd=ROOT / "benchmarks", timeout=120)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| 1024×768"))
    whole, drafted, _, gap = (float(c.strip().rstrip("×")) for c in row.split("|")[2:6])
    assert whole > 0 and drafted > 0 and 0 <= gap < 0.05  # the two crops nearly alike
    assert (ROOT / "benchmarks" / "RESULTS.md").read_text() == before


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_label_issue_imbalance_benchmark_quick_mode_scores_l2b_and_cleanlab(tmp_path):
    out = tmp_path / "imbalance"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "label_issue_imbalance.py"), "--quick", "--out",
                           str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["run"] for r in rows] == ["l2b, 10 clean per class, seed 0", "ce, 10 clean per class, seed 0"]
    sizes = np.bincount(np.load(out / "imbalanced-v10-s0.npz")["y_train"])
    assert sizes.tolist() == [200, 140, 98, 69, 48, 34, 24, 16, 12, 8]  # each class 0.7 of the one before
    try:
        import cleanlab  # noqa: F401  (the bench extra)
        with_cleanlab = True
    except ImportError:
        with_cleanlab = False
    for r in rows:
        assert r["corrupted"] > 0 and r["flagged"] > 0 and 0.5 < r["auc"] <= 1
        assert (r["cleanlab_flagged"] is not None and r["cleanlab_flagged"] > 0) if with_cleanlab else \
            r["cleanlab_flagged"] is None
        assert r["cut"] == ("clean-confusion" if r["run"].startswith("l2b") else "checked-count")
    assert "| l2b, 10 clean per class, seed 0 |" in proc.stdout and "200·0.7^k" in proc.stdout


def test_prune_retrain_benchmark_quick_mode_trains_each_method_again_without_or_relabelling_its_flagged(tmp_path):
    out = tmp_path / "prune"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "prune_retrain.py"), "--quick", "--jobs", "1",
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["seed"]) for r in result["rows"]] == [("ce", 0), ("l2b", 0)]
    for r in result["rows"]:
        first = out / "digits" / "symmetric_0.4" / f"{r['method']}-s0"
        flagged = {int(row["index"]) for row in csv.DictReader(open(first / "label_issues.csv"))}
        assert len(flagged) == r["flagged"] > 0 and 0 <= r["precision"] <= 1
        kept = np.load(first.with_name(first.name + "-pruned") / "labels.npz")["train_index"]
        np.testing.assert_array_equal(kept, np.setdiff1d(np.load(first / "labels.npz")["train_index"], sorted(flagged)))
        assert r["pruned_gain_last"] == pytest.approx(r["pruned_last"] - r["first_last"])
        # relabelled with the suggestions: the same samples, the flagged ones carrying the suggested label
        fixed = np.load(first.with_name(first.name + "-relabelled") / "labels.npz")
        before = np.load(first / "labels.npz")
        np.testing.assert_array_equal(fixed["train_index"], before["train_index"])
        suggested = {int(row["index"]): int(row["suggested_label"]) for row in csv.DictReader(open(first / "label_issues.csv"))}
        expected = before["noisy"].copy()
        for k, i in enumerate(before["train_index"].tolist()):
            expected[k] = suggested.get(i, expected[k])
        np.testing.assert_array_equal(fixed["noisy"], expected)
        assert r["relabelled_noise_rate"] == pytest.approx(r["wrong_left_relabelled"])
        assert 0 <= r["suggested_right"] <= 1
    assert "| digits | symmetric:0.4 | l2b |" in proc.stdout and "relabelled | gain |" in proc.stdout


def test_device_check_on_the_cpu_trains_resumes_scores_and_reports(tmp_path):
    """The check a GPU machine runs, here on the CPU in its quick mode for one method (GLC: its
    batches of one clean sample meet PreActResNet-18's 1x1 map on digits)."""
    before = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_check.py"), "--device", "cpu",
                           "--methods", "glc", "--quick", "--out", str(tmp_path / "check")],
                          capture_output=True, text=True, cwd=ROOT / "benchmarks", timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    (glc,) = rows
    assert glc["error"] is None and glc["resume"] == 0.0  # the resumed run is the whole run
    assert glc["test_acc"] == glc["test_acc_cpu"] == glc["from_cpu"] > 50
    assert glc["label_issues"] == 0 and glc["report"] in (0, "no matplotlib")
    assert (ROOT / "benchmarks" / "RESULTS.md").read_text() == before
