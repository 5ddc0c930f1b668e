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
@pytest.mark.parametrize("through_dm", [True, False])
def test_energy_and_potential_equal_pyscf(chain, xc: str, tagged: bool, through_dm: bool, monkeypatch) -> None:
    monkeypatch.setattr(screened_numint, "dm_route_is_cheaper", lambda *a: through_dm)
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


def _counting_eval_ao(monkeypatch) -> list[int]:
    """Count the AO evaluations ScreenedNumInt makes (one per block evaluated)."""
    calls: list[int] = []
    original = ScreenedNumInt.eval_ao  # a staticmethod in PySCF

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(ScreenedNumInt, "eval_ao", staticmethod(counted))
    return calls


def test_a_second_call_on_the_same_grid_evaluates_no_ao_and_agrees(chain, monkeypatch) -> None:
    calls = _counting_eval_ao(monkeypatch)
    dm = chain.make_rdm1()
    n_ref, e_ref, v_ref = dft.numint.NumInt().nr_rks(chain.mol, chain.grids, "pbe0", dm)
    ni = ScreenedNumInt()
    first = ni.nr_rks(chain.mol, chain.grids, "pbe0", dm, max_memory=4000)
    n_blocks = len(calls)
    assert n_blocks > 1 and len(ni._kept.blocks) == n_blocks
    # A different density (the SCF's next cycle) on the same grid: the kept values serve it.
    second = ni.nr_rks(chain.mol, chain.grids, "pbe0", 0.9 * dm, max_memory=4000)
    third = ni.nr_rks(chain.mol, chain.grids, "pbe0", dm, max_memory=4000)
    assert len(calls) == n_blocks
    assert abs(second[1] - first[1]) > 1e-3  # the density did change the result
    for n, e, v in (first, third):
        assert abs(n - n_ref) < 1e-10 and abs(e - e_ref) < 1e-11
        np.testing.assert_allclose(v, v_ref, rtol=0, atol=1e-11)


def test_blocks_past_the_budget_are_evaluated_each_time(chain, monkeypatch) -> None:
    calls = _counting_eval_ao(monkeypatch)
    dm = chain.make_rdm1()
    _, e_ref, v_ref = dft.numint.NumInt().nr_rks(chain.mol, chain.grids, "pbe", dm)
    ni = ScreenedNumInt()
    ni.nr_rks(chain.mol, chain.grids, "pbe", dm, max_memory=0)
    n_blocks = len(calls)
    assert ni._kept.blocks == []
    # A budget for about a third of the values: those are kept, the rest evaluated again.
    ni.release_ao_cache()
    sizes = [block[2].nbytes for block in screened_numint.screened_blocks(
        ni, chain.mol, chain.grids.coords, chain.grids.non0tab, 1, chain.grids.cutoff)]
    budget_mb = sum(sizes) / 3 / screened_numint.AO_CACHE_FRACTION / 1e6
    calls.clear()
    ni.nr_rks(chain.mol, chain.grids, "pbe", dm, max_memory=budget_mb)
    kept = len(ni._kept.blocks)
    assert 0 < kept < n_blocks and ni._kept.nbytes <= sum(sizes) / 3
    calls.clear()
    _, e, v = ni.nr_rks(chain.mol, chain.grids, "pbe", dm, max_memory=budget_mb)
    assert len(calls) == n_blocks - kept
    assert abs(e - e_ref) < 1e-11
    np.testing.assert_allclose(v, v_ref, rtol=0, atol=1e-11)


def test_a_moved_molecule_or_a_rebuilt_grid_drops_the_kept_values(chain, monkeypatch) -> None:
    calls = _counting_eval_ao(monkeypatch)
    dm = chain.make_rdm1()
    ni = ScreenedNumInt()
    ni.nr_rks(chain.mol, chain.grids, "pbe", dm, max_memory=4000)
    n_blocks = len(calls)
    moved = chain.mol.copy()
    coords = moved.atom_coords()
    coords[0, 0] += 0.05
    moved.set_geom_(coords, unit="Bohr")
    calls.clear()
    _, e, v = ni.nr_rks(moved, chain.grids, "pbe", dm, max_memory=4000)
    assert len(calls) == n_blocks  # everything evaluated again, at the new geometry
    _, e_ref, v_ref = dft.numint.NumInt().nr_rks(moved, chain.grids, "pbe", dm)
    assert abs(e - e_ref) < 1e-11
    np.testing.assert_allclose(v, v_ref, rtol=0, atol=1e-11)

    grids = dft.gen_grid.Grids(chain.mol)
    grids.level = chain.grids.level
    grids.build(with_non0tab=True)  # as the SCF builds it
    calls.clear()
    ni.nr_rks(chain.mol, grids, "pbe", dm, max_memory=4000)
    assert len(calls) > 0 and ni._kept.coords is grids.coords


def test_the_scf_frees_the_kept_values_when_it_is_done(chain) -> None:
    from qcell_nb.calculators.scf import run_scf

    mol = gto.M(atom="O 0 0 0.12; H 0 0.76 -0.47; H 0 -0.76 -0.49", basis="sto-3g", verbose=0)
    params = {"xc": "pbe0", "grid_level": 2, "conv_tol": 1e-9, "conv_tol_grad": None, "max_cycle": 50,
              "verbose": 0, "auxbasis": "def2-universal-jkfit", "pre_grid_level": 0}
    mf, cycles = run_scf(mol, params)
    assert mf.converged and cycles > 2
    assert mf._numint._kept is None
