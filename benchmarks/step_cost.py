"""Cost of one full training step of CE, L2RW and every L2B engine, against the authors' own step.

A full step = meta weights (if any) + weighted loss + backward + optimizer step, PreActResNet-18
at 32x32x3, float32, on the CPU. Each (setting, method) runs in its own subprocess so that its
peak resident memory is its own: we report the growth of the peak RSS over the RSS after
model, optimizer and data were built (the working memory of the steps, momentum buffers included).

    python benchmarks/step_cost.py            # full table, appended to benchmarks/RESULTS.md
    python benchmarks/step_cost.py --quick    # width 16, few repeats: a smoke run, not recorded
    python benchmarks/step_cost.py --all-methods   # every registered method's step vs CE, recorded

Targets: L2B-jvp <= 3.5x CE at n = m = 128, <= 3.0x at n = 512 / m = 100, and
>= 2.5x faster than L2B-unroll. "L2B-unroll" is our second-order engine, which shares the
training forward with the real step; "L2B-unroll-authors" adds the separate real forward of the
authors' `higher`-based step. "authors" runs the public code's step itself through `higher`
(yuyinzhou/L2B main.py with --reweight_label: innerloop_ctx, eps on the 2 x n costs, the meta
optimizer's step, the clean loss, autograd to eps, clamp and normalise, the real forward and
weighted loss, backward, clipping at 0.8, step); it needs `pip install higher==0.2.1` and is
skipped with a note without it. "L2B-last-layer" is the approximate engine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
METHODS = {  # name -> meta_weights options (None: plain cross-entropy)
    "CE": None,
    "L2RW": dict(constraint="beta=0", engine="jvp"),
    "L2B-jvp": dict(engine="jvp"),
    "L2B-jvp-lean": dict(engine="jvp-lean"),
    "L2B-unroll": dict(engine="unroll"),
    "L2B-last-layer": dict(engine="last-layer"),
    # The authors' step (`higher`): the meta model's own forward for the unroll, then a separate
    # forward of the real model for the real step.
    "L2B-unroll-authors": dict(engine="unroll", separate_forward=True),
    # The public code's own step, run through `higher` (an optional benchmark dependency)
    "authors": dict(authors=True),
}


def authors_step(model, opt, x, y, x_val, y_val, clip: float = 0.8):
    """yuyinzhou/L2B main.py's training step with --reweight_label (norm_type org), written out:
    `higher.innerloop_ctx(net, optimizer)`, eps on the 2 x n costs (observed and pseudo-label),
    `meta_optimizer.step`, the clean loss, autograd to eps, clamp and normalise, then the real
    forward, the weighted loss, backward, clipping and the optimizer step."""
    import higher
    import torch
    import torch.nn.functional as F

    with higher.innerloop_ctx(model, opt) as (meta_net, meta_opt):
        logits = meta_net(x)
        pseudo = logits.argmax(1)
        cost = torch.stack([F.cross_entropy(logits, y, reduction="none"),
                            F.cross_entropy(logits, pseudo, reduction="none")])
        eps = torch.zeros_like(cost, requires_grad=True)
        meta_opt.step((cost * eps).sum())
        val_loss = F.cross_entropy(meta_net(x_val), y_val)
        grad_eps = torch.autograd.grad(val_loss, eps)[0].detach()
    w = torch.clamp(-grad_eps, min=0)
    norm = w.sum() + 1e-10
    w = w / norm if norm != 0 else w
    logits = model(x)
    pseudo = logits.argmax(1)
    cost = torch.stack([F.cross_entropy(logits, y, reduction="none"), F.cross_entropy(logits, pseudo, reduction="none")])
    loss = (cost * w).sum()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def time_calls(fn, repeats: int, sync=lambda: None) -> tuple[float, list[float]]:
    """One warm-up call (allocator, momentum buffers, forward-AD decompositions), then the median
    seconds of ``repeats`` timed calls, and all of them (``sync`` waits for a GPU's queue)."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def measure(method: str, width: int, n: int, m: int, repeats: int, threads: int, device: str = "cpu") -> dict:
    """Median seconds per step and peak working memory of one method: on the CPU in a child
    process (the growth of its peak RSS); on CUDA in this process (the peak of allocated memory
    over what model, optimizer state, gradients and data hold after one untimed step)."""
    import torch
    import torch.nn.functional as F

    import l2b
    from l2b.models import PreActResNet18

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = PreActResNet18(num_classes=10, width=width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(n, 3, 32, 32, device=device), torch.randint(0, 10, (n,), device=device)
    x_val, y_val = torch.randn(m, 3, 32, 32, device=device), torch.randint(0, 10, (m,), device=device)
    options = dict(METHODS[method] or {})
    separate_forward = options.pop("separate_forward", False)

    def step() -> None:
        if options.get("authors"):
            authors_step(model, opt, x, y, x_val, y_val)
            return
        if method == "CE":
            loss = F.cross_entropy(model(x), y)
        else:
            mw = l2b.meta_weights(model, x, y, x_val, y_val, optimizer=opt, **options)
            if separate_forward:
                mw.logits = model(x)
            loss = l2b.bootstrap_loss(mw, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if device.startswith("cuda"):
        step()  # cudnn.benchmark's autotuning allocates workspaces on a shape's first call: not the step's
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        seconds, times = time_calls(step, repeats, torch.cuda.synchronize)
        return {"seconds": seconds, "peak_mib": (torch.cuda.max_memory_allocated() - base) / 2**20, "times": times}
    base = _rss_mib()  # model, optimizer and data built; no step taken yet
    seconds, times = time_calls(step, repeats)
    return {"seconds": seconds, "peak_mib": _rss_mib() - base, "times": times}


def measure_method(method: str, width: int, n: int, m: int, repeats: int, threads: int) -> dict:
    """Runs in a child process: one training step of a registered method, as the trainer takes it
    (the method's loss, backward, optimizer step), after the method's setup on two small batches."""
    import torch

    from l2b.methods import create_method, needs_of
    from l2b.methods.base import Batch, SetupContext
    from l2b.models import PreActResNet18

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    def new_model():
        return PreActResNet18(num_classes=10, width=width)

    def new_optimizer(model):
        return torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)

    model = new_model()
    opt = new_optimizer(model)
    x, y = torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))
    x_val, y_val = torch.randn(m, 3, 32, 32), torch.randint(0, 10, (m,))
    idx = torch.arange(n)
    meth = create_method(method, model, opt)
    # the method's setup (an auxiliary model or matrix) on tiny data: only the step is timed
    small = lambda xs, ys: (lambda epoch: iter([(xs[:16], ys[:16], idx[:16], 16)]))  # noqa: E731
    meth.setup(SetupContext(new_model=new_model, new_optimizer=new_optimizer,
                            train_batches=small(x, y), clean_batches=small(x_val, y_val),
                            lr_at=lambda e, s, k: 0.02, epochs=1, num_classes=10,
                            train_steps=1, clean_steps=1, log=lambda msg: None, load_optimizer_state=opt.load_state_dict))
    needs_clean = needs_of(method, {}).clean_per_step

    def step() -> None:
        batch = Batch(x, y, idx, x_val if needs_clean else None, y_val if needs_clean else None, epoch=1.0)
        loss = meth.loss(batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    base = _rss_mib()
    seconds, times = time_calls(step, repeats)
    return {"seconds": seconds, "peak_mib": _rss_mib() - base, "times": times}


def breakdown(width: int, n: int, m: int, repeats: int, threads: int) -> list[tuple[str, float]]:
    """Where an L2B-jvp step's time goes: its parts timed on their own (median seconds)."""
    import torch
    import torch.autograd.forward_ad as fwAD
    import torch.nn.functional as F
    from torch.func import functional_call

    from l2b.models import PreActResNet18

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = PreActResNet18(num_classes=10, width=width)
    x, y = torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))
    x_val, y_val = torch.randn(m, 3, 32, 32), torch.randint(0, 10, (m,))
    params = dict(model.named_parameters())
    tangents = {k: torch.randn_like(v) for k, v in params.items()}

    def tangent_forward():
        with fwAD.dual_level():
            duals = {k: fwAD.make_dual(v, tangents[k]) for k, v in params.items()}
            return fwAD.unpack_dual(functional_call(model, duals, (x,)))[0]

    def timed(fn) -> float:
        return time_calls(fn, repeats)[0]

    def no_grad_forward():
        with torch.no_grad():
            model(x)

    parts = [
        ("training forward (no graph)", timed(no_grad_forward)),
        ("CE: training forward + backward", timed(lambda: F.cross_entropy(model(x), y).backward())),
        ("L2B: validation forward + backward", timed(lambda: F.cross_entropy(model(x_val), y_val).backward())),
        ("L2B: training forward with tangent", timed(tangent_forward)),
        ("L2B: training forward with tangent + backward",
         timed(lambda: F.cross_entropy(tangent_forward(), y).backward())),
    ]
    return parts


def run_child(method: str, width: int, n: int, m: int, repeats: int, threads: int, kind: str = "engine") -> dict:
    args = [sys.executable, __file__, "--child", json.dumps([kind, method, width, n, m, repeats, threads])]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def all_methods(args) -> None:
    """Every registered method's step relative to CE: the published table."""
    import torch

    from l2b.methods import METHODS

    width, n, m = (16, 64, 64) if args.quick else (32, 128, 128)
    repeats = 2 if args.quick else args.repeats
    names = ["ce"] + sorted(set(METHODS) - {"ce"})
    header = "| method | s / step | × CE | peak MiB (Δ RSS) | × CE mem |\n|---|---|---|---|---|"
    print(header, flush=True)
    res, lines = {}, [header]
    for name in names:
        res[name] = r = run_child(name, width, n, m, repeats, args.threads, kind="method")
        ce = res["ce"]
        line = (f"| {name} | {r['seconds']:.3f} | {r['seconds'] / ce['seconds']:.2f} | {r['peak_mib']:.0f} | "
                f"{r['peak_mib'] / max(ce['peak_mib'], 1e-9):.2f} |")
        lines.append(line)
        print(line, flush=True)
    if args.quick:
        return
    cmd = "python benchmarks/step_cost.py --all-methods" + (f" --repeats {args.repeats}" if args.repeats != 3 else "")
    from results_md import record

    record("step-cost-all-methods", "## Step cost of every method, CPU",
           f"Command: `{cmd}` — one training step as the trainer takes it (the method's loss, "
           f"backward, SGD step; setup fits excluded), median of {repeats} after one warm-up; "
           f"PreActResNet-18 width {width}, 32×32×3, n = {n} noisy + m = {m} clean samples, float32.  \n"
           f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
           f"{args.threads} torch threads, torch {torch.__version__}, Python {platform.python_version()}.\n\n"
           + "\n".join(lines) + "\n", {"width": width, "n": n, "m": m, "repeats": repeats, "rows": res}, cmd,
           readme=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="width 16, 2 repeats, not recorded")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--widths", default="32,64", help="comma-separated PreActResNet-18 widths")
    parser.add_argument("--breakdown", action="store_true",
                        help="time the parts of an L2B-jvp step at width 32, n = m = 128, and record them")
    parser.add_argument("--all-methods", action="store_true",
                        help="every registered method's training step vs CE (width 32, n = m = 128), recorded")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: every row in this process, memory = "
                        "peak allocated GPU memory of a step over what is held after one untimed step")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from results_md import check_device_arg

    check_device_arg(parser, args.device)
    if args.child:
        kind, *rest = json.loads(args.child)
        print(json.dumps((measure_method if kind == "method" else measure)(*rest)))
        return
    if args.all_methods:
        all_methods(args)
        return
    if args.breakdown:
        parts = breakdown(32, 128, 128, max(args.repeats, 3), args.threads)
        lines = ["| part (PreActResNet-18 width 32, n = m = 128) | s |", "|---|---|"]
        lines += [f"| {name} | {sec:.3f} |" for name, sec in parts]
        print("\n".join(lines))
        from results_md import record

        record("step-cost-breakdown", "## Where the time of an L2B-jvp step goes, CPU",
               f"Command: `python benchmarks/step_cost.py --breakdown` (CPU, {args.threads} threads)\n\n"
               + "\n".join(lines) + "\n", {"parts": dict(parts)}, "python benchmarks/step_cost.py --breakdown")
        return

    widths = [16] if args.quick else [int(w) for w in args.widths.split(",")]
    repeats = 2 if args.quick else args.repeats
    settings = [(w, n, m) for w in widths for (n, m) in ((128, 128), (512, 100))]
    import torch

    cuda = args.device.startswith("cuda")
    header = (
        f"| width | n / m | method | s / step | × CE | peak MiB ({'Δ allocated' if cuda else 'Δ RSS'}) | × CE mem |\n"
        "|---|---|---|---|---|---|---|"
    )
    lines, summary = [header], []
    print(header, flush=True)
    import importlib.util

    methods = list(METHODS)
    notes = []
    if importlib.util.find_spec("higher") is None:
        methods.remove("authors")
        notes.append("the `authors` row needs `higher` (pip install higher==0.2.1); it was not installed, so it is skipped")
        print(notes[-1], flush=True)
    if cuda:
        import torch.backends.cudnn

        torch.backends.cudnn.benchmark = True
    for width, n, m in settings:
        res = {meth: (measure(meth, width, n, m, repeats, args.threads, args.device) if cuda
                      else run_child(meth, width, n, m, repeats, args.threads)) for meth in methods}
        ce = res["CE"]
        for meth, r in res.items():
            line = (
                f"| {width} | {n} / {m} | {meth} | {r['seconds']:.3f} | "
                f"{r['seconds'] / ce['seconds']:.2f} | {r['peak_mib']:.0f} | "
                f"{r['peak_mib'] / max(ce['peak_mib'], 1e-9):.2f} |"
            )
            lines.append(line)
            print(line, flush=True)
        ref = res.get("authors", res["L2B-unroll-authors"])
        ref_name = "the authors' step (higher)" if "authors" in res else "our replay of the authors' unroll"
        summary.append(
            f"width {width}, n={n}/m={m}: " + "; ".join(
                f"{e} = {res[e]['seconds'] / ce['seconds']:.2f}× CE in time, "
                f"{res[e]['peak_mib'] / max(ce['peak_mib'], 1e-9):.2f}× in memory, "
                f"{ref['seconds'] / res[e]['seconds']:.2f}× faster than {ref_name}"
                for e in ("L2B-jvp", "L2B-jvp-lean", "L2B-last-layer"))
        )
    print("\n".join(summary))
    if args.quick:
        return
    cmd = ("python benchmarks/step_cost.py" + (f" --repeats {args.repeats}" if args.repeats != 3 else "")
           + (f" --widths {args.widths}" if args.widths != "32,64" else "")
           + (f" --device {args.device}" if cuda else ""))
    machine = (
        (f"{torch.cuda.get_device_name(args.device)}, " if cuda else "")
        + f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.threads} torch threads, torch {torch.__version__}, Python {platform.python_version()}"
    )
    from results_md import record

    block = [
        f"Command: `{cmd}` — median of {repeats} steps after one warm-up; PreActResNet-18, "
        f"32×32×3, float32, SGD momentum 0.9 / wd 5e-4 replayed as the virtual step.  ",
        f"Machine: {machine}.\n",
        *lines,
        "",
        *[f"- {s}" for s in summary],
        *[f"- {s}" for s in notes],
        "",
    ]
    kind = "gpu" if cuda else "cpu"
    record(f"step-cost-{kind}", f"## Step cost, {kind.upper()}", "\n".join(block), {"summary": summary}, cmd,
           device=torch.cuda.get_device_name(args.device) if cuda else None, readme=True)


if __name__ == "__main__":
    main()
