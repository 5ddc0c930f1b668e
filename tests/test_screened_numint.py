"""Screened XC integration against PySCF's nr_rks."""

from __future__ import annotations

import numpy as np
import pytest
from pyscf import dft, gto

from qcell_nb.calculators import screened_numint
from qcell_nb.calculators.screened_numint import ScreenedNumInt

# Three waters 5 Å apart in a row: the blocks near one end do not see the other end's functions.
WATER_CHAIN = "; ".join(f"O {5.0 * i} 0 0.12; H {5.0 * i + 0.05} 0.76 -0.47; H {5.0 * i} -0.76 -0.49"
                        for i in range(3))


@pytest.fixture(scope="module")
def chain():
    mol = gto.M(atom=WATER_CHAIN, basis="6-31g", verbose=0)
    mf = dft.RKS(mol)
    mf.xc, mf.grids.level, mf.max_cycle = "pbe0", 2, 4
    mf.kernel()
    return mf


def test_the_chain_really_screens(chain) -> None:
    mol, grids = chain.mol, chain.grids
    shell_of_ao = np.repeat(np.arange(mol.nbas), np.diff(mol.ao_loc_nr()))
    seen = [grids.non0tab[b:b + 8].any(axis=0)[shell_of_ao].mean() for b in range(0, len(grids.non0tab), 8)]
    assert min(seen) < 0.8


@pytest.mark.parametrize("xc", ["pbe0", "pbe", "lda,vwn"])
@pytest.mark.parametrize("tagged", [True, False])
def test_energy_and_potential_equal_pyscf(chain, xc: str, tagged: bool) -> None:
    dm = chain.make_rdm1()
    if not tagged:  # an initial guess carries no orbitals: factors from the eigenvectors
        dm = np.array(dm)
    n_ref, e_ref, v_ref = dft.numint.NumInt().nr_rks(chain.mol, chain.grids, xc, dm)
    n, e, v = ScreenedNumInt().nr_rks(chain.mol, chain.grids, xc, dm)
    assert abs(n - 30) < 1e-3 and abs(n - n_ref) < 1e-10
    assert abs(e - e_ref) < 1e-11
    np.testing.assert_allclose(v, v_ref, rtol=0, atol=1e-11)
    np.testing.assert_allclose(v, v.T, atol=1e-14)


def test_other_cases_go_to_pyscf(chain, monkeypatch) -> None:
    called = []
    monkeypatch.setattr(screened_numint, "_screened_rks", lambda *a: called.append(1))
    dm = chain.make_rdm1()
    ScreenedNumInt().nr_rks(chain.mol, chain.grids, "tpss", dm)  # meta-GGA
    ScreenedNumInt().nr_rks(chain.mol, chain.grids, "pbe", np.stack([dm, dm]))  # several densities
    assert not called
    ScreenedNumInt().nr_rks(chain.mol, chain.grids, "pbe", dm)
    assert called


def test_scf_with_screened_integration_reaches_pyscf_energy(chain) -> None:
    mf = dft.RKS(chain.mol)
    mf._numint = ScreenedNumInt()
    mf.xc, mf.grids.level, mf.max_cycle = "pbe0", 2, 4
    mf.kernel()
    assert abs(mf.e_tot - chain.e_tot) < 1e-9
