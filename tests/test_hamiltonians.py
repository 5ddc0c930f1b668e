"""Kohn-Sham matrices beside the dataset: HDF5 round trip, F C = S C e, resume."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from ase import Atoms
from scipy.linalg import eigh

from qcell_nb.calculators.pbe0 import label_structure
from qcell_nb.hamiltonians import HamiltonianStore, generalized_eigen_residual, hamiltonians_path
from qcell_nb.reference import label_missing
from qcell_nb.store import Dataset
from qcell_nb.structures import structure_id


@pytest.fixture(autouse=True)
def free_atom_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("QCELL_NB_CACHE", str(tmp_path_factory.getbasetemp() / "qcell_cache"))


def water() -> Atoms:
    return Atoms("OH2", positions=[[0.0, 0.03, 0.1173], [0.05, 0.7572, -0.4692], [0.0, -0.7572, -0.4892]],
                 info={"name": "water"})


def oh_radical() -> Atoms:
    return Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]], info={"name": "OH radical"})


def test_label_missing_stores_matrices_that_solve_the_ks_equations(tmp_path) -> None:
    dataset = Dataset(tmp_path / "dataset.db")
    structures = [water(), oh_radical()]
    summary = label_missing(structures, dataset, executor="serial", progress=False,
                            store_hamiltonian=True, basis="def2-svp", mbd=None)
    assert summary.succeeded == 2 and len(dataset) == 2
    store = HamiltonianStore(hamiltonians_path(dataset.path))
    assert store.path.name == "dataset.hamiltonians.h5"
    assert dataset.metadata["hamiltonians"] == str(store.path)
    assert store.ids() == {structure_id(a) for a in structures}

    entry = store.read(structure_id(water()))
    nao = 24  # def2-SVP water: O 14 + 2 x H 5
    assert entry["hamiltonian"].shape == entry["overlap"].shape == (nao, nao)
    assert entry["units"]["hamiltonian"] == "Ha" and entry["basis"] == "def2-svp"
    assert entry["auxbasis"] == "def2-svp-jkfit" and entry["restricted"] is True
    assert entry["ao_labels"][0] == "0 O 1s" and len(entry["ao_labels"]) == nao
    assert entry["level_of_theory"] == "PBE0/def2-svp (PySCF DF)"
    np.testing.assert_allclose(entry["positions"], water().positions)
    np.testing.assert_allclose(entry["hamiltonian"], entry["hamiltonian"].T, atol=1e-12)
    # F C = S C e for every orbital, and the generalised eigenvalues are the orbital energies
    assert generalized_eigen_residual(entry) < 1e-5
    np.testing.assert_allclose(eigh(entry["hamiltonian"], entry["overlap"], eigvals_only=True),
                               entry["orbital_energies"], atol=1e-6)
    assert entry["occupations"].sum() == pytest.approx(10.0)
    # the row itself does not carry the matrices
    row = next(dataset.rows(sid=structure_id(water())))
    assert "kohn_sham" not in row.data and "hamiltonian" not in row.data

    radical = store.read(structure_id(oh_radical()))
    assert radical["restricted"] is False and radical["hamiltonian"].shape[0] == 2
    assert radical["multiplicity"] == 2
    assert generalized_eigen_residual(radical) < 1e-5


def test_resume_adds_only_missing_matrices(tmp_path) -> None:
    dataset = Dataset(tmp_path / "dataset.db")
    label_missing([water()], dataset, executor="serial", progress=False, basis="sto-3g", mbd=None)
    # labelled without matrices: asking for them recomputes this one, the row stays single
    summary = label_missing([water()], dataset, executor="serial", progress=False,
                            store_hamiltonian=True, basis="sto-3g", mbd=None)
    assert summary.submitted == 1 and len(dataset) == 1
    summary = label_missing([water()], dataset, executor="serial", progress=False,
                            store_hamiltonian=True, basis="sto-3g", mbd=None)
    assert summary.submitted == 0


def test_store_round_trip_and_interrupted_write(tmp_path) -> None:
    result = label_structure(water(), basis="sto-3g", mbd=None, kohn_sham_matrices=True)
    matrices = result["kohn_sham"]
    store = HamiltonianStore(tmp_path / "h.h5")
    assert store.write("abc", matrices, atomic_numbers=[8, 1, 1], positions=water().positions,
                       level_of_theory=result["level_of_theory"], charge=0)
    assert not store.write("abc", matrices, atomic_numbers=[8, 1, 1], positions=water().positions)
    entry = store.read("abc")
    for key in ("hamiltonian", "overlap", "orbital_energies", "orbital_coefficients", "occupations"):
        np.testing.assert_array_equal(entry[key], matrices[key])
    assert entry["ao_labels"] == matrices["ao_labels"] and entry["charge"] == 0
    # a write interrupted before its rename leaves a temporary group; reopening removes it
    with h5py.File(store.path, "a") as handle:
        handle.create_group("_incomplete_def")
    assert HamiltonianStore(store.path).ids() == {"abc"}
    with h5py.File(store.path, "r") as handle:
        assert "_incomplete_def" not in handle
    with pytest.raises(KeyError, match="nope: not in"):
        store.read("nope")
    with pytest.raises(ValueError, match="lack"):
        store.write("x", {"hamiltonian": 1}, atomic_numbers=[1], positions=[[0, 0, 0]])


def test_labels_and_matrices_are_reused_from_an_earlier_dataset_with_the_same_settings(tmp_path, monkeypatch) -> None:
    from qcell_nb import reference

    earlier = Dataset(tmp_path / "earlier" / "dataset.db")
    label_missing([water()], earlier, executor="serial", progress=False, store_hamiltonian=True,
                  basis="sto-3g", mbd=None)
    computed = []
    real = reference._label_one
    monkeypatch.setattr(reference, "_label_one", lambda atoms, **kw: computed.append(atoms.info["name"]) or real(atoms, **kw))
    now = Dataset(tmp_path / "now" / "dataset.db")
    renamed = water()
    renamed.info.update(name="water (renamed block)", subset="ions_water")  # same geometry, new provenance
    summary = label_missing([renamed, oh_radical()], now, executor="serial", progress=False, store_hamiltonian=True,
                            basis="sto-3g", mbd=None, reuse_from=earlier.path)
    assert computed == ["OH radical"] and summary.submitted == 1 and len(now) == 2
    sid = structure_id(water())
    (old,), (new,) = earlier.rows(sid=sid), now.rows(sid=sid)
    assert new.energy == old.energy and np.array_equal(new.forces, old.forces)
    assert np.array_equal(new.data["hirsh_ratios"], old.data["hirsh_ratios"]) and new.level_of_theory == old.level_of_theory
    assert (new.name, new.subset, new.sid) == ("water (renamed block)", "ions_water", sid)  # the current info
    copied = HamiltonianStore(hamiltonians_path(now.path)).read(sid)
    np.testing.assert_array_equal(copied["hamiltonian"], HamiltonianStore(hamiltonians_path(earlier.path)).read(sid)["hamiltonian"])
    assert copied["units"]["hamiltonian"] and generalized_eigen_residual(copied) < 1e-5

    # another memory budget computes the same numbers: reused
    bigger = Dataset(tmp_path / "bigger" / "dataset.db")
    label_missing([water()], bigger, executor="serial", progress=False, basis="sto-3g", mbd=None,
                  max_memory_mb=2000, reuse_from=earlier.path)
    assert computed == ["OH radical"] and next(bigger.rows()).energy == old.energy
    other = Dataset(tmp_path / "other" / "dataset.db")  # another basis: a different calculation, nothing reused
    label_missing([water()], other, executor="serial", progress=False, basis="6-31g", mbd=None, reuse_from=earlier.path)
    assert computed[-1] == "water" and next(other.rows()).energy != old.energy
