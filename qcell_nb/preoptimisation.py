"""Stage 04: tight-binding pre-optimisation of every selected fragment."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ase import Atoms

from .structures import structure_id


def _optimise_one(atoms: Atoms, **kwargs: Any) -> list[Atoms]:
    # Imported here so Dask workers import the engine only when they use it.
    from .calculators.tightbinding import optimise

    return optimise(atoms, **kwargs)


def preoptimise(structures: list[Atoms], *, method: str = "gfn2-xtb", mbd: bool = False, fmax: float = 0.05,
                steps: int = 200, keep_frames: int = 1, executor: str = "serial", n_workers: int | None = None,
                progress: bool = True, fixed_subsets: Sequence[str] = (),
                checkpoint: str | os.PathLike | None = None,
                reuse: str | os.PathLike | None = None) -> tuple[list[Atoms], list[dict[str, str]]]:
    """Relax each structure with tight binding; keep ``keep_frames`` frames of each path.

    ``method`` is ``"gfn2-xtb"`` (tblite), ``"dftb3-3ob"`` (needs ``dftb+``)
    or ``"auto"`` (DFTB3/3ob where DFTB+ and its 3ob files are installed,
    else GFN2-xTB; resolved once here, so every structure gets the same
    method); ``mbd`` adds MBD dispersion (see
    :func:`qcell_nb.calculators.tightbinding.tight_binding_calculator`). Each
    frame records the method in ``info['tb_method']``.

    Structures of ``fixed_subsets`` get a single point instead (their geometry is the point:
    a dimer scan relaxed to its minimum would no longer scan anything).

    ``checkpoint`` and ``reuse`` as in :func:`qcell_nb.pipeline.collect_classes`: each structure's
    frames are written there as soon as it is done and read back instead of recomputed, so an
    interrupted stage or a retry computes only what is missing, and a superseded stage's
    ``items/`` lends the relaxations of structures that did not change.

    Returns the frames (grouped by subset in the order the subsets first appear, then in input
    order) and one failure per structure that failed, ``{"item", "subset", "sid", "error"}``
    (the form :func:`qcell_nb.pipeline.record_failures` writes); a failure never stops the others.
    """
    from .calculators.tightbinding import method_label, resolve_method
    from .pipeline.items import collect_classes

    method = resolve_method(method)
    # One calculation per structure id (a structure listed twice is the same calculation), one
    # class of work per subset: those in fixed_subsets get a single point.
    by_subset: dict[str, dict[str, Atoms]] = {}
    for atoms in structures:
        by_subset.setdefault(str(atoms.info.get("subset", "")), {}).setdefault(structure_id(atoms), atoms)
    fixed = set(fixed_subsets)
    work = {subset: (_optimise_one, list(members.values()),
                     dict(fmax=fmax, steps=0 if subset in fixed else steps,
                          keep_frames=1 if subset in fixed else keep_frames, method=method, mbd=mbd))
            for subset, members in by_subset.items()}
    return collect_classes(work, checkpoint=checkpoint, reuse=reuse, executor=executor, n_workers=n_workers or 0,
                           retries=1, progress=progress, description=f"{method_label(method, mbd)} relaxations")
