"""Every method on a device, as a user runs it there: train, stop and resume, resume a run begun
on the CPU, mixed precision, `l2b label-issues` and `l2b report` on the run, and one L2B run under
torchrun; with the CPU's test accuracy of the same run beside the device's.

The test suite runs on the CPU only (CI has no GPU); this is the check that the device path of each
method works end to end. Bundled digits, PreActResNet-18 at width 8 (convolutions, batch norm),
symmetric 40% noise, 10 clean per class, 3 epochs, seed 0. The table says, per method:
- s: seconds of the 3-epoch run on the device (a small model: start-up dominates);
- test acc on the device and on the CPU (same seed and data order; float sums differ, so the two
  runs part ways over 3 epochs and only land near each other);
- resume: the largest parameter difference between the whole run and one stopped after epoch 1
  and resumed, both with deterministic kernels (`--deterministic`; 0: the resumed run is the
  whole run bit for bit);
- from CPU: a run stopped on the CPU after epoch 1 and resumed on the device, its test accuracy;
- amp: test accuracy of a 3-epoch run under bf16 autocast (`--amp`, CUDA only);
- label-issues / report: the command's exit status on the device run (0: it worked).
With `--device cpu` the CPU column is the run itself and "from CPU" the resumed run (nothing moves).

    python benchmarks/device_check.py --device cuda            # the whole table (about 2 min on a GPU)
    python benchmarks/device_check.py --device cpu --methods ce,l2b --quick   # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from results_md import check_device_arg, record

BASE = dict(data="digits", model="preact-resnet18", width=8, epochs=3, batch_size=64, val_per_class=10,
            noise="symmetric:0.4", seed=0, progress="none", threads=None)
# each method at its defaults, and the L2B engines and modes a user may pick
CASES = {"ce": ("ce", {}), "bootstrap": ("bootstrap", {}), "mixup": ("mixup", {}), "coteaching": ("coteaching", {}),
         "forward": ("forward", {}), "glc": ("glc", {}), "distill": ("distill", {}), "mlc": ("mlc", {}),
         "mwnet": ("mwnet", {}), "l2rw": ("l2rw", {}), "l2b": ("l2b", {}),
         "l2b jvp": ("l2b", {"engine": "jvp"}), "l2b unroll": ("l2b", {"engine": "unroll"}),
         "l2b last-layer": ("l2b", {"engine": "last-layer"}),
         "l2b no clean set": ("l2b", {"meta_set": "select:small-loss", "warmup_epochs": 1})}


def config(method: str, extra: dict, out: Path, device: str, **more):
    """The case's settings; its method options (engine=...) join method_args as in a YAML file."""
    from l2b.config import TrainConfig

    return TrainConfig.from_dict({**BASE, "method": method, "device": device, "out": str(out), **extra, **more})


def quietly(fn, *args, **kwargs):
    """Run ``fn``, its console output kept back; the result, or the error as one line."""
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            return fn(*args, **kwargs), None
    except Exception as err:  # a failure is a row of the table, not the end of the check
        return None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:120]


def cli(*argv: str) -> int | str:
    from l2b.cli import main

    rc, err = quietly(main, list(argv))
    return err if err else rc


def final_model(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]


def test_acc(out: Path) -> float | None:
    path = out / "metrics.json"
    return json.loads(path.read_text()).get("test_acc_last") if path.is_file() else None


def check(name: str, root: Path, device: str) -> dict:
    from l2b.trainer import train

    method, extra = CASES[name]
    slug = name.replace(" ", "-")
    row: dict = {"case": name}
    whole = root / device.replace(":", "") / slug
    start = time.perf_counter()
    _, err = quietly(train, config(method, extra, whole, device))
    row["seconds"] = round(time.perf_counter() - start, 1)
    row["error"] = err
    row["test_acc"] = test_acc(whole)
    if err:
        return row
    if device == "cpu":  # the CPU run would repeat the run above
        row["test_acc_cpu"] = row["test_acc"]
    else:
        _, err = quietly(train, config(method, extra, root / "cpu" / slug, "cpu"))
        row["test_acc_cpu"] = err or test_acc(root / "cpu" / slug)
    # the GPU's default kernels differ from run to run; a resume is judged with --deterministic (the
    # CPU's repeat bit for bit without it: there the run above is the whole run to compare with)
    again, cut = (whole if device == "cpu" else root / "again" / slug), root / "cut" / slug
    err = None if device == "cpu" else quietly(train, config(method, extra, again, device, deterministic=True))[1]
    if not err:
        _, err = quietly(train, config(method, extra, cut, device, deterministic=True), stop_after_epoch=0)
    if not err:
        _, err = quietly(train, config(method, extra, cut, device, deterministic=True), resume=True)
    if err:
        row["resume"] = err
    else:
        a, b = final_model(again), final_model(cut)
        row["resume"] = max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)
    if device == "cpu":  # stopped on the CPU and resumed on the CPU: the resumed run above
        row["from_cpu"] = row["resume"] if isinstance(row["resume"], str) else test_acc(cut)
    else:
        moved = root / "from-cpu" / slug
        _, err = quietly(train, config(method, extra, moved, "cpu"), stop_after_epoch=0)
        if not err:
            _, err = quietly(train, config(method, extra, moved, device), resume=True)
        row["from_cpu"] = err or test_acc(moved)
    if device.startswith("cuda"):  # bf16 autocast is for CUDA; a CPU run refuses --amp
        _, err = quietly(train, config(method, extra, root / "amp" / slug, device, amp=True))
        row["amp"] = err or test_acc(root / "amp" / slug)
    else:
        row["amp"] = None
    row["label_issues"] = cli("label-issues", str(whole))
    try:
        import matplotlib  # noqa: F401 -- report's figures need it (the [report] extra)
        row["report"] = cli("report", str(whole))
    except ImportError:
        row["report"] = "no matplotlib"
    return row


def under_torchrun(root: Path, device: str) -> dict:
    """One L2B run through torchrun with one process (NCCL on CUDA, gloo on the CPU)."""
    out = root / "torchrun"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in BASE.items() if v is not None]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "-m", "l2b", "train",
               *flags, "--method", "l2b", "--device", device, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    tail = (done.stderr.strip().splitlines() or [""])[-1][:120]
    return {"case": "l2b under torchrun (1 process)", "seconds": round(time.perf_counter() - start, 1),
            "error": None if done.returncode == 0 else f"exit {done.returncode}: {tail}", "test_acc": test_acc(out)}


def cell(value, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return f"fails: {value}"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if digits else f"{value:.1e}"
    return str(value)


def table(rows: list[dict], extra: dict, device: str) -> str:
    lines = [f"| case | s on {device} | test acc | test acc CPU | resume max abs diff (deterministic kernels) | resumed from CPU | amp | "
             "label-issues | report |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['case']} | {r['seconds']} | fails: {r['error']} |  |  |  |  |  |  |")
            continue
        resume = r["resume"] if isinstance(r["resume"], str) else ("0" if r["resume"] == 0 else f"{r['resume']:.1e}")
        lines.append(f"| {r['case']} | {r['seconds']} | {cell(r['test_acc'])} | {cell(r['test_acc_cpu'])} | "
                     f"{resume if not isinstance(r['resume'], str) else 'fails: ' + resume} | {cell(r['from_cpu'])} | "
                     f"{cell(r['amp'])} | {cell(r['label_issues'])} | {cell(r['report'])} |")
    ran = f"fails: {extra['error']}" if extra["error"] else cell(extra["test_acc"])
    lines.append(f"| {extra['case']} | {extra['seconds']} | {ran} | | | | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--methods", default="all", help="comma-separated cases of the table, or all")
    parser.add_argument("--data", default="digits", help="the dataset (an npz copy of digits where scikit-learn "
                                                              "is missing)")
    parser.add_argument("--out", default="runs/device-check")
    parser.add_argument("--no-record", action="store_true", help="print the table only")
    parser.add_argument("--quick", action="store_true", help="2 epochs, no torchrun row, nothing recorded (the "
                                                             "test suite's smoke run)")
    args = parser.parse_args()
    check_device_arg(parser, args.device)
    names = list(CASES) if args.methods == "all" else [m.strip() for m in args.methods.split(",")]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; valid: {', '.join(CASES)}")
    BASE["data"] = args.data
    if args.quick:
        BASE["epochs"], args.no_record = 2, True
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    rows = []
    for name in names:
        rows.append(check(name, root, args.device))
        print(json.dumps(rows[-1]), flush=True)
    if args.quick:
        return
    extra = under_torchrun(root, args.device)
    print(json.dumps(extra), flush=True)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    command = f"python benchmarks/device_check.py --device {args.device}" + (
        f" --data {args.data}" if args.data != "digits" else "")
    block = (f"Command: `{command}` on {name}, torch {torch.__version__}; "
             f"{time.perf_counter() - start:.0f} s in all. {'Digits' if args.data == 'digits' else args.data}, PreActResNet-18 width 8, symmetric 40% noise, "
             "10 clean per class, 3 epochs, seed 0 (test accuracy in %).\n\n" + table(rows, extra, args.device))
    print(block)
    if not args.no_record:
        record("device-check", "## Every method on a device", block, {"rows": rows, "torchrun": extra},
               command, device=name)


if __name__ == "__main__":
    main()
