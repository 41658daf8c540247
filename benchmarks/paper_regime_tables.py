"""The paper-regime benchmark's summaries: the main table (the memorisation benchmark's layout),
the ablations, the clean-set sweep with its crossover, and the figures (see paper_regime.py)."""

from __future__ import annotations

import statistics
from pathlib import Path

from memorisation_tables import paired
from paper_regime_grid import ABLATIONS, REGIME_NOISE, SWEEP_ROWS, sweep_row_dir
from results_md import fmt

TRAINS_ON_CLEAN = ["glc", "mlc", "distill", "ce+clean"]  # methods whose best-val epoch is biased


def ablation_rows(out: Path, grid_rows: list[dict]) -> list[dict]:
    """One row per (variant, noise): last / best-val epoch, and L2B (the grid's, same seeds) minus it."""
    from l2b.grid import group_runs

    l2b = group_runs(out / "grid")
    rows = []
    for name in ABLATIONS:
        for (method, noise), runs in sorted(group_runs(out / "ablations" / name).items()):
            last = [r["test_acc_last"] for r in runs]
            d = paired(l2b.get(("l2b", noise), []), runs, "test_acc_last")
            rows.append({"variant": name, "method": method, "noise": noise, "seeds": len(runs),
                         "last_mean": round(statistics.mean(last), 3),
                         "last_std": round(statistics.stdev(last), 3) if len(last) > 1 else 0.0,
                         "best_val_mean": round(statistics.mean(r["test_acc_at_best_val"] for r in runs), 3),
                         "l2b_minus": d})
    for r in grid_rows:  # the grid's own L2B is the "alpha, beta >= 0" / "sum" reference row
        if r["method"] == "l2b" and r["noise"] in {row["noise"] for row in rows}:
            rows.append({"variant": "l2b (alpha,beta>=0; sum)", "method": "l2b", "noise": r["noise"],
                         "seeds": r["seeds"], "last_mean": r["test_acc_last_mean"], "last_std": r["test_acc_last_std"],
                         "best_val_mean": r["test_acc_at_best_val_mean"], "l2b_minus": None})
    return rows


def sweep_rows(out: Path, per_classes: list[int], n_noisy: int, num_classes: int = 10) -> list[dict]:
    from l2b.grid import collect

    rows = []
    for row in SWEEP_ROWS:
        for pc in per_classes:
            runs = collect(sweep_row_dir(out, row, pc))
            if not runs:
                continue
            last = [r["test_acc_last"] for r in runs]
            rows.append({"method": row, "clean_per_class": pc, "clean": pc * num_classes,
                         "clean_fraction": round(pc * num_classes / n_noisy, 4), "seeds": len(runs),
                         "last_mean": round(statistics.mean(last), 3),
                         "last_std": round(statistics.stdev(last), 3) if len(last) > 1 else 0.0,
                         "best_val_mean": round(statistics.mean(r["test_acc_at_best_val"] for r in runs), 3),
                         "epoch_seconds": round(statistics.mean(r["epoch_seconds"] for r in runs), 3)})
    return rows


def crossover(rows: list[dict]) -> str | None:
    """One sentence a practitioner can act on: up to which clean fraction is the clean set better
    spent on L2B's meta-gradient, and from which on is a method that trains on the clean labels
    ahead of L2B by more than the seeds' spread (last epoch); where plain CE on the clean labels
    (alone, or beside the noisy set) overtakes L2B, if it does."""
    mean = {(r["method"], r["clean_fraction"]): r["last_mean"] for r in rows}
    std = {(r["method"], r["clean_fraction"]): r["last_std"] for r in rows}
    fractions = sorted({f for m, f in mean if m == "l2b"})
    if not fractions:
        return None
    pct = lambda f: f"{100 * f:g}%"  # noqa: E731

    def first_ahead(methods: list[str]) -> tuple[float, str] | None:
        for f in fractions:
            present = [m for m in methods if (m, f) in mean]
            if not present:
                continue
            best = max(present, key=lambda m: mean[(m, f)])
            if mean[(best, f)] - mean[("l2b", f)] > max(std[(best, f)], std[("l2b", f)]):
                return f, best
        return None

    trainers = [m for m in SWEEP_ROWS if m in TRAINS_ON_CLEAN or m == "ce-clean-only"]
    plain = ["ce-clean-only", "ce+clean"]
    any_ahead, plain_ahead = first_ahead(trainers), first_ahead(plain)
    span = f"{pct(fractions[0])} to {pct(fractions[-1])} of the noisy set"
    if any_ahead is None:
        last = fractions[-1]
        closest = max((m for m in trainers if (m, last) in mean), key=lambda m: mean[(m, last)], default=None)
        gap = ("" if closest is None else f" (at {pct(last)} the closest, {closest}, had {mean[(closest, last)]:.2f}% "
               f"against L2B's {mean[('l2b', last)]:.2f}%)")
        return (f"At every clean-set size measured ({span}) no method that trains on the clean labels beat L2B by "
                f"more than the seeds' spread{gap}: spend the clean set on L2B's meta-gradient.")
    f, best = any_ahead
    below = [g for g in fractions if g < f]
    text = (f"{'Up to ' + pct(below[-1]) + ' of the noisy set' if below else 'Even at ' + pct(f)}, "
            + ("spend the clean set on L2B's meta-gradient; from " + pct(f) + " on, " if below else "")
            + f"{best}, which trains on the clean labels, was ahead ({mean[(best, f)]:.2f}% vs L2B's "
            f"{mean[('l2b', f)]:.2f}% at {pct(f)})")
    if plain_ahead == any_ahead:
        text += "."
    elif plain_ahead is None:
        text += f"; plain CE on the clean labels (alone or with the noisy set) never overtook L2B up to {pct(fractions[-1])}."
    else:
        g, m = plain_ahead
        text += f"; plain CE overtook L2B from {pct(g)} ({m}: {mean[(m, g)]:.2f}% vs {mean[('l2b', g)]:.2f}%)."
    return text


def markdown_extra(rows: list[dict], ablations: list[dict], sweep: list[dict]) -> str:
    lines = ["**Selection bias.** glc, mlc, distill and ce+clean train on the clean set, so choosing their epoch "
             "by its accuracy is biased (their clean accuracy approaches 100%); the last epoch is the headline "
             "column, and their best-val numbers are not comparable with the others'.", ""]
    biased = [r for r in rows if r["method"] in TRAINS_ON_CLEAN and r["noise"] == REGIME_NOISE]
    if biased:
        lines += ["Best clean accuracy they selected on, " + REGIME_NOISE + ": " + ", ".join(
            f"{r['method']} {r.get('best_val_acc', float('nan')):.1f}%" for r in biased) + ".", ""]
    if ablations:
        noises = sorted({a["noise"] for a in ablations})
        cell = {(a["variant"], a["noise"]): a for a in ablations}
        variants = list(dict.fromkeys(a["variant"] for a in sorted(ablations, key=lambda a: a["variant"] != "l2b (alpha,beta>=0; sum)")))
        lines += ["#### The paper's ablations in this regime (Table 7, Fig. 4, Fig. 1a): last-epoch test accuracy (%)",
                  "", "| variant | " + " | ".join(f"{n} | L2B − it [min, max]" for n in noises) + " |",
                  "|---|" + "---|---|" * len(noises)]
        for v in variants:
            vals = []
            for n in noises:
                a = cell.get((v, n))
                d = None if a is None else a["l2b_minus"]
                vals.append("—" if a is None else fmt(a["last_mean"], a["last_std"]))
                vals.append("—" if d is None else f"{d['mean']:+.2f} [{d['min']:+.2f}, {d['max']:+.2f}]")
            lines.append(f"| {v} | " + " | ".join(vals) + " |")
        lines.append("")
    if sweep:
        fractions = sorted({s["clean_fraction"] for s in sweep})
        cell = {(s["method"], s["clean_fraction"]): s for s in sweep}
        lines += ["#### When is the clean set worth more as training data? (40% symmetric, the same noisy set; "
                  "last-epoch test accuracy %)", "",
                  "| method | " + " | ".join(f"{100 * f:g}% ({cell_size(sweep, f)})" for f in fractions) + " |",
                  "|---|" + "---|" * len(fractions)]
        for m in SWEEP_ROWS:
            vals = [fmt(cell[(m, f)]["last_mean"], cell[(m, f)]["last_std"]) if (m, f) in cell else "—"
                    for f in fractions]
            lines.append(f"| {m} | " + " | ".join(vals) + " |")
        sentence = crossover(sweep)
        if sentence:
            lines += ["", f"**Crossover:** {sentence}"]
        lines.append("")
    return "\n".join(lines) + "\n"


def cell_size(sweep: list[dict], fraction: float) -> str:
    return next(f"{s['clean']} clean" for s in sweep if s["clean_fraction"] == fraction)


def curves(out: Path, methods=("ce", "l2rw", "l2b"), noises=("symmetric:0.2", "symmetric:0.4")) -> dict:
    """Test accuracy per evaluated epoch, mean over seeds, for Fig. 2."""
    from l2b.grid import group_runs

    groups = group_runs(out / "grid")
    result = {}
    for noise in noises:
        for m in methods:
            runs = groups.get((m, noise))
            if not runs:
                continue
            epochs = [h["epoch"] for h in runs[0]["history"] if h.get("test_acc") is not None]
            acc = [statistics.mean(next(h["test_acc"] for h in r["history"] if h["epoch"] == e) for r in runs)
                   for e in epochs]
            result[f"{m}|{noise}"] = {"epoch": [e + 1 for e in epochs], "test_acc": [round(a, 3) for a in acc]}
    return result


def figures(dest: Path, ablations: list[dict], sweep: list[dict], curve: dict) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dest.mkdir(parents=True, exist_ok=True)
    made = []
    boot = [a for a in ablations if a["variant"].startswith("bootstrap-beta")]
    if boot:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for noise in sorted({a["noise"] for a in boot}):
            pts = sorted((float(a["variant"].rsplit("beta", 1)[1]), a["last_mean"]) for a in boot if a["noise"] == noise)
            line = ax.plot(*zip(*pts), "o-", label=f"bootstrap, {noise}")[0]
            ref = next((a for a in ablations if a["noise"] == noise and a["variant"].startswith("l2b")), None)
            if ref:
                ax.axhline(ref["last_mean"], ls="--", color=line.get_color(), label=f"L2B, {noise}")
        ax.set(xlabel="β (weight of the observed label)", ylabel="test accuracy %, last epoch",
               title="Fig. 1a: bootstrapping with a fixed β")
        ax.legend(fontsize=7)
        made.append(_save(fig, dest / "fig1a_bootstrap_beta.png"))
    if curve:
        noises = sorted({k.split("|")[1] for k in curve})
        fig, axes = plt.subplots(1, len(noises), figsize=(5 * len(noises), 3.5), squeeze=False)
        for ax, noise in zip(axes[0], noises):
            for key, c in curve.items():
                if key.endswith("|" + noise):
                    ax.plot(c["epoch"], c["test_acc"], label=key.split("|")[0])
            ax.set(xlabel="epoch", ylabel="test accuracy %", title=f"Fig. 2: {noise}")
            ax.legend(fontsize=8)
        made.append(_save(fig, dest / "fig2_test_accuracy_by_epoch.png"))
    if sweep:
        fig, ax = plt.subplots(figsize=(6, 4))
        for m in SWEEP_ROWS:
            pts = sorted((s["clean_fraction"] * 100, s["last_mean"]) for s in sweep if s["method"] == m)
            if pts:
                ax.plot(*zip(*pts), "o-", label=m, lw=2.5 if m == "l2b" else 1.2)
        ax.set_xscale("log")
        ax.set(xlabel="clean set, % of the noisy set", ylabel="test accuracy %, last epoch",
               title="Clean set: meta-data or training data? (40% symmetric)")
        ax.legend(fontsize=7)
        made.append(_save(fig, dest / "clean_fraction_sweep.png"))
    return made


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
