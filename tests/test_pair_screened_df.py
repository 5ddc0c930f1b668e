"""Pair-screened density fitting: what it leaves out is bounded, and what it keeps is PySCF's B."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from ase import Atoms
from pyscf import df, dft, gto, lib

from qcell_nb.calculators import pair_screened_df as psdf
from qcell_nb.calculators.pair_screened_df import PairScreenedDF, significant_pairs

AUXBASIS = "def2-universal-jkfit"
#: Two waters 9 Å apart: about half their AO pairs are of functions on different molecules that do not overlap.
TWO_WATERS = "O 0 0 0; H 0 0.76 0.59; H 0 -0.76 0.59; O 0 0 9; H 0 0.76 9.59; H 0 -0.76 9.59"


@pytest.fixture(scope="module")
def mol() -> gto.Mole:
    return gto.M(atom=TWO_WATERS, basis="def2-svp", verbose=0)


@pytest.fixture(scope="module")
def full_cderi(mol) -> np.ndarray:
    return df.incore.cholesky_eri(mol, auxmol=df.make_auxmol(mol, AUXBASIS))


def screened(mol, screen, max_memory=None) -> PairScreenedDF:
    with_df = PairScreenedDF(mol, auxbasis=AUXBASIS)
    with_df.screen = screen
    if max_memory is not None:
        with_df.max_memory = max_memory
    return with_df.build()


def test_pairs_left_out_have_fitted_columns_below_the_cutoff(mol, full_cderi) -> None:
    """The Schwarz bound holds: every column of B the screen drops has a norm below the cutoff."""
    pairs = significant_pairs(mol)
    npair = mol.nao * (mol.nao + 1) // 2
    dropped = np.setdiff1d(np.arange(npair), pairs)
    assert 0.3 * npair < len(pairs) < 0.7 * npair  # the far waters' cross pairs go, the rest stays
    assert np.linalg.norm(full_cderi[:, dropped], axis=0).max() < psdf.PAIR_CUTOFF
    assert np.linalg.norm(full_cderi[:, pairs], axis=0).max() > 1.0
    assert len(significant_pairs(mol, 1e-6)) < len(pairs) < len(significant_pairs(mol, 1e-14)) <= npair


@pytest.mark.parametrize("cutoff", [-1.0, float("nan")])
def test_bad_cutoff_is_named(mol, cutoff) -> None:
    with pytest.raises(ValueError, match="pair cutoff"):
        significant_pairs(mol, cutoff)


def test_bad_screen_setting_is_named(mol) -> None:
    with pytest.raises(ValueError, match="screen='sometimes'"):
        screened(mol, "sometimes")


def test_loop_gives_pyscf_rows_with_zeros_where_pairs_were_left_out(mol, full_cderi) -> None:
    with_df = screened(mol, True)
    assert with_df.pairs is not None and with_df._cderi.shape == (full_cderi.shape[0], len(with_df.pairs))
    rows = np.vstack(list(with_df.loop(blksize=50)))  # blocks of 50 rows, the last one shorter
    assert rows.shape == full_cderi.shape
    np.testing.assert_allclose(rows[:, with_df.pairs], full_cderi[:, with_df.pairs], atol=1e-12)
    dropped = np.setdiff1d(np.arange(rows.shape[1]), with_df.pairs)
    assert not rows[:, dropped].any()
    assert with_df.get_naoaux() == full_cderi.shape[0]


def test_auto_screens_only_where_that_decides_whether_b_fits(mol, full_cderi, monkeypatch) -> None:
    """With nothing else held: room for the full tensor, PySCF's; room only for the screened one,
    screened in memory; room for neither, screened in a file."""
    monkeypatch.setattr(lib, "current_memory", lambda: (0.0, 0.0))
    full_mb = full_cderi.size * 8 / 1e6
    kept_mb = len(significant_pairs(mol)) * full_cderi.shape[0] * 8 / 1e6
    assert kept_mb < 0.8 * full_mb
    plenty, tight, too_little = (x / psdf.IN_MEMORY_FRACTION for x in (1.1 * full_mb, 1.02 * kept_mb, 0.5 * kept_mb))
    assert screened(mol, "auto", plenty).pairs is None
    fitted = screened(mol, "auto", tight)
    assert fitted.pairs is not None and isinstance(fitted._cderi, np.ndarray)
    on_disk = screened(mol, "auto", too_little)
    assert on_disk.pairs is not None and not isinstance(on_disk._cderi, np.ndarray)
    never = screened(mol, False, tight)  # never screens: PySCF's choice, here its full file
    assert never.pairs is None and not isinstance(never._cderi, np.ndarray)


def test_screened_tensor_on_disk_gives_the_same_rows(mol, full_cderi) -> None:
    """With no room in memory, B[:, pairs] goes to a file; its rows are those kept in memory."""
    in_memory, on_disk = screened(mol, True), screened(mol, True, max_memory=1)
    assert isinstance(in_memory._cderi, np.ndarray) and not isinstance(on_disk._cderi, np.ndarray)
    np.testing.assert_array_equal(on_disk.pairs, in_memory.pairs)
    assert isinstance(on_disk._cderi, h5py.Dataset) and on_disk._cderi.shape == in_memory._cderi.shape
    rows_disk = np.vstack(list(on_disk.loop(blksize=40)))
    rows_memory = np.vstack(list(in_memory.loop(blksize=40)))
    assert rows_disk.shape == full_cderi.shape
    np.testing.assert_allclose(rows_disk, rows_memory, atol=1e-12)  # other integral blocks: round-off apart
    assert on_disk.get_naoaux() == full_cderi.shape[0]


def test_a_killed_process_leaves_no_tensor_file(tmp_path) -> None:
    """The screened file is unlinked while open: SIGKILL (a lost Dask worker) leaves TMPDIR empty."""
    script = (f"from pyscf import gto\n"
              f"from qcell_nb.calculators.pair_screened_df import PairScreenedDF\n"
              f"mol = gto.M(atom={TWO_WATERS!r}, basis='def2-svp', verbose=0)\n"
              f"with_df = PairScreenedDF(mol, auxbasis={AUXBASIS!r})\n"
              f"with_df.screen, with_df.max_memory = True, 1\n"
              f"with_df.build()\n"
              f"assert with_df._cderi.shape[1] == len(with_df.pairs)\n"
              f"print('built', flush=True)\n"
              f"os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", "import os, signal\n" + script], capture_output=True, text=True,
                          env={**os.environ, "PYSCF_TMPDIR": str(tmp_path)}, timeout=120)
    assert "built" in done.stdout and done.returncode == -signal.SIGKILL, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_too_little_disk_is_a_named_error(mol, monkeypatch) -> None:
    """A tensor larger than the temporary directory's free space fails before any integral."""
    monkeypatch.setattr(psdf.shutil, "disk_usage", lambda path: SimpleNamespace(total=10**12, used=10**12, free=1000))
    with pytest.raises(OSError, match=r"needs .* GB in TMPDIR=.*0\.0 GB free"):
        screened(mol, True, max_memory=1)


def test_scf_energy_and_gradient_match_the_full_tensor(mol) -> None:
    """The fixed point and its forces do not see the pairs left out (two waters 9 Å apart)."""
    results = []
    for screen in (False, True):
        mf = dft.RKS(mol, xc="pbe0").density_fit(auxbasis=AUXBASIS)
        mf.with_df = PairScreenedDF(mol, auxbasis=AUXBASIS)
        mf.with_df.screen = screen
        mf.conv_tol = 1e-11
        mf.grids.level = 1
        energy = mf.kernel()
        results.append((energy, mf.nuc_grad_method().kernel(), mf.with_df.pairs))
    (e_full, g_full, no_pairs), (e_screened, g_screened, pairs) = results
    assert no_pairs is None and pairs is not None
    assert abs(e_screened - e_full) < 1e-10
    np.testing.assert_allclose(g_screened, g_full, atol=1e-9)


def test_label_reports_its_pair_fraction(monkeypatch) -> None:
    """A label screened on purpose keeps its numbers and says which share of the pairs it stored."""
    from qcell_nb.calculators.pbe0 import label_structure

    atoms = Atoms(symbols="OH2OH2", positions=[[float(x) for x in atom.split()[1:]] for atom in TWO_WATERS.split(";")],
                  info={"name": "two waters"})
    full = label_structure(atoms, basis="def2-svp", grid_level=1, mbd=None)
    monkeypatch.setattr(PairScreenedDF, "screen", True)
    pair_screened = label_structure(atoms, basis="def2-svp", grid_level=1, mbd=None)
    assert full["df_pair_fraction"] == 1.0 and 0.3 < pair_screened["df_pair_fraction"] < 0.7
    assert pair_screened["df_tensors_in_memory"] is True
    assert pair_screened["energy"] == pytest.approx(full["energy"], abs=1e-8)
    np.testing.assert_allclose(pair_screened["forces"], full["forces"], atol=1e-7)
    # No room in memory: the screened tensor is read from its file by the SCF and the gradient.
    from_disk = label_structure(atoms, basis="def2-svp", grid_level=1, mbd=None, max_memory_mb=1)
    assert from_disk["df_tensors_in_memory"] is False and from_disk["df_pair_fraction"] == pair_screened["df_pair_fraction"]
    assert from_disk["energy"] == pytest.approx(full["energy"], abs=1e-8)
    np.testing.assert_allclose(from_disk["forces"], full["forces"], atol=1e-7)
