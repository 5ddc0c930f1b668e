"""XC part of DFT nuclear gradients with grid response, contracted with the density as it is formed.

PySCF's :func:`pyscf.grad.rks.get_vxc_full_response` (and the UKS one) builds,
for every atom's grid, the full (3, nao, nao) derivative matrix
sum_g d/dx phi_mu(g) w_nu(g) + ... and returns the sum over atoms; the
gradient code then contracts that matrix with the density, one atom's rows at
a time. The matrix itself is never needed: only the row contractions
r_x(mu) = sum_nu V_x(mu, nu) D(nu, mu) are. With D = X diag(s) X^T (the
occupied orbitals, k of them), r_x(mu) = sum_g d/dx phi_mu(g) (w X s X^T)_mu(g)
+ ..., which costs O(g nao k) per atom grid instead of the matrix's
O(g nao^2): at def2-SVP k/nao is about 0.2.

:func:`rks_vxc_full_response` and :func:`uks_vxc_full_response` keep PySCF's
signatures and return the same gradient, with everything in the per-atom
``excsum`` term (which the gradient adds as ``exc1_grid``) and a zero matrix
in place of the XC derivative matrix. Each atom's grid is sorted into boxes
and taken in the screened blocks of
:func:`qcell_nb.calculators.screened_numint.screened_blocks`, on the basis
functions PySCF's screening keeps for each block, as the SCF's XC
integration does. Meta-GGA functionals and
non-Hermitian density matrices go to PySCF's own functions. Swapped into
PySCF for a ``with`` block by :func:`qcell_nb.calculators.grid_response.fast_grid_response`.
"""

from __future__ import annotations

import numpy as np
from pyscf.dft import gen_grid
from pyscf.grad import rks as rks_grad
from pyscf.grad import uks as uks_grad

from qcell_nb.calculators.grid_boxes import box_order
from qcell_nb.calculators.screened_numint import (density_factors, density_on_block, screened_blocks,
                                                  weighted_ao)
from qcell_nb.calculators.threads import single_threaded_blas

#: PySCF's own functions (the fallback), captured before anything swaps them.
PYSCF_RKS_FULL_RESPONSE = rks_grad.get_vxc_full_response
PYSCF_UKS_FULL_RESPONSE = uks_grad.get_vxc_full_response

#: Second-derivative components of PySCF's deriv-2 AO array: d/dx_a d/dx_b phi at _SECOND[a][b].
_SECOND = ((4, 5, 6), (5, 7, 8), (6, 8, 9))


def _sorted_atom_grids(grids):
    """Per atom: (atom, coords, weights, weight derivatives, screening table), points sorted into boxes."""
    mol = grids.mol
    for atom, (coords, weight, weight1) in enumerate(rks_grad.grids_response_cc(grids)):
        order = box_order(mol, coords)
        coords = coords[order]
        yield atom, coords, weight[order], weight1[:, :, order], gen_grid.make_mask(mol, coords)


def _block_rows(ao: np.ndarray, wv: np.ndarray, xctype: str, times_dm, values_dm: np.ndarray) -> np.ndarray:
    """r_x(mu) = sum_nu V_x(mu, nu) D(nu, mu), shape (3, n), for one block's functions.

    ``ao``: the block's AO values and derivatives (deriv 1 for LDA, 2 for GGA);
    ``wv``: weighted XC potential (LDA (1, g), GGA (4, g) with the density
    component halved, as PySCF forms it); ``times_dm``: M -> M D for the
    block's functions; ``values_dm``: phi D (GGA only).
    """
    weighted_dm = times_dm(weighted_ao(ao, wv, xctype))  # sum_nu w_nu(g) D(nu, mu)
    rows = np.stack([np.einsum("gm,gm->m", ao[1 + a], weighted_dm) for a in range(3)])
    if xctype == "GGA":
        # d/dx_a of (phi wv0 + grad phi . wv[1:4]) (PySCF's _make_dR_dao_w) contracted with
        # values_dm: sum_g of wv_b(g) d_c phi(g) values_dm(g) for every derivative c, as one
        # batched product (half the time of forming the three d/dx_a terms at ~100 functions).
        weighted = np.matmul(wv[:4], ao[1:] * values_dm)  # (9, 4, n): [c - 1, b]
        for a in range(3):
            rows[a] += weighted[a, 0] + sum(weighted[_SECOND[a][b] - 1, 1 + b] for b in range(3))
    return rows


def _fold_rows(excsum: np.ndarray, mol, rows: np.ndarray) -> np.ndarray:
    """Add what PySCF's gradient would get from the XC matrix: -2 sum over each atom's AO rows."""
    for atom, (_, _, p0, p1) in enumerate(mol.aoslice_by_atom()):
        excsum[atom] -= 2 * rows[:, p0:p1].sum(axis=1)
    return excsum


def rks_vxc_full_response(ni, mol, grids, xc_code, dms, relativity=0, hermi=1, max_memory=2000, verbose=None):
    """Drop-in for :func:`pyscf.grad.rks.get_vxc_full_response`: (natm, 3) term, zero (3, nao, nao) matrix."""
    xctype = ni._xc_type(xc_code)
    if xctype not in ("LDA", "GGA") or hermi != 1 or np.ndim(dms) != 2:
        return PYSCF_RKS_FULL_RESPONSE(ni, mol, grids, xc_code, dms, relativity, hermi, max_memory, verbose)
    with single_threaded_blas():  # small products between OpenMP calls: see threads.py
        return _rks_full_response(ni, mol, grids, xc_code, xctype, dms)


def _rks_full_response(ni, mol, grids, xc_code, xctype, dms):
    """The screened RKS term of :func:`rks_vxc_full_response` for an LDA/GGA ``xctype``."""
    orbitals, occupations = density_factors(dms)
    dm = np.asarray(dms)
    excsum = np.zeros((mol.natm, 3))
    rows = np.zeros((3, mol.nao))
    deriv = 1 if xctype == "LDA" else 2
    for atom, coords, weight, weight1, mask in _sorted_atom_grids(grids):
        for p0, p1, ao, significant in screened_blocks(ni, mol, coords, mask, deriv, grids.cutoff):
            rho, values_dm, times_dm = density_on_block(ao, xctype, dm, orbitals, occupations, significant,
                                                        with_products=True)
            exc, vxc = ni.eval_xc_eff(xc_code, rho, 1, xctype=xctype)[:2]
            wv = weight[p0:p1] * vxc
            if xctype == "GGA":
                wv[0] *= 0.5
            block_rows = _block_rows(ao, wv, xctype, times_dm, values_dm)
            rows[:, significant] += block_rows
            # weight response, then the grid points moving with their atom
            density = rho if xctype == "LDA" else rho[0]
            excsum += np.einsum("r,r,nxr->nx", exc, density, weight1[:, :, p0:p1])
            excsum[atom] += 2 * block_rows.sum(axis=1)
    return _fold_rows(excsum, mol, rows), np.zeros((3, mol.nao, mol.nao))


def uks_vxc_full_response(ni, mol, grids, xc_code, dms, relativity=0, hermi=1, max_memory=2000, verbose=None):
    """Drop-in for :func:`pyscf.grad.uks.get_vxc_full_response`: (natm, 3) term, zero (2, 3, nao, nao) matrix."""
    xctype = ni._xc_type(xc_code)
    if xctype not in ("LDA", "GGA") or hermi != 1 or np.ndim(dms) != 3:
        return PYSCF_UKS_FULL_RESPONSE(ni, mol, grids, xc_code, dms, relativity, hermi, max_memory, verbose)
    with single_threaded_blas():  # small products between OpenMP calls: see threads.py
        return _uks_full_response(ni, mol, grids, xc_code, xctype, dms)


def _uks_full_response(ni, mol, grids, xc_code, xctype, dms):
    """The screened UKS term of :func:`uks_vxc_full_response` for an LDA/GGA ``xctype``."""
    mo_coeff, mo_occ = getattr(dms, "mo_coeff", None), getattr(dms, "mo_occ", None)
    tagged = mo_coeff is not None and mo_occ is not None
    spin_dms = [np.asarray(dms[spin]) for spin in range(2)]
    factors = [density_factors(spin_dms[spin], *((mo_coeff[spin], mo_occ[spin]) if tagged else ()))
               for spin in range(2)]
    excsum = np.zeros((mol.natm, 3))
    rows = np.zeros((3, mol.nao))
    deriv = 1 if xctype == "LDA" else 2
    for atom, coords, weight, weight1, mask in _sorted_atom_grids(grids):
        for p0, p1, ao, significant in screened_blocks(ni, mol, coords, mask, deriv, grids.cutoff):
            spins = [density_on_block(ao, xctype, d, x, s, significant, with_products=True)
                     for d, (x, s) in zip(spin_dms, factors)]
            rho_a, rho_b = spins[0][0], spins[1][0]
            exc, vxc = ni.eval_xc_eff(xc_code, (rho_a, rho_b), 1, xctype=xctype)[:2]
            wv = weight[p0:p1] * vxc
            if xctype == "GGA":
                wv[:, 0] *= 0.5
            density = rho_a + rho_b if xctype == "LDA" else rho_a[0] + rho_b[0]
            excsum += np.einsum("r,r,nxr->nx", exc, density, weight1[:, :, p0:p1])
            for spin, (_, values_dm, times_dm) in enumerate(spins):
                block_rows = _block_rows(ao, wv[spin], xctype, times_dm, values_dm)
                rows[:, significant] += block_rows
                excsum[atom] += 2 * block_rows.sum(axis=1)
    return _fold_rows(excsum, mol, rows), np.zeros((2, 3, mol.nao, mol.nao))
