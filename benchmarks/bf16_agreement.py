"""Do bf16 meta weights agree with float32 ones? (the `--amp` path, checked on CUDA)

PreActResNet-18 at the CIFAR-10 settings (32x32x3, batch 512, clean batch 512, SGD momentum 0.9,
wd 5e-4 replayed as the virtual step) is trained with float32 L2B steps under 40% symmetric label
noise, on CIFAR-shaped data with a learnable signal (each class a fixed random image, plus noise)
or, with ``--data fashion-mnist``, on real images (Fashion-MNIST, padded to 32x32 and repeated over
three channels; its test split is the clean set). At a few points along that run, the same model
state (BatchNorm buffers restored between the two) gives meta weights for the same batches twice:
in float32 and under bf16 autocast, as `l2b train --amp` takes them. Per engine we report the
relative error of the raw meta-gradient (||g_bf16 - g_fp32|| / ||g_fp32|| over the raw alpha and
beta, before the clamp and normalisation), Spearman's rho of alpha and of beta, the
total-variation distance between the two normalised weight vectors [alpha, beta] (0 = equal,
1 = disjoint), how often the two agree on which weights the clamp zeroes, how often the
pseudo-labels agree, and the noise-detection AUC of alpha in each precision.

    python benchmarks/bf16_agreement.py                  # on a CUDA machine; appended to RESULTS.md
    python benchmarks/bf16_agreement.py --data fashion-mnist   # the same on real images
    python benchmarks/bf16_agreement.py --device cpu --width 8 --batch 64 --steps 4 --no-record  # smoke
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import l2b
from l2b.detect import roc_auc
from l2b.models import PreActResNet18
from results_md import check_device_arg, spearman

HERE = Path(__file__).resolve().parent
ENGINES = ("jvp-lean", "jvp", "last-layer")


def make_data(protos: torch.Tensor, n: int, noise: float, gen: torch.Generator, device):
    """CIFAR-shaped images with a signal (class prototype + Gaussian noise), true and observed
    labels (``noise``: the share whose label is redrawn uniformly)."""
    y = torch.randint(0, len(protos), (n,), generator=gen)
    x = protos[y] + 1.5 * torch.randn(n, *protos.shape[1:], generator=gen)
    flip = torch.rand(n, generator=gen) < noise
    observed = torch.where(flip, torch.randint(0, len(protos), (n,), generator=gen), y)
    return x.to(device), y.to(device), observed.to(device)


def fashion_data(spec: str, n: int, noise: float, gen: torch.Generator, device):
    """Fashion-MNIST as 32x32x3 float images (padded, grey repeated, standardised): its first ``n``
    training images with true and observed labels (``noise``: the share redrawn uniformly), and the test split as
    the clean set."""
    from l2b.data import load_dataset, normalize_batch

    ds = load_dataset(spec)
    mean, std = ds.mean_std()

    def images(x: torch.Tensor) -> torch.Tensor:  # black padding, as the trainer's crop pads
        return normalize_batch(torch.nn.functional.pad(x, (2, 2, 2, 2)), mean, std).repeat(1, 3, 1, 1)

    y = ds.y_train[:n]
    flip = torch.rand(len(y), generator=gen) < noise
    observed = torch.where(flip, torch.randint(0, len(ds.classes), (len(y),), generator=gen), y)
    return ((images(ds.x_train[:n]).to(device), y.to(device), observed.to(device)),
            (images(ds.x_test).to(device), ds.y_test.to(device)))


def weights(model, opt, xb, yb, xv, yv, engine: str, bf16: bool):
    """Meta weights at the model's current state, which is left as it was (BN buffers too): alpha,
    beta, pseudo-labels and the raw meta-gradient [raw alpha, raw beta]."""
    buffers = {k: b.clone() for k, b in model.named_buffers()}  # the training forward moves BN's
    with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=bf16):
        mw = l2b.meta_weights(model, xb, yb, xv, yv, optimizer=opt, engine=engine)
    model.load_state_dict(buffers, strict=False)
    raw = torch.cat([mw.raw_alpha, mw.raw_beta]).double().cpu().numpy()
    return mw.alpha.float().cpu().numpy(), mw.beta.float().cpu().numpy(), mw.pseudo_labels.cpu().numpy(), raw


def compare(model, opt, batches, engine: str) -> dict:
    rows = []
    for xb, yb, is_noisy, xv, yv in batches:
        a32, b32, p32, g32 = weights(model, opt, xb, yb, xv, yv, engine, bf16=False)
        a16, b16, p16, g16 = weights(model, opt, xb, yb, xv, yv, engine, bf16=True)
        w32, w16 = np.concatenate([a32, b32]), np.concatenate([a16, b16])
        tv = 0.5 * np.abs(w32 / max(w32.sum(), 1e-12) - w16 / max(w16.sum(), 1e-12)).sum()
        noisy = is_noisy.cpu().numpy()
        rows.append({"rel_err": float(np.linalg.norm(g16 - g32) / max(np.linalg.norm(g32), 1e-30)),
                     "rho_alpha": spearman(a32, a16), "rho_beta": spearman(b32, b16), "rho": spearman(w32, w16), "tv": tv,
                     "zero_agree": float(((w32 > 0) == (w16 > 0)).mean()), "pseudo_agree": float((p32 == p16).mean()),
                     "auc32": roc_auc(-a32, noisy) if noisy.any() else float("nan"),
                     "auc16": roc_auc(-a16, noisy) if noisy.any() else float("nan")})
    # nan-mean: a batch whose beta the clamp zeroes entirely in both precisions has no beta ranks
    return {k: float(np.nanmean([r[k] for r in rows])) if any(np.isfinite(r[k]) for r in rows) else float("nan")
            for k in rows[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=512, help="training and clean batch size")
    p.add_argument("--n", type=int, default=20_000, help="training images (Fashion-MNIST: its first N)")
    p.add_argument("--data", default="synthetic", help="synthetic (CIFAR-shaped, a class signal) or "
                   "fashion-mnist[:DIR] (real images)")
    p.add_argument("--steps", type=int, default=300, help="float32 L2B training steps; compared at 0, 1/3, 2/3, all")
    p.add_argument("--batches", type=int, default=4, help="batches compared at each point")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()
    check_device_arg(p, args.device)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    gen = torch.Generator().manual_seed(0)
    if args.data == "synthetic":
        protos = torch.randn(10, 3, 32, 32, generator=gen)
        x, y_true, y = make_data(protos, args.n, 0.4, gen, device)
        xv_all, yv_all, _ = make_data(protos, 2000, 0.0, gen, device)  # the clean set
        what = f"{args.n} CIFAR-shaped images with a class signal"
    elif args.data.partition(":")[0] == "fashion-mnist":
        (x, y_true, y), (xv_all, yv_all) = fashion_data(args.data, args.n, 0.4, gen, device)
        args.n = len(y)
        what = f"Fashion-MNIST's {args.n} training images (32x32x3, padded), its test split as the clean set"
    else:
        p.error(f"--data {args.data!r}: choose synthetic or fashion-mnist[:DIR]")
    n_clean = len(yv_all)
    torch.manual_seed(0)
    model = PreActResNet18(10, width=args.width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    pick = torch.Generator().manual_seed(3)

    def draw():
        i = torch.randint(0, args.n, (args.batch,), generator=pick).to(device)
        j = torch.randint(0, n_clean, (args.batch,), generator=pick).to(device)
        return x[i], y[i], y[i] != y_true[i], xv_all[j], yv_all[j]

    points = sorted({0, args.steps // 3, 2 * args.steps // 3, args.steps})
    lines = ["| step | engine | rel. error of raw meta-gradient | ρ α | ρ β | ρ [α, β] | TV distance | zero pattern agrees | "
             "pseudo-labels agree | AUC α fp32 | AUC α bf16 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for step in range(args.steps + 1):
        if step in points:
            batches = [draw() for _ in range(args.batches)]
            for engine in ENGINES:
                r = compare(model, opt, batches, engine)
                lines.append(f"| {step} | {engine} | {r['rel_err']:.4f} | {r['rho_alpha']:.4f} | {r['rho_beta']:.4f} | {r['rho']:.4f} | {r['tv']:.4f} | "
                             f"{100 * r['zero_agree']:.2f}% | {100 * r['pseudo_agree']:.2f}% | {r['auc32']:.3f} | {r['auc16']:.3f} |")
                print(lines[-1], flush=True)
        if step == args.steps:
            break
        xb, yb, _, xv, yv = draw()
        mw = l2b.meta_weights(model, xb, yb, xv, yv, optimizer=opt)
        loss = l2b.bootstrap_loss(mw, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.8)
        opt.step()
    if not args.no_record:
        card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        from results_md import record

        real = args.data != "synthetic"
        command = "python benchmarks/bf16_agreement.py" + (f" --data {args.data}" if real else "")
        record("bf16-agreement" + ("-fashion-mnist" if real else ""),
               "## bf16 vs float32 meta weights" + (", real images" if real else ""),
               f"Command: `{command}` on {card}, torch {torch.__version__} — PreActResNet-18 "
               f"width {args.width}, batch {args.batch} + clean {args.batch}, {what}, 40% symmetric noise, float32 L2B training; at each step listed the same state's weights in "
               f"float32 and under bf16 autocast, mean over {args.batches} batches (ρ β over the batches where beta is "
               f"not all zero).\n\n" + "\n".join(lines) + "\n", {"rows": lines[2:]},
               command, device=card)


if __name__ == "__main__":
    main()
