"""The memorisation benchmark's summaries: per-cell rows, paired differences, the verdict,
timings, the Markdown tables and the figures (see memorisation.py)."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path

import numpy as np

from memorisation_grid import NOISES, REGIME_GAP, REGIME_NOISE, VARIANTS, variants_dir
from results_md import fmt, noise_auc, on_gpu


def summarize_variants(out: Path) -> list[dict]:
    """The variants' rows, each with its paired difference to the grid's exact L2B."""
    from l2b.grid import collect, group_runs, summary_row

    rows = []
    exact = group_runs(out)
    for name in VARIANTS:
        root = variants_dir(out) / name
        if not root.is_dir():
            continue
        by_noise: dict[str, list] = {}
        for run in collect(root):
            by_noise.setdefault(run["noise"], []).append(run)
        for noise, runs in sorted(by_noise.items()):
            row = {**summary_row(name, noise, runs), **timing(runs),
                   "noise_auc": (lambda a: round(float(np.mean(a)), 3) if a else None)(
                       [v for v in (noise_auc(r["dir"]) for r in runs) if v is not None])}
            for key, short in (("test_acc_last", "last"), ("test_acc_at_best_val", "best")):
                diff = paired(runs, exact.get(("l2b", noise), []), key)  # variant minus exact L2B
                row[f"minus_exact_{short}"] = diff
            rows.append(row)
    return rows


def weight_use(run_dir: Path) -> dict | None:
    """How a run spent its last epoch's per-sample weights (None without weights): the share of all
    weight on the pseudo-labels (beta), the share of the observed-label weight (alpha) that went
    to corrupted labels, the corrupted share of the samples, and the accuracy of the pseudo-labels
    on the corrupted samples (where following them repairs the label)."""
    path = run_dir / "weights.npz"
    if not path.is_file():
        return None
    w = np.load(path)
    a, b, bad = w["alpha"].astype(float), w["beta"].astype(float), w["is_noisy"].astype(bool)
    n = len(bad)
    a, b = a[:n], b[:n]
    total = a.sum() + b.sum()
    pseudo = w["pseudo_labels"][:n]
    return {"beta_share": float(b.sum() / total) if total > 0 else None,
            "alpha_on_corrupted": float(a[bad].sum() / a.sum()) if a.sum() > 0 else None,
            "corrupted_share": float(bad.mean()),
            "pseudo_right_on_corrupted": float((pseudo[bad] == w["true"][:n][bad]).mean())
            if bad.any() and (pseudo >= 0).any() else None}


def paired(l2b_runs: list[dict], runs: list[dict], key: str) -> dict | None:
    """L2B minus the method, seed by seed (the seeds share data, noise and split)."""
    mine = {r["seed"]: r[key] for r in l2b_runs}
    diffs = [mine[r["seed"]] - r[key] for r in runs if r["seed"] in mine]
    if not diffs:
        return None
    return {"mean": round(statistics.mean(diffs), 3), "min": round(min(diffs), 3), "max": round(max(diffs), 3),
            "seeds": len(diffs)}


def l2b_wins(diff: dict | None, l2b_row: dict, row: dict, key: str) -> bool | None:
    """L2B beats the method by more than the seeds' spread: ahead on every seed, and ahead on
    average by more than the larger of the two methods' standard deviations over seeds."""
    if diff is None:
        return None
    spread = max(l2b_row[key + "_std"], row[key + "_std"])
    return diff["min"] > 0 and diff["mean"] > spread


def timing(runs: list[dict]) -> dict:
    """Mean seconds of a cell's runs; s / epoch and s / run also over its CPU runs alone (timings
    only from runs on this kind of machine), and how many ran on a GPU."""
    cpu = [r for r in runs if not on_gpu(r["config"])]
    return {"gpu_runs": len(runs) - len(cpu),
            "total_seconds": round(statistics.mean(r.get("total_seconds", float("nan")) for r in runs), 1),
            "cpu_epoch_seconds": round(statistics.mean(r["epoch_seconds"] for r in cpu), 3) if cpu else None,
            "cpu_total_seconds": round(statistics.mean(r["total_seconds"] for r in cpu), 1) if cpu else None}


def cpu_seconds(rows: list[dict], method: str) -> tuple[float | None, float | None]:
    """A method's s / epoch and s / run over its CPU runs at every noise setting (None: none ran
    on the CPU); runs that a GPU trained (``--device cuda``) count for accuracy, not for time."""
    cells = [r for r in rows if r["method"] == method and r.get("cpu_total_seconds") is not None]
    if not cells:
        return None, None
    n = sum(r["seeds"] - r["gpu_runs"] for r in cells)
    epoch = sum(r["cpu_epoch_seconds"] * (r["seeds"] - r["gpu_runs"]) for r in cells) / n
    return epoch, sum(r["cpu_total_seconds"] * (r["seeds"] - r["gpu_runs"]) for r in cells) / n


def cpu_grid_minutes(rows: list[dict], variants: list[dict], jobs: int) -> float | None:
    """What the whole grid costs on this CPU with ``jobs`` workers: every cell's seeds times its
    method's mean CPU seconds per run (measured on the runs this CPU trained), over the workers."""
    total, cells = 0.0, list(rows) + list(variants)
    for r in cells:
        sec = r.get("cpu_total_seconds") or cpu_seconds(cells, r["method"])[1]
        if sec is None:
            return None
        total += sec * r["seeds"]
    return total / 60.0 / jobs


def summarize(out: Path, extra: dict[str, Path] | None = None) -> list[dict]:
    """One row per (method, noise) of the runs below ``out``, with L2B's paired differences;
    ``extra`` maps a row name to another directory whose runs join the table under that name
    (e.g. "ce+clean": CE runs trained on the clean set as well)."""
    from l2b.grid import group_runs, mean_std, summary_row

    groups = group_runs(out)
    for name, root in (extra or {}).items():
        groups.update({(name, noise): runs for (_, noise), runs in group_runs(root).items()})
    rows = []
    for (method, noise), runs in sorted(groups.items()):
        row = summary_row(method, noise, runs)
        aucs = [a for a in (noise_auc(r["dir"]) for r in runs) if a is not None]
        auc = [round(v, 3) for v in mean_std(aucs)] if aucs else [None, None]
        uses = [u for u in (weight_use(r["dir"]) for r in runs) if u is not None]
        if uses:
            row["weight_use"] = {k: (None if any(u[k] is None for u in uses) else round(statistics.mean(u[k] for u in uses), 3))
                                 for k in uses[0]}
        row.update(noise_auc=auc[0], noise_auc_std=auc[1], **timing(runs),
                   seed_last={r["seed"]: r["test_acc_last"] for r in runs},
                   seed_best={r["seed"]: r["test_acc_at_best_val"] for r in runs})
        rows.append(row)
    cell = {(r["method"], r["noise"]): r for r in rows}
    for row in rows:
        l2b_runs = groups.get(("l2b", row["noise"]))
        if row["method"] == "l2b" or not l2b_runs:
            continue
        for key, name in (("test_acc_last", "last"), ("test_acc_at_best_val", "best")):
            diff = paired(l2b_runs, groups[(row["method"], row["noise"])], key)
            row[f"l2b_minus_{name}"] = diff
            row[f"l2b_wins_{name}"] = l2b_wins(diff, cell[("l2b", row["noise"])], row, key)
    return rows


def regime(rows: list[dict]) -> dict | None:
    """CE's best-val minus last-epoch test accuracy at 40% symmetric noise (mean over seeds)."""
    ce = next((r for r in rows if r["method"] == "ce" and r["noise"] == REGIME_NOISE), None)
    if ce is None:
        return None
    gap = ce["test_acc_at_best_val_mean"] - ce["test_acc_last_mean"]
    return {"noise": REGIME_NOISE, "ce_last": ce["test_acc_last_mean"], "ce_best_val": ce["test_acc_at_best_val_mean"],
            "gap": round(gap, 2), "memorises": gap >= REGIME_GAP}


def verdict(rows: list[dict], noises: list[str], name: str) -> str:
    """One sentence: does L2B beat every other method at every noise setting (``name``: last|best)?"""
    losses = [(r["method"], r["noise"]) for r in rows
              if r["noise"] in noises and r.get(f"l2b_wins_{name}") is False]
    if not losses:
        return "yes, at every noise setting, against every method."
    by_noise: dict[str, list[str]] = {}
    for m, n in losses:
        by_noise.setdefault(n, []).append(m)
    return "no: not by more than the seeds' spread against " + "; ".join(
        f"{', '.join(sorted(ms))} at {n}" for n, ms in by_noise.items()) + "."


def markdown(rows: list[dict], rates: dict[str, float], command: str, minutes: float | None, jobs: int,
             recipe: dict, variants: list[dict] = (), clean: dict | None = None) -> str:
    noises = [n for n in NOISES if any(r["noise"] == n for r in rows)]
    methods = sorted({r["method"] for r in rows if r["noise"] != "none"}, key=lambda m: (m != "l2b", m))
    cell = {(r["method"], r["noise"]): r for r in rows}
    ceiling = cell.get(("ce", "none"))
    reg = regime(rows)
    head = "| method | " + " | ".join(f"{n} ({100 * rates[n]:.1f}% flipped)" for n in noises)
    lines = [f"Command: `{command}`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {_torch_version()}, Python "
             f"{platform.python_version()}; {jobs} runs at a time, one thread each"
             + ("" if minutes is None else f"; this invocation {minutes:.0f} min") + ".  ",
             *gpu_note(rows, variants, jobs),
             f"Recipe: {', '.join(f'{k}={v}' for k, v in recipe.items())}.", ""]
    if reg:
        lines += [f"**Regime** (CE at {reg['noise']}): last epoch {reg['ce_last']:.2f}%, best-val epoch "
                  f"{reg['ce_best_val']:.2f}%: CE loses {reg['gap']:.2f} points by memorising "
                  f"({'meets' if reg['memorises'] else 'DOES NOT meet'} the ≥ {REGIME_GAP:.0f}-point criterion).  "]
    if ceiling:
        lines += [f"Clean labels (CE ceiling, {ceiling['seeds']} seeds): last epoch "
                  f"{fmt(ceiling['test_acc_last_mean'], ceiling['test_acc_last_std'])}, best-val epoch "
                  f"{fmt(ceiling['test_acc_at_best_val_mean'], ceiling['test_acc_at_best_val_std'])}.", ""]
    l2b_here = cell.get(("l2b", REGIME_NOISE))
    if clean and l2b_here:
        above = clean["test_acc_last_mean"] > l2b_here["test_acc_last_mean"]
        lines += [f"CE trained on the clean validation images ALONE ({clean['seeds']} seed{'s' if clean['seeds'] > 1 else ''}, last epoch): "
                  f"{fmt(clean['test_acc_last_mean'], clean['test_acc_last_std'])}, "
                  f"{'above' if above else 'below'} L2B's {l2b_here['test_acc_last_mean']:.2f} at {REGIME_NOISE}"
                  + (": here the clean set is worth more as training data than all the noisy samples, which "
                     "favours the methods that train on it (glc; mlc's mix; distill's teacher), while L2B and "
                     "L2RW only use it to weight the noisy samples." if above else "."), ""]
    lines += ["**Does L2B beat every other method at every noise setting, by more than the seeds' spread?** "
              "(ahead on every seed, and on average by more than the larger seed standard deviation)  ",
              f"Last epoch: {verdict(rows, noises, 'last')}  ",
              f"Best-validation epoch: {verdict(rows, noises, 'best')}", ""]
    for title, key in (("Test accuracy (%) at the last epoch, mean ± std over seeds", "test_acc_last"),
                       ("Test accuracy (%) at the best clean-validation epoch", "test_acc_at_best_val")):
        lines += [f"#### {title}", "", head + " | s / epoch | s / run |", "|---|" + "---|" * (len(noises) + 2)]
        for m in methods:
            vals = [fmt(cell[(m, n)][key + "_mean"], cell[(m, n)][key + "_std"]) if (m, n) in cell else "—"
                    for n in noises]
            secs, total = cpu_seconds(rows, m)
            name = f"**{m}**" if m == "l2b" else m
            lines.append(f"| {name} | " + " | ".join(vals)
                         + (" | — | — |" if secs is None else f" | {secs:.2f} | {total:.0f} |"))
        lines.append("")
    for title, name in (("last epoch", "last"), ("best-validation epoch", "best")):
        lines += [f"#### L2B − method, paired by seed ({title}): mean [min, max]; ✓ = L2B ahead by more than the spread",
                  "", "| method | " + " | ".join(noises) + " |", "|---|" + "---|" * len(noises)]
        for m in methods:
            if m == "l2b":
                continue
            vals = []
            for n in noises:
                d = cell.get((m, n), {}).get(f"l2b_minus_{name}")
                vals.append("—" if d is None else f"{d['mean']:+.2f} [{d['min']:+.2f}, {d['max']:+.2f}]"
                            + (" ✓" if cell[(m, n)][f"l2b_wins_{name}"] else ""))
            lines.append(f"| {m} | " + " | ".join(vals) + " |")
        lines.append("")
    lines += ["#### Noise detection: ROC-AUC of −α (last epoch) for the corrupted labels, methods that weight samples",
              "", "| method | " + " | ".join(noises) + " |", "|---|" + "---|" * len(noises)]
    for m in methods:
        if any(cell.get((m, n), {}).get("noise_auc") is not None for n in noises):
            vals = [fmt(cell[(m, n)]["noise_auc"], cell[(m, n)]["noise_auc_std"], 3) if (m, n) in cell else "—"
                    for n in noises]
            lines.append(f"| {m} | " + " | ".join(vals) + " |")
    used = [r for r in rows if r.get("weight_use") and r["noise"] in noises]
    if used:
        lines += ["", "#### How the per-sample weights were spent at the last epoch (mean over seeds)", "",
                  "β share: the share of all weight on pseudo-labels; α on corrupted: the share of the "
                  "observed-label weight that went to corrupted labels (against the corrupted share of the "
                  "samples); pseudo right: how often the pseudo-label is the TRUE label on corrupted samples.", "",
                  "| method | noise | β share | α on corrupted (corrupted share) | pseudo right on corrupted |",
                  "|---|---|---|---|---|"]
        for r in sorted(used, key=lambda r: (noises.index(r["noise"]), r["method"] != "l2b", r["method"])):
            u = r["weight_use"]
            pct = lambda v: "—" if v is None else f"{100 * v:.1f}%"  # noqa: E731
            lines.append(f"| {r['method']} | {r['noise']} | {pct(u['beta_share'])} | {pct(u['alpha_on_corrupted'])} "
                         f"({pct(u['corrupted_share'])}) | {pct(u['pseudo_right_on_corrupted'])} |")
    if variants:
        exact = {r["noise"]: r for r in rows if r["method"] == "l2b"}
        secs = lambda r: "GPU" if r.get("cpu_epoch_seconds") is None else f"{r['cpu_epoch_seconds']:.2f}"  # noqa: E731
        lines += ["", "#### L2B with the approximate last-layer engine, beside exact L2B (same seeds)", "",
                  "| variant | noise | last epoch | best-val epoch | − exact L2B, last: mean [min, max] | "
                  "− exact L2B, best-val | AUC −α | s / epoch (exact L2B) |", "|---|---|---|---|---|---|---|---|"]
        for v in variants:
            d, b = v["minus_exact_last"], v["minus_exact_best"]
            e = exact.get(v["noise"], {})
            lines.append(
                f"| {v['method']} | {v['noise']} | {fmt(v['test_acc_last_mean'], v['test_acc_last_std'])} | "
                f"{fmt(v['test_acc_at_best_val_mean'], v['test_acc_at_best_val_std'])} | "
                + ("—" if d is None else f"{d['mean']:+.2f} [{d['min']:+.2f}, {d['max']:+.2f}]") + " | "
                + ("—" if b is None else f"{b['mean']:+.2f} [{b['min']:+.2f}, {b['max']:+.2f}]") + " | "
                + ("—" if v["noise_auc"] is None else f"{v['noise_auc']:.3f}") + " | "
                + f"{secs(v)} ({secs(e)}) |")
    return "\n".join(lines) + "\n"


def gpu_note(rows: list[dict], variants: list[dict], jobs: int) -> list[str]:
    """Where the runs were trained, and what the whole grid costs on this CPU."""
    runs = sum(r["seeds"] for r in list(rows) + list(variants))
    gpu = sum(r.get("gpu_runs", 0) for r in list(rows) + list(variants))
    cost = cpu_grid_minutes(rows, variants, jobs)
    out = []
    if gpu:
        out.append(f"{gpu} of these {runs} runs were trained on a GPU machine (`--device cuda --noises ...`, the same "
                   f"recipe and seeds; GPU kernels are not bit-identical to the CPU's, so those runs are other "
                   f"draws of the same experiment); accuracies include them, timings (s / epoch, s / run) come "
                   f"from the CPU runs alone.  ")
    if cost is not None:
        out.append(f"The whole grid on this CPU, {jobs} workers: {cost:.0f} min (each cell's seeds × its method's "
                   f"mean CPU seconds per run, measured here).  ")
    return out


def _torch_version() -> str:
    import torch

    return torch.__version__


def figures(out: Path, dest: Path) -> list[Path]:
    """The grid's accuracy and weight figures, as ``l2b report`` draws them, next to the results
    (``l2b report OUT`` draws the rest)."""
    from l2b.grid import collect
    from l2b.report import accuracy_figure, separation_figure

    runs = collect(out)
    dest.mkdir(parents=True, exist_ok=True)
    drawn = [accuracy_figure(runs, dest / "accuracy.png"), separation_figure(runs, dest / "separation.png")]
    return [p for p in drawn if p is not None]
