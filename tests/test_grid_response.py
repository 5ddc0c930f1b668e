"""Becke weight derivatives for grid-response gradients, against PySCF's own generator."""

from __future__ import annotations

import numpy as np
import pytest
from pyscf import dft, gto
from pyscf.grad import rks as rks_grad

from qcell_nb.calculators import grid_response
from qcell_nb.calculators.grid_response import becke_weight_response, fast_grid_response, supported

METHANOL = """C 0.0 0.0 0.66; O 0.05 0.0 -0.76; H -1.09 0.03 1.0; H 0.5 0.89 1.05;
H 0.52 -0.88 1.02; H -0.87 0.07 -1.17"""


def grids_of(atom: str, level: int = 2, **attributes) -> dft.gen_grid.Grids:
    grids = dft.gen_grid.Grids(gto.M(atom=atom, basis="sto-3g"))
    grids.level = level
    for key, value in attributes.items():
        setattr(grids, key, value)
    return grids


@pytest.mark.parametrize("radii_adjust", ["treutler", "becke", None])
def test_weights_and_derivatives_match_pyscf(radii_adjust) -> None:
    adjust = {"treutler": dft.radi.treutler_atomic_radii_adjust,
              "becke": dft.radi.becke_atomic_radii_adjust, None: None}[radii_adjust]
    grids = grids_of(METHANOL, radii_adjust=adjust)
    for (c_ref, w_ref, dw_ref), (c, w, dw) in zip(rks_grad.grids_response_cc(grids), becke_weight_response(grids)):
        # ours leaves out points the atom holds less than 1e-14 of: match the rest point by point
        held = np.isin(c_ref.view("f8,f8,f8"), c.view("f8,f8,f8")).ravel()
        assert held.sum() == len(c) and held.mean() > 0.8
        np.testing.assert_array_equal(c_ref[held], c)
        np.testing.assert_allclose(w, w_ref[held], rtol=0, atol=1e-13)
        np.testing.assert_allclose(dw, dw_ref[:, :, held], rtol=0, atol=1e-10 * np.abs(dw_ref).max())
        assert np.abs(w_ref[~held]).max(initial=0) < 1e-10
        # weights move with the molecule, not with a rigid translation of it
        np.testing.assert_allclose(dw.sum(axis=0), 0.0, atol=1e-9 * np.abs(dw).max())


@pytest.mark.parametrize("spin", [0, 1])
def test_dft_gradient_with_grid_response_equals_pyscf(spin: int) -> None:
    # The whole gradient (Ha/bohr) with our generator swapped in, RKS water and UKS OH.
    atom = "O 0 0 0.12; H 0.05 0.76 -0.47; H 0 -0.76 -0.49" if spin == 0 else "O 0 0 0; H 0.1 0 0.97"
    mol = gto.M(atom=atom, basis="6-31g", spin=spin)
    mf = (dft.RKS(mol) if spin == 0 else dft.UKS(mol)).density_fit()
    mf.xc, mf.grids.level, mf.conv_tol = "pbe0", 2, 1e-11
    mf.kernel()
    grad = mf.nuc_grad_method()
    grad.grid_response, grad.verbose = True, 0
    reference = grad.kernel()
    with fast_grid_response(mf.grids):
        ours = grad.kernel()
    assert rks_grad.grids_response_cc is not becke_weight_response  # restored after the block
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-10)
    grad.grid_response = False
    assert np.abs(grad.kernel() - reference).max() > 1e-6  # the grid-response term is really there


def test_unsupported_grids_keep_pyscf_generator() -> None:
    grids = grids_of(METHANOL, becke_scheme=dft.gen_grid.stratmann)
    assert not supported(grids)
    with pytest.raises(ValueError, match="becke_scheme=stratmann"):
        next(becke_weight_response(grids))
    with fast_grid_response(grids):
        assert rks_grad.grids_response_cc is not becke_weight_response
    assert supported(grids_of(METHANOL))


def test_generator_restored_when_the_gradient_fails() -> None:
    original = rks_grad.grids_response_cc
    with pytest.raises(RuntimeError), fast_grid_response(grids_of(METHANOL)):
        assert rks_grad.grids_response_cc is grid_response.becke_weight_response
        raise RuntimeError("gradient failed")
    assert rks_grad.grids_response_cc is original
