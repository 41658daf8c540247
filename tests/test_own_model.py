"""Your own architecture (``--model MODULE:FUNCTION`` / ``FILE.py:FUNCTION``, ``model=builder``):
trained as l2b's own models are, rebuilt from elsewhere by resume, predict and label-issues, and
every builder l2b cannot use refused in one line before any work."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import l2b
from l2b.cli import main as cli_main

DATA = ["--data", "digits", "--val-per-class", "5", "--epochs", "1", "--progress", "none", "--noise", "symmetric:0.4"]

MLP_BUILDER = """
from l2b.models import MLP


def build(num_classes, in_channels, image_size, width=128):
    return MLP(num_classes, in_channels, image_size=image_size, hidden=width)
"""

OWN_NET = """
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes, in_channels=1, image_size=8):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, 24), nn.ReLU())
        self.head = nn.Linear(24, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def build(num_classes, in_channels, image_size):
    return Net(num_classes, in_channels, image_size)
"""


def _module(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(text))
    return path


def _weights(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


def test_a_builder_of_ones_own_trains_the_run_the_registered_model_trains(tmp_path):
    """The same architecture built by a file of one's own or by name: the same run to the bit (the
    builder's check, a forward in eval mode, moves no statistics and draws no random numbers)."""
    builder = _module(tmp_path / "src", "mlp_again", MLP_BUILDER)
    for name, model in (("registered", "mlp"), ("own", f"{builder}:build")):
        assert cli_main(["train", *DATA, "--method", "l2b", "--model", model, "--width", "16",
                         "--out", str(tmp_path / name)]) == 0
    own, registered = _weights(tmp_path / "own"), _weights(tmp_path / "registered")
    assert own.keys() == registered.keys()
    assert all(torch.equal(own[k], registered[k]) for k in own)
    assert (json.loads((tmp_path / "own" / "metrics.json").read_text())["test_acc_last"]
            == json.loads((tmp_path / "registered" / "metrics.json").read_text())["test_acc_last"])
    saved = json.loads((tmp_path / "own" / "config.json").read_text())
    assert saved["config"]["model"] == f"{builder}:build"
    assert saved["model_source"]["file"] == str(builder.resolve())
    assert (tmp_path / "own" / "model_source.py").read_text() == builder.read_text()  # kept for the record


@pytest.mark.filterwarnings("ignore:note")  # label-issues' note on a small clean set
def test_a_module_builder_is_found_again_from_another_directory(tmp_path, monkeypatch, capsys):
    src = tmp_path / "project"
    source = _module(src, "mynets", OWN_NET)
    run = tmp_path / "runs" / "own"
    monkeypatch.chdir(src)  # `mynets` imports from where l2b runs, as `python -m` would
    with pytest.raises(ZeroDivisionError):  # stopped after its first epoch
        l2b.train(run, data="digits", model="mynets:build", method="l2b", val_per_class=5, epochs=2,
                  noise="symmetric:0.4", progress="none", on_epoch=lambda row: 1 / 0 if row["epoch"] == 0 else None)
    assert not (run / "metrics.json").is_file()
    monkeypatch.chdir(tmp_path)  # elsewhere: the run's record of the module's folder finds it
    sys.modules.pop("mynets", None)
    finished = l2b.Run(run).resume()
    assert finished.finished and finished.config.model == "mynets:build"
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8), dtype=np.uint8)
    first = l2b.load_model(run).predict_proba(images)
    assert first.shape == (5, 10)
    assert finished.label_issues()["issues"] > 0  # scored by the model, rebuilt here
    capsys.readouterr()

    source.write_text(source.read_text() + "\n# edited after training\n")  # changed: said, and still built
    sys.modules.pop("mynets", None)
    assert np.array_equal(l2b.load_model(run).predict_proba(images), first)
    assert re.search(r"mynets\.py changed since the run trained; .* the one it trained with: .*model_source\.py",
                     capsys.readouterr().err)

    source.unlink()  # gone: a one-line error naming where it was and the run's copy, never the copy imported
    sys.modules.pop("mynets", None)
    assert cli_main(["predict", str(run), str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no module 'mynets' here" in err and "model_source.py" in err, err


def test_a_builder_passed_from_python_is_recorded_by_the_name_that_imports_it(tmp_path, monkeypatch):
    _module(tmp_path / "lib", "netlib", OWN_NET)
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    from netlib import Net  # noqa: E402  (written above)

    run = l2b.train(tmp_path / "run", data="digits", model=Net, method="ce", val_per_class=5, epochs=1,
                    progress="none")
    assert run.config.model == "netlib:Net"
    local = lambda num_classes: Net(num_classes)  # noqa: E731
    with pytest.raises(TypeError, match="cannot be imported again"):
        l2b.train(tmp_path / "lambda", data="digits", model=local, epochs=1)

    def main_builder(num_classes):
        return Net(num_classes)

    main_builder.__module__, main_builder.__qualname__ = "__main__", "main_builder"
    with pytest.raises(TypeError, match=r"__main__.*mymodels\.py"):
        l2b.train(tmp_path / "main", data="digits", model=main_builder, epochs=1)
    assert not (tmp_path / "lambda").exists() and not (tmp_path / "main").exists()


NO_FEATURES = """
from torch import nn


def build(num_classes, in_channels, image_size):
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))

        def forward(self, x):
            return self.net(x)
    return Wrapped()
"""

UNPOOLED = """
from torch import nn


class Net(nn.Module):  # forward_features as timm's: the feature map before pooling
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(6, num_classes)

    def forward_features(self, x):
        return self.conv(x)

    def forward(self, x):
        return self.head(self.pool(self.forward_features(x)).flatten(1))
"""

# (case, the module's text or None for no file, the spec given, extra flags, the error expected)
BAD = [
    ("no such file", None, "{dir}/absent.py:build", [], r"model .*absent\.py:build: .*absent\.py not found"),
    ("no such module", None, "absent_module_x:build", [], r"no module 'absent_module_x' here"),
    ("no such function", OWN_NET, "{file}:buld", [], r"has no 'buld'; it defines Net, build"),
    ("not callable", OWN_NET + "\nbuilder = 3\n", "{file}:builder", [], r"builder is a int, not a function or class"),
    ("syntax error", "def build(num_classes):\n    return (\n", "{file}:build", [], r"own\.py, line \d+: "),
    ("needs a package", "import package_not_installed_x\n", "{file}:build", [],
     r"importing it needs 'package_not_installed_x', which is not installed"),
    ("no num_classes", "def build(classes):\n    pass\n", "{file}:build", [], r"takes no num_classes"),
    ("needs more", "def build(num_classes, depth):\n    pass\n", "{file}:build", [], r"needs depth .* give them defaults"),
    ("width not taken", OWN_NET, "{file}:build", ["--width", "8"], r"takes no width .* drop --width"),
    ("not a module", "def build(num_classes):\n    return 'resnet'\n", "{file}:build", [], r"returned a str, not a torch\.nn\.Module"),
    ("wrong number of logits", OWN_NET.replace("Net(num_classes,", "Net(num_classes + 1,"), "{file}:build", [],
     r"gives \(2, 11\) for a batch of 2 inputs of 1×8×8; l2b needs a tensor of \(2, 10\)"),
    ("built for other inputs", OWN_NET.replace("Net(num_classes, in_channels, image_size)", "Net(num_classes, 3, 32)"),
     "{file}:build", [], r"fails on this data's inputs \(a batch of 1×8×8\): .*in_channels and image_size"),
    ("mlc without features", NO_FEATURES, "{file}:build", ["--method", "mlc"],
     r"method 'mlc' reads the model's features.*forward_features"),
    ("mlc with unpooled features", UNPOOLED, "{file}:Net", ["--method", "mlc"],
     r"forward_features\(x\) gives \(\d+, 6, 8, 8\) .* where its head reads \(\d+, 6\); it must return what model\.head reads"),
]


@pytest.mark.parametrize("case, text, spec, flags, expected", BAD, ids=[b[0] for b in BAD])
def test_a_builder_l2b_cannot_use_is_a_one_line_error_before_any_work(tmp_path, capsys, case, text, spec, flags,
                                                                      expected):
    file = _module(tmp_path / "src", "own", text) if text is not None else None
    spec = spec.format(dir=tmp_path, file=file)
    flags = flags if "--method" in flags else [*flags, "--method", "l2b"]
    code = cli_main(["train", *DATA, "--model", spec, *flags, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("l2b train: error:") and re.search(expected, err), err
    assert not (tmp_path / "out").exists()  # nothing left behind


@pytest.mark.parametrize("how", ["file", "module"])
def test_a_run_directory_that_names_its_own_copy_as_the_builder_runs_no_code(tmp_path, capsys, monkeypatch, how):
    """A crafted run (config.json can say anything) whose builder would be its own model_source.py:
    refused before anything is imported, whether named as a file or as a module found from there."""
    builder = _module(tmp_path / "src", "fine", OWN_NET)
    run = tmp_path / "run"
    assert cli_main(["train", *DATA, "--method", "ce", "--model", f"{builder}:build", "--out", str(run)]) == 0
    marker = tmp_path / "ran"
    (run / "model_source.py").write_text(f"open({str(marker)!r}, 'w').close()\n" + OWN_NET)
    saved = json.loads((run / "config.json").read_text())
    if how == "file":
        saved["config"]["model"] = f"{run / 'model_source.py'}:build"
    else:
        saved["config"]["model"] = "model_source:build"
        saved["model_source"]["root"] = str(run)
        monkeypatch.chdir(run)  # found from here too
    (run / "config.json").write_text(json.dumps(saved))
    for argv in (["predict", str(run), str(tmp_path / "src")], ["train", "--resume", str(run)],
                 ["label-issues", str(run)]):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert "l2b imports no code from a run directory" in err and "Traceback" not in err, err
    assert not marker.exists()


def test_a_grid_of_ones_own_architecture_trains_in_spawned_workers(tmp_path, monkeypatch):
    """l2b.compare(model=Builder, jobs=2): each worker, a fresh process, imports the builder again
    by the name recorded for it (the module found from the working directory)."""
    _module(tmp_path, "gridnets", OWN_NET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    from gridnets import Net  # noqa: E402  (written above)

    rows = l2b.compare(tmp_path / "grid", methods=["ce", "l2b"], noise="symmetric:0.4", seeds=1, jobs=2,
                       data="digits", model=Net, val_per_class=5, epochs=1, threads=1, progress="none")
    assert {r["method"] for r in rows} == {"ce", "l2b"}
    for method in ("ce", "l2b"):
        cell = tmp_path / "grid" / method / "symmetric_0.4" / "seed0"
        assert json.loads((cell / "config.json").read_text())["config"]["model"] == "gridnets:Net"
        assert (cell / "metrics.json").is_file() and (cell / "model_source.py").is_file()
