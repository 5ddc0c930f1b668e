"""DFTB3/3ob(+MBD) through ASE's Dftb: the generated DFTB+ input, and a real run where dftb+ exists."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from qcell_nb.calculators import dftb
from qcell_nb.calculators.tightbinding import optimise, tight_binding_calculator


def water() -> Atoms:
    atoms = molecule("H2O")
    atoms.info.update(name="water", charge=0, multiplicity=1)
    return atoms


def dftb_input(atoms: Atoms, tmp_path, **kwargs) -> str:
    """The dftb_in.hsd that ASE writes for our parameters (no binary needed)."""
    from ase.calculators.dftb import Dftb

    calc = Dftb(directory=str(tmp_path), slako_dir=str(tmp_path) + "/", **dftb.dftb3_parameters(atoms, **kwargs))
    calc.write_input(atoms)
    return (tmp_path / "dftb_in.hsd").read_text()


def test_dftb3_3ob_input(tmp_path):
    text = dftb_input(water(), tmp_path)
    assert "ThirdOrderFull = Yes" in text
    assert "HCorrection = Damping" in text and "Exponent = 4.0" in text
    assert "O = -0.1575" in text and "H = -0.1857" in text
    assert 'O = "p"' in text and 'H = "s"' in text
    assert "Dispersion" not in text


def test_dftb3_mbd_input_and_charge(tmp_path):
    hydroxide = Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]], info={"name": "hydroxide", "charge": -1})
    text = dftb_input(hydroxide, tmp_path, mbd=True)
    assert "Dispersion = MBD" in text and "Beta = 0.83" in text
    assert "Charge = -1.0" in text


def test_open_shell_and_unknown_elements_rejected():
    radical = Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]], info={"name": "hydroxyl"})
    with pytest.raises(ValueError, match="hydroxyl.*multiplicity 2"):
        dftb.dftb3_parameters(radical)
    argon = Atoms("Ar2", positions=[[0, 0, 0], [0, 0, 3.8]], info={"name": "argon dimer"})
    with pytest.raises(ValueError, match="Ar"):
        dftb.dftb3_parameters(argon)


def test_missing_binary_or_parameters_is_explained(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no dftb+ here
    with pytest.raises(RuntimeError, match="dftb\\+ binary.*conda install"):
        tight_binding_calculator(water(), method="dftb3-3ob")
    monkeypatch.setenv("DFTB_PREFIX", str(tmp_path))
    with pytest.raises(RuntimeError, match="H-O.skf"):
        dftb.slater_koster_directory(["H", "O"])


@pytest.mark.skipif(dftb.dftb_plus_binary() is None,
                    reason="no dftb+ binary on PATH (conda install -c conda-forge dftbplus)")
def test_dftb3_mbd_optimises_water():
    try:
        dftb.slater_koster_directory(["H", "O"])
    except RuntimeError as err:
        pytest.skip(f"3ob Slater-Koster files not available: {err}")
    (final,) = optimise(water(), method="dftb3-3ob", mbd=True, fmax=0.02)
    assert final.info["converged"] is True
    assert final.info["tb_method"] == "DFTB3/3ob+MBD"
    assert 0.94 < final.get_distance(0, 1) < 1.0
    assert np.isfinite(final.info["xtb_energy"])
