"""Stage 04: tight-binding pre-optimisation of every selected fragment."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ase import Atoms

from .compute import map_items
from .structures import structure_id


def _optimise_one(atoms: Atoms, **kwargs: Any) -> list[Atoms]:
    # Imported here so Dask workers import the engine only when they use it.
    from .calculators.tightbinding import optimise

    return optimise(atoms, **kwargs)


def preoptimise(structures: list[Atoms], *, method: str = "gfn2-xtb", mbd: bool = False, fmax: float = 0.05,
                steps: int = 200, keep_frames: int = 1, executor: str = "serial", n_workers: int | None = None,
                progress: bool = True, fixed_subsets: Sequence[str] = ()) -> tuple[list[Atoms], dict[str, str]]:
    """Relax each structure with tight binding; keep ``keep_frames`` frames of each path.

    ``method`` is ``"gfn2-xtb"`` (tblite), ``"dftb3-3ob"`` (needs ``dftb+``)
    or ``"auto"`` (DFTB3/3ob where DFTB+ and its 3ob files are installed,
    else GFN2-xTB; resolved once here, so every structure gets the same
    method); ``mbd`` adds MBD dispersion (see
    :func:`qcell_nb.calculators.tightbinding.tight_binding_calculator`). Each
    frame records the method in ``info['tb_method']``.

    Structures of ``fixed_subsets`` get a single point instead (their geometry is the point:
    a dimer scan relaxed to its minimum would no longer scan anything).

    Returns the frames (in input order) and ``{name or id: error}`` for the
    structures that failed; a failure never stops the others.
    """
    from .calculators.tightbinding import method_label, resolve_method

    method = resolve_method(method)
    keys = [f"{a.info.get('name', 'structure')}#{structure_id(a)}" for a in structures]
    frames: dict[str, list[Atoms]] = {}
    failures: dict[str, str] = {}
    fixed = [str(a.info.get("subset")) in set(fixed_subsets) for a in structures]
    for single_point in (False, True):
        chosen = [i for i, flag in enumerate(fixed) if flag == single_point]
        if not chosen:
            continue
        map_items(_optimise_one, [structures[i] for i in chosen], [keys[i] for i in chosen],
                  on_result=frames.__setitem__, on_failure=failures.__setitem__,
                  executor=executor, n_workers=n_workers, progress=progress,
                  description=f"{method_label(method, mbd)} {'single points' if single_point else 'optimisation'}",
                  fmax=fmax, steps=0 if single_point else steps, keep_frames=1 if single_point else keep_frames,
                  method=method, mbd=mbd)
    ordered = [frame for key in keys if key in frames for frame in frames[key]]
    return ordered, failures
