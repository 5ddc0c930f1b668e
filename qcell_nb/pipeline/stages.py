"""The ordered stages and the layout of a run directory.

A run lives in ``runs/<run>/``; stage ``NN_key`` writes to
``runs/<run>/NN_key/``: its data, executed notebook, figures and
``manifest.json``. Notebooks find their inputs through :func:`stage_dir`,
so the layout is defined here once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stage:
    """One pipeline stage.

    Attributes
    ----------
    name:     directory and notebook stem, e.g. ``"05_reference"``
    title:    one line for humans
    inputs:   names of the stages whose outputs this stage reads
    outputs:  file names (globs) inside the stage directory that later stages read
    """

    name: str
    title: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def notebook(self) -> str:
        return f"{self.name}.ipynb"

    @property
    def number(self) -> str:
        return self.name[:2]


STAGES: tuple[Stage, ...] = (
    Stage("01_building_blocks", "Building blocks: 3D structures of every block", (), ("structures.db",)),
    Stage("02_sampling", "Conformational sampling", ("01_building_blocks",), ("structures.db",)),
    Stage("03_selection", "Fragment selection: representatives by clustering", ("02_sampling",), ("structures.db",)),
    Stage("04_preoptimisation", "Tight-binding pre-optimisation (GFN2-xTB or DFTB3/3ob, optionally +MBD)",
          ("03_selection",), ("structures.db",)),
    Stage("05_reference", "Reference labels: PBE0+MBD with PySCF", ("04_preoptimisation",), ("dataset.db", "mlmm.db")),
    Stage("06_training", "Training an e3x force field", ("05_reference",), ("model/*", "split.json")),
    Stage("07_validation", "Validation of data and model", ("05_reference", "06_training"), ("metrics.json",)),
    # The overview runs last: it summarises the run that the stages above produced.
    Stage("00_overview", "Overview of the run", (), ()),
)

STAGE_NAMES = tuple(stage.name for stage in STAGES)


def get_stage(name: str) -> Stage:
    """Stage by full name (``05_reference``), number (``05``/``5``) or key (``reference``)."""
    for stage in STAGES:
        if name in (stage.name, stage.number, stage.name[3:]) or (name.isdigit() and int(name) == int(stage.number)):
            return stage
    raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGE_NAMES)}")


def runs_root() -> Path:
    """Where runs live: ``$QCELL_NB_RUNS`` or ``./runs``."""
    return Path(os.environ.get("QCELL_NB_RUNS", "runs"))


def stage_dir(run_dir: str | os.PathLike, stage: str, create: bool = True) -> Path:
    """Directory of ``stage`` inside ``run_dir`` (created unless ``create`` is False)."""
    path = Path(run_dir) / get_stage(stage).name
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
