"""Run many independent calculations: in-process or on a Dask cluster.

One small interface, :func:`map_items`, serves every stage that labels or
optimises structures. Workers compute and return plain results; the caller
(the driver) receives each result as it completes and is the only writer of
the dataset: workers get the structure and the calculation's parameters, never
a path or a connection to the database. A failing item is reported to
``on_failure`` with its error text and never stops the others.

Executors
---------
An executor is given as a string (a notebook parameter) or a mapping:

``"serial"``
    in this process, one item after another (debugging, tiny runs)
``"local"``
    a Dask ``LocalCluster`` of worker processes on this machine
``"tcp://host:port"``
    the address of a running Dask scheduler (``dask scheduler`` plus
    ``dask worker`` processes on any number of machines)
``"slurm"`` or ``"slurm:cores=8,memory=16GB,queue=normal,walltime=02:00:00"``
    a ``dask_jobqueue.SLURMCluster`` submitting ``n_workers`` workers as batch
    jobs; the options are ``SLURMCluster`` keyword arguments
``{"kind": "slurm", "cores": 8, ...}``
    the same as a mapping

``"local:..."`` likewise passes keyword arguments to ``LocalCluster``
(``"local:memory_limit=4GB"``). Option values are Python literals where they
parse as one (``8``, ``['--gres=gpu:1']``) and strings otherwise.

Worker deaths are handled by Dask: the tasks a dead worker held are run
again on another worker, up to the scheduler's ``allowed-failures`` setting
(3 by default), after which the item is reported failed with ``KilledWorker``.
"""

from __future__ import annotations

import ast
import contextlib
import os
import traceback
import uuid
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

#: Executor kinds :func:`parse_executor` knows.
EXECUTOR_KINDS = ("serial", "local", "address", "slurm")
_ADDRESS_PREFIXES = ("tcp://", "tls://", "inproc://", "ucx://", "ws://", "wss://")
# Used for SLURM jobs unless the call or the user's dask-jobqueue config gives them.
_SLURM_DEFAULTS = {"cores": 1, "memory": "4GB"}


@dataclass(frozen=True)
class ExecutorSpec:
    """A parsed executor: its kind, a scheduler address, cluster keyword arguments.

    ``kind`` is one of :data:`EXECUTOR_KINDS`; ``address`` is set for
    ``"address"``; ``options`` go to ``LocalCluster`` or ``SLURMCluster``.
    """

    kind: str
    address: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def _split_options(text: str) -> list[str]:
    """Split ``a=1,b=[2, 3]`` at the commas that are not inside brackets or quotes."""
    parts, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # 16GB, normal, 02:00:00: plain strings


def parse_executor(spec: str | Mapping[str, Any] | ExecutorSpec) -> ExecutorSpec:
    """Parse an executor given as a string or a mapping (see the module docstring).

    Raises
    ------
    ValueError
        Naming the spec if its kind is unknown or an option is not ``name=value``.
    """
    if isinstance(spec, ExecutorSpec):
        return spec
    if isinstance(spec, Mapping):
        options = dict(spec)
        kind = options.pop("kind", None)
        if kind is None:
            raise ValueError(f"executor {spec!r}: a mapping needs a 'kind' ({', '.join(EXECUTOR_KINDS)})")
        address = options.pop("address", None)
        if kind not in EXECUTOR_KINDS:
            raise ValueError(f"executor {spec!r}: kind {kind!r} is not one of {', '.join(EXECUTOR_KINDS)}")
        if kind == "address" and not address:
            raise ValueError(f"executor {spec!r}: kind 'address' needs an 'address'")
        return ExecutorSpec(kind, address, options)
    if not isinstance(spec, str):
        raise ValueError(f"executor {spec!r} is neither a string nor a mapping")
    text = spec.strip()
    if text.startswith(_ADDRESS_PREFIXES):
        return ExecutorSpec("address", text)
    kind, _, rest = text.partition(":")
    if kind not in ("serial", "local", "slurm"):
        raise ValueError(f"executor {spec!r} is not 'serial', 'local', 'slurm[:options]' or a scheduler "
                         "address like 'tcp://host:8786'")
    options = {}
    for item in _split_options(rest):
        name, equals, value = item.partition("=")
        if not equals or not name.strip().isidentifier():
            raise ValueError(f"executor {spec!r}: option {item!r} is not name=value")
        options[name.strip()] = _literal(value.strip())
    if kind == "serial" and options:
        raise ValueError(f"executor {spec!r}: 'serial' takes no options")
    return ExecutorSpec(kind, None, options)


def slurm_cluster(options: Mapping[str, Any] | None = None):
    """A ``dask_jobqueue.SLURMCluster`` with ``options``; no job is submitted until it is scaled.

    ``cores`` and ``memory`` default to 1 and 4GB, and ``processes`` to
    ``cores`` (single-threaded workers, as on a local cluster), where neither
    ``options`` nor the dask-jobqueue configuration set them. Each job runs
    ``processes`` workers sharing its ``cores`` and ``memory``.
    ``cluster.job_script()`` shows the batch script each job runs.
    """
    import dask
    from dask_jobqueue import SLURMCluster

    kwargs = dict(options or {})
    for name, value in _SLURM_DEFAULTS.items():
        if name not in kwargs and dask.config.get(f"jobqueue.slurm.{name}", None) is None:
            kwargs[name] = value
    if "processes" not in kwargs and dask.config.get("jobqueue.slurm.processes", None) is None:
        kwargs["processes"] = kwargs.get("cores") or dask.config.get("jobqueue.slurm.cores")
    return SLURMCluster(**kwargs)


def dashboard_link(client) -> str | None:
    """The Dask dashboard's URL, or None when the scheduler runs without one."""
    try:
        return client.dashboard_link
    except (KeyError, AttributeError):  # a scheduler started with --no-dashboard has no such service
        return None


@contextlib.contextmanager
def dask_client(executor: str | Mapping[str, Any] | ExecutorSpec, n_workers: int | None = None,
                threads_per_worker: int = 1) -> Iterator[Any]:
    """A ``distributed.Client`` for ``executor``; a cluster it starts is closed on exit.

    ``n_workers`` sizes a local cluster (default: one per core) or the number
    of SLURM workers requested with ``cluster.scale`` (default 1). A scheduler
    address connects to the workers it already has.
    """
    from dask.distributed import Client, LocalCluster

    spec = parse_executor(executor)
    cluster = None
    if spec.kind == "local":
        # Threads inside each worker: PySCF (OpenMP) and XLA read these.
        os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_worker))
        options = {"n_workers": n_workers or default_workers(), "threads_per_worker": 1, "processes": True,
                   "dashboard_address": ":0", "silence_logs": 40, **spec.options}
        cluster = LocalCluster(**options)
    elif spec.kind == "slurm":
        cluster = slurm_cluster(spec.options)
    elif spec.kind != "address":
        raise ValueError(f"executor {executor!r} does not use Dask")
    try:
        if spec.kind == "slurm":
            cluster.scale(n_workers or 1)  # n_workers workers: ceil(n_workers / processes) jobs
        client = Client(cluster if cluster is not None else spec.address)
        try:
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


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
    executor: str | Mapping[str, Any] | ExecutorSpec = "local",
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
        A picklable, module-level function. It runs on the workers and gets
        only the item and ``func_kwargs``: pass it data, never the dataset.
    items, keys:
        The work and one unique key per item (a structure id, say). On Dask
        the key is part of the task's name, so the dashboard shows which
        structure each worker is computing.
    on_result, on_failure:
        Called in this process with ``(key, result)`` or ``(key, error_text)``,
        exactly once per key. ``on_result`` should persist the result at once:
        whatever it has stored survives a crash of the driver.
    executor:
        ``"serial"``, ``"local"``, a scheduler address, ``"slurm[:options]"``
        or a mapping; see :func:`parse_executor`.
    n_workers, threads_per_worker:
        Workers of a local cluster (default: one single-threaded worker per
        core; one thread each because PySCF and JAX already use the core
        well) or SLURM workers to request (default 1).
    retries:
        Extra attempts for an item whose function raised (a transient error);
        a deterministic error fails again and is then reported. Items on a
        worker that died are rerun elsewhere without counting against this.
    progress:
        Show a tqdm progress bar. The Dask dashboard's link, where the
        cluster has one, is printed either way (and kept in the summary).
    """
    if len(items) != len(keys):
        raise ValueError(f"map_items: {len(items)} items but {len(keys)} keys")
    if len(set(keys)) != len(keys):
        raise ValueError("map_items: keys are not unique")
    if retries < 0:
        raise ValueError(f"map_items: retries={retries} is negative")
    spec = parse_executor(executor)
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
        if spec.kind == "serial":
            for key, item in zip(keys, items):
                for attempt in range(retries + 1):
                    try:
                        value = func(item, **func_kwargs)
                    except Exception as exc:  # noqa: BLE001 - every failure is recorded, none stops the stage
                        if attempt == retries:
                            handle_error(key, _error_text(exc))
                    else:
                        handle_ok(key, value)
                        break
            return summary
        with dask_client(spec, n_workers, threads_per_worker) as client:
            summary.dashboard = dashboard_link(client)
            if summary.dashboard:
                print(f"Dask dashboard: {summary.dashboard}", flush=True)
            _map_on_dask(client, func, items, keys, func_kwargs, retries, handle_ok, handle_error)
        return summary
    finally:
        bar.close()


def _task_name(func: Callable[..., Any], key: Hashable, batch: str) -> str:
    return f"{getattr(func, '__name__', 'task')}-{key}-{batch}"


def _map_on_dask(client, func, items, keys, func_kwargs, retries, handle_ok, handle_error) -> None:
    """Submit every item, then hand each future to its handler as it completes."""
    from dask.distributed import as_completed

    # Task names carry the item's key (for the dashboard) and a per-call tag, so two
    # drivers sharing a scheduler never share a result.
    batch = uuid.uuid4().hex[:8]
    futures = {}
    for key, item in zip(keys, items):
        future = client.submit(func, item, retries=retries, pure=False, key=_task_name(func, key, batch),
                               **func_kwargs)
        futures[future] = key
    # This client's loop, not the default client's: the caller may hold other clients.
    for future in as_completed(futures, loop=client.loop):
        key = futures[future]
        if future.status == "finished":
            handle_ok(key, future.result())
        elif future.status == "cancelled":
            handle_error(key, "CancelledError: the scheduler cancelled the task (did it restart?)")
        else:
            # A task whose worker died can be yielded while its state is still moving
            # (lost, then recomputed elsewhere); exception() waits for the final state,
            # so a task that did finish is delivered, never recorded as a failure.
            exc = future.exception()
            if exc is None and future.status == "finished":
                handle_ok(key, future.result())
            else:
                handle_error(key, _error_text(exc) if exc is not None else f"task ended as {future.status}")
        future.release()
