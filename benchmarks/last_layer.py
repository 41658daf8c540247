"""How close the last-layer engine's weights are to the exact engine's, along a real training run.

An L2B run (the exact ``jvp`` engine, the memorisation benchmark's recipe at 40% symmetric noise
by default) is trained with ``l2b train``'s own trainer, stopped every ``--every`` epochs and
resumed (bit-identically). At each stop, on ``--batches`` training batches with clean batches,
both engines compute the raw weights from the SAME model and optimizer state (copies, in train
mode, as in training), and we record:

- the Spearman rank correlation of the last-layer engine's raw alpha (and beta) with the exact one's;
- the noise-detection ROC-AUC of -raw alpha for the corrupted labels, for each engine.

    python benchmarks/last_layer.py                 # writes results/last_layer.json and a RESULTS.md block
    python benchmarks/last_layer.py --quick         # 2 epochs on a small subset: a smoke run, not recorded
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from results_md import provenance, spearman, write_block

HERE = Path(__file__).resolve().parent
RESULTS_JSON = HERE / "results" / "last_layer.json"
RESULTS_MD = HERE / "RESULTS.md"


def probe(run: Path, batches: int, seed: int) -> dict:
    """Both engines' raw weights on ``batches`` training batches at the run's checkpoint."""
    import torch

    import l2b
    from l2b.detect import roc_auc
    from l2b.rundir import load_checkpoint
    from l2b.trainer import build_optimizer, load_run

    cfg, prep, (train, val, _), model = load_run(run, device="cpu")
    optimizer = build_optimizer(cfg, model)
    optimizer.load_state_dict(load_checkpoint(run / "checkpoint.pt")["optimizer"])
    noisy = torch.as_tensor(prep.y_noisy != prep.y_true)
    clean = list(val.epoch(cfg.val_batch_size or cfg.batch_size, seed, augment=True))
    raw = {"jvp": ([], []), "last-layer": ([], [])}
    flags = []
    for b, (x, y, idx, _) in zip(range(batches), train.epoch(cfg.batch_size, seed, augment=True)):
        x_val, y_val = clean[b % len(clean)][:2]
        for engine, (alphas, betas) in raw.items():
            m, o = copy.deepcopy((model, optimizer))
            mw = l2b.meta_weights(m, x, y, x_val, y_val, optimizer=o, engine=engine)
            alphas.append(mw.raw_alpha.detach().double().numpy())
            betas.append(mw.raw_beta.detach().double().numpy())
        flags.append(noisy[idx].numpy())
    flags = np.concatenate(flags)
    cat = {e: (np.concatenate(a), np.concatenate(b)) for e, (a, b) in raw.items()}
    # rank correlation within each batch (the weights are normalised per batch), averaged
    per_batch = [(spearman(a1, a2), spearman(b1, b2)) for a1, a2, b1, b2 in
                 zip(raw["last-layer"][0], raw["jvp"][0], raw["last-layer"][1], raw["jvp"][1])]
    return {"spearman_alpha": float(np.mean([p[0] for p in per_batch])),
            "spearman_beta": float(np.mean([p[1] for p in per_batch])),
            "auc_exact": roc_auc(-cat["jvp"][0], flags), "auc_last_layer": roc_auc(-cat["last-layer"][0], flags),
            "samples": int(len(flags))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs, 300 samples, 2 batches: not recorded")
    parser.add_argument("--noise", default="symmetric:0.4")
    parser.add_argument("--every", type=int, default=5, help="epochs between probes")
    parser.add_argument("--batches", type=int, default=8, help="training batches per probe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    from memorisation_grid import RECIPE

    from l2b.config import TrainConfig
    from l2b.trainer import train

    recipe = dict(RECIPE)
    if args.quick:
        recipe.update(epochs=2, train_subset=300, warmup_epochs=0, width=8)
        args.every, args.batches = 1, 2
    out = Path(args.out or ("runs/last-layer" + ("-quick" if args.quick else "")))
    cfg = TrainConfig(**recipe, method="l2b", noise=args.noise, seed=args.seed, out=str(out), progress="none",
                      threads=1)
    from l2b.grid import check_cells

    check_cells([cfg])  # a directory with a run of another recipe is refused, never continued
    start = time.perf_counter()
    rows = []
    stops = list(range(args.every, cfg.epochs + 1, args.every))
    for i, epoch in enumerate(stops):
        ckpt = out / "checkpoint.pt"
        done = ckpt.is_file() and torch.load(ckpt, weights_only=True)["epoch"] + 1 >= epoch
        if not done:
            train(cfg, resume=ckpt.is_file(), overwrite=not ckpt.is_file(), stop_after_epoch=epoch - 1)
        row = {"epoch": epoch, **probe(out, args.batches, seed=1000 + epoch)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    minutes = (time.perf_counter() - start) / 60
    command = "python benchmarks/last_layer.py " + " ".join(sys.argv[1:])
    lines = [f"Command: `{command.strip()}` — an L2B run (exact jvp engine) with the memorisation benchmark's "
             f"recipe at {args.noise}, seed {args.seed}, probed every {args.every} epochs on {args.batches} "
             f"training batches of {cfg.batch_size}: both engines from the same model and optimizer state.  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; {minutes:.0f} min.", "",
             "| epoch | Spearman raw α | Spearman raw β | AUC −α exact | AUC −α last-layer |", "|---|---|---|---|---|"]
    lines += [f"| {r['epoch']} | {r['spearman_alpha']:.3f} | {r['spearman_beta']:.3f} | {r['auc_exact']:.3f} | "
              f"{r['auc_last_layer']:.3f} |" for r in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.quick:
        return
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps({**provenance(command.strip()),
                                        "recipe": recipe, "noise": args.noise, "rows": rows}, indent=2) + "\n")
    write_block(RESULTS_MD, "last-layer", table,
                "## The last-layer engine against the exact one along training")

if __name__ == "__main__":
    main()
