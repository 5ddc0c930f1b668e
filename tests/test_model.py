"""Tests of the stage-06 model: symmetry, forces, padding, training, save/load.

Labels come from GFN2-xTB (tblite) on rattled methanol and water, so the
model learns a real potential. Every batch in this module has the same
padded shape (4 molecule slots, 32 atoms, 128 pairs), so the whole module
compiles the training step and the prediction function once each; the
trained models are module fixtures shared by the tests.
"""

from __future__ import annotations

import ctypes
import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

from qcell_nb.model import (MLCalculator, ModelConfig, bucket_size, collate, fit_baseline, iterate_batches,
                            load_model, make_samples, plot_learning_curves, predict, save_model, train)
from qcell_nb.model.data import EnergyBaseline, neighbour_pairs

BATCH = 4  # every batch: 4 molecule slots -> 32 atoms, 128 pairs for water/methanol


def _omp_threads(count: int | None) -> int | None:
    """Set OpenMP's thread count (libgomp, which tblite uses); returns the old one.

    With XLA's thread pool in the same process, tblite's default OpenMP
    threads contend for the cores and labelling runs ~50x slower (50 s
    instead of 1 s here); one thread avoids that.
    """
    try:
        gomp = ctypes.CDLL("libgomp.so.1")
    except OSError:
        return None
    old = gomp.omp_get_max_threads()
    if count is not None:
        gomp.omp_set_num_threads(count)
    return old


def _label(atoms: Atoms) -> Atoms:
    from tblite.ase import TBLite

    work = atoms.copy()
    work.calc = TBLite(method="GFN2-xTB", verbosity=0)
    previous = _omp_threads(1)
    try:
        energy, forces = work.get_potential_energy(), work.get_forces()
    finally:
        _omp_threads(previous)
    out = atoms.copy()
    out.calc = SinglePointCalculator(out, energy=energy, forces=forces)
    return out


def _rattled(name: str, count: int, stdev: float, seed: int) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    base = molecule(name)
    out = []
    for _ in range(count):
        atoms = base.copy()
        atoms.positions += rng.normal(0.0, stdev, atoms.positions.shape)
        out.append(_label(atoms))
    return out


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


@pytest.fixture(scope="module")
def methanol() -> list[Atoms]:
    return _rattled("CH3OH", 36, 0.06, seed=1)


@pytest.fixture(scope="module")
def water() -> list[Atoms]:
    return _rattled("H2O", 4, 0.06, seed=2)


@pytest.fixture(scope="module")
def trained(methanol):
    """Methanol model: 24 train, 4 validation, 8 held-out test structures."""
    return train(methanol[:24], methanol[24:28], epochs=60, batch_size=BATCH, learning_rate=5e-3,
                 seed=0, progress=False)


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
def test_bucket_sizes_are_few_and_bound_the_waste():
    sizes = [bucket_size(n) for n in range(1, 2000)]
    assert all(s >= n for n, s in zip(range(1, 2000), sizes))
    assert all(s <= max(32, 1.5 * n) for n, s in zip(range(1, 2000), sizes))
    assert sorted(set(sizes)) == [32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048]
    assert bucket_size(33) == 48 and bucket_size(64) == 64


def test_neighbour_pairs_match_a_direct_count():
    rng = np.random.default_rng(0)
    positions = rng.uniform(0, 8, (40, 3))
    dst, src = neighbour_pairs(positions, 3.0)
    dist = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    expected = {(i, j) for i in range(40) for j in range(40) if i != j and dist[i, j] < 3.0}
    assert set(zip(dst.tolist(), src.tolist())) == expected


def test_baseline_recovers_element_energies():
    true = {1: -13.6, 8: -2040.0, 6: -1030.0}
    structures = []
    for name in ("H2O", "CH4", "CH3OH", "CO2", "H2"):
        atoms = molecule(name)
        atoms.calc = SinglePointCalculator(atoms, energy=sum(true[z] for z in atoms.numbers))
        structures.append(atoms)
    baseline = fit_baseline(structures, scale_from="energy")
    for z, energy in true.items():
        assert baseline.element_energies[z] == pytest.approx(energy, abs=1e-6)
    assert baseline.scale == 1.0  # residuals are zero and there are no forces: fallback


def test_collate_pads_and_masks_missing_labels():
    a, b = molecule("H2O"), molecule("CH3OH")
    a.calc = SinglePointCalculator(a, energy=-1.0)  # energy only
    b.calc = SinglePointCalculator(b, forces=np.ones((6, 3)))  # forces only
    baseline = EnergyBaseline({1: 0.0, 6: 0.0, 8: 0.0})
    batch = collate(make_samples([a, b], 5.0, baseline), num_graphs=4)
    assert batch["numbers"].shape == (32,) and batch["dst_idx"].shape == (128,)
    assert batch["atom_mask"].sum() == 9 and batch["pair_mask"].sum() == 6 + 30
    assert batch["graph_mask"].tolist() == [True, True, False, False]
    assert batch["energy_mask"].tolist() == [True, False, False, False]
    assert batch["forces_mask"].tolist()[:9] == [False] * 3 + [True] * 6
    assert batch["energy"][0] == pytest.approx(-1.0)
    # pairs of the second molecule are offset to its atoms
    second = batch["dst_idx"][6:36]
    assert second.min() == 3 and second.max() == 8


def test_shuffling_is_deterministic_under_a_seed(methanol):
    samples = make_samples(methanol[:10], 5.0)
    order = [[idx for _, idx in iterate_batches(samples, 4, shuffle=True, rng=np.random.default_rng(7))]
             for _ in range(2)]
    assert order[0] == order[1]
    assert sorted(i for batch in order[0] for i in batch) == list(range(10))


def test_bad_inputs_raise_clear_errors(trained):
    with pytest.raises(ValueError, match=r"N \(Z=7\)"):
        predict(trained, [molecule("NH3")])
    periodic = molecule("H2O")
    periodic.cell, periodic.pbc = [5, 5, 5], True
    with pytest.raises(ValueError, match="periodic"):
        predict(trained, [periodic])
    with pytest.raises(ValueError, match="max_degree"):
        ModelConfig(max_degree=-1)


# --------------------------------------------------------------------------
# symmetry, forces, padding (on the trained model: a non-trivial function)
# --------------------------------------------------------------------------
def test_rotation_translation_invariance_and_force_covariance(trained, methanol):
    rng = np.random.default_rng(3)
    original = methanol[30]
    moved = []
    rotations = [_random_rotation(rng) for _ in range(3)]
    for rotation in rotations:
        atoms = original.copy()
        atoms.positions = atoms.positions @ rotation.T + rng.normal(0, 5, 3)
        moved.append(atoms)
    energies, forces = predict(trained, [original] + moved, batch_size=BATCH)
    for k, rotation in enumerate(rotations, start=1):
        assert energies[k] == pytest.approx(energies[0], abs=2e-4)
        np.testing.assert_allclose(forces[k], forces[0] @ rotation.T, atol=2e-4)


def test_permutation_invariance(trained, methanol):
    original = methanol[31]
    perm = np.random.default_rng(4).permutation(len(original))
    permuted = original[perm]
    energies, forces = predict(trained, [original, permuted], batch_size=BATCH)
    assert energies[1] == pytest.approx(energies[0], abs=2e-4)
    np.testing.assert_allclose(forces[1], forces[0][perm], atol=2e-4)


def test_forces_are_minus_the_finite_difference_gradient(trained, methanol):
    atoms = methanol[32]
    h = 2e-3  # Å; central differences, float32 network
    displaced = []
    for i in range(len(atoms)):
        for c in range(3):
            for sign in (1, -1):
                d = atoms.copy()
                d.positions[i, c] += sign * h
                displaced.append(d)
    energies, _ = predict(trained, displaced, batch_size=BATCH)
    numeric = -(energies[0::2] - energies[1::2]).reshape(len(atoms), 3) / (2 * h)
    _, (analytic,) = predict(trained, [atoms], batch_size=BATCH)
    assert np.abs(analytic).max() > 0.1  # a non-trivial check
    np.testing.assert_allclose(analytic, numeric, atol=2e-2)


def test_padding_and_batch_neighbours_do_not_change_predictions(trained, methanol, water):
    target = methanol[33]
    alone_e, alone_f = predict(trained, [target], batch_size=BATCH)  # 3 padding molecules
    batch_e, batch_f = predict(trained, [methanol[34], target, methanol[35], methanol[0]], batch_size=BATCH)
    assert batch_e[1] == pytest.approx(alone_e[0], abs=2e-4)
    np.testing.assert_allclose(batch_f[1], alone_f[0], atol=2e-4)


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------
def test_overfits_four_structures(methanol, water):
    structures = water[:2] + methanol[:2]
    result = train(structures, None, epochs=300, batch_size=BATCH, learning_rate=1e-2, seed=1,
                   progress=False)
    history = result.history
    assert history["train_loss"][-1] < 0.01 * history["train_loss"][0]
    energies, forces = predict(result, structures, batch_size=BATCH)
    reference = np.array([a.get_potential_energy() for a in structures])
    assert np.abs(energies - reference).max() < 0.05  # eV, about -230 eV totals
    force_mae = np.mean([np.abs(f - a.get_forces()).mean() for f, a in zip(forces, structures)])
    assert force_mae < 0.1  # eV/Å, against ~2.5 eV/Å typical forces


def test_training_is_deterministic_under_a_seed(methanol):
    runs = [train(methanol[:8], methanol[8:12], epochs=3, batch_size=BATCH, seed=5, progress=False)
            for _ in range(2)]
    assert runs[0].history["train_loss"] == runs[1].history["train_loss"]
    assert runs[0].history["val_loss"] == runs[1].history["val_loss"]


def test_held_out_force_error_beats_the_mean_predictor(trained, methanol):
    train_set, test_set = methanol[:24], methanol[28:]
    _, predicted = predict(trained, test_set, batch_size=BATCH)
    reference = [a.get_forces() for a in test_set]
    model_mae = np.mean(np.abs(np.concatenate(predicted) - np.concatenate(reference)))
    mean_force = np.concatenate([a.get_forces() for a in train_set]).mean(axis=0)
    baseline_mae = np.mean(np.abs(np.concatenate(reference) - mean_force))
    assert model_mae < 0.5 * baseline_mae, (model_mae, baseline_mae)
    history = trained.history
    assert set(history) >= {"train_loss", "val_loss", "train_energy_mae", "val_energy_mae",
                            "train_forces_mae", "val_forces_mae"}
    assert len(history["val_loss"]) == 60
    assert history["val_loss"][trained.best_epoch] == min(history["val_loss"])


def test_save_load_round_trip_and_learning_curves(trained, methanol, tmp_path):
    path = save_model(tmp_path / "model", trained)
    meta = json.loads((path / "model.json").read_text())
    assert meta["config"]["cutoff"] == 5.0 and set(meta["baseline"]["element_energies"]) == {"1", "6", "8"}
    loaded = load_model(path)
    assert loaded.config == trained.config and loaded.baseline == trained.baseline
    before = predict(trained, methanol[28:32], batch_size=BATCH)
    after = predict(loaded, methanol[28:32], batch_size=BATCH)
    np.testing.assert_array_equal(before[0], after[0])
    for f_before, f_after in zip(before[1], after[1]):
        np.testing.assert_array_equal(f_before, f_after)
    figure = plot_learning_curves(loaded.history, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0 and len(figure.axes) == 3


def test_checkpoint_dir_keeps_the_best_model(methanol, tmp_path):
    result = train(methanol[:8], methanol[8:12], epochs=3, batch_size=BATCH, seed=2, progress=False,
                   checkpoint_dir=tmp_path / "ckpt")
    saved = load_model(tmp_path / "ckpt")
    assert saved.best_epoch == result.best_epoch
    np.testing.assert_array_equal(predict(saved, methanol[:1], batch_size=BATCH)[0],
                                  predict(result, methanol[:1], batch_size=BATCH)[0])


def test_ase_calculator_runs_an_optimisation(trained, methanol):
    from ase.optimize import BFGS

    atoms = methanol[29].copy()
    atoms.calc = MLCalculator(trained)
    energy, (forces,) = predict(trained, [atoms], batch_size=BATCH)
    assert atoms.get_potential_energy() == pytest.approx(energy[0], abs=1e-4)
    np.testing.assert_allclose(atoms.get_forces(), forces, atol=1e-4)
    start = atoms.get_potential_energy()
    BFGS(atoms, logfile=None).run(fmax=0.05, steps=5)
    assert atoms.get_potential_energy() < start
