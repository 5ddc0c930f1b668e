"""Stage parameters: profiles, overrides and strict validation.

A stage's parameters are the variables of its notebook's cell tagged
``parameters``; their defaults there are the ``smoke`` profile. Other profiles
override some of them. Everything given is validated before anything runs:
an unknown name or a value of the wrong type is an error that names it.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

import papermill

from .stages import STAGES, Stage, get_stage

#: Parameters the runner injects into every stage notebook that declares them.
RUN_PARAMETERS = ("run_dir", "seed")

#: Profiles: stage name -> parameter overrides. ``smoke`` is the notebooks' own defaults.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {},
    "demo": {
        "01_building_blocks": {"monosaccharides": "all"},
        "02_sampling": {"n_embed": 60, "max_conformers": 20},
        "03_selection": {"n_per_block": 8},
        "04_preoptimisation": {"keep_frames": 4},
        "05_reference": {"basis": "def2-svp", "grid_level": 3},
        "06_training": {"epochs": 300, "features": 64, "num_iterations": 3, "batch_size": 16},
    },
    "paper": {
        "01_building_blocks": {"monosaccharides": "all"},
        "02_sampling": {"n_embed": 300, "max_conformers": 100},
        "03_selection": {"n_per_block": 40},
        "04_preoptimisation": {"keep_frames": 5, "fmax": 0.01},
        "05_reference": {"basis": "def2-tzvp", "grid_level": 4, "conv_tol": 1e-10},
        "06_training": {"epochs": 2000, "features": 128, "num_iterations": 3, "max_degree": 4,
                        "batch_size": 32},
    },
}


class ParameterError(ValueError):
    """A parameter that does not exist or has the wrong type."""


def notebook_path(stage: Stage, notebooks_dir: str | os.PathLike) -> Path:
    path = Path(notebooks_dir) / stage.notebook
    if not path.exists():
        raise FileNotFoundError(f"notebook for stage {stage.name} not found: {path}")
    return path


def declared_parameters(stage: Stage, notebooks_dir: str | os.PathLike) -> dict[str, Any]:
    """Name -> default value of the stage notebook's parameters cell."""
    inspected = papermill.inspect_notebook(str(notebook_path(stage, notebooks_dir)))
    declared = {}
    for name, info in inspected.items():
        try:
            declared[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            declared[name] = None  # an expression we cannot evaluate: no type check
    return declared


def _type_ok(default: Any, value: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple)) or (isinstance(value, str) and value == "all")
    if isinstance(default, str):
        return isinstance(value, str)
    return isinstance(value, type(default))


def parse_overrides(assignments: list[str]) -> dict[str | None, dict[str, Any]]:
    """Parse ``--set`` items: ``name=value`` (every stage) or ``NN_stage.name=value``.

    Values are Python literals (``3``, ``0.5``, ``True``, ``['a', 'b']``);
    anything else is taken as a string. Returns {stage name or None: {name: value}}.
    """
    overrides: dict[str | None, dict[str, Any]] = {}
    for item in assignments:
        if "=" not in item:
            raise ParameterError(f"--set {item!r}: expected name=value")
        target, raw = item.split("=", 1)
        stage_name: str | None = None
        if "." in target:
            stage_part, target = target.split(".", 1)
            stage_name = get_stage(stage_part).name
        if not target.isidentifier():
            raise ParameterError(f"--set {item!r}: {target!r} is not a parameter name")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        overrides.setdefault(stage_name, {})[target] = value
    return overrides


def resolve_parameters(profile: str, overrides: dict[str | None, dict[str, Any]],
                       notebooks_dir: str | os.PathLike,
                       stages: tuple[Stage, ...] = STAGES) -> dict[str, dict[str, Any]]:
    """Per-stage parameters from a profile plus overrides, validated strictly.

    Raises :class:`ParameterError` naming an unknown profile, an unknown
    parameter (global or per stage) or a value whose type does not match
    the notebook's default.
    """
    if profile not in PROFILES:
        raise ParameterError(f"unknown profile {profile!r}; profiles are {', '.join(PROFILES)}")
    declared = {stage.name: declared_parameters(stage, notebooks_dir) for stage in STAGES}
    resolved: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        values = dict(PROFILES[profile].get(stage.name, {}))
        values.update({k: v for k, v in overrides.get(None, {}).items() if k in declared[stage.name]})
        values.update(overrides.get(stage.name, {}))
        for name, value in values.items():
            if name not in declared[stage.name]:
                raise ParameterError(f"stage {stage.name} has no parameter {name!r}; "
                                     f"it has {', '.join(sorted(declared[stage.name]))}")
            default = declared[stage.name][name]
            if not _type_ok(default, value):
                raise ParameterError(f"parameter {name!r} of stage {stage.name} must be "
                                     f"{type(default).__name__} like its default {default!r}, "
                                     f"got {type(value).__name__} {value!r}")
        if stage in stages:
            resolved[stage.name] = values
    everywhere = set().union(*(set(names) for names in declared.values()))
    for name in overrides.get(None, {}):
        if name not in everywhere:
            raise ParameterError(f"no stage has a parameter {name!r}")
    return resolved
