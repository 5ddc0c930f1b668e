"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest
from pyscf import dft, gto


@pytest.fixture
def df_pbe0_scf():
    """A function that runs a density-fitted PBE0 SCF (def2-SVP, def2-universal-jkfit) and returns it.

    ``(atom, spin, max_memory=None, grid_level=2, **settings)``: ``spin`` 0 gives RKS, else UKS;
    ``max_memory`` (MB) caps the molecule, the SCF and the DF object alike (1 MB puts the DF
    tensors in a file); ``settings`` are set on the SCF object (``conv_tol``, ``max_cycle``...).
    """
    def run(atom: str, spin: int, max_memory: int | None = None, grid_level: int = 2, **settings):
        mol = gto.M(atom=atom, basis="def2-svp", spin=spin, verbose=0)
        if max_memory is not None:
            mol.max_memory = max_memory
        mf = (dft.RKS(mol) if spin == 0 else dft.UKS(mol)).density_fit(auxbasis="def2-universal-jkfit")
        mf.xc, mf.grids.level = "pbe0", grid_level
        for name, value in settings.items():
            setattr(mf, name, value)
        if max_memory is not None:
            mf.max_memory = mf.with_df.max_memory = max_memory
        mf.kernel()
        return mf
    return run
