"""Faults on a real multi-process Dask cluster on loopback.

A scheduler and two workers run as separate processes (the ``dask scheduler``
and ``dask worker`` command lines, as on a real cluster). The work is real
and about half a second per item: GFN2-xTB relaxations of small rattled
molecules. The driver writes each result through :class:`Dataset`, as the
labelling stage does. Checked:

* a worker killed with SIGKILL mid-stage: every item is in the dataset exactly
  once, and the items the dead worker held were computed by the other one;
* a worker death that the scheduler may not retry becomes a recorded failure,
  and clearing the failures and rerunning computes exactly those items;
* the driver killed mid-stage and restarted: the stage completes, computing
  only what was missing, with no duplicate and no lost row;
* workers never receive the dataset's path and never open the database.

Every process started here is killed with its process group at teardown,
whether the test passed or not.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import psutil
import pytest
from ase import Atoms
from ase.build import molecule
from dask.distributed import Client

from qcell_nb.compute import MapSummary, map_items
from qcell_nb.store import Dataset
from qcell_nb.structures import structure_id

DASK = str(Path(sys.executable).with_name("dask"))
MOLECULES = ("CH3CH2OH", "trans-butane", "CH3COOH", "C6H6", "CH3CH2OCH3", "CH3CONH2")
STAGE = "04_faults"


def rattled_molecules(copies: int = 2) -> list[Atoms]:
    """Distinct start structures: each molecule rattled with ``copies`` seeds."""
    structures = []
    for seed in range(copies):
        for name in MOLECULES:
            atoms = molecule(name)
            atoms.rattle(0.15, seed=seed)
            atoms.info.update(name=f"{name}-{seed}", subset="dimers")
            structures.append(atoms)
    return structures


def relax(atoms: Atoms, fmax: float = 0.01) -> dict[str, Any]:
    """Worker side: GFN2-xTB relaxation; returns energy (eV), relaxed positions (Å) and the worker's pid."""
    from qcell_nb.calculators.tightbinding import optimise

    final = optimise(atoms, fmax=fmax, steps=200)[-1]
    return {"energy": float(final.info["xtb_energy"]), "relaxed_positions": final.positions,
            "pid": os.getpid()}


def label_into(dataset: Dataset, structures: list[Atoms], executor: str,
               after_each: Callable[[str], None] | None = None) -> tuple[MapSummary, Counter]:
    """The driver: compute what the dataset lacks, writing each result as it arrives.

    Returns the summary and how many results the driver received per id.
    """
    by_id = {structure_id(atoms): atoms for atoms in structures}
    done = dataset.done_ids()
    todo = [sid for sid in by_id if sid not in done]
    print(f"{len(by_id)} structures: {len(done)} already labelled, {len(todo)} to compute", flush=True)
    delivered: Counter = Counter()

    def store(sid: str, result: dict[str, Any]) -> None:
        delivered[sid] += 1
        dataset.add(by_id[sid], {"energy": result["energy"]}, sid=sid,
                    key_value_pairs={"stage": STAGE, "worker_pid": result["pid"]},
                    data={"relaxed_positions": result["relaxed_positions"]})
        if after_each is not None:
            after_each(sid)

    def fail(sid: str, error: str) -> None:
        dataset.record_failure(sid, by_id[sid].info["name"], STAGE, error)

    summary = map_items(relax, [by_id[sid] for sid in todo], todo, on_result=store, on_failure=fail,
                        executor=executor, retries=0, progress=False, description="GFN2-xTB relaxations")
    return summary, delivered


def sql_sids(db: Path) -> list[str]:
    """Every row's sid, straight from SQLite (duplicates included)."""
    with sqlite3.connect(db) as connection:
        rows = connection.execute("select key_value_pairs from systems").fetchall()
    return [json.loads(pairs)["sid"] for (pairs,) in rows]


# --- the cluster ------------------------------------------------------------

def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def _launch(args: list[str], directory: Path, started: list[subprocess.Popen]) -> subprocess.Popen:
    # The worker-side functions live in this module: workers import it, as they would import
    # any user's module on a cluster with one software environment.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    log = open(directory / "cluster.log", "a")
    # A session of its own, so that teardown can kill the process group.
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                               cwd=directory)
    started.append(process)
    return process


@dataclass
class LoopbackCluster:
    """A ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1."""

    address: str
    directory: Path
    workers: list[subprocess.Popen] = field(default_factory=list)

    def worker_process(self, pid: int) -> subprocess.Popen:
        """The ``dask worker`` process whose process tree holds ``pid``."""
        ancestors = {pid} | {parent.pid for parent in psutil.Process(pid).parents()}
        return next(process for process in self.workers if process.pid in ancestors)


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """One scheduler for the module; killed at the end, pass or fail."""
    directory = tmp_path_factory.mktemp("scheduler")
    started: list[subprocess.Popen] = []
    try:
        process = _launch([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                           "--scheduler-file", str(directory / "scheduler.json")], directory, started)
        deadline = time.time() + 90
        while not (directory / "scheduler.json").exists() and time.time() < deadline:
            assert process.poll() is None, (directory / "cluster.log").read_text()
            time.sleep(0.1)
        yield json.loads((directory / "scheduler.json").read_text())["address"]
    finally:
        for process in started:
            _kill_group(process)


@pytest.fixture
def started_processes():
    """Processes a test starts; killed with their groups at teardown, pass or fail."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        _kill_group(process)


@pytest.fixture
def cluster(scheduler, tmp_path, started_processes) -> LoopbackCluster:
    """Two fresh single-threaded workers for this test (so a test may kill them)."""
    cluster = LoopbackCluster(scheduler, tmp_path)
    # No nanny: SIGKILL takes the worker down for good, as when its machine dies.
    cluster.workers = [_launch([DASK, "worker", scheduler, "--nthreads", "1", "--nworkers", "1", "--no-nanny",
                                "--no-dashboard", "--host", "127.0.0.1", "--name", f"worker-{i}",
                                "--local-directory", str(tmp_path)], tmp_path, started_processes)
                       for i in range(2)]
    with Client(scheduler, timeout=60) as client:
        client.wait_for_workers(2, timeout=120)
        assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2, "workers of an earlier test linger"
    return cluster


def busy_worker(inspector: Client, timeout: float = 20.0) -> tuple[str, list[str]]:
    """A worker with tasks assigned, and their item keys (waits for one, up to ``timeout`` s)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        busy = {worker: tasks for worker, tasks in inspector.processing().items() if tasks}
        if busy:
            victim = sorted(busy)[0]
            return victim, [re.fullmatch(r"relax-(\w+)-\w+", str(task)).group(1) for task in busy[victim]]
        time.sleep(0.02)
    raise AssertionError("no worker had a task: the kill could not land mid-stage")


def kill_worker(cluster: LoopbackCluster, inspector: Client, address: str) -> int:
    """SIGKILL the worker at ``address``; returns its pid."""
    pid = inspector.run(os.getpid, workers=[address])[address]
    _kill_group(cluster.worker_process(pid))
    return pid


# --- tests ------------------------------------------------------------------

def test_a_worker_killed_mid_stage_loses_and_duplicates_nothing(cluster, tmp_path):
    structures = rattled_molecules()
    dataset = Dataset(tmp_path / "dataset.db")
    held: dict[str, list[str]] = {}
    killed: dict[str, int] = {}

    with Client(cluster.address) as inspector:
        def kill_a_busy_worker(sid: str) -> None:
            if killed or len(dataset) < 3:
                return
            # Runs in the driver while it is blocked here: nothing of the victim's can be
            # fetched between looking at its tasks and killing it.
            victim, held["sids"] = busy_worker(inspector)
            killed["pid"] = kill_worker(cluster, inspector, victim)

        started = time.perf_counter()
        summary, delivered = label_into(dataset, structures, cluster.address, after_each=kill_a_busy_worker)
        seconds = time.perf_counter() - started
        survivors = list(inspector.run(os.getpid).values())
    print(f"{len(structures)} relaxations on 2 workers, one killed after 3: {seconds:.1f} s")

    expected = {structure_id(atoms) for atoms in structures}
    assert killed and held["sids"], "the kill did not land mid-stage"
    assert survivors and killed["pid"] not in survivors
    assert summary.failed == {} and dataset.failures() == []
    assert set(delivered) == expected and set(delivered.values()) == {1}, "a result reached the driver twice"
    sids = sql_sids(tmp_path / "dataset.db")
    assert len(sids) == len(set(sids)) == len(expected) and set(sids) == expected
    rows = {row.sid: row for row in dataset.rows()}
    for sid in held["sids"]:
        assert rows[sid].worker_pid == survivors[0], f"{sid} was held by the dead worker"
    assert all(np.isfinite(row.energy) and row.data["relaxed_positions"].shape == (row.natoms, 3)
               for row in rows.values())


def _set_allowed_failures(dask_scheduler, value: int) -> int:
    previous, dask_scheduler.allowed_failures = dask_scheduler.allowed_failures, value
    return previous


def test_a_worker_death_the_scheduler_may_not_retry_is_recorded_and_retried(cluster, tmp_path):
    structures = rattled_molecules(copies=1)
    dataset = Dataset(tmp_path / "dataset.db")
    killed: list[int] = []

    with Client(cluster.address) as inspector:
        def kill_a_busy_worker(sid: str) -> None:
            if not killed:
                killed.append(kill_worker(cluster, inspector, busy_worker(inspector)[0]))

        # A worker death now fails the tasks it held at once (KilledWorker), like a node
        # lost for good on a batch system where every rerun would die too.
        previous = inspector.run_on_scheduler(_set_allowed_failures, value=0)
        try:
            summary, _ = label_into(dataset, structures, cluster.address, after_each=kill_a_busy_worker)
        finally:
            inspector.run_on_scheduler(_set_allowed_failures, value=previous)
    failures = dataset.failures()
    assert failures, "the dead worker's items should have failed (allowed-failures=0)"
    assert {f["sid"] for f in failures} == set(summary.failed)
    assert all("KilledWorker" in f["error"] for f in failures)
    labelled = {row.sid: row.mtime for row in dataset.rows()}
    assert len(labelled) + len(failures) == len(structures)

    cleared = dataset.clear_failures()
    assert {f["sid"] for f in cleared} == set(summary.failed) and dataset.failures() == []
    retried, delivered = label_into(dataset, structures, cluster.address)
    assert set(delivered) == set(summary.failed), "the retry computed other items than the failed ones"
    assert retried.failed == {} and dataset.failures() == []
    assert {row.sid: row.mtime for row in dataset.rows() if row.sid in labelled} == labelled
    assert sorted(sql_sids(tmp_path / "dataset.db")) == sorted(structure_id(a) for a in structures)


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
import test_faults
from qcell_nb.store import Dataset
test_faults.label_into(Dataset(sys.argv[1]), test_faults.rattled_molecules(), sys.argv[2])
"""


def test_a_driver_killed_mid_stage_resumes_without_duplicates(cluster, tmp_path, started_processes):
    db = tmp_path / "dataset.db"
    script = textwrap.dedent(DRIVER.format(tests=str(Path(__file__).parent)))
    command = [sys.executable, "-c", script, str(db), cluster.address]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
    started_processes.append(first)
    deadline = time.time() + 120
    while first.poll() is None and time.time() < deadline and (not db.exists() or len(sql_sids(db)) < 3):
        time.sleep(0.1)
    assert first.poll() is None, f"the driver ended before it was killed: {first.stdout.read().decode()}"
    _kill_group(first)
    rows_at_kill = len(Dataset(db))
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    seconds = time.perf_counter() - started
    assert second.returncode == 0, second.stdout + second.stderr
    print(f"driver killed after {rows_at_kill} rows; both drivers took {seconds:.1f} s")

    expected = sorted(structure_id(atoms) for atoms in rattled_molecules())
    assert 3 <= rows_at_kill < len(expected)
    assert (f"{len(expected)} structures: {rows_at_kill} already labelled, "
            f"{len(expected) - rows_at_kill} to compute") in second.stdout
    assert sorted(sql_sids(db)) == expected, "rows lost or duplicated"
    assert Dataset(db).failures() == []


def _touches_dataset(text: str, db: Path) -> bool:
    return str(db) in text or db.name in text


def _worker_side_call(atoms: Atoms, **kwargs: Any) -> dict[str, Any]:
    """Worker side: report what this call received and which files this process has open."""
    return {"received": repr((atoms.info, kwargs)), "open_files": [f.path for f in psutil.Process().open_files()],
            "pid": os.getpid()}


def test_workers_never_receive_or_open_the_dataset(cluster, tmp_path):
    dataset = Dataset(tmp_path / "dataset.db")
    dataset.update_metadata(level_of_theory="GFN2-xTB")  # the driver holds the file
    structures = rattled_molecules(copies=1)
    seen: dict[str, dict[str, Any]] = {}
    map_items(_worker_side_call, structures, [structure_id(a) for a in structures], on_result=seen.__setitem__,
              on_failure=pytest.fail, executor=cluster.address, progress=False, fmax=0.01)
    assert len({result["pid"] for result in seen.values()} - {os.getpid()}) >= 1
    for result in seen.values():
        assert not _touches_dataset(result["received"], Path(dataset.path))
        assert not any(_touches_dataset(path, Path(dataset.path)) for path in result["open_files"])
