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
in place of the XC derivative matrix. Meta-GGA functionals and
non-Hermitian density matrices go to PySCF's own functions. Swapped into
PySCF for a ``with`` block by :func:`qcell_nb.calculators.grid_response.fast_grid_response`.
"""

from __future__ import annotations

import numpy as np
from pyscf.dft import gen_grid, numint
from pyscf.grad import rks as rks_grad
from pyscf.grad import uks as uks_grad

#: PySCF's own functions (the fallback), captured before anything swaps them.
PYSCF_RKS_FULL_RESPONSE = rks_grad.get_vxc_full_response
PYSCF_UKS_FULL_RESPONSE = uks_grad.get_vxc_full_response


def density_factors(dm: np.ndarray, mo_coeff: np.ndarray | None = None,
                    mo_occ: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """X (nao, k) and s (k,) with ``dm = X diag(s) X^T``.

    The occupied orbitals and occupations when given (or carried by ``dm``, as
    PySCF tags it), otherwise the eigenvectors of ``dm``.
    """
    if mo_coeff is None:
        mo_coeff, mo_occ = getattr(dm, "mo_coeff", None), getattr(dm, "mo_occ", None)
    if mo_coeff is not None and mo_occ is not None and np.ndim(mo_occ) == 1:
        keep = np.abs(np.asarray(mo_occ)) > 1e-12
        return np.asarray(mo_coeff)[:, keep], np.asarray(mo_occ)[keep]
    eigenvalues, vectors = np.linalg.eigh(np.asarray(dm))
    keep = np.abs(eigenvalues) > 1e-12 * max(1.0, float(np.abs(eigenvalues).max(initial=0.0)))
    return vectors[:, keep], eigenvalues[keep]


def _contracted_rows(ao: np.ndarray, wv: np.ndarray, xctype: str, factors: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """r_x(mu) = sum_nu V_x(mu, nu) D(nu, mu), shape (3, nao), for one atom grid.

    ``ao``: AO values and derivatives on the grid (PySCF layout, deriv 1 for
    LDA, 2 for GGA); ``wv``: weighted XC potential (LDA (g,), GGA (4, g) with
    the density component halved, as PySCF forms it).
    """
    x, s = factors
    xs = x * s
    if xctype == "LDA":
        weighted = numint._scale_ao(ao[0], wv)
        return np.einsum("xgm,gm->xm", ao[1:4], (weighted @ x) @ xs.T)
    weighted = numint._scale_ao(ao[:4], wv[:4])
    rows = np.einsum("xgm,gm->xm", ao[1:4], (weighted @ x) @ xs.T)
    rows += np.einsum("xgm,gm->xm", rks_grad._make_dR_dao_w(ao, wv[:4]), (ao[0] @ x) @ xs.T)
    return rows


def _fold_rows(excsum: np.ndarray, mol, rows: np.ndarray) -> np.ndarray:
    """Add what PySCF's gradient would get from the XC matrix: -2 sum over each atom's AO rows."""
    for atom, (_, _, p0, p1) in enumerate(mol.aoslice_by_atom()):
        excsum[atom] -= 2 * rows[:, p0:p1].sum(axis=1)
    return excsum


#: Points per block of an atom's (spatially sorted) grid in the restricted path; see screened_numint.
BLOCK_POINTS = 8 * gen_grid.BLKSIZE

#: Second-derivative components of PySCF's deriv-2 AO array: d/dx_a d/dx_b phi at _SECOND[a][b].
_SECOND = ((4, 5, 6), (5, 7, 8), (6, 8, 9))


def _screened_blocks(ni, mol, coords, weight, weight1, deriv, cutoff):
    """Blocks of one atom's grid, spatially sorted, with the AO columns PySCF's screening keeps.

    Yields (ao (comp, g, n) C-ordered copy of the significant columns, their AO indices,
    weights (g,), weight derivatives (natm, 3, g)).
    """
    order = gen_grid.arg_group_grids(mol, coords)
    coords, weight, weight1 = coords[order], weight[order], weight1[:, :, order]
    mask = gen_grid.make_mask(mol, coords)
    shell_of_ao = np.repeat(np.arange(mol.nbas), np.diff(mol.ao_loc_nr()))
    for p0 in range(0, len(weight), BLOCK_POINTS):
        p1 = min(p0 + BLOCK_POINTS, len(weight))
        block_mask = mask[p0 // gen_grid.BLKSIZE:(p1 + gen_grid.BLKSIZE - 1) // gen_grid.BLKSIZE]
        significant = np.flatnonzero(block_mask.any(axis=0)[shell_of_ao])
        if significant.size == 0:
            continue
        ao = ni.eval_ao(mol, coords[p0:p1], deriv=deriv, non0tab=block_mask, cutoff=cutoff)
        yield ao[..., significant], significant, weight[p0:p1], weight1[:, :, p0:p1]


def rks_vxc_full_response(ni, mol, grids, xc_code, dms, relativity=0, hermi=1, max_memory=2000, verbose=None):
    """Drop-in for :func:`pyscf.grad.rks.get_vxc_full_response`: (natm, 3) term, zero (3, nao, nao) matrix.

    Works on blocks of :data:`BLOCK_POINTS` spatially sorted points of each
    atom's grid and, in each, on the basis functions PySCF's screening keeps
    (as :mod:`qcell_nb.calculators.screened_numint` does for the SCF).
    """
    xctype = ni._xc_type(xc_code)
    if xctype not in ("LDA", "GGA") or hermi != 1 or np.ndim(dms) != 2:
        return PYSCF_RKS_FULL_RESPONSE(ni, mol, grids, xc_code, dms, relativity, hermi, max_memory, verbose)
    orbitals, occupations = density_factors(dms)
    nao = mol.nao
    excsum = np.zeros((mol.natm, 3))
    rows = np.zeros((3, nao))
    gga = xctype == "GGA"
    for atom, (coords, weight, weight1) in enumerate(rks_grad.grids_response_cc(grids)):
        for ao, significant, w, w1 in _screened_blocks(ni, mol, coords, weight, weight1, 2 if gga else 1,
                                                        grids.cutoff):
            x = orbitals[significant]
            xs = x * occupations
            c0 = ao[0] @ x
            if gga:
                rho = np.empty((4, len(w)))
                rho[0] = np.einsum("gi,gi->g", c0 * occupations, c0)
                for k in range(1, 4):
                    rho[k] = 2 * np.einsum("gi,gi->g", c0 * occupations, ao[k] @ x)
                density = rho[0]
            else:
                rho = density = np.einsum("gi,gi->g", c0 * occupations, c0)
            exc, vxc = ni.eval_xc_eff(xc_code, rho, 1, xctype=xctype)[:2]
            wv = w * vxc
            if gga:
                wv[0] *= 0.5
                weighted = ao[0] * wv[0][:, None]
                for k in range(1, 4):
                    weighted += ao[k] * wv[k][:, None]
            else:
                weighted = ao[0] * wv[0][:, None]
            weighted_dm = (weighted @ x) @ xs.T  # sum_nu w_nu(g) D(nu, mu)
            block_rows = np.stack([np.einsum("gm,gm->m", ao[1 + a], weighted_dm) for a in range(3)])
            if gga:
                values_dm = c0 @ xs.T  # sum_nu phi_nu(g) D(nu, mu)
                for a in range(3):
                    # d/dx_a of (phi wv0 + grad phi . wv[1:4]), PySCF's _make_dR_dao_w
                    moving = ao[1 + a] * wv[0][:, None]
                    moving += ao[_SECOND[a][0]] * wv[1][:, None]
                    moving += ao[_SECOND[a][1]] * wv[2][:, None]
                    moving += ao[_SECOND[a][2]] * wv[3][:, None]
                    block_rows[a] += np.einsum("gm,gm->m", moving, values_dm)
            rows[:, significant] += block_rows
            # weight response, then the grid points moving with their atom
            excsum += np.einsum("r,r,nxr->nx", exc, density, w1)
            excsum[atom] += 2 * block_rows.sum(axis=1)
    return _fold_rows(excsum, mol, rows), np.zeros((3, nao, nao))


def uks_vxc_full_response(ni, mol, grids, xc_code, dms, relativity=0, hermi=1, max_memory=2000, verbose=None):
    """Drop-in for :func:`pyscf.grad.uks.get_vxc_full_response`: (natm, 3) term, zero (2, 3, nao, nao) matrix."""
    xctype = ni._xc_type(xc_code)
    if xctype not in ("LDA", "GGA") or hermi != 1 or np.ndim(dms) != 3:
        return PYSCF_UKS_FULL_RESPONSE(ni, mol, grids, xc_code, dms, relativity, hermi, max_memory, verbose)
    make_rho, _, nao = ni._gen_rho_evaluator(mol, dms, hermi, False, grids)
    mo_coeff, mo_occ = getattr(dms, "mo_coeff", None), getattr(dms, "mo_occ", None)
    tagged = mo_coeff is not None and mo_occ is not None
    factors = [density_factors(np.asarray(dms[spin]), *((mo_coeff[spin], mo_occ[spin]) if tagged else ()))
               for spin in range(2)]
    excsum = np.zeros((mol.natm, 3))
    rows = np.zeros((2, 3, nao))
    for atom, (coords, weight, weight1) in enumerate(rks_grad.grids_response_cc(grids)):
        mask = gen_grid.make_mask(mol, coords)
        ao = ni.eval_ao(mol, coords, deriv=1 if xctype == "LDA" else 2, non0tab=mask, cutoff=grids.cutoff)
        values = ao[0] if xctype == "LDA" else ao[:4]
        rho_a, rho_b = make_rho(0, values, mask, xctype), make_rho(1, values, mask, xctype)
        exc, vxc = ni.eval_xc_eff(xc_code, (rho_a, rho_b), 1, xctype=xctype)[:2]
        wv = weight * (vxc[:, 0] if xctype == "LDA" else vxc)
        if xctype == "GGA":
            wv[:, 0] *= 0.5
        density = rho_a + rho_b if xctype == "LDA" else rho_a[0] + rho_b[0]
        excsum += np.einsum("r,r,nxr->nx", exc, density, weight1)
        for spin in range(2):
            atom_rows = _contracted_rows(ao, wv[spin], xctype, factors[spin])
            rows[spin] += atom_rows
            excsum[atom] += 2 * atom_rows.sum(axis=1)
    return _fold_rows(excsum, mol, rows.sum(axis=0)), np.zeros((2, 3, nao, nao))

