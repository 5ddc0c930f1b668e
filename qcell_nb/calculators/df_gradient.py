"""Density-fitted J/K gradients that start from the SCF's own 3-index tensors.

PySCF's DF gradient (:func:`pyscf.df.grad.rhf.get_jk`) first solves
(P|Q) d_Q = (Q|uv) D_uv ("rhoj") and (P|Q) d_Qui = (Q|uv) C_vi n_i ("rhok")
in :func:`pyscf.df.grad.rhf._cho_solve_rhojk`: it computes the 3-index
integrals (uv|P) again, solves with both Cholesky factors of the metric and
writes rhok to a temporary HDF5 file, read back block by block. The SCF has
already stored B = L^-1 (P|uv) (PySCF's ``_cderi``, (P|Q) = L L^T), so
(P|Q)^-1 (P|uv) = L^-T B: one triangular solve on a product of B, in
memory, gives the same rhoj and rhok (to round-off; measured 1e-13 Ha/bohr in
the gradient) without the integrals or the file. At Gly5/def2-SVP this step
was 14.7 of the gradient's 46 CPU-s of DF J/K.

:func:`fast_df_gradient` swaps :func:`cderi_rhojk` into PySCF for a ``with``
block. It falls back to PySCF's own function whenever its shortcut does not
hold: 3-index tensors not in memory (PySCF's out-of-core DF), a metric that
PySCF decomposed by eigenvalues (linear dependence), a non-Cholesky request,
or a rhok array that would take more than :data:`MEMORY_FRACTION` of the
available memory.

:func:`get_jk`, swapped in by the same block (restricted and unrestricted), then
computes the auxiliary-basis response from the (d m, n|P) integrals of the
AO pass, by translational invariance, instead of a second pass over
(m n|d P): Gly1 0.56 -> 0.39, Gly3 9.8 -> 6.7, Gly7 129 -> 95 CPU-s for the DF J/K gradient
(one core, def2-SVP / def2-universal-jkfit; the same vj, vk and aux terms to
1e-13).
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

import numpy as np
import scipy.linalg
from pyscf import df, lib
from pyscf.ao2mo import _ao2mo
from pyscf.df.grad import rhf as df_rhf_grad

from qcell_nb.calculators.memory import available_memory_bytes
from qcell_nb.calculators.screened_numint import density_factors

#: PySCF's own solver and J/K gradient, captured before anything swaps them.
PYSCF_CHO_SOLVE_RHOJK = df_rhf_grad._cho_solve_rhojk
PYSCF_GET_JK = df_rhf_grad.get_jk

#: Auxiliary functions per block of (d m, n|P) integrals. libcint fills a large block (3 x nao^2 x
#: block doubles) much more slowly per integral: DF J/K gradient, one core, 240 -> 24 functions:
#: Gly3 7.3 -> 6.0-6.2, Gly5 32.4 -> 28.3, Gly7 89.2 -> 84.7 CPU-s (same results: each P is independent).
AUX_BLOCK_FUNCTIONS = 24

#: rhok (naux, nocc, nao) is held in memory only if it takes at most this share of the available memory.
MEMORY_FRACTION = 0.4


def _bra_transform(packing: str, ao_pairs: np.ndarray, orbitals: np.ndarray) -> np.ndarray:
    """Y[r, i, u] = sum_v A[r, u, v] C[v, i] with PySCF's AO-to-MO driver (the one its DF exchange uses).

    ``packing``: "s2" for A given as lower triangles (rows, nao(nao+1)/2), "s1" for full square
    blocks (rows, nao, nao) (then v is A's second AO index). Output (rows, nocc, nao): MO index
    before AO index.
    """
    nao, nocc = orbitals.shape
    ao_pairs = np.ascontiguousarray(ao_pairs)
    rows = ao_pairs.size // (nao * (nao + 1) // 2 if packing == "s2" else nao * nao)
    orbitals = np.asarray(orbitals, order="F")
    out = np.empty((rows, nocc, nao))
    _ao2mo.libao2mo.AO2MOnr_e2_drv(
        getattr(_ao2mo.libao2mo, f"AO2MOtranse2_nr_{packing}"), getattr(_ao2mo.libao2mo, f"AO2MOmmm_bra_nr_{packing}"),
        out.ctypes.data_as(ctypes.c_void_p), ao_pairs.ctypes.data_as(ctypes.c_void_p),
        orbitals.ctypes.data_as(ctypes.c_void_p), ctypes.c_int(rows), ctypes.c_int(nao),
        (ctypes.c_int * 4)(0, nocc, 0, nao), lib.c_null_ptr(), ctypes.c_int(0))
    return out


def cderi_rhojk(mf_grad, mol, auxmol, orbol, orbor, decompose_j2c="CD",
                lindep=df_rhf_grad.LINEAR_DEP_THRESHOLD):
    """Drop-in for PySCF's ``_cho_solve_rhojk``: rhoj (nset, naux) and a rhok getter, from ``_cderi``.

    The SCF's tensors B = L^-1 (P|mn) are read in blocks of auxiliary functions, from memory or
    from PySCF's temporary file when they did not fit (large molecules, tight basis): either way
    the (mn|P) integrals are not computed again, as PySCF's own solver does.
    """
    with_df = getattr(mf_grad.base, "with_df", None)
    cderi = getattr(with_df, "_cderi", None)
    nao, naux = mol.nao, auxmol.nao
    nao_pair = nao * (nao + 1) // 2
    nocc = [o.shape[-1] for o in orbor]
    # The row length (nao_pair, s2-packed) is checked on the blocks as they are read.
    fallback = (cderi is None or with_df.get_naoaux() != naux
                or str(decompose_j2c).upper() != "CD"
                or 8 * naux * nao * sum(nocc) > MEMORY_FRACTION * available_memory_bytes())
    low = None
    if not fallback:
        try:
            low = scipy.linalg.cholesky(auxmol.intor("int2c2e", hermi=1), lower=True)
        except scipy.linalg.LinAlgError:  # PySCF then built B from an eigen-decomposition
            fallback = True
    if fallback:
        return PYSCF_CHO_SOLVE_RHOJK(mf_grad, mol, auxmol, orbol, orbor, decompose_j2c, lindep)

    def solve_metric(b: np.ndarray) -> np.ndarray:  # L^-T b, i.e. (P|Q)^-1 (Q|..) from B
        return scipy.linalg.solve_triangular(low, b, lower=True, trans="T", overwrite_b=True, check_finite=False)

    diagonal = np.arange(nao) * (np.arange(nao) + 1) // 2 + np.arange(nao)
    dm_tril = []
    for left, right in zip(orbol, orbor):
        dm = left @ right.T
        packed = lib.pack_tril(dm + dm.T)
        packed[diagonal] *= 0.5
        dm_tril.append(packed)
    rhoj = np.empty((len(orbol), naux))
    rhok = [np.empty((naux, n * nao)) for n in nocc]
    p0 = 0
    for block in with_df.loop():
        if block.shape[1] != nao_pair:  # not the s2-packed tensors this code reads
            return PYSCF_CHO_SOLVE_RHOJK(mf_grad, mol, auxmol, orbol, orbor, decompose_j2c, lindep)
        p1 = p0 + len(block)
        for i, right in enumerate(orbor):
            rhoj[i, p0:p1] = block @ dm_tril[i]
            rhok[i][p0:p1] = _bra_transform("s2", block, right).reshape(p1 - p0, -1)
        p0 = p1
    rhoj = np.ascontiguousarray(solve_metric(rhoj.T).T)
    rhok = [solve_metric(r).reshape(naux, n, nao) for r, n in zip(rhok, nocc)]

    def get_rhok(set_id: int, p0: int, p1: int) -> np.ndarray:
        return rhok[set_id][p0:p1]

    return rhoj, get_rhok


def _occupied_orbitals(dm) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """[(C, n)] per spin: occupied orbitals (nao, nocc) and occupations of an orbital-tagged
    restricted (nao, nao) or unrestricted (2, nao, nao) density; None for an untagged one."""
    mo_coeff, mo_occ = getattr(dm, "mo_coeff", None), getattr(dm, "mo_occ", None)
    if mo_coeff is None or mo_occ is None:
        return None
    dms, mo_coeff, mo_occ = np.asarray(dm), np.asarray(mo_coeff), np.asarray(mo_occ)
    if dms.ndim == 2 and mo_occ.ndim == 1:
        dms, mo_coeff, mo_occ = dms[None], mo_coeff[None], mo_occ[None]
    if dms.ndim != 3 or mo_occ.ndim != 2 or len(dms) != len(mo_occ) or mo_coeff.ndim != 3:
        return None
    factors = [density_factors(d, c, n) for d, c, n in zip(dms, mo_coeff, mo_occ)]
    return [(np.asfortranarray(c), n) for c, n in factors]


def get_jk(mf_grad, mol=None, dm=None, hermi=0, with_j=True, with_k=True,
           decompose_j2c="CD", lindep=df_rhf_grad.LINEAR_DEP_THRESHOLD):
    """Drop-in for PySCF's DF ``get_jk`` gradient, with the auxiliary-basis response taken from
    the (d m, n|P) integrals instead of (m n|d P).

    Translational invariance of (mn|P) gives (mn|d_x P) = -[(d_x m, n|P) + (m, d_x n|P)], so the
    terms PySCF builds from a second pass over int3c2e_ip2 integrals are contractions of the
    int3c2e_ip1 block the first pass has already computed for the AO part. For density sets
    i, j (one restricted, or alpha and beta) with occupied orbitals C_i and occupations n_i:

    * J: sum_mn (mn|d_x P) D_mn = -sum_mn (d_x m, n|P) (D + D^T)_mn;
    * K: with W_P = C_i R_P (C_j n_j)^T, R_P[o, o'] = rhok_iP[o, u] C_j[u, o'] (PySCF's
      rhok_oo) and T_i[x, P, o, m] = sum_n (d_x m, n|P) C_i[n, o],
      sum_mn (mn|d_x P) W_P[m, n]
      = -sum_om T_i[x, P, o, m] (R_P (C_j n_j)^T)[o, m] - sum_om T_j[x, P, o, m] n_j[o] (R_P^T C_i^T)[o, m].

    The metric term (d P|Q) stays as in PySCF. Returns PySCF's tagged arrays (Ha/bohr units, vj
    and vk of the density's leading shape + (3, nao, nao), ``.aux`` of shape (nset, nset, natm, 3)).
    Anything else (untagged densities, no K, ``only_dfj``, no auxiliary-basis response) goes to
    PySCF's own.
    """
    if mol is None:
        mol = mf_grad.mol
    if dm is None:
        dm = mf_grad.base.make_rdm1()
    orbitals = _occupied_orbitals(dm)
    if (orbitals is None or not with_k or not mf_grad.auxbasis_response
            or getattr(mf_grad.base, "only_dfj", False)):
        return PYSCF_GET_JK(mf_grad, mol, dm, hermi, with_j, with_k, decompose_j2c, lindep)
    orbol = [c for c, _ in orbitals]
    occupations = [n for _, n in orbitals]
    orbor = [np.asfortranarray(c * n) for c, n in orbitals]
    nset = len(orbol)
    with_df = mf_grad.base.with_df
    auxmol = with_df.auxmol
    if auxmol is None:
        auxmol = df.addons.make_auxmol(with_df.mol, with_df.auxbasis)
    nbas, nao, naux = mol.nbas, mol.nao, auxmol.nao
    aux_loc = auxmol.ao_loc
    # looked up at call time, so that fast_df_gradient's solver is the one used
    rhoj, get_rhok = df_rhf_grad._cho_solve_rhojk(mf_grad, mol, auxmol, orbol, orbor, decompose_j2c, lindep)
    dms = np.asarray(dm).reshape(nset, nao, nao)
    dm_sym = (dms + dms.transpose(0, 2, 1)).reshape(nset, -1)  # symmetric: the (n, m) order needs no transpose

    vj = np.zeros((nset, 3, nao, nao))
    vk = np.zeros((nset, 3, nao, nao))
    vjaux = np.zeros((nset, nset, 3, naux))
    vkaux = np.zeros((nset, nset, 3, naux))
    rhok_oo = {(i, j): np.empty((naux, orbol[i].shape[1], orbol[j].shape[1]))
               for i in range(nset) for j in range(nset)}
    get_int3c_ip1 = df_rhf_grad._int3c_wrapper(mol, auxmol, "int3c2e_ip1", "s1")
    max_memory = mf_grad.max_memory - lib.current_memory()[0]
    # At most half the free memory per (3, P, nao, nao) block: from ~2,000 basis functions 24 auxiliary
    # functions are ~2 GB, so the memory term (not PySCF's floor of 20) must be able to shrink it.
    blksize = int(max(1, min(max_memory * 0.5e6 / 8 / (nao**2 * 3), naux, AUX_BLOCK_FUNCTIONS)))
    for shl0, shl1, _ in df_rhf_grad.balance_partition(aux_loc, blksize):
        p0, p1 = aux_loc[shl0], aux_loc[shl1]
        int3c = get_int3c_ip1((0, nbas, 0, nbas, shl0, shl1)).transpose(0, 3, 2, 1)  # [x, P, n, m] = (d_x m, n|P)
        flat = int3c.reshape(3, p1 - p0, nao * nao)
        drhoj = -(flat @ dm_sym.T)  # [x, P, i] = sum_mn (mn|d_x P) D_i,mn
        vjaux[:, :, :, p0:p1] = np.einsum("xpi,jp->ijxp", drhoj, rhoj[:, p0:p1])
        for i in range(nset):
            for x in range(3):
                vj[i, x] += (rhoj[i, p0:p1] @ flat[x]).reshape(nao, nao).T
        flat = drhoj = None
        # t[i][x, P, o, m] = sum_n (d_x m, n|P) C_i[n, o]
        t = [_bra_transform("s1", int3c, c).reshape(3, p1 - p0, -1, nao) for c in orbol]
        int3c = None
        for i in range(nset):
            rhok = get_rhok(i, p0, p1)
            vk[i] += lib.einsum("xpoi,pok->xik", t[i], rhok)
            for j in range(nset):
                r = rhok_oo[i, j][p0:p1] = rhok @ orbol[j]
                vkaux[i, j, :, p0:p1] = -(
                    np.einsum("xpom,pom->xp", t[i], r @ orbor[j].T)
                    + np.einsum("xpom,pom->xp", t[j], occupations[j][:, None] * (r.transpose(0, 2, 1) @ orbol[i].T)))
        t = rhok = r = None

    int2c_e1 = auxmol.intor("int2c2e_ip1")  # (d_x P|Q)
    vjaux -= np.einsum("xpq,ip,jq->ijxp", int2c_e1, rhoj, rhoj)
    for i in range(nset):
        for j in range(nset):
            vkaux[i, j] -= np.einsum("xpq,pq->xp", int2c_e1,
                                     lib.einsum("pij,qji->pq", rhok_oo[i, j], rhok_oo[j, i]))
    slices = auxmol.aoslice_by_atom()[:, 2:]

    def per_atom(aux: np.ndarray) -> np.ndarray:
        """(nset, nset, 3, naux) -> (nset, nset, natm, 3), summed over each atom's functions, sign flipped."""
        sums = np.array([-aux[..., p0:p1].sum(axis=-1) for p0, p1 in slices])
        return np.ascontiguousarray(sums.transpose(1, 2, 0, 3))

    vjaux, vkaux = per_atom(vjaux), per_atom(vkaux)
    out_shape = np.shape(dm)[:-2] + (3, nao, nao)
    vk = lib.tag_array(-vk.reshape(out_shape), aux=vkaux)
    if not with_j:
        return None, vk
    return lib.tag_array(-vj.reshape(out_shape), aux=vjaux), vk


@contextlib.contextmanager
def fast_df_gradient() -> Iterator[None]:
    """Within the block, PySCF's DF gradients take rhoj/rhok from the SCF's 3-index tensors
    (:func:`cderi_rhojk`) and J/K gradients skip the int3c2e_ip2 pass (:func:`get_jk`)."""
    df_rhf_grad._cho_solve_rhojk = cderi_rhojk
    df_rhf_grad.get_jk = get_jk
    try:
        yield
    finally:
        df_rhf_grad._cho_solve_rhojk = PYSCF_CHO_SOLVE_RHOJK
        df_rhf_grad.get_jk = PYSCF_GET_JK
