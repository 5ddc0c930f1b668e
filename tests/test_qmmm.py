"""QM/MM electrostatic embedding: a QM water in the field of two TIP3P waters."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from qcell_nb.calculators.mbd import default_damping, mbd_energy
from qcell_nb.calculators.pbe0 import PBE0MBD, label_structure
from qcell_nb.calculators.qmmm import check_point_charges, label_embedded, tip3p_charges

# Tight SCF so that finite differences resolve 1e-4 eV/Å.
PARAMS = dict(basis="sto-3g", mbd=None, conv_tol=1e-11, conv_tol_grad=1e-7)


@pytest.fixture(autouse=True)
def free_atom_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("QCELL_NB_CACHE", str(tmp_path_factory.getbasetemp() / "qcell_cache"))


def qm_water() -> Atoms:
    return Atoms("OH2", positions=[[0.0, 0.03, 0.1173], [0.05, 0.7572, -0.4692], [0.0, -0.7572, -0.4892]],
                 info={"name": "QM water"})


def mm_waters() -> Atoms:
    # one hydrogen-bond acceptor along +x, one water above the QM one
    return Atoms("OH2OH2", positions=[[2.9, 0.1, 0.0], [3.3, 0.9, 0.3], [3.4, -0.7, 0.2],
                                      [-0.3, 0.2, 3.0], [0.5, 0.3, 3.5], [-0.9, 0.1, 3.7]])


def test_tip3p_charges() -> None:
    charges = tip3p_charges(mm_waters())
    np.testing.assert_allclose(charges, [-0.834, 0.417, 0.417] * 2)
    with pytest.raises(ValueError, match="whole waters"):
        tip3p_charges(Atoms("OH"))
    with pytest.raises(ValueError, match=r"O and H only.*'C'"):
        tip3p_charges(Atoms("CH4"))


def test_forces_on_qm_atoms_and_mm_charges_are_energy_gradients() -> None:
    qm, mm = qm_water(), mm_waters()
    charges = tip3p_charges(mm)
    result = label_embedded(qm, mm.positions, charges, **PARAMS)
    vacuum = label_structure(qm, **PARAMS)
    # the environment polarises the water: energy and dipole change
    assert abs(result["energy"] - vacuum["energy"]) > 1e-2
    assert np.linalg.norm(result["dipole"] - vacuum["dipole"]) > 1e-3
    assert result["mm_forces"].shape == (6, 3)
    step = 1e-3  # Å
    for j, k in [(0, 0), (4, 2)]:  # MM oxygen along the H-bond, an MM hydrogen
        energies = []
        for sign in (1, -1):
            moved = mm.positions.copy()
            moved[j, k] += sign * step
            energies.append(label_embedded(qm, moved, charges, **PARAMS)["energy"])
        # measured agreement ~4e-8 eV/Å
        assert result["mm_forces"][j, k] == pytest.approx(-(energies[0] - energies[1]) / (2 * step), abs=1e-4)
    energies = []
    for sign in (1, -1):
        moved = qm.copy()
        moved.positions[1, 1] += sign * step
        energies.append(label_embedded(moved, mm.positions, charges, **PARAMS)["energy"])
    # measured agreement ~3e-5 eV/Å (grid level 3)
    assert result["forces"][1, 1] == pytest.approx(-(energies[0] - energies[1]) / (2 * step), abs=1e-4)
    # translating QM and MM together leaves the energy unchanged: no net force
    total = result["forces"].sum(axis=0) + result["mm_forces"].sum(axis=0)
    assert np.abs(total).max() < 1e-3


def test_mbd_covers_the_qm_region_only_and_calculator_interface() -> None:
    qm, mm = qm_water(), mm_waters()
    # TS pairwise dispersion: the same QM-only rule as MBD, without MBD's JAX compilation time
    calc = PBE0MBD(basis="sto-3g", mbd="ts", mm_positions=mm.positions, mm_charges=tip3p_charges(mm))
    qm.calc = calc
    qm.get_forces()
    res = calc.results
    expected = mbd_energy(qm.positions, qm.numbers, res["hirsh_ratios"], variant="ts",
                          beta=default_damping("ts", "pbe0"))
    assert res["mbd_energy"] == pytest.approx(expected, abs=1e-10)
    assert res["mm_forces"].shape == (6, 3) and np.all(np.isfinite(res["mm_forces"]))


def test_bad_point_charges() -> None:
    qm = qm_water()
    with pytest.raises(ValueError, match=r"QM water: MM charge 0 is 0\.\d+ Å from QM atom 0 \(O\)"):
        check_point_charges(qm, [[0.3, 0.0, 0.1]], [0.4])
    with pytest.raises(ValueError, match=r"mm_charges must have shape \(2,\)"):
        check_point_charges(qm, np.zeros((2, 3)) + 5.0, [0.4])
    with pytest.raises(ValueError, match=r"mm_positions must have shape \(m, 3\)"):
        label_embedded(qm, [1.0, 2.0, 3.0], [0.4], **PARAMS)
