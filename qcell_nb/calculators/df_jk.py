"""Density-fitted J and K with the exchange matrix accumulated as a symmetric rank-k update.

PySCF's :func:`pyscf.df.df_jk.get_jk` builds, for each block of auxiliary
functions P, the half-transformed tensor (P i|n) = sum_m B(P|mn) C(m, i) over
the occupied orbitals (scaled by the square roots of their occupations) and
adds K += X^T X with X = (P i|n) as an (naux_block * nocc, nao) matrix, by a
general matrix product. K is symmetric, so BLAS's ``dsyrk`` forms the same
product from one triangle at half the flops. At Gly5/def2-SVP that product
is about half of a K build (3 CPU-s, 18 builds per label).

:func:`symmetric_df_jk` keeps PySCF's contract (same blocks of the same
tensors, in memory or in PySCF's file, same J) and changes only that
product. It serves real, Hermitian density matrices that carry their
orbitals (``mo_coeff``, ``mo_occ``, as PySCF's SCF tags them), RKS or UKS;
anything else (no orbitals, complex or non-Hermitian matrices,
range-separated exchange, ROHF's paired sets) goes to PySCF's function.
"""

from __future__ import annotations

import ctypes

import numpy as np
from pyscf import lib
from pyscf.ao2mo import _ao2mo
from pyscf.df import df_jk
from scipy.linalg import blas


def _occupied_factors(dm, nset: int, nao: int) -> list[np.ndarray] | None:
    """Per density matrix: C_occ sqrt(n_occ) (nao, nocc), Fortran order; None if ``dm`` has no orbitals."""
    mo_coeff, mo_occ = getattr(dm, "mo_coeff", None), getattr(dm, "mo_occ", None)
    if mo_coeff is None or mo_occ is None:
        return None
    mo_coeff, mo_occ = np.asarray(mo_coeff), np.asarray(mo_occ)
    if np.iscomplexobj(mo_coeff) or mo_coeff.shape[-2] != nao:
        return None
    nmo = mo_occ.shape[-1]
    mo_coeff, mo_occ = mo_coeff.reshape(-1, nao, nmo), mo_occ.reshape(-1, nmo)
    if mo_occ.shape[0] != nset:  # ROHF passes one set of orbitals for two matrices
        return None
    factors = []
    for coeff, occ in zip(mo_coeff, mo_occ):
        if np.any(occ < 0):
            return None
        keep = occ > 0
        factors.append(np.asfortranarray(coeff[:, keep] * np.sqrt(occ[keep])))
    return factors


def symmetric_df_jk(with_df, dm, hermi: int = 1, with_j: bool = True, with_k: bool = True,
                    direct_scf_tol: float = 1e-13, omega=None, *, fallback=None):
    """J and K (Ha, the shape of ``dm``) like ``with_df.get_jk``; K from ``dsyrk`` where it applies.

    ``fallback``: the function for the cases this does not serve (default PySCF's
    :func:`pyscf.df.df_jk.get_jk`, called as ``fallback(dm, hermi, with_j, with_k, ...)``
    when given, as ``df_jk.get_jk(with_df, dm, ...)`` otherwise).
    """
    dms = np.asarray(dm)
    nao = dms.shape[-1]
    nset = dms.size // (nao * nao)
    factors = None
    if hermi == 1 and with_k and omega is None and not np.iscomplexobj(dms):
        factors = _occupied_factors(dm, nset, nao)
    if factors is None:
        if fallback is not None:
            return fallback(dm, hermi, with_j, with_k, direct_scf_tol, omega)
        return df_jk.get_jk(with_df, dm, hermi, with_j, with_k, direct_scf_tol)

    dm_shape = dms.shape
    dms = dms.reshape(nset, nao, nao)
    if with_j:
        diagonal = np.arange(nao) * (np.arange(nao) + 1) // 2 + np.arange(nao)
        dmtril = lib.pack_tril(dms + dms.transpose(0, 2, 1))
        dmtril[:, diagonal] *= 0.5
    vj = np.zeros((nset, nao * (nao + 1) // 2)) if with_j else None
    vk = [np.zeros((nao, nao), order="F") for _ in range(nset)]

    # PySCF's block size and buffer (df_jk.get_jk), so the memory use is the same.
    max_memory = with_df.max_memory - lib.current_memory()[0]
    blksize = max(4, int(min(with_df.blockdim, max_memory * 0.3e6 / 8 / nao**2)))
    buf = np.empty((blksize * nao, nao))
    null = lib.c_null_ptr()
    for eri1 in with_df.loop(blksize):
        naux, nao_pair = eri1.shape
        if nao_pair != nao * (nao + 1) // 2:
            raise ValueError(f"DF tensor block of shape {eri1.shape} does not match nao={nao}")
        if with_j:
            vj += (dmtril @ eri1.T) @ eri1
        for k, orbitals in enumerate(factors):
            nocc = orbitals.shape[1]
            if nocc == 0:
                continue
            half = buf[:naux * nocc]  # (P i|n), as PySCF's transform writes it
            _ao2mo.libao2mo.AO2MOnr_e2_drv(
                _ao2mo.libao2mo.AO2MOtranse2_nr_s2, _ao2mo.libao2mo.AO2MOmmm_bra_nr_s2,
                half.ctypes.data_as(ctypes.c_void_p), eri1.ctypes.data_as(ctypes.c_void_p),
                orbitals.ctypes.data_as(ctypes.c_void_p), ctypes.c_int(naux), ctypes.c_int(nao),
                (ctypes.c_int * 4)(0, nocc, 0, nao), null, ctypes.c_int(0))
            # half.T is (nao, naux*nocc) in Fortran order: K += half^T half, upper triangle only.
            vk[k] = blas.dsyrk(1.0, half.T, beta=1.0, c=vk[k], trans=0, lower=0, overwrite_c=1)
    k_full = np.empty((nset, nao, nao))
    for k, upper in enumerate(vk):
        k_full[k] = np.triu(upper) + np.triu(upper, 1).T
    return (lib.unpack_tril(vj, 1).reshape(dm_shape) if with_j else None,
            k_full.reshape(dm_shape))


def install_symmetric_k(with_df) -> None:
    """Make ``with_df.get_jk`` use :func:`symmetric_df_jk` (its own ``get_jk`` for the rest). Idempotent."""
    if getattr(with_df, "_symmetric_k", False):
        return
    pyscf_get_jk = with_df.get_jk

    def get_jk(dm, hermi=1, with_j=True, with_k=True, *args, **kwargs):
        return symmetric_df_jk(with_df, dm, hermi, with_j, with_k, *args, fallback=pyscf_get_jk, **kwargs)

    with_df.get_jk = get_jk
    with_df._symmetric_k = True
