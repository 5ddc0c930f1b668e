"""Run many independent calculations: in-process or on a Dask cluster.

One small interface, :func:`map_items`, serves every stage that labels or
optimises structures. Workers compute and return plain results; the caller
(the driver) receives each result as it completes and is the only writer of
the dataset. A failing item is reported to ``on_failure`` with its error text
and never stops the others.

Executors
---------
``"serial"``   in this process, one item after another (debugging, tiny runs)
``"local"``    a Dask ``LocalCluster`` of worker processes on this machine
``"tcp://..."``  the address of a running Dask scheduler (any cluster)
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm


@dataclass
class MapSummary:
    """What a :func:`map_items` call did: counts and failed keys with errors."""

    submitted: int = 0
    succeeded: int = 0
    failed: dict[Hashable, str] = field(default_factory=dict)
    dashboard: str | None = None


def _error_text(exc: BaseException) -> str:
    """One line naming the exception type and message (the traceback's last frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def default_workers() -> int:
    """Worker processes for a local cluster: one per core (each single-threaded)."""
    return max(1, os.cpu_count() or 1)


def map_items(
    func: Callable[..., Any],
    items: Sequence[Any],
    keys: Sequence[Hashable],
    *,
    on_result: Callable[[Hashable, Any], None],
    on_failure: Callable[[Hashable, str], None],
    executor: str = "local",
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    retries: int = 1,
    progress: bool = True,
    description: str = "items",
    **func_kwargs: Any,
) -> MapSummary:
    """Apply ``func(item, **func_kwargs)`` to every item; hand results back as they finish.

    Parameters
    ----------
    func:
        A picklable, module-level function.
    items, keys:
        The work and one unique key per item (a structure id, say).
    on_result, on_failure:
        Called in this process with ``(key, result)`` or ``(key, error_text)``.
        ``on_result`` should persist the result at once: whatever it has
        stored survives a crash of the driver.
    executor:
        ``"serial"``, ``"local"`` or a scheduler address ``"tcp://host:port"``.
    n_workers, threads_per_worker:
        Size of a local cluster (default: one single-threaded worker per core;
        one thread each because PySCF and JAX already use the core well).
    retries:
        Extra attempts per item on a Dask cluster, for workers that die;
        a deterministic error fails again and is then reported.
    """
    if len(items) != len(keys):
        raise ValueError(f"map_items: {len(items)} items but {len(keys)} keys")
    if len(set(keys)) != len(keys):
        raise ValueError("map_items: keys are not unique")
    summary = MapSummary(submitted=len(items))
    if not items:
        return summary
    bar = tqdm(total=len(items), desc=description, disable=not progress)

    def handle_ok(key: Hashable, value: Any) -> None:
        on_result(key, value)
        summary.succeeded += 1
        bar.update(1)

    def handle_error(key: Hashable, text: str) -> None:
        summary.failed[key] = text
        on_failure(key, text)
        bar.update(1)

    try:
        if executor == "serial":
            for key, item in zip(keys, items):
                try:
                    value = func(item, **func_kwargs)
                except Exception as exc:  # noqa: BLE001 - every failure is recorded, none stops the stage
                    handle_error(key, _error_text(exc))
                else:
                    handle_ok(key, value)
            return summary
        _map_on_dask(func, items, keys, func_kwargs, executor, n_workers, threads_per_worker,
                     retries, summary, handle_ok, handle_error)
        return summary
    finally:
        bar.close()


def _map_on_dask(func, items, keys, func_kwargs, executor, n_workers, threads_per_worker,
                 retries, summary, handle_ok, handle_error) -> None:
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if executor == "local":
        # Threads inside each worker: PySCF (OpenMP) and XLA read these.
        os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_worker))
        cluster = LocalCluster(n_workers=n_workers or default_workers(), threads_per_worker=1,
                               processes=True, dashboard_address=":0", silence_logs=40)
        client = Client(cluster)
    elif executor.startswith(("tcp://", "tls://", "inproc://", "ucx://")):
        client = Client(executor)
    else:
        raise ValueError(f"executor {executor!r} is not 'serial', 'local' or a scheduler address")
    summary.dashboard = client.dashboard_link
    print(f"Dask dashboard: {client.dashboard_link}", flush=True)
    try:
        futures = {}
        for key, item in zip(keys, items):
            future = client.submit(func, item, retries=retries, pure=False, **func_kwargs)
            futures[future] = key
        for future in as_completed(futures):
            key = futures[future]
            if future.status == "finished":
                handle_ok(key, future.result())
            else:
                exc = future.exception()
                handle_error(key, _error_text(exc) if exc is not None else f"task {future.status}")
            future.release()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
