"""Train/validation/test splits that do not leak correlated structures.

Frames along one optimisation path (and conformers derived from one parent)
share ``info['parent_id']``; they always land in the same split, so a test
structure is never a near-copy of a training one.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from .structures import structure_id


def group_key(atoms: Atoms) -> str:
    """Split group of a structure: its ``parent_id`` or, failing that, its own id."""
    return str(atoms.info.get("parent_id") or structure_id(atoms))


def split_by_group(structures: list[Atoms], test_fraction: float = 0.2, val_fraction: float = 0.1,
                   seed: int = 0) -> dict[str, list[int]]:
    """Indices of ``train``, ``val`` and ``test`` structures, grouped by :func:`group_key`.

    Fractions count groups, not structures. At least one group goes to each of
    test and validation when there are three groups or more. Deterministic
    under ``seed``.
    """
    for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if test_fraction + val_fraction >= 1.0:
        raise ValueError(f"test_fraction + val_fraction must be below 1, got {test_fraction + val_fraction}")
    groups = sorted({group_key(atoms) for atoms in structures})
    order = np.random.default_rng(seed).permutation(len(groups))
    n_groups = len(groups)
    n_test = max(1, round(test_fraction * n_groups)) if n_groups >= 3 and test_fraction > 0 else 0
    n_val = max(1, round(val_fraction * n_groups)) if n_groups >= 3 and val_fraction > 0 else 0
    assignment = {}
    for rank, index in enumerate(order):
        assignment[groups[index]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    split: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i, atoms in enumerate(structures):
        split[assignment[group_key(atoms)]].append(i)
    return split
