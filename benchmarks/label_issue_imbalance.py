"""Label issues on imbalanced data of one's own: what `l2b label-issues` flags when the classes are
far from equal in size, as a practitioner's often are (a few common classes, many rare ones).

Fashion-MNIST's training images, class k holding 600 * 0.7^k of them (600 down to 24; 1,944 in
all), as an npz of one's own with a verified clean set of V images per class (10 or 40, from the
remaining training images) and a balanced test set (100 per class). 20% of the labels are moved,
each to another class in proportion to that class's size (a rare class receives few; the K x K
transition is the `matrix:` noise of docs/data.md), so a moved label usually names a common class.
L2B and CE, 20 epochs of the default MLP, seeds 0..S-1, each scored by `l2b label-issues` as it
writes them (its default model and cut) against the cut benchmark's targets, and cleanlab 2.9's
`find_label_issues` on the same probabilities.

    python benchmarks/label_issue_imbalance.py --seeds 5 --jobs 2
    python benchmarks/label_issue_imbalance.py --quick --out DIR    # 1 seed, 3 epochs (tested)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
LARGEST, STEP, MOVED, TEST_PER_CLASS = 600, 0.7, 0.2, 100


def class_sizes(largest: int = LARGEST) -> np.ndarray:
    return np.round(largest * STEP ** np.arange(10)).astype(int)


def write_data(out: Path, ds, seed: int, clean_per_class: int, largest: int = LARGEST) -> Path:
    """The seed's npz of Fashion-MNIST (``ds``), with its true labels (the noise is injected by the run)."""
    x, y = ds.x_train.numpy()[:, 0], ds.y_train.numpy()
    xt, yt = ds.x_test.numpy()[:, 0], ds.y_test.numpy()
    rng = np.random.default_rng(seed)
    sizes = class_sizes(largest)
    train, clean = [], []
    for c in range(10):
        members = rng.permutation(np.flatnonzero(y == c))
        train += list(members[:sizes[c]])
        clean += list(members[sizes[c]:sizes[c] + clean_per_class])
    test = np.concatenate([rng.permutation(np.flatnonzero(yt == c))[:TEST_PER_CLASS] for c in range(10)])
    data = out / f"imbalanced-v{clean_per_class}-s{seed}.npz"
    np.savez(data, x_train=x[train], y_train=y[train], x_val=x[clean], y_val=y[clean], x_test=xt[test], y_test=yt[test])
    return data


def write_transition(out: Path, largest: int = LARGEST) -> Path:
    """The noise: each label kept with probability 1 - MOVED, else moved to another class in
    proportion to that class's size (the same for every seed)."""
    sizes = class_sizes(largest)
    prior = sizes / sizes.sum()
    matrix = np.zeros((10, 10))
    for c in range(10):
        matrix[c] = MOVED * prior / (1 - prior[c])
        matrix[c, c] = 1 - MOVED
    np.savetxt(out / "transition.csv", matrix, delimiter=",")
    return out / "transition.csv"


def configs(out: Path, seeds: range, clean_sizes=(10, 40), epochs: int = 20, largest: int = LARGEST):
    from l2b.config import TrainConfig

    from l2b.data import load_dataset

    out.mkdir(parents=True, exist_ok=True)
    ds, matrix = load_dataset("fashion-mnist"), write_transition(out, largest)
    cells = []
    for seed in seeds:
        for v in clean_sizes:
            data = write_data(out, ds, seed, v, largest)
            base = TrainConfig(data=f"npz:{data}", noise=f"matrix:{matrix}", model="mlp", width=256, epochs=epochs,
                               threads=1, progress="none", seed=seed)
            cells += [(f"{m}, {v} clean per class, seed {seed}", replace(base, method=m, out=str(out / f"{m}-v{v}-s{seed}")))
                      for m in ("l2b", "ce")]
    return cells


def scored(name: str, run: Path) -> dict:
    """`l2b label-issues` on the run (its defaults), and cleanlab on the same model's probabilities
    (its columns None where cleanlab is not installed: the ``bench`` extra)."""
    from label_issue_cut import cleanlab_flags
    from label_issue_references import meets_targets

    from l2b.detect import flag_metrics
    from l2b.label_issues import write_label_issues
    from l2b.run_scores import run_model_scores

    with tempfile.TemporaryDirectory() as tmp:
        s = write_label_issues(run, out=tmp, log=lambda line: None)
    labels = np.load(run / "labels.npz")
    wrong = labels["noisy"] != labels["true"]
    ratio = s["issues"] / max(s["corrupted"], 1)
    row = {"run": name, "corrupted": s["corrupted"], "flagged": s["issues"], "count_ratio": round(ratio, 3),
           "precision": round(s["precision"], 3), "recall": round(s["recall"], 3), "auc": round(s["auc"], 4),
           "cut": s["cut"], "model": s["model"], "meets_both": bool(meets_targets(ratio, s["precision"], s["auc"])),
           "cleanlab_flagged": None, "cleanlab_ratio": None, "cleanlab_precision": None, "cleanlab_meets_both": None}
    flags = cleanlab_flags(labels["noisy"], run_model_scores(run, s["model"], held_out=True).train)
    if flags is not None:
        cl = flag_metrics(flags, wrong)
        cl_ratio = cl["flagged"] / max(s["corrupted"], 1)
        row.update(cleanlab_flagged=cl["flagged"], cleanlab_ratio=round(cl_ratio, 3),
                   cleanlab_precision=round(cl["precision"], 3),
                   cleanlab_meets_both=bool(meets_targets(cl_ratio, cl["precision"], s["auc"])))
    return row


def markdown(rows: list[dict], command: str, largest: int = LARGEST, epochs: int = 20) -> str:
    lines = [f"Command: `{command}`  ",
             f"Fashion-MNIST, class k holding {largest}·{STEP}^k training images ({', '.join(map(str, class_sizes(largest)))}); "
             f"{MOVED:.0%} of the labels moved, each to another class in proportion to its size; a verified clean set "
             f"of 10 or 40 per class; test {TEST_PER_CLASS} per class; the default MLP, {epochs} epochs. Each cell: flagged "
             f"(flagged / corrupted), precision; ✓ both targets met (count within ±25%, precision ≥ 0.8 where "
             f"ROC-AUC ≥ 0.95).", "",
             "| run | corrupted | ROC-AUC | default (`l2b label-issues`) | | cleanlab, same probabilities | |",
             "|---|---|---|---|---|---|---|"]
    mark = lambda ok: "✓" if ok else "✗"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['run']} | {r['corrupted']} | {r['auc']:.3f} | {r['flagged']} ({r['count_ratio']:.2f}), "
                     f"P {r['precision']:.2f} ({r['model']}, {r['cut']}) | {mark(r['meets_both'])} | " +
                     ("— (cleanlab not installed) | |" if r["cleanlab_flagged"] is None else
                      f"{r['cleanlab_flagged']} ({r['cleanlab_ratio']:.2f}), P {r['cleanlab_precision']:.2f} | "
                      f"{mark(r['cleanlab_meets_both'])} |"))
    lines.append("")
    for method in ("l2b", "ce"):
        for v in (10, 40):
            part = [r for r in rows if r["run"].startswith(f"{method}, {v} clean")]
            if part:
                span = lambda k: f"{min(r[k] for r in part):.2f}–{max(r[k] for r in part):.2f}×"  # noqa: E731
                lines.append(f"- {method}, {v} clean per class: the default flags {span('count_ratio')} and meets both "
                             f"targets on {sum(r['meets_both'] for r in part)} of {len(part)}" +
                             ("." if part[0]["cleanlab_flagged"] is None else
                              f"; cleanlab {span('cleanlab_ratio')}, {sum(r['cleanlab_meets_both'] for r in part)} "
                              f"of {len(part)}."))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 10 clean per class, 3 epochs, a smaller set")
    parser.add_argument("--out", default=None, help="where the data and runs go (default runs/bench-label-imbalance)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=1, help="runs trained in parallel, one thread each")
    args = parser.parse_args()
    if args.seeds < 1 or args.jobs < 1:
        parser.error("--seeds and --jobs must be at least 1")
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from l2b.grid import run_grid

    out = Path(args.out or ("runs/bench-label-imbalance-quick" if args.quick else "runs/bench-label-imbalance"))
    largest, epochs = (200, 3) if args.quick else (LARGEST, 20)
    cells = configs(out, range(1) if args.quick else range(args.seeds), (10,) if args.quick else (10, 40), epochs, largest)
    run_grid([cfg for _, cfg in cells], jobs=args.jobs)
    rows = []
    for name, cfg in cells:
        rows.append(scored(name, Path(cfg.out)))
        print(json.dumps(rows[-1]), flush=True)
    command = ("python benchmarks/label_issue_imbalance.py " + " ".join(sys.argv[1:])).strip()
    table = markdown(rows, command, largest, epochs)
    print(table)
    from results_md import provenance, record

    if args.quick:
        (out / "results.json").write_text(json.dumps({**provenance(command), "rows": rows}, indent=2) + "\n")
        return
    path = record("label-issue-imbalance", "## Label issues on imbalanced data of one's own", table, {"rows": rows},
                  command)
    print(f"wrote {path} and the table in benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
