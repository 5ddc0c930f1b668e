"""Density fitting that stores only the AO pairs that matter, so large fragments keep B in memory.

PySCF's :class:`pyscf.df.DF` stores B = L^-1 (P|mn) for every AO pair m >= n
(naux x nao(nao+1)/2 doubles) and, when that exceeds 90% of ``max_memory``,
writes it to an HDF5 file that every SCF cycle and the gradient read again.
At Gly14 (101 atoms, def2-SVP) B is 21.3 GB, and the label took 7,466 CPU-s
from disk, about three times its in-memory N^2.8 trend. Yet in a fragment
that size most pairs are of functions too far apart to overlap: only ~1/3
have a Schwarz factor sqrt((mn|mn)) above 1e-10 (glycine chains, Gly10 to
Gly21), and the Cholesky-fitted column of a pair is bounded by it:
||B[:, mn]||_2 <= sqrt((mn|mn)) (the fitted self-repulsion of a pair never
exceeds the exact one). A pair below :data:`PAIR_CUTOFF` is left out: its
3-index integrals are not solved or stored.

:class:`PairScreenedDF` is PySCF's DF with that storage. Its ``loop``
yields the same (aux block, nao(nao+1)/2) rows, zero at the pairs left out,
so every consumer (PySCF's J/K, :mod:`~qcell_nb.calculators.df_jk`, the DF
gradient of :mod:`~qcell_nb.calculators.df_gradient`, the Kohn-Sham matrix
export) reads it unchanged. With ``screen="auto"`` (the default) it screens
whenever the full tensor would not fit in memory: the screened one is then
kept in memory if it fits, and otherwise written to an HDF5 file in PySCF's
temporary directory (``lib.param.TMPDIR``), which ``loop`` reads in blocks,
the next block read while the last one is used. The file is unlinked as soon
as it is open, so its space returns to the disk when the DF object goes, or
when the process is killed. A full tensor that fits in
memory is PySCF's own (it costs nothing to read). ``screen=True`` always
screens (tests; memory to spare for the AO values), ``False`` never (PySCF's
DF as is, its full file when B does not fit).

Why screen on disk too: at Gly21 (150 atoms, def2-SVP) the full file would be
70 GB, the screened one 20.7 GB, and every SCF cycle and the gradient read it
once. Before a file is written, the free space there is checked: too little
is an ``OSError`` that names the directory, the size needed and the space
free, not a full disk part-way through the integrals. Where the file sits in
the page cache, reading it costs about what memory does: Gly10 (73 atoms,
def2-SVP) with a 2 GB budget, two labels side by side on one core each,
screened file (2.8 GB) 1094 CPU-s, PySCF's full file (8.0 GB) 1144 CPU-s
(the in-memory label took 1135 in an earlier run), dE 6e-7 kcal/mol and
max dF 3e-7 kcal/mol/Å between the two. The gain is where the full file
would not stay in the cache: Gly14's 21.3 GB beside a 16 GB budget took
7466 CPU-s, against 3873 with its 7.2 GB screened in memory, and 4022 from
the 7.2 GB screened file with a 5.6 GB budget (what an 8 GB Dask worker gets).

Shell pairs are screened by the largest Schwarz factor of their functions
(PySCF's direct-SCF table, ``CVHFsetnr_direct_scf``), so a pair of shells is
kept or dropped whole. Linearly dependent auxiliary sets (PySCF's
eigen-decomposed metric) are left to PySCF.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import h5py
import numpy as np
import scipy.linalg
from pyscf import df, gto, lib
from pyscf.df import addons
from pyscf.df.outcore import _guess_shell_ranges
from pyscf.scf import _vhf

from qcell_nb.calculators.memory import resident_mb

#: AO shell pairs whose Schwarz factor sqrt(max (mn|mn)) is below this are left out of B. Measured
#: on glycine chains against the full tensor: see tests/test_pair_screened_df.py and the bench.
PAIR_CUTOFF = 1e-10

#: Share of ``max_memory`` (less what the process holds) a tensor kept in memory may take; PySCF's own.
IN_MEMORY_FRACTION = 0.9


def schwarz_factors(mol: gto.Mole) -> np.ndarray:
    """sqrt(max |(mn|mn)|) over each pair of shells (nbas, nbas), from PySCF's direct-SCF table."""
    opt = _vhf.VHFOpt(mol, "int2e", "CVHFnrs8_prescreen", "CVHFsetnr_direct_scf")
    return np.array(opt.q_cond)


def significant_pairs(mol: gto.Mole, cutoff: float = PAIR_CUTOFF) -> np.ndarray:
    """Indices (into the m >= n packed pairs, ascending) of the AO pairs whose shell pair reaches ``cutoff``.

    Raises
    ------
    ValueError
        If ``cutoff`` is negative or not finite.
    """
    if not np.isfinite(cutoff) or cutoff < 0:
        raise ValueError(f"pair cutoff={cutoff!r} must be a finite number >= 0")
    shell_of_ao = np.repeat(np.arange(mol.nbas), np.diff(mol.ao_loc_nr()))
    kept_shells = schwarz_factors(mol) >= cutoff
    rows, cols = np.tril_indices(mol.nao)
    return np.flatnonzero(kept_shells[shell_of_ao[rows], shell_of_ao[cols]])


class PairScreenedDF(df.DF):
    """PySCF's DF, storing B only for the AO pairs :func:`significant_pairs` keeps (see the module docs).

    Attributes
    ----------
    screen : "auto", True or False
        "auto": screen when the full tensor would not fit in memory (the screened one is kept in
        memory if it fits, else in a file).
    pair_cutoff : float
        Schwarz factor below which a shell pair is left out (:data:`PAIR_CUTOFF`).
    pairs : ndarray of int or None
        After ``build``: the packed-pair indices B holds (its columns), or None for PySCF's full B.
    ``_cderi`` is then B[:, pairs] (naux, len(pairs)): an array, or a dataset of an HDF5 file
    that is open and already unlinked from TMPDIR (PySCF reads either).
    """

    screen: str | bool = "auto"
    pair_cutoff: float = PAIR_CUTOFF
    pairs: np.ndarray | None = None
    _screened_file: h5py.File | None = None

    def build(self):
        if self.screen not in ("auto", True, False):
            raise ValueError(f"screen={self.screen!r} must be 'auto', True or False")
        self.pairs = None
        if self.screen is False or (self._cderi is not None and self.auxmol is None) \
                or isinstance(self._cderi_to_save, str):
            return super().build()
        mol = self.mol
        auxmol = addons.make_auxmol(mol, self.auxbasis)
        nao, naux = mol.nao_nr(), auxmol.nao_nr()
        room_mb = IN_MEMORY_FRACTION * (self.max_memory - resident_mb())
        full_fits = naux * nao * (nao + 1) // 2 * 8 / 1e6 < room_mb
        if self.screen == "auto" and full_fits:
            return super().build()
        pairs = significant_pairs(mol, self.pair_cutoff)
        try:
            low = scipy.linalg.cholesky(auxmol.intor("int2c2e", hermi=1), lower=True)
        except scipy.linalg.LinAlgError:  # linearly dependent: PySCF's eigen-decomposition
            return super().build()
        self.check_sanity()
        self.auxmol = auxmol
        screened_mb = pairs.size * naux * 8 / 1e6
        if screened_mb < room_mb:
            cderi = np.empty((naux, pairs.size))
            _screened_cholesky_eri(mol, auxmol, low, pairs, cderi, room_mb - screened_mb)
            self._cderi = cderi
        else:
            self._cderi = self._write_screened(mol, auxmol, low, pairs, room_mb)
        self.pairs = pairs
        return self

    def _write_screened(self, mol: gto.Mole, auxmol: gto.Mole, low: np.ndarray, pairs: np.ndarray,
                        buffer_mb: float) -> h5py.Dataset:
        """B[:, pairs] in a new HDF5 file in TMPDIR, open and already unlinked; its dataset."""
        shape = (auxmol.nao_nr(), pairs.size)
        need_gb = shape[0] * shape[1] * 8 / 1e9
        free_gb = shutil.disk_usage(lib.param.TMPDIR).free / 1e9
        if need_gb > 0.95 * free_gb:
            raise OSError(f"density fitting: the pair-screened tensor B ({shape[0]} x {shape[1]}) needs "
                          f"{need_gb:.1f} GB in TMPDIR={lib.param.TMPDIR}, which has {free_gb:.1f} GB free "
                          "(set PYSCF_TMPDIR to a larger disk, or give the label more memory)")
        handle, path = tempfile.mkstemp(prefix="qcell_df_", suffix=".h5", dir=lib.param.TMPDIR)
        os.close(handle)
        # Unlinked while open: the disk space comes back when the file is closed (this object
        # collected), and also when the process is killed, so a lost Dask worker or a timed-out
        # label leaves no tens-of-GB file behind in TMPDIR (PySCF's named file would stay).
        try:
            stored = h5py.File(path, "w")
        finally:
            os.unlink(path)
        dataset = stored.create_dataset(self._dataname, shape, "f8")
        _screened_cholesky_eri(mol, auxmol, low, pairs, dataset, buffer_mb)
        self._screened_file = stored
        return dataset

    @property
    def pair_fraction(self) -> float:
        """Share of the m >= n AO pairs B holds (1.0: PySCF's full tensor)."""
        nao = self.mol.nao_nr()
        return 1.0 if self.pairs is None else len(self.pairs) / (nao * (nao + 1) // 2)

    def reset(self, mol=None):
        self.pairs = None
        if self._screened_file is not None:
            self._screened_file.close()
            self._screened_file = None
        return super().reset(mol)

    def loop(self, blksize=None):
        """Rows of B (block of auxiliary functions, nao(nao+1)/2), zero at the pairs left out."""
        if self._cderi is None:
            self.build()
        if self.pairs is None:
            yield from super().loop(blksize)
            return
        nao = self.mol.nao_nr()
        blksize = blksize or self.blockdim
        with addons.load(self._cderi, self._dataname) as stored:
            blocks = self.prange(0, stored.shape[0], blksize)
            if isinstance(stored, np.ndarray):
                kept_rows = (stored[p0:p1] for p0, p1 in blocks)
            else:  # the file: the next block is read while this one is used
                kept_rows = lib.map_with_prefetch(lambda rows: np.asarray(stored[rows[0]:rows[1]]), blocks)
            for rows in kept_rows:
                full = np.zeros((len(rows), nao * (nao + 1) // 2))
                full[:, self.pairs] = rows
                yield full


def _screened_cholesky_eri(mol: gto.Mole, auxmol: gto.Mole, low: np.ndarray, pairs: np.ndarray, out,
                           buffer_mb: float) -> None:
    """Write B[:, pairs] = L^-1 (P|mn) for the packed pairs ``pairs`` into ``out`` (naux, len(pairs)).

    ``out``: an array or an HDF5 dataset (written one block of columns at a time). The 3-index
    integrals go in blocks of AO rows (m >= n packed pairs of consecutive shells of m), as PySCF's
    :func:`pyscf.df.incore.cholesky_eri` computes them, sized to ``buffer_mb``; each block's kept
    pairs are solved.
    """
    naux = auxmol.nao_nr()
    # One block of integrals, its kept columns and their solve at a time: about 3 x rows x naux doubles.
    buffer_words = max(buffer_mb * 1e6 / 8, 0) / 3
    rows_per_block = int(min(max(buffer_words / naux, 8), mol.nao_nr() * (mol.nao_nr() + 1) // 2))
    atm, bas, env = gto.mole.conc_env(mol._atm, mol._bas, mol._env, auxmol._atm, auxmol._bas, auxmol._env)
    int3c = gto.moleintor.ascint3(mol._add_suffix("int3c2e"))
    cintopt = gto.moleintor.make_cintopt(atm, bas, env, int3c)
    aux_shells = (mol.nbas, mol.nbas + auxmol.nbas)
    ao_loc = mol.ao_loc_nr()
    column = 0
    for first_shell, end_shell, _ in _guess_shell_ranges(mol, rows_per_block, "s2ij"):
        start = ao_loc[first_shell] * (ao_loc[first_shell] + 1) // 2
        stop = ao_loc[end_shell] * (ao_loc[end_shell] + 1) // 2
        lo, hi = np.searchsorted(pairs, [start, stop])
        if hi == lo:
            continue
        ints = gto.moleintor.getints3c(int3c, atm, bas, env, (first_shell, end_shell, 0, mol.nbas, *aux_shells),
                                       1, "s2ij", None, cintopt)
        ints = ints.reshape(-1, naux)[pairs[lo:hi] - start]  # (kept pairs, naux)
        out[:, column:column + hi - lo] = scipy.linalg.solve_triangular(
            low, ints.T, lower=True, overwrite_b=True, check_finite=False)
        column += hi - lo
