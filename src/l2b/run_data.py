"""The data of one run, from its config: the dataset, the clean validation split, the noise,
and the three splits (noisy train, clean validation, test) ready to batch on the device."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .config import TrainConfig
from .data import ArrayDataset, FileDataset, clean_val_split, load_dataset
from .data.batches import FileData, TensorData
from .noise import apply_noise, transition_matrix


@dataclass
class Prepared:
    """The data of one run: the clean split taken, the noise applied."""

    ds: ArrayDataset | FileDataset
    train_idx: np.ndarray  # positions in the dataset's training set
    val_idx: np.ndarray | None  # clean validation positions in it (None: the dataset's own set)
    y_true: np.ndarray  # true labels of the training samples used
    y_noisy: np.ndarray  # their noisy labels
    noise_rate: float
    transition: np.ndarray


def prepare_data(cfg: TrainConfig, needs_clean: bool) -> Prepared:
    options = {"on_bad_images": cfg.on_bad_images, "image_size": cfg.image_size}
    name = cfg.data.partition(":")[0]
    ds = load_dataset(cfg.data, **(options if name in ("folder", "isic2019", "clothing1m") else {}))
    y_all = ds.y_train.numpy()
    own_val = (isinstance(ds, ArrayDataset) and ds.x_val is not None) or (isinstance(ds, FileDataset) and ds.val)
    if cfg.val_per_class is not None or cfg.val_total is not None:
        train_idx, val_idx = clean_val_split(y_all, per_class=cfg.val_per_class, total=cfg.val_total, seed=cfg.seed)
    elif own_val:
        train_idx, val_idx = np.arange(len(y_all)), None
    elif needs_clean:
        raise ValueError(
            f"method {cfg.method!r} needs a clean validation set: give --val-per-class K "
            f"(or --val-total M), or use a dataset with its own clean set"
        )
    else:
        train_idx, val_idx = np.arange(len(y_all)), np.array([], dtype=np.int64)
    # Noise is applied to the whole training set (a pure function of it, so CIFAR-N files line
    # up), then the clean validation samples keep their true labels.
    features = None
    if cfg.noise.startswith("instance:"):
        if not isinstance(ds, ArrayDataset):
            raise ValueError("instance noise needs in-memory images; not available for image-file datasets")
        features = ds.x_train.reshape(len(ds.x_train), -1).numpy()
    noisy = apply_noise(
        y_all, cfg.noise, num_classes=ds.num_classes,
        seed=cfg.seed if cfg.noise_seed is None else cfg.noise_seed,
        coarse_labels=None if ds.coarse_train is None else ds.coarse_train.numpy(),
        mapping=ds.asymmetric_map, features=features, data_dir=ds.root,
    )
    if cfg.train_subset is not None:
        if cfg.train_subset > len(train_idx):
            raise ValueError(f"train_subset={cfg.train_subset} exceeds the {len(train_idx)} training samples")
        rng = np.random.Generator(np.random.PCG64(cfg.seed))
        train_idx = np.sort(rng.choice(train_idx, cfg.train_subset, replace=False))
    y_true, y_noisy = y_all[train_idx], noisy.labels[train_idx]
    return Prepared(ds, train_idx, val_idx, y_true, y_noisy, float((y_true != y_noisy).mean()),
                    transition_matrix(y_true, y_noisy, ds.num_classes))


def build_splits(cfg: TrainConfig, prep: Prepared, device: torch.device, shard=(0, 1)):
    ds = prep.ds
    if isinstance(ds, ArrayDataset):
        mean, std = ds.mean_std()
        aug = {"crop_padding": 0, "flip": False} if cfg.augment == "none" else (
            {"crop_padding": 4, "flip": True} if cfg.augment == "crop-flip" else ds.augment)

        def split(x, y):
            return TensorData(x, y, device, mean, std, aug, shard)

        train = split(ds.x_train[prep.train_idx], prep.y_noisy)
        if prep.val_idx is None:
            val = split(ds.x_val, ds.y_val.numpy())
        else:
            val = split(ds.x_train[prep.val_idx], ds.y_train.numpy()[prep.val_idx])
        test = split(ds.x_test, ds.y_test.numpy())
    else:
        train = FileData(ds, [ds.train[i] for i in prep.train_idx], prep.y_noisy, device, cfg.workers, shard)
        if prep.val_idx is None:
            val = FileData(ds, ds.val, [y for _, y in ds.val], device, cfg.workers, shard)
        else:
            val = FileData(ds, [ds.train[i] for i in prep.val_idx], ds.y_train.numpy()[prep.val_idx],
                           device, cfg.workers, shard)
        test = FileData(ds, ds.test, [y for _, y in ds.test], device, cfg.workers, shard)
    return train, val, test
