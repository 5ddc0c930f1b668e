"""Train/validation/test splits that do not leak correlated structures, and nablaDFT's test splits.

Frames along one optimisation path (and conformers derived from one parent)
share ``info['parent_id']``; they always land in the same split, so a test
structure is never a near-copy of a training one.

nablaDFT (Khrabrov et al., 2022) reports a model on three test splits of increasing difficulty,
and so do we (:func:`nabladft_splits`):

``conformations``  new conformations of molecules that are in the training set;
``molecules``      molecules absent from the training set;
``scaffolds``      molecules whose Bemis-Murcko scaffold is absent from the training set;

plus ``subsets``: train on some QCell classes and test on the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
from ase import Atoms
from rdkit import Chem
from rdkit.Chem.Scaffolds import MurckoScaffold

from .structures import structure_id

SPLIT_KINDS = ("conformations", "molecules", "scaffolds", "subsets")


def group_key(atoms: Atoms) -> str:
    """Split group of a structure: its ``parent_id`` or, failing that, its own id."""
    return str(atoms.info.get("parent_id") or structure_id(atoms))


def molecule_key(atoms: Atoms) -> str:
    """Identity of the molecule (not the conformation): its canonical SMILES, else its block name."""
    smiles = atoms.info.get("smiles")
    if smiles:
        return _canonical(str(smiles))
    name = atoms.info.get("name")
    return str(name) if name else atoms.get_chemical_formula()


@lru_cache(maxsize=None)
def _canonical(smiles: str) -> str:
    mol = Chem.MolFromSmiles(smiles)
    return Chem.MolToSmiles(mol) if mol is not None else smiles


@lru_cache(maxsize=None)
def _scaffold(smiles: str) -> str:
    mol = Chem.MolFromSmiles(smiles)
    return MurckoScaffold.MurckoScaffoldSmiles(mol=mol) if mol is not None else ""


def scaffold_key(atoms: Atoms) -> str:
    """Bemis-Murcko scaffold of the structure's SMILES.

    Where no scaffold is defined (no SMILES, as for MD-carved fragments, or an acyclic molecule),
    the molecule is its own group, so the scaffold split degrades to the molecule split there.
    """
    smiles = atoms.info.get("smiles")
    scaffold = _scaffold(str(smiles)) if smiles else ""
    return f"scaffold:{scaffold}" if scaffold else f"molecule:{molecule_key(atoms)}"


def cover_elements(structures: Sequence[Atoms], split: dict[str, list[int]],
                   key: Callable[[Atoms], str] = group_key) -> dict[str, list[int]]:
    """Move whole groups from validation/test into training until training has every element.

    A model cannot predict an element it never saw (its per-element energy is undefined), so a
    held-out group that brings a new element (the one nucleic-acid path of a tiny run, say) goes
    to training instead. Groups are given by ``key``; the rest of the split is unchanged.
    """
    split = {part: list(indices) for part, indices in split.items()}
    seen = {int(z) for i in split["train"] for z in structures[i].numbers}
    for part in ("val", "test"):
        groups: dict[str, list[int]] = {}
        for i in split[part]:
            groups.setdefault(key(structures[i]), []).append(i)
        for members in groups.values():
            elements = {int(z) for i in members for z in structures[i].numbers}
            if not elements <= seen:
                split[part] = [i for i in split[part] if i not in set(members)]
                split["train"] = sorted(split["train"] + members)
                seen |= elements
    return split


def _check_fractions(test_fraction: float, val_fraction: float) -> None:
    for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if test_fraction + val_fraction >= 1.0:
        raise ValueError(f"test_fraction + val_fraction must be below 1, got {test_fraction + val_fraction}")


def split_by_group(structures: Sequence[Atoms], test_fraction: float = 0.2, val_fraction: float = 0.1,
                   seed: int = 0, key: Callable[[Atoms], str] = group_key) -> dict[str, list[int]]:
    """Indices of ``train``, ``val`` and ``test`` structures; all members of a group share a part.

    Groups are given by ``key`` (default :func:`group_key`, the optimisation path). Fractions count
    groups, not structures. At least one group goes to each of test and validation when there are
    three groups or more; a held-out group with an element absent from training is moved to
    training (:func:`cover_elements`). Deterministic under ``seed``.
    """
    _check_fractions(test_fraction, val_fraction)
    groups = sorted({key(atoms) for atoms in structures})
    order = np.random.default_rng(seed).permutation(len(groups))
    n_groups = len(groups)
    n_test = max(1, round(test_fraction * n_groups)) if n_groups >= 3 and test_fraction > 0 else 0
    n_val = max(1, round(val_fraction * n_groups)) if n_groups >= 3 and val_fraction > 0 else 0
    assignment = {}
    for rank, index in enumerate(order):
        assignment[groups[index]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    split: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i, atoms in enumerate(structures):
        split[assignment[key(atoms)]].append(i)
    return cover_elements(structures, split, key)


def split_conformations(structures: Sequence[Atoms], test_fraction: float = 0.2, val_fraction: float = 0.1,
                        seed: int = 0) -> dict[str, list[int]]:
    """Test on new conformations of training molecules.

    Within each molecule (:func:`molecule_key`), whole optimisation paths (:func:`group_key`) are
    assigned to test or validation with the given probabilities, but every molecule keeps at
    least one path in training; a molecule with a single path stays in training.
    """
    _check_fractions(test_fraction, val_fraction)
    rng = np.random.default_rng(seed)
    paths_of: dict[str, list[str]] = {}
    for atoms in structures:
        paths = paths_of.setdefault(molecule_key(atoms), [])
        if group_key(atoms) not in paths:
            paths.append(group_key(atoms))
    assignment = {}
    for molecule in sorted(paths_of):
        paths = sorted(paths_of[molecule])
        order = rng.permutation(len(paths))
        assignment[paths[order[0]]] = "train"
        for index in order[1:]:
            draw = rng.random()
            assignment[paths[index]] = ("test" if draw < test_fraction else
                                        "val" if draw < test_fraction + val_fraction else "train")
    split: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i, atoms in enumerate(structures):
        split[assignment[group_key(atoms)]].append(i)
    return cover_elements(structures, split)


def split_subsets(structures: Sequence[Atoms], test_subsets: Sequence[str], val_fraction: float = 0.1,
                  seed: int = 0) -> dict[str, list[int]]:
    """Test on whole QCell classes: structures of ``test_subsets`` are the test set; validation
    paths are drawn from the rest."""
    present = {str(a.info.get("subset")) for a in structures}
    unknown = sorted(set(test_subsets) - present)
    if unknown:
        raise ValueError(f"test_subsets {unknown}: not in the data (subsets present: {sorted(present)})")
    rest = [i for i, a in enumerate(structures) if str(a.info.get("subset")) not in set(test_subsets)]
    if not rest:
        raise ValueError(f"test_subsets {list(test_subsets)} leave no structure for training")
    inner = split_by_group([structures[i] for i in rest], test_fraction=0.0, val_fraction=val_fraction, seed=seed)
    split = {"train": [rest[i] for i in inner["train"]], "val": [rest[i] for i in inner["val"]],
             "test": [i for i, a in enumerate(structures) if str(a.info.get("subset")) in set(test_subsets)]}
    return cover_elements(structures, split)


def nabladft_splits(structures: Sequence[Atoms], test_fraction: float = 0.2, val_fraction: float = 0.1,
                    seed: int = 0, test_subsets: Sequence[str] | None = None) -> dict[str, dict[str, list[int]]]:
    """The nablaDFT-style test splits: kind -> {"train", "val", "test"} index lists.

    Kinds are ``conformations``, ``molecules`` and ``scaffolds``, plus ``subsets`` when
    ``test_subsets`` is given. A kind whose test set comes out empty on this data (too few
    molecules or scaffolds) is left out rather than reported on nothing.
    """
    splits = {
        "conformations": split_conformations(structures, test_fraction, val_fraction, seed),
        "molecules": split_by_group(structures, test_fraction, val_fraction, seed, key=molecule_key),
        "scaffolds": split_by_group(structures, test_fraction, val_fraction, seed, key=scaffold_key),
    }
    if test_subsets:
        splits["subsets"] = split_subsets(structures, test_subsets, val_fraction, seed)
    return {kind: split for kind, split in splits.items() if split["test"] and split["train"]}
