"""Kohn-Sham XC integration that skips the basis functions a block of grid points does not see.

PySCF's :func:`pyscf.dft.numint.nr_rks` evaluates the XC potential in blocks
of up to 67,200 grid points and, at these molecule sizes, with dense matrix
products over all nao basis functions (its sparse kernels, which skip
negligible shells, run slower than BLAS: measured 9.1 against 6.7 CPU-s per
call at Gly5). A block that large spans most of a 40-atom fragment, so almost
every function matters somewhere in it. In blocks of :data:`BLOCK_POINTS` (448)
spatially sorted points (PySCF sorts its grids into boxes) a function
matters only near its atom: at Gly5/def2-SVP on grid level 3 the block sees
~55% of the 379 functions, at Gly7 ~42% of 521 (PySCF's own screening
table, ``grids.non0tab``, cut-off 1e-15 on the AO values; Gly1: 88%).

:class:`ScreenedNumInt` gathers the significant columns of each block and
does the density (from the occupied orbitals) and the potential matrix with
BLAS on those only, so the work of a block scales with the square of the
functions it sees. The functions it leaves out are those PySCF's AO
evaluation already sets to zero for the block, so the result is PySCF's to
round-off (1e-12 Ha in the energy, tested). Restricted LDA and GGA
functionals; anything else (meta-GGA, UKS, several density matrices,
non-Hermitian ones, grids without a screening table) goes to PySCF's code.
"""

from __future__ import annotations

import numpy as np
from pyscf.dft import gen_grid, numint

from qcell_nb.calculators.xc_gradient import density_factors

#: Grid points per block: a multiple of PySCF's screening sub-block (56 points). Smaller blocks
#: see fewer functions but cost more Python overhead. Measured per level-3 PBE0 call, one core
#: (PySCF's nr_rks: Gly1 0.27 s, Gly5 6.5-8.2 s): 224 points 0.23 / 3.2 s, 448 points
#: 0.19-0.20 / 3.3-4.0 s, 1,792 points 0.20-0.23 / 3.8 s, 3,584 points 0.22 / 4.3 s.
BLOCK_POINTS = 8 * gen_grid.BLKSIZE


class ScreenedNumInt(numint.NumInt):
    """NumInt whose restricted LDA/GGA ``nr_rks`` works block by block on the significant functions only."""

    def nr_rks(self, mol, grids, xc_code, dms, relativity=0, hermi=1, max_memory=2000, verbose=None):
        xctype = self._xc_type(xc_code)
        if (xctype not in ("LDA", "GGA") or hermi != 1 or np.ndim(dms) != 2
                or getattr(grids, "non0tab", None) is None or grids.coords is None):
            return super().nr_rks(mol, grids, xc_code, dms, relativity, hermi, max_memory, verbose)
        return _screened_rks(self, mol, grids, xc_code, xctype, dms)


def _screened_rks(ni, mol, grids, xc_code, xctype, dm):
    """(electrons, XC energy in Ha, XC potential matrix (nao, nao)) like PySCF's ``nr_rks``."""
    orbitals, occupations = density_factors(dm)
    nao = mol.nao
    ao_loc = mol.ao_loc_nr()
    shell_of_ao = np.repeat(np.arange(mol.nbas), np.diff(ao_loc))
    deriv = 0 if xctype == "LDA" else 1
    n_points = grids.weights.size
    nelec = excsum = 0.0
    vmat = np.zeros((nao, nao))
    for p0 in range(0, n_points, BLOCK_POINTS):
        p1 = min(p0 + BLOCK_POINTS, n_points)
        mask = grids.non0tab[p0 // gen_grid.BLKSIZE:(p1 + gen_grid.BLKSIZE - 1) // gen_grid.BLKSIZE]
        significant = np.flatnonzero(mask.any(axis=0)[shell_of_ao])
        if significant.size == 0:
            continue
        weight = grids.weights[p0:p1]
        ao = ni.eval_ao(mol, grids.coords[p0:p1], deriv=deriv, non0tab=mask, cutoff=grids.cutoff)
        ao = ao[..., significant]  # (comp, g, n) or (g, n): a copy with the significant columns only
        values = ao if deriv == 0 else ao[0]
        c0 = values @ orbitals[significant]
        c0_occ = c0 * occupations
        if xctype == "LDA":
            rho = np.einsum("gi,gi->g", c0_occ, c0)
            density = rho
        else:
            rho = np.empty((4, p1 - p0))
            rho[0] = np.einsum("gi,gi->g", c0_occ, c0)
            for k in range(1, 4):
                rho[k] = 2 * np.einsum("gi,gi->g", c0_occ, ao[k] @ orbitals[significant])
            density = rho[0]
        exc, vxc = ni.eval_xc_eff(xc_code, rho, deriv=1, xctype=xctype, spin=0)[:2]
        weighted_density = density * weight
        nelec += weighted_density.sum()
        excsum += weighted_density @ exc
        wv = weight * vxc
        if xctype == "LDA":
            weighted = values * (0.5 * wv[0])[:, None]
        else:
            wv[0] *= 0.5  # the potential is symmetrised below
            weighted = ao[0] * wv[0][:, None]
            for k in range(1, 4):
                weighted += ao[k] * wv[k][:, None]
        vmat[np.ix_(significant, significant)] += values.T @ weighted
    vmat = vmat + vmat.T
    return nelec, excsum, vmat
