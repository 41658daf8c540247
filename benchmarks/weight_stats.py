"""What L2B's meta-weights do on real batches at a trained model: separation and concentration.

For each run directory given (any method's run; its final model is read from checkpoint.pt),
the run's data, noise and clean split are rebuilt from config.json, and L2B's weights
(``l2b.meta_weights``, plain-lr virtual step, the run's normalisation or ``sum``) are computed on
``--batches`` training batches of the run's batch size, against clean batches of ``m`` = the run's
validation batch size and of the whole clean set. Printed per setting, averaged over the batches:

- AUC: ROC-AUC of -raw_alpha for "this label is corrupted" (1 = perfect separation);
- the share of the normalised weight mass on alpha of clean samples, alpha of corrupted ones, beta;
- the share of clean / corrupted samples whose alpha is exactly 0 (clamped by ``sum``);
- ESS / 2n: the effective sample size (sum w)^2 / sum w^2 of the 2n weights, over 2n.

    python benchmarks/weight_stats.py runs/bench-fashion-mnist/ce/symmetric_0.4/seed0 \\
        runs/bench-fashion-mnist/l2b/symmetric_0.4/seed0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def weight_stats(run: Path, batches: int, normalize: str | None) -> list[str]:
    import l2b
    from l2b.detect import roc_auc
    from l2b.trainer import load_run

    cfg, prep, (train, val, _), model = load_run(run, device="cpu")
    noisy = torch.as_tensor(prep.y_noisy != prep.y_true)
    x_clean, y_clean, _, _ = next(iter(val.epoch(len(val), 0, augment=False)))
    norm = normalize or cfg.method_options().get("normalize") or "sum"
    gen = torch.Generator().manual_seed(0)
    lines = []
    for m in sorted({cfg.val_batch_size or cfg.batch_size, len(val)}):
        rows = []
        for b, (x, y, idx, _) in zip(range(batches), train.epoch(cfg.batch_size, 12345, augment=True)):
            pick = torch.randperm(len(val), generator=gen)[:m]
            mw = l2b.meta_weights(model, x, y, x_clean[pick], y_clean[pick], lr=cfg.lr, normalize=norm)
            bad = noisy[idx]
            a, be = mw.alpha.detach().double(), mw.beta.detach().double()
            w = torch.cat([a, be])
            total = float(w.sum()) or 1.0
            rows.append([
                roc_auc(-mw.raw_alpha.detach().numpy(), bad.numpy()),
                float(a[~bad].sum()) / total, float(a[bad].sum()) / total, float(be.sum()) / total,
                float((a[~bad] == 0).double().mean()), float((a[bad] == 0).double().mean()),
                float(w.sum() ** 2 / (w ** 2).sum().clamp_min(1e-300)) / len(w),
            ])
        r = np.nanmean(np.array(rows), axis=0)
        lines.append(f"| {run} | {m} | {r[0]:.3f} | {r[1]:.3f} / {r[2]:.3f} / {r[3]:.3f} | "
                     f"{r[4]:.2f} / {r[5]:.2f} | {r[6]:.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories (config.json + checkpoint.pt)")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--normalize", default=None, help="override the run's normalisation")
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| run (final model) | m | AUC raw alpha | mass: alpha clean / alpha corrupted / beta "
          "| alpha = 0: clean / corrupted | ESS / 2n |\n|---|---|---|---|---|---|")
    for run in args.runs:
        for line in weight_stats(Path(run), args.batches, args.normalize):
            print(line, flush=True)


if __name__ == "__main__":
    main()
