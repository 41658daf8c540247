"""The paper-regime benchmark's cells: its recipe, the main grid, the paper's ablations and the
clean-set sweep (see paper_regime.py).

Layout under the grid directory OUT:

- ``OUT/grid/<method>/<noise>/seed<k>``: every registered method;
- ``OUT/ce-plus-clean/ce/<noise>/seed<k>``: CE on the noisy set plus the clean set (clean labels);
- ``OUT/ablations/<variant>/<method>/<noise>/seed<k>``: Table 7, Fig. 4 and Fig. 1a;
- ``OUT/sweep/<row>/clean<K>/.../seed<k>``: the clean set at K per class, same noisy set; the
  data of each (seed, K) is an npz under ``OUT/sweep/data`` (noisy labels as the grid's seed drew
  them, the clean set nested: every smaller clean set is a part of every larger one, and the
  2% one is the grid's own).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

# Chosen by measurement (RESULTS.md, "Paper regime: choosing the recipe"): 10,000 noisy images
# and 200 clean (2%), a clean batch as large as the training batch (128).
RECIPE = dict(
    data="fashion-mnist", model="mlp", width=512, val_per_class=20, train_subset=10000,
    epochs=50, batch_size=128, val_batch_size=128, lr=0.1, schedule="cosine", momentum=0.9,
    weight_decay=5e-4, warmup_epochs=2, test_every=5, eval_batch_size=1024, threads=1,
)
NOISES = ["symmetric:0.2", "symmetric:0.4", "symmetric:0.6", "asymmetric:0.4", "instance:0.4"]
REGIME_NOISE = "symmetric:0.4"
QUICK = dict(train_subset=300, val_per_class=3, epochs=2, warmup_epochs=1, width=32, batch_size=32,
             val_batch_size=32, test_every=1)
# The paper's own experiments, on L2B unless said (symmetric 20% and 40%, 3 seeds):
ABLATION_NOISES = ["symmetric:0.2", "symmetric:0.4"]
ABLATIONS = {
    # Table 7: which weights are learned ("alpha,beta>=0" is the grid's own L2B)
    "alpha=0": ("l2b", {"constraint": "alpha=0"}),
    "beta=0": ("l2b", {"constraint": "beta=0"}),
    "alpha+beta=1": ("l2b", {"constraint": "alpha+beta=1"}),
    # Fig. 4: the normalisation of the raw weights ("sum" is the grid's own L2B)
    "sigmoid": ("l2b", {"normalize": "sigmoid"}),
    "softmax-t10": ("l2b", {"normalize": "softmax", "temperature": 10.0}),
    # Fig. 1a: bootstrapping with a fixed weight beta on the observed label (hard, paper Eq. 2)
    **{f"bootstrap-beta{b}": ("bootstrap", {"beta": b}) for b in (0.2, 0.4, 0.6, 0.8)},
}
# The clean-set sweep at 40% symmetric noise: clean images per class, 0.5% .. 20% of the noisy set
SWEEP_PER_CLASS = [5, 10, 20, 50, 100, 200]
SWEEP_ROWS = ["l2b", "l2rw", "glc", "mlc", "distill", "ce-clean-only", "ce+clean"]
QUICK_SWEEP = [3, 6]
# Rough cost of a run relative to CE, to start the slow runs first (the pool's tail is shorter).
COST = {"mlc": 6, "mwnet": 5, "l2b": 4, "l2rw": 4, "coteaching": 2, "glc": 2, "forward": 2, "distill": 2}


def base_config(quick: bool, overrides: dict | None = None):
    from l2b.config import TrainConfig

    recipe = dict(RECIPE, **(QUICK if quick else {}), **(overrides or {}))
    return TrainConfig(**recipe, progress="none"), recipe


def realised_rates(base, noises: list[str]) -> dict[str, float]:
    """The flip rate each noise setting realises on the noisy training set (seed 0)."""
    from l2b.run_data import prepare_data

    return {n: float(prepare_data(replace(base, noise=n, method="ce", seed=0), False).noise_rate) for n in noises}


def main_cells(base, out: Path, seeds: int, rates: dict[str, float], noises: list[str]) -> list:
    """Every registered method at every noise setting, and CE on the noisy plus the clean set.
    Co-teaching is given the realised flip rate as its forget rate (Han et al. assume it known)."""
    from l2b.grid import grid_configs
    from l2b.methods import METHODS

    cfgs = grid_configs(base, sorted(METHODS), noises, seeds, out / "grid", options=lambda method, noise: (
        {"forget_rate": round(rates[noise], 4)} if method == "coteaching" else {}))
    cfgs += grid_configs(replace(base, train_on_clean=True), ["ce"], noises, seeds, out / "ce-plus-clean")
    return _slow_first(cfgs, noises)


def ablation_cells(base, out: Path, seeds: int, noises: list[str]) -> list:
    from l2b.grid import grid_configs

    cfgs = []
    for name, (method, options) in ABLATIONS.items():
        cfgs += grid_configs(replace(base, method_args=options), [method], noises, seeds, out / "ablations" / name)
    return _slow_first(cfgs, noises)


def _slow_first(cfgs: list, noises: list[str]) -> list:
    """Noise by noise (40% symmetric first: an interrupted grid has whole settings to show), the
    slow runs first within a setting."""
    first = {n: i for i, n in enumerate([REGIME_NOISE] + [n for n in noises if n != REGIME_NOISE])}
    return sorted(cfgs, key=lambda c: (first.get(c.noise, len(first)), -COST.get(c.method, 1)))


def sweep_row_dir(out: Path, row: str, per_class: int) -> Path:
    return out / "sweep" / row.replace("+", "-plus-") / f"clean{per_class}"


def sweep_cells(base, out: Path, seeds: int, per_classes: list[int]) -> list:
    """The clean-set sweep at 40% symmetric noise: for each seed the grid's noisy training set and
    noisy labels, with K clean images per class (nested), as npz files with their own clean set."""
    from l2b.grid import grid_configs

    cfgs = []
    for pc in per_classes:
        for seed in range(seeds):
            noisy_npz, only_npz = sweep_data(base, out, seed, pc, max(per_classes))
            run = replace(base, noise="none", val_per_class=None, val_total=None, train_subset=None)
            for row in SWEEP_ROWS:
                method = "ce" if row.startswith("ce") else row
                data = only_npz if row == "ce-clean-only" else noisy_npz
                cfgs += grid_configs(replace(run, data=f"npz:{data}", train_on_clean=row == "ce+clean"), [method],
                                     ["none"], 1, sweep_row_dir(out, row, pc) / f"seed{seed}")
                cfgs[-1] = replace(cfgs[-1], seed=seed)
    return sorted(cfgs, key=lambda c: -COST.get(c.method, 1))


def sweep_data(base, out: Path, seed: int, per_class: int, max_per_class: int) -> tuple[Path, Path]:
    """(noisy set + clean set, clean set alone) npz files for one seed and clean-set size; written
    once. The noisy images and labels are those of the grid's run at 40% symmetric noise for this
    seed; the clean images come from the rest of the training set, class by class in the order of
    the grid's own split (so the 2% clean set is the grid's, and the sets are nested)."""
    root = out / "sweep" / "data"
    noisy_npz, only_npz = root / f"seed{seed}-clean{per_class}.npz", root / f"seed{seed}-clean{per_class}-only.npz"
    if noisy_npz.is_file() and only_npz.is_file():
        return noisy_npz, only_npz
    from l2b.run_data import prepare_data

    prep = prepare_data(replace(base, noise=REGIME_NOISE, method="ce", seed=seed), False)
    ds = prep.ds
    y_all = ds.y_train.numpy()
    # the grid's clean split is the first val_per_class of each class's seeded permutation; the
    # larger sets continue along the same permutation, skipping the noisy training samples
    taken = set(prep.train_idx.tolist())
    rng = np.random.Generator(np.random.PCG64(seed))
    clean = []
    for c in range(ds.num_classes):
        perm = rng.permutation(np.flatnonzero(y_all == c))  # clean_val_split's permutation of class c
        clean.append([i for i in perm if i not in taken][:per_class])
    clean_idx = np.sort(np.concatenate(clean))
    grid_val = np.sort(prep.val_idx)
    if per_class == base.val_per_class and not np.array_equal(clean_idx, grid_val):
        raise AssertionError("the sweep's 2% clean set is not the grid's own clean set")
    x = ds.x_train.numpy()[:, 0]
    common = dict(x_test=ds.x_test.numpy()[:, 0], y_test=ds.y_test.numpy(), classes=np.array(ds.classes))
    root.mkdir(parents=True, exist_ok=True)
    np.savez(noisy_npz, x_train=x[prep.train_idx], y_train=prep.y_noisy, x_val=x[clean_idx], y_val=y_all[clean_idx],
             y_train_true=prep.y_true, **common)
    np.savez(only_npz, x_train=x[clean_idx], y_train=y_all[clean_idx], x_val=x[clean_idx], y_val=y_all[clean_idx],
             **common)
    return noisy_npz, only_npz
