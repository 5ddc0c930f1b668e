"""Faults on a real multi-process Dask cluster on loopback.

A scheduler and two workers run as separate processes (the ``dask scheduler``
and ``dask worker`` command lines, as on a real cluster). The work is real
and about half a second per item: GFN2-xTB relaxations of small rattled
molecules with the package's own engine (``tightbinding.optimise``, what
stage 04 runs). The driver writes each result through :class:`Dataset`, as
the labelling stage does. Checked:

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
from dask.distributed import Client, get_task_stream

from qcell_nb.calculators.tightbinding import optimise
from qcell_nb.compute import MapSummary, map_items
from qcell_nb.store import Dataset, write_structures
from qcell_nb.structures import structure_id

DASK = str(Path(sys.executable).with_name("dask"))
MOLECULES = ("CH3CH2OH", "trans-butane", "CH3COOH", "C6H6", "CH3CH2OCH3", "CH3CONH2")
STAGE = "04_faults"
FMAX = 0.01  # eV/Å: tight enough that a relaxation takes about half a second


def rattled_molecules(count: int) -> list[Atoms]:
    """``count`` distinct start structures: the molecules in turn, rattled with a new seed each round."""
    structures = []
    for index in range(count):
        name, seed = MOLECULES[index % len(MOLECULES)], index // len(MOLECULES)
        atoms = molecule(name)
        atoms.rattle(0.15, seed=seed)
        atoms.info.update(name=f"{name}-{seed}", subset="dimers")
        structures.append(atoms)
    return structures


def label_into(dataset: Dataset, structures: list[Atoms], executor: str,
               after_each: Callable[[str], None] | None = None) -> tuple[MapSummary, Counter]:
    """The driver: relax what the dataset lacks, writing each result as it arrives.

    Returns the summary and how many results the driver received per id.
    """
    by_id = {structure_id(atoms): atoms for atoms in structures}
    done = dataset.done_ids()
    todo = [sid for sid in by_id if sid not in done]
    delivered: Counter = Counter()

    def store(sid: str, frames: list[Atoms]) -> None:
        delivered[sid] += 1
        final = frames[-1]
        dataset.add(by_id[sid], {"energy": final.info["xtb_energy"]}, sid=sid, key_value_pairs={"stage": STAGE},
                    data={"relaxed_positions": final.positions})
        if after_each is not None:
            after_each(sid)

    def fail(sid: str, error: str) -> None:
        dataset.record_failure(sid, by_id[sid].info["name"], STAGE, error)

    summary = map_items(optimise, [by_id[sid] for sid in todo], todo, on_result=store, on_failure=fail,
                        executor=executor, retries=0, progress=False, fmax=FMAX)
    return summary, delivered


#: The same driver as a script of its own (light imports), for the driver-kill test.
DRIVER = """
import sys
from qcell_nb.calculators.tightbinding import optimise
from qcell_nb.compute import map_items
from qcell_nb.store import Dataset, read_structures
from qcell_nb.structures import structure_id

structures_db, dataset_db, executor, fmax = sys.argv[1:5]
by_id = {structure_id(atoms): atoms for atoms in read_structures(structures_db)}
dataset = Dataset(dataset_db)
done = dataset.done_ids()
todo = [sid for sid in by_id if sid not in done]
print(f"{len(by_id)} structures: {len(done)} already labelled, {len(todo)} to compute", flush=True)

def store(sid, frames):
    dataset.add(by_id[sid], {"energy": frames[-1].info["xtb_energy"]}, sid=sid,
                data={"relaxed_positions": frames[-1].positions})

def fail(sid, error):
    dataset.record_failure(sid, by_id[sid].info["name"], "04_faults", error)

summary = map_items(optimise, [by_id[sid] for sid in todo], todo, on_result=store, on_failure=fail,
                    executor=executor, retries=0, progress=False, fmax=float(fmax))
print(f"computed {summary.succeeded}, failed {len(summary.failed)}", flush=True)
"""


def sql_sids(db: Path) -> list[str]:
    """Every row's sid, straight from SQLite (duplicates included; none before the table exists)."""
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=10) as connection:
        try:
            rows = connection.execute("select key_value_pairs from systems").fetchall()
        except sqlite3.OperationalError:  # the driver has created the file but not its tables yet
            return []
    return [json.loads(pairs)["sid"] for (pairs,) in rows]


# --- the cluster ------------------------------------------------------------

def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def _launch(args: list[str], directory: Path, started: list[subprocess.Popen], **kwargs: Any) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kwargs.setdefault("stdout", open(directory / "cluster.log", "a"))
    kwargs.setdefault("stderr", subprocess.STDOUT)
    # A session of its own, so that teardown can kill the process group.
    process = subprocess.Popen(args, env=env, start_new_session=True, cwd=directory, **kwargs)
    started.append(process)
    return process


@dataclass
class LoopbackCluster:
    """A ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1."""

    address: str
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
        # Dashboard on a free port: `--no-dashboard` still serves one on 8787, which others may hold.
        process = _launch([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0",
                           "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(directory / "scheduler.json")],
                          directory, started)
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
    with Client(scheduler, timeout=60) as client:
        deadline = time.time() + 30  # the scheduler forgets an earlier test's killed workers
        while client.scheduler_info(n_workers=-1)["workers"] and time.time() < deadline:
            time.sleep(0.1)
    cluster = LoopbackCluster(scheduler)
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
            return victim, [item_key(task) for task in busy[victim]]
        time.sleep(0.02)
    raise AssertionError("no worker had a task: the kill could not land mid-stage")


def item_key(task: Any) -> str:
    """The item key inside a map_items task name (``optimise-<sid>-<batch>``)."""
    return re.fullmatch(r"optimise-(\w+)-\w+", str(task)).group(1)


def kill_worker(cluster: LoopbackCluster, inspector: Client, address: str) -> int:
    """SIGKILL the worker at ``address``; returns its pid."""
    pid = inspector.run(os.getpid, workers=[address])[address]
    _kill_group(cluster.worker_process(pid))
    return pid


# --- tests ------------------------------------------------------------------

def test_a_worker_killed_mid_stage_loses_and_duplicates_nothing(cluster, tmp_path):
    # Enough items that work is left when the (possibly starved) driver gets its second result.
    structures = rattled_molecules(12)
    dataset = Dataset(tmp_path / "dataset.db")
    held: dict[str, Any] = {}

    with Client(cluster.address) as inspector:
        def kill_a_busy_worker(sid: str) -> None:
            if held or len(dataset) < 2:
                return
            # Runs in the driver while it is blocked here: nothing of the victim's can be
            # fetched between looking at its tasks and killing it.
            held["worker"], held["sids"] = busy_worker(inspector)
            kill_worker(cluster, inspector, held["worker"])

        started = time.perf_counter()
        # The scheduler's record of finished tasks says which worker computed which item.
        with get_task_stream(client=inspector) as stream:
            summary, delivered = label_into(dataset, structures, cluster.address, after_each=kill_a_busy_worker)
        seconds = time.perf_counter() - started
        survivors = list(inspector.scheduler_info(n_workers=-1)["workers"])
    computed_on = {item_key(task["key"]): task["worker"] for task in stream.data if task.get("status") == "OK"}
    print(f"{len(structures)} relaxations on 2 workers, one killed after 2: {seconds:.1f} s")

    expected = {structure_id(atoms) for atoms in structures}
    assert held.get("sids"), "the kill did not land mid-stage"
    assert len(survivors) == 1 and held["worker"] not in survivors
    assert summary.failed == {} and dataset.failures() == []
    assert set(delivered) == expected and set(delivered.values()) == {1}, "a result reached the driver twice"
    sids = sql_sids(tmp_path / "dataset.db")
    assert len(sids) == len(set(sids)) == len(expected) and set(sids) == expected
    for sid in held["sids"]:
        assert computed_on[sid] == survivors[0], f"{sid} held by the dead worker was not recomputed elsewhere"
    rows = list(dataset.rows())
    assert all(np.isfinite(row.energy) and row.data["relaxed_positions"].shape == (row.natoms, 3) for row in rows)


def test_a_worker_death_the_scheduler_may_not_retry_is_recorded_and_retried(cluster, tmp_path):
    structures = rattled_molecules(10)
    dataset = Dataset(tmp_path / "dataset.db")
    killed: list[int] = []

    def set_allowed_failures(dask_scheduler, value: int) -> int:
        # Defined here, so it travels to the scheduler by value.
        previous, dask_scheduler.allowed_failures = dask_scheduler.allowed_failures, value
        return previous

    with Client(cluster.address) as inspector:
        def kill_a_busy_worker(sid: str) -> None:
            if not killed:
                killed.append(kill_worker(cluster, inspector, busy_worker(inspector)[0]))

        # A worker death now fails the tasks it held at once (KilledWorker), like a node
        # lost for good on a batch system where every rerun would die too.
        previous = inspector.run_on_scheduler(set_allowed_failures, value=0)
        try:
            summary, _ = label_into(dataset, structures, cluster.address, after_each=kill_a_busy_worker)
        finally:
            inspector.run_on_scheduler(set_allowed_failures, value=previous)
    failures = dataset.failures()
    assert failures, "the dead worker's items should have failed (allowed-failures=0)"
    assert {f["sid"] for f in failures} == set(summary.failed)
    assert all("KilledWorker" in f["error"] for f in failures), failures
    labelled = {row.sid: row.mtime for row in dataset.rows()}
    assert len(labelled) + len(failures) == len(structures)

    cleared = dataset.clear_failures()
    assert {f["sid"] for f in cleared} == set(summary.failed) and dataset.failures() == []
    retried, delivered = label_into(dataset, structures, cluster.address)
    assert set(delivered) == set(summary.failed), "the retry computed other items than the failed ones"
    assert retried.failed == {} and dataset.failures() == []
    assert {row.sid: row.mtime for row in dataset.rows() if row.sid in labelled} == labelled
    assert sorted(sql_sids(tmp_path / "dataset.db")) == sorted(structure_id(a) for a in structures)


def test_a_driver_killed_mid_stage_resumes_without_duplicates(cluster, tmp_path, started_processes):
    structures = rattled_molecules(8)
    write_structures(tmp_path / "structures.db", structures)
    db = tmp_path / "dataset.db"
    command = [sys.executable, "-c", DRIVER, str(tmp_path / "structures.db"), str(db), cluster.address, str(FMAX)]
    started = time.perf_counter()
    first = _launch(command, tmp_path, started_processes, stdout=subprocess.PIPE)
    deadline = time.time() + 120
    while first.poll() is None and time.time() < deadline and len(sql_sids(db)) < 2:
        time.sleep(0.05)
    assert first.poll() is None, f"the driver ended before it was killed: {first.stdout.read().decode()}"
    killed_after = time.perf_counter() - started
    _kill_group(first)
    rows_at_kill = len(Dataset(db))
    second = _launch(command, tmp_path, started_processes, stdout=subprocess.PIPE, text=True)
    try:
        output, _ = second.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        _kill_group(second)
        pytest.fail(f"the restarted driver did not finish: {second.stdout.read()}")
    seconds = time.perf_counter() - started
    assert second.returncode == 0, output
    print(f"driver killed after {rows_at_kill} rows at {killed_after:.1f} s; both drivers took {seconds:.1f} s")

    expected = sorted(structure_id(atoms) for atoms in structures)
    assert 2 <= rows_at_kill < len(expected)
    missing = len(expected) - rows_at_kill
    assert f"{len(expected)} structures: {rows_at_kill} already labelled, {missing} to compute" in output
    assert f"computed {missing}, failed 0" in output
    assert sorted(sql_sids(db)) == expected, "rows lost or duplicated"
    assert Dataset(db).failures() == []


def test_workers_never_receive_or_open_the_dataset(cluster, tmp_path):
    dataset = Dataset(tmp_path / "dataset.db")
    dataset.update_metadata(level_of_theory="GFN2-xTB")  # the file exists and the driver has used it
    structures = rattled_molecules(4)

    def worker_side(atoms: Atoms, **kwargs: Any) -> dict[str, Any]:
        # Defined here, so it travels by value: what a worker receives and has open.
        import os

        import psutil
        return {"received": repr((atoms.info, kwargs)), "pid": os.getpid(),
                "open_files": [f.path for f in psutil.Process().open_files()]}

    seen: dict[str, dict[str, Any]] = {}
    map_items(worker_side, structures, [structure_id(a) for a in structures], on_result=seen.__setitem__,
              on_failure=pytest.fail, executor=cluster.address, progress=False, fmax=FMAX)
    assert len(seen) == len(structures) and os.getpid() not in {result["pid"] for result in seen.values()}
    for result in seen.values():
        assert "dataset" not in result["received"] and str(tmp_path) not in result["received"]
        assert not any(path.startswith(str(tmp_path / "dataset")) for path in result["open_files"])
