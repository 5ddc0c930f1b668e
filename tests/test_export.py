"""Exporters: MACE and SO3LR extxyz, SPICE HDF5; each round-tripped on a real PBE0+MBD dataset."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.units import Bohr, Hartree

from qcell_nb import export
from qcell_nb.reference import label_missing
from qcell_nb.store import Dataset

# PBE0+TS keeps the fixture cheap (MBD@rsSCS would add a JAX compilation per molecule size, ~3 s
# each on a free core); the exporters do not depend on the dispersion model.
LABEL_PARAMS = dict(basis="sto-3g", grid_level=1, conv_tol=1e-8, mbd="ts")


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory) -> str:
    """Water (two geometries), methanol and hydroxide labelled with PBE0+TS/STO-3G."""
    import os

    root = tmp_path_factory.mktemp("export")
    old_cache = os.environ.get("QCELL_NB_CACHE")
    # the free-atom cache location tests/test_pbe0.py uses, so a suite run computes free atoms once
    os.environ["QCELL_NB_CACHE"] = str(tmp_path_factory.getbasetemp() / "qcell_cache")
    water = molecule("H2O")
    water.info.update(name="water", subset="ions_water", smiles="O")
    stretched = water.copy()
    stretched.positions[1] *= 1.05
    methanol = molecule("CH3OH")
    methanol.info.update(name="methanol", subset="dimers", smiles="CO")
    hydroxide = Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]],
                      info={"name": "hydroxide", "charge": -1, "multiplicity": 1, "subset": "ions_water",
                            "smiles": "[OH-]"})
    dataset = Dataset(root / "dataset.db")
    summary = label_missing([water, stretched, methanol, hydroxide], dataset, executor="serial",
                            progress=False, **LABEL_PARAMS)
    if old_cache is None:
        os.environ.pop("QCELL_NB_CACHE")
    else:
        os.environ["QCELL_NB_CACHE"] = old_cache
    assert len(dataset) == 4, (summary, dataset.failures())
    return str(root / "dataset.db")


def _by_positions(frames):
    return {tuple(np.round(a.positions.ravel(), 6)): a for a in frames}


def _assert_same_labels(original, restored, *, atol=1e-7) -> None:
    # ASE's extxyz writer prints per-atom columns with 8 decimals: 1e-7 is the format's resolution
    assert len(original) == len(restored)
    restored_map = _by_positions(restored)
    for atoms in original:
        twin = restored_map[tuple(np.round(atoms.positions.ravel(), 6))]
        np.testing.assert_array_equal(twin.numbers, atoms.numbers)
        ref, got = atoms.calc.results, twin.calc.results
        assert got["energy"] == pytest.approx(ref["energy"], abs=atol)
        np.testing.assert_allclose(got["forces"], ref["forces"], atol=atol)
        np.testing.assert_allclose(got["dipole"], ref["dipole"], atol=atol)
        np.testing.assert_allclose(got["charges"], ref["charges"], atol=atol)


def test_dataset_is_real(dataset_path) -> None:
    frames = export.dataset_frames(dataset_path)
    for atoms in frames:
        forces = atoms.calc.results["forces"]
        assert np.abs(forces).max() > 1e-3  # not a placeholder
        assert atoms.info["hirsh_ratios"].shape == (len(atoms),)
    hydroxide = next(a for a in frames if a.info["name"] == "hydroxide")
    assert hydroxide.calc.results["charges"].sum() == pytest.approx(-1.0, abs=0.05)


def test_mace_extxyz_round_trip(dataset_path, tmp_path) -> None:
    out = tmp_path / "train.xyz"
    assert export.export_mace_extxyz(dataset_path, out) == 4
    text = out.read_text()
    assert "REF_energy=" in text and "REF_forces:R:3" in text and "REF_charges:R:1" in text
    assert "total_charge=-1" in text and "total_spin=1" in text and "dipole=" in text
    # no calculator columns MACE could read as labels under other names
    assert " energy=" not in text and "forces:R:3" not in text.replace("REF_forces:R:3", "")

    from ase.io import read

    raw = read(out, index=":")
    # ASE's reader files only MACE's "dipole" (a calculator property name) under a calculator
    assert all(frame.calc is None or set(frame.calc.results) == {"dipole"} for frame in raw)
    assert all("REF_energy" in frame.info and "REF_forces" in frame.arrays for frame in raw)
    original = export.dataset_frames(dataset_path)
    restored = export.read_mace_extxyz(out)
    _assert_same_labels(original, restored)
    hydroxide = next(a for a in restored if a.info["name"] == "hydroxide")
    assert hydroxide.info["total_charge"] == -1 and hydroxide.info["multiplicity"] == 1


def test_mace_custom_keys_and_selection(dataset_path, tmp_path) -> None:
    out = tmp_path / "water.xyz"
    keys = {"energy": "pbe0_mbd_energy", "forces": "pbe0_mbd_forces"}
    assert export.export_mace_extxyz(dataset_path, out, keys=keys, head="pbe0_mbd", name="water") == 2
    restored = export.read_mace_extxyz(out, keys=keys)
    assert {a.info["head"] for a in restored} == {"pbe0_mbd"}
    _assert_same_labels(export.dataset_frames(dataset_path, name="water"), restored)
    with pytest.raises(ValueError, match="stress"):
        export.export_mace_extxyz(dataset_path, out, keys={"stress": "s"})


def test_so3lr_extxyz_round_trip(dataset_path, tmp_path) -> None:
    out = tmp_path / "so3lr.xyz"
    assert export.export_so3lr_extxyz(dataset_path, out) == 4
    restored = export.read_so3lr_extxyz(out)
    original = export.dataset_frames(dataset_path)
    _assert_same_labels(original, restored)
    restored_map = _by_positions(restored)
    for atoms in original:
        twin = restored_map[tuple(np.round(atoms.positions.ravel(), 6))]
        # what SO3LR's loaders call: the calculator's getters, info and arrays
        assert twin.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(twin.get_dipole_moment(), atoms.get_dipole_moment(), atol=1e-10)
        np.testing.assert_allclose(twin.arrays["hirsh_ratios"], atoms.info["hirsh_ratios"], atol=1e-12)
        assert twin.info["charge"] == atoms.info["total_charge"]
        assert twin.info["multiplicity"] == atoms.info["multiplicity"]


def test_spice_hdf5_round_trip_and_units(dataset_path, tmp_path) -> None:
    out = tmp_path / "spice.hdf5"
    atom_energies = {1: -13.0, 6: -1020.0, 8: -2030.0}  # eV; any values test the bookkeeping
    assert export.export_spice_hdf5(dataset_path, out, atom_energies=atom_energies) == 4
    original = export.dataset_frames(dataset_path)
    with h5py.File(out, "r") as handle:
        assert sorted(handle) == ["hydroxide charge=-1", "methanol", "water"]
        water = handle["water"]
        assert water["conformations"].shape == (2, 3, 3)
        assert water["conformations"].attrs["units"] == "bohr"
        assert water["dft_total_energy"].attrs["units"] == "hartree"
        assert water["dft_total_gradient"].attrs["units"] == "hartree/bohr"
        assert water["smiles"].asstr()[0] == "O"
        first = next(a for a in original if a.info["name"] == "water")
        index = int(np.argmin([np.abs(c * Bohr - first.positions).max() for c in water["conformations"][()]]))
        # units by hand: eV -> hartree, eV/Å -> hartree/bohr (gradient = -forces)
        assert water["dft_total_energy"][index] == pytest.approx(first.get_potential_energy() / Hartree, abs=1e-12)
        np.testing.assert_allclose(water["dft_total_gradient"][index], -first.get_forces() * Bohr / Hartree,
                                   atol=1e-12)
        reference = (atom_energies[8] + 2 * atom_energies[1]) / Hartree
        assert water["formation_energy"][index] == pytest.approx(water["dft_total_energy"][index] - reference)
        assert handle["hydroxide charge=-1"].attrs["total_charge"] == -1
    restored = export.read_spice_hdf5(out)
    _assert_same_labels(original, restored, atol=1e-10)  # float64 in HDF5: only conversion round-off
    restored_map = _by_positions(restored)
    for atoms in original:
        twin = restored_map[tuple(np.round(atoms.positions.ravel(), 6))]
        np.testing.assert_allclose(twin.info["hirsh_ratios"], atoms.info["hirsh_ratios"], atol=1e-12)
        assert twin.info["total_charge"] == atoms.info["total_charge"]


def test_missing_dataset_and_atom_energies(dataset_path, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.db"):
        export.export_mace_extxyz(tmp_path / "nowhere.db", tmp_path / "x.xyz")
    assert not (tmp_path / "nowhere.db").exists()
    with pytest.raises(ValueError, match=r"\[6\]"):
        export.export_spice_hdf5(dataset_path, tmp_path / "s.hdf5", atom_energies={1: -13.0, 8: -2030.0})
