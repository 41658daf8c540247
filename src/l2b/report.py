"""``l2b report RUN_DIR|GRID_DIR``: figures and a self-contained report.html a researcher reads.

Figures (PNG, also embedded in the HTML):
- ``accuracy.png``: test accuracy vs epoch per method and noise (paper Fig. 2), mean over seeds,
  one colour and line style per method, L2B thick and black;
- ``separation.png``: mean alpha and beta on clean vs corrupted samples over epochs, per method;
- ``weights.png``: alpha and beta on clean vs corrupted samples (paper Fig. 3's finding);
- ``alpha_minus_beta.png``: alpha - beta split by "pseudo-label = true label";
- ``memorisation.png``: agreement with the training labels against clean accuracy over epochs, per
  method, with the epoch of each run's early_model.pt (``l2b.memorisation``);
- ``normalisations.png``: accuracy per normalisation (Fig. 4), when runs differ in --normalize;
- ``bootstrap_beta.png``: bootstrapping's accuracy vs its beta (Fig. 1a), when runs differ in it;
- ``transition.png``: the realised noise transition matrix.
The tables hold the noise-detection metrics of every run with weights (``l2b.detect``).
"""

from __future__ import annotations

import base64
import html
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from .grid import collect
from .config import labels_as_given
from .rundir import read_npz, writable_dir
from .runlock import atomic_write
from .detect import detection_metrics, roc_auc


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("l2b report needs matplotlib: pip install 'l2b[report]'") from None
    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


# One look per method, the same in every figure: 11 distinct colours (Okabe-Ito and tab20 picks)
# times four line styles; L2B is drawn thick and black on top of the others.
_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#332288", "#7f7f7f",
            "#8c564b", "#bcbd22", "#17becf", "#9467bd"]
_STYLES = ["-", "--", "-.", ":"]


def method_style(method: str, methods: list[str]) -> dict:
    """matplotlib keyword arguments of ``method``'s line among ``methods`` (sorted, so the look of a
    method does not depend on the order of the runs)."""
    if method == "l2b":
        return {"color": "black", "linestyle": "-", "linewidth": 2.6, "zorder": 10}
    others = [m for m in sorted(set(methods)) if m != "l2b"]
    i = others.index(method) if method in others else len(others)
    return {"color": _COLOURS[i % len(_COLOURS)], "linestyle": _STYLES[(i // 2) % len(_STYLES)] if i else "-",
            "linewidth": 1.4, "zorder": 2}


def _mean_curve(seeds: list[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, mean over seeds) of ``key`` at the epochs where every seed has a value."""
    length = min(len(s) for s in seeds)
    epochs = [e for e in range(length) if all(s[e].get(key) is not None for s in seeds)]
    return np.array(epochs) + 1, np.array([np.mean([s[e][key] for s in seeds]) for e in epochs])


def _legend_outside(fig, axes) -> None:
    """One legend for every panel, right of the figure (each label once)."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    fig.legend(list(seen.values()), list(seen), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               frameon=False)


def _panels(count: int, width: float, height: float, columns: int = 3):
    """A grid of ``count`` panels, at most ``columns`` wide; the unused ones hidden."""
    plt = _plt()
    cols = min(count, columns)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:count])


def accuracy_figure(runs, path: Path, key: str = "test_acc") -> Path:
    """Test accuracy (or, for data without a test set, ``key`` = "val_acc": the clean set's)
    against epoch, one panel per noise setting, mean over seeds; with ``--test-every`` the points
    are the epochs where the test set was scored."""
    curves = defaultdict(list)
    for r in runs:
        curves[(r["method"], r["noise"])].append(r["history"])
    noises = sorted({n for _, n in curves})
    methods = sorted({m for m, _ in curves})
    fig, axes = _panels(len(noises), 4.6, 3.6)
    for ax, noise in zip(axes, noises):
        seeds_here = sorted({len(curves[(m, noise)]) for m in methods if (m, noise) in curves})
        for method in methods:
            if (method, noise) not in curves:
                continue
            x, y = _mean_curve(curves[(method, noise)], key)
            ax.plot(x, y, label=method, marker="o", markersize=2.5, **method_style(method, methods))
        seeds = "/".join(map(str, seeds_here))
        own = any(_truth_unknown(r) for r in runs if r["noise"] == noise)
        setting = "your own labels, no noise injected" if own else f"noise {noise}"
        ax.set(title=f"{setting} (mean of {seeds} seed{'s' if seeds != '1' else ''})", xlabel="epoch",
               ylabel="test accuracy (%)" if key == "test_acc" else "clean-set accuracy (%)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    _legend_outside(fig, axes)
    return _save(fig, path)


def _headline_runs(runs) -> tuple[str, dict[str, list[dict]]]:
    """The noise setting a one-setting figure draws (40% symmetric, the paper's headline setting,
    when present, else the one most of ``runs`` share) and its runs by method, l2b first."""
    noises = {r["noise"] for r in runs}
    noise = "symmetric:0.4" if "symmetric:0.4" in noises else max(
        noises, key=lambda n: (sum(r["noise"] == n for r in runs), n))
    by = defaultdict(list)
    for r in runs:
        if r["noise"] == noise:
            by[r["method"]].append(r)
    return noise, {m: by[m] for m in sorted(by, key=lambda m: (m != "l2b", m))}


def separation_figure(runs, path: Path) -> Path | None:
    """The meta-learned weights over epochs: mean alpha and beta on clean vs corrupted samples
    (one panel per method with weights, at 40% symmetric noise, else the setting most runs share);
    None without."""
    weighted = [r for r in runs if any(h.get("alpha_clean") is not None and h.get("alpha_noisy") is not None
                                       for h in r["history"])]
    if not weighted:
        return None
    noise, by = _headline_runs(weighted)
    fig, axes = _panels(len(by), 4.2, 3.4)
    for ax, method in zip(axes, by):
        for key, colour, style in (("alpha_clean", "#0072B2", "-"), ("alpha_noisy", "#0072B2", "--"),
                                   ("beta_clean", "#D55E00", "-"), ("beta_noisy", "#D55E00", "--")):
            x, y = _mean_curve([r["history"] for r in by[method]], key)
            if len(x):
                label = key.replace("_clean", " (clean)").replace("_noisy", " (corrupted)").replace("alpha", "α").replace("beta", "β")
                ax.plot(x, y, color=colour, linestyle=style, label=label, marker="o", markersize=2)
        ax.set(title=f"{method}, {noise} (n={len(by[method])})", xlabel="epoch", ylabel="mean weight")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    _legend_outside(fig, axes)
    return _save(fig, path)


def memorisation_figure(runs, path: Path) -> Path | None:
    """How often each method's model agrees with its training labels against how often it is right
    on the held-out clean set, over epochs (mean over seeds, at the setting the separation figure
    takes), and each seed's early epoch (the last before the gap between the two rose: the model of
    early_model.pt); None where no run measured it."""
    measured = [r for r in runs if any(h.get("train_fit") is not None for h in r["history"])]
    if not measured:
        return None
    noise, by = _headline_runs(measured)
    fig, axes = _panels(len(by), 4.2, 3.4)
    for ax, method in zip(axes, by):
        histories = [r["history"] for r in by[method]]
        for key, colour, label in (("train_fit", "#D55E00", "agrees with its training labels"),
                                   ("val_acc", "#0072B2", "right on the clean set")):
            x, y = _mean_curve(histories, key)
            ax.plot(x, y, color=colour, label=label, marker="o", markersize=2)
        for i, r in enumerate(by[method]):
            if r.get("early_epoch", -1) >= 0:
                ax.axvline(r["early_epoch"] + 1, color="grey", linestyle=":", linewidth=1,
                           label="early_model.pt (each seed)" if i == 0 else None)
        ax.set(title=f"{method}, {noise} (n={len(by[method])})", xlabel="epoch", ylabel="%")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    _legend_outside(fig, axes)
    return _save(fig, path)


def weights_figure(w, path: Path, truth_unknown: bool = False) -> Path:
    """Histograms of alpha and beta, clean against corrupted samples (all samples alike where which
    labels are wrong is unknown: the user's own labels)."""
    plt = _plt()
    noisy = w["is_noisy"].astype(bool)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key in zip(axes, ("alpha", "beta")):
        values = w[key]
        bins = np.linspace(0, max(values.max(), 1e-12), 40)
        ax.hist(values[~noisy], bins=bins, alpha=0.6, density=True,
                label=f"{'all samples' if truth_unknown else 'clean'} (mean {values[~noisy].mean():.2e})")
        if noisy.any():
            ax.hist(values[noisy], bins=bins, alpha=0.6, label=f"corrupted (mean {values[noisy].mean():.2e})",
                    density=True)
        ax.set(title=f"{key} of the training samples" if truth_unknown else f"{key} on clean vs corrupted samples",
               xlabel=key, ylabel="density")
        ax.legend(fontsize=8)
    return _save(fig, path)


def alpha_minus_beta_figure(w, path: Path) -> tuple[Path, dict]:
    plt = _plt()
    diff = w["alpha"] - w["beta"]
    right = w["pseudo_labels"] == w["true"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    groups = [diff[right], diff[~right]]
    ax.boxplot([g if len(g) else np.zeros(1) for g in groups], showfliers=False)
    ax.set_xticks([1, 2], [f"pseudo = true (n={right.sum()})", f"pseudo ≠ true (n={(~right).sum()})"])
    ax.set(ylabel="alpha - beta", title="alpha - beta by pseudo-label correctness")
    ax.axhline(0, color="grey", lw=0.8)
    stats = {"mean_when_pseudo_right": float(diff[right].mean()) if right.any() else None,
             "mean_when_pseudo_wrong": float(diff[~right].mean()) if (~right).any() else None,
             # how well a low alpha - beta (trusting the pseudo-label) marks a CORRECT pseudo-label
             # on corrupted samples, where following it fixes the label
             "auc_beta_over_alpha_for_correct_pseudo_on_corrupted": None}
    auc = roc_auc(-diff[w["is_noisy"].astype(bool)], right[w["is_noisy"].astype(bool)])
    if np.isfinite(auc):  # no corrupted sample, or all of one kind: nothing to rank
        stats["auc_beta_over_alpha_for_correct_pseudo_on_corrupted"] = auc
    return _save(fig, path), stats


def option_figure(runs, key: str, path: Path, title: str, method: str | None = None) -> Path | None:
    """Best-val test accuracy against a setting that varies across runs (None if it doesn't)."""
    plt = _plt()
    by = defaultdict(list)
    for r in runs:
        if method and r["method"] != method:
            continue
        value = r["options"].get(key)  # the option the method ran with
        if value is None:
            continue
        by[(r["noise"], value)].append(r["test_acc_at_best_val"])
    if len({v for _, v in by}) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for noise in sorted({n for n, _ in by}):
        values = sorted({v for n, v in by if n == noise}, key=str)
        ax.plot([str(v) for v in values], [np.mean(by[(noise, v)]) for v in values], marker="o", label=noise)
    ax.set(title=title, xlabel=key, ylabel="test acc at best val (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def transition_figure(transition: np.ndarray, path: Path, title: str) -> Path:
    plt = _plt()
    k = len(transition)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    im = ax.imshow(transition, cmap="viridis", vmin=0, vmax=1)
    ax.set(title=title, xlabel="noisy label", ylabel="true class")
    if k <= 12:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{transition[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if transition[i, j] < 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def write_report(target: str | Path, out: str | Path | None = None) -> Path:
    """Write the PNGs and report.html of ``target`` (a run or a grid directory) into ``out``
    (default: ``target`` itself)."""
    target = Path(target)
    if target.is_file():
        raise ValueError(f"{target}: a file; give the directory of a run or a grid (e.g. {target.parent})")
    runs = collect(target)
    diverged = [r for r in collect(target, finished_only=False) if "diverged" in r]
    if not runs and diverged:
        raise ValueError(f"{target}: every run below it diverged ("
                         + "; ".join(f"{r['dir']}: {r['diverged']['what']} NaN/inf at epoch {r['diverged']['epoch'] + 1}"
                                     for r in diverged[:3]) + "); nothing to plot")
    if not runs:
        raise FileNotFoundError(f"{target}: no finished run (metrics.json) below it")
    dest = writable_dir(Path(out) if out is not None else target)
    tested = any(r["test_acc_last"] is not None for r in runs)  # your own data may have no test set
    figures: list[tuple[str, Path]] = [("Test accuracy per epoch" if tested else "Clean-set accuracy per epoch (no test set)",
                                        accuracy_figure(runs, dest / "accuracy.png", "test_acc" if tested else "val_acc"))]
    separation = separation_figure(runs, dest / "separation.png")
    if separation is not None:
        figures.append(("α and β on clean vs corrupted samples over epochs", separation))
    memorisation = memorisation_figure(runs, dest / "memorisation.png")
    if memorisation is not None:
        figures.append(("Agreement with the training labels against clean accuracy (when memorising began)",
                        memorisation))
    detection_rows, extra = [], {}
    weighted = [r for r in runs if (r["dir"] / "weights.npz").is_file()]
    meta = [r for r in weighted if r["method"] in ("l2b", "l2rw")] or weighted
    pick = max(meta, key=lambda r: (r["method"] == "l2b", r["noise"])) if meta else None  # its weights are drawn
    for r in weighted:
        w = read_npz(r["dir"] / "weights.npz", need=("alpha", "beta", "is_noisy"))
        if w["is_noisy"].any():
            detection_rows.append((r, detection_metrics(w["alpha"], w["beta"], w["is_noisy"])))
        if r is pick:
            picked = w
    if pick is not None:
        w, unknown = picked, _truth_unknown(pick)
        figures.append((f"Weights of {pick['method']} ({pick['noise']}, seed {pick['seed']})",
                        weights_figure(w, dest / "weights.png", unknown)))
        if not unknown:  # pseudo-label correctness needs the true labels
            fig, extra = alpha_minus_beta_figure(w, dest / "alpha_minus_beta.png")
            figures.append(("alpha − beta against pseudo-label correctness", fig))
    for key, name, title, method in (("normalize", "normalisations.png", "Normalisation of the weights (Fig. 4)", "l2b"),
                                     ("beta", "bootstrap_beta.png", "Bootstrapping's beta (Fig. 1a)", "bootstrap")):
        fig = option_figure(runs, key, dest / name, title, method)
        if fig is not None:
            figures.append((title, fig))
    labels = runs[0]["dir"] / "labels.npz"
    if labels.is_file() and runs[0]["noise"] != "none":  # without injected noise the matrix is the identity
        t = read_npz(labels, need=("transition",))["transition"]
        figures.append((f"Realised noise ({runs[0]['noise']})",
                        transition_figure(t, dest / "transition.png", f"realised transition, {runs[0]['noise']}")))
    for where in dict.fromkeys([dest, target]):  # written by `l2b label-issues --show N [--out]`
        if (where / "label_issues.png").is_file():
            figures.append(("Top suspected label issues (given → suggested)", where / "label_issues.png"))
            break
    page = _html(target, runs, figures, detection_rows, extra, diverged, any(map(_truth_unknown, runs)))
    atomic_write(dest / "report.html", lambda tmp: tmp.write_text(page))
    return dest / "report.html"


def _truth_unknown(run: dict) -> bool:
    """A run on the user's own labels with no injected noise: which labels are wrong is unknown."""
    return labels_as_given(run["config"].get("data", ""), run["noise"])


def _num(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def _html(target, runs, figures, detection_rows, extra, diverged=(), own=False) -> str:
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>l2b report: {esc(str(target))}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}</style></head><body>",
             f"<h1>l2b report</h1><p>{esc(str(target))}: {len(runs)} run(s).</p>",
             "<h2>Results</h2><table><tr><th>method</th><th>noise</th><th>seed</th><th>test acc last</th>"
             "<th>test acc at best val</th><th>best val</th><th>s / epoch</th></tr>"]
    biased = False  # a meta set selected from the noisy data chose the best epoch: its own accuracy
    for r in sorted(runs, key=lambda r: (r["method"], r["noise"], r["seed"])):
        mark = "*" if r.get("meta_set") else ""  # the selections of --meta-set select
        biased = biased or bool(mark)
        parts.append(f"<tr><td>{esc(r['method'])}</td><td>{esc(r['noise'])}</td><td>{r['seed']}</td>"
                     f"<td>{_num(r['test_acc_last'])}</td><td>{_num(r['test_acc_at_best_val'])}{mark}</td>"
                     f"<td>{_num(r['best_val_acc'])}{mark}</td><td>{_num(r['epoch_seconds'])}</td></tr>")
    parts.append("</table>")
    if biased:
        parts.append("<p>* measured on the meta set selected from the noisy training data (no verified clean "
                     "set): biased, since the model chose it; the test accuracy at the last epoch is the number to "
                     "report.</p>")
    if own:
        parts.append("<p>Runs on your own labels with no noise injected: which labels are wrong is not known here, so "
                     "the report draws no noise-detection figures for them. <code>l2b label-issues RUN --show 32</code> "
                     "lists the labels the run believes wrong, and this report shows their picture when it is "
                     "in the run directory.</p>")
    if diverged:
        parts.append("<h2>Diverged runs</h2><p>Stopped because the loss or the parameters became NaN/inf; "
                     "left out of the figures.</p><ul>")
        parts += [f"<li>{esc(str(r['dir']))}: {esc(r['diverged']['what'])} at epoch {r['diverged']['epoch'] + 1}</li>"
                  for r in diverged]
        parts.append("</ul>")
    if detection_rows:
        parts.append("<h2>Noise detection from the learned weights</h2><p>Score: 1 − α/(α+β); flagged when "
                     "α/(α+β) &lt; 0.5.</p><table><tr><th>method</th><th>noise</th><th>seed</th>"
                     "<th>ROC-AUC α/(α+β)</th><th>ROC-AUC α</th><th>precision</th><th>recall</th></tr>")
        for r, m in detection_rows:
            parts.append(f"<tr><td>{esc(r['method'])}</td><td>{esc(r['noise'])}</td><td>{r['seed']}</td>"
                         f"<td>{m['auc_trust']:.3f}</td><td>{m['auc_alpha']:.3f}</td>"
                         f"<td>{m['precision']:.3f}</td><td>{m['recall']:.3f}</td></tr>")
        parts.append("</table>")
    if extra:
        parts.append("<h2>α − β and the pseudo-label</h2><pre>" + esc(json.dumps(extra, indent=2)) + "</pre>")
    for title, path in figures:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<h2>{esc(title)}</h2><img alt='{esc(path.name)}' data-file='{esc(path.name)}' "
                     f"src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
