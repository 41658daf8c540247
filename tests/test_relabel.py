"""``--relabel FILE``: training again with the labels a list names corrected, from a reviewed
label_issues.csv (its suggestions accepted) or a list of one's own."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from l2b.cli import main

from test_exclude import data_line, issue_rows, refused_in_one_line
from test_own_data import digits_npz, run, two_class_folder


def _state(out):
    return torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]


def test_a_reviewed_label_issues_csv_corrects_the_labels_it_names(tmp_path, capsys):
    """The top suspects' suggestions accepted: the run is, to the bit, the run on an npz whose
    labels were corrected in the file; it is scored and resumed with them, and an edited list is
    refused as changed data."""
    f = digits_npz(tmp_path / "mine.npz", flip=60)
    code, _, err = run(tmp_path, capsys, "--data", f"npz:{f}", "--method", "l2b", "--epochs", "4")
    assert code == 0, err
    assert main(["label-issues", str(tmp_path / "run")]) == 0
    assert "next: review it from the top, then train again without the samples you confirm wrong (--exclude FILE) " \
           "or with the labels you correct (--relabel FILE" in capsys.readouterr().out
    rows = issue_rows(tmp_path / "run" / "label_issues.csv")[:30]
    reviewed = tmp_path / "reviewed.csv"
    with open(reviewed, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    flags = ["--data", f"npz:{f}", "--model", "mlp", "--width", "16", "--epochs", "2", "--method", "l2b",
             "--progress", "lines"]
    assert main(["train", *flags, "--relabel", str(reviewed), "--out", str(tmp_path / "fixed")]) == 0
    line = data_line(capsys.readouterr().out)
    assert "30 labels corrected (--relabel)" in line and "train 1397, clean 100" in line
    arrays = dict(np.load(f))
    positions = np.array([int(r["index"]) for r in rows])
    assert (arrays["y_train"][positions] != [int(r["suggested_label"]) for r in rows]).all()
    arrays["y_train"][positions] = [int(r["suggested_label"]) for r in rows]
    np.savez(tmp_path / "corrected.npz", **arrays)
    flags[1] = f"npz:{tmp_path / 'corrected.npz'}"
    assert main(["train", *flags, "--out", str(tmp_path / "in-file")]) == 0
    capsys.readouterr()
    a, b = _state(tmp_path / "fixed"), _state(tmp_path / "in-file")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "fixed" / "config.json").read_text())["config"]["relabel"] == str(reviewed.resolve())
    assert main(["label-issues", str(tmp_path / "fixed")]) == 0  # scored with the corrected labels as given
    given = {int(r["index"]): int(r["given_label"]) for r in issue_rows(tmp_path / "fixed" / "label_issues.csv")}
    assert all(given[i] == arrays["y_train"][i] for i in set(given) & set(positions.tolist()))
    reviewed.write_text(reviewed.read_text().rsplit("\n", 2)[0] + "\n")  # one row taken back
    assert main(["train", "--resume", str(tmp_path / "fixed")]) == 2
    assert "the data changed since the run started" in capsys.readouterr().err


def test_ones_own_list_by_path_with_class_names_and_rows_kept_as_given(tmp_path, capsys):
    """A folder's images named by path (as label_issues.csv writes it, or relative to the list),
    labels as class names; a row with an empty label was reviewed and is right: it keeps its own."""
    pytest.importorskip("PIL")
    from l2b.data import load_dataset

    two_class_folder(tmp_path / "imgs", {"train": 4, "val": 1})
    cat = tmp_path / "imgs" / "train" / "cat"
    listed = tmp_path / "imgs" / "fix.csv"
    listed.write_text(f"path,label\n{cat / '0.png'},dog\ntrain/cat/1.png,dog\ntrain/cat/2.png,cat\ntrain/dog/0.png,\n")
    code, out, err = run(tmp_path, capsys, "--data", f"folder:{tmp_path / 'imgs'}", "--method", "ce",
                         "--image-size", "8", "--workers", "0", "--relabel", str(listed))
    assert code == 0, err
    assert "2 labels corrected (--relabel), 2 named there kept theirs" in data_line(out)
    labels = np.load(tmp_path / "run" / "labels.npz")
    ds = load_dataset(f"folder:{tmp_path / 'imgs'}")
    expected = np.array([y for _, y in ds.train])
    expected[[0, 1]] = 1  # cat/0.png, cat/1.png -> dog
    np.testing.assert_array_equal(labels["noisy"], expected[labels["train_index"]])


@pytest.mark.parametrize("text, message", [
    ("index\n3\n", "no label column (label, class, suggested_class, suggested_label) in its header (index)"),
    ("index,label\n3,7\n4,seven\n", "line 3: label 'seven' is not a class of the dataset (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)"),
    ("index,label\n3,7\n4,10\n", "line 3: label '10' is not a class of the dataset"),
    ("index,label\n3,7\n3,2\n", "line 3: names training sample 3 again, with another label ('7', then '2')"),
    ("index,suggested_label\n3,one\n", "line 2: suggested_label 'one' is not a class of the dataset"),
    ("index,suggested_label,suggested_class\n3,2,2\n5,,4\n4,2,7\n",
     "line 4: suggested_class '7' (class 7) but suggested_label 2; edit both alike, or give the right class in a column label"),
    ("index,split,label\n3,train,1\n4,test,1\n", "line 3: a test sample (4); only training samples can be relabelled"),
    ("index,label\n5000,1\n", "line 2: index 5000 is outside the dataset's 1397 training samples"),
])
def test_a_bad_relabel_list_is_one_line_naming_its_line(tmp_path, capsys, text, message):
    refused_in_one_line(tmp_path, capsys, "--relabel", text, message)


def test_under_injected_noise_it_corrects_the_labels_given_and_never_the_true_ones(tmp_path, capsys):
    """On a research dataset (or one's own with noise injected) the list corrects the noisy labels
    the run trains on, after the same noise: the true labels, the clean set and every other label
    are the run's without the list. A clean sample there carries its true label: naming it is refused."""
    from l2b.config import TrainConfig
    from l2b.run_data import prepare_data

    cfg = TrainConfig(data="digits", method="ce", noise="symmetric:0.4")
    before = prepare_data(cfg, needs_clean=False)
    wrong = np.flatnonzero(before.y_true != before.y_noisy)[:5]
    positions = before.train_idx[wrong]
    (tmp_path / "fix.csv").write_text("index,label\n" + "".join(
        f"{i},{y}\n" for i, y in zip(positions, before.y_true[wrong])) + f"{before.train_idx[0]},\n")
    after = prepare_data(TrainConfig(**{**cfg.__dict__, "relabel": str(tmp_path / "fix.csv")}), needs_clean=False)
    np.testing.assert_array_equal(after.train_idx, before.train_idx)
    np.testing.assert_array_equal(after.val_idx, before.val_idx)
    np.testing.assert_array_equal(after.y_true, before.y_true)
    expected = before.y_noisy.copy()
    expected[wrong] = before.y_true[wrong]
    np.testing.assert_array_equal(after.y_noisy, expected)
    assert after.relabelled == (5, 1) and after.noise_rate < before.noise_rate
    (tmp_path / "clean.csv").write_text(f"index,label\n{before.val_idx[2]},3\n")
    code, _, err = run(tmp_path, capsys, "--data", "digits", "--relabel", str(tmp_path / "clean.csv"))
    assert code == 2 and f"names 1 sample(s) of the clean set (the first: index {before.val_idx[2]}), whose labels " \
        "are the dataset's true ones" in err, err
    code, _, err = run(tmp_path, capsys, "--data", "digits", "--relabel", str(tmp_path / "none.csv"))
    assert code == 2 and "--relabel " in err and "none.csv: file not found" in err, err


def test_drawn_clean_samples_named_carry_their_corrected_label(tmp_path):
    """A clean set drawn from one's own labels (label_issues.csv scores it too, split clean): a
    clean sample relabelled is a clean sample with the corrected label; the draw is the run's
    without the list."""
    from l2b.config import TrainConfig
    from l2b.run_data import build_splits, prepare_data

    f = digits_npz(tmp_path / "mine.npz", with_val=False)
    cfg = TrainConfig(data=f"npz:{f}", method="ce", model="mlp", val_per_class=5)
    before = prepare_data(cfg, needs_clean=False)
    first = int(before.val_idx[0])
    new = (int(before.ds.y_train[first]) + 3) % 10
    (tmp_path / "fix.csv").write_text(f"index,split,label\n{first},clean,{new}\n")
    after = prepare_data(TrainConfig(**{**cfg.__dict__, "relabel": str(tmp_path / "fix.csv")}), needs_clean=False)
    np.testing.assert_array_equal(after.val_idx, before.val_idx)
    _, val, _ = build_splits(cfg, after, torch.device("cpu"))
    assert int(val.y[0]) == new and after.relabelled == (1, 0)
    assert int(before.ds.y_train[first]) != new  # the loaded dataset itself is left as it was


def test_a_suggestion_blanked_in_either_column_keeps_the_given_label(tmp_path):
    """label_issues.csv names each suggestion twice (suggested_label, suggested_class): a row with
    either blanked was reviewed and is right as given; a row with both is relabelled."""
    from l2b.config import TrainConfig
    from l2b.run_data import prepare_data

    f = digits_npz(tmp_path / "mine.npz")
    given = np.load(f)["y_train"]
    new = [(int(given[i]) + 1) % 10 for i in (3, 4, 5)]
    (tmp_path / "fix.csv").write_text("index,suggested_label,suggested_class\n"
                                      f"3,{new[0]},{new[0]}\n4,,{new[1]}\n5,{new[2]},\n")
    prep = prepare_data(TrainConfig(data=f"npz:{f}", method="ce", relabel=str(tmp_path / "fix.csv")), needs_clean=False)
    assert prep.relabelled == (1, 2)
    assert prep.y_noisy[3] == new[0] and prep.y_noisy[4] == given[4] and prep.y_noisy[5] == given[5]
