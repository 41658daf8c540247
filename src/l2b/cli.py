"""The ``l2b`` command line: ``l2b train`` (more subcommands register here)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from .methods import METHODS
from .config import TrainConfig, resumed_config
from .config_checks import load_yaml
from .calibrate import CUTS, DEFAULT_CUT, HELD_OUT_CUT, STEERED_CUT
from .console import first_rank, format_warning, one_line
from .data.download import SOURCES as DOWNLOADS
from .detect import SCORES
from .predict import WHICH
from .run_scores import MODELS
from .cli_flags import add_config_flags, add_option_flags, option_flags, options_table
from .trainer import train
from .version import __version__



def cmd_options(args: argparse.Namespace) -> int:
    methods = args.methods.split(",") if args.methods else None
    for m in methods or []:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; valid methods: {', '.join(sorted(METHODS))}")
    print(options_table(methods), end="")
    return 0


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then the YAML file, then the flags (flags win)."""
    settings: dict[str, Any] = {}
    if getattr(args, "config", None):
        settings.update(load_yaml(args.config))
        where = f"--config {args.config}"
    else:
        where = "config"
    names = {f.name for f in fields(TrainConfig)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    given = {k: v for d in flags.pop("method_args", []) for k, v in d.items()}  # the repeated flag
    given.update(option_flags(args))
    settings.update(flags)
    if given:  # YAML's method options (top-level or under method_args), then the flags'
        settings = TrainConfig.from_dict(settings, where).__dict__
        settings["method_args"] = {**settings["method_args"], **given}
    return TrainConfig.from_dict(settings, where)


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        given = {k: v for k, v in vars(args).items() if k in {f.name for f in fields(TrainConfig)}}
        given.update(option_flags(args))
        if getattr(args, "config", None):
            given = {**load_yaml(args.config), **given}
        if isinstance(given.get("method_args"), list):
            given["method_args"] = {k: v for d in given["method_args"] for k, v in d.items()}
        cfg = resumed_config(args.resume, given)
        metrics = train(cfg, resume=True)
    else:
        cfg = config_from_args(args)
        metrics = train(cfg, overwrite=args.overwrite)
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_rank() != 0:
        return 0  # under torchrun only rank 0 reports
    keys = ["method", "noise", "test_acc_last", "test_acc_at_best_val", "best_val_acc", "best_epoch", "epoch_seconds"]
    if metrics["best_epoch"] < 0:  # no clean set: nothing selected an epoch
        keys = [k for k in keys if k not in ("test_acc_at_best_val", "best_val_acc", "best_epoch")]
    print(json.dumps({k: metrics[k] for k in keys}))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    run_demo(args.methods.split(","), args.seeds, args.out, threads=args.threads)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .grid import run_compare

    names = {f.name for f in fields(TrainConfig)}
    settings = {k: v for k, v in vars(args).items() if k in names and k != "noise"}  # noise: per cell
    out = Path(args.out)
    run_compare(settings, args.methods.split(",") if args.methods else None,
                args.noise.split(",") if args.noise else None, args.seeds, out, jobs=args.jobs,
                devices=args.devices.split(",") if args.devices is not None else None, overwrite=args.overwrite,
                options=option_flags(args), grid=args.grid, log=lambda text: print(text, flush=True))
    print((out / "summary.md").read_text())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    path = write_report(args.dir, out=args.out)
    print(f"wrote {path} and its figures")
    return 0


def cmd_label_issues(args: argparse.Namespace) -> int:
    from .label_issues import console_lines, write_label_issues

    s = write_label_issues(args.dir, threshold=args.threshold, score=args.score, cut=args.cut, out=args.out,
                           show=args.show, model=args.model, cross_fit=args.cross_fit, data=args.data,
                           log=lambda line: print(f"l2b: {line}", file=sys.stderr, flush=True))
    out, err = console_lines(s)
    for line in err:
        print(f"l2b: {line}", file=sys.stderr)
    print("\n".join(out))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import console_line, write_predictions

    s = write_predictions(args.dir, args.inputs, out=args.out, which=args.model, top=args.top,
                          on_bad_images=args.on_bad_images, array=args.array, workers=args.workers,
                          device=args.device, data=args.data, batch_size=args.batch_size)
    print(console_line(s))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .data.download import download

    download(args.name, args.dir, log=lambda line: print(line, flush=True))
    return 0


def _at_least(least: int, unit: str = "", hint: str = ""):
    """An argparse type: a whole number of ``least`` or more (``unit``, e.g. folds, names it)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number" + (f" of {unit}" if unit else "")) from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value}{' ' + unit if unit else ''}: give {least} or more{hint}")
        return value

    return parse


_positive = _at_least(1)
_folds = _at_least(2, "folds", " (5 is usual)")


def _unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is outside [0, 1]")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="l2b", description="Learning to Bootstrap for noisy labels",
                                     allow_abbrev=False)
    parser.add_argument("--version", action="version",
                        version=f"l2b {__version__} (torch {torch.__version__}, Python {platform.python_version()})")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", allow_abbrev=False, help="train one model", description=(
        "Train one model on noisy labels. Settings come from the defaults, then --config FILE "
        "(YAML), then the flags; flags win."))
    p.add_argument("--config", help="YAML file of settings (keys as the flags, - or _)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint (its settings; "
                                                   "only --progress, --workers, --eval-batch-size, --device, --threads "
                                                   "may be given anew, and --data where the same data moved)")
    p.add_argument("--overwrite", action="store_true", help="clear --out first if it holds another run")
    add_config_flags(p)
    add_option_flags(p)
    p.set_defaults(func=cmd_train)
    c = sub.add_parser("compare", allow_abbrev=False, help="run a grid of methods × noise × seeds and summarise it", description=(
        "Run every (method, noise, seed) into OUT/<method>/<noise>/seed<k>/ (finished runs are skipped, "
        "interrupted ones resume) and write OUT/summary.csv and OUT/summary.md. Every train flag applies "
        "to all runs."))
    c.add_argument("--methods", help="comma-separated methods, e.g. ce,l2rw,l2b")
    c.add_argument("--noise", help="comma-separated noise specs, e.g. symmetric:0.2,symmetric:0.4 (your own data: "
                                   "none unless given)")
    c.add_argument("--seeds", type=int, help="seeds 0..N-1 per cell (default 1)")
    c.add_argument("--grid", help="YAML grid file: methods, noise, seeds and any train setting")
    c.add_argument("--jobs", type=int, default=1, help="runs at a time (worker processes)")
    c.add_argument("--devices", help="comma-separated devices assigned round-robin, e.g. cuda:0,cuda:1")
    c.add_argument("--out", required=True, help="grid directory")
    c.add_argument("--overwrite", action="store_true", help="run again the cells that hold runs with other settings")
    add_config_flags(c, skip=("method", "noise", "seed", "out", "progress"))
    add_option_flags(c)
    c.set_defaults(func=cmd_compare)
    r = sub.add_parser("report", allow_abbrev=False, help="figures and report.html for a run or a grid directory")
    r.add_argument("dir", metavar="RUN_DIR|GRID_DIR")
    r.add_argument("--out", help="write report.html and its figures here instead of RUN_DIR|GRID_DIR")
    r.set_defaults(func=cmd_report)
    li = sub.add_parser("label-issues", allow_abbrev=False, help="write RUN_DIR/label_issues.csv, the labels the run believes wrong")
    li.add_argument("dir", metavar="RUN_DIR")
    li.add_argument("--threshold", type=_unit_interval, default=None,
                    help="a fixed cut instead: flag a label when its trust alpha/(alpha+beta) (or model probability) "
                         "is below this")
    li.add_argument("--cut", default="auto", choices=["auto", *CUTS],
                    help="how many to flag: " + "; ".join(f"{k}: {v}" for k, v in CUTS.items()).replace("%", "%%")
                         + f" (auto: {STEERED_CUT} where a meta step weighted each sample on the clean set or the model "
                           f"learned from it, {HELD_OUT_CUT} where the clean set is held out, else {DEFAULT_CUT}; "
                           f"threshold when --threshold is given)")
    li.add_argument("--out", help="write label_issues.csv (and .png) here instead of the run directory")
    li.add_argument("--show", type=int, default=0, metavar="N", help="also draw the top N suspects into label_issues.png")
    li.add_argument("--data", metavar="SPEC", help="the run's dataset where it is now, if it moved since the run "
                                                   "trained (e.g. npz:FILE); checked against the run's record of its labels")
    li.add_argument("--model", default="auto", choices=MODELS,
                    help="the model that scores the labels: final (last epoch), best (best_model.pt, the best "
                         "clean-validation epoch), early (early_model.pt, the last epoch before it began to memorise "
                         "its labels) or auto: final, unless it has memorised its labels since the best epoch "
                         "(judged on a held-out clean set); then early")
    li.add_argument("--cross-fit", type=_folds, default=0, metavar="K",
                    help="score every training sample with a model that never trained on it: K models with this "
                         "run's settings, each without one of K folds (K trainings, into RUN_DIR/cross-fit, "
                         "resumable); for a run that memorised its labels")
    li.add_argument("--score", default="auto", choices=["auto", *SCORES],
                    help="how a label is scored: " + "; ".join(f"{k}: {v}" for k, v in SCORES.items()).replace("%", "%%")
                         + " (auto: model, the best ranking in benchmarks/label_issues.py)")
    li.set_defaults(func=cmd_label_issues)
    pr = sub.add_parser("predict", allow_abbrev=False, help="classify new images with a run's model, into a csv",
                        description="Classify new inputs with the model of RUN_DIR, prepared as the run's test set was "
                                    "(the training data are not needed), and write a csv of each input's most probable "
                                    "classes.")
    pr.add_argument("dir", metavar="RUN_DIR")
    pr.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="image files or folders of them (searched through) for a run on image files; .npz or .npy "
                         "files of uint8 images (N×H×W or N×H×W×C) for a run on arrays")
    pr.add_argument("--model", default="auto", choices=list(WHICH),
                    help="; ".join(f"{k}: {v}" for k, v in WHICH.items()))
    pr.add_argument("--out", help="the csv to write (default RUN_DIR/predictions.csv)")
    pr.add_argument("--top", type=_positive, default=1, metavar="K", help="the K most probable classes of each input")
    pr.add_argument("--array", metavar="NAME", help="the npz array that holds the images (default: its only array, "
                                                   "else x, else x_test)")
    pr.add_argument("--on-bad-images", default="error", choices=["error", "skip"],
                    help="an unreadable image file: stop naming it (error) or leave it out, named in a warning (skip)")
    pr.add_argument("--batch-size", type=_positive, default=None, metavar="N",
                    help="inputs per forward pass (default: the run's --eval-batch-size)")
    pr.add_argument("--workers", type=_at_least(0), default=None, help="processes that decode image files (default: none for "
                                                              "a batch of them or fewer, else as training's default)")
    pr.add_argument("--device", help="where the model runs (default: the run's device where this machine has it, "
                                     "else cpu)")
    pr.add_argument("--data", metavar="SPEC", help="the run's dataset where it is now: needed only for runs of l2b "
                                                   "versions that did not record how their inputs were prepared")
    pr.set_defaults(func=cmd_predict)
    dl = sub.add_parser("download", allow_abbrev=False, help="fetch a research dataset (CIFAR, MNIST, CIFAR-N's labels) into a directory",
                        description="Fetch a research dataset from its publisher (or torchvision's mirrors), check each "
                                    "file against its published MD5 sum, and lay it out as --data NAME:DIR reads it. "
                                    "Files already there and whole are kept.")
    dl.add_argument("name", choices=list(DOWNLOADS), metavar="NAME", help=" | ".join(DOWNLOADS))
    dl.add_argument("dir", nargs="?", metavar="DIR", help="where to put it (default: data/NAME; CIFAR-N's labels: "
                                                         "data/cifar10 or data/cifar100, beside the images)")
    dl.set_defaults(func=cmd_download)
    o = sub.add_parser("options", allow_abbrev=False, help="every method's options: values, default, help")
    o.add_argument("methods", nargs="?", metavar="METHOD[,METHOD]", help="only these methods")
    o.set_defaults(func=cmd_options)
    d = sub.add_parser("demo", allow_abbrev=False, help="CE vs L2RW vs L2B on the bundled digits, 40%% symmetric noise")
    d.add_argument("--methods", default="ce,l2rw,l2b")
    d.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per method")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--threads", type=int, default=None, help="torch CPU threads per run (default: as l2b train)")
    d.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous, warnings.formatwarning = warnings.formatwarning, format_warning
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if os.environ.get("L2B_DEBUG"):
            raise
        if args.command == "train":
            run = args.resume or getattr(args, "out", None) or TrainConfig().out
            print(f"\nl2b train: interrupted; resume with `l2b train --resume {run}` "
                  "(it continues from the last finished epoch)", file=sys.stderr)
        elif args.command == "compare":
            print("\nl2b compare: interrupted; run the same command again to resume "
                  "(finished cells are skipped, unfinished ones continue)", file=sys.stderr)
        else:
            print(f"\nl2b {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `l2b compare ... | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        if args.command == "compare":
            print("l2b compare: output closed; the grid stopped (run the same command to resume)", file=sys.stderr)
        return 141
    except (ValueError, OSError, ImportError) as err:  # bad input, or a fault of the environment
        if os.environ.get("L2B_DEBUG"):
            raise
        if first_rank():  # under torchrun: said once, by rank 0
            print(f"l2b {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = previous


if __name__ == "__main__":
    sys.exit(main())
