"""Training again without the flagged labels, or with them relabelled: what `l2b train --exclude
label_issues.csv` and `--relabel label_issues.csv` are worth.

For each setting, noise and seed: a run of CE and one of L2B; `l2b label-issues` on each (its
defaults: the model it chooses, the calibrated cut), written into the run; then the same method
again, same seed and clean set, without the samples flagged (`--exclude RUN/label_issues.csv`), and
once more with the flagged samples given the label the first run suggests (`--relabel
RUN/label_issues.csv`: its suggestions accepted, as a reviewer who accepts them all). The tables
compare the test accuracy, paired by seed, beside how many were flagged, how many of them were
wrong (and of the suggestions, how many are the true label), and the share of wrong labels left in
training.

Settings: digits, the demo's recipe (1,197 noisy training images, 10 clean per class, the MLP, 30
epochs); Fashion-MNIST, 5,000 noisy training images and 20 clean per class, the MLP, 20 epochs.

    python benchmarks/prune_retrain.py --seeds 5 --jobs 2     # rewrites its section of RESULTS.md
    python benchmarks/prune_retrain.py --quick --out DIR      # digits, 1 seed, 2 epochs (tested)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
METHODS = ("ce", "l2b")
NOISES = ("symmetric:0.4", "instance:0.4")  # instance: each label moved by how its image looks (docs/data.md)
SETTINGS = {
    "digits": dict(data="digits", model="mlp", width=256, val_per_class=10, epochs=30, batch_size=64, lr=0.1),
    "fashion-mnist": dict(data="fashion-mnist", model="mlp", width=256, val_per_class=20, train_subset=5000,
                          epochs=20, batch_size=128, lr=0.1),
}
QUICK = dict(SETTINGS["digits"], epochs=2, width=32)


def cells(out: Path, settings: dict, noises, seeds: range):
    """(setting, noise, method, seed, config of the first run)."""
    from l2b.config import TrainConfig

    found = []
    for name, recipe in settings.items():
        for noise in noises:
            for seed in seeds:
                for method in METHODS:
                    run = out / name / noise.replace(":", "_") / f"{method}-s{seed}"
                    found.append((name, noise, method, seed, TrainConfig(**recipe, noise=noise, method=method, seed=seed,
                                                                         threads=1, progress="none", out=str(run))))
    return found


def flag(run: Path) -> dict:
    """`l2b label-issues` on the run (its defaults), its csv into the run directory: how many it
    flagged, how many of those are wrong, and the share of wrong labels the rest keeps."""
    from l2b.label_issues import write_label_issues

    issues = run / "label_issues.csv"
    if not issues.is_file():  # a grid run again: the flags its pruned run left out are kept
        write_label_issues(run, log=lambda line: None)
    labels = np.load(run / "labels.npz")
    wrong = dict(zip(labels["train_index"].tolist(), (labels["noisy"] != labels["true"]).tolist()))
    true = dict(zip(labels["train_index"].tolist(), labels["true"].tolist()))
    with open(issues, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "train"]
    flagged = [int(r["index"]) for r in rows]
    hits = sum(wrong[i] for i in flagged)
    kept = len(wrong) - len(flagged)
    # relabelled with the suggestions: a flagged label is then right where the suggestion is the true label
    right = sum(int(r["suggested_label"]) == true[int(r["index"])] for r in rows)
    return {"flagged": len(flagged), "wrong": int(sum(wrong.values())), "precision": hits / max(len(flagged), 1),
            "wrong_left": (sum(wrong.values()) - hits) / max(kept, 1), "suggested_right": right / max(len(flagged), 1),
            "wrong_left_relabelled": (sum(wrong.values()) - hits + len(flagged) - right) / len(wrong)}


def summary(rows: list[dict]) -> list[dict]:
    """One row per (setting, noise, method): means over seeds, and pruned minus first, paired."""
    out = []
    keys = sorted({(r["setting"], r["noise"], r["method"]) for r in rows}, key=lambda k: (k[0], k[1], METHODS.index(k[2])))
    for setting, noise, method in keys:
        part = [r for r in rows if (r["setting"], r["noise"], r["method"]) == (setting, noise, method)]

        def stat(key):
            v = [r[key] for r in part]
            return {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                    "min": min(v), "max": max(v)}

        for r in part:
            for arm in ("pruned", "relabelled"):
                r[f"{arm}_gain_last"] = r[f"{arm}_last"] - r["first_last"]
                r[f"{arm}_gain_best"] = r[f"{arm}_best"] - r["first_best"]
        out.append({"setting": setting, "noise": noise, "method": method, "seeds": len(part),
                    **{k: stat(k) for k in ("first_last", "pruned_last", "pruned_gain_last", "first_best", "pruned_best",
                                            "pruned_gain_best", "relabelled_last", "relabelled_gain_last",
                                            "relabelled_best", "relabelled_gain_best", "flagged", "wrong", "precision",
                                            "wrong_left", "suggested_right", "wrong_left_relabelled", "noise_rate")}})
    return out


def markdown(table: list[dict], command: str) -> str:
    def ms(s, digits=1):
        return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"

    def gain(s):
        return f"{s['mean']:+.1f} [{s['min']:+.1f}, {s['max']:+.1f}]"

    lines = [f"Command: `{command}`  ",
             "Each row: seeds paired (the same noise, clean set and initialisation). \"first\": the method as it "
             "is; \"without flagged\": the same method trained again with `--exclude RUN/label_issues.csv` (the "
             "default `l2b label-issues` of the first run). Test accuracy %, last epoch and best clean-validation "
             "epoch; the gain is without flagged minus first, mean [min, max] over seeds.", "",
             "| setting | noise | method | wrong labels | flagged (precision) | wrong left after | test, last: first | "
             "without flagged | gain | test, best-val: first | without flagged | gain |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['setting']} | {r['noise']} | {r['method']} | {r['wrong']['mean']:.0f} "
                     f"({100 * r['noise_rate']['mean']:.1f}%) | {r['flagged']['mean']:.0f} "
                     f"({r['precision']['mean']:.2f}) | {100 * r['wrong_left']['mean']:.1f}% | {ms(r['first_last'])} | "
                     f"{ms(r['pruned_last'])} | {gain(r['pruned_gain_last'])} | {ms(r['first_best'])} | "
                     f"{ms(r['pruned_best'])} | {gain(r['pruned_gain_best'])} |")
    lines += ["", "With the flagged labels relabelled instead (`--relabel RUN/label_issues.csv`, the first run's "
              "suggestions accepted): \"suggestions right\": the share of the flagged whose suggested label is the "
              "true one; \"wrong left after\": the share of the training labels still wrong.", "",
              "| setting | noise | method | flagged | suggestions right | wrong left after | test, last: first | "
              "relabelled | gain | test, best-val: first | relabelled | gain |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['setting']} | {r['noise']} | {r['method']} | {r['flagged']['mean']:.0f} | "
                     f"{r['suggested_right']['mean']:.2f} | {100 * r['wrong_left_relabelled']['mean']:.1f}% | "
                     f"{ms(r['first_last'])} | {ms(r['relabelled_last'])} | {gain(r['relabelled_gain_last'])} | "
                     f"{ms(r['first_best'])} | {ms(r['relabelled_best'])} | {gain(r['relabelled_gain_best'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits, 40%% symmetric, 1 seed, 2 epochs, width 32")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated: {', '.join(SETTINGS)}")
    parser.add_argument("--out", default=None, help="where the runs go (default runs/bench-prune[-quick])")
    args = parser.parse_args()
    chosen = args.settings.split(",")
    if args.seeds < 1 or args.jobs < 1:
        parser.error("--seeds and --jobs must be at least 1")
    if set(chosen) - set(SETTINGS):
        parser.error(f"--settings {args.settings}: choose among {', '.join(SETTINGS)}")
    os.environ["OMP_NUM_THREADS"] = "1"  # spawned workers read this before importing torch
    import torch

    torch.set_num_threads(1)
    from l2b.grid import run_grid

    out = Path(args.out or ("runs/bench-prune" + ("-quick" if args.quick else "")))
    settings = {"digits": QUICK} if args.quick else {k: SETTINGS[k] for k in chosen}
    first = cells(out, settings, NOISES[:1] if args.quick else NOISES, range(1 if args.quick else args.seeds))
    run_grid([c[-1] for c in first], jobs=args.jobs, log=lambda text: print(text, flush=True))
    flags = {c[-1].out: flag(Path(c[-1].out)) for c in first}
    pruned = [replace(cfg, exclude=str(Path(cfg.out) / "label_issues.csv"), out=cfg.out + "-pruned")
              for *_, cfg in first]
    relabelled = [replace(cfg, relabel=str(Path(cfg.out) / "label_issues.csv"), out=cfg.out + "-relabelled")
                  for *_, cfg in first]
    run_grid(pruned + relabelled, jobs=args.jobs, log=lambda text: print(text, flush=True))
    rows = []
    for (setting, noise, method, seed, cfg), again, fixed in zip(first, pruned, relabelled):
        a, b, c = (json.loads((Path(x.out) / "metrics.json").read_text()) for x in (cfg, again, fixed))
        rows.append({"setting": setting, "noise": noise, "method": method, "seed": seed, "noise_rate": a["noise_rate"],
                     "first_last": a["test_acc_last"], "first_best": a["test_acc_at_best_val"],
                     "pruned_last": b["test_acc_last"], "pruned_best": b["test_acc_at_best_val"],
                     "relabelled_last": c["test_acc_last"], "relabelled_best": c["test_acc_at_best_val"],
                     "relabelled_noise_rate": c["noise_rate"], **flags[cfg.out]})
    table = summary(rows)
    command = ("python benchmarks/prune_retrain.py " + " ".join(sys.argv[1:])).strip()
    text = markdown(table, command)
    print(text)
    from results_md import provenance, record

    if args.quick:
        (out / "results.json").write_text(json.dumps({**provenance(command), "rows": rows, "table": table}, indent=2)
                                          + "\n")
        return
    path = record("prune-retrain", "## Training again without the flagged labels, or with them relabelled", text,
                  {"rows": rows, "table": table, "settings": settings}, command)
    print(f"wrote {path} and the table in benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
