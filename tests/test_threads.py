"""BLAS thread limits around the grid loops and the whole label."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule
from threadpoolctl import threadpool_info, threadpool_limits

from qcell_nb.calculators import pbe0, threads
from qcell_nb.calculators.pbe0 import PBE0MBD, label_structure


def blas_thread_counts() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


@pytest.fixture
def two_blas_threads():
    """Every BLAS pool on 2 threads for the test (the limits are meaningless at 1 already)."""
    with threadpool_limits(limits=2, user_api="blas"):
        assert max(blas_thread_counts()) == 2
        yield


def test_limit_holds_inside_and_comes_back_after(two_blas_threads) -> None:
    before = blas_thread_counts()
    with threads.single_threaded_blas():
        assert set(blas_thread_counts()) == {1}
    assert blas_thread_counts() == before
    with threads.blas_threads(None):  # None leaves the pools alone
        assert blas_thread_counts() == before


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "1"])
def test_bad_thread_counts_are_named(bad) -> None:
    with pytest.raises(ValueError, match="blas_threads="):
        threads.blas_threads(bad)
    with pytest.raises(ValueError, match="blas_threads="):
        PBE0MBD(blas_threads=bad).resolved_parameters(3)


def test_label_runs_on_one_blas_thread_and_restores_it(two_blas_threads, monkeypatch) -> None:
    seen = []
    run_scf = pbe0.run_scf

    def recording_run_scf(*args, **kwargs):
        seen.append(blas_thread_counts())
        return run_scf(*args, **kwargs)

    monkeypatch.setattr(pbe0, "run_scf", recording_run_scf)
    params = {"basis": "sto-3g", "mbd": None, "grid_level": 1}
    one = label_structure(molecule("H2O"), **params)
    assert seen and set(seen[0]) == {1}
    assert max(blas_thread_counts()) == 2
    free = label_structure(molecule("H2O"), blas_threads=None, **params)
    assert max(seen[1]) == 2
    # Same numbers either way (a resource setting, not a level of theory).
    assert abs(one["energy"] - free["energy"]) < 1e-9
    np.testing.assert_allclose(one["forces"], free["forces"], rtol=0, atol=1e-9)
    assert "blas_threads" in pbe0.RESOURCE_PARAMETERS
