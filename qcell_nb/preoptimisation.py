"""Stage 04: tight-binding pre-optimisation of every selected fragment."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ase import Atoms

from .compute import map_items
from .store import read_structures, write_structures
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

    ``checkpoint``: a directory where each structure's frames are written (``<structure id>.db``)
    as soon as it is done, and read back instead of recomputed when the same call runs again, so
    an interrupted stage or a retry computes only what is missing. The files belong to one set of
    parameters (the pipeline moves the stage directory aside when they change). ``reuse``: an
    earlier checkpoint directory made with the same settings (a superseded stage's ``items/``);
    its files for these structures are copied into ``checkpoint`` instead of being recomputed.

    Returns the frames (in input order) and one failure per structure that failed,
    ``{"item", "subset", "sid", "error"}`` (the form :func:`qcell_nb.pipeline.record_failures`
    writes); a failure never stops the others.
    """
    from .calculators.tightbinding import method_label, resolve_method

    method = resolve_method(method)
    ids = [structure_id(a) for a in structures]
    directory = Path(checkpoint) if checkpoint is not None else None
    frames: dict[str, list[Atoms]] = {}
    if directory is not None and reuse and Path(reuse).is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        copied = [sid for sid in dict.fromkeys(ids) if (Path(reuse) / f"{sid}.db").exists()
                  and not (directory / f"{sid}.db").exists()]
        for sid in copied:
            shutil.copy2(Path(reuse) / f"{sid}.db", directory / f"{sid}.db")
        print(f"{len(copied)} relaxations reused from {reuse} (same structures, same settings)", flush=True)
    if directory is not None:
        frames.update({sid: read_structures(directory / f"{sid}.db") for sid in ids
                       if (directory / f"{sid}.db").exists()})
        if frames:
            print(f"{len(frames)} structures already done, read from {directory}; "
                  f"{len(set(ids) - set(frames))} to compute", flush=True)

    def keep(sid: str, path: list[Atoms]) -> None:
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            write_structures(directory / f"{sid}.db", path)  # atomic: a crash leaves no half-written item
        frames[sid] = path

    # One calculation per structure id: a structure listed twice is the same calculation.
    pending: dict[str, int] = {}
    for index, sid in enumerate(ids):
        if sid not in frames:
            pending.setdefault(sid, index)
    errors: dict[str, str] = {}
    fixed_names = set(fixed_subsets)
    for single_point in (False, True):
        chosen = [i for i in pending.values() if (str(structures[i].info.get("subset")) in fixed_names) == single_point]
        if not chosen:
            continue
        map_items(_optimise_one, [structures[i] for i in chosen], [ids[i] for i in chosen],
                  on_result=keep, on_failure=errors.__setitem__,
                  executor=executor, n_workers=n_workers, progress=progress,
                  description=f"{method_label(method, mbd)} {'single points' if single_point else 'optimisation'}",
                  fmax=fmax, steps=0 if single_point else steps, keep_frames=1 if single_point else keep_frames,
                  method=method, mbd=mbd)
    ordered = [frame for sid in dict.fromkeys(ids) if sid in frames for frame in frames[sid]]
    failures = [{"item": str(structures[i].info.get("name", "structure")), "subset": str(structures[i].info.get("subset", "")),
                 "sid": sid, "error": errors[sid]} for sid, i in pending.items() if sid in errors]
    return ordered, failures
