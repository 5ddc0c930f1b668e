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
    # Every library and hundreds of sampled fragments; 24 small fragments per class go on to PBE0.
    # DESIGN.md's budget: about an hour on a laptop (8 cores); several hours on 2 cores, mostly stage 05.
    "demo": {
        "01_building_blocks": {
            "monosaccharides": "all",
            "disaccharides": ["maltose", "cellobiose", "lactose", "sucrose", "trehalose", "isomaltose",
                              "laminaribiose"],
            "glycopeptides": ["GlcNAc-beta-Asn", "GalNAc-alpha-Ser"],
            # Every sequence alternates purines and pyrimidines, so each also builds as Z-DNA.
            "dna_sequences": ["CGCGCGC", "ATGCATG"], "dna_forms": ["A", "B", "Z"],
            "rna_sequences": ["GCAUGCA"], "lipids": "all", "ions": "all", "dimer_monomers": "all",
        },
        "02_sampling": {
            "n_embed": 60, "max_conformers": 20, "md_minimisation_iterations": 1000,
            "dna_equilibration_steps": 2000, "dna_production_steps": 10000, "dna_report_interval": 500,
            "dna_box_padding": 10.0,
            "lipid_n_per_leaflet": 16, "lipid_water_per_lipid": 30, "lipid_pressure": 1.0,
            "lipid_composition": {"POPC": 0.4, "POPE": 0.2, "POPG": 0.1, "POPS": 0.1, "cholesterol": 0.2},
            "lipid_equilibration_steps": 2000, "lipid_production_steps": 20000, "lipid_report_interval": 1000,
            "ion_box_size": 21.0, "ion_pressure": 1.0, "ion_equilibration_steps": 2500,
            "ion_production_steps": 10000, "ion_report_interval": 500,
            "n_random_dimer_pairs": 20,
        },
        "03_selection": {
            "n_per_block": 4, "dna_fragment_kinds": ["trimer", "wc_pair", "stacked_pair", "rna_trimer"],
            "dna_max_per_frame": 2, "lipid_fragment_kinds": ["monomer", "dimer", "trimer"], "lipid_max_per_frame": 2,
            # Fatty-acid units of at most 8 chain carbons: whole lipids (75-135 atoms) cost hours each in PBE0.
            "lipid_unit": "acyl", "lipid_max_chain_carbons": 8, "ion_cluster_sizes": [1, 2, 3, 4, 6, 8],
            "ion_max_per_frame": 2, "dimer_scan_factors": [0.8, 0.9, 1.0, 1.2, 1.4, 1.7, 2.0],
            # 24 fragments of up to 40 atoms per class (~200 PBE0/def2-SVP labels with the kept frames):
            # a label costs ~11 CPU-s at 10 atoms and ~150 at 24 (t ~ N^2.8), ~5 CPU-hours in all.
            "max_atoms": 40, "max_per_subset": 24, "subset_caps": {},
        },
        "04_preoptimisation": {"keep_frames": 2, "mbd": True},
        # ML/MM: ions with 1, 2 or 4 QM waters in 6 Å of TIP3P charges, QM/MM-labelled, and a model on them.
        "05_reference": {"preset": "light", "mlmm_structures": 24, "mlmm_qm_waters": [1, 2, 4], "mlmm_radius": 6.0},
        "06_training": {"model_size": "medium", "epochs": 150, "batch_size": 16,
                        "evaluate_splits": ["conformations", "molecules", "scaffolds"],
                        "learning_curve_fractions": [0.25, 0.5, 1.0], "compare_delta": True,
                        "compare_model_sizes": ["small", "medium"], "mlmm_epochs": 150},
        "07_validation": {"droplet_waters": 24, "md_steps": 4000, "nve_steps": 2000},
    },
    # The QCell recipe: full libraries, long MD, all fragment sizes, def2-TZVP-class labels.
    "paper": {
        "01_building_blocks": {
            "monosaccharides": "all", "disaccharides": "all", "glycopeptides": "all",
            "dna_sequences": ["CGCGCGC", "ATGCATG", "GCATGCA", "CACGTGC", "TGCACGT", "ACGTACG"],
            "dna_forms": ["A", "B", "Z"], "rna_sequences": ["GCAUGCA", "UUCGAAG"],
            "lipids": "all", "ions": "all", "dimer_monomers": "all",
        },
        "02_sampling": {
            "n_embed": 300, "max_conformers": 100, "md_minimisation_iterations": 0,
            "dna_equilibration_steps": 50000, "dna_production_steps": 500000, "dna_report_interval": 5000,
            "dna_box_padding": 12.0,
            "lipid_n_per_leaflet": 64, "lipid_water_per_lipid": 35, "lipid_pressure": 1.0,
            "lipid_composition": {"POPC": 0.4, "POPE": 0.2, "POPG": 0.1, "POPS": 0.1, "cholesterol": 0.2},
            "lipid_equilibration_steps": 50000, "lipid_production_steps": 500000, "lipid_report_interval": 5000,
            "ion_box_size": 24.0, "ion_pressure": 1.0, "ion_equilibration_steps": 50000,
            "ion_production_steps": 1000000, "ion_report_interval": 1000,
            "n_random_dimer_pairs": 780, "dimer_orientations": 8,
        },
        "03_selection": {
            "n_per_block": 40, "dna_fragment_kinds": ["trimer", "wc_pair", "stacked_pair", "rna_trimer"],
            "dna_max_per_frame": 4, "lipid_fragment_kinds": ["monomer", "dimer", "trimer"], "lipid_max_per_frame": 5,
            "lipid_unit": "lipid", "lipid_max_chain_carbons": None,
            "ion_cluster_sizes": [1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 100], "ion_max_per_frame": 5,
            "dimer_scan_factors": [0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0],
            "max_atoms": None, "max_per_subset": None, "subset_caps": {},
        },
        "04_preoptimisation": {"keep_frames": 5, "fmax": 0.01, "mbd": True, "method": "auto"},
        "05_reference": {"preset": "auto", "mlmm_structures": 400, "mlmm_qm_waters": [2, 4, 8],
                         "mlmm_radius": 8.0},
        "06_training": {"model_size": "large", "epochs": 2000, "batch_size": 32, "fixed_shape": False,
                        "evaluate_splits": ["conformations", "molecules", "scaffolds", "subsets"],
                        "test_subsets": ["dimers"], "learning_curve_fractions": [0.1, 0.25, 0.5, 1.0],
                        "compare_delta": True, "compare_model_sizes": ["small", "medium", "large"],
                        "mlmm_epochs": 2000},
        "07_validation": {"md_ions": ["Na+", "K+", "Cl-", "Mg2+", "Ca2+"], "droplet_waters": 64,
                          "md_steps": 20000, "nve_steps": 10000},
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
    # None is every parameter's "off" (no size limit, NVT instead of a pressure, ...).
    if default is None or value is None:
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
