"""PySCF's memory budget: from the machine or the Dask worker, and what it changes in a label."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from qcell_nb.calculators import memory
from qcell_nb.calculators.memory import BUDGET_FRACTION, MINIMUM_BUDGET_MB, memory_budget_mb
from qcell_nb.calculators.pbe0 import PBE0MBD


@pytest.fixture(autouse=True)
def free_atom_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("QCELL_NB_CACHE", str(tmp_path_factory.getbasetemp() / "qcell_cache"))


@pytest.fixture
def no_pyscf_override(monkeypatch):
    monkeypatch.delenv("PYSCF_MAX_MEMORY", raising=False)


@pytest.mark.parametrize("bad", [0, -100, float("nan"), float("inf"), "lots"])
def test_bad_budget_is_named(bad) -> None:
    with pytest.raises(ValueError, match="max_memory_mb"):
        memory_budget_mb(bad)


def test_requested_budget_is_used_as_given() -> None:
    assert memory_budget_mb(123.0) == 123.0
    assert memory_budget_mb("2500") == 2500.0


def test_automatic_budget_follows_the_machine_and_the_worker(monkeypatch, no_pyscf_override) -> None:
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 20_000_000_000)
    monkeypatch.setattr(memory, "dask_worker_memory_limit_bytes", lambda: None)
    assert memory_budget_mb() == pytest.approx(BUDGET_FRACTION * 20_000)
    monkeypatch.setattr(memory, "dask_worker_memory_limit_bytes", lambda: 4_000_000_000)
    assert memory_budget_mb() == pytest.approx(BUDGET_FRACTION * 4_000)  # the worker's limit is smaller
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 100_000_000)
    assert memory_budget_mb() == MINIMUM_BUDGET_MB


def test_pyscf_environment_variable_wins(monkeypatch) -> None:
    from pyscf.lib import param

    monkeypatch.setenv("PYSCF_MAX_MEMORY", "1234")
    monkeypatch.setattr(param, "MAX_MEMORY", 1234)
    assert memory_budget_mb() == 1234.0


def test_real_machine_budget_is_above_pyscf_default_where_memory_allows(no_pyscf_override) -> None:
    available = memory.available_memory_bytes()
    assert available > 0  # /proc/meminfo or sysconf is readable here
    budget = memory_budget_mb()
    assert budget == pytest.approx(max(MINIMUM_BUDGET_MB, BUDGET_FRACTION * available / 1e6), rel=0.05)


def _worker_limit() -> int | None:
    return memory.dask_worker_memory_limit_bytes()


def test_dask_worker_limit_is_read_inside_a_worker() -> None:
    distributed = pytest.importorskip("distributed")
    assert memory.dask_worker_memory_limit_bytes() is None  # not in a worker
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  memory_limit="3GB", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        assert client.submit(_worker_limit).result() == 3_000_000_000


def water() -> Atoms:
    return Atoms("OH2", positions=[[0.0, 0.03, 0.1173], [0.05, 0.7572, -0.4692], [0.0, -0.7572, -0.4892]],
                 info={"name": "water"})


def test_budget_decides_where_the_df_tensors_live_not_the_label(no_pyscf_override) -> None:
    """A budget too small for the 3-index tensors sends them to a file (pair-screened, read by the
    SCF and the gradient in blocks); the label is the same to round-off."""
    results = {}
    for budget in (None, 1.0):
        atoms = water()
        atoms.calc = PBE0MBD(max_memory_mb=budget, mbd=None)
        atoms.get_forces()
        results[budget] = atoms.calc.results
    in_memory, on_disk = results[None], results[1.0]
    assert in_memory["df_tensors_in_memory"] and not on_disk["df_tensors_in_memory"]
    assert on_disk["max_memory_mb"] == 1.0 and in_memory["max_memory_mb"] >= MINIMUM_BUDGET_MB
    assert on_disk["energy"] == pytest.approx(in_memory["energy"], abs=1e-8)
    np.testing.assert_allclose(on_disk["forces"], in_memory["forces"], atol=1e-7)


def test_label_keeps_where_the_tensors_lived(no_pyscf_override) -> None:
    """The dataset row says why a label was slow: its budget and whether the tensors went to disk."""
    from qcell_nb.calculators.pbe0 import label_structure

    result = label_structure(water(), max_memory_mb=1.0, mbd=None)
    assert result["max_memory_mb"] == 1.0 and result["df_tensors_in_memory"] is False


def _heap_blocks(total_mb: float) -> list[np.ndarray]:
    """Arrays small enough (40 kB) that glibc serves them from its heap, not from fresh mappings."""
    return [np.ones(5000) for _ in range(int(total_mb * 1e6 / 40e3))]


def test_released_memory_goes_back_to_the_system() -> None:
    """Freed heap memory stays with the process until it is handed back (glibc keeps it)."""
    before = memory.resident_mb()
    blocks = _heap_blocks(400)
    grown = memory.resident_mb()
    assert grown - before > 300
    del blocks
    if not memory.release_freed_memory():
        pytest.skip("no glibc malloc_trim here")
    assert memory.resident_mb() < grown - 300


def test_memory_is_returned_only_after_a_block_that_grew_the_process(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(memory, "release_freed_memory", lambda: calls.append(1))
    kept = []
    with memory.memory_returned(threshold_mb=1e6):
        kept.append(_heap_blocks(100))
    assert calls == []
    with memory.memory_returned(threshold_mb=50):
        kept.append(_heap_blocks(100))
    assert calls == [1]
    with pytest.raises(RuntimeError), memory.memory_returned(threshold_mb=50):  # also when the block fails
        kept.append(_heap_blocks(100))
        raise RuntimeError("label failed")
    assert calls == [1, 1]


def test_label_hands_its_memory_back_when_it_grew_the_process(monkeypatch) -> None:
    from qcell_nb.calculators.pbe0 import label_structure

    calls = []
    monkeypatch.setattr(memory, "release_freed_memory", lambda: calls.append(1))
    monkeypatch.setattr(memory, "RELEASE_THRESHOLD_MB", -np.inf)  # any label counts as large
    result = label_structure(water(), mbd=None)
    assert calls == [1] and np.isfinite(result["energy"])
