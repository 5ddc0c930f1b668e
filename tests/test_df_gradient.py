"""DF J/K gradients from the SCF's 3-index tensors, against PySCF's own."""

from __future__ import annotations

import numpy as np
import pytest
from pyscf.df.grad import rhf as df_rhf_grad

from qcell_nb.calculators import df_gradient
from qcell_nb.calculators.df_gradient import fast_df_gradient

WATER = "O 0 0 0.12; H 0.05 0.76 -0.47; H 0 -0.76 -0.49"
OH = "O 0 0 0; H 0.1 0 0.97"
#: Tight enough that the gradients compare at 1e-10 and below.
CONVERGED = {"conv_tol": 1e-11}


def gradient(mf, ours: bool) -> np.ndarray:
    grad = mf.nuc_grad_method()
    grad.verbose = 0
    if not ours:
        return grad.kernel()
    with fast_df_gradient():
        return grad.kernel()


@pytest.mark.parametrize("atom, spin", [(WATER, 0), (OH, 1)])
def test_gradient_equals_pyscf(df_pbe0_scf, atom: str, spin: int, monkeypatch) -> None:
    mf = df_pbe0_scf(atom, spin, **CONVERGED)
    used = []
    solve = df_gradient.cderi_rhojk
    monkeypatch.setattr(df_gradient, "cderi_rhojk", lambda *a, **k: used.append(1) or solve(*a, **k))
    reference = gradient(mf, ours=False)
    ours = gradient(mf, ours=True)
    assert used  # the swap reached PySCF's gradient
    assert df_rhf_grad._cho_solve_rhojk is df_gradient.PYSCF_CHO_SOLVE_RHOJK  # restored
    assert df_rhf_grad.get_jk is df_gradient.PYSCF_GET_JK
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-10)
    assert np.abs(reference).max() > 1e-3


def test_rhoj_and_rhok_equal_pyscf_and_fall_back_without_memory(df_pbe0_scf, monkeypatch) -> None:
    mf = df_pbe0_scf(WATER, 0, **CONVERGED)
    grad = mf.nuc_grad_method()
    auxmol = mf.with_df.auxmol
    orbol, orbor = df_rhf_grad._decompose_rdm1(grad, mf.mol, mf.make_rdm1())
    rhoj_ref, rhok_ref = df_gradient.PYSCF_CHO_SOLVE_RHOJK(grad, mf.mol, auxmol, orbol, orbor)
    rhoj, rhok = df_gradient.cderi_rhojk(grad, mf.mol, auxmol, orbol, orbor)
    naux = auxmol.nao
    np.testing.assert_allclose(rhoj, rhoj_ref, rtol=0, atol=1e-10 * np.abs(rhoj_ref).max())
    np.testing.assert_allclose(rhok(0, 3, naux - 2), rhok_ref(0, 3, naux - 2), rtol=0,
                               atol=1e-10 * np.abs(rhok_ref(0, 0, naux)).max())
    # no memory to spare: PySCF's own (file-backed) solver
    called = []
    monkeypatch.setattr(df_gradient, "available_memory_bytes", lambda: 0)
    monkeypatch.setattr(df_gradient, "PYSCF_CHO_SOLVE_RHOJK", lambda *a: called.append(1) or (rhoj_ref, rhok_ref))
    assert df_gradient.cderi_rhojk(grad, mf.mol, auxmol, orbol, orbor)[0] is rhoj_ref and called


def test_out_of_core_tensors_are_read_from_pyscfs_file(df_pbe0_scf, monkeypatch) -> None:
    # A memory limit below the tensors' size makes PySCF keep them on disk (an HDF5 file name);
    # rhoj/rhok are then read from that file in blocks, not recomputed by PySCF's solver.
    mf = df_pbe0_scf(WATER, 0, max_memory=1, **CONVERGED)
    assert not isinstance(mf.with_df._cderi, np.ndarray)
    reference = gradient(mf, ours=False)
    monkeypatch.setattr(df_gradient, "PYSCF_CHO_SOLVE_RHOJK", lambda *a: pytest.fail("recomputed the tensors"))
    np.testing.assert_allclose(gradient(mf, ours=True), reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize("atom, spin", [
    ("O 0 0 0.12; H 0.05 0.76 -0.47; C 0.1 -0.8 -0.9; H 1.0 -1.1 -1.4; H -0.8 -1.2 -1.3; H 0.2 -0.3 -1.8", 0),
    ("O 0 0 0; H 0.1 0 0.97; C 0.3 1.2 -0.4; H 1.1 1.5 -0.9; H -0.5 1.6 -0.8", 1),
])
def test_jk_gradient_without_ip2_equals_pyscf(df_pbe0_scf, atom: str, spin: int, monkeypatch) -> None:
    # (mn|dP) = -[(dm n|P) + (m dn|P)]: the aux-basis terms from the ip1 integrals, for J and K
    # apart (cross-spin blocks included), on molecules without symmetry (so that no component
    # is zero by accident).
    mf = df_pbe0_scf(atom, spin, **CONVERGED)
    grad = mf.nuc_grad_method()
    dm = mf.make_rdm1()
    with fast_df_gradient():  # the same rhoj/rhok on both sides: only the ip2 terms differ
        vj_ref, vk_ref = df_gradient.PYSCF_GET_JK(grad, mf.mol, dm)
    ip2 = []
    wrapper = df_rhf_grad._int3c_wrapper
    monkeypatch.setattr(df_rhf_grad, "_int3c_wrapper", lambda mol, aux, intor, aosym: ip2.append(intor == "int3c2e_ip2")
                        or wrapper(mol, aux, intor, aosym))
    with fast_df_gradient():
        vj, vk = df_rhf_grad.get_jk(grad, mf.mol, dm)
    assert ip2 and not any(ip2)  # the ip1 pass ran, the second pass over the integrals is gone
    for ours, reference in [(vj, vj_ref), (vk, vk_ref), (vj.aux, vj_ref.aux), (vk.aux, vk_ref.aux)]:
        assert ours.shape == reference.shape
        # 1e-10: the block sizes, hence the summation order, follow the memory left free by
        # whatever ran before in the process (1.2e-11 seen after the test_pbe0 labels)
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-10 * np.abs(reference).max())
    assert np.abs(vk_ref.aux).max() > 1e-5


def test_untagged_densities_and_j_only_take_pyscfs_jk_gradient(df_pbe0_scf, monkeypatch) -> None:
    called = []
    monkeypatch.setattr(df_gradient, "PYSCF_GET_JK", lambda *a: called.append(1) or ("j", "k"))
    mf = df_pbe0_scf(WATER, 0, **CONVERGED)
    grad = mf.nuc_grad_method()
    assert df_gradient.get_jk(grad, mf.mol, np.asarray(mf.make_rdm1())) == ("j", "k")  # no orbitals
    assert df_gradient.get_jk(grad, mf.mol, mf.make_rdm1(), with_k=False) == ("j", "k")
    assert len(called) == 2
    assert df_gradient.get_jk(grad, mf.mol, mf.make_rdm1())[1].aux.shape == (1, 1, 3, 3)


def test_little_memory_shrinks_the_aux_blocks_not_the_result(df_pbe0_scf, monkeypatch) -> None:
    # With almost no memory left the (d m, n|P) blocks shrink to one auxiliary shell each; the
    # gradient is the same, since each auxiliary function enters independently.
    from pyscf import lib

    mf = df_pbe0_scf(WATER, 0, **CONVERGED)
    grad = mf.nuc_grad_method()
    grad.verbose = 0
    dm = mf.make_rdm1()
    blocks = []
    partition = df_rhf_grad.balance_partition
    monkeypatch.setattr(df_rhf_grad, "balance_partition",
                        lambda ao_loc, blksize, *a: blocks.append(blksize) or partition(ao_loc, blksize, *a))
    with fast_df_gradient():
        vj_ref, vk_ref = df_rhf_grad.get_jk(grad, mf.mol, dm)
        grad.max_memory = lib.current_memory()[0] + 0.01  # MB
        vj, vk = df_rhf_grad.get_jk(grad, mf.mol, dm)
    assert blocks == [df_gradient.AUX_BLOCK_FUNCTIONS, 1]
    for ours, reference in [(vj, vj_ref), (vk, vk_ref), (vj.aux, vj_ref.aux), (vk.aux, vk_ref.aux)]:
        # 1e-10 relative, as above: the summation order follows the block sizes (2e-12 seen in CI)
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-10 * np.abs(reference).max())
