"""Per-item work inside a stage notebook: one bad item is recorded, the others go on.

Stages 01-03 build, sample and carve in the notebook's own process (their work is small next to
stage 05's); :func:`collect` runs a step per item, keeps every result, and turns each item's
error into a failure record naming the item. :func:`record_failures` writes them beside the
stage's outputs (``failures.json``) and counts them in the manifest.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ase import Atoms

from .manifest import record_counts

FAILURES = "failures.json"


def _name(item: Any) -> str:
    if isinstance(item, Atoms):
        return str(item.info.get("name") or item.get_chemical_formula())
    if isinstance(item, (list, tuple)) and item and isinstance(item[0], Atoms):
        return _name(item[0])
    if isinstance(item, tuple):
        return " ".join(str(part) for part in item)
    return str(item)


def _accepted(step: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments ``step`` declares (all of them if it takes ``**kwargs``)."""
    parameters = inspect.signature(step).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return kwargs
    return {key: value for key, value in kwargs.items() if key in parameters}


def collect(step: Callable[..., Any], items: Iterable[Any], *, subset: str = "", **kwargs: Any
            ) -> tuple[list[Atoms], list[dict[str, str]]]:
    """Apply ``step(item, **kwargs)`` to each item; flatten the structures it returns.

    Args:
        step: returns an :class:`ase.Atoms` or a list of them.
        items: names, structures or any other per-item input; a tuple is unpacked into positional
            arguments (``("GCGATCG", "B")`` -> ``step("GCGATCG", "B")``).
        subset: QCell class, recorded with each failure.
        kwargs: passed to ``step`` where it declares them, so one call can give ``seed`` to the
            steps that are random and not to those that are not.

    Returns:
        (structures, failures); a failure is ``{"item", "subset", "error"}`` with the error's type and text.
    """
    structures: list[Atoms] = []
    failures: list[dict[str, str]] = []
    accepted = _accepted(step, kwargs)
    for item in items:
        try:
            result = step(*item, **accepted) if isinstance(item, tuple) else step(item, **accepted)
        except Exception as exc:  # noqa: BLE001 - any error of one item is that item's failure
            failures.append({"item": _name(item), "subset": subset, "error": f"{type(exc).__name__}: {exc}"})
            continue
        structures.extend([result] if isinstance(result, Atoms) else list(result))
    return structures, failures


def record_failures(stage_directory: str | os.PathLike, failures: list[dict[str, str]]) -> None:
    """Write ``failures.json`` in the stage directory, count them in the manifest and print each one."""
    path = Path(stage_directory) / FAILURES
    path.write_text(json.dumps(failures, indent=1))
    record_counts(stage_directory, failed=len(failures))
    for failure in failures:
        print(f"FAILED {failure.get('subset', '')} {failure['item']}: {failure['error']}")
