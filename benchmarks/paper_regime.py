"""The paper-regime benchmark: every registered method with a 2% clean set and a clean batch as
large as the training batch, where cross-entropy memorises the noise.

The paper's setting (Sec. 4.1): 1,000 clean images beside 49,000 noisy ones (2%), and a clean
batch as large as the training batch (512 on CIFAR-10). This benchmark keeps both ratios on a
2-core CPU:

- data: Fashion-MNIST's official split (Debian's ``dataset-fashion-mnist``); 200 clean images
  (20 per class) taken from the training set on their true labels, and a random noisy training
  subset of 10,000 images (the clean set is 2% of it); the full 10,000-image test set;
- model: ``mlp`` width 512; SGD (momentum 0.9, weight decay 5e-4), batch 128 and clean batch
  128, lr 0.1 with cosine decay, 2 warm-up epochs of plain CE; the epochs chosen by the regime
  check (``--regime``): CE at 40% symmetric noise must end at least 5 points below its
  best-validation epoch;
- noise: ``symmetric:0.2/0.4/0.6`` (the authors' convention), ``asymmetric:0.4`` (Fashion-MNIST's
  map), ``instance:0.4``; every registered method with its own defaults, co-teaching given the
  realised flip rate; and CE on the noisy plus the clean set (clean labels), the practitioner's
  first try; 3 seeds;
- the paper's ablations at 20% and 40% symmetric (Table 7, Fig. 4, Fig. 1a), and Fig. 2's curves;
- the clean-set sweep at 40% symmetric: the same noisy set, clean sets of 0.5% to 20% of it, for
  L2B, L2RW, GLC, MLC, distill, CE on the clean set alone and CE on noisy + clean.

    python benchmarks/paper_regime.py                  # main grid, then ablations, then sweep;
                                                       # resumable; rewrites the results
    python benchmarks/paper_regime.py --part main      # only one part (main | ablations | sweep)
    python benchmarks/paper_regime.py --summarize      # tables, JSON, figures; trains nothing
    python benchmarks/paper_regime.py --quick          # a tiny smoke run of all three parts
    python benchmarks/paper_regime.py --regime --epochs 100   # CE at 40% symmetric only: the gap

Finished runs are skipped and interrupted ones resumed: run the same command again. The finished
cells are packed into results/paper_regime_cells.tar.xz (what the tables read, not the models), and
unpacked by the next run, so that the grid resumes in a fresh checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from memorisation_tables import markdown, regime, summarize
from paper_regime_grid import (ABLATION_NOISES, NOISES, QUICK_SWEEP, REGIME_NOISE, SWEEP_PER_CLASS, ablation_cells,
                               base_config, main_cells, realised_rates, sweep_cells)
from paper_regime_tables import ablation_rows, curves, figures, markdown_extra, sweep_rows
from results_md import check_device_arg, provenance, write_block

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS_JSON = HERE / "results" / "paper_regime.json"
# the finished cells, committed so that the grid resumes on another machine or in another session
CELLS = HERE / "results" / "paper_regime_cells.tar.xz"
FIGURES = HERE / "results" / "paper_regime"
RESULTS_MD = HERE / "RESULTS.md"
README = ROOT / "README.md"
PARTS = ("main", "ablations", "sweep")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run of every part (300 samples, 2 epochs)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    parser.add_argument("--out", default=None, help="grid directory (default runs/bench-paper-regime[-quick])")
    parser.add_argument("--part", default="main,ablations,sweep", help="comma-separated parts to train: "
                        "main, ablations, sweep (the summary covers every finished run)")
    parser.add_argument("--noises", help="comma-separated noise settings of the main grid to train")
    parser.add_argument("--summarize", action="store_true", help="only summarise the finished runs (no training)")
    parser.add_argument("--regime", action="store_true", help="only CE at 40%% symmetric, every seed, and its gap")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (a regime search)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--data", default="fashion-mnist", help="fashion-mnist or fashion-mnist:DIR (a copy of it, "
                        "or a part of it in the same IDX files)")
    args = parser.parse_args()
    check_device_arg(parser, args.device)
    parts = args.part.split(",")
    if set(parts) - set(PARTS):
        parser.error(f"--part {args.part}: choose among {', '.join(PARTS)}")
    if args.noises and set(args.noises.split(",")) - set(NOISES):
        parser.error(f"--noises {args.noises}: choose among {', '.join(NOISES)}")
    if args.seeds < 1 or args.jobs < 1:
        parser.error("--seeds and --jobs must be at least 1")
    return args, parts


def main() -> None:
    args, parts = parse_args()
    out = Path(args.out or ("runs/bench-paper-regime" + ("-quick" if args.quick else "")))
    os.environ["OMP_NUM_THREADS"] = "1"  # spawned workers read this before importing torch
    import torch

    torch.set_num_threads(1)
    from l2b.grid import check_cells, run_grid

    if not args.quick and args.epochs is None and args.data == "fashion-mnist" and CELLS.is_file():
        from cells import unpack

        print(f"{unpack(CELLS, out)} finished cells from {CELLS.relative_to(ROOT)}", flush=True)
    base, recipe = base_config(args.quick, {"data": args.data, **({"epochs": args.epochs} if args.epochs else {})})
    base = replace(base, device=args.device)
    seeds = 1 if args.quick else args.seeds
    noises = [REGIME_NOISE] if args.quick else NOISES
    per_classes = QUICK_SWEEP if args.quick else SWEEP_PER_CLASS
    rates = realised_rates(base, noises)
    main_grid = main_cells(base, out, seeds, rates, noises)
    abl = ablation_cells(base, out, seeds, [REGIME_NOISE] if args.quick else ABLATION_NOISES)
    log = lambda text: print(text, flush=True)  # noqa: E731
    if args.regime:
        cells = [c for c in main_grid if c.method == "ce" and c.noise == REGIME_NOISE and "/grid/" in c.out]
        check_cells(cells)
        run_grid(cells, jobs=args.jobs, log=log)
        for c in cells:
            m = json.loads((Path(c.out) / "metrics.json").read_text())
            print(f"seed {c.seed}: last {m['test_acc_last']:.2f}, best-val {m['test_acc_at_best_val']:.2f}, "
                  f"gap {m['test_acc_at_best_val'] - m['test_acc_last']:.2f}, {m['epoch_seconds']:.2f} s/epoch")
        return
    sweep = sweep_cells(base, out, seeds, per_classes)
    planned = {"main": main_grid, "ablations": abl, "sweep": sweep}
    check_cells([c for cells in planned.values() for c in cells])
    print(f"{len(main_grid)} main + {len(abl)} ablation + {len(sweep)} sweep runs into {out}; realised flip "
          "rates: " + ", ".join(f"{n} {100 * r:.1f}%" for n, r in rates.items()), flush=True)
    start = time.perf_counter()
    if not args.summarize:
        for part in parts:
            cells = planned[part]
            if part == "main" and args.noises:
                cells = [c for c in cells if c.noise in args.noises.split(",")]
            log(f"== {part}: {len(cells)} runs")
            run_grid(cells, jobs=args.jobs, log=log)
    minutes = None if args.summarize else (time.perf_counter() - start) / 60.0
    write_results(args, out, recipe, rates, planned, per_classes, minutes)


def write_results(args, out: Path, recipe: dict, rates: dict, planned: dict, per_classes: list[int],
                  minutes: float | None) -> None:
    from l2b.grid import group_runs

    rows = summarize(out / "grid", extra={"ce+clean": out / "ce-plus-clean"})
    groups = group_runs(out / "grid")
    groups.update({("ce+clean", n): r for (_, n), r in group_runs(out / "ce-plus-clean").items()})
    for row in rows:  # the clean accuracy a method's best-val epoch was chosen on
        row["best_val_acc"] = round(statistics.mean(r["best_val_acc"] for r in groups[(row["method"], row["noise"])]), 2)
    abl = ablation_rows(out, rows)
    sweep = sweep_rows(out, per_classes, recipe["train_subset"])
    finished = {part: sum((Path(c.out) / "metrics.json").is_file() for c in cells) for part, cells in planned.items()}
    total = {part: len(cells) for part, cells in planned.items()}
    cost = {part: round(sum(json.loads((Path(c.out) / "metrics.json").read_text())["total_seconds"] for c in cells
                            if (Path(c.out) / "metrics.json").is_file()) / 60.0 / args.jobs, 1)
            for part, cells in planned.items()}
    command = ("python benchmarks/paper_regime.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])).strip()
    recipe_md = {k: v for k, v in recipe.items() if k != "threads"}
    table = markdown(rows, rates, command, minutes, args.jobs, recipe_md) + "\n" + markdown_extra(rows, abl, sweep)
    table += ("\nWhat each part cost, measured: the training seconds of its finished runs summed, over "
              f"{args.jobs} workers: " + ", ".join(f"{p} {cost[p]:.0f} min ({finished[p]} runs)" for p in PARTS)
              + " (timed while other work shared the cores at times).\n")
    status = ", ".join(f"{p} {finished[p]}/{total[p]}" for p in PARTS)
    whole = all(finished[p] == total[p] for p in PARTS)
    if not whole:
        table = (f"**PARTIAL: runs finished: {status}**; the verdicts cover only what is shown. Run the same "
                 f"command again to finish.\n\n" + table)
    curve = curves(out)
    print(table)
    result = {**provenance(command), "recipe": recipe,
              "seeds": 1 if args.quick else args.seeds, "jobs": args.jobs, "realised_flip_rates": rates,
              "minutes": None if minutes is None else round(minutes, 1), "regime": regime(rows),
              "finished_runs": finished, "planned_runs": total, "part_minutes": cost,
              "rows": [dict(r, last_mean=r["test_acc_last_mean"], last_std=r["test_acc_last_std"],
                            best_val_mean=r["test_acc_at_best_val_mean"]) for r in rows],
              "ablations": abl, "clean_sweep": sweep, "curves": curve}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(table)
    dest = out / "figures" if args.quick else FIGURES
    pngs = figures(dest, abl, sweep, curve)
    if args.quick:
        print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
        return
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(result, indent=2) + "\n")
    from cells import pack

    pack(out, CELLS)
    links = " ".join(f"![{p.stem}]({p.relative_to(ROOT)})" for p in pngs)
    write_block(RESULTS_MD, "paper-regime", table + "\n" + links + "\n",
                "## Paper regime: 2% clean set, clean batch = training batch")
    # the README's headline shows the grid as it stands; a partial one says so above its table
    write_block(README, "paper-regime", table + "\n" + links + "\n", "## Headline: every method in the paper's regime")
    print(f"wrote {RESULTS_JSON}, the table in {RESULTS_MD} and {README}" + ("" if whole else " (PARTIAL)")
          + f", and {', '.join(map(str, pngs))}")


if __name__ == "__main__":
    main()
