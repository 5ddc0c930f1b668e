"""Training of the SO3LR-style model: fitting, determinism, checkpoints, save/load, calculator.

Labels come from GFN2-xTB (tblite) on rattled methanol: energies, forces,
dipoles and Mulliken charges, so the model learns a real potential. Every
batch in this module has the same padded shape (4 molecule slots, 32 atoms,
128 pairs) and every run the same architecture, so the module compiles the
training step and the prediction function once each.
"""

from __future__ import annotations

import ctypes
import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

from qcell_nb.model import (MLCalculator, load_model, plot_learning_curves, predict, predict_properties,
                            save_model, train)
from qcell_nb.model import training as training_module

BATCH = 4


def _omp_threads(count: int | None) -> int | None:
    """Set OpenMP's thread count (libgomp, which tblite uses); returns the old one.

    With XLA's thread pool in the same process, tblite's default OpenMP
    threads contend for the cores and labelling runs ~50x slower; one thread avoids that.
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
        dipole, charges = work.get_dipole_moment(), work.get_charges()
    finally:
        _omp_threads(previous)
    out = atoms.copy()
    out.calc = SinglePointCalculator(out, energy=energy, forces=forces, dipole=dipole, charges=charges)
    return out


@pytest.fixture(scope="module")
def methanol() -> list[Atoms]:
    rng = np.random.default_rng(1)
    base = molecule("CH3OH")
    out = []
    for _ in range(36):
        atoms = base.copy()
        atoms.positions += rng.normal(0.0, 0.06, atoms.positions.shape)
        out.append(_label(atoms))
    return out


@pytest.fixture(scope="module")
def trained(methanol):
    """24 train, 4 validation, 8 held-out test structures."""
    return train(methanol[:24], methanol[24:28], epochs=40, batch_size=BATCH, seed=0, progress=False)


def test_held_out_errors_beat_the_mean_predictor(trained, methanol):
    train_set, test_set = methanol[:24], methanol[28:]
    _, predicted = predict(trained, test_set, batch_size=BATCH)
    reference = np.concatenate([a.get_forces() for a in test_set])
    model_mae = np.mean(np.abs(np.concatenate(predicted) - reference))
    mean_force = np.concatenate([a.get_forces() for a in train_set]).mean(axis=0)
    assert model_mae < 0.5 * np.mean(np.abs(reference - mean_force)), model_mae
    dipoles = np.array([out["dipole"] for out in predict_properties(trained, test_set, batch_size=BATCH)])
    reference_dipoles = np.array([a.get_dipole_moment() for a in test_set])
    assert np.abs(dipoles - reference_dipoles).mean() < 0.75 * np.abs(reference_dipoles).mean()
    history = trained.history
    assert history["train_dipole_mae"][-1] < 0.5 * history["train_dipole_mae"][0]
    assert len(history["val_loss"]) == 40
    assert history["val_loss"][trained.best_epoch] == min(history["val_loss"])
    assert np.isfinite(history["val_dipole_mae"][-1]) and np.isnan(history["val_hirshfeld_mae"][-1])


def test_overfits_four_structures(methanol):
    structures = methanol[:4]
    result = train(structures, None, epochs=250, batch_size=BATCH, learning_rate=1e-2, seed=1, progress=False)
    history = result.history
    assert history["train_loss"][-1] < 0.01 * history["train_loss"][0]
    energies, forces = predict(result, structures, batch_size=BATCH)
    reference = np.array([a.get_potential_energy() for a in structures])
    force_mae = np.mean([np.abs(f - a.get_forces()).mean() for f, a in zip(forces, structures)])
    assert force_mae < 0.15, force_mae  # eV/Å, against ~2.5 eV/Å typical forces
    # energies weigh 1/100 of forces in the loss: they fit last
    assert np.abs(energies - reference).max() < 0.1  # eV, on about -223 eV totals


def test_training_is_deterministic_under_a_seed(methanol):
    runs = [train(methanol[:8], methanol[8:12], epochs=2, batch_size=BATCH, seed=5, progress=False)
            for _ in range(2)]
    assert runs[0].history["train_loss"] == runs[1].history["train_loss"]
    assert runs[0].history["val_loss"] == runs[1].history["val_loss"]


def test_resume_after_a_kill_continues_the_same_run(methanol, tmp_path, monkeypatch):
    kwargs = dict(epochs=3, batch_size=BATCH, seed=3, progress=False)
    straight = train(methanol[:8], methanol[8:12], **kwargs)

    # Kill the run right after the checkpoint of its second epoch is written.
    write = training_module._write_training_state
    calls = []

    def write_then_die(*args, **kw):
        write(*args, **kw)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(training_module, "_write_training_state", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(methanol[:8], methanol[8:12], checkpoint_dir=tmp_path / "ckpt", **kwargs)
    monkeypatch.setattr(training_module, "_write_training_state", write)
    assert len(load_model(tmp_path / "ckpt" / "latest").history["epoch"]) == 2

    resumed = train(methanol[:8], methanol[8:12], checkpoint_dir=tmp_path / "ckpt", resume=True, **kwargs)
    assert resumed.history["train_loss"] == pytest.approx(straight.history["train_loss"], rel=1e-6)
    assert resumed.history["val_loss"] == pytest.approx(straight.history["val_loss"], rel=1e-6)
    assert resumed.best_epoch == straight.best_epoch
    np.testing.assert_allclose(predict(resumed, methanol[:1], batch_size=BATCH)[0],
                               predict(straight, methanol[:1], batch_size=BATCH)[0], atol=1e-5)
    best = load_model(tmp_path / "ckpt")  # a checkpoint directory reads as its best model
    assert best.best_epoch == straight.best_epoch
    with pytest.raises(ValueError, match="different run"):
        train(methanol[:8], methanol[8:12], checkpoint_dir=tmp_path / "ckpt", resume=True,
              **{**kwargs, "seed": 4})


def test_save_load_round_trip_and_learning_curves(trained, methanol, tmp_path):
    path = save_model(tmp_path / "model", trained)
    meta = json.loads((path / "model.json").read_text())
    assert meta["config"]["cutoff"] == 4.5 and set(meta["baseline"]["element_energies"]) == {"1", "6", "8"}
    loaded = load_model(path)
    assert loaded.config == trained.config and loaded.baseline == trained.baseline
    before = predict(trained, methanol[28:32], batch_size=BATCH)
    after = predict(loaded, methanol[28:32], batch_size=BATCH)
    np.testing.assert_array_equal(before[0], after[0])
    figure = plot_learning_curves(loaded.history, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert len(figure.axes) == 5  # loss, energy, forces, dipole, charges (no Hirshfeld labels)
    curves = json.loads((tmp_path / "curves.json").read_text())
    assert len(curves["train_loss"]) == 40 and curves["val_hirshfeld_mae"][0] is None


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
