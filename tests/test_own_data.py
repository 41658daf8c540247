"""Training on your own labels: no noise injected unless asked, the data's own clean set used by
default, a clean set drawn from unverified labels warned about, and one line that says it all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from l2b.cli import main
from l2b.config import TrainConfig


def digits_npz(path: Path, with_val: bool = True, flip: int = 0) -> Path:
    """The real digits as an npz of one's own: 8x8 uint8 images, with a clean set of 10 per class
    when ``with_val``; ``flip`` training labels moved to the next class (the user's own mistakes)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images * 16).clip(0, 255).astype(np.uint8)
    y = d.target.astype(np.int64)
    rng = np.random.Generator(np.random.PCG64(0))
    order = rng.permutation(len(y))
    test, val, train = order[:300], order[300:400], order[400:]
    y_train = y[train].copy()
    y_train[:flip] = (y_train[:flip] + 1) % 10
    arrays = dict(x_train=x[train], y_train=y_train, x_test=x[test], y_test=y[test])
    if with_val:
        arrays.update(x_val=x[val], y_val=y[val])
    np.savez(path, **arrays)
    return path


def run(tmp_path, capsys, *flags: str):
    code = main(["train", "--model", "mlp", "--width", "16", "--epochs", "1", "--batch-size", "128",
                 "--out", str(tmp_path / "run"), "--overwrite", "--progress", "lines", *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_defaults_resolve_by_whose_labels_they_are():
    assert TrainConfig().noise == "symmetric:0.4" and TrainConfig().val_per_class == 10  # research data
    for data in ("npz:x.npz", "folder:imgs", "isic2019:d", "clothing1m:d"):
        cfg = TrainConfig(data=data)
        assert cfg.noise == "none" and cfg.val_per_class is None
    assert TrainConfig(data="npz:x.npz", noise="symmetric:0.2").noise == "symmetric:0.2"  # asked by name
    cfg = TrainConfig(val_total=50)  # --val-total alone is not "both"
    assert cfg.val_per_class is None
    cfg.validate()


def test_own_npz_trains_on_its_labels_with_its_clean_set_and_says_so(tmp_path, capsys):
    f = digits_npz(tmp_path / "mine.npz", flip=40)
    code, out, err = run(tmp_path, capsys, "--data", f"npz:{f}", "--method", "l2b")
    assert code == 0, err
    line = next(t for t in out.splitlines() if t.startswith("data "))
    assert "train 1397, clean 100 (the dataset's own clean set), test 300" in line
    assert "no noise injected (your own labels as given)" in line
    labels = np.load(tmp_path / "run" / "labels.npz")
    assert np.array_equal(labels["noisy"], np.load(f)["y_train"])  # nothing injected
    assert len(labels["val_index"]) == 0  # no clean sample taken out of the training labels
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["config"]["noise"] == "none" and saved["data"]["clean_val"] == 100


def test_injected_noise_on_own_labels_is_named_in_the_line(tmp_path, capsys):
    f = digits_npz(tmp_path / "mine.npz")
    code, out, _ = run(tmp_path, capsys, "--data", f"npz:{f}", "--method", "ce", "--noise", "symmetric:0.4")
    assert code == 0
    assert "noise symmetric:0.4 injected on top of your own labels" in out


def test_clean_set_drawn_from_own_labels_is_warned_about(tmp_path, capsys):
    f = digits_npz(tmp_path / "mine.npz", with_val=False)
    code, _, err = run(tmp_path, capsys, "--data", f"npz:{f}", "--method", "l2b")
    assert code == 2 and "needs a clean (verified) set" in err and "--val-per-class K" in err
    code, out, err = run(tmp_path, capsys, "--data", f"npz:{f}", "--method", "l2b", "--val-total", "50")
    assert code == 0, err
    assert "inherits their errors" in err and "clean 50 (drawn from your training labels, 50 in all, unverified)" in out
    f = digits_npz(tmp_path / "mine.npz", with_val=True)
    code, _, err = run(tmp_path, capsys, "--data", f"npz:{f}", "--method", "l2b", "--val-per-class", "5")
    assert code == 0 and "own clean set (npz: x_val and y_val) is NOT used" in err


def test_resumed_run_says_where_it_continues(tmp_path, capsys):
    from l2b.train import train

    cfg = TrainConfig(data="digits", model="mlp", width=16, epochs=3, method="ce", out=str(tmp_path / "run"),
                      progress="lines")
    train(cfg, stop_after_epoch=0)
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0
    assert "resuming at epoch 2/3" in capsys.readouterr().out


def test_folder_val_is_used_by_default(tmp_path, capsys):
    pytest.importorskip("PIL")
    from PIL import Image

    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        for c, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            for i in range(n):
                (tmp_path / "imgs" / split / c).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (12, 12), color).save(tmp_path / "imgs" / split / c / f"{i}.png")
    code, out, err = run(tmp_path, capsys, "--data", f"folder:{tmp_path / 'imgs'}", "--method", "l2b",
                         "--image-size", "8", "--workers", "0")
    assert code == 0, err
    assert "train 12, clean 4 (the dataset's own clean set), test 4; no noise injected" in out
