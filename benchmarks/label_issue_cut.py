"""How many labels to flag: every cut of ``l2b.calibrate`` on short and long runs, against the true
number of corrupted labels (which the default must match within 25%) and with precision >= 0.8
wherever the ranking is good (ROC-AUC >= 0.95).

Runs (one thread each, trained here unless finished; each part summarised apart):
- seed 0: digits with the library's defaults (MLP, 40% symmetric, 10 clean per class), 3 and 30
  epochs, l2b, coteaching and ce; the memorisation recipe (small-cnn w16, 800 noisy Fashion-MNIST
  images), 10 epochs of l2b at 40% symmetric and asymmetric; the paper-regime grid's finished runs
  (50 epochs) of l2b, ce and coteaching, seed 0 here and seeds 1..S-1 (``--seeds S``, 3) apart;
- the meta methods (whose clean set steers training), 10 epochs: digits, l2b, l2rw and mwnet, seeds
  1-4, at 20% and 40% symmetric and 40% instance noise; the memorisation recipe, l2b, seeds 1-2,
  at those and 40% asymmetric;
- a user's own small labelled folder: 1,000 Fashion-MNIST images, 10 clean per class, an MLP
  (w256), 20 epochs of l2b, 20% and 40% of the labels moved, seeds 0-3; at 20% moved with 20 and
  40 clean per class too; the same at seeds 4-11 (after the last change to the cut);
- fresh seeds, trained after every choice above: the meta methods at digits seeds 5-8 and
  memorisation-recipe seeds 3-5 (48), the own-data regime at seeds 12-19 (32);
- the methods whose model learned from its clean labels (MLC, GLC, distill, CE --train-on-clean):
  digits seeds 9-12 and the memorisation recipe seeds 0-1, 10 epochs (80 runs);
- held-out clean sets where the model is unsure of whole classes: CE and co-teaching on the
  memorisation recipe, seeds 0-2, 10 epochs (24 runs).

Each run is scored by the model ``l2b label-issues`` takes by default (the final one, or the last
epoch's from before it memorised, early_model.pt; the best clean-validation epoch's for runs older
than that file): its probabilities for the training samples and for the clean samples (the reference
of ``clean-confusion`` and ``clean-quantile``). Every cut flags from those, and so does cleanlab's
``find_label_issues`` (its defaults) where cleanlab is installed (the ``bench`` extra). For the
own-data regime a second table fits the clean-confusion mix on other references of the same model
(the correct training labels, the test set, clean-sized draws of either), which separates what a
small clean set's sampling noise adds from what the meta step's steering adds.

    python benchmarks/label_issue_cut.py            # trains what is missing, then the table
    python benchmarks/label_issue_cut.py --quick    # digits at 3 epochs only (tested)
    python benchmarks/label_issue_cut.py --parts seed0,grid,held-out   # these parts again, beside
                                                    # the rest as stored (its command is recorded)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from label_issue_references import references, references_markdown

HERE = Path(__file__).resolve().parent
RESULTS_JSON = HERE / "results" / "label_issue_cut.json"
RESULTS_MD = HERE / "RESULTS.md"


DIGITS_NOISES = ("symmetric:0.2", "symmetric:0.4", "instance:0.4")  # the short checks' noise settings
MEM_NOISES = ("symmetric:0.2", "symmetric:0.4", "asymmetric:0.4", "instance:0.4")


def tag(noise: str) -> str:
    return noise.replace(":", "_")


def short_settings():
    """The two settings of the short runs, one thread each: digits (the library's defaults) and the
    memorisation recipe (small-cnn w16, 800 noisy Fashion-MNIST images), both at 10 epochs."""
    from l2b.config import TrainConfig

    sys.path.insert(0, str(HERE))
    from memorisation_grid import RECIPE

    return (TrainConfig(data="digits", epochs=10, threads=1, progress="none"),
            TrainConfig(**{**RECIPE, "epochs": 10, "test_every": 10}, threads=1, progress="none"))


def runs_to_train(out: Path, quick: bool):
    digits, mem = short_settings()
    cells = [(f"digits {e} ep {m}", replace(digits, method=m, epochs=e, out=str(out / f"digits-{e}ep-{m}")))
             for e in ((3,) if quick else (3, 30)) for m in ("l2b", "coteaching", "ce")]
    return cells + ([] if quick else [(f"memorisation 10 ep l2b {n}", replace(mem, method="l2b", noise=n,
                                                                              out=str(out / f"mem-10ep-{tag(n)}")))
                                      for n in ("symmetric:0.4", "asymmetric:0.4")])


def meta_checks(out: Path, digits_seeds=(1, 2, 3, 4), mem_seeds=(1, 2)):
    """The meta methods at new seeds (their default cut is clean-confusion): 44 short runs at the
    default seeds."""
    digits, mem = short_settings()
    cells = [(f"digits 10 ep {m} {n} seed {s}", replace(digits, method=m, noise=n, seed=s, out=str(out / f"meta-digits-{m}-{tag(n)}-s{s}")))
             for s in digits_seeds for m in ("l2b", "l2rw", "mwnet") for n in DIGITS_NOISES]
    cells += [(f"memorisation 10 ep l2b {n} seed {s}", replace(mem, method="l2b", noise=n, seed=s, out=str(out / f"meta-mem-{tag(n)}-s{s}")))
              for s in mem_seeds for n in MEM_NOISES]
    return cells


def learned_clean_runs(out: Path):
    """Runs whose model learned from its clean labels (MLC's default mix mode, GLC, distill, CE with
    --train-on-clean): digits at 10 epochs, seeds 9-12, under 20% and 40% symmetric and 40% instance
    noise; the memorisation recipe at 10 epochs, seeds 0-1, under those and 40% asymmetric noise."""
    digits, mem = short_settings()
    methods = [("mlc", {}), ("glc", {}), ("distill", {}), ("ce", {"train_on_clean": True})]
    cells = []
    for m, extra in methods:
        name = m + (" trained on clean" if extra else "")
        key = m + ("-toc" if extra else "")
        cells += [(f"digits 10 ep {name} {n} seed {s}", replace(digits, method=m, noise=n, seed=s, **extra,
                                                                out=str(out / f"learned-digits-{key}-{tag(n)}-s{s}")))
                  for s in (9, 10, 11, 12) for n in DIGITS_NOISES]
        cells += [(f"memorisation 10 ep {name} {n} seed {s}", replace(mem, method=m, noise=n, seed=s, **extra,
                                                                     out=str(out / f"learned-mem-{key}-{tag(n)}-s{s}")))
                  for s in (0, 1) for n in MEM_NOISES]
    return cells


def own_data_runs(out: Path, seeds: range = range(4)):
    """A small labelled set of one's own, as docs/data.md's folder example (10 clean per class), and
    the same with 20 and 40 clean per class: 4 runs of l2b per seed."""
    from l2b.config import TrainConfig

    own = TrainConfig(data="fashion-mnist", train_subset=1000, val_per_class=10, model="mlp", width=256, epochs=20,
                      method="l2b", threads=1, progress="none")
    cells = [(f"own-data regime 20 ep l2b {r:.0%} moved seed {s}",
              replace(own, noise=f"symmetric-exclusive:{r}", seed=s, out=str(out / f"own-{r}-s{s}")))
             for r in (0.2, 0.4) for s in seeds]
    # the same at 20% moved with a larger clean set: how the count narrows
    return cells + [(f"own-data regime 20 ep l2b 20% moved, {v} clean per class, seed {s}",
                     replace(own, noise="symmetric-exclusive:0.2", val_per_class=v, seed=s, out=str(out / f"own-0.2-v{v}-s{s}")))
                    for v in (20, 40) for s in seeds]


def held_out_runs(out: Path, seeds=(0, 1, 2)):
    """Runs whose clean set stayed held out (CE and co-teaching: it only chose the best epoch) on the
    memorisation recipe, where the model is unsure of whole classes: 10 epochs, seeds 0-2, under
    20% and 40% symmetric, 40% asymmetric and 40% instance noise (24 runs)."""
    _, mem = short_settings()
    return [(f"memorisation 10 ep {m} {n} seed {s}", replace(mem, method=m, noise=n, seed=s,
                                                            out=str(out / f"heldout-mem-{m}-{tag(n)}-s{s}")))
            for s in seeds for m in ("ce", "coteaching") for n in MEM_NOISES]


def grid_runs(grid: Path, seeds: range):
    """The paper-regime grid's finished runs of l2b, ce and coteaching (of these seeds)."""
    found = []
    for seed in seeds:
        for method in ("l2b", "ce", "coteaching"):
            for run in sorted((grid / "grid" / method).glob(f"*/seed{seed}")):
                if (run / "metrics.json").is_file() and (run / "checkpoint.pt").is_file():
                    name = f"paper regime 50 ep {method} {run.parent.name.replace('_', ':')}"
                    found.append((name + (f" seed {seed}" if seed else ""), run))
    return found


def measure(name: str, run: Path) -> dict:
    from l2b.calibrate import CUTS, estimated_issues, flag
    from l2b.detect import flag_metrics, rank_label_issues, roc_auc
    sys.path.insert(0, str(HERE))
    from label_issues import scored_probs

    labels = np.load(run / "labels.npz")
    given, true = labels["noisy"].astype(np.int64), labels["true"]
    scored = scored_probs(run)  # the model l2b label-issues' default (--model auto) scores with
    probs, clean_probs, clean_y = scored["train"], scored["clean"], scored["clean_labels"]
    steered, learned = scored["steered"], scored["learned"]
    score = 1.0 - probs[np.arange(len(given)), given]
    noisy = given != true
    row = {"run": name, "model": scored["model"], "n": len(given), "corrupted": int(noisy.sum()), "auc": round(roc_auc(score, noisy), 4),
           "estimated": int(estimated_issues(given, probs).sum()), "clean_steered": steered, "clean_learned": learned}
    # whether the ranking allows both targets: some count of its top within 25% of the corrupted one at precision >= 0.8
    c, hits = int(noisy.sum()), np.cumsum(noisy[np.argsort(-score, kind="stable")])
    within = np.arange(max(1, int(np.ceil(0.75 * c))), min(len(given), int(1.25 * c)) + 1)
    row["reachable"] = bool(row["auc"] < 0.95 or (hits[within - 1] >= 0.8 * within).any())
    # what `l2b label-issues` flags by default (cut "auto") from these probabilities
    default = rank_label_issues(given, pred_probs=probs, clean_labels=clean_y, clean_pred_probs=clean_probs,
                                clean_steered=steered or learned)
    mask = np.zeros(len(given), dtype=bool)
    mask[default.indices] = True
    row["default_cut"] = default.cut
    cuts = [(c, flag(c, given, probs, score, 0.5, (clean_y, clean_probs))) for c in CUTS] + [("default", mask)]
    cuts += [(CLEANLAB, f) for f in [cleanlab_flags(given, probs)] if f is not None]
    for cut, flagged in cuts:
        m = flag_metrics(flagged, noisy)
        row[cut] = {"flagged": m["flagged"], "precision": round(m["precision"], 3), "recall": round(m["recall"], 3),
                    "f1": round(m["f1"], 3), "count_ratio": round(m["flagged"] / max(m["corrupted"], 1), 3)}
    return row


COLUMNS = ("default",)  # and every cut of l2b.calibrate.CUTS
CLEANLAB = "cleanlab"  # its find_label_issues (its defaults) on the same probabilities, where it is installed


def cleanlab_flags(given: np.ndarray, probs: np.ndarray) -> np.ndarray | None:
    """cleanlab's own flags (prune by noise rate, in sample as here); None without cleanlab."""
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        return None
    return np.asarray(find_label_issues(given, probs / probs.sum(axis=1, keepdims=True)), dtype=bool)


def columns(rows: list[dict]) -> tuple[str, ...]:
    """The default, then cleanlab's flags and every cut of l2b.calibrate, each where every row has
    it (rows measured before a cut was added lack it)."""
    from l2b.calibrate import CUTS

    return (*COLUMNS, *[c for c in (CLEANLAB, *CUTS) if rows and all(c in r for r in rows)])


NEW_OWN_SEEDS = range(4, 12)  # the own-data regime's seeds added after the default cut was fixed
FRESH = {"digits_seeds": (5, 6, 7, 8), "mem_seeds": (3, 4, 5)}  # seeds no choice had seen, trained last
FRESH_OWN_SEEDS = range(12, 20)


def verdicts(rows: list[dict]) -> dict:
    """Per cut (and the default): how many runs meet the two targets (count within 25%; precision
    >= 0.8 where AUC >= 0.95), and which miss."""
    out = {}
    for cut in columns(rows):
        within = [abs(r[cut]["count_ratio"] - 1) <= 0.25 for r in rows]
        precise = [r["auc"] < 0.95 or r[cut]["precision"] >= 0.8 for r in rows]
        good = sum(r["auc"] >= 0.95 for r in rows)
        out[cut] = {"count_within_25pct": f"{sum(within)}/{len(rows)}",
                    "precision_0.8_where_auc_0.95": f"{sum(p for p, r in zip(precise, rows) if r['auc'] >= 0.95)}/{good}",
                    "both": f"{sum(w and p for w, p in zip(within, precise))}/{len(rows)}",
                    "missed": [r["run"] for r, w, p in zip(rows, within, precise) if not (w and p)],
                    "mean_f1": round(float(np.mean([r[cut]["f1"] for r in rows])), 3)}
    out["default"]["reachable"] = f"{sum(r['reachable'] for r in rows)}/{len(rows)}"
    return out


def markdown(rows: list[dict], summary: dict, command: str) -> str:
    cols = columns(rows)
    lines = [f"{command}  ", "Each cell: flagged (flagged / corrupted), precision, recall. 'default': what "
             "`l2b label-issues` flags (its cut named beside the run); 'cleanlab': cleanlab's `find_label_issues` "
             "(its defaults) on the same probabilities. 'Steered': the clean set steered training "
             "through a meta step that weights each sample (L2B, L2RW; MW-Net's counts as held out); 'learned': the model learned from the clean labels (MLC, GLC, "
             "distill, --train-on-clean).", "",
             "| run | scored with | steered | corrupted | ROC-AUC | estimated | " + " | ".join(cols) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[c]['flagged']} ({r[c]['count_ratio']:.2f}), P {r[c]['precision']:.2f}, R {r[c]['recall']:.2f}"
                 + (f" ({r['default_cut']})" if c == "default" else "") for c in cols]
        lines.append(f"| {r['run']} | {r['model']} | {'learned' if r.get('clean_learned') else 'yes' if r['clean_steered'] else 'no'} | {r['corrupted']} | "
                     f"{r['auc']:.3f} | {r['estimated']} | " + " | ".join(cells) + " |")
    for part, verdict in summary.items():
        lines += ["", f"**{part}**", "", "| cut | flagged within ±25% of corrupted | precision ≥ 0.8 where AUC ≥ 0.95 | both | mean F1 |",
                  "|---|---|---|---|---|"]
        for cut, v in verdict.items():
            lines.append(f"| {cut} | {v['count_within_25pct']} | {v['precision_0.8_where_auc_0.95']} | {v['both']} | "
                         f"{v['mean_f1']:.3f} |")
        lines += ["", f"The ranking allows both targets on {verdict['default']['reachable']} (some count of its top meets "
                  "them); the default misses: " + ("; ".join(verdict["default"]["missed"]) or "none") + "."]
    return "\n".join(lines) + "\n"


def parts(out: Path, grid: Path, seeds: int) -> dict:
    """Every part of the table in the order they were added: key -> (title, cells); a cell is a
    run's name and its TrainConfig (trained if missing) or the directory of a finished run."""
    seed0 = runs_to_train(out, False)
    return {"seed0": ("seed 0", seed0 + grid_runs(grid, range(1))),
            "grid": (f"the paper-regime grid's seeds 1-{seeds - 1}", grid_runs(grid, range(1, seeds))),
            "meta": ("the meta methods at new seeds", meta_checks(out)),
            "own": ("the own-data regime", own_data_runs(out)),
            "own-new": (f"the own-data regime at seeds {NEW_OWN_SEEDS[0]}-{NEW_OWN_SEEDS[-1]}",
                        own_data_runs(out, NEW_OWN_SEEDS)),
            "meta-fresh": ("the meta methods at fresh seeds", meta_checks(out, **FRESH)),
            "own-fresh": ("the own-data regime at fresh seeds", own_data_runs(out, FRESH_OWN_SEEDS)),
            "learned": ("the methods whose model learned from its clean labels", learned_clean_runs(out)),
            "held-out": ("held-out clean sets on the memorisation recipe", held_out_runs(out))}


def measure_part(cells: list, title: str) -> tuple[str, list[dict], dict]:
    """Train what is missing of a part, then measure and summarise it."""
    from l2b.grid import run_one

    for _, cfg in cells:
        if not isinstance(cfg, Path):
            print(run_one(cfg.__dict__), flush=True)
    rows = [measure(name, cfg if isinstance(cfg, Path) else Path(cfg.out)) for name, cfg in cells]
    return f"the {len(rows)} runs of {title}", rows, verdicts(rows)


def merge_parts(stored: dict, measured: list[tuple[str, list[dict], dict]], command: str) -> dict:
    """The stored results with these parts measured again: their rows replaced (or added), their
    summaries too, and the command that did it recorded beside the one that measured the rest."""
    from results_md import provenance

    rows, summary = list(stored["rows"]), dict(stored["summary"])
    for key, part_rows, verdict in measured:
        names = {r["run"] for r in part_rows}
        rows = [r for r in rows if r["run"] not in names] + part_rows
        title = key.split(" runs of ", 1)[1]
        # the part's stored summary is replaced in its place (an older key may word its title shorter)
        old = next((k for k in summary if title.endswith(k.split(" runs of ", 1)[1])), None)
        summary = (dict((key, verdict) if k == old else (k, v) for k, v in summary.items()) if old
                   else {**summary, key: verdict})
    update = {**provenance(command), "parts": [key for key, _, _ in measured]}
    return {**stored, "rows": rows, "summary": summary, "updates": stored.get("updates", []) + [update]}


def render(result: dict) -> str:
    """RESULTS.md's block from a results file: the table, the summaries, the own-data references."""
    command = f"Command: `{result['command']}`" + "".join(
        f"; then `{u['command']}` (commit {u['commit'][:12]}, {u['date']}) measured again: {', '.join(u['parts'])}"
        for u in result.get("updates", []))
    table = markdown(result["rows"], result["summary"], command)
    refs = result.get("references")
    if refs:
        table += "\n" + references_markdown(refs)
        met = lambda part: sum(r["corrected_default"]["both"] for r in part)  # noqa: E731
        table += (f"\nWith the corrected count the default would meet both targets on {met(refs[:16])} of the 16 runs of "
                  f"seeds 0-3 and {met(refs[16:])} of the {len(refs) - 16} of seeds {NEW_OWN_SEEDS[0]}-{NEW_OWN_SEEDS[-1]} "
                  f"(the default as it is: the summaries above).\n")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None, help="where the runs go (default runs/bench-label-cut[-quick])")
    parser.add_argument("--grid", default="runs/bench-paper-regime", help="the paper-regime grid to reuse")
    parser.add_argument("--seeds", type=int, default=3, help="the paper-regime grid's seeds 0..S-1 (seed 0 is "
                        "summarised with the other runs, the rest apart)")
    parser.add_argument("--parts", help="measure only these parts again (comma-separated: seed0, grid, "
                        "meta, own, own-new, meta-fresh, own-fresh, learned, held-out) and put them into the stored "
                        "results beside the rest")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

    out = Path(args.out or ("runs/bench-label-cut" + ("-quick" if args.quick else "")))
    command = ("python benchmarks/label_issue_cut.py " + " ".join(sys.argv[1:])).strip()
    from results_md import provenance, write_block

    if args.quick:
        key, rows, verdict = measure_part(runs_to_train(out, True), "seed 0")
        result = {**provenance(command), "rows": rows, "summary": {key: verdict}}
    else:
        every = parts(out, Path(args.grid), args.seeds)
        chosen = args.parts.split(",") if args.parts else list(every)
        unknown = [k for k in chosen if k not in every]
        if unknown:
            parser.error(f"--parts {args.parts}: unknown part {unknown[0]}; choose among {', '.join(every)}")
        measured = [measure_part(every[k][1], every[k][0]) for k in chosen]
        if args.parts:
            result = merge_parts(json.loads(RESULTS_JSON.read_text()), measured, command)
        else:
            refs = [references(name, Path(cfg.out)) for seeds in (range(4), NEW_OWN_SEEDS)
                    for name, cfg in own_data_runs(out, seeds)]
            result = {**provenance(command), "rows": [r for _, rows, _ in measured for r in rows],
                      "summary": {key: verdict for key, _, verdict in measured}, "references": refs}
    table = render(result)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    if not args.quick:
        RESULTS_JSON.write_text(json.dumps(result, indent=2) + "\n")
        write_block(RESULTS_MD, "label-issue-cut", table, "## Label issues: the calibrated cut")
        print(f"wrote {RESULTS_JSON} and the table in {RESULTS_MD}")


if __name__ == "__main__":
    main()
