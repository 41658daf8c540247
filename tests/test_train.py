"""The trainer, the methods and the CLI on real digits, with tiny models and few epochs."""

from __future__ import annotations

import copy
import subprocess
import sys
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import l2b
from l2b.cli import main as cli_main
from l2b.methods import METHODS, Batch, create_method
from l2b.methods.bootstrap import bootstrap_target
from l2b.trainer import TrainConfig, train

PRESETS = Path(__file__).resolve().parents[1] / "configs" / "paper"


def tiny(tmp_path, **kw) -> TrainConfig:
    base = dict(data="digits", model="mlp", width=32, epochs=2, batch_size=64, lr=0.1,
                val_per_class=5, noise="symmetric:0.4", out=str(tmp_path / "run"), progress="none")
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("method", ["ce", "bootstrap", "l2rw", "l2b"])
def test_every_method_trains_and_writes_its_run_directory(tmp_path, method):
    # (hard bootstrapping, the default, needs ~5 epochs here to leave its early argmax collapse)
    m = train(tiny(tmp_path, method=method, method_args={"mode": "soft"} if method == "bootstrap" else {}))
    out = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "metrics.json", "labels.npz", "checkpoint.pt", "best_model.pt"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved) >= {"test_acc_last", "test_acc_at_best_val", "best_val_acc", "history"}
    assert len(saved["history"]) == 2 and saved["test_acc_last"] > 15.0  # above chance (10%)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    config = json.loads((out / "config.json").read_text())
    assert config["environment"]["torch"] == torch.__version__ and config["config"]["method"] == method
    labels = np.load(out / "labels.npz")
    assert abs(labels["is_noisy"].mean() - 0.36) < 0.06 and len(labels["val_index"]) == 50
    assert not np.isin(labels["val_index"], labels["train_index"]).any()
    if method == "ce":
        assert rows[-1]["alpha_noisy"] is None and not (out / "weights.npz").exists()
    if method in ("l2rw", "l2b"):
        # the meta-gradient already trusts corrupted labels less than clean ones
        assert rows[-1]["alpha_noisy"] < 0.8 * rows[-1]["alpha_clean"]
        assert 0.0 <= rows[-1]["all_zero_step_share"] <= 1.0
    if method in ("l2rw", "l2b", "bootstrap"):
        w = np.load(out / "weights.npz")
        assert w["alpha"].shape == labels["noisy"].shape and (w["pseudo_labels"] >= 0).all()
        if method == "l2rw":
            assert (w["beta"] == 0).all() and w["alpha"].sum() > 0
        if method == "l2b":
            assert w["beta"].sum() > 0 and w["alpha"].sum() > 0
    assert m["test_acc_last"] == rows[-1]["test_acc"]


def test_bootstrap_targets_follow_reed_et_al():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    y = torch.tensor([1, 0])
    p = torch.softmax(logits, 1)
    soft = bootstrap_target(logits, y, 0.8, "soft")
    torch.testing.assert_close(soft, 0.8 * F.one_hot(y, 3).float() + 0.2 * p)
    hard = bootstrap_target(logits, y, 0.8, "hard")
    torch.testing.assert_close(hard, torch.tensor([[0.2, 0.8, 0.0], [0.8, 0.0, 0.2]]))
    model = torch.nn.Linear(3, 3)
    method = create_method("bootstrap", model, torch.optim.SGD(model.parameters(), lr=0.1), beta=0.6, mode="soft")
    x = torch.randn(4, 3)
    yb = torch.tensor([0, 1, 2, 0])
    out = method.loss(Batch(x, yb, torch.arange(4)))
    z = model(x)
    # soft bootstrapping = beta * CE + (1 - beta) * entropy (Reed et al.), value AND gradient;
    # a detached prediction would reduce it to beta * CE
    logp = F.log_softmax(z, 1)
    expected = (0.6 * F.cross_entropy(z, yb, reduction="none") - 0.4 * (logp.exp() * logp).sum(1)).mean()
    torch.testing.assert_close(out.loss, expected)
    g_out = torch.autograd.grad(out.loss, model.weight)[0]
    g_exp = torch.autograd.grad(expected, model.weight)[0]
    torch.testing.assert_close(g_out, g_exp)
    g_ce = torch.autograd.grad(0.6 * F.cross_entropy(model(x), yb), model.weight)[0]
    assert not torch.allclose(g_out, g_ce, atol=1e-4)


def test_l2b_method_step_equals_a_manual_algorithm_1_step(float64):
    from conftest import make_batches, make_model, twin

    model = make_model("preact")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    m2, o2 = twin(model, opt)
    x, y, x_val, y_val = make_batches()
    method = create_method("l2b", model, opt, normalize="softmax", temperature=0.5)
    out = method.loss(Batch(x, y, torch.arange(len(y)), x_val, y_val))
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    mw = l2b.meta_weights(m2, x, y, x_val, y_val, optimizer=o2, normalize="softmax", temperature=0.5)
    loss = (mw.alpha * F.cross_entropy(mw.logits, y, reduction="none")).sum() + (
        mw.beta * F.cross_entropy(mw.logits, mw.logits.argmax(1), reduction="none")).sum()
    o2.zero_grad()
    loss.backward()
    o2.step()
    torch.testing.assert_close(out.loss, loss, rtol=1e-13, atol=0)
    for p, q in zip(model.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-15)


def test_resume_reaches_bit_identical_weights(tmp_path):
    cfg = tiny(tmp_path, method="l2b", epochs=4, model="small-cnn", width=4, augment="crop-flip",
               train_subset=200)
    straight = train(cfg)
    a = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    cfg.out = str(tmp_path / "interrupted")
    train(cfg, stop_after_epoch=1)
    assert [json.loads(x)["epoch"] for x in (tmp_path / "interrupted" / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    resumed = train(cfg, resume=True)
    b = torch.load(tmp_path / "interrupted" / "checkpoint.pt", weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["test_acc"] for h in straight["history"]] == [h["test_acc"] for h in resumed["history"]]
    lines = (tmp_path / "interrupted" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2, 3]


def test_a_run_of_image_files_resumes_bit_identically_with_other_loader_workers(tmp_path):
    """Random crops and flips of image files are seeded per sample, and the clean set streams from
    its checkpointed position: stopped and resumed with another --workers, an L2B run of a folder
    ends on the weights of the run that was never stopped."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("val", 3), ("test", 2)):
        for c in ("red", "blue"):
            d = tmp_path / "imgs" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(d / f"{i}.png")
    cfg = tiny(tmp_path, data=f"folder:{tmp_path / 'imgs'}", model="small-cnn", width=4, image_size=8,
               batch_size=8, method="l2b", epochs=3, workers=0)
    train(cfg)
    a = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    cfg.out, cfg.workers = str(tmp_path / "interrupted"), 2
    train(cfg, stop_after_epoch=0)
    cfg.workers = 1
    train(cfg, resume=True)
    b = torch.load(tmp_path / "interrupted" / "checkpoint.pt", weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _npz_with_scrambled_test(tmp_path) -> Path:
    """Digits whose TEST labels are all shifted by one class: the better the model (the higher
    its validation accuracy), the LOWER its test accuracy, so selecting on the test set would
    pick a different epoch than selecting on validation."""
    ds = l2b.data.load_dataset("digits")
    f = tmp_path / "scrambled.npz"
    np.savez(f, x_train=ds.x_train[:, 0].numpy(), y_train=ds.y_train.numpy(),
             x_test=ds.x_test[:, 0].numpy(), y_test=(ds.y_test.numpy() + 1) % 10)
    return f


def test_model_selection_uses_validation_never_test(tmp_path):
    f = _npz_with_scrambled_test(tmp_path)
    m = train(tiny(tmp_path, data=f"npz:{f}", method="ce", epochs=6, lr=0.01, noise="none"))
    hist = m["history"]
    val = [h["val_acc"] for h in hist]
    test = [h["test_acc"] for h in hist]
    best = int(np.argmax(val))
    assert m["best_epoch"] == best and m["test_acc_at_best_val"] == test[best]
    assert m["test_acc_at_best_val"] != max(test)  # the scenario tells the two rules apart


def test_test_every_skips_test_epochs_but_keeps_the_reported_accuracies_exact(tmp_path):
    every = train(tiny(tmp_path, method="l2b", epochs=5, out=str(tmp_path / "every")))
    sparse = train(tiny(tmp_path, method="l2b", epochs=5, test_every=3, out=str(tmp_path / "sparse")))
    scored = [h["epoch"] for h in sparse["history"] if h["test_acc"] is not None]
    assert scored == [2, 4]  # every third epoch and the last
    for a, b in zip(every["history"], sparse["history"]):  # the test set never changes training
        assert a["val_acc"] == b["val_acc"] and a["train_loss"] == b["train_loss"]
        assert b["test_acc"] in (None, a["test_acc"])
    assert sparse["best_epoch"] == every["best_epoch"]
    assert sparse["test_acc_at_best_val"] == every["test_acc_at_best_val"]
    assert sparse["test_acc_last"] == every["test_acc_last"]


def test_config_file_then_flags_precedence(tmp_path, monkeypatch):
    from l2b.cli import build_parser, config_from_args

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("epochs: 3\nlr: 0.05\nmethod: bootstrap\nbeta: 0.6\nmode: soft\n")
    args = build_parser().parse_args(["train", "--config", str(cfg_file), "--lr", "0.2", "--batch-size", "32",
                                      "--mode", "hard"])
    cfg = config_from_args(args)
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.method) == (3, 0.2, 32, "bootstrap")
    assert cfg.method_options() == {"beta": 0.6, "mode": "hard"}  # the YAML's option, the flag's over the YAML's
    assert cfg.momentum == 0.9  # untouched: the default
    # a config.json of an earlier version (options as settings) still reads
    old = TrainConfig.from_dict({"method": "bootstrap", "bootstrap_beta": 0.7, "normalize": None, "engine": None})
    assert old.method_args == {"bootstrap.beta": 0.7} and old.method_options() == {"beta": 0.7}
    cfg_file.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['learning_rate'\]"):
        config_from_args(build_parser().parse_args(["train", "--config", str(cfg_file)]))


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(method="l2b", val_per_class=None), "needs a clean validation set: give --val-per-class"),
        (dict(method="ce", method_args={"constraint": "beta=0"}), "--constraint is an option of l2b, not of method 'ce'"),
        (dict(method="l2rw", method_args={"constraint": "alpha=0"}), "--constraint is an option of l2b, not of method 'l2rw'"),
        (dict(method="ce", method_args={"beta": 0.5}), "--beta is an option of bootstrap, not of method 'ce'"),
        (dict(method="l2b", method_args={"l2b.engine": "jpv"}), "engine='jpv' is not one of 'jvp', 'jvp-lean', 'unroll'"),
        (dict(method="ce", method_args={"mwnet.normalize": "maybe"}), "normalize='maybe' is not a bool"),
        (dict(method="ce", method_args={"mwnt.normalize": True}), "no method 'mwnt'"),
        (dict(method="bootstrap", method_args={"beta": 1.5}), r"beta=1.5 must be in \[0, 1\]"),
        (dict(method="coteaching", method_args={"forget_rate": 1.0}), r"forget_rate=1.0 must be in \[0, 1\)"),
        (dict(method="mystery"), "unknown method 'mystery'; valid methods: bootstrap, ce"),
        (dict(model="vgg"), "unknown model 'vgg'; valid models:"),
        (dict(noise="gauss:0.1"), "unknown noise 'gauss:0.1'"),
        (dict(data="digits", val_per_class=200), "class '0' has only"),
        (dict(method="l2b", sync_bn=True), "--sync-bn cannot be used with method 'l2b'.*--engine unroll"),
        (dict(method="mwnet", sync_bn=True), "--sync-bn cannot be used with method 'mwnet'.*drop --sync-bn"),
        (dict(method="mlc", sync_bn=True), "--sync-bn cannot be used with method 'mlc'"),
    ],
)
def test_contradictions_fail_before_training(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        train(tiny(tmp_path, **kw))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_cli_train_runs_and_reports(tmp_path, capsys):
    rc = cli_main(["train", "--data", "digits", "--model", "mlp", "--method", "l2b", "--epochs", "1",
                   "--val-per-class", "5", "--batch-size", "128", "--out", str(tmp_path / "r"),
                   "--progress", "lines", "--normalize", "softmax", "--temperature", "0.1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "epoch 1/1" in out and json.loads(out.strip().splitlines()[-1])["method"] == "l2b"
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["config"]["method_args"] == {"normalize": "softmax", "temperature": "0.1"}  # as given
    resolved = saved["resolved"]["method_options"]  # as the method runs with them, typed
    assert resolved["normalize"] == "softmax" and resolved["temperature"] == 0.1 and resolved["engine"] == "jvp-lean"


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    rc = cli_main(["train", "--method", "ce", "--constraint", "beta=0", "--out", str(tmp_path / "r")])
    assert rc == 2
    assert capsys.readouterr().err.strip() == (
        "l2b train: error: --constraint is an option of l2b, not of method 'ce'")


def test_cli_version_names_l2b_torch_and_python(capsys):
    import platform

    with pytest.raises(SystemExit) as stop:
        cli_main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == (f"l2b {l2b.__version__} (torch {torch.__version__}, "
                                               f"Python {platform.python_version()})")


def test_cli_help_documents_the_flags(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--data", "--model", "--method", "--noise", "--val-per-class", "--epochs", "--batch-size",
                 "--lr", "--seed", "--out", "--resume", "--config", "--normalize", "--engine", "--warmup-epochs"):
        assert flag in text, flag
    # every declared option of every method has a flag whose help gives its values and default
    from l2b.methods import declared_options

    flat = "".join(text.split())  # argparse wraps lines (also at hyphens)
    for name, owners in declared_options().items():
        assert "--" + name.replace("_", "-") in text, name
        for method, spec in owners.items():
            assert "".join(spec.help.split()) in flat and "".join(spec.values.split()) in flat, (method, name)


@pytest.mark.parametrize("command", ["train", "compare", "report", "label-issues", "options", "demo"])
def test_every_command_prints_its_help(capsys, command):
    """A help text holding a bare % (e.g. "10% of") made argparse raise instead of printing."""
    with pytest.raises(SystemExit) as exit_:
        cli_main([command, "--help"])
    assert exit_.value.code == 0 and "usage: l2b " + command in capsys.readouterr().out


@pytest.mark.parametrize("preset", sorted(PRESETS.glob("*.yaml")), ids=lambda p: p.name)
def test_paper_presets_parse_and_build(preset):
    from l2b.config_checks import load_yaml
    from l2b.models import create_model

    cfg = TrainConfig.from_dict(load_yaml(str(preset)), str(preset))
    cfg.validate()
    k = {"cifar10": 10, "cifar100": 100, "isic2019": 8, "clothing1m": 14}[cfg.data.partition(":")[0]]
    try:
        model = create_model(cfg.model, num_classes=k, in_channels=3, width=cfg.width)
    except ImportError:  # resnet18/50 need torchvision (an optional extra): build a stand-in
        assert cfg.model in ("resnet18", "resnet50")
        model = create_model("preact-resnet18", num_classes=k, width=8)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    method = create_method(cfg.method, model, opt, **cfg.method_options())
    for key, value in cfg.method_options().items():  # the preset's options reach the method, typed
        declared = METHODS[cfg.method].option_specs()[key].type
        assert method.opts[key] == value and type(value).__name__ in declared, (key, declared)


def test_docs_list_every_declared_option():
    from l2b.cli_flags import options_table

    text = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    begin = text.index("\n", text.index("<!-- options:begin")) + 1
    assert text[begin:text.index("<!-- options:end -->")] == options_table(), "run `l2b options` into docs/methods.md"


def test_no_method_option_shadows_a_setting():
    from dataclasses import fields

    from l2b.methods import declared_options

    assert not set(declared_options()) & {f.name for f in fields(TrainConfig)}


def test_presets_cover_the_paper_tables():
    names = {p.stem for p in PRESETS.glob("*.yaml")}
    for r in (20, 30, 40, 50):
        for m in ("ce", "bootstrap", "l2rw", "l2b"):
            assert f"cifar10-sym{r}-{m}" in names and f"cifar100-sym{r}-{m}" in names
            assert f"isic2019-sym{r}-{m}" in names
    assert {"cifar10-asym40-l2b", "clothing1m-l2b", "cifar100-sym40-l2b-alpha0"} <= names
    assert len(METHODS) >= 4


def test_balanced_epochs_draw_every_class_equally():
    from l2b.data.batches import epoch_order

    labels = torch.tensor([0] * 90 + [1] * 8 + [2] * 2)
    order = epoch_order(labels, batch_size=10, seed=3, batches=6, balanced=True)
    assert len(order) == 60 and torch.bincount(labels[order]).tolist() == [20, 20, 20]
    assert len(set(order[labels[order] == 0].tolist())) == 20  # no repeats while a class suffices
    assert torch.equal(order, epoch_order(labels, batch_size=10, seed=3, batches=6, balanced=True))
    plain = epoch_order(labels, batch_size=10, seed=3)
    assert sorted(plain.tolist()) == list(range(100))


def test_trainer_runs_a_fixed_number_of_balanced_batches(tmp_path):
    m = train(tiny(tmp_path, method="ce", epochs=1, batches_per_epoch=3, balance_classes=True, batch_size=50))
    assert len(m["history"]) == 1


def test_training_on_an_image_folder_streams_through_the_dataloader(tmp_path):
    from PIL import Image

    rng = np.random.Generator(np.random.PCG64(0))
    for split, n in (("train", 12), ("test", 4)):
        for c, base in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
            d = tmp_path / "imgs" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(base) + rng.integers(-20, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(d / f"{i}.png")
    cfg = tiny(tmp_path, data=f"folder:{tmp_path / 'imgs'}", model="small-cnn", width=4, image_size=8,
               val_per_class=2, batch_size=8, workers=0, method="l2b", noise="symmetric:0.2", epochs=2)
    m = train(cfg)
    assert len(m["history"]) == 2 and m["test_acc_last"] == m["history"][-1]["test_acc"]
    assert (m["test_acc_last"] * 8 / 100) % 1 == 0  # a whole number of the 8 test images
    w = np.load(tmp_path / "run" / "weights.npz")
    assert w["alpha"].shape == (20,) and (w["pseudo_labels"] >= 0).all()


def test_channels_last_trains_to_the_same_model(tmp_path):
    base = dict(method="l2b", model="small-cnn", width=4, epochs=1, train_subset=128)
    a = train(tiny(tmp_path / "a", **base))
    b = train(tiny(tmp_path / "b", **base, channels_last=True))
    assert abs(a["history"][-1]["train_loss"] - b["history"][-1]["train_loss"]) < 1e-3


@pytest.mark.parametrize("method, args", [("mixup", {"alpha": 0.4}), ("distill", {"lam": 0.3, "teacher_epochs": 2}),
                                          ("glc", {"estimate_epochs": 2})])
def test_baselines_train_end_to_end(tmp_path, method, args):
    m = train(tiny(tmp_path, method=method, method_args=args, epochs=2))
    assert m["test_acc_last"] > 15.0
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["method"]
    if method == "glc":
        c = state["corruption"]
        assert c.shape == (10, 10) and torch.allclose(c.sum(1), torch.ones(10, dtype=c.dtype))
    if method == "distill":
        assert "teacher" in state


def test_glc_recovers_a_known_corruption_matrix():
    """With an estimator that predicts the noisy label distribution exactly, C is recovered."""
    from l2b.methods.glc import estimate_corruption, forward_corrected_nll

    rng = np.random.Generator(np.random.PCG64(0))
    true_c = torch.tensor(rng.dirichlet(np.ones(4) * 3, size=4))
    model = torch.nn.Embedding(4, 4)  # input = true class; logits = log C[class]
    model.weight.data = true_c.float().log()
    y = torch.arange(4).repeat(25)
    c = estimate_corruption(torch.nn.Sequential(model), [(y, y)], 4)
    torch.testing.assert_close(c, true_c, rtol=1e-5, atol=1e-6)
    logits = torch.randn(3, 4)
    expect = -torch.log((torch.softmax(logits, 1) @ c.float())[torch.arange(3), torch.tensor([0, 2, 3])])
    torch.testing.assert_close(forward_corrected_nll(logits, torch.tensor([0, 2, 3]), c), expect)


def test_distill_target_mixes_label_and_teacher():
    from l2b.methods.distill import Distill

    model = torch.nn.Linear(3, 3)
    d = Distill(model, torch.optim.SGD(model.parameters(), lr=0.1), lam=0.25)
    d.teacher = torch.nn.Linear(3, 3)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    t = d.soft_targets(x, y)
    torch.testing.assert_close(t, 0.25 * F.one_hot(y, 3).float() + 0.75 * torch.softmax(d.teacher(x), 1))


def test_method_args_flag(tmp_path):
    from l2b.cli import build_parser, config_from_args

    args = build_parser().parse_args(["train", "--method", "distill", "--method-arg", "lam=0.3",
                                      "--method-arg", "teacher_epochs=4"])
    assert config_from_args(args).method_options() == {"lam": 0.3, "teacher_epochs": 4}
    scoped = TrainConfig(method="ce", method_args={"coteaching.forget_rate": 0.4})
    assert scoped.method_options() == {}
    assert TrainConfig(method="coteaching", method_args={"coteaching.forget_rate": 0.4}).method_options() == {
        "forget_rate": 0.4}
    with pytest.raises(ValueError, match="--lam is an option of distill, not of method 'ce'"):
        train(tiny(tmp_path, method="ce", method_args={"lam": 0.3}))
    with pytest.raises(ValueError, match=r"method 'ce' has no option\(s\) \['lamda'\]; its options: none"):
        train(tiny(tmp_path, method="ce", method_args={"lamda": 0.3}))


def test_mixup_loss_is_the_convex_combination_of_two_cross_entropies():
    model = torch.nn.Linear(3, 4)
    method = create_method("mixup", model, torch.optim.SGD(model.parameters(), lr=0.1), alpha=0.4)
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 0, 1])
    out = method.loss(Batch(x, y, torch.arange(6)))
    lam, perm = out.extra["lam"], out.extra["perm"]
    z = model(lam * x + (1 - lam) * x[perm])
    expect = lam * F.cross_entropy(z, y) + (1 - lam) * F.cross_entropy(z, y[perm])
    torch.testing.assert_close(out.loss, expect)
    assert 0.0 < lam < 1.0 and sorted(perm.tolist()) == list(range(6))


@pytest.mark.parametrize("lone", ["gold", "silver"])
def test_glc_trains_on_a_batch_whose_clean_or_noisy_part_is_one_sample(lone):
    """PreActResNet-18 on 8x8 digits ends at a 1x1 map, where BatchNorm cannot normalise a lone
    sample: such a batch goes through in one forward, and its loss is the same sum as ever."""
    from l2b.methods.glc import forward_corrected_nll
    from l2b.models import create_model

    torch.manual_seed(0)
    model = create_model("preact-resnet18", num_classes=10, in_channels=1, image_size=8, width=4).train()
    method = create_method("glc", model, torch.optim.SGD(model.parameters(), lr=0.1), batch_size=8)
    method.corruption = torch.full((10, 10), 0.02, dtype=torch.float64) + 0.8 * torch.eye(10, dtype=torch.float64)
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8)
    gold = torch.zeros(8, dtype=torch.bool)
    gold[3] = True
    if lone == "silver":
        gold = ~gold
    out = method.loss(Batch(x, y, torch.arange(8), trusted=gold))
    logits = model(x)
    expect = (forward_corrected_nll(logits[~gold], y[~gold], method.corruption).sum()
              + F.cross_entropy(logits[gold], y[gold], reduction="sum")) / 8
    torch.testing.assert_close(out.loss, expect)


def test_forward_correction_with_a_known_matrix_and_anchor_estimate(tmp_path):
    from l2b.methods.forward import anchor_transition
    from l2b.methods.glc import forward_corrected_nll

    t = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.0, 0.7]], dtype=torch.float64)
    logits, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 2])
    expect = -torch.log((t.T.float() @ torch.softmax(logits, 1).T).T[torch.arange(4), y])  # log(T^T p)
    torch.testing.assert_close(forward_corrected_nll(logits, y, t), expect)
    # anchors: rows whose class-i probability is the highest are exactly T's rows
    others = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.25, 0.25, 0.5]], dtype=torch.float64)
    rows = torch.cat([others, t, others])
    class LogOf(torch.nn.Module):  # a "model" whose softmax returns its input rows
        def forward(self, x):
            return x.log()

    est = anchor_transition(LogOf(), [(rows,)], 3, quantile=1.0)
    torch.testing.assert_close(est, t)
    f = tmp_path / "T.csv"
    np.savetxt(f, np.full((10, 10), 0.1), delimiter=",")
    m = train(tiny(tmp_path, method="forward", method_args={"matrix": str(f)}, epochs=1))
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["method"]
    assert torch.allclose(state["transition"], torch.full((10, 10), 0.1, dtype=torch.float64))
    assert len(m["history"]) == 1
    train(tiny(tmp_path / "est", method="forward", method_args={"estimate_epochs": 1}, epochs=1))


@pytest.mark.parametrize("normalize", [True, False])
def test_mwnet_first_order_meta_gradient_equals_second_order_unroll(float64, normalize):
    from torch.func import functional_call

    from conftest import make_batches, make_model

    model = make_model("preact")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = create_method("mwnet", model, opt, meta_optimizer="sgd", normalize=normalize)
    method.vnet.double()
    x, y, xv, yv = make_batches()
    batch = Batch(x, y, torch.arange(len(y)), xv, yv)
    # oracle: differentiate G(theta_hat(phi)) through a create_graph virtual step
    import copy

    oracle_model, oracle_vnet = copy.deepcopy(model), copy.deepcopy(method.vnet)
    logits = oracle_model(x)
    losses = F.cross_entropy(logits, y, reduction="none")
    w = oracle_vnet(losses.detach())
    c = w / w.sum() if normalize else w / len(w)
    names, params = zip(*oracle_model.named_parameters())
    grads = torch.autograd.grad((c * losses).sum(), params, create_graph=True)
    theta_hat = {n: p - 0.1 * g for n, p, g in zip(names, params, grads)}
    buffers = {n: b.clone() for n, b in oracle_model.named_buffers()}
    g_val = F.cross_entropy(functional_call(oracle_model, {**theta_hat, **buffers}, (xv,)), yv)
    expect = torch.autograd.grad(g_val, list(oracle_vnet.parameters()))
    # the method's exact first-order meta-gradient
    rng = (torch.get_rng_state(), None)
    logits = model(x)
    losses = F.cross_entropy(logits, y, reduction="none")
    val = method.meta_gradient(batch, logits, losses, rng)
    torch.testing.assert_close(val, g_val.detach(), rtol=1e-12, atol=0)
    for got, want in zip((p.grad for p in method.vnet.parameters()), expect):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-14)


def test_mwnet_trains_end_to_end_and_resumes_its_weight_net(tmp_path):
    m = train(tiny(tmp_path, method="mwnet", epochs=2))
    assert m["test_acc_last"] > 15.0
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["method"]
    assert set(state) == {"vnet", "meta_opt"}
    w = np.load(tmp_path / "run" / "weights.npz")
    assert w["alpha"].sum() > 0 and (w["beta"] == 0).all()


def test_coteaching_updates_each_network_on_its_peers_small_loss_samples():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    method = create_method("coteaching", model, opt, forget_rate=0.5, num_gradual=2)
    assert [method.keep_ratio(e) for e in (0, 1, 2, 5)] == [1.0, 0.75, 0.5, 0.5]
    x, y = torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    peer_before = copy.deepcopy(method.peer)
    out = method.loss(Batch(x, y, torch.arange(8), epoch=3.0))
    keep = 4
    la = F.cross_entropy(model(x), y, reduction="none")
    lb = F.cross_entropy(peer_before(x), y, reduction="none")
    torch.testing.assert_close(out.loss, la[torch.argsort(lb)[:keep]].mean())
    assert (out.alpha > 0).sum() == keep
    # the peer took one SGD step on the first network's small-loss samples
    expect = copy.deepcopy(peer_before)
    F.cross_entropy(expect(x[torch.argsort(la.detach())[:keep]]), y[torch.argsort(la.detach())[:keep]]).backward()
    for p in expect.parameters():
        p.data -= 0.5 * p.grad
    for p, q in zip(method.peer.parameters(), expect.parameters()):
        torch.testing.assert_close(p, q)


def test_coteaching_trains_end_to_end(tmp_path):
    m = train(tiny(tmp_path, method="coteaching", method_args={"forget_rate": 0.36, "num_gradual": 1}, epochs=2))
    assert m["test_acc_last"] > 15.0


def test_mlc_trains_end_to_end_and_resumes(tmp_path):
    cfg = tiny(tmp_path, method="mlc", epochs=3)
    straight = train(cfg)
    cfg.out = str(tmp_path / "again")
    train(cfg, stop_after_epoch=0)
    resumed = train(cfg, resume=True)
    assert [h["test_acc"] for h in straight["history"]] == [h["test_acc"] for h in resumed["history"]]


def test_compare_runs_a_grid_resumes_and_summarises(tmp_path, capsys):
    import csv

    from l2b.grid import SUMMARY_COLUMNS

    argv = ["compare", "--data", "digits", "--model", "mlp", "--width", "32", "--methods", "ce,l2b",
            "--noise", "symmetric:0.2,symmetric:0.4", "--seeds", "2", "--epochs", "2", "--val-per-class", "5",
            "--batch-size", "64", "--out", str(tmp_path / "grid")]
    assert cli_main(argv) == 0
    rows = list(csv.DictReader(open(tmp_path / "grid" / "summary.csv")))
    assert list(rows[0]) == SUMMARY_COLUMNS and len(rows) == 4
    assert {(r["method"], r["noise"], r["seeds"]) for r in rows} == {
        (m, n, "2") for m in ("ce", "l2b") for n in ("symmetric:0.2", "symmetric:0.4")}
    md = (tmp_path / "grid" / "summary.md").read_text()
    assert "| method | symmetric:0.2 | symmetric:0.4 |" in md and "| l2b |" in md
    accs = [json.loads((tmp_path / "grid" / "ce" / "symmetric_0.4" / f"seed{s}" / "metrics.json").read_text())
            ["test_acc_last"] for s in (0, 1)]
    row = next(r for r in rows if r["method"] == "ce" and r["noise"] == "symmetric:0.4")
    assert float(row["test_acc_last_mean"]) == pytest.approx(np.mean(accs), abs=1e-3)
    # a finished grid is skipped; an interrupted run is resumed
    run = tmp_path / "grid" / "l2b" / "symmetric_0.2" / "seed1"
    (run / "metrics.json").unlink()
    capsys.readouterr()
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("skip") == 7 and f"resume {run}" in out


def test_pretrained_weights_load_from_a_state_dict_or_a_training_checkpoint(tmp_path, capsys):
    """--pretrained takes a state dict, a checkpoint that wraps one ("model": l2b's checkpoint.pt;
    "state_dict"), or one saved from DistributedDataParallel ("module." names); a head of another
    shape keeps the model's own; anything else is named."""
    from l2b.models import MLP
    from l2b.run_model import load_pretrained

    def mlp(k=10):
        torch.manual_seed(k)
        return MLP(num_classes=k, in_channels=1, image_size=8, hidden=8)

    source = mlp().state_dict()
    forms = {"plain": source, "checkpoint": {"model": source, "epoch": 3}, "lightning": {"state_dict": source},
             "ddp": {"module." + k: v for k, v in source.items()}}
    for name, saved in forms.items():
        torch.save(saved, tmp_path / f"{name}.pt")
        torch.manual_seed(99)
        target = MLP(num_classes=10, in_channels=1, image_size=8, hidden=8)  # other initial weights
        load_pretrained(target, str(tmp_path / f"{name}.pt"))
        assert all(torch.equal(v, source[k]) for k, v in target.state_dict().items()), name
    five = mlp(k=5)
    head = {k: v.clone() for k, v in five.state_dict().items()}
    load_pretrained(five, str(tmp_path / "plain.pt"))  # 10 classes saved, 5 here: the head stays
    kept = [k for k, v in five.state_dict().items() if torch.equal(v, head[k]) and not torch.equal(v, source[k])]
    assert kept and "kept the model's own" in capsys.readouterr().out
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list without tensors, not a state dict"):
        load_pretrained(mlp(), str(tmp_path / "list.pt"))
    torch.save({"conv1.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"none of its 1 tensors matches the model MLP by name and shape \(it has e.g. "
                                         r"'conv1.weight'"):
        load_pretrained(mlp(), str(tmp_path / "other.pt"))


def test_compare_takes_a_yaml_grid_of_methods_noise_seeds_and_settings(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("methods: [ce, l2b]\nnoise: symmetric:0.2,symmetric:0.4\nseeds: 2\ndata: digits\nmodel: mlp\n"
                    "width: 8\nepochs: 1\nval_per_class: 5\nmethod_args:\n  l2b.normalize: softmax\n")
    assert cli_main(["compare", "--grid", str(grid), "--out", str(tmp_path / "out")]) == 0
    cells = sorted(p.parent.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("metrics.json"))
    assert cells == [f"{m}/{n}/seed{s}" for m in ("ce", "l2b") for n in ("symmetric_0.2", "symmetric_0.4") for s in (0, 1)]
    config = json.loads((tmp_path / "out" / "l2b" / "symmetric_0.4" / "seed1" / "config.json").read_text())["config"]
    assert (config["model"], config["width"], config["epochs"], config["val_per_class"]) == ("mlp", 8, 1, 5)
    assert config["method_args"] == {"l2b.normalize": "softmax"}
    assert json.loads((tmp_path / "out" / "l2b" / "symmetric_0.4" / "seed1" / "config.json").read_text()
                      )["resolved"]["method_options"]["normalize"] == "softmax"


def test_grid_workers_start_their_loader_workers_as_the_grid_process_does(tmp_path):
    """A grid worker is spawned, and a spawned process inherits "spawn" as its start method: an
    image-file loader's workers would then each import torch anew, every epoch. It takes the start method a plain ``l2b train`` has: the
    grid process's."""
    script = tmp_path / "grid.py"
    script.write_text("import multiprocessing as mp\n"
                      "from l2b.grid import grid_pool\n\n\n"
                      "def start_method():\n"
                      "    return mp.get_start_method()\n\n\n"
                      "if __name__ == '__main__':\n"
                      "    with grid_pool(1) as pool:\n"
                      "        print(pool.submit(start_method).result(), mp.get_start_method())\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    worker, plain = out.stdout.split()
    assert worker == plain


def test_l2b_with_mixup_uses_mixed_inputs_and_mixed_targets(float64):
    from conftest import make_batches, make_model
    from l2b.methods.l2b import mixup_loss_fn

    model = make_model("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    m2, o2 = copy.deepcopy((model, opt))
    x, y, xv, yv = make_batches()
    method = create_method("l2b", model, opt, mixup_alpha=0.5)
    torch.manual_seed(3)
    out = method.loss(Batch(x, y, torch.arange(len(y)), xv, yv))
    torch.manual_seed(3)
    lam = float(torch.distributions.Beta(0.5, 0.5).sample())
    perm = torch.randperm(len(y))
    fn = mixup_loss_fn(lam, perm)
    mw = l2b.meta_weights(m2, lam * x + (1 - lam) * x[perm], y, xv, yv, optimizer=o2, loss_fn=fn)
    torch.testing.assert_close(out.alpha, mw.alpha, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(out.loss, l2b.bootstrap_loss(mw, y, fn), rtol=1e-12, atol=0)
    # the loss differs from plain L2B on the unmixed batch
    plain = l2b.meta_weights(copy.deepcopy(m2), x, y, xv, yv, lr=0.1)
    assert not torch.allclose(plain.alpha, mw.alpha)


def test_load_run_rebuilds_a_run_and_names_a_wrong_directory(tmp_path):
    from l2b.trainer import load_run

    cfg = TrainConfig(data="digits", model="mlp", width=16, method="ce", epochs=1, batch_size=64,
                      train_subset=128, val_per_class=5, augment="none", progress="none", out=str(tmp_path / "run"))
    train(cfg)
    cfg2, prep, (train_data, val_data, _), model = load_run(tmp_path / "run", device="cpu")
    assert cfg2 == cfg and len(train_data) == 128 and len(val_data) == 50
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    with pytest.raises(FileNotFoundError, match="no config.json; give the directory of an l2b run"):
        load_run(tmp_path)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_registered_method_trains_checkpoints_and_resumes_bit_identically(tmp_path, method):
    """Covers a new method by construction: one epoch, an interruption, a resume, and the same
    weights, method state and metrics as the uninterrupted run."""
    cfg = tiny(tmp_path, method=method, epochs=2, train_subset=300, width=16,
               method_args={"forget_rate": 0.36} if method == "coteaching" else {})
    straight = train(cfg)
    a = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    cfg.out = str(tmp_path / "interrupted")
    assert train(cfg, stop_after_epoch=0)["interrupted_after_epoch"] == 0
    resumed = train(cfg, resume=True)
    b = torch.load(tmp_path / "interrupted" / "checkpoint.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(torch.cat([torch.as_tensor(v).flatten().float() for v in _tensors(a["method"])] or [torch.zeros(1)]),
                       torch.cat([torch.as_tensor(v).flatten().float() for v in _tensors(b["method"])] or [torch.zeros(1)]))
    assert [h["train_loss"] for h in straight["history"]] == [h["train_loss"] for h in resumed["history"]]
    assert straight["test_acc_last"] == resumed["test_acc_last"]
    for t, u in zip(_tensors(a["weights"]), _tensors(b["weights"])):  # the label-issue history too
        assert torch.equal(t, u)
    if (tmp_path / "run" / "weights.npz").is_file():
        wa, wb = np.load(tmp_path / "run" / "weights.npz"), np.load(tmp_path / "interrupted" / "weights.npz")
        assert wa.files == wb.files and all(np.array_equal(wa[k], wb[k]) for k in wa.files)


def _tensors(state):
    """Every tensor of a (nested) state dict, in a fixed order."""
    if state is None:
        return []
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for k in sorted(state, key=str) for t in _tensors(state[k])]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in _tensors(v)]
    return [torch.tensor(float(state))] if isinstance(state, (int, float)) and not isinstance(state, bool) else []


def test_compare_gives_an_option_flag_to_the_methods_that_declare_it(tmp_path):
    out = tmp_path / "grid"
    assert cli_main(["compare", "--methods", "ce,l2b", "--noise", "symmetric:0.4", "--data", "digits", "--model", "mlp",
                     "--width", "16", "--epochs", "1", "--val-per-class", "5", "--normalize", "softmax",
                     "--temperature", "0.5", "--out", str(out)]) == 0
    l2b_run = json.loads((out / "l2b" / "symmetric_0.4" / "seed0" / "config.json").read_text())
    ce_run = json.loads((out / "ce" / "symmetric_0.4" / "seed0" / "config.json").read_text())
    assert l2b_run["resolved"]["method_options"]["normalize"] == "softmax"
    assert l2b_run["resolved"]["method_options"]["temperature"] == 0.5
    assert ce_run["resolved"]["method_options"] == {}


def test_deterministic_kernels_change_nothing_on_the_cpu_and_are_put_back_after_the_run(tmp_path):
    """--deterministic asks for torch's deterministic kernels for the run only; the CPU's results
    are deterministic already, so its run equals the plain one bit for bit."""
    was = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    plain = train(tiny(tmp_path / "plain", method="l2b"))
    seen = {}
    from l2b.methods.l2b import L2BMethod as L2B

    original = L2B.loss

    def spy(self, batch):
        seen["on"] = torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        return original(self, batch)

    L2B.loss = spy
    try:
        det = train(tiny(tmp_path / "det", method="l2b", deterministic=True))
    finally:
        L2B.loss = original
    assert seen["on"]  # in force while the run trained
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == was
    assert det["test_acc_last"] == plain["test_acc_last"]
    a, b = (torch.load(tmp_path / d / "run" / "checkpoint.pt", weights_only=True)["model"] for d in ("plain", "det"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = json.loads((tmp_path / "det" / "run" / "config.json").read_text())
    assert saved["config"]["deterministic"] is True
    assert cli_main(["train", "--resume", str(tmp_path / "det" / "run"), "--deterministic", "false"]) == 2


@pytest.mark.parametrize("method", ["l2rw", "mwnet"])
def test_a_method_with_sample_weights_trains_on_the_clean_set_too(tmp_path, method):
    """--train-on-clean streams the clean samples after the noisy ones: the per-sample record
    (metrics' weight means, weights.npz, label-issues) stays the noisy training set's."""
    m = train(tiny(tmp_path, method=method, train_on_clean=True))
    assert m["history"][-1]["alpha_clean"] is not None
    w = np.load(tmp_path / "run" / "weights.npz")
    labels = np.load(tmp_path / "run" / "labels.npz")
    n = len(labels["train_index"])
    assert len(w["alpha"]) == len(w["beta"]) == len(w["is_noisy"]) == n == 1297 - 50
    assert w["alpha_history"].shape == (2, n)
    assert cli_main(["label-issues", str(tmp_path / "run")]) == 0
