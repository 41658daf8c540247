"""Epoch time of CE, L2RW and L2B at the CIFAR-10 settings on a GPU.

PreActResNet-18, batch 512 (clean batch 512, as the authors' code), SGD momentum 0.9 / wd 5e-4,
crop+flip augmentation on the device. CIFAR-10 is read from --cifar DIR when given, else
CIFAR-shaped synthetic uint8 data (50,000 × 3 × 32 × 32; the timing does not depend on the
pixel values). Reports seconds per epoch, images/s and peak GPU memory per method, and appends
them with the card's name to benchmarks/RESULTS.md.

    python benchmarks/gpu_epoch.py                   # on a CUDA machine, one timed epoch each
    python benchmarks/gpu_epoch.py --steps 20        # time 20 steps and scale to an epoch
    python benchmarks/gpu_epoch.py --device cpu --steps 2 --n 1024 --batch 64   # smoke run
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import l2b
from l2b.data import augment_batch, normalize_batch
from l2b.models import PreActResNet18

HERE = Path(__file__).resolve().parent
METHODS = {"CE": None, "L2RW": dict(constraint="beta=0"), "L2B": dict(),
           "L2B-last-layer": dict(engine="last-layer")}  # the approximate engine (docs/methods.md)


def load_images(args, device):
    if args.cifar:
        ds = l2b.data.load_dataset(f"cifar10:{args.cifar}")
        x, y = ds.x_train[: args.n], ds.y_train[: args.n]
    else:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (args.n, 3, 32, 32), dtype=torch.uint8, generator=g)
        y = torch.randint(0, 10, (args.n,), generator=g)
    return x.to(device), y.to(device)


def run(method: str, args, device, x, y) -> dict:
    torch.manual_seed(0)
    model = PreActResNet18(10).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.15, momentum=0.9, weight_decay=5e-4)
    mean = torch.tensor([0.4914, 0.4822, 0.4465], device=device)
    std = torch.tensor([0.2470, 0.2435, 0.2616], device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    val_idx = torch.arange(1000, device=device)

    def batch(idx):
        xb = normalize_batch(augment_batch(x[idx], crop_padding=4, flip=True, generator=gen), mean, std)
        return (xb.contiguous(memory_format=torch.channels_last) if args.channels_last else xb), y[idx]

    def step(i):
        idx = torch.randint(0, len(x), (args.batch,), device=device, generator=gen)
        xb, yb = batch(idx)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            if METHODS[method] is None:
                loss = F.cross_entropy(model(xb), yb)
            else:
                xv, yv = batch(val_idx[torch.randint(0, 1000, (args.batch,), device=device, generator=gen)])
                mw = l2b.meta_weights(model, xb, yb, xv, yv, optimizer=opt, **{"engine": args.engine, **METHODS[method]})
                loss = l2b.bootstrap_loss(mw, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for i in range(args.warmup):
        step(i)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps = args.steps or len(x) // args.batch
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    sync()
    per_step = (time.perf_counter() - t0) / steps
    epoch = per_step * (50_000 // args.batch)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"epoch_s": epoch, "images_s": args.batch / per_step, "peak_gib": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cifar", help="CIFAR-10 directory (python-pickle layout); synthetic data if absent")
    p.add_argument("--device", default="cuda")
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=0, help="timed steps (0: one epoch)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--engine", default="jvp-lean", choices=["jvp", "jvp-lean", "unroll"],
                   help="the exact engine of the L2RW and L2B rows (default: the library's)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--no-record", action="store_true", help="print only")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    x, y = load_images(args, device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = ["| method | s / epoch | images / s | peak GiB |", "|---|---|---|---|"]
    for method in METHODS:
        r = run(method, args, device, x, y)
        lines.append(f"| {method} | {r['epoch_s']:.1f} | {r['images_s']:.0f} | {r['peak_gib']:.2f} |")
        print(lines[-1], flush=True)
    if not args.no_record:
        flags = " ".join(f for f, on in (("--bf16", args.bf16), ("--channels-last", args.channels_last)) if on)
        from results_md import record

        cmd = (f"python benchmarks/gpu_epoch.py {flags} --engine {args.engine}"
               f"{' --steps ' + str(args.steps) if args.steps else ''}").replace("  ", " ")
        precision = "bf16" if args.bf16 else "float32"
        record(f"gpu-epoch-{precision}", f"## GPU epoch time, {precision}",
               f"Command: `{cmd}` on {card}, torch {torch.__version__} "
               f"({'CIFAR-10' if args.cifar else 'synthetic CIFAR-shaped data'}, batch {args.batch})\n\n"
               + "\n".join(lines) + "\n", {"rows": lines[2:]}, cmd, device=card, readme=True)


if __name__ == "__main__":
    main()
