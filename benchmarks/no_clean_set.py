"""No clean set at hand: L2B with a meta set selected from the noisy data, against L2B with a true
clean set of the same size, in the paper's regime (benchmarks/paper_regime.py's recipe).

- L2B with ``--meta-set select:KIND`` for KIND in small-loss, confident, pseudo: 200 samples
  (20 per class, the size of the true clean set: 2% of the 10,000 noisy images), selected after the
  recipe's 2 warm-up epochs and kept; the noisy set is the paper-regime grid's (its clean split is
  drawn and left unused, so that both see the same noisy images);
- the selected samples staying in the noisy stream (the default) or leaving it
  (``--meta-set-leaves``), at 40% symmetric noise; ``confident`` also selected again every 10
  epochs (``--meta-refresh 10``) at every noise setting, its purity recorded at each selection;
- L2B with the true clean set, CE and co-teaching: the paper-regime grid's own runs (same seeds).

Noise symmetric 20/40/60%, asymmetric 40%, instance 40%; 3 seeds. Every selection's purity (the
share of correct labels in the meta set) and class balance come from the runs' meta_set.json.

    python benchmarks/no_clean_set.py            # resumable; needs the paper-regime grid for the references
    python benchmarks/no_clean_set.py --quick    # a smoke run (tested)
    python benchmarks/no_clean_set.py --summarize
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from paper_regime_grid import NOISES, REGIME_NOISE, base_config
from results_md import fmt, record

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KINDS = ["small-loss", "confident", "pseudo"]
LEAVE_NOISES = [REGIME_NOISE]
REFRESH = {"confident": 10}  # kind -> R: selected again every R epochs, at every noise setting
REFERENCES = {"clean": "l2b", "ce": "ce", "coteaching": "coteaching"}  # row name -> paper-regime grid method


def cells(base, out: Path, seeds: int, noises: list[str], per_class: int, kinds=KINDS) -> list:
    from l2b.grid import grid_configs

    cfgs = []
    for kind in kinds:
        sel = replace(base, meta_set=f"select:{kind}", meta_set_size=per_class, meta_set_leaves=False, meta_refresh=0)
        cfgs += grid_configs(sel, ["l2b"], noises, seeds, out / f"select-{kind}")
        cfgs += grid_configs(replace(sel, meta_set_leaves=True), ["l2b"], [n for n in LEAVE_NOISES if n in noises],
                             seeds, out / f"select-{kind}-leaves")
        if kind in REFRESH:
            cfgs += grid_configs(replace(sel, meta_refresh=REFRESH[kind]), ["l2b"], noises, seeds,
                                 out / f"select-{kind}-refresh{REFRESH[kind]}")
            # the defaults of --meta-set select: leaving the stream, selected again every epochs // 5
            cfgs += grid_configs(replace(sel, meta_set_leaves=None, meta_refresh=None), ["l2b"], noises, seeds,
                                 out / f"select-{kind}-defaults")
    return sorted(cfgs, key=lambda c: (c.noise != REGIME_NOISE, c.noise))


def rows(out: Path, grid: Path) -> list[dict]:
    from l2b.grid import collect

    found: dict[tuple[str, str], list[dict]] = {}
    for variant_dir in sorted(out.glob("select-*")):
        for run in collect(variant_dir):
            found.setdefault((variant_dir.name, run["noise"]), []).append(run)
    for name, method in REFERENCES.items():
        for run in collect(grid / "grid" / method):
            found.setdefault((name, run["noise"]), []).append(run)
    table = []
    for (name, noise), runs in sorted(found.items()):
        last = [r["test_acc_last"] for r in runs]
        sel = [s for r in runs for s in r.get("meta_set", [])]
        by_epoch: dict[int, list[float]] = {}  # purity at the first selection and at each refresh
        for s in sel:
            by_epoch.setdefault(s["epoch"], []).append(s["purity"])
        table.append({"meta_set": name, "noise": noise, "seeds": len(runs), "last_mean": round(statistics.mean(last), 3),
                      "last_std": round(statistics.stdev(last), 3) if len(last) > 1 else 0.0,
                      "purity": round(statistics.mean(s["purity"] for s in sel), 4) if sel else None,
                      "purity_by_epoch": {e + 1: round(statistics.mean(v), 4) for e, v in sorted(by_epoch.items())},
                      "class_balance": (min(min(s["per_class_found"].values()) / s["per_class"] for s in sel)
                                        if sel else None)})
    return table


def shares(table: list[dict]) -> dict[str, dict[str, float]]:
    """Per selected meta set (a ``select-*`` row) and noise: the share of the true clean set's gain
    over CE (last epoch) that L2B with it keeps, (selected − CE) / (clean − CE)."""
    cell = {(r["meta_set"], r["noise"]): r["last_mean"] for r in table}
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["meta_set"] for r in table if r["meta_set"].startswith("select-")):
        for noise in NOISES:
            clean, ce, sel = (cell.get((n, noise)) for n in ("clean", "ce", name))
            if None not in (clean, ce, sel) and clean > ce:
                out.setdefault(name, {})[noise] = (sel - ce) / (clean - ce)
    return out


def kept_gain(table: list[dict]) -> str | None:
    """One sentence: how much of the true clean set's gain the best selected meta set keeps (among
    those measured at the most noise settings), where it fails (keeps under half of it) and how pure
    its set was there, and how often the others fail."""
    kept = shares(table)
    if not kept:
        return None
    widest = max(len(v) for v in kept.values())
    kept = {k: v for k, v in kept.items() if len(v) == widest}
    pct = lambda x: f"{100 * x:.0f}%"  # noqa: E731
    purity = {(r["meta_set"], r["noise"]): r["purity"] for r in table}
    mean = {k: statistics.mean(v.values()) for k, v in kept.items()}
    best = max(mean, key=mean.get)
    ok = {n: v for n, v in kept[best].items() if v >= 0.5}
    fail = {n: v for n, v in kept[best].items() if v < 0.5}
    text = f"L2B with a selected meta set ({display(best)}; last epoch)"
    if ok:
        lo, hi = min(ok.values()), max(ok.values())
        span = pct(lo) if round(100 * lo) == round(100 * hi) else f"{pct(lo)}–{pct(hi)}"
        text += (f" keeps {span} of the true clean set's gain over CE ("
                 + ", ".join(f"{n} {pct(v)}" for n, v in ok.items()) + ")")
    if fail:
        text += (" and" if ok else "") + " fails at " + ", ".join(
            f"{n} ({pct(v)} of the gain; the set {100 * purity[(best, n)]:.0f}% pure)" for n, v in fail.items())
    for k in kept:
        if k != best:
            under = sum(v < 0.5 for v in kept[k].values())
            text += f"; {display(k)}: under half of the gain at {under} of {len(kept[k])} ({pct(mean[k])} on average)"
    return text + "."


def purity_text(row: dict) -> str:
    """ " (purity 98.2%)", or at each selection " (purity 98.2% → 99.0%)" for a refreshed meta set."""
    if row["purity"] is None:
        return ""
    steps = list(row.get("purity_by_epoch", {}).values())
    shown = " → ".join(f"{100 * p:.1f}%" for p in steps) if len(steps) > 1 else f"{100 * row['purity']:.1f}%"
    balance = row.get("class_balance")
    short = "" if balance is None or balance >= 1 else f", smallest class {100 * balance:.0f}% of K"
    return f" (purity {shown}{short})"


def display(name: str) -> str:
    """A row's name in the table: the run directory's, said in the CLI's words."""
    if not name.startswith("select-"):
        return {"clean": "true clean set (L2B)", "ce": "CE", "coteaching": "co-teaching"}.get(name, name)
    rest = name[len("select-"):]
    for kind in sorted(KINDS, key=len, reverse=True):
        if rest.startswith(kind):
            variant = rest[len(kind):].lstrip("-")
            how = ("leaves the stream, selected once" if variant == "leaves" else
                   "the defaults: leaves the stream, selected every epochs // 5" if variant == "defaults" else
                   f"stays, refreshed every {variant[len('refresh'):]} epochs" if variant.startswith("refresh") else
                   "stays in the stream, selected once")
            return f"select:{kind}, {how}"
    return name


def markdown(table: list[dict], command: str) -> str:
    noises = [n for n in NOISES if any(r["noise"] == n for r in table)]
    names = list(dict.fromkeys(r["meta_set"] for r in sorted(table, key=lambda r: (not r["meta_set"].startswith("select"), r["meta_set"]))))
    cell = {(r["meta_set"], r["noise"]): r for r in table}
    lines = [f"Command: `{command}`", "",
             "L2B's last-epoch test accuracy (%), mean ± std over seeds; in brackets the selected set's purity (its "
             "share of correct labels; at each selection for a refreshed set) and, where a class had fewer selectable "
             "samples than K, its share of K (every selection here is class-balanced unless said). clean: L2B with the "
             "true clean set of the same size; ce and coteaching use no clean set.", "", "| meta set | " + " | ".join(noises) + " |", "|---|" + "---|" * len(noises)]
    for name in names:
        vals = []
        for n in noises:
            r = cell.get((name, n))
            vals.append("—" if r is None else fmt(r["last_mean"], r["last_std"])
                        + purity_text(r))
        lines.append(f"| {display(name)} | " + " | ".join(vals) + " |")
    sentence = kept_gain(table)
    if sentence:
        lines += ["", sentence]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--grid", default="runs/bench-paper-regime", help="the paper-regime grid (references)")
    parser.add_argument("--summarize", action="store_true")
    parser.add_argument("--kinds", help="comma-separated selection kinds to train (default: all)")
    parser.add_argument("--noises", help="comma-separated noise settings to train (default: all)")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    from l2b.grid import check_cells, run_grid

    out = Path(args.out or ("runs/bench-no-clean-set" + ("-quick" if args.quick else "")))
    base, recipe = base_config(args.quick)
    seeds = 1 if args.quick else args.seeds
    noises = [REGIME_NOISE] if args.quick else NOISES
    # the quick model (1 warm-up epoch on 300 images) predicts too few classes for `pseudo`
    archive = HERE / "results" / "no_clean_set_cells.tar.xz"
    if not args.quick and archive.is_file():
        from cells import unpack

        print(f"{unpack(archive, out)} finished cells from {archive.relative_to(ROOT)}", flush=True)
    cfgs = cells(base, out, seeds, noises, recipe["val_per_class"], KINDS[:2] if args.quick else KINDS)
    check_cells(cfgs)
    planned = list(cfgs)
    if args.kinds or args.noises:  # a part of the grid; the summary still covers every finished run
        kinds, wanted = (args.kinds or ",".join(KINDS)).split(","), (args.noises or ",".join(NOISES)).split(",")
        if set(kinds) - set(KINDS) or set(wanted) - set(NOISES):
            parser.error(f"--kinds from {', '.join(KINDS)}; --noises from {', '.join(NOISES)}")
        cfgs = [c for c in cfgs if c.meta_set.split(":")[1] in kinds and c.noise in wanted]
    if not args.summarize:
        run_grid(cfgs, jobs=args.jobs, log=lambda text: print(text, flush=True))
    table = rows(out, Path(args.grid))
    command = ("python benchmarks/no_clean_set.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])).strip()
    text = markdown(table, command)
    finished = sum((Path(c.out) / "metrics.json").is_file() for c in planned)
    if finished < len(planned):
        text = (f"**PARTIAL: {finished} of {len(planned)} selected-meta-set runs finished**; run "
                f"`python benchmarks/no_clean_set.py` to finish.\n\n" + text)
    print(text)
    result = {"recipe": recipe, "rows": table, "kept_gain": kept_gain(table)}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    if not args.quick:
        record("no_clean_set", "## No clean set at hand: a meta set selected from the noisy data", text, result, command)
        from cells import pack

        pack(out, archive)


if __name__ == "__main__":
    main()
