"""Scoring labels out of fold: ``l2b label-issues RUN --cross-fit K`` (every training sample
scored by one of K models, trained with the run's settings without its fold) against the default
(the run's own model, in sample), on runs that never learn from the clean set: the paper-regime
grid's CE and co-teaching runs (50 epochs, seeds 0..S-1), where memorisation decides what the
in-sample scores can see. Both are scored as ``l2b label-issues`` writes them (its default cut and
model choice), against the cut benchmark's targets: the flagged count within 25% of the corrupted
count, and precision >= 0.8 wherever the ranking's ROC-AUC is at least 0.95.

    python benchmarks/label_issue_cross_fit.py --jobs 2          # trains the folds (resumable), then the table
    python benchmarks/label_issue_cross_fit.py --quick --out DIR  # a 2-epoch digits CE run, 2 folds (tested)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS_JSON = HERE / "results" / "label_issue_cross_fit.json"
RESULTS_MD = HERE / "RESULTS.md"
NOISES = ("symmetric:0.2", "symmetric:0.4", "symmetric:0.6", "asymmetric:0.4", "instance:0.4")


def grid_runs(grid: Path, methods: list[str], seeds: int) -> list[tuple[str, Path]]:
    """The grid's finished runs of these methods and seeds, in a fixed order."""
    from l2b.grid import run_dir

    found = []
    for method in methods:
        for noise in NOISES:
            for seed in range(seeds):
                run = run_dir(grid / "grid", method, noise, seed)
                if (run / "metrics.json").is_file() and (run / "checkpoint.pt").is_file():
                    found.append((f"{method} {noise} seed {seed}", run))
    return found


def steered_runs(cut_runs: Path) -> list[tuple[str, Path]]:
    """The cut benchmark's own-data L2B runs at 20% moved with 10 clean per class (seeds 0-11),
    finished: runs whose clean set steered training, for contrast."""
    from label_issue_cut import own_data_runs

    cells = own_data_runs(cut_runs, range(12))
    return [(f"l2b own data, 20% moved, 10 clean per class, seed {cfg.seed}", Path(cfg.out)) for _, cfg in cells
            if cfg.noise == "symmetric-exclusive:0.2" and cfg.val_per_class == 10
            and (Path(cfg.out) / "metrics.json").is_file()]


def quick_run(out: Path) -> list[tuple[str, Path]]:
    from l2b.grid import run_one
    from l2b.config import TrainConfig

    cfg = TrainConfig(data="digits", method="ce", epochs=2, val_per_class=5, width=16, threads=1,
                      progress="none", out=str(out / "digits-ce"))
    run_one(cfg.__dict__)
    return [("digits ce symmetric:0.4 seed 0", Path(cfg.out))]


def scored(run: Path, folds: int, cut: str = "auto") -> dict:
    """What ``l2b label-issues`` reports for the run, in sample (folds 0) or cross-fitted."""
    from l2b.label_issues import write_label_issues

    with tempfile.TemporaryDirectory() as tmp:
        s = write_label_issues(run, out=tmp, cross_fit=folds, cut=cut, log=lambda line: None)
    from label_issue_references import meets_targets

    corrupted = s["corrupted"]
    ratio = s["issues"] / max(corrupted, 1)
    meets = meets_targets(ratio, s["precision"], s["auc"])
    return {"flagged": s["issues"], "count_ratio": round(ratio, 3), "precision": round(s["precision"], 3),
            "recall": round(s["recall"], 3), "f1": round(s["f1"], 3), "auc": round(s["auc"], 4), "cut": s["cut"],
            "model": s["model"] if not folds else f"{folds} folds", "meets_both": bool(meets), "corrupted": corrupted}


def row(name: str, run: Path, folds: list, cuts: dict[str, str]) -> dict:
    """One run scored in sample and out of fold (one entry per cut of ``cuts``), and the seconds its
    ``folds`` (their configs) trained in against its own."""
    seconds = lambda out: json.loads((Path(out) / "metrics.json").read_text())["total_seconds"]  # noqa: E731
    return {"run": name, "in_sample": scored(run, 0), **{k: scored(run, len(folds), cut) for k, cut in cuts.items()},
            "fold_seconds": round(sum(seconds(c.out) for c in folds), 1), "run_seconds": seconds(run)}


def markdown(rows: list[dict], folds: int, command: str) -> str:
    cell = lambda r: f"{r['flagged']} ({r['count_ratio']:.2f}), P {r['precision']:.2f}, R {r['recall']:.2f}, AUC {r['auc']:.3f}"  # noqa: E731
    lines = [f"Command: `{command}`  ",
             f"Each cell: flagged (flagged / corrupted), precision, recall, ROC-AUC of the ranking; 'in sample': the "
             f"default (`l2b label-issues RUN`, the model it chooses named); 'out of fold': `--cross-fit {folds}` (its "
             f"default cut: `clean-confusion`, the run's clean set being held out from every fold model too), and "
             f"with `--cut count`. ✓: both targets met. The last column: the folds' training seconds (two folds "
             f"trained at a time) against the run's own.", "",
             f"| run | corrupted | in sample | | out of fold ({folds} folds) | | out of fold, `--cut count` | | fold training s |",
             "|---|---|---|---|---|---|---|---|---|"]
    mark = lambda r: "✓" if r["meets_both"] else "✗"  # noqa: E731
    for r in rows:
        i, o, c = r["in_sample"], r["cross_fit"], r["cross_fit_count"]
        lines.append(f"| {r['run']} | {i['corrupted']} | {cell(i)} ({i['model']}) | {mark(i)} | {cell(o)} | {mark(o)} | "
                     f"{cell(c)} | {mark(c)} | {r['fold_seconds']:.0f} ({r['fold_seconds'] / r['run_seconds']:.1f}×) |")
    memorised = [r for r in rows if not r["in_sample"]["model"].startswith("final")]
    count = lambda rs, k: sum(r[k]["meets_both"] for r in rs)  # noqa: E731
    lines += ["", f"Both targets met: in sample on {count(rows, 'in_sample')} of {len(rows)} runs, out of fold on "
              f"{count(rows, 'cross_fit')} (with `--cut count` {count(rows, 'cross_fit_count')}); on the {len(memorised)} "
              f"runs whose final model memorised (scored in sample by an earlier epoch's model): {count(memorised, 'in_sample')}, "
              f"{count(memorised, 'cross_fit')} and {count(memorised, 'cross_fit_count')}."]
    return "\n".join(lines) + "\n"


def steered_markdown(rows: list[dict], folds: int) -> str:
    """The contrast: runs whose clean set steered training (its meta step fitted every fold model to
    it), where the samples scored out of fold look less sure than the clean set."""
    if not rows:
        return ""
    cell = lambda r: f"{r['flagged']} ({r['count_ratio']:.2f}), P {r['precision']:.2f}, AUC {r['auc']:.3f}"  # noqa: E731
    lines = ["", f"Runs whose clean set steered training (the cut benchmark's own-data regime, 1,000 images, "
             f"10 clean per class, 20% moved): in sample against out of fold ({folds} folds).", "",
             "| run | corrupted | in sample | | out of fold | |", "|---|---|---|---|---|---|"]
    mark = lambda r: "✓" if r["meets_both"] else "✗"  # noqa: E731
    for r in rows:
        i, o = r["in_sample"], r["cross_fit"]
        lines.append(f"| {r['run']} | {i['corrupted']} | {cell(i)} | {mark(i)} | {cell(o)} | {mark(o)} |")
    ratio = lambda k: f"{min(r[k]['count_ratio'] for r in rows):.2f}–{max(r[k]['count_ratio'] for r in rows):.2f}×"  # noqa: E731
    lines += ["", f"Flagged: in sample {ratio('in_sample')}, out of fold {ratio('cross_fit')}; both targets met on "
              f"{sum(r['in_sample']['meets_both'] for r in rows)} and {sum(r['cross_fit']['meets_both'] for r in rows)} "
              f"of {len(rows)}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None, help="--quick: where its run goes (default runs/bench-cross-fit-quick)")
    parser.add_argument("--grid", default="runs/bench-paper-regime", help="the paper-regime grid to score")
    parser.add_argument("--methods", default="ce,coteaching")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cut-runs", default="runs/bench-label-cut", help="the cut benchmark's runs, whose own-data "
                        "L2B runs (a clean set that steered training) are cross-fitted for contrast")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=1, help="fold runs trained in parallel, one thread each")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from l2b.grid import run_grid
    from l2b.config import TrainConfig
    from l2b.run_scores import fold_runs

    folds = 2 if args.quick else args.folds
    runs = (quick_run(Path(args.out or "runs/bench-cross-fit-quick")) if args.quick else
            grid_runs(Path(args.grid), args.methods.split(","), args.seeds))
    if not runs:
        sys.exit(f"no finished runs of {args.methods} in {args.grid}/grid: run benchmarks/paper_regime.py first")
    contrast = [] if args.quick else steered_runs(Path(args.cut_runs))
    config = lambda run: TrainConfig.from_dict(json.loads((run / "config.json").read_text())["config"])  # noqa: E731
    fold_cfgs = {run: fold_runs(config(run), run, folds) for _, run in runs + contrast}
    run_grid([c for cfgs in fold_cfgs.values() for c in cfgs], jobs=args.jobs)
    rows, steered = [], []
    for name, run in runs:
        rows.append(row(name, run, fold_cfgs[run], {"cross_fit": "auto", "cross_fit_count": "count"}))
        print(json.dumps(rows[-1]), flush=True)
    for name, run in contrast:
        steered.append(row(name, run, fold_cfgs[run], {"cross_fit": "auto"}))
        print(json.dumps(steered[-1]), flush=True)
    command = "python benchmarks/label_issue_cross_fit.py " + " ".join(sys.argv[1:])
    table = markdown(rows, folds, command.strip()) + steered_markdown(steered, folds)
    print(table)
    from results_md import provenance, write_block

    result = {**provenance(command.strip()), "folds": folds, "rows": rows, "steered": steered}
    if args.quick:
        (Path(args.out or "runs/bench-cross-fit-quick") / "results.json").write_text(json.dumps(result, indent=2) + "\n")
        return
    RESULTS_JSON.write_text(json.dumps(result, indent=2) + "\n")
    write_block(RESULTS_MD, "label-issue-cross-fit", table, "## Label issues: scoring out of fold")
    print(f"wrote {RESULTS_JSON} and the table in {RESULTS_MD}")


if __name__ == "__main__":
    main()
