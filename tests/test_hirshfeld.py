"""Hirshfeld partitioning of PySCF densities."""

from __future__ import annotations

import numpy as np
import pytest
from pyscf import dft, gto

from qcell_nb.calculators import hirshfeld

WATER = "O 0 0 0.1173; H 0 0.7572 -0.4692; H 0 -0.7572 -0.4692"
METHANE = "C 0 0 0; H 0.629 0.629 0.629; H -0.629 -0.629 0.629; H -0.629 0.629 -0.629; H 0.629 -0.629 -0.629"


@pytest.fixture(autouse=True)
def free_atom_cache(tmp_path_factory, monkeypatch):
    """Keep the free-atom cache of this test session out of the home directory."""
    monkeypatch.setenv("QCELL_NB_CACHE", str(tmp_path_factory.getbasetemp() / "qcell_cache"))


def run_ks(atom: str, xc: str = "pbe0", basis: str = "def2-svp", charge: int = 0, spin: int = 0, df: bool = True):
    mol = gto.M(atom=atom, basis=basis, charge=charge, spin=spin, verbose=0)
    mf = (dft.RKS if spin == 0 else dft.UKS)(mol, xc=xc)
    if df:
        mf = mf.density_fit()
    mf.kernel()
    assert mf.converged
    return mf


def test_water_matches_libmbd_reference() -> None:
    # libMBD's pymbd.pyscf test (same definition: free atoms in the molecular
    # basis, spherically averaged KS) gives O 0.95199, H 0.549794 for
    # PBE/def2-SVP water without density fitting on PySCF's default grid.
    mf = run_ks(WATER, xc="pbe", df=False)
    ratios = hirshfeld.hirshfeld_analysis(mf)["volume_ratios"]
    np.testing.assert_allclose(ratios, [0.95199, 0.549794, 0.549794], atol=1e-4)


def test_water_pbe0_physical() -> None:
    result = hirshfeld.hirshfeld_analysis(run_ks(WATER))
    ratios, charges = result["volume_ratios"], result["charges"]
    # FHI-aims-like values for O-H groups: O ~0.9, H ~0.55-0.6 (e.g. libMBD's
    # methanol test data: O 0.91, hydroxyl H 0.60)
    assert 0.85 < ratios[0] < 1.0
    assert 0.45 < ratios[1] < 0.7 and ratios[1] == pytest.approx(ratios[2], abs=1e-6)
    assert -0.45 < charges[0] < -0.2 and charges[1] > 0.1
    assert charges.sum() == pytest.approx(0.0, abs=1e-3)
    assert result["free_volumes"][0] > result["free_volumes"][1] > 0


def test_methane_physical() -> None:
    result = hirshfeld.hirshfeld_analysis(run_ks(METHANE))
    ratios = result["volume_ratios"]
    assert 0.7 < ratios[0] < 0.9  # FHI-aims: sp3 C ~0.75-0.8
    assert np.all((ratios[1:] > 0.5) & (ratios[1:] < 0.7))
    assert result["charges"].sum() == pytest.approx(0.0, abs=1e-3)


def test_charged_and_open_shell() -> None:
    anion = hirshfeld.hirshfeld_analysis(run_ks("O 0 0 0; H 0 0 0.97", charge=-1, basis="6-31g"))
    assert anion["charges"].sum() == pytest.approx(-1.0, abs=1e-3)
    radical = hirshfeld.hirshfeld_analysis(run_ks("O 0 0 0; H 0 0 0.97", spin=1, basis="6-31g"))
    assert radical["charges"].sum() == pytest.approx(0.0, abs=1e-3)
    assert np.all(radical["volume_ratios"] > 0.3)


def test_isolated_atom_ratio_is_one() -> None:
    result = hirshfeld.hirshfeld_analysis(run_ks("Ne 0 0 0"))
    assert result["volume_ratios"][0] == pytest.approx(1.0, abs=1e-4)
    assert result["charges"][0] == pytest.approx(0.0, abs=1e-4)


def test_disk_cache(tmp_path, monkeypatch) -> None:
    mol = gto.M(atom="H 0 0 0; H 0 0 0.74", basis="sto-3g", verbose=0)
    hirshfeld._MEMORY_CACHE.clear()
    dm, volume = hirshfeld.free_atom(mol, 0, "pbe0", cache_dir=tmp_path)
    files = list(tmp_path.glob("h-sto-3g-pbe0-*.npz"))
    assert len(files) == 1

    # a second process (empty memory cache) must read the file, not recompute
    hirshfeld._MEMORY_CACHE.clear()

    def fail(*args, **kwargs):
        raise AssertionError("free atom recomputed despite the disk cache")

    monkeypatch.setattr(hirshfeld, "_compute_free_atom", fail)
    dm2, volume2 = hirshfeld.free_atom(mol, 1, "pbe0", cache_dir=tmp_path)
    np.testing.assert_array_equal(dm, dm2)
    assert volume == volume2
    # one electron in a minimal basis: integrates to 1, <r^3> of order 1 Å^3
    assert 0.5 < volume * hirshfeld.Bohr**3 < 2.0
    hirshfeld._MEMORY_CACHE.clear()


def test_cache_dir_from_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("QCELL_NB_CACHE", str(tmp_path))
    assert hirshfeld.default_cache_dir() == tmp_path / "free_atoms"
    monkeypatch.delenv("QCELL_NB_CACHE")
    assert hirshfeld.default_cache_dir().parts[-3:] == (".cache", "qcell_nb", "free_atoms")


def test_screened_blocks_give_the_dense_partition() -> None:
    # Three waters 4 Å apart: PySCF's screening table drops each far molecule's functions in
    # many blocks, so the screened path really skips work; it must give the dense path's numbers.
    chain = "; ".join(f"O {4.0 * k} 0 0.1173; H {4.0 * k} 0.7572 -0.4692; H {4.0 * k} -0.7572 -0.4692"
                      for k in range(3))
    for spin, charge in ((0, 0), (1, 1)):
        mf = run_ks(chain, basis="6-31g", spin=spin, charge=charge)
        mask = mf.grids.non0tab
        assert not mask.all()
        screened = hirshfeld.hirshfeld_analysis(mf)
        mf.grids.non0tab = None  # PySCF's dense blocks
        dense = hirshfeld.hirshfeld_analysis(mf)
        mf.grids.non0tab = mask
        for key in ("volume_ratios", "charges", "volumes"):
            np.testing.assert_allclose(screened[key], dense[key], rtol=0, atol=1e-10)
        assert screened["n_electrons"] == pytest.approx(dense["n_electrons"], abs=1e-9)
        assert screened["n_electrons"] == pytest.approx(30 - charge, abs=1e-3)
