"""Per-item work inside a stage notebook: one bad item is recorded, the others go on.

Stages 01-03 build, sample and carve per item: :func:`collect_classes` runs each class's step
on each of its items (here, or side by side on Dask for stage 02's MD), keeps every result,
checkpoints each item as it finishes so an interrupted stage resumes, and turns each item's
error into a failure record naming the item. :func:`record_failures` writes them into the
stage's failure table (``structures.failures.jsonl``, the format of stage 05's
``dataset.failures.jsonl``), where ``qcell-nb failures`` lists them and ``qcell-nb retry`` finds
them, and counts them in the manifest.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from ..store import clear_failures, read_structures, record_failure, write_structures
from ..structures import structure_id
from .manifest import record_counts

FAILURES = "structures.failures.jsonl"


def _name(item: Any) -> str:
    if isinstance(item, Atoms):
        return str(item.info.get("name") or item.get_chemical_formula())
    if isinstance(item, (list, tuple)) and item and isinstance(item[0], Atoms):
        return _name(item[0])
    if isinstance(item, tuple):
        return " ".join(_name(part) for part in item)
    return str(item)


def _accepted(step: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments ``step`` declares (all of them if it takes ``**kwargs``)."""
    parameters = inspect.signature(step).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return kwargs
    return {key: value for key, value in kwargs.items() if key in parameters}


def _run_job(job: tuple[Callable[..., Any], Any, dict[str, Any]]) -> list[Atoms]:
    """Worker side of :func:`collect_classes`: one step on one item, as a list of structures."""
    step, item, options = job
    result = step(*item, **options) if isinstance(item, tuple) else step(item, **options)
    return [result] if isinstance(result, Atoms) else list(result)


def _identity(part: Any) -> Any:
    """What an item or option is, for its checkpoint's name: structures by id and name, the rest by repr."""
    if isinstance(part, Atoms):
        return f"{structure_id(part)}:{part.info.get('name', '')}"
    if isinstance(part, (list, tuple)):
        return [_identity(p) for p in part]
    if isinstance(part, Mapping):
        return {str(k): _identity(v) for k, v in sorted(part.items(), key=lambda kv: str(kv[0]))}
    if isinstance(part, np.ndarray):  # repr elides the middle of a large array
        return f"array{part.shape}:{hashlib.sha1(np.ascontiguousarray(part).tobytes()).hexdigest()}"
    return repr(part)


def _checkpoint_file(directory: Path, subset: str, step: Callable[..., Any], item: Any, options: dict[str, Any],
                     name: str) -> Path:
    """``<subset>/<name>-<digest>.db``: the digest covers the step, the item and its options.

    Named by content, not by position, so that a longer or reordered item list (a block added to
    the library) still finds the finished items, here or in a superseded stage's directory.
    """
    payload = json.dumps([subset, f"{step.__module__}.{step.__qualname__}", _identity(item), _identity(options)])
    digest = hashlib.sha1(payload.encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9+.-]+", "_", name)[:48]
    return directory / (subset or "items") / f"{slug}-{digest}.db"


def collect_classes(work: Mapping[str, tuple[Callable[..., Any], Sequence[Any], dict[str, Any]]], *,
                    checkpoint: str | os.PathLike | None = None, reuse: str | os.PathLike | None = None,
                    executor: str = "serial", n_workers: int = 0, retries: int = 0,
                    progress: bool = False, description: str = "items",
                    **kwargs: Any) -> tuple[list[Atoms], list[dict[str, str]]]:
    """Apply each class's step to each of its items; keep every result, record every failure.

    Args:
        work: subset (QCell class) -> ``(step, items, options)``. ``step(item, **options)`` returns
            an :class:`ase.Atoms` or a list of them; a tuple item is unpacked into positional
            arguments (``("GCGATCG", "B")`` -> ``step("GCGATCG", "B")``).
        checkpoint: a directory where each item's structures are written as soon as the item is done,
            and read back instead of recomputed when the same call runs again (an interrupted stage
            resumes there). Files are named by the step, the item and its options, so a changed item
            list still finds the finished items; the pipeline moves a stage's directory aside when its
            parameters change.
        reuse: an earlier checkpoint directory of the same stage settings (a superseded stage's
            ``items/``): its files for these items are copied into ``checkpoint`` instead of recomputed.
        executor, n_workers: ``"serial"`` runs the items here, one after another; ``"local"`` (with
            ``n_workers`` single-threaded worker processes, 0: one per core), a scheduler address or a
            SLURM spec runs them side by side on Dask (see :func:`qcell_nb.compute.map_items`).
        retries: extra attempts for an item whose step raised (a transient error).
        progress, description: show a progress bar, labelled so.
        kwargs: common keyword arguments (``seed``, say), passed with each class's options to the steps
            that declare them, so one call can give ``seed`` to the random steps and not to the others.

    Returns:
        (structures, failures) in the order of ``work`` and of its items, whatever order they finished
        in; a failure is ``{"item", "subset", "error"}`` with the error's type and text (and ``"sid"``,
        the structure id, when the item is one structure). Failed items are not checkpointed, so a
        rerun tries them again.
    """
    from ..compute import map_items  # Dask loads only when a stage maps items

    directory = Path(checkpoint) if checkpoint is not None else None
    jobs: dict[str, tuple[Callable[..., Any], Any, dict[str, Any]]] = {}
    labels: dict[str, tuple[str, Any, Path | None]] = {}  # key -> (subset, item, checkpoint file)
    results: dict[str, list[Atoms]] = {}
    reused = 0
    for subset, (step, items, options) in work.items():
        accepted = _accepted(step, {**kwargs, **options})
        for index, item in enumerate(items):
            key = f"{subset or 'items'}-{index:04d}"
            name = _name(item)
            file = _checkpoint_file(directory, subset, step, item, accepted, name) if directory is not None else None
            labels[key] = (subset, item, file)
            earlier = Path(reuse) / file.relative_to(directory) if reuse and file is not None else None
            if earlier is not None and earlier.exists() and not file.exists():
                file.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(earlier, file)
                reused += 1
            if file is not None and file.exists():
                results[key] = read_structures(file)
            else:
                jobs[key] = (step, item, accepted)
    if reused:
        print(f"{reused} items reused from {reuse} (same items, same settings)", flush=True)
    if results:
        print(f"{len(results)} items already done, read from {directory}; {len(jobs)} to compute", flush=True)

    def keep(key: Hashable, structures: list[Atoms]) -> None:
        file = labels[key][2]
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            write_structures(file, structures)  # atomic: a crash leaves no half-written item
        results[key] = structures

    errors: dict[str, str] = {}
    map_items(_run_job, list(jobs.values()), list(jobs), on_result=keep,
              on_failure=lambda key, text: errors.__setitem__(key, text), executor=executor,
              n_workers=n_workers or None, retries=retries, progress=progress, description=description)
    structures = [atoms for key in labels if key in results for atoms in results[key]]
    failures = []
    for key in labels:
        if key in errors:
            subset, item, _ = labels[key]
            failure = {"item": _name(item), "subset": subset, "error": errors[key]}
            if isinstance(item, Atoms):
                failure["sid"] = structure_id(item)
            failures.append(failure)
    return structures, failures


def collect(step: Callable[..., Any], items: Iterable[Any], *, subset: str = "",
            checkpoint: str | os.PathLike | None = None, executor: str = "serial", n_workers: int = 0,
            **kwargs: Any) -> tuple[list[Atoms], list[dict[str, str]]]:
    """Apply ``step(item, **kwargs)`` to each item; flatten the structures it returns.

    One class's :func:`collect_classes`: ``subset`` is recorded with each failure, and ``kwargs`` go
    to ``step`` where it declares them.
    """
    return collect_classes({subset: (step, list(items), {})}, checkpoint=checkpoint, executor=executor,
                           n_workers=n_workers, **kwargs)


def record_failures(stage_directory: str | os.PathLike, failures: list[dict[str, str]]) -> None:
    """Make ``failures`` the stage's current failures; count them in the manifest and print each one.

    Each failure is ``{"item", "subset", "error"}`` and optionally ``"sid"`` (a structure id;
    else ``subset:item`` identifies it). The failure table ``structures.failures.jsonl`` in the
    stage directory keeps its history: the previous run's failures are marked resolved (the
    stage ran them again) before this run's are appended.
    """
    directory = Path(stage_directory)
    path = directory / FAILURES
    clear_failures(path)
    for failure in failures:
        sid = failure.get("sid") or f"{failure.get('subset') or 'items'}:{failure['item']}"
        record_failure(path, sid, failure["item"], directory.name, failure["error"])
    record_counts(stage_directory, failed=len(failures))
    for failure in failures:
        print(f"FAILED {failure.get('subset', '')} {failure['item']}: {failure['error']}")
