"""A trained run's model on new inputs: l2b.load_model and ``l2b predict``."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from l2b.cli import main
from l2b.models import predict_probs
from l2b.predict import load_model
from l2b.rundir import load_checkpoint
from l2b.trainer import load_run

from test_own_data import digits_npz, run, two_class_folder


def split_probs(run_dir, which: str, split: int) -> np.ndarray:
    """The probabilities the run's ``which`` model (best, final) gives a split of its own data
    (0 train, 1 clean, 2 test), computed as label-issues computes them."""
    _, _, splits, model = load_run(run_dir, device="cpu")
    if which != "final":
        model.load_state_dict(load_checkpoint(run_dir / f"{which}_model.pt"))
    return predict_probs(model, splits[split], 64)


def rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_a_run_on_arrays_classifies_new_images_as_it_scored_its_test_set_without_its_data(tmp_path, capsys):
    data = digits_npz(tmp_path / "mine.npz")
    code, _, err = run(tmp_path, capsys, "--data", f"npz:{data}", "--method", "l2b", "--epochs", "3")
    assert code == 0, err
    run_dir = tmp_path / "run"
    x_test = np.load(data)["x_test"]
    expected = split_probs(run_dir, "best", 2)
    clf = load_model(run_dir)
    assert clf.which == "best" and clf.classes == tuple(str(c) for c in range(10))
    assert clf.epoch == json.loads((run_dir / "metrics.json").read_text())["best_epoch"] + 1
    np.testing.assert_array_equal(clf.predict_proba(x_test), expected)  # N×H×W, as in the npz
    np.testing.assert_array_equal(clf.predict_proba(torch.from_numpy(x_test)[:, None]), expected)  # N×C×H×W tensor
    np.testing.assert_array_equal(clf.predict_proba(x_test[..., None]), expected)  # N×H×W×C
    assert clf.predict(x_test[:5]) == [str(k) for k in expected[:5].argmax(1)]
    x = clf.prepare(x_test)  # what the model takes, e.g. to export it
    assert x.shape == (300, 1, 8, 8) and x.dtype == torch.float32
    with torch.no_grad():
        np.testing.assert_array_equal(torch.softmax(clf.model(x), 1).numpy(), expected)
    clf.model.train()  # a caller that went on training it: still classified in eval mode, and left as it was
    np.testing.assert_array_equal(clf.predict_proba(x_test), expected)
    assert clf.model.training
    final = load_model(run_dir, "final")
    np.testing.assert_array_equal(final.predict_proba(x_test), split_probs(run_dir, "final", 2))
    assert final.epoch == 3 and final.description == "checkpoint.pt (epoch 3 of 3)"

    data.rename(tmp_path / "gone.npz")  # the training data are not needed to classify new images
    np.save(tmp_path / "new.npy", x_test[:7])
    assert main(["predict", str(run_dir), str(tmp_path / "new.npy"), "--top", "2", "--batch-size", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {run_dir / 'predictions.csv'}: 7 inputs classified by best_model.pt (epoch ")
    got = rows(run_dir / "predictions.csv")
    assert [r["index"] for r in got] == [str(i) for i in range(7)]
    assert [r["predicted"] for r in got] == [str(k) for k in expected[:7].argmax(1)]
    second = np.argsort(-expected[:7], axis=1)[:, 1]
    assert [r["class_2"] for r in got] == [str(k) for k in second]
    np.testing.assert_allclose([float(r["probability"]) for r in got], expected[:7].max(1), atol=5e-5)


def test_the_csv_names_the_classes_and_the_npz_array(tmp_path, capsys):
    d = np.load(digits_npz(tmp_path / "mine.npz"))
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    np.savez(tmp_path / "named.npz", **{k: d[k] for k in d.files}, classes=names)
    code, _, err = run(tmp_path, capsys, "--data", f"npz:{tmp_path / 'named.npz'}", "--method", "ce")
    assert code == 0, err
    np.savez(tmp_path / "batch.npz", images=d["x_test"][:4], other=np.arange(3))
    out = tmp_path / "results" / "p.csv"  # a folder that is not there yet
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "batch.npz"), "--out", str(out)]) == 2
    assert "batch.npz: which array holds the images? It holds images, other; name one with --array NAME" in \
        capsys.readouterr().err
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "batch.npz"), "--array", "images", "--out",
                 str(out)]) == 0
    got = rows(out)
    assert [r["file"] for r in got] == [str(tmp_path / "batch.npz")] * 4
    assert {r["predicted"] for r in got} <= set(names)


def test_a_run_on_image_files_classifies_files_folders_and_pil_images(tmp_path, capsys):
    pytest.importorskip("PIL")
    from PIL import Image

    two_class_folder(tmp_path / "imgs", {"train": 12, "val": 3, "test": 3}, side=lambda i: (12 + i, 10 + 2 * i))
    code, _, err = run(tmp_path, capsys, "--data", f"folder:{tmp_path / 'imgs'}", "--method", "ce",
                       "--image-size", "8", "--workers", "0", "--epochs", "10", "--lr", "0.05")
    assert code == 0, err
    run_dir = tmp_path / "run"
    expected = split_probs(run_dir, "best", 2)  # the test split: test/cat/0..2, test/dog/0..2, in that order
    test_files = [tmp_path / "imgs" / "test" / c / f"{i}.png" for c in ("cat", "dog") for i in range(3)]
    clf = load_model(run_dir)
    assert clf.classes == ("cat", "dog")
    np.testing.assert_array_equal(clf.predict_proba(test_files), expected)
    np.testing.assert_array_equal(clf.predict_proba([str(f) for f in test_files]), expected)
    images = [Image.open(f) for f in test_files]
    np.testing.assert_array_equal(clf.predict_proba(images), expected)
    assert clf.predict(test_files) == ["cat"] * 3 + ["dog"] * 3

    shutil.move(tmp_path / "imgs", tmp_path / "moved")  # nor are the training images needed
    new = tmp_path / "new"
    (new / ".hidden").mkdir(parents=True)
    Image.new("RGB", (30, 20), (250, 10, 10)).save(new / "red.jpg")
    Image.new("RGB", (9, 9), (0, 0, 240)).save(new / "blue.png")
    Image.new("RGB", (9, 9), (0, 0, 240)).save(new / ".hidden" / "skipped.png")
    (new / "notes.txt").write_text("not an image")
    single = tmp_path / "moved" / "test" / "dog" / "0.png"
    assert main(["predict", str(run_dir), str(new), str(single), "--workers", "1"]) == 0
    assert "3 inputs classified by best_model.pt" in capsys.readouterr().out
    got = rows(run_dir / "predictions.csv")
    assert [(r["path"], r["predicted"]) for r in got] == [(str(new / "blue.png"), "dog"), (str(new / "red.jpg"), "cat"),
                                                          (str(single), "dog")]

    # lists of images, as a labelling tool exports them: a path column (other columns ignored), or a path a line
    (new / "list.csv").write_text("image;note\nred.jpg;bright\n\nblue.png;dark\n", encoding="utf-8-sig")
    (tmp_path / "list.txt").write_text(f"new/blue.png\n{single}\n")
    assert main(["predict", str(run_dir), str(new / "list.csv"), str(tmp_path / "list.txt")]) == 0
    got = rows(run_dir / "predictions.csv")
    assert [(r["path"], r["predicted"]) for r in got] == [("red.jpg", "cat"), ("blue.png", "dog"),
                                                          ("new/blue.png", "dog"), (str(single), "dog")]
    (tmp_path / "gone.txt").write_text("new/red.jpg\nnew/missing.png\n")
    assert main(["predict", str(run_dir), str(tmp_path / "gone.txt")]) == 2
    assert "1 unreadable image(s): " + str(new / "missing.png") in capsys.readouterr().err
    (tmp_path / "nopath.csv").write_text("name,label\na.png,cat\n")
    assert main(["predict", str(run_dir), str(tmp_path / "nopath.csv")]) == 2
    assert "nopath.csv: no path column (path or file or filename or image) in its header (name, label)" in \
        capsys.readouterr().err


def test_bad_inputs_are_one_line_each(tmp_path, capsys):
    pytest.importorskip("PIL")
    from PIL import Image

    two_class_folder(tmp_path / "imgs", {"train": 4, "test": 2})
    code, _, err = run(tmp_path, capsys, "--data", f"folder:{tmp_path / 'imgs'}", "--method", "ce",
                       "--image-size", "8", "--workers", "0")  # no clean set: no best_model.pt
    assert code == 0, err
    run_dir = tmp_path / "run"
    assert load_model(run_dir).which == "final"
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.new("RGB", (12, 12), (255, 0, 0)).save(good)
    bad.write_bytes(b"\x89PNG truncated")

    def error(*argv: str) -> str:
        assert main(["predict", *argv]) == 2
        text = capsys.readouterr().err
        assert text.count("\n") == 1 and text.startswith("l2b predict: error: "), text
        return text

    assert f"{bad}" in error(str(run_dir), str(good), str(bad)) and "--on-bad-images skip" in error(str(run_dir), str(bad))
    with pytest.warns(UserWarning, match=r"the inputs: skipped 1 unreadable image\(s\): .*bad.png"):
        assert main(["predict", str(run_dir), str(good), str(bad), "--on-bad-images", "skip"]) == 0
    assert "1 input classified" in capsys.readouterr().out
    assert [r["path"] for r in rows(run_dir / "predictions.csv")] == [str(good)]
    assert "best_model.pt: not found" in error(str(run_dir), str(good), "--model", "best")
    assert f"{tmp_path / 'nowhere'}: no such file or folder" in error(str(run_dir), str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    assert "a folder without image files" in error(str(run_dir), str(tmp_path / "empty"))
    assert "no config.json; give the directory of an l2b run" in error(str(tmp_path), str(good))
    assert "--device 'gpu': choose auto, cpu, cuda or cuda:N" in error(str(run_dir), str(good), "--device", "gpu")
    if not torch.cuda.is_available():
        assert "--device cuda: CUDA is not available" in error(str(run_dir), str(good), "--device", "cuda")
    with pytest.raises(ValueError, match="give a list of image paths or PIL images, not a ndarray"):
        load_model(run_dir).predict_proba(np.zeros((2, 12, 12, 3), np.uint8))


def test_array_inputs_of_the_wrong_kind_are_one_line_each(tmp_path, capsys):
    data = digits_npz(tmp_path / "mine.npz")
    code, _, err = run(tmp_path, capsys, "--data", f"npz:{data}", "--method", "ce")
    assert code == 0, err
    run_dir = tmp_path / "run"
    cases = {"float.npy": (np.zeros((2, 8, 8), np.float32), "x has dtype float32"),
             "large.npy": (np.zeros((2, 28, 28), np.uint8), "images of 28×28 (H×W, grayscale), but the model trained on "
                                                             "images of 8×8 (H×W, grayscale)"),
             "rgb.npy": (np.zeros((2, 8, 8, 3), np.uint8), "images of 8×8×3 (H×W×C)"),
             "paths.npy": (np.array(["a.png", "b.png"]), "not <U5 values such as file paths")}
    for name, (array, message) in cases.items():
        np.save(tmp_path / name, array)
        assert main(["predict", str(run_dir), str(tmp_path / name)]) == 2
        text = capsys.readouterr().err
        assert text.count("\n") == 1 and message in text, text
    assert main(["predict", str(run_dir), str(tmp_path)]) == 2
    assert "a folder, but this model classifies arrays of images" in capsys.readouterr().err
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really")
    assert main(["predict", str(run_dir), str(tmp_path / "broken.npz")]) == 2
    assert "not a readable .npz or .npy file" in capsys.readouterr().err


def test_a_run_that_did_not_record_its_inputs_reads_them_from_its_data(tmp_path, capsys):
    data = digits_npz(tmp_path / "mine.npz")
    code, _, err = run(tmp_path, capsys, "--data", f"npz:{data}", "--method", "ce")
    assert code == 0, err
    run_dir = tmp_path / "run"
    x_test = np.load(data)["x_test"]
    before = load_model(run_dir).predict_proba(x_test)
    saved = json.loads((run_dir / "config.json").read_text())
    recorded = saved["data"].pop("inputs")
    (run_dir / "config.json").write_text(json.dumps(saved))
    clf = load_model(run_dir)
    assert clf.inputs == recorded
    np.testing.assert_array_equal(clf.predict_proba(x_test), before)
    data.rename(tmp_path / "elsewhere.npz")
    with pytest.raises(FileNotFoundError, match="did not record how its inputs were prepared"):
        load_model(run_dir)
    assert load_model(run_dir, data=f"npz:{tmp_path / 'elsewhere.npz'}").inputs == recorded
    saved["data"]["inputs"], saved["config"]["width"] = recorded, 32  # edited: the weights no longer fit
    (run_dir / "config.json").write_text(json.dumps(saved))
    assert main(["predict", str(run_dir), str(tmp_path / "elsewhere.npz"), "--array", "x_test"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "its weights do not fit the model" in err and "was config.json edited" in err


def test_a_run_stopped_early_is_classified_by_its_best_model_so_far(tmp_path):
    from l2b.config import TrainConfig
    from l2b.trainer import train

    cfg = TrainConfig(data=f"npz:{digits_npz(tmp_path / 'mine.npz')}", model="mlp", width=16, epochs=4, method="ce",
                      out=str(tmp_path / "run"), progress="none")
    train(cfg, stop_after_epoch=1)
    best = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["best"]["epoch"]
    clf = load_model(tmp_path / "run")
    assert clf.which == "best" and clf.description == f"best_model.pt (epoch {best + 1} of 4)"
    assert load_model(tmp_path / "run", "final").description == "checkpoint.pt (epoch 2 of 4)"


def test_a_run_whose_meta_set_was_selected_from_its_noisy_data_is_classified_by_its_final_model(tmp_path, capsys):
    data = digits_npz(tmp_path / "mine.npz", with_val=False)
    code, _, err = run(tmp_path, capsys, "--data", f"npz:{data}", "--method", "l2b", "--meta-set", "select:small-loss",
                       "--warmup-epochs", "1", "--epochs", "3")
    assert code == 0, err
    assert (tmp_path / "run" / "best_model.pt").is_file()  # chosen on the selected set: biased
    assert load_model(tmp_path / "run").which == "final"
    assert load_model(tmp_path / "run", "best").which == "best"


def test_a_grid_given_for_a_run_names_one_of_its_runs(tmp_path, capsys):
    for method in ("ce", "l2b"):
        cell = tmp_path / "grid" / method / "symmetric_0.4" / "seed0"
        cell.mkdir(parents=True)
        (cell / "labels.npz").write_bytes(b"")  # as l2b compare lays its cells out
    for command in ("predict", "label-issues"):
        argv = [command, str(tmp_path / "grid")] + (["x.png"] if command == "predict" else [])
        assert main(argv) == 2
        assert (f"{tmp_path / 'grid'} is a grid of 2 runs: give one of them, e.g. l2b {command} "
                f"{tmp_path / 'grid' / 'l2b' / 'symmetric_0.4' / 'seed0'}") in capsys.readouterr().err
