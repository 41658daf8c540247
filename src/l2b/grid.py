"""``l2b compare``: a grid of runs (methods × noise settings × seeds) and its summary tables.

Every run lives in ``OUT/<method>/<noise>/seed<k>/`` (noise with ':' and '/' made file-safe). A
run with ``metrics.json`` is finished and skipped; one with only a checkpoint is resumed. Runs go
one at a time, or ``jobs`` at a time in worker processes (round-robin over ``devices`` on a GPU
host). ``summary.csv`` has one row per (method, noise) with the columns of ``SUMMARY_COLUMNS``;
``summary.md`` lays the means ± std out like the paper's Tables 1–2 (methods × noise levels).
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .config import TrainConfig, labels_as_given, own_labels
from .config_checks import check_device, load_yaml
from .rundir import config_differences, read_json
from .trainer import train

SUMMARY_COLUMNS = ["method", "noise", "seeds", "test_acc_last_mean", "test_acc_last_std",
                   "test_acc_at_best_val_mean", "test_acc_at_best_val_std", "epoch_seconds"]


def safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in text)


def run_dir(out: Path, method: str, noise: str, seed: int) -> Path:
    return out / safe(method) / safe(noise) / f"seed{seed}"


def grid_configs(base: TrainConfig, methods: list[str], noises: list[str], seeds: int, out: Path,
                 options=None) -> list[TrainConfig]:
    """One validated config per (method, noise, seed) cell; ``options(method, noise)``, when
    given, is that cell's ``method_args`` (e.g. co-teaching's forget rate per noise setting)."""
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    for what, values in (("methods", methods), ("noise", noises)):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:  # the same cell twice: two runs into one directory
            raise ValueError(f"{what} lists {', '.join(map(repr, twice))} more than once; give each once")
    cfgs = []
    for method in methods:
        for noise in noises:
            args = base.method_args if options is None else options(method, noise)
            for seed in range(seeds):
                cfg = replace(base, method=method, noise=noise, seed=seed, method_args=args,
                              out=str(run_dir(out, method, noise, seed)), progress="none")
                cfg.validate()  # contradictions fail before any run starts
                cfgs.append(cfg)
    return cfgs


def grid_method_args(methods: list[str], method_args, flags: dict[str, Any]) -> dict[str, Any]:
    """A grid's method options: ``method_args`` (a dict, or a grid file's list of one-key dicts)
    with each option flag (``flags``: name -> value) given to the grid's methods that declare it.
    One-line errors: a scoped option of a method the grid does not run, a flag none of its methods
    reads, and one that two of them read differently."""
    from .methods import declared_options

    if isinstance(method_args, list):
        method_args = {k: v for d in method_args for k, v in d.items()}
    for key in method_args:  # a scoped option for a method the grid does not run
        scope = key.split(".", 1)[0] if "." in key else None
        if scope is not None and scope not in methods:
            raise ValueError(f"--method-arg {key}: {scope!r} is not in this grid ({', '.join(methods)}); "
                             f"add it to --methods or drop the option")
    for name, value in flags.items():  # an option flag applies to the grid's methods that declare it
        owners = [m for m in methods if m in declared_options()[name]]
        flag = "--" + name.replace("_", "-")
        if not owners:
            raise ValueError(f"{flag} is an option of {', '.join(declared_options()[name])}, "
                             f"none of which is in this grid ({', '.join(methods)})")
        meanings = {(declared_options()[name][m].help, declared_options()[name][m].type) for m in owners}
        if len(meanings) > 1:
            raise ValueError(f"{flag} means different things to {', '.join(owners)} in this grid; give it to one "
                             f"method: " + " or ".join(f"--method-arg {m}.{name}={value}" for m in owners))
        method_args = {**method_args, **{f"{m}.{name}": value for m in owners}}
    return method_args


def check_cells(cfgs: list[TrainConfig], overwrite: bool = False) -> None:
    """Before any cell runs: a cell directory that holds a run with other settings (another
    --epochs, --lr, ...) is refused, or with ``overwrite`` cleared, so that old numbers never pass
    for new ones."""
    stale = []
    for cfg in cfgs:
        saved = Path(cfg.out) / "config.json"
        if not saved.is_file():
            continue
        diff = config_differences(read_json(saved).get("config", {}), asdict(cfg), asdict(TrainConfig()))
        if diff and overwrite:
            shutil.rmtree(cfg.out)
        elif diff:
            k, (old, new) = next(iter(diff.items()))
            stale.append(f"{cfg.out} ({k}={old!r}, now {new!r}" + (f", and {len(diff) - 1} more" if len(diff) > 1 else "") + ")")
    if stale:
        raise ValueError(f"{len(stale)} grid cell(s) hold runs with other settings: {stale[0]}"
                         + (f" and {len(stale) - 1} more" if len(stale) > 1 else "")
                         + "; use another --out, or --overwrite to run them again")


def run_one(cfg_dict: dict[str, Any]) -> str:
    """Run (or resume, or skip) one grid cell; returns what happened."""
    cfg = TrainConfig(**cfg_dict)
    out = Path(cfg.out)
    if (out / "metrics.json").is_file():
        if "diverged" in read_json(out / "metrics.json"):
            return f"skip   {out} (diverged)"
        return f"skip   {out} (finished)"
    if (out / "checkpoint.pt").is_file():
        train(cfg, resume=True)
        return f"resume {out}"
    train(cfg, overwrite=True)  # a cell without a checkpoint holds nothing worth keeping
    return f"run    {out}"


def grid_pool(jobs: int) -> ProcessPoolExecutor:
    """The grid's worker processes (see :func:`start_grid_worker`)."""
    import multiprocessing as mp

    return ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=start_grid_worker,
                               initargs=(os.getpid(), mp.get_start_method()))


def start_grid_worker(parent: int, start_method: str) -> None:
    """A grid worker: spawned (a fresh interpreter, so that no cell inherits another's state), it
    ends with the grid (:func:`end_with_parent`) and starts its own processes (an image-file
    loader's workers) as ``l2b train`` would in the grid's process. A process started by "spawn"
    takes "spawn" as its own start method, and a loader's workers would each import torch anew,
    every epoch: a grid of image-file runs trained several times slower than its runs alone."""
    import multiprocessing as mp

    end_with_parent(parent)
    mp.set_start_method(start_method, force=True)


@contextmanager
def main_script_unnamed():
    """While the grid's workers start, the script that runs the grid is not named to them. A
    spawned worker runs the main script again to find what it defines, so a script that calls
    ``l2b.compare(jobs=N)`` at its top level, not under ``if __name__ == "__main__":``, would start
    the grid again in every worker, which dies of it. The workers need nothing of the script: they
    run ``run_one`` of this module on plain settings."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__} if main else {}
    if main is not None:
        main.__dict__.pop("__file__", None)
        main.__spec__ = None  # multiprocessing reads it, and names a module run with -m by it
    try:
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


def end_with_parent(parent: int) -> None:
    """A grid worker ends when the grid's process does (Linux's parent-death signal): a `kill` or a
    scheduler's SIGTERM of `l2b compare` leaves no worker training on, holding its cell's lock. The
    cell resumes from its last checkpoint when the grid runs again."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no prctl: the worker outlives a killed grid, as before
        return
    if os.getppid() != parent:  # the grid ended before the signal was set
        os._exit(1)


def grid_workers(jobs: int, devices: list[str] | None) -> list[str] | None:
    """``--jobs`` and ``--devices`` checked, every device before any cell runs on the first."""
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    for device in devices or ():
        if not device.strip():
            raise ValueError(f"--devices {','.join(devices)!r}: an empty entry; give devices like cuda:0,cuda:1")
        try:
            check_device(device.strip())
        except ValueError as err:
            raise ValueError(f"--devices {','.join(devices)}: {err}") from None
    return [d.strip() for d in devices] if devices else None


def run_grid(cfgs: list[TrainConfig], jobs: int = 1, devices: list[str] | None = None, log=print) -> None:
    devices = grid_workers(jobs, devices)
    dicts = []
    for i, cfg in enumerate(cfgs):
        d = asdict(cfg)
        if devices:
            d["device"] = devices[i % len(devices)]
        dicts.append(d)
    if jobs <= 1:
        for i, d in enumerate(dicts, 1):
            log(f"[{i}/{len(dicts)}] {run_one(d)}")
        return
    with grid_pool(jobs) as pool:
        done = 0
        try:
            with main_script_unnamed():  # the workers start as the cells are handed out
                results = pool.map(run_one, dicts)
            for msg in results:
                done += 1
                log(f"[{done}/{len(dicts)}] {msg}")
        except BrokenProcessPool:
            raise ChildProcessError(
                f"a grid worker ended abruptly (killed, or out of memory) while running {dicts[done]['out']} or a "
                f"cell after it; {done} of {len(dicts)} cells are done: run the same command again to continue "
                f"(finished cells are skipped), with fewer --jobs if memory ran out") from None


def run_compare(settings: dict[str, Any], methods: list[str] | None, noises: list[str] | None, seeds: int | None,
                out: Path, jobs: int = 1, devices: list[str] | None = None, overwrite: bool = False,
                options: dict[str, Any] | None = None, grid: str | None = None, where: str = "compare",
                log=print) -> list[dict[str, Any]]:
    """Run (or resume, or skip) every cell of a grid into ``out`` and summarise it: ``settings``
    are the cells' shared settings (``l2b train``'s, by name; ``method_args`` too), ``options``
    the method options given by name, each to the grid's methods that declare it; ``grid``: a grid
    file (:func:`load_grid_file`) under them all, whose methods, noise and seeds (1 if none) serve
    where none are given; ``where`` names the settings in errors. Without noise settings, a grid on
    the user's own labels takes them as given. Returns the summary's rows."""
    file = load_grid_file(grid) if grid else {}
    methods, noises = methods or file.pop("methods", None), noises or file.pop("noise", None)
    seeds = seeds if seeds is not None else int(file.pop("seeds", 1))
    settings = {**{k: v for k, v in file.items() if k not in ("methods", "noise", "seeds")}, **settings}
    if not noises and own_labels(settings.get("data", "")):
        noises = ["none"]  # your own labels, compared as given, as `l2b train` takes them
    if not methods or not noises:
        raise ValueError("give the methods and the noise settings of the grid (--methods M1,M2 and --noise "
                         "SPEC1,SPEC2, or a --grid file with them)")
    if settings.get("holdout"):
        raise ValueError(f"--holdout {settings['holdout']} trains a fold of l2b label-issues --cross-fit, which a grid's "
                         f"summary leaves out; drop it (--train-subset N trains on part of the data)")
    settings = {**settings, "method_args": grid_method_args(methods, settings.get("method_args", {}), options or {})}
    base = TrainConfig.from_dict(settings, grid or where)
    cfgs = grid_configs(base, methods, noises, seeds, out)
    check_cells(cfgs, overwrite=overwrite)
    log(f"{len(cfgs)} runs: {len(methods)} methods × {len(noises)} noise settings × {seeds} seeds -> {out}")
    run_grid(cfgs, jobs=jobs, devices=devices, log=log)  # jobs and devices checked there, before any cell runs
    return summarize(out)


def collect(out: Path, finished_only: bool = True) -> list[dict[str, Any]]:
    """Every finished run below ``out``: its metrics.json plus its config and the options its
    method ran with (with ``finished_only=False`` also the runs that diverged, marked by their
    "diverged" entry). The fold runs of ``l2b label-issues --cross-fit`` inside a run directory
    are not runs of the grid (each trained on part of the data), and are left out; a fold run
    that is ``out`` itself is the run asked for."""
    runs = []
    for metrics_path in sorted(out.rglob("metrics.json")):
        saved = read_json(metrics_path.parent / "config.json", need=("config",))
        config, options = saved["config"], saved.get("resolved", {}).get("method_options", {})
        if config.get("holdout") and metrics_path.parent != out:
            continue
        metrics = read_json(metrics_path)
        if "diverged" in metrics:
            if finished_only:
                continue
            metrics = {**metrics, "method": config["method"], "noise": config["noise"], "seed": config["seed"]}
        runs.append({"dir": metrics_path.parent, "config": config, "options": options, **metrics})
    return runs


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def diverged_runs(out: Path) -> list[dict[str, Any]]:
    """The runs below ``out`` that stopped because their loss or parameters became non-finite."""
    return [r for r in collect(out, finished_only=False) if "diverged" in r]


def group_runs(out: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The finished runs below ``out`` by (method, noise)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in collect(out):
        groups.setdefault((run["method"], run["noise"]), []).append(run)
    return groups


def summary_row(method: str, noise: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of ``SUMMARY_COLUMNS``: means and standard deviations over the seeds' runs (empty
    where the data have no test set)."""
    row = {"method": method, "noise": noise, "seeds": len(runs)}
    for key in ("test_acc_last", "test_acc_at_best_val"):
        scored = [r[key] for r in runs if r[key] is not None]
        row[key + "_mean"], row[key + "_std"] = (round(v, 3) for v in mean_std(scored)) if scored else (None, None)
    return {**row, "epoch_seconds": round(statistics.mean(r["epoch_seconds"] for r in runs), 3)}


def summarize(out: Path) -> list[dict[str, Any]]:
    """Write summary.csv and summary.md for the runs below ``out``; return the rows."""
    groups = group_runs(out)
    rows = [summary_row(method, noise, runs) for (method, noise), runs in groups.items()]
    own = {noise for (_, noise), runs in groups.items()
           if any(labels_as_given(r["config"].get("data", ""), noise) for r in runs)}
    with open(out / "summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    text = data_line(groups) + (markdown_tables(rows, own) if rows else "No finished run.\n")
    diverged = diverged_runs(out)
    if diverged:
        text += "\n### Diverged runs (left out of the tables)\n\n" + "".join(
            f"- {r['dir']}: {r['diverged']['what']} became NaN/inf at epoch {r['diverged']['epoch'] + 1}\n"
            for r in diverged)
    (out / "summary.md").write_text(text)
    return rows


def data_line(groups) -> str:
    """What the grid's runs trained on, for the head of summary.md: their data, and the lists that
    left samples out or corrected labels (``--exclude``, ``--relabel``), where any run had one."""
    configs = [r["config"] for runs in groups.values() for r in runs]
    if not configs:
        return ""
    parts = [", ".join(dict.fromkeys(str(c.get("data", "")) for c in configs))]
    for flag in ("exclude", "relabel"):
        given = list(dict.fromkeys(str(c[flag]) for c in configs if c.get(flag)))
        if given:
            parts.append(f"--{flag} {', '.join(given)}")
    return f"Data: {'; '.join(parts)}\n\n"


def markdown_tables(rows: list[dict[str, Any]], own: set[str] = frozenset()) -> str:
    """The summary's two tables, a column per noise setting (``own``: the settings that are runs on
    the user's own labels as given, headed so)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    noises = list(dict.fromkeys(r["noise"] for r in rows))
    heads = ["your labels (no noise injected)" if n in own else n for n in noises]
    cell = {(r["method"], r["noise"]): r for r in rows}
    parts = []
    for title, key in (("Test accuracy (%) at the best clean-validation epoch", "test_acc_at_best_val"),
                       ("Test accuracy (%) at the last epoch", "test_acc_last")):
        lines = [f"### {title}", "", "| method | " + " | ".join(heads) + " | s / epoch |",
                 "|---|" + "---|" * (len(noises) + 1)]
        for m in methods:
            vals = []
            for n in noises:
                r = cell.get((m, n))
                vals.append("—" if r is None else "no test set" if r[key + "_mean"] is None else
                            f"{r[key + '_mean']:.2f} ± {r[key + '_std']:.2f} (n={r['seeds']})")
            secs = statistics.mean(cell[(m, n)]["epoch_seconds"] for n in noises if (m, n) in cell)
            lines.append(f"| {m} | " + " | ".join(vals) + f" | {secs:.2f} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def load_grid_file(path: str) -> dict[str, Any]:
    """A YAML grid: ``methods: [...]``, ``noise: [...]``, ``seeds: N`` and any train setting but
    those each cell sets (method, seed, out); one-line errors name the file and the key."""
    data = load_yaml(path)
    for key, example in (("methods", "[ce, l2b]"), ("noise", "[symmetric:0.2, symmetric:0.4]")):
        value = data.get(key)
        if isinstance(value, str):
            value = data[key] = [v.strip() for v in value.split(",")]
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) and v for v in value)):
            raise ValueError(f"{path}: {key} must be a list of names, e.g. {key}: {example}; got {value!r}")
    seeds = data.get("seeds")
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int)):
        raise ValueError(f"{path}: seeds must be a whole number (how many seeds each cell runs), got {seeds!r}")
    per_cell = [k for k in ("method", "seed", "out") if k in data]
    if per_cell:
        raise ValueError(f"{path}: {', '.join(per_cell)} is set for each cell (by methods:, seeds: and --out); "
                         f"drop it from the grid file")
    return data
