"""Runs from Python, as the ``l2b`` command makes them: :func:`train` trains one run and
:func:`compare` a grid, with the settings of ``l2b train`` given by name; :class:`Run` reads a
run directory (finished, stopped, or written by the command line): its settings, its history and
metrics, its model, its label issues and its report.

Every setting is checked as the command line checks it, before any data are read, and a run
written here is the run ``l2b train`` writes with the same settings, to the bit.
"""

from __future__ import annotations

import difflib
import json
import os
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .rundir import not_a_run, read_json, read_npz

if TYPE_CHECKING:
    from .config import TrainConfig

# the settings, the methods and the trainer are imported where called: `import l2b` stays light


def _settings(config: str | Path | None, given: dict[str, Any], call: str) -> dict[str, Any]:
    """A YAML file's settings, then the keywords (which win); an unknown keyword is a TypeError
    naming the nearest setting."""
    from .config import TrainConfig
    from .config_checks import load_yaml
    from .methods import declared_options

    names = {f.name for f in fields(TrainConfig)} | set(declared_options())
    for key in given:
        if key not in names:
            near = difflib.get_close_matches(key, sorted(names), n=1)
            raise TypeError(f"{call}() got an unknown setting {key!r}" + (f"; did you mean {near[0]!r}?" if near else "")
                            + " (the settings are l2b train's flags with _ for -, and the methods' options: "
                              "l2b train --help, l2b options)")
    given = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in given.items()}  # exclude=Path(...)
    if callable(given.get("model")):  # your own builder, by the name that imports it again
        from .models.custom import spec_of

        given["model"] = spec_of(given["model"])
    return {**(load_yaml(str(config)) if config is not None else {}), **given}


def train(out: str | Path | None = None, *, resume: str | Path | None = None, config: str | Path | None = None,
          overwrite: bool = False, on_epoch: Callable[[dict], Any] | None = None, **settings: Any) -> "Run":
    """Train one run into ``out`` and return it (a :class:`Run`); ``l2b train``'s flags are the
    keywords (``data="digits", method="l2b", noise="symmetric:0.4", epochs=30``), the methods'
    options too (``beta=0.6``, or ``method_args={"beta": 0.6}``); ``config``: a YAML file of
    settings, which the keywords override. ``resume=RUN`` continues a stopped run with its own
    settings (only those that leave its results alone may be given: ``threads``, ``device``,
    ``workers``, ``progress``, ``eval_batch_size``, and ``data`` where the same data moved).
    ``overwrite`` replaces a finished run in ``out``. ``on_epoch(row)``: called after each epoch's
    checkpoint is written, with its row of metrics.jsonl (to log it to your own tracker, or to stop:
    an exception it raises ends the run there, resumable as after Ctrl-C)."""
    from .config import TrainConfig, resumed_config
    from .trainer import train as train_run

    given = _settings(config, settings, "l2b.train")
    if resume is not None:
        if out is not None and Path(out).resolve() != Path(resume).resolve():
            raise ValueError(f"l2b.train(out={str(out)!r}, resume={str(resume)!r}): resume continues the run in its own "
                             f"directory; give one of them")
        if overwrite:
            raise ValueError("l2b.train(resume=..., overwrite=True): a resumed run continues, it is not replaced")
        cfg = resumed_config(resume, given, flag=False)
        with torch_state_kept(cfg.device):
            train_run(cfg, resume=True, on_epoch=on_epoch)
        return Run(resume)
    if out is not None:
        given["out"] = str(out)
    cfg = TrainConfig.from_dict(given, "l2b.train()" if config is None else str(config))
    with torch_state_kept(cfg.device):
        train_run(cfg, overwrite=overwrite, on_epoch=on_epoch)
    return Run(cfg.out)


@contextmanager
def torch_state_kept(device: str):
    """Your process's torch as it was before a run: a run seeds torch's random generators and may
    set its CPU threads (one on a machine of two cores), which ``l2b train`` leaves to end with its
    process; here they are restored, so that your own code runs after it as it would have."""
    import torch

    threads = torch.get_num_threads()
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if cuda else []):
            yield
    finally:
        torch.set_num_threads(threads)


def compare(out: str | Path, methods: list[str] | str | None = None, noise: list[str] | str | None = None,
            seeds: int | None = None, *, jobs: int = 1, devices: list[str] | None = None, overwrite: bool = False,
            grid: str | Path | None = None, **settings: Any) -> list[dict[str, Any]]:
    """Run a grid (``l2b compare``): every method × noise setting × seed into
    ``out/<method>/<noise>/seed<k>/`` (finished cells are skipped, stopped ones resumed), then its
    summary (``out/summary.md``, ``summary.csv``), whose rows are returned: per (method, noise),
    the mean and std over the seeds of the test accuracy at the last and at the best-validation
    epoch. ``methods``, ``noise``: lists, or text with commas as on the command line; ``noise``
    None on your own labels takes them as given; ``seeds``: 1 unless given. ``grid``: a grid file
    (``l2b compare --grid``: methods, noise, seeds and settings), which the arguments override.
    Other keywords: as :func:`train`; a method option given by name goes to the grid's methods that
    declare it."""
    from .config import TrainConfig
    from .grid import run_compare

    given, names = _settings(None, settings, "l2b.compare"), {f.name for f in fields(TrainConfig)}
    options = {k: v for k, v in given.items() if k not in names}  # method options, to the methods that declare them
    split = lambda v: v.split(",") if isinstance(v, str) else None if v is None else list(v)  # noqa: E731
    with torch_state_kept(str(given.get("device", "auto"))):  # cells run here when jobs is 1
        return run_compare({k: v for k, v in given.items() if k in names}, split(methods), split(noise), seeds,
                           Path(out), jobs=jobs, devices=devices, overwrite=overwrite, options=options,
                           grid=None if grid is None else str(grid), where="l2b.compare()",
                           log=lambda text: print(text, flush=True))


def download(name: str, root: str | Path | None = None) -> str:
    """``l2b download``: a research dataset (cifar10, cifar100, mnist, fashion-mnist) fetched into
    ``root`` (default ``data/NAME``) and checked; returns the ``data=`` spec that reads it. CIFAR-N's
    human labels (cifar10n, cifar100n) go beside the CIFAR images (default ``data/cifar10``,
    ``data/cifar100``); then the label file's path is returned."""
    from .data.download import download as fetch

    return fetch(name, root, log=lambda line: print(line, flush=True))


class Run:
    """A run directory of ``l2b train`` or :func:`train`, read as it is on disk now.

    ``config``: its settings (a ``TrainConfig``); ``history``: a dict per finished epoch
    (metrics.jsonl: losses, accuracies, learning rate, mean α and β, seconds); ``metrics``: the
    final metrics (metrics.json), None until it finishes; ``finished``, ``epochs_done``;
    ``labels`` and ``weights``: its labels.npz and weights.npz as numpy arrays.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise not_a_run(self.path, "train --resume",
                            f"{self.path}: no config.json; give the directory of a run (l2b train's --out)")

    def __repr__(self) -> str:
        cfg = self.config
        state = f"{self.epochs_done}/{cfg.epochs} epochs"
        m = self.metrics
        if m is not None and "diverged" in m:
            state += ", diverged"
        elif m is not None and m.get("test_acc_last") is not None:
            state += f", test {m['test_acc_last']:.1f}% at the last epoch"
        return f"Run('{self.path}': {cfg.method} on {cfg.data}, noise {cfg.noise}, {state})"

    @property
    def config(self) -> "TrainConfig":
        from .config import TrainConfig

        saved = self.path / "config.json"
        return TrainConfig.from_dict(read_json(saved, need=("config",))["config"], str(saved))

    @property
    def history(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise ValueError(f"{path}, line {number}: not a JSON object; the file was cut or edited "
                                     f"(l2b writes a whole line at a time)") from None
        return rows

    @property
    def metrics(self) -> dict[str, Any] | None:
        path = self.path / "metrics.json"
        return read_json(path) if path.is_file() else None

    @property
    def labels(self) -> dict[str, Any]:
        """labels.npz: the training samples' given (``noisy``) and true labels, ``is_noisy``, their
        places in the dataset (``train_index``; the clean set's: ``val_index``), the realised noise
        ``transition`` matrix (numpy arrays)."""
        return read_npz(self.path / "labels.npz")

    @property
    def weights(self) -> dict[str, Any] | None:
        """weights.npz: per training sample, the last epoch's α, β and pseudo-label, and the last
        epochs' (``alpha_history``...); None for a method without per-sample weights."""
        path = self.path / "weights.npz"
        return read_npz(path) if path.is_file() else None

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    def resume(self, **settings: Any) -> "Run":
        """Continue this run where it stopped (see :func:`train`'s ``resume``)."""
        return train(resume=self.path, **settings)

    def load_model(self, which: str = "auto", **kwargs: Any):
        """Its model for new inputs: :func:`l2b.load_model` (``which``: auto, best, final, early)."""
        from .predict import load_model

        return load_model(self.path, which, **kwargs)

    def label_issues(self, **kwargs: Any) -> dict[str, Any]:
        """The labels this run believes wrong, as ``l2b label-issues`` finds them (its options by
        name: ``cut``, ``model``, ``show``, ``cross_fit``, ``out``, ...): writes label_issues.csv
        and returns its summary, ``rows`` holding the csv's rows (a dict each, most suspect first),
        ``issues`` their count, and ``precision``/``recall``/``auc`` where noise was injected.
        Notes and warnings the command line prints go to Python's ``warnings``."""
        import warnings

        from .label_issues import console_lines, write_label_issues

        summary = write_label_issues(self.path, log=lambda line: print(line, flush=True), **kwargs)
        for line in console_lines(summary)[1]:
            warnings.warn(line, stacklevel=2)
        return summary

    def report(self, out: str | Path | None = None) -> Path:
        """Write the run's figures and report.html (into ``out``, default the run); returns its path."""
        from .report import write_report

        return write_report(self.path, out=out)
