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

:func:`reuse_cderi` swaps :func:`cderi_rhojk` into PySCF for a ``with``
block. It falls back to PySCF's own function whenever its shortcut does not
hold: 3-index tensors not in memory (PySCF's out-of-core DF), a metric that
PySCF decomposed by eigenvalues (linear dependence), a non-Cholesky request,
or a rhok array that would take more than :data:`MEMORY_FRACTION` of the
available memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

import numpy as np
import scipy.linalg
from pyscf import lib
from pyscf.ao2mo import _ao2mo
from pyscf.df.grad import rhf as df_rhf_grad

#: PySCF's own solver, captured before anything swaps it.
PYSCF_CHO_SOLVE_RHOJK = df_rhf_grad._cho_solve_rhojk

#: rhok (naux, nocc, nao) is held in memory only if it takes at most this share of the available memory.
MEMORY_FRACTION = 0.4


def available_memory_bytes() -> int:
    """MemAvailable of this machine (bytes), or 0 if it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0


def _half_transform(cderi: np.ndarray, orbitals: np.ndarray) -> np.ndarray:
    """Y[P, i, u] = sum_v B[P, uv] C[v, i] from the lower-triangle-packed B (naux, nao(nao+1)/2)."""
    naux = cderi.shape[0]
    nao, nocc = orbitals.shape
    orbitals = np.asarray(orbitals, order="F")
    out = np.empty((naux, nocc, nao))
    # PySCF's own packed-AO transform (the one its DF exchange uses): MO index before AO index.
    _ao2mo.libao2mo.AO2MOnr_e2_drv(
        _ao2mo.libao2mo.AO2MOtranse2_nr_s2, _ao2mo.libao2mo.AO2MOmmm_bra_nr_s2,
        out.ctypes.data_as(ctypes.c_void_p), cderi.ctypes.data_as(ctypes.c_void_p),
        orbitals.ctypes.data_as(ctypes.c_void_p), ctypes.c_int(naux), ctypes.c_int(nao),
        (ctypes.c_int * 4)(0, nocc, 0, nao), lib.c_null_ptr(), ctypes.c_int(0))
    return out


def cderi_rhojk(mf_grad, mol, auxmol, orbol, orbor, decompose_j2c="CD",
                lindep=df_rhf_grad.LINEAR_DEP_THRESHOLD):
    """Drop-in for PySCF's ``_cho_solve_rhojk``: rhoj (nset, naux) and a rhok getter, from ``_cderi``."""
    with_df = getattr(mf_grad.base, "with_df", None)
    cderi = getattr(with_df, "_cderi", None)
    nao, naux = mol.nao, auxmol.nao
    nocc = [o.shape[-1] for o in orbor]
    fallback = (not isinstance(cderi, np.ndarray) or cderi.shape != (naux, nao * (nao + 1) // 2)
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

    rhoj = np.empty((len(orbol), naux))
    rhok = []
    diagonal = np.arange(nao) * (np.arange(nao) + 1) // 2 + np.arange(nao)
    for i, (left, right) in enumerate(zip(orbol, orbor)):
        dm = left @ right.T
        dm_tril = lib.pack_tril(dm + dm.T)
        dm_tril[diagonal] *= 0.5
        rhoj[i] = solve_metric(cderi @ dm_tril)
        rhok.append(solve_metric(_half_transform(cderi, right).reshape(naux, -1)).reshape(naux, nocc[i], nao))

    def get_rhok(set_id: int, p0: int, p1: int) -> np.ndarray:
        return rhok[set_id][p0:p1]

    return rhoj, get_rhok


@contextlib.contextmanager
def reuse_cderi() -> Iterator[None]:
    """Within the block, PySCF's DF gradients take rhoj/rhok from the SCF's 3-index tensors."""
    df_rhf_grad._cho_solve_rhojk = cderi_rhojk
    try:
        yield
    finally:
        df_rhf_grad._cho_solve_rhojk = PYSCF_CHO_SOLVE_RHOJK
