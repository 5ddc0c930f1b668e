"""Stage 04: tight-binding pre-optimisation of every selected fragment."""

from __future__ import annotations

from typing import Any

from ase import Atoms

from .compute import map_items
from .structures import structure_id


def _optimise_one(atoms: Atoms, **kwargs: Any) -> list[Atoms]:
    # Imported here so Dask workers import the engine only when they use it.
    from .calculators.tightbinding import optimise

    return optimise(atoms, **kwargs)


def preoptimise(structures: list[Atoms], *, fmax: float = 0.05, steps: int = 200, keep_frames: int = 1,
                executor: str = "serial", n_workers: int | None = None,
                progress: bool = True) -> tuple[list[Atoms], dict[str, str]]:
    """Relax each structure with GFN2-xTB; keep ``keep_frames`` frames of each path.

    Returns the frames (in input order) and ``{name or id: error}`` for the
    structures that failed; a failure never stops the others.
    """
    keys = [f"{a.info.get('name', 'structure')}#{structure_id(a)}" for a in structures]
    frames: dict[str, list[Atoms]] = {}
    failures: dict[str, str] = {}
    map_items(_optimise_one, structures, keys, on_result=frames.__setitem__, on_failure=failures.__setitem__,
              executor=executor, n_workers=n_workers, progress=progress, description="GFN2-xTB optimisation",
              fmax=fmax, steps=steps, keep_frames=keep_frames)
    ordered = [frame for key in keys if key in frames for frame in frames[key]]
    return ordered, failures
