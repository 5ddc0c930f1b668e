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

The AO values on a grid depend on the molecule and the grid only, not on the
density, yet PySCF evaluates them again in every SCF cycle (at Gly1 on this
EPYC, libcgto's ``eval_gto`` was a fifth of a whole label). The blocks are
therefore kept between cycles, up to :data:`AO_CACHE_FRACTION` of the memory
the SCF has left; the blocks past that budget are evaluated each time as
before. The kept values are the ones a fresh evaluation gives, so the result
is unchanged (tested to 1e-12 Ha). :func:`release_ao_cache` frees them once an
SCF stage is done.
"""

from __future__ import annotations

import numpy as np
from pyscf.dft import gen_grid, numint

from qcell_nb.calculators.threads import single_threaded_blas

#: Grid points per block: a multiple of PySCF's screening sub-block (56 points). Smaller blocks
#: see fewer functions but cost more Python overhead. Measured per level-3 PBE0 call, one core
#: (PySCF's nr_rks: Gly1 0.27 s, Gly5 6.5-8.2 s): 224 points 0.23 / 3.2 s, 448 points
#: 0.19-0.20 / 3.3-4.0 s, 1,792 points 0.20-0.23 / 3.8 s, 3,584 points 0.22 / 4.3 s.
BLOCK_POINTS = 8 * gen_grid.BLKSIZE


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


#: Fraction of the SCF's remaining memory budget (PySCF's ``max_memory`` less what the process
#: already holds) that the AO values kept between SCF cycles may take.
AO_CACHE_FRACTION = 0.5


def screened_blocks(ni, mol, coords: np.ndarray, mask: np.ndarray, deriv: int, cutoff: float,
                    start: int = 0):
    """Blocks of :data:`BLOCK_POINTS` points with the AO columns ``mask`` keeps for them.

    ``mask``: PySCF's screening table for ``coords`` (one row per 56 points,
    one column per shell). Yields ``(p0, p1, ao, significant)``: the block's
    point range, its AO values and derivatives restricted to the significant
    functions ((comp, g, n) or (g, n) for ``deriv=0``, a C-ordered copy), and
    their AO indices. ``start``: the first point (a multiple of :data:`BLOCK_POINTS`, or the end).
    """
    if start % BLOCK_POINTS and start < len(coords):
        raise ValueError(f"start={start} is not a multiple of BLOCK_POINTS={BLOCK_POINTS}")
    shell_of_ao = np.repeat(np.arange(mol.nbas), np.diff(mol.ao_loc_nr()))
    for p0 in range(start, len(coords), BLOCK_POINTS):
        p1 = min(p0 + BLOCK_POINTS, len(coords))
        block_mask = mask[p0 // gen_grid.BLKSIZE:(p1 + gen_grid.BLKSIZE - 1) // gen_grid.BLKSIZE]
        significant = np.flatnonzero(block_mask.any(axis=0)[shell_of_ao])
        if significant.size == 0:
            continue
        ao = ni.eval_ao(mol, coords[p0:p1], deriv=deriv, non0tab=block_mask, cutoff=cutoff)
        yield p0, p1, ao[..., significant], significant


def block_density(ao: np.ndarray, xctype: str, orbitals: np.ndarray,
                  occupations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Density of a block (LDA (g,), GGA (4, g): value and gradient) and phi X (g, k).

    ``orbitals``: the rows of X for the block's functions (see :func:`density_factors`).
    """
    values = ao if ao.ndim == 2 else ao[0]
    c0 = values @ orbitals
    c0_occ = c0 * occupations
    if xctype == "LDA":
        return np.einsum("gi,gi->g", c0_occ, c0), c0
    rho = np.empty((4, len(c0)))
    rho[0] = np.einsum("gi,gi->g", c0_occ, c0)
    for k in range(1, 4):
        rho[k] = 2 * np.einsum("gi,gi->g", c0_occ, ao[k] @ orbitals)
    return rho, c0


def block_density_from_dm(ao: np.ndarray, xctype: str, dm_block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Density of a block (as :func:`block_density`) and phi D (g, n), from the block's rows and
    columns of the (symmetric) density matrix: one (g, n) x (n, n) product instead of one or four
    (g, n) x (n, k) ones, the cheaper way where the block sees fewer than k (LDA) or ~4k (GGA)
    functions (see :func:`dm_route_is_cheaper`)."""
    values = ao if ao.ndim == 2 else ao[0]
    values_dm = values @ dm_block
    if xctype == "LDA":
        return np.einsum("gi,gi->g", values_dm, values), values_dm
    rho = np.empty((4, len(values)))
    rho[0] = np.einsum("gi,gi->g", values_dm, values)
    rho[1:] = np.einsum("gi,kgi->kg", values_dm, ao[1:4])
    rho[1:] *= 2
    return rho, values_dm


def dm_route_is_cheaper(n_functions: int, n_orbitals: int, xctype: str) -> bool:
    """Whether a block's density costs fewer flops from D (g n^2) than from the orbitals
    (g n k for LDA, 4 g n k for GGA). The orbitals are the delocalised occupied ones, so k grows
    with the molecule while n, the functions one block sees, levels off (def2-SVP: ~200-300)."""
    return n_functions < (4 if xctype == "GGA" else 1) * n_orbitals


def density_on_block(ao: np.ndarray, xctype: str, dm: np.ndarray, orbitals: np.ndarray,
                     occupations: np.ndarray, significant: np.ndarray, with_products: bool = False):
    """A block's density, through D or through the orbitals, whichever costs fewer flops.

    ``dm`` (nao, nao) and its factors ``orbitals`` (nao, k), ``occupations`` (k,) (see
    :func:`density_factors`); ``significant``: the block's functions (n,). Returns rho (as
    :func:`block_density`); with ``with_products`` (the gradient's need, not the SCF's) also
    phi D (g, n) (GGA only, else None) and a function M (g, n) -> M D (g, n).
    """
    if dm_route_is_cheaper(len(significant), len(occupations), xctype):
        dm_block = dm[np.ix_(significant, significant)]
        rho, values_dm = block_density_from_dm(ao, xctype, dm_block)
        return (rho, values_dm, lambda m: m @ dm_block) if with_products else rho
    x = orbitals[significant]
    rho, c0 = block_density(ao, xctype, x, occupations)
    if not with_products:
        return rho
    weighted_x = x * occupations
    times_dm = lambda m: (m @ x) @ weighted_x.T  # noqa: E731
    return rho, (c0 @ weighted_x.T if xctype == "GGA" else None), times_dm


def weighted_ao(ao: np.ndarray, wv: np.ndarray, xctype: str) -> np.ndarray:
    """sum_k ao[k] wv[k] (g, n): the AO values times the weighted potential (LDA: k = 0 only)."""
    if xctype == "LDA":
        return (ao if ao.ndim == 2 else ao[0]) * wv[0][:, None]
    # One pass over the four components, no temporaries: 2-2.7x faster than four broadcasts
    # (one core, 448 points, 84-500 functions).
    return np.einsum("kg,kgn->gn", wv[:4], ao[:4])


def _molecule_key(mol, cutoff: float, deriv: int) -> tuple:
    """What, besides the grid, the AO values depend on: geometry, basis, cut-off, derivative order."""
    return (mol._atm.tobytes(), mol._bas.tobytes(), mol._env.tobytes(), mol.cart, float(cutoff), deriv)


class _KeptBlocks:
    """The leading blocks of one grid's :func:`screened_blocks`, kept while they fit ``budget_bytes``.

    The grid's coordinate array and screening table are held, not copied: a
    rebuilt grid has new arrays, so ``is`` tells a kept grid from a new one
    (and holding them means their ids cannot be reused).
    """

    def __init__(self, mol, grids, deriv: int, budget_bytes: float):
        self.coords, self.mask = grids.coords, grids.non0tab
        self.key = _molecule_key(mol, grids.cutoff, deriv)
        self.budget_bytes = budget_bytes
        self.blocks: list[tuple] = []
        self.nbytes = 0
        self.resume = 0  # first point past the kept blocks

    def matches(self, mol, grids, deriv: int) -> bool:
        return (self.coords is grids.coords and self.mask is grids.non0tab
                and self.key == _molecule_key(mol, grids.cutoff, deriv))


class ScreenedNumInt(numint.NumInt):
    """NumInt whose restricted LDA/GGA ``nr_rks`` works block by block on the significant functions only,
    with the AO values kept between calls on the same grid (see the module docs)."""

    _kept: _KeptBlocks | None = None

    def nr_rks(self, mol, grids, xc_code, dms, relativity=0, hermi=1, max_memory=2000, verbose=None):
        xctype = self._xc_type(xc_code)
        if (xctype not in ("LDA", "GGA") or hermi != 1 or np.ndim(dms) != 2
                or getattr(grids, "non0tab", None) is None or grids.coords is None):
            return super().nr_rks(mol, grids, xc_code, dms, relativity, hermi, max_memory, verbose)
        with single_threaded_blas():  # small products between OpenMP calls: see threads.py
            return _screened_rks(self, mol, grids, xc_code, xctype, dms, max_memory)

    def grid_blocks(self, mol, grids, deriv: int, max_memory: float):
        """:func:`screened_blocks` of ``grids``, the kept ones from memory.

        A grid seen for the first time is kept block by block while the blocks fit
        :data:`AO_CACHE_FRACTION` of ``max_memory`` (MB); the values of another grid,
        molecule or derivative order are dropped first. The kept arrays are read-only.
        """
        kept = self._kept
        filling = kept is None or not kept.matches(mol, grids, deriv)
        if filling:
            self._kept = None  # free the old grid's values before evaluating the new one's
            kept = self._kept = _KeptBlocks(mol, grids, deriv, AO_CACHE_FRACTION * max(max_memory, 0.0) * 1e6)
        yield from kept.blocks
        for block in screened_blocks(self, mol, grids.coords, grids.non0tab, deriv, grids.cutoff,
                                     start=kept.resume):
            ao = block[2]
            if filling and kept.nbytes + ao.nbytes <= kept.budget_bytes:
                ao.flags.writeable = False
                kept.blocks.append(block)
                kept.nbytes += ao.nbytes
                kept.resume = block[1]
            else:
                filling = False  # the kept blocks must stay contiguous from point 0
            yield block

    def release_ao_cache(self) -> None:
        """Drop the kept AO values (an SCF stage is done; the gradient needs other ones)."""
        self._kept = None


def release_ao_cache(mf) -> None:
    """Free the AO values ``mf``'s :class:`ScreenedNumInt` kept, if it has one."""
    release = getattr(getattr(mf, "_numint", None), "release_ao_cache", None)
    if release is not None:
        release()


def _screened_rks(ni, mol, grids, xc_code, xctype, dm, max_memory: float = 0.0):
    """(electrons, XC energy in Ha, XC potential matrix (nao, nao)) like PySCF's ``nr_rks``."""
    orbitals, occupations = density_factors(dm)
    dm = np.asarray(dm)
    nelec = excsum = 0.0
    vmat = np.zeros((mol.nao, mol.nao))
    for p0, p1, ao, significant in ni.grid_blocks(mol, grids, 0 if xctype == "LDA" else 1, max_memory):
        weight = grids.weights[p0:p1]
        rho = density_on_block(ao, xctype, dm, orbitals, occupations, significant)
        exc, vxc = ni.eval_xc_eff(xc_code, rho, deriv=1, xctype=xctype, spin=0)[:2]
        weighted_density = (rho if xctype == "LDA" else rho[0]) * weight
        nelec += weighted_density.sum()
        excsum += weighted_density @ exc
        wv = weight * vxc
        wv[0] *= 0.5  # the potential is symmetrised below
        values = ao if xctype == "LDA" else ao[0]
        vmat[np.ix_(significant, significant)] += values.T @ weighted_ao(ao, wv, xctype)
    vmat = vmat + vmat.T
    return nelec, excsum, vmat
