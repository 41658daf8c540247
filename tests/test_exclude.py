"""``--exclude FILE``: training again without the samples a (reviewed) label_issues.csv names."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from l2b.cli import main

from test_own_data import digits_npz, run, two_class_folder


def issue_rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def data_line(out: str) -> str:
    return next(t for t in out.splitlines() if t.startswith("data "))


def test_a_reviewed_label_issues_csv_leaves_its_samples_out_of_training(tmp_path, capsys):
    f = digits_npz(tmp_path / "mine.npz", flip=60)
    code, _, err = run(tmp_path, capsys, "--data", f"npz:{f}", "--method", "ce", "--epochs", "4")
    assert code == 0, err
    first = tmp_path / "run"
    assert main(["label-issues", str(first)]) == 0
    capsys.readouterr()
    rows = issue_rows(first / "label_issues.csv")[:25]  # the 25 the user confirmed, as they saved them
    reviewed = tmp_path / "reviewed.csv"
    with open(reviewed, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    before = np.load(first / "labels.npz")["train_index"]
    out = tmp_path / "again"
    assert main(["train", "--data", f"npz:{f}", "--model", "mlp", "--width", "16", "--epochs", "2", "--method", "ce",
                 "--exclude", str(reviewed), "--out", str(out), "--progress", "lines"]) == 0
    line = data_line(capsys.readouterr().out)
    assert "train 1372" in line and "25 training samples left out (--exclude)" in line
    after = np.load(out / "labels.npz")["train_index"]
    gone = sorted(int(r["index"]) for r in rows)
    np.testing.assert_array_equal(after, np.setdiff1d(before, gone))
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["exclude"] == str(reviewed.resolve())
    # the run is scored, and resumed, with the same samples left out, from another working directory too
    assert main(["label-issues", str(out)]) == 0
    assert not {int(r["index"]) for r in issue_rows(out / "label_issues.csv")} & set(gone)
    # the file edited since: the run's data changed, and resuming it is refused
    reviewed.write_text(reviewed.read_text().rsplit("\n", 2)[0] + "\n")
    assert main(["train", "--resume", str(out)]) == 2
    assert "the data changed since the run started" in capsys.readouterr().err


def test_drawn_clean_samples_named_leave_the_clean_set_too(tmp_path, capsys):
    f = digits_npz(tmp_path / "mine.npz", with_val=False)
    code, out, err = run(tmp_path, capsys, "--data", f"npz:{f}", "--method", "ce", "--val-per-class", "5")
    assert code == 0, err
    labels = np.load(tmp_path / "run" / "labels.npz")
    listed = tmp_path / "out.csv"
    listed.write_text("index,split\n" + "".join(f"{i},clean\n" for i in labels["val_index"][:3])
                      + "".join(f"{i},train\n" for i in labels["train_index"][:4]))
    code, out, err = run(tmp_path, capsys, "--data", f"npz:{f}", "--method", "ce", "--val-per-class", "5",
                         "--exclude", str(listed))
    assert code == 0, err
    assert "train 1343, clean 47" in data_line(out)  # 1,397 less the 50 drawn, less 4
    assert "4 training samples left out (--exclude), and 3 of the clean set" in data_line(out)
    again = np.load(tmp_path / "run" / "labels.npz")
    np.testing.assert_array_equal(again["val_index"], labels["val_index"][3:])  # the same draw, less those three


def test_image_files_are_named_by_their_paths(tmp_path, capsys):
    pytest.importorskip("PIL")
    two_class_folder(tmp_path / "imgs", {"train": 6, "val": 2})
    cat = tmp_path / "imgs" / "train" / "cat"
    listed = tmp_path / "imgs" / "drop.csv"
    listed.write_text(f"path\n{cat / '0.png'}\ntrain/cat/1.png\n")  # as label_issues.csv writes it, or relative
    code, out, err = run(tmp_path, capsys, "--data", f"folder:{tmp_path / 'imgs'}", "--method", "ce",
                         "--image-size", "8", "--workers", "0", "--exclude", str(listed))
    assert code == 0, err
    assert "train 10, clean 4" in data_line(out) and "2 training samples left out" in data_line(out)


@pytest.mark.parametrize("text, message", [
    ("name\n3\n", "no index column in its header (name); give a csv like label_issues.csv"),
    ("index\n3\nthree\n", "line 3: index 'three' is not a whole number"),
    ("index\n3\n5000\n", "line 3: index 5000 is outside the dataset's 1397 training samples (0..1396)"),
    ("index,split\n3,train\n4,test\n", "line 3: a test sample (4); only training samples can be left out"),
])
def test_a_bad_exclusion_list_is_one_line_naming_its_line(tmp_path, capsys, text, message):
    refused_in_one_line(tmp_path, capsys, "--exclude", text, message)


def refused_in_one_line(tmp_path, capsys, flag: str, text: str, message: str) -> None:
    """A list of ``text`` given to ``flag`` on one's own digits: one line saying ``message``, before any run."""
    f = digits_npz(tmp_path / "mine.npz")
    (tmp_path / "bad.csv").write_text(text)
    code, _, err = run(tmp_path, capsys, "--data", f"npz:{f}", "--method", "ce", flag, str(tmp_path / "bad.csv"))
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()


def test_exclusion_lists_that_name_nothing_trainable_are_refused(tmp_path, capsys):
    pytest.importorskip("PIL")
    two_class_folder(tmp_path / "imgs", {"train": 2, "val": 1})
    (tmp_path / "unknown.csv").write_text("path\ntrain/cat/9.png\n")
    code, _, err = run(tmp_path, capsys, "--data", f"folder:{tmp_path / 'imgs'}", "--method", "ce", "--image-size", "8",
                       "--workers", "0", "--exclude", str(tmp_path / "unknown.csv"))
    assert code == 2 and "line 2: 'train/cat/9.png' is not one of the training images" in err, err
    every = "".join(f"{i}\n" for i in range(4))
    (tmp_path / "all.csv").write_text("index\n" + every)
    code, _, err = run(tmp_path, capsys, "--data", f"folder:{tmp_path / 'imgs'}", "--method", "ce", "--image-size", "8",
                       "--workers", "0", "--exclude", str(tmp_path / "all.csv"))
    assert code == 2 and "leaves out every training sample" in err, err
    code, _, err = run(tmp_path, capsys, "--data", f"folder:{tmp_path / 'imgs'}", "--exclude", str(tmp_path / "none.csv"))
    assert code == 2 and "--exclude " in err and "none.csv: file not found" in err, err


def test_a_subset_run_keeps_its_subset_less_the_samples_named(tmp_path):
    from l2b.config import TrainConfig
    from l2b.trainer import train

    base = TrainConfig(data="digits", model="mlp", width=16, epochs=1, method="ce", train_subset=500,
                       out=str(tmp_path / "first"), progress="none")
    train(base)
    subset = np.load(tmp_path / "first" / "labels.npz")["train_index"]
    outside = np.setdiff1d(np.arange(1297), subset)[:3]  # named, but never in this run's subset
    (tmp_path / "drop.csv").write_text("index\n" + "".join(f"{i}\n" for i in [*subset[:7], *outside]))
    cfg = TrainConfig(**{**base.__dict__, "exclude": str(tmp_path / "drop.csv"), "out": str(tmp_path / "again")})
    train(cfg)
    np.testing.assert_array_equal(np.load(tmp_path / "again" / "labels.npz")["train_index"], subset[7:])


def test_cross_fit_folds_split_the_training_samples_the_run_kept(tmp_path):
    """A fold of ``label-issues --cross-fit`` holds out a fold of the run's own training samples,
    the ones left after the exclusion: the folds the scoring reads are the folds the runs held out."""
    from dataclasses import replace

    from l2b.config import TrainConfig
    from l2b.run_data import fold_positions, prepare_data

    (tmp_path / "drop.csv").write_text("index\n" + "".join(f"{i}\n" for i in range(0, 1297, 7)))
    cfg = TrainConfig(data="digits", method="ce", train_subset=400, exclude=str(tmp_path / "drop.csv"))
    run = prepare_data(cfg, needs_clean=False)
    assert run.excluded[0] > 0 and not set(run.train_idx) & set(range(0, 1297, 7))
    for fold in (1, 2, 3):
        held = fold_positions(run.y_noisy, fold, 3, cfg.seed)
        part = prepare_data(replace(cfg, holdout=f"{fold}/3"), needs_clean=False)
        np.testing.assert_array_equal(part.train_idx, np.delete(run.train_idx, held))
