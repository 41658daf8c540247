"""The memorisation benchmark's grid: its recipe, noise settings, variants and cells (see
memorisation.py)."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np

RECIPE = dict(
    data="fashion-mnist", model="small-cnn", width=16, val_per_class=100, train_subset=800,
    epochs=80, batch_size=16, lr=0.05, schedule="cosine", momentum=0.9, weight_decay=5e-4,
    warmup_epochs=2, test_every=10, eval_batch_size=128,  # batches of 128 score 3.6x faster on this CPU
)
NOISES = ["symmetric:0.2", "symmetric:0.4", "symmetric:0.6", "asymmetric:0.4", "instance:0.4"]
REGIME_NOISE = "symmetric:0.4"
REGIME_GAP = 5.0  # CE's best-val minus last-epoch test accuracy that defines the regime
QUICK = dict(noises=["symmetric:0.4"], seeds=1, train_subset=200, epochs=1, warmup_epochs=0, width=8, val_per_class=20)
# Variants run beside the grid, each in its own directory (OUT-variants/NAME/...): L2B with the
# approximate last-layer engine, compared seed by seed with exact L2B.
VARIANTS = {"l2b-last-layer": dict(method="l2b", method_args={"engine": "last-layer"},
                                   noises=["symmetric:0.4", "asymmetric:0.4"])}
# Rough cost of a run relative to CE, to start the slow runs first (the pool's tail is shorter).
COST = {"mlc": 5, "mwnet": 5, "l2b": 4, "l2rw": 4, "coteaching": 2, "glc": 2, "forward": 2, "distill": 2}


def realised_rates(base, noises: list[str]) -> dict[str, float]:
    """The flip rate each noise setting realises on the training subset (seed 0)."""
    from l2b.run_data import prepare_data

    return {n: float(prepare_data(replace(base, noise=n, method="ce", seed=0), False).noise_rate) for n in noises}


def build_grid(args, out: Path):
    from l2b.grid import grid_configs, run_dir
    from l2b.config import TrainConfig
    from l2b.methods import METHODS

    recipe = dict(RECIPE, data=args.data)
    if args.quick:
        recipe.update({k: QUICK[k] for k in ("train_subset", "epochs", "warmup_epochs", "width", "val_per_class")})
    recipe.update({k: v for k, v in (("epochs", args.epochs), ("train_subset", args.train_subset)) if v is not None})
    base = TrainConfig(**recipe, progress="none")
    noises = QUICK["noises"] if args.quick else NOISES
    seeds = QUICK["seeds"] if args.quick else args.seeds
    rates = realised_rates(base, noises)
    cfgs = grid_configs(base, sorted(METHODS), noises, seeds, out, options=lambda method, noise: (
        {"forget_rate": round(rates[noise], 4)} if method == "coteaching" else {}))
    for seed in range(seeds):  # the clean-label ceiling
        cfgs.append(replace(base, method="ce", noise="none", seed=seed, out=str(run_dir(out, "ce", "none", seed))))
    for name, variant in VARIANTS.items():
        for noise in (n for n in variant["noises"] if n in noises):
            for seed in range(seeds):
                cfgs.append(replace(base, method=variant["method"], noise=noise, seed=seed,
                                    method_args=variant["method_args"],
                                    out=str(run_dir(variants_dir(out), name, noise, seed))))
    for cfg in cfgs:
        cfg.validate()
    # noise by noise, 40% symmetric first (an interrupted grid has whole settings to show), the
    # slow runs first within a setting (the pool's tail is shorter)
    first = {n: i for i, n in enumerate(["symmetric:0.4", "asymmetric:0.4", "instance:0.4", "none"])}
    cfgs.sort(key=lambda c: (first.get(c.noise, len(first)), c.noise, -COST.get(c.method, 1)))
    return cfgs, rates, recipe


def part(cfgs: list, noises: str | None) -> list:
    """The cells of the settings in ``noises`` (comma-separated; "none" is the clean ceiling), to
    run a part of the grid, e.g. one machine per part; the summary still counts the whole grid."""
    if not noises:
        return cfgs
    wanted = set(noises.split(","))  # checked against the grid's settings by the command line
    return [c for c in cfgs if c.noise in wanted]


def variants_dir(out: Path) -> Path:
    return out.with_name(out.name + "-variants")


def clean_only(out: Path, base, seeds: int, train: bool = True) -> dict | None:
    """CE trained on the clean validation images ALONE (each seed's own clean split, the same
    recipe, last epoch): what the clean set is worth as training data in this regime, the bound
    for methods that train on it (GLC, MLC's mix, distill's teacher). Run once, then reused."""
    from l2b.grid import run_one
    from l2b.data import load_dataset

    ds, accs = None, []
    for seed in range(seeds):
        src = out / "l2b" / base.noise.replace(":", "_") / f"seed{seed}" / "labels.npz"
        if not src.is_file():
            src = next(iter(sorted(out.glob(f"*/*/seed{seed}/labels.npz"))), None)
        if src is None:
            return None
        run = variants_dir(out) / "ce-clean-only" / f"seed{seed}"
        if not (run / "metrics.json").is_file() and not train:  # --summarize trains nothing
            continue
        if not (run / "metrics.json").is_file():
            ds = ds or load_dataset(base.data)
            val = np.load(src)["val_index"].astype(int)
            run.mkdir(parents=True, exist_ok=True)
            data = run.parent / f"seed{seed}.npz"
            np.savez(data, x_train=ds.x_train.numpy()[val][:, 0], y_train=ds.y_train.numpy()[val],
                     x_test=ds.x_test.numpy()[:, 0], y_test=ds.y_test.numpy(), classes=np.array(ds.classes))
            run_one(replace(base, data=f"npz:{data}", noise="none", method="ce", seed=seed, train_subset=None,
                            val_per_class=None, val_total=None, out=str(run)).__dict__)
        accs.append(json.loads((run / "metrics.json").read_text())["test_acc_last"])
    if not accs:
        return None
    return {"seeds": len(accs), "test_acc_last_mean": round(statistics.mean(accs), 3),
            "test_acc_last_std": round(statistics.stdev(accs), 3) if len(accs) > 1 else 0.0}
