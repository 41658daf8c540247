"""Finding mislabelled samples: l2b's scores from one L2B run against cleanlab's confident learning.

Two recipes (``--regime``):

- ``paper`` (default): the paper-regime benchmark's (``paper_regime_grid.RECIPE``): Fashion-MNIST,
  10,000 noisy training images, 200 clean (2%), MLP w512, 50 epochs. Its grid's L2B and CE runs
  are reused (``--grid``, default runs/bench-paper-regime/grid) where they hold their final model;
- ``memorisation``: the memorisation benchmark's (``memorisation_grid.RECIPE``): 800 noisy
  training images beside 1,000 clean ones, small CNN, 80 epochs.

For each noise setting (40% symmetric, 40% asymmetric, ``instance:0.4``) and seed (``--seeds``):

- ``l2b:<score>``: one L2B run; its kept epochs of per-sample weights scored five ways (``trust``:
  the last epoch's alpha/(alpha+beta), ``trust-mean`` and ``weights-mean``: aggregates of the last
  ``weight_epochs`` epochs, ``model``: its final model's probability of the given label,
  ``combined``: the mean of trust-mean and model);
- ``ce:model``: one CE run and the final model's probability of the given label (l2b's fallback
  for runs without weights);
- ``cleanlab``: cleanlab 2.x ``find_label_issues`` (ranked by self-confidence) on 5-fold
  cross-validated predicted probabilities: five CE models, each trained with l2b's own trainer and
  the same recipe on 4/5 of the noisy samples (the same clean validation set), predict the fifth.
  cleanlab is optional (``pip install cleanlab``); without it that row is skipped with a note.

Reported: the flagged count against the number of corrupted labels, precision, recall and F1 of the
flagged set (l2b: the cut of ``l2b label-issues``, calibrated on the run's clean set; cleanlab: its
own set), ROC-AUC of the ranking, the share of corrupted samples whose suggested label is the true
one, and the total training seconds behind each row.

    python benchmarks/label_issues.py --seeds 3  # paper regime; writes results/label_issues.json, RESULTS.md, README
    python benchmarks/label_issues.py --regime memorisation --grid runs/bench-memorisation/grid
    python benchmarks/label_issues.py --quick    # 1 noise, 300 samples, 1 epoch, 2 folds: not recorded
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from results_md import on_gpu, provenance, write_block

HERE = Path(__file__).resolve().parent
RESULTS_JSON = HERE / "results" / "label_issues.json"
RESULTS_MD = HERE / "RESULTS.md"
NOISES = ["symmetric:0.4", "asymmetric:0.4", "instance:0.4"]
PAPER_GRID = HERE.parent / "runs" / "bench-paper-regime" / "grid"


REGIMES = {"paper": "paper_regime_grid", "memorisation": "memorisation_grid"}  # the module holding its RECIPE
L2B_SCORES = ("trust", "trust-mean", "weights-mean", "model", "combined")


def run(cfg) -> dict:
    """Train (or resume, or reuse) one run; its metrics. A directory holding a run of another
    recipe is refused (give another --out), never reused as this one."""
    from l2b.grid import check_cells, run_one

    check_cells([cfg])
    run_one(cfg.__dict__)
    return json.loads((Path(cfg.out) / "metrics.json").read_text())


def fold_probs(run_dir: Path) -> np.ndarray:
    """The final model's softmax on its run's test split (a fold's held-out fifth)."""
    from l2b.models import predict_probs
    from l2b.trainer import load_run

    _, _, (_, _, test), model = load_run(run_dir, device="cpu")
    return predict_probs(model, test, 256)


def scored_probs(run_dir: Path) -> dict[str, np.ndarray]:
    """What ``l2b label-issues`` scores a run with (its default model choice: the final model, or
    an earlier epoch's when the final one memorised its labels): probabilities on
    the noisy samples ("train") and the clean set ("clean", with "clean_labels"), and "model"."""
    from l2b.label_issues import clean_learned, clean_steered
    from l2b.run_scores import run_model_scores

    config = json.loads((run_dir / "config.json").read_text())["config"]
    learned = clean_learned(config, run_dir)  # then the clean set is no held-out yardstick of memorisation
    s = run_model_scores(run_dir, "auto", held_out=not learned)
    return {"train": s.train, "clean": s.clean, "clean_labels": s.clean_labels, "model": s.label,
            "steered": clean_steered(config, run_dir), "learned": learned}


def metrics(flagged: np.ndarray, score: np.ndarray, suggested: np.ndarray | None, noisy: np.ndarray,
            true: np.ndarray, seconds: float) -> dict:
    from l2b.detect import flag_metrics, roc_auc

    mask = np.zeros(len(noisy), dtype=bool)
    mask[flagged] = True
    is_noisy = noisy != true
    m = flag_metrics(mask, is_noisy)
    fix = None if suggested is None else float((suggested[is_noisy] == true[is_noisy]).mean())
    return {"flagged": int(mask.sum()), "corrupted": int(is_noisy.sum()), "precision": round(m["precision"], 4), "recall": round(m["recall"], 4),
            "f1": round(m["f1"], 4), "auc": round(roc_auc(score, is_noisy), 4), "fix_accuracy": fix,
            "train_seconds": round(seconds, 2)}


def cross_validated_probs(base, ce_dir: Path, out: Path, folds: int) -> tuple[np.ndarray, float]:
    """Out-of-fold probabilities for the run's noisy samples from ``folds`` CE models trained with
    l2b's trainer (an npz dataset per fold: 4/5 of the noisy samples as training data, the run's
    clean set as the given clean set, the held-out fifth as its "test" set)."""
    from l2b.data import load_dataset

    labels = np.load(ce_dir / "labels.npz")
    ds = load_dataset(base.data)
    x = ds.x_train.numpy()[:, 0]  # N x 28 x 28 uint8
    train_idx, noisy, val_idx = labels["train_index"], labels["noisy"], labels["val_index"].astype(int)
    order = np.random.default_rng(0).permutation(len(train_idx))
    probs = np.zeros((len(train_idx), ds.num_classes))
    seconds = 0.0
    for f, held in enumerate(np.array_split(order, folds)):
        keep = np.setdiff1d(order, held)
        fold_dir = out / f"fold{f}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        data = fold_dir / "data.npz"
        if not data.is_file():
            np.savez(data, x_train=x[train_idx[keep]], y_train=noisy[keep], x_val=x[val_idx],
                     y_val=ds.y_train.numpy()[val_idx], x_test=x[train_idx[held]], y_test=noisy[held],
                     classes=np.array(ds.classes))
        cfg = replace(base, data=f"npz:{data}", noise="none", val_per_class=None, train_subset=None,
                      method="ce", out=str(fold_dir / "run"))
        seconds += run(cfg)["total_seconds"]
        probs[held] = fold_probs(fold_dir / "run")
    return probs, seconds


def cell_dir(out: Path, grid: Path | None, method: str, noise: str, seed: int) -> Path:
    """Where the run of ``method`` lives: the memorisation grid's cell (same recipe, checked
    before it is used) when ``grid`` is given and that cell holds a CPU run with its final model,
    else this benchmark's own directory (trained here, so that every timing is this CPU's)."""
    if grid is not None:
        from l2b.grid import run_dir

        cell = Path(run_dir(grid, method, noise, seed))
        if (cell / "checkpoint.pt").is_file() and not on_gpu(json.loads((cell / "config.json").read_text())["config"]):
            return cell
    return out / method


def bench_noise(base, noise: str, out: Path, folds: int, notes: list[str], grid: Path | None = None) -> list[dict]:
    from l2b.detect import rank_label_issues

    rows = []
    l2b_dir, ce_dir = (cell_dir(out, grid, m, noise, base.seed) for m in ("l2b", "ce"))
    l2b_m = run(replace(base, method="l2b", noise=noise, out=str(l2b_dir)))
    w = np.load(l2b_dir / "weights.npz")
    noisy, true = w["noisy"], w["true"]
    scored = scored_probs(l2b_dir)
    probs = scored["train"]
    # the default cut of `l2b label-issues`: calibrated on the run's held-out clean set
    reference = {"clean_labels": scored["clean_labels"], "clean_pred_probs": scored["clean"],
                 "clean_steered": scored["steered"]}
    for score in L2B_SCORES:
        hist = score in ("trust-mean", "weights-mean")
        r = rank_label_issues(noisy, w["alpha_history"] if hist else w["alpha"],
                              w["beta_history"] if hist else w["beta"],
                              pseudo_labels=w["pseudo_history"], seen=w["seen_history"],
                              pred_probs=probs if score in ("model", "combined") else None, score=score,
                              **(reference if score in ("model", "combined") else {}))
        rows.append({"noise": noise, "seed": base.seed, "method": f"l2b:{score}", "scored_with": scored["model"],
                     **metrics(r.indices, r.score, r.suggested, noisy, true, l2b_m["total_seconds"])})
    ce_m = run(replace(base, method="ce", noise=noise, out=str(ce_dir)))
    ce = scored_probs(ce_dir)
    r = rank_label_issues(noisy, pred_probs=ce["train"], score="model", clean_labels=ce["clean_labels"],
                          clean_pred_probs=ce["clean"], clean_steered=ce["steered"])
    if not ce["model"].startswith("final"):
        notes.append("ce:model: where the final CE model had memorised its labels, it is scored with an earlier "
                     "epoch's model (early_model.pt, or best_model.pt for a run trained before that existed), as "
                     "`l2b label-issues` does by default")
    rows.append({"noise": noise, "seed": base.seed, "method": "ce:model", "scored_with": ce["model"], **metrics(r.indices, r.score, r.suggested, noisy, true,
                                                                ce_m["total_seconds"])})
    try:
        import cleanlab
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        notes.append("cleanlab is not installed (pip install cleanlab): its rows are skipped")
        return rows
    cv_probs, seconds = cross_validated_probs(replace(base, noise=noise), ce_dir, out / "cleanlab", folds)
    ranked = find_label_issues(labels=noisy, pred_probs=cv_probs, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(noisy, cv_probs)
    other = cv_probs.copy()
    other[np.arange(len(noisy)), noisy] = -1
    rows.append({"noise": noise, "seed": base.seed, "method": f"cleanlab {cleanlab.__version__} ({folds}-fold CE)",
                 **metrics(ranked, 1.0 - quality, other.argmax(1), noisy, true, seconds)})
    return rows


STATS = ("flagged", "corrupted", "precision", "recall", "f1", "auc", "fix_accuracy", "train_seconds")


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per (noise, scorer): the mean over seeds of each statistic, its std as ``<k>_std``,
    and ``seeds``; the per-seed rows stay in results.json."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["noise"], r["method"]), []).append(r)
    from l2b.grid import mean_std

    out = []
    for (noise, method), rs in groups.items():
        row = {"noise": noise, "method": method, "seeds": len(rs)}
        for k in STATS:
            vals = [r[k] for r in rs if r[k] is not None]
            row[k], row[k + "_std"] = mean_std(vals) if vals else (None, 0.0)
        out.append(row)
    return out


def answer(rows: list[dict]) -> list[str]:
    """The question of the benchmark, answered from the rows: does one L2B run, scored by l2b's
    default (its final model's probability of the given label), find the corrupted labels as well
    as cleanlab on 5-fold cross-validated CE models?"""
    by = {(r["noise"], r["method"].split(" ")[0]): r for r in rows}
    out, wins = [], 0
    noises = list(dict.fromkeys(r["noise"] for r in rows))
    for noise in noises:
        ours, theirs = by.get((noise, "l2b:model")), by.get((noise, "cleanlab"))
        if ours is None or theirs is None:
            continue
        better = ours["f1"] >= theirs["f1"] and ours["auc"] >= theirs["auc"]
        wins += better
        out.append(f"- {noise} ({ours['corrupted']:.0f} corrupted labels): l2b flags {ours['flagged']:.0f}, F1 {ours['f1']:.3f} / "
                   f"ROC-AUC {ours['auc']:.3f} in {ours['train_seconds']:.0f} s of training; cleanlab flags "
                   f"{theirs['flagged']:.0f}, F1 {theirs['f1']:.3f} / ROC-AUC {theirs['auc']:.3f} in "
                   f"{theirs['train_seconds']:.0f} s: {'l2b at least as good on both' if better else 'cleanlab better on one or both'}.")
    if not out:
        return []
    return [f"**Does one L2B run find mislabelled samples as well as confident learning?** With l2b's default "
            f"score (the final model's probability of the given label): at {wins} of {len(out)} settings it is at "
            f"least as good on F1 and ROC-AUC.", *out, ""]


def markdown(rows: list[dict], command: str, minutes: float, notes: list[str], recipe: dict, load: float) -> str:
    clean = recipe.get("val_per_class", 0) * 10 if recipe.get("val_per_class") else recipe.get("val_total")
    lines = [f"Command: `{command}`  ",
             f"Recipe: {recipe['data']}, {recipe['train_subset']:,} noisy training images, {clean:,} clean, "
             f"{recipe['model']} w{recipe['width']}, {recipe['epochs']} epochs, batch {recipe['batch_size']}.  ", f"Machine: {platform.machine()}, {os.cpu_count()} cores, one run at a time on one thread, load "
             f"average {load:.1f} when it started; this invocation {minutes:.0f} min (finished runs are reused; "
             f"'training s' is what each row's runs took when they were trained).", "",
             *answer(rows),
             "| noise | scored by | flagged | corrupted | precision | recall | F1 | ROC-AUC | suggested = true label | training s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    def cell(r, k, digits=3, scale=1.0):
        if r[k] is None:
            return "—"
        return f"{scale * r[k]:.{digits}f}" + (f" ± {scale * r[k + '_std']:.{digits}f}" if r["seeds"] > 1 else "")

    for r in rows:
        lines.append(f"| {r['noise']} | {r['method']} | {cell(r, 'flagged', 0)} | {cell(r, 'corrupted', 0)} | {cell(r, 'precision')} | "
                     f"{cell(r, 'recall')} | {cell(r, 'f1')} | {cell(r, 'auc')} | {cell(r, 'fix_accuracy', 1, 100)}% | "
                     f"{cell(r, 'train_seconds', 0)} |")
    lines += [""] + [f"- {n}" for n in dict.fromkeys(notes)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 noise, 300 samples, 1 epoch, 2 folds; not recorded")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", default=None)
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..S-1 (mean ± std over them)")
    parser.add_argument("--regime", choices=sorted(REGIMES), default="paper",
                        help="the recipe: the paper-regime benchmark's (2%% clean) or the memorisation benchmark's")
    parser.add_argument("--grid", help="take the L2B and CE runs from this grid of the same recipe (checked) "
                        "instead of training them again (default with --regime paper: runs/bench-paper-regime/grid "
                        "where it exists)")
    parser.add_argument("--train-here", action="store_true",
                        help="train every run into --out, reusing no grid (to time every row alike on a quiet machine)")
    args = parser.parse_args()
    if args.grid and not Path(args.grid).is_dir():
        parser.error(f"--grid {args.grid}: not a directory; give the grid of the {args.regime} benchmark, "
                     f"or leave --grid out to train the runs here")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    from l2b.config import TrainConfig

    recipe = dict(importlib.import_module(REGIMES[args.regime]).RECIPE)
    noises, folds = NOISES, args.folds
    if args.quick:
        recipe.update(epochs=2, train_subset=300, warmup_epochs=0, width=8, weight_epochs=2)
        noises, folds = NOISES[:1], 2
    out = Path(args.out or (f"runs/bench-label-issues-{args.regime}" + ("-quick" if args.quick else "")))
    grid = Path(args.grid) if args.grid else None
    if args.train_here and args.grid:
        parser.error("--train-here trains every run here: leave --grid out")
    if grid is None and args.regime == "paper" and not args.quick and not args.train_here and PAPER_GRID.is_dir():
        grid = PAPER_GRID
    base = TrainConfig(**{**recipe, "threads": 1}, seed=0, progress="none")
    start, rows, notes, load = time.perf_counter(), [], [], os.getloadavg()[0]
    for seed in range(args.seeds):
        for noise in noises:
            rows += bench_noise(replace(base, seed=seed), noise, out / noise.replace(":", "_") / f"seed{seed}",
                                folds, notes, grid)
    minutes = (time.perf_counter() - start) / 60
    command = ("python benchmarks/label_issues.py " + " ".join(sys.argv[1:])).strip()
    summary = aggregate(rows)
    table = markdown(summary, command, minutes, notes, recipe, load)
    print(table)
    result = {**provenance(command), "regime": args.regime, "recipe": recipe,
              "folds": folds, "seeds": args.seeds, "rows": summary, "per_seed": rows, "notes": notes}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.quick:
        return
    RESULTS_JSON.write_text(json.dumps(result, indent=2) + "\n")
    write_block(RESULTS_MD, "label-issues", table, "## Label issues: l2b against cleanlab")
    write_block(HERE.parent / "README.md", "label-issues", table, "## Label issues against cleanlab")

if __name__ == "__main__":
    main()
