"""DF J/K with the exchange matrix from dsyrk, against PySCF's df_jk.get_jk."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from pyscf import dft
from pyscf.df import df_jk

from qcell_nb.calculators import df_jk as df_jk_module
from qcell_nb.calculators.df_jk import install_symmetric_k, symmetric_df_jk

# No symmetry, so that no matrix element is zero by accident.
METHANOL = "O 0 0 0.12; H 0.05 0.76 -0.47; C 0.1 -0.8 -0.9; H 1.0 -1.1 -1.4; H -0.8 -1.2 -1.3; H 0.2 -0.3 -1.8"
OH = "O 0 0 0; H 0.1 0 0.97"
#: A coarse grid and three cycles: enough for orbital-tagged densities to compare J and K on.
FEW_CYCLES = {"grid_level": 1, "max_cycle": 3}


def assert_same_jk(ours, reference) -> None:
    for matrix, expected in zip(ours, reference):
        assert matrix.shape == expected.shape
        assert np.abs(expected).max() > 0.1  # a real matrix, not zeros on both sides
        np.testing.assert_allclose(matrix, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("atom, spin", [(METHANOL, 0), (OH, 1)])
def test_j_and_k_equal_pyscfs(df_pbe0_scf, atom: str, spin: int) -> None:
    mf = df_pbe0_scf(atom, spin, **FEW_CYCLES)
    dm = mf.make_rdm1()  # tagged with the orbitals, as in the SCF
    assert getattr(dm, "mo_coeff", None) is not None
    reference = df_jk.get_jk(mf.with_df, dm, hermi=1)
    assert_same_jk(symmetric_df_jk(mf.with_df, dm, hermi=1), reference)
    vj, vk = symmetric_df_jk(mf.with_df, dm, hermi=1, with_j=False)
    assert vj is None
    np.testing.assert_allclose(vk, reference[1], rtol=0, atol=1e-12)


def test_tensors_on_disk_give_the_same_j_and_k(df_pbe0_scf) -> None:
    # 1 MB is below the tensors' size: PySCF keeps them in a file.
    mf = df_pbe0_scf(METHANOL, 0, max_memory=1, **FEW_CYCLES)
    assert not isinstance(mf.with_df._cderi, np.ndarray)
    dm = mf.make_rdm1()
    assert_same_jk(symmetric_df_jk(mf.with_df, dm), df_jk.get_jk(mf.with_df, dm, hermi=1))


def test_matrices_without_orbitals_or_not_hermitian_go_to_the_fallback(df_pbe0_scf) -> None:
    mf = df_pbe0_scf(METHANOL, 0, **FEW_CYCLES)
    dm = mf.make_rdm1()
    calls = []

    def fallback(dm, hermi, with_j, with_k, *args):
        calls.append(hermi)
        return df_jk.get_jk(mf.with_df, dm, hermi, with_j, with_k)

    plain = np.array(dm)  # an initial guess carries no orbitals
    symmetric_df_jk(mf.with_df, plain, hermi=1, fallback=fallback)
    symmetric_df_jk(mf.with_df, dm, hermi=0, fallback=fallback)
    symmetric_df_jk(mf.with_df, dm, hermi=1, fallback=fallback)
    assert calls == [1, 0]
    # With no fallback given, PySCF's function serves the same cases.
    assert_same_jk(symmetric_df_jk(mf.with_df, plain), df_jk.get_jk(mf.with_df, plain, hermi=1))


def test_installed_k_keeps_the_scf_energy(df_pbe0_scf, monkeypatch) -> None:
    reference = df_pbe0_scf(METHANOL, 0, grid_level=1)
    mf = dft.RKS(reference.mol).density_fit(auxbasis="def2-universal-jkfit")
    mf.xc, mf.grids.level, mf.verbose = "pbe0", 1, 0
    install_symmetric_k(mf.with_df)
    install_symmetric_k(mf.with_df)  # idempotent: one wrapper
    updates = []
    dsyrk = df_jk_module.blas.dsyrk
    monkeypatch.setattr(df_jk_module, "blas", SimpleNamespace(
        dsyrk=lambda *a, **k: updates.append(1) or dsyrk(*a, **k)))
    mf.kernel()
    assert mf.converged and abs(mf.e_tot - reference.e_tot) < 1e-9
    # Every cycle after the first (whose guess carries no orbitals) took the dsyrk path.
    assert len(updates) >= mf.cycles - 1 > 0
