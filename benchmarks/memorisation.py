"""The memorisation benchmark: every registered method where cross-entropy memorises the noise.

The paper's claim is about long training: once a network has had time to fit the corrupted labels,
plain cross-entropy (CE) loses accuracy and L2B does not. This benchmark runs in that regime on a
convolutional network, on a 2-core CPU:

- data: Fashion-MNIST's official split (Debian's ``dataset-fashion-mnist``, or
  ``--data fashion-mnist:DIR``); 1,000 clean validation images (100 per class) taken from the
  training set; a random noisy training subset of ``RECIPE["train_subset"]`` images; the full
  10,000-image test set;
- model: ``small-cnn`` (two conv-BN-ReLU stages, global pooling, linear head) at width 16
  (width 8 does not memorise, width 32 costs 3x per sample; RESULTS.md has the measurements);
- schedule: SGD (momentum 0.9, weight decay 5e-4, the paper's), batch 16, lr 0.05 with cosine
  decay over 80 epochs, 2 warm-up epochs of plain CE (the paper: 10 of 300); chosen by the regime
  check below (``--regime``): 60 epochs fell short (RESULTS.md has the search);
- noise: ``symmetric:0.2/0.4/0.6`` (the authors' convention: the realised flip rate is 0.9 R),
  ``asymmetric:0.4`` (Fashion-MNIST's map of confusable classes), ``instance:0.4`` (Xia et al.);
- every registered method with its own defaults (meta methods clip at 0.8, the others not);
  co-teaching is given the realised flip rate as its forget rate (Han et al. assume it known);
  3 seeds; CE on clean labels as the ceiling.

The regime is defined by a measurement, not assumed: CE's last-epoch test accuracy must sit at
least 5 points below its best-validation-epoch test accuracy at 40% symmetric noise; the table
states what was measured. The test set is scored every ``test_every`` epochs, at the last epoch,
and (from its saved weights) at the best clean-validation epoch, so both reported accuracies are
exact; the clean validation set is scored every epoch.

    python benchmarks/memorisation.py            # the full grid, 2 runs at a time (one thread each);
                                                 # rewrites results/memorisation.json, its table in
                                                 # RESULTS.md, and the figures
    python benchmarks/memorisation.py --quick    # 1 seed, 40% symmetric, a tiny subset, 1 epoch:
                                                 # writes only under runs/
    python benchmarks/memorisation.py --regime --epochs 60 --out runs/regime-60
                                                 # only CE at 40% symmetric, every seed: the gap
    python benchmarks/memorisation.py --device cuda --jobs 12 --noises asymmetric:0.4,instance:0.4
                                                 # a part of the grid on another machine (copy its
                                                 # cells into runs/ here; --summarize counts them)

Finished runs are skipped and interrupted ones resumed (``l2b compare``'s machinery): run the
same command again after an interruption.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

from memorisation_grid import NOISES, REGIME_GAP, REGIME_NOISE, build_grid, clean_only, part
from memorisation_tables import figures, markdown, regime, summarize, summarize_variants
from results_md import check_device_arg, provenance, write_block

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS_JSON = HERE / "results" / "memorisation.json"
FIGURES = HERE / "results" / "memorisation"
RESULTS_MD = HERE / "RESULTS.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 40%% symmetric, 200 samples, 20 clean per class, 1 epoch, width 8")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    parser.add_argument("--data", default="fashion-mnist", help="fashion-mnist or fashion-mnist:DIR")
    parser.add_argument("--out", default=None, help="grid directory (default runs/bench-memorisation[-quick])")
    parser.add_argument("--summarize", action="store_true", help="only summarise the finished runs (no training)")
    parser.add_argument("--regime", action="store_true",
                        help="only the regime check: CE at 40%% symmetric noise, every seed, and its memorisation gap")
    parser.add_argument("--noises", help="comma-separated part of the grid to run (e.g. symmetric:0.4,none); "
                        "the summary always covers every finished run")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N for the runs (default cpu)")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (a regime search)")
    parser.add_argument("--train-subset", type=int, help="override the recipe's noisy subset (a regime search)")
    args = parser.parse_args()
    check_device_arg(parser, args.device)
    if args.noises and set(args.noises.split(",")) - set(NOISES) - {"none"}:
        parser.error(f"--noises {args.noises}: choose among {', '.join(NOISES)}, none")
    out = Path(args.out or ("runs/bench-memorisation" + ("-quick" if args.quick else "")))
    os.environ["OMP_NUM_THREADS"] = "1"  # spawned workers read this before importing torch
    import torch

    torch.set_num_threads(1)
    from l2b.grid import check_cells, run_grid

    cfgs, rates, recipe = build_grid(args, out)
    check_cells(cfgs)  # a cell that holds a run of another recipe is refused, never reported as this one
    if args.regime:  # CE at the regime noise, every seed: how much memorising costs it
        cells = [c for c in cfgs if c.method == "ce" and c.noise == REGIME_NOISE]
        run_grid(cells, jobs=args.jobs, devices=[args.device], log=lambda text: print(text, flush=True))
        gaps = []
        for c in cells:
            m = json.loads((Path(c.out) / "metrics.json").read_text())
            gaps.append(m["test_acc_at_best_val"] - m["test_acc_last"])
            print(f"seed {c.seed}: last {m['test_acc_last']:.2f}, best-val {m['test_acc_at_best_val']:.2f}, gap {gaps[-1]:.2f}")
        print(f"mean gap {statistics.mean(gaps):.2f} (the regime needs >= {REGIME_GAP}); "
              f"recipe: epochs={recipe['epochs']}, train_subset={recipe['train_subset']}")
        return
    print(f"{len(cfgs)} runs into {out}; realised flip rates: "
          + ", ".join(f"{n} {100 * r:.1f}%" for n, r in rates.items()), flush=True)
    start = time.perf_counter()
    if not args.summarize:
        run_grid(part(cfgs, args.noises), jobs=args.jobs, devices=[args.device], log=lambda text: print(text, flush=True))
    minutes = (time.perf_counter() - start) / 60.0
    rows = summarize(out)
    variants = summarize_variants(out)
    from l2b.config import TrainConfig

    clean = clean_only(out, TrainConfig(**recipe, noise=REGIME_NOISE, progress="none"), 1 if args.quick else args.seeds,
                       train=not args.summarize)
    if args.summarize:  # no training here: the grid's cost is the CPU estimate in the table
        minutes = None
    finished = sum((Path(c.out) / "metrics.json").is_file() for c in cfgs)
    command = "python benchmarks/memorisation.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    table = markdown(rows, {**rates, "none": 0.0}, command.strip(), minutes, args.jobs, recipe, variants, clean)
    if finished < len(cfgs):  # an interrupted grid: say so above everything it shows
        done = sorted({c.noise for c in cfgs} - {c.noise for c in cfgs if not (Path(c.out) / "metrics.json").is_file()})
        table = (f"**PARTIAL: {finished} of {len(cfgs)} runs finished** (complete settings: "
                 f"{', '.join(done) or 'none'}); the verdicts cover only what is shown. Run the same command "
                 f"again to finish the grid.\n\n" + table)
    print(table)
    (out / "results.md").write_text(table)
    result = {**provenance(command.strip()),
              "recipe": recipe, "seeds": args.seeds, "jobs": args.jobs, "realised_flip_rates": rates,
              "minutes": None if minutes is None else round(minutes, 1), "regime": regime(rows), "rows": rows,
              "variants": variants, "clean_only_ce": clean, "finished_runs": finished, "planned_runs": len(cfgs)}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    pngs = figures(out, FIGURES if not args.quick else out / "figures")
    if not args.quick:
        RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
        RESULTS_JSON.write_text(json.dumps(result, indent=2) + "\n")
        write_block(RESULTS_MD, "memorisation", table + "\n" + " ".join(
            f"![{p.stem}]({p.relative_to(ROOT)})" for p in pngs) + "\n",
                    "## Clean set larger than the noisy set: the memorisation benchmark")
        print(f"wrote {RESULTS_JSON}, the table in {RESULTS_MD}, and {', '.join(map(str, pngs))}")


if __name__ == "__main__":
    main()

