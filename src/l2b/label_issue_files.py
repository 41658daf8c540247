"""The files ``l2b label-issues`` writes: label_issues.csv (a row per flagged sample, most
suspect first) and label_issues.png (the top suspects, each with given -> suggested label)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .metaset import class_name
from .runlock import atomic_write


def issue_rows(issues, index, split, given, classes: list[str], paths, votes=None) -> list[dict]:
    """The flagged samples, most suspect first, as label_issues.csv lists them (a dict a row);
    ``paths`` and ``votes`` (annotators' votes, "cat 2, dog 1") per scored sample where there are."""
    name = lambda c: classes[c] if 0 <= c < len(classes) else ""  # noqa: E731
    agreement = issues.agreement
    rows = []
    for i in issues.indices:
        g, s = int(given[i]), int(issues.suggested[i])
        row = {"index": int(index[i]), "split": str(split[i]), "given_label": g, "given_class": name(g),
               "suggested_label": s, "suggested_class": name(s), "confidence": float(issues.confidence[i]),
               "pseudo_agreement": None if agreement is None or i >= len(agreement) else float(agreement[i]),
               "score": float(issues.score[i])}
        rows.append(row | ({"path": paths[i]} if paths else {}) | ({"votes": votes[i]} if votes else {}))
    return rows


CSV_DIGITS = {"confidence": 4, "pseudo_agreement": 2, "score": 6}


def write_csv(path: Path, rows: list[dict], with_paths: bool, with_votes: bool = False) -> None:
    columns = ["index", "split", "given_label", "given_class", "suggested_label", "suggested_class", "confidence",
               "pseudo_agreement", "score"] + (["path"] if with_paths else []) + (["votes"] if with_votes else [])
    text = lambda k, v: "" if v is None else f"{v:.{CSV_DIGITS[k]}f}" if k in CSV_DIGITS else v  # noqa: E731

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            writer.writerows([text(k, row[k]) for k in columns] for row in rows)

    atomic_write(path, write)


def sample_image(prep, i: int) -> np.ndarray:
    """Training image ``i`` of the dataset as H x W (x 3) for display."""
    from .data import FileDataset

    if isinstance(prep.ds, FileDataset):
        from .data.images import read_rgb

        # as training reads it (16-bit grayscale, orientation); a small picture needs no more than 256 px
        return np.asarray(read_rgb(prep.ds.train[i][0], 256, prep.ds.own_photos))
    x = prep.ds.x_train[i].numpy()
    return x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0)


def show_suspects(path: Path, issues, index, split, given, classes, top: int, run: Path, prep,
          data: str | None) -> tuple[Path, int]:
    """label_issues.png: the top suspects, each with given -> suggested label and its score; the
    picture's path and how many it shows."""
    if prep is None:
        from .trainer import load_run

        prep = load_run(run, data=data)[1]
    chosen = issues.indices[:top]
    if not len(chosen):
        chosen = np.argsort(-issues.score, kind="stable")[:top]  # nothing flagged: the most suspect anyway
    name = lambda c: class_name(classes, c, quote=False)  # noqa: E731
    titles = [f"{name(int(given[i]))} → {name(int(issues.suggested[i]))}\nscore {issues.score[i]:.2f}"
              + (" (clean)" if split[i] == "clean" else "") for i in chosen]
    fig = suspects_figure([sample_image(prep, int(index[i])) for i in chosen], titles,
                          f"top {len(chosen)} suspected label issues: given → suggested")
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path, len(chosen)


def suspects_figure(images: list[np.ndarray], titles: list[str], heading: str):
    """A grid of images (8 a row), each under its (two-line) title."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("--show needs matplotlib: pip install 'l2b[report]'") from None
    cols = max(1, min(8, len(images)))
    rows = max(1, -(-len(images) // cols))
    # constrained layout keeps each title clear of the row above
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.4 * rows + 0.4), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, title in zip(axes.flat, images, titles):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.set_title(title, fontsize=7)
    fig.suptitle(heading, fontsize=9)
    return fig
