"""Density-contracted XC gradient with grid response, against PySCF's matrix-building one."""

from __future__ import annotations

import numpy as np
import pytest
from pyscf import dft, gto
from pyscf.grad import rks as rks_grad
from pyscf.grad import uks as uks_grad

from qcell_nb.calculators import screened_numint, xc_gradient
from qcell_nb.calculators.screened_numint import density_factors, screened_blocks

WATER = "O 0 0 0.12; H 0.05 0.76 -0.47; H 0 -0.76 -0.49"
OH = "O 0 0 0; H 0.1 0 0.97"


def converged(atom: str, spin: int, xc: str):
    mol = gto.M(atom=atom, basis="6-31g", spin=spin, verbose=0)
    mf = (dft.RKS(mol) if spin == 0 else dft.UKS(mol)).density_fit()
    mf.xc, mf.grids.level, mf.conv_tol = xc, 2, 1e-11
    mf.kernel()
    return mf


def gradient(mf, ours: bool) -> np.ndarray:
    grad = mf.nuc_grad_method()
    grad.grid_response, grad.verbose = True, 0
    module, replacement = ((rks_grad, xc_gradient.rks_vxc_full_response) if mf.mol.spin == 0
                           else (uks_grad, xc_gradient.uks_vxc_full_response))
    original = module.get_vxc_full_response
    module.get_vxc_full_response = replacement if ours else original
    try:
        return grad.kernel()
    finally:
        module.get_vxc_full_response = original


@pytest.mark.parametrize("atom, spin", [(WATER, 0), (OH, 1)])
@pytest.mark.parametrize("xc", ["pbe0", "lda,vwn", "pbe"])
@pytest.mark.parametrize("through_dm", [True, False])
def test_gradient_equals_pyscf(atom: str, spin: int, xc: str, through_dm: bool, monkeypatch) -> None:
    # Each block's density and D products through D or through the orbitals: both must agree.
    monkeypatch.setattr(screened_numint, "dm_route_is_cheaper", lambda *a: through_dm)
    mf = converged(atom, spin, xc)
    reference = gradient(mf, ours=False)
    np.testing.assert_allclose(gradient(mf, ours=True), reference, rtol=0, atol=1e-10)
    assert np.abs(reference).max() > 1e-3  # a displaced structure: the test compares real forces


def test_plain_density_matrix_gives_the_same_term() -> None:
    # Without PySCF's orbital tags the factors come from the eigenvectors of D.
    mf = converged(WATER, 0, "pbe0")
    tagged = mf.make_rdm1()
    plain = np.array(tagged)
    assert getattr(plain, "mo_coeff", None) is None
    args = (mf._numint, mf.mol, mf.grids, mf.xc)
    np.testing.assert_allclose(xc_gradient.rks_vxc_full_response(*args, plain)[0],
                               xc_gradient.rks_vxc_full_response(*args, tagged)[0], rtol=0, atol=1e-11)
    x, s = density_factors(plain)
    np.testing.assert_allclose((x * s) @ x.T, plain, atol=1e-12)


def test_meta_gga_goes_to_pyscf() -> None:
    mf = converged(WATER, 0, "pbe0")
    dm = mf.make_rdm1()
    _, matrix = xc_gradient.rks_vxc_full_response(mf._numint, mf.mol, mf.grids, "tpss", dm)
    assert np.abs(matrix).max() > 0  # PySCF's own function, which returns the XC matrix


def test_screened_blocks_equal_pyscf_on_a_chain() -> None:
    # Three waters 5 Å apart: blocks at one end leave the other end's functions out.
    atom = "; ".join(f"O {5.0 * i} 0 0.12; H {5.0 * i + 0.05} 0.76 -0.47; H {5.0 * i} -0.76 -0.49" for i in range(3))
    mol = gto.M(atom=atom, basis="6-31g", verbose=0)
    mf = dft.RKS(mol).density_fit()
    mf.xc, mf.grids.level, mf.max_cycle = "pbe0", 2, 6
    mf.kernel()
    _, coords, _, _, mask = next(xc_gradient._sorted_atom_grids(mf.grids))
    skipped = [len(significant) < mol.nao for _, _, _, significant in
               screened_blocks(mf._numint, mol, coords, mask, 2, mf.grids.cutoff)]
    assert any(skipped)
    np.testing.assert_allclose(gradient(mf, ours=True), gradient(mf, ours=False), rtol=0, atol=1e-10)
