"""PBE0+MBD ASE calculator and the Dask-facing label_structure."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from ase import Atoms
from ase.units import Debye

from qcell_nb.calculators import pbe0
from qcell_nb.calculators.pbe0 import LEVEL_OF_THEORY, PBE0MBD, label_structure, level_of_theory


@pytest.fixture(autouse=True)
def free_atom_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("QCELL_NB_CACHE", str(tmp_path_factory.getbasetemp() / "qcell_cache"))


def water(name: str = "water") -> Atoms:
    # slightly asymmetric so that every force component is non-trivial
    return Atoms(
        "OH2",
        positions=[[0.0, 0.03, 0.1173], [0.05, 0.7572, -0.4692], [0.0, -0.7572, -0.4892]],
        info={"name": name},
    )


def test_pbe0_forces_match_finite_differences() -> None:
    # Analytic DF gradients with grid_response=True are the exact derivative of
    # the DF energy on the moving grid: measured max |F - F_fd| ~2e-5 eV/Å for
    # water/STO-3G (without grid response ~1.5e-4). Tolerance 1e-3 eV/Å.
    params = dict(basis="sto-3g", mbd=None)
    atoms = water()
    atoms.calc = PBE0MBD(**params)
    forces = atoms.get_forces()
    step = 1e-3  # Å
    for i, k in [(0, 2), (1, 1), (1, 2), (2, 0)]:
        energies = []
        for sign in (1, -1):
            shifted = atoms.copy()
            shifted.positions[i, k] += sign * step
            shifted.calc = PBE0MBD(**params)
            energies.append(shifted.get_potential_energy())
        assert forces[i, k] == pytest.approx(-(energies[0] - energies[1]) / (2 * step), abs=1e-3)
    assert np.abs(forces.sum(axis=0)).max() < 1e-3


def test_mbd_forces_at_fixed_ratios_close_to_total_derivative() -> None:
    # MBD forces neglect d(ratio)/dR; the neglected part is small (measured
    # 2.2e-4 eV/Å here, 2.6e-4 at def2-SVP).
    atoms = water()
    atoms.calc = PBE0MBD(basis="sto-3g")
    forces = atoms.calc.get_property("forces", atoms)
    step = 1e-3
    energies = []
    for sign in (1, -1):
        shifted = atoms.copy()
        shifted.positions[1, 1] += sign * step
        shifted.calc = PBE0MBD(basis="sto-3g")
        energies.append(shifted.get_potential_energy())
    assert forces[1, 1] == pytest.approx(-(energies[0] - energies[1]) / (2 * step), abs=1e-3)


def test_water_properties_and_single_scf(monkeypatch) -> None:
    calls = []
    original = pbe0.run_scf

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(pbe0, "run_scf", counting)
    atoms = Atoms("OH2", positions=[[0, 0, 0.1173], [0, 0.7572, -0.4692], [0, -0.7572, -0.4692]])
    atoms.calc = PBE0MBD()  # def2-SVP
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    dipole = atoms.get_dipole_moment()
    charges = atoms.get_charges()
    assert len(calls) == 1  # energy, forces, dipole, charges from one SCF
    res = atoms.calc.results
    assert energy == pytest.approx(res["pbe0_energy"] + res["mbd_energy"])
    assert -0.02 < res["mbd_energy"] < 0
    assert forces.shape == (3, 3) and np.all(np.isfinite(forces))
    # PBE0/def2-SVP water: ~2.0 D (experiment 1.85 D), pointing from O to the Hs (-z)
    assert np.linalg.norm(dipole) / Debye == pytest.approx(2.0, abs=0.1)
    assert dipole[2] < 0 and abs(dipole[0]) < 1e-6
    assert charges.sum() == pytest.approx(0.0, abs=1e-3)
    np.testing.assert_allclose(res["hirshfeld_charges"], charges)
    assert 0.85 < res["hirsh_ratios"][0] < 1.0 and 0.45 < res["hirsh_ratios"][1] < 0.7
    assert res["scf_converged"] and res["scf_iterations"] > 0
    assert res["auxbasis"] == "def2-svp-jkfit"  # def2-universal-jkfit
    # a moved atom is a new calculation
    atoms.positions[0, 2] += 0.01
    atoms.get_potential_energy()
    assert len(calls) == 2


def test_label_structure_is_plain_and_picklable() -> None:
    atoms = water("water-label")
    atoms.info["charge"] = 0
    result = label_structure(atoms, basis="sto-3g", mbd="ts")
    assert pickle.loads(pickle.dumps(label_structure)) is label_structure
    restored = pickle.loads(pickle.dumps(result))
    assert set(restored) >= {
        "energy", "forces", "dipole", "charges", "hirsh_ratios", "pbe0_energy",
        "mbd_energy", "scf_iterations", "wall_time_s", "level_of_theory",
    }
    assert isinstance(result["energy"], float) and isinstance(result["scf_iterations"], int)
    assert result["forces"].shape == (3, 3) and result["forces"].dtype == np.float64
    assert result["level_of_theory"] == "PBE0+TS/sto-3g (PySCF DF)"
    assert LEVEL_OF_THEORY == "PBE0+MBD@rsSCS/def2-svp (PySCF DF)"
    assert level_of_theory(basis="6-31g", mbd=None) == "PBE0/6-31g (PySCF DF)"
    assert atoms.calc is None  # the caller's Atoms is left alone


def test_uks_radical() -> None:
    oh = Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]], info={"name": "OH radical"})
    assert pbe0.multiplicity_of(oh) == 2
    result = label_structure(oh, basis="sto-3g")
    assert result["charges"].sum() == pytest.approx(0.0, abs=1e-3)
    assert np.all(np.isfinite(result["forces"]))
    assert abs(result["forces"].sum(axis=0)).max() < 1e-3
    calc = PBE0MBD(basis="sto-3g")
    oh.calc = calc
    oh.get_potential_energy()
    assert type(calc._mf).__name__.startswith("DFUKS") or "UKS" in type(calc._mf).__name__


@pytest.mark.parametrize(
    ("atoms", "params", "match"),
    [
        (Atoms("Xe", info={"name": "xenon"}), dict(basis="6-31g"), r"xenon.*'6-31g'.*Xe"),
        (Atoms("OH2", positions=[[0, 0, 0], [0, 0, 0.96], [0, 0.93, -0.24]]), dict(basis="not-a-basis"), "not-a-basis.*H"),
        (Atoms("H2O", positions=[[0, 0, 0], [0, 0, 0.1], [0, 0, 1.0]], info={"name": "squashed"}), {}, r"squashed.*atoms 0 \(H\) and 1 \(H\).*0.100"),
        (Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]], info={"multiplicity": 1}), {}, "9 electrons.*multiplicity 1"),
        (Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]]), dict(multiplicity=1), "multiplicity 1"),
    ],
)
def test_bad_inputs(atoms: Atoms, params: dict, match: str) -> None:
    atoms.calc = PBE0MBD(**params)
    with pytest.raises(ValueError, match=match):
        atoms.get_potential_energy()


def test_unknown_parameter() -> None:
    with pytest.raises(ValueError, match="basis_set"):
        PBE0MBD(basis_set="def2-svp")


def test_scf_failure_names_structure() -> None:
    atoms = water("stubborn water")
    atoms.calc = PBE0MBD(basis="sto-3g", max_cycle=1, conv_tol=1e-14)
    with pytest.raises(RuntimeError, match=r"stubborn water: SCF did not converge in \d+ cycles"):
        atoms.get_potential_energy()
