"""Noise models realise their definitions (statistically, on 100k labels) and reject bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from l2b.noise import CIFAR10_ASYMMETRIC_MAP, apply_noise, superclass_next_map

N = 100_000
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-n"


@pytest.fixture(scope="module")
def labels10():
    return np.random.Generator(np.random.PCG64(7)).integers(0, 10, N)


def binomial_tol(p, n, z=5.0):
    return z * np.sqrt(p * (1 - p) / n) + 1e-12


def test_symmetric_flips_r_times_k_minus_1_over_k(labels10):
    out = apply_noise(labels10, "symmetric:0.4", num_classes=10, seed=0)
    assert abs(out.rate - 0.36) <= 0.005
    assert np.array_equal(out.is_noisy, out.labels != labels10)
    off = out.transition[~np.eye(10, dtype=bool)]
    assert np.abs(off - 0.04).max() <= binomial_tol(0.04, N / 10)  # 0.4 / 10 into every other class
    assert np.abs(np.diag(out.transition) - 0.64).max() <= binomial_tol(0.64, N / 10)


def test_symmetric_exclusive_flips_exactly_r_uniformly(labels10):
    out = apply_noise(labels10, "symmetric-exclusive:0.4", num_classes=10, seed=0)
    assert abs(out.rate - 0.40) <= 0.005
    assert out.rate == pytest.approx(round(0.4 * N) / N)  # every chosen sample changes
    off = out.transition[~np.eye(10, dtype=bool)].reshape(10, 9)
    assert np.abs(off - 0.4 / 9).max() <= binomial_tol(0.4 / 9, N / 10)


def test_noise_is_a_pure_function_of_labels_spec_seed(labels10):
    a = apply_noise(labels10, "symmetric:0.5", num_classes=10, seed=3)
    b = apply_noise(labels10, "symmetric:0.5", num_classes=10, seed=3)
    c = apply_noise(labels10, "symmetric:0.5", num_classes=10, seed=4)
    assert np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)


def test_asymmetric_cifar10_follows_the_map_exactly(labels10):
    out = apply_noise(labels10, "asymmetric-cifar10:0.4", num_classes=10, seed=0)
    flipped = out.is_noisy
    for src, dst in zip(labels10[flipped], out.labels[flipped]):
        assert CIFAR10_ASYMMETRIC_MAP[src] == dst
    for c in range(10):
        share = out.transition[c, CIFAR10_ASYMMETRIC_MAP.get(c, c)]
        if c in CIFAR10_ASYMMETRIC_MAP:
            assert abs(share - 0.4) <= binomial_tol(0.4, N / 10)
        else:
            assert share == 1.0


@pytest.mark.parametrize("text, expected", [
    ('{"0": 1.5}', r"entry '0': 1.5: 1.5 is not a class index"),
    ('{"0": null}', r"entry '0': None: None is not a class index"),
    ('{"0": "cat"}', r"entry '0': 'cat': 'cat' is not a class index"),
    ('{"0": 0}', r"the map moves no class \(1 entries\); asymmetric noise would change no label"),
    ("{}", r"the map moves no class \(0 entries\)"),
], ids=["fractional", "null", "a name", "only itself", "empty"])
def test_a_class_map_that_names_no_move_between_classes_is_refused(labels10, tmp_path, text, expected):
    f = tmp_path / "map.json"
    f.write_text(text)
    with pytest.raises(ValueError, match=f"class map {f}: " + expected):
        apply_noise(labels10, f"asymmetric:0.5:{f}", num_classes=10)


def test_asymmetric_cifar100_moves_within_the_superclass():
    rng = np.random.Generator(np.random.PCG64(1))
    # superclasses that are NOT contiguous index blocks: fine class f belongs to (f * 7) % 20
    fine = rng.integers(0, 100, N)
    coarse = (fine * 7) % 20
    out = apply_noise(fine, "asymmetric-cifar100:0.3", num_classes=100, seed=0, coarse_labels=coarse)
    f = out.is_noisy
    assert np.array_equal(coarse[f], (out.labels[f] * 7) % 20)
    mapping = superclass_next_map(fine, coarse, 100)
    assert all(mapping[a] == b for a, b in zip(fine[f], out.labels[f]))
    assert abs(out.rate - 0.3) <= 0.005
    with pytest.raises(ValueError, match="coarse_labels="):
        apply_noise(fine, "asymmetric-cifar100:0.3", num_classes=100)


def test_asymmetric_with_user_map_from_mapping_and_file(labels10, tmp_path):
    mapping = {0: 1, 1: 0}
    a = apply_noise(labels10, "asymmetric:0.5", num_classes=10, seed=0, mapping=mapping)
    assert set(zip(labels10[a.is_noisy], a.labels[a.is_noisy])) == {(0, 1), (1, 0)}
    f = tmp_path / "map.json"
    f.write_text(json.dumps({"0": 1, "1": 0}))
    b = apply_noise(labels10, f"asymmetric:0.5:{f}", num_classes=10, seed=0)
    assert np.array_equal(a.labels, b.labels)
    c = tmp_path / "map.csv"
    c.write_text("# src,dst\n0,1\n1,0\n")
    assert np.array_equal(apply_noise(labels10, f"asymmetric:0.5:{c}", num_classes=10, seed=0).labels, a.labels)
    with pytest.raises(ValueError, match="needs a class map"):
        apply_noise(labels10, "asymmetric:0.5", num_classes=10)
    c.write_text("0,1\nzero,one\n")
    with pytest.raises(ValueError, match=r"map.csv, line 2"):
        apply_noise(labels10, f"asymmetric:0.5:{c}", num_classes=10)


def test_pairflip_realises_its_matrix(labels10):
    out = apply_noise(labels10, "pairflip:0.45", num_classes=10, seed=0)
    for c in range(10):
        assert abs(out.transition[c, (c + 1) % 10] - 0.45) <= binomial_tol(0.45, N / 10)
        assert out.transition[c, c] + out.transition[c, (c + 1) % 10] == pytest.approx(1.0)


def test_matrix_noise_realises_the_file_matrix(labels10, tmp_path):
    rng = np.random.Generator(np.random.PCG64(5))
    m = rng.dirichlet(np.ones(10) * 2, size=10)
    for suffix in (".npy", ".csv"):
        f = tmp_path / f"T{suffix}"
        np.save(f, m) if suffix == ".npy" else np.savetxt(f, m, delimiter=",")
        out = apply_noise(labels10, f"matrix:{f}", num_classes=10, seed=0)
        tol = binomial_tol(m, N / 10)
        assert (np.abs(out.transition - m) <= tol).all()


def test_matrix_errors_name_the_problem(labels10, tmp_path):
    f = tmp_path / "T.csv"
    np.savetxt(f, np.full((10, 10), 0.2), delimiter=",")
    with pytest.raises(ValueError, match="row 0 sums to 2"):
        apply_noise(labels10, f"matrix:{f}", num_classes=10)
    np.savetxt(f, np.full((3, 3), 1 / 3), delimiter=",")
    with pytest.raises(ValueError, match=r"shape \(3, 3\), expected \(10, 10\)"):
        apply_noise(labels10, f"matrix:{f}", num_classes=10)
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        apply_noise(labels10, f"matrix:{tmp_path / 'nope.npy'}", num_classes=10)
    g = tmp_path / "T.npy"
    np.save(g, np.full((10, 10), np.nan))  # NaN passes every comparison: it would noise nothing, silently
    with pytest.raises(ValueError, match=r"T.npy: NaN or inf entries \(100\)"):
        apply_noise(labels10, f"matrix:{g}", num_classes=10)
    g.write_bytes(g.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"T.npy: unreadable \(EOF: .*\); write K rows"):
        apply_noise(labels10, f"matrix:{g}", num_classes=10)


def test_instance_noise_has_the_requested_rate_and_depends_on_inputs():
    rng = np.random.Generator(np.random.PCG64(2))
    y = rng.integers(0, 10, 20_000)
    x = rng.normal(size=(20_000, 64)) + y[:, None]
    out = apply_noise(y, "instance:0.4", num_classes=10, seed=0, features=x)
    assert abs(out.rate - 0.4) <= 0.01
    # same labels, different inputs: different flips (the noise depends on the instance)
    other = apply_noise(y, "instance:0.4", num_classes=10, seed=0, features=x[::-1].copy())
    assert (other.labels != out.labels).mean() > 0.1
    with pytest.raises(ValueError, match="features="):
        apply_noise(y, "instance:0.4", num_classes=10)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("symmetric:1.5", "outside \\[0, 1\\]"),
        ("symmetric:-0.1", "outside \\[0, 1\\]"),
        ("symmetric:abc", "not a number"),
        ("symmetric", "needs a rate"),
        ("gaussian:0.2", "unknown noise 'gaussian:0.2'; valid noise models: symmetric"),
        ("cifar10n:best", "type must be one of aggre"),
        ("matrix", "needs a file"),
    ],
)
def test_bad_specs_are_rejected_clearly(labels10, spec, message):
    with pytest.raises(ValueError, match=message):
        apply_noise(labels10, spec, num_classes=10)


def test_labels_outside_range_are_rejected():
    with pytest.raises(ValueError, match="label 10 at index 2 is outside \\[0, 10\\)"):
        apply_noise(np.array([1, 2, 10]), "symmetric:0.2", num_classes=10)


needs_cifar_n = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/cifar-n not present")


@needs_cifar_n
def test_cifar10n_real_human_labels():
    from l2b.safe_pickle import load_torch_save_dict

    d = load_torch_save_dict(SHARED / "CIFAR-10_human.pt")
    clean = np.asarray(d["clean_label"])
    out = apply_noise(clean, "cifar10n:worse", num_classes=10, data_dir=SHARED)
    assert len(out.labels) == 50_000
    assert abs(out.rate - 0.4021) < 0.001  # CIFAR-10N "worse": 40.21% noise (Wei et al. 2022)
    aggre = apply_noise(clean, f"cifar10n:aggre:{SHARED / 'CIFAR-10_human.pt'}", num_classes=10)
    assert abs(aggre.rate - 0.0903) < 0.001  # "aggre": 9.03%


@needs_cifar_n
def test_cifar100n_real_human_labels_and_mismatch_errors():
    from l2b.safe_pickle import load_torch_save_dict

    clean = np.asarray(load_torch_save_dict(SHARED / "CIFAR-100_human.pt")["clean_label"])
    out = apply_noise(clean, "cifar100n:noisy", num_classes=100, data_dir=SHARED)
    assert abs(out.rate - 0.4020) < 0.001  # CIFAR-100N: 40.20% noise
    with pytest.raises(ValueError, match="50000 labels, but the dataset has 100"):
        apply_noise(clean[:100], "cifar100n:noisy", num_classes=100, data_dir=SHARED)
    shuffled = np.roll(clean, 1)
    with pytest.raises(ValueError, match="clean labels differ"):
        apply_noise(shuffled, "cifar100n:noisy", num_classes=100, data_dir=SHARED)
    with pytest.raises(ValueError, match="put CIFAR-100_human.pt in the dataset directory"):
        apply_noise(clean, "cifar100n:noisy", num_classes=100)
