"""CREST-like conformer search for molecules given by SMILES (stage 02, sugars).

QCell samples carbohydrate conformers with CREST (GFN2-xTB metadynamics,
12 kcal/mol window). This is a cheaper open stand-in with the same output
contract: many seeded ETKDGv3 embeddings, an MMFF94 pre-relaxation, GFN2-xTB
single points (tblite) to rank them, an energy window, and removal of
duplicates by symmetry-aware RMSD after alignment. Geometries stay at the
MMFF level; stage 04 relaxes the selected ones with GFN2-xTB.

It handles the larger carbohydrate blocks unchanged (disaccharides of 37-61
atoms, capped glycopeptides of ~50 atoms; stereo is re-checked after the
force-field relaxation). Cost grows about linearly with ``n_embed``: measured
on one busy core, ~0.1-0.2 s per embedding for a monosaccharide, ~0.5-0.8 s
for a disaccharide and ~1.4 s for GlcNAc-beta-Asn (the GFN2-xTB single point
and the MMFF relaxation about half each).

Energies are in eV (``xtb_energy``) and kcal/mol (``rel_energy_kcal``,
relative to the lowest conformer of the search), with 1 kcal/mol =
``ase.units.kcal / ase.units.mol`` eV.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable
from typing import Literal

import numpy as np
from ase import Atoms, units
from rdkit import Chem
from rdkit.Chem import AllChem, rdMolAlign

from .calculators.tightbinding import single_point_energy
from .structures import structure_id

__all__ = ["KCAL_PER_MOL", "conformer_search", "search_many"]

#: 1 kcal/mol in eV (0.0433641...).
KCAL_PER_MOL = units.kcal / units.mol

RmsdAtoms = Literal["heavy", "heavy+polar_h"]


def _label(atoms: Atoms) -> str:
    return repr(atoms.info.get("name", atoms.get_chemical_formula()))


def _rdkit_seed(seed: int) -> int:
    """ETKDG seed for a user seed.

    RDKit seeds conformer ``i`` of ``EmbedMultipleConfs`` with
    ``randomSeed * (i + 1)``: seed 0 gives ``n`` identical embeddings, and
    small seeds share most of their streams (seed 2 repeats every second
    conformer of seed 1). A spread-out, non-zero seed avoids both; the bound
    keeps ``seed * n_embed`` inside a C int for ``n_embed`` up to ~2000.
    """
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return int(np.random.default_rng(seed).integers(1, 1_000_000))


def _template(atoms: Atoms) -> Chem.Mol:
    """RDKit molecule with H atoms in the atom order of ``atoms``.

    Raises
    ------
    ValueError
        If ``info['smiles']`` is missing, unparsable, or does not match the
        elements of ``atoms`` atom by atom.
    """
    smiles = atoms.info.get("smiles")
    if not smiles:
        raise ValueError(f"structure {_label(atoms)} has no info['smiles']; "
                         "the conformer search rebuilds the molecule from it")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"unparsable SMILES {smiles!r} of structure {_label(atoms)}")
    mol = Chem.AddHs(mol)
    numbers = [atom.GetAtomicNum() for atom in mol.GetAtoms()]
    if numbers != atoms.get_atomic_numbers().tolist():
        raise ValueError(f"SMILES {smiles!r} of structure {_label(atoms)} does not give its atom order "
                         "(AddHs(MolFromSmiles(smiles)) must list the same elements in the same order)")
    return mol


def _rmsd_subset(mol: Chem.Mol, rmsd_atoms: RmsdAtoms) -> Chem.Mol:
    """Copy of ``mol`` (with its conformers) restricted to the atoms compared by RMSD.

    Dropping C-H hydrogens keeps the symmetry enumeration of the alignment
    small (a CH3 alone multiplies it by 3); hydroxyl H atoms are unique, so
    keeping them is cheap and makes distinct hydrogen-bond networks count.
    """
    if rmsd_atoms not in ("heavy", "heavy+polar_h"):
        raise ValueError(f"rmsd_atoms must be 'heavy' or 'heavy+polar_h', got {rmsd_atoms!r}")
    editable = Chem.RWMol(mol)
    drop = [atom.GetIdx() for atom in mol.GetAtoms() if atom.GetAtomicNum() == 1
            and (rmsd_atoms == "heavy" or all(n.GetAtomicNum() in (1, 6) for n in atom.GetNeighbors()))]
    for index in sorted(drop, reverse=True):
        editable.RemoveAtom(index)
    subset = editable.GetMol()
    subset.UpdatePropertyCache(strict=False)
    return subset


def _stereo_kept(template: Chem.Mol, positions: np.ndarray) -> bool:
    """Whether a geometry still has the template's stereo (no inversion in relaxation)."""
    if not any(atom.GetChiralTag() != Chem.ChiralType.CHI_UNSPECIFIED for atom in template.GetAtoms()):
        return True
    probe = Chem.Mol(template)
    probe.RemoveAllConformers()
    conformer = Chem.Conformer(probe.GetNumAtoms())
    for index, xyz in enumerate(positions):
        conformer.SetAtomPosition(index, xyz.tolist())
    probe.AddConformer(conformer, assignId=True)
    Chem.AssignStereochemistryFrom3D(probe)
    return Chem.MolToSmiles(Chem.RemoveHs(probe)) == Chem.MolToSmiles(Chem.RemoveHs(template))


def conformer_search(atoms: Atoms, n_embed: int = 50, window_kcal: float = 12.0,
                     rmsd_threshold: float = 0.5, max_conformers: int | None = None, seed: int = 0,
                     mmff: bool = True, rmsd_atoms: RmsdAtoms = "heavy", n_threads: int = 1) -> list[Atoms]:
    """Low-energy, mutually distinct conformers of the molecule in ``atoms``.

    Parameters
    ----------
    atoms:
        A block with ``info['smiles']`` such that ``AddHs(MolFromSmiles(...))``
        has its atom order (as built by :mod:`qcell_nb.blocks`); its own
        geometry is not used. Charge and multiplicity come from its info.
    n_embed:
        ETKDGv3 embeddings attempted (fewer survive ETKDG's RMSD pruning).
    window_kcal:
        Keep conformers within this many kcal/mol of the lowest GFN2-xTB energy.
    rmsd_threshold:
        Two conformers closer than this RMSD (Å, after optimal alignment over
        symmetry-equivalent atom orders) are duplicates; the lower one stays.
        Also ETKDG's pruning threshold.
    max_conformers:
        Keep at most this many (the lowest); ``None`` keeps all.
    seed:
        ETKDG random seed; the same seed gives the same conformers.
    mmff:
        Relax embeddings with MMFF94 (UFF where MMFF lacks parameters) first.
    rmsd_atoms:
        Atoms compared: ``"heavy"`` (default), or ``"heavy+polar_h"`` to also
        tell hydroxyl rotamers apart.
    n_threads:
        Threads for the RDKit embedding and force-field relaxation (0: all
        cores). The result does not depend on it: RDKit seeds each embedding
        on its own and relaxes each conformer independently.

    Returns
    -------
    list of ase.Atoms
        Sorted by energy, lowest first. Each has the input's info plus
        ``conformer`` (rank, 0 = lowest), ``xtb_energy`` (eV),
        ``rel_energy_kcal`` (kcal/mol) and ``parent_id`` (id of the input).

    Raises
    ------
    ValueError
        On bad arguments or a missing/unparsable/mismatched SMILES.
    RuntimeError
        If no conformer could be embedded or every single point failed.
    """
    if n_embed < 1:
        raise ValueError(f"n_embed must be at least 1, got {n_embed}")
    if window_kcal < 0:
        raise ValueError(f"window_kcal must be non-negative, got {window_kcal}")
    if rmsd_threshold < 0:
        raise ValueError(f"rmsd_threshold must be non-negative, got {rmsd_threshold}")
    if max_conformers is not None and max_conformers < 1:
        raise ValueError(f"max_conformers must be at least 1 or None, got {max_conformers}")
    if n_threads < 0:
        raise ValueError(f"n_threads must be non-negative, got {n_threads}")
    template = _template(atoms)
    mol = Chem.Mol(template)

    params = AllChem.ETKDGv3()
    params.randomSeed = _rdkit_seed(seed)
    params.pruneRmsThresh = float(rmsd_threshold)
    # With polar H compared later, pruning on heavy atoms alone would already
    # merge hydroxyl rotamers; prune on all atoms then (a weaker filter).
    params.onlyHeavyAtomsForRMS = rmsd_atoms == "heavy"
    params.numThreads = int(n_threads)  # 1 by default: polite on shared machines
    conformer_ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=int(n_embed), params=params))
    if not conformer_ids:
        raise RuntimeError(f"ETKDGv3 embedded no conformer of {_label(atoms)} (seed {seed})")
    if mmff:
        if AllChem.MMFFHasAllMoleculeParams(mol):
            AllChem.MMFFOptimizeMoleculeConfs(mol, numThreads=int(n_threads), maxIters=2000)
        elif AllChem.UFFHasAllMoleculeParams(mol):
            AllChem.UFFOptimizeMoleculeConfs(mol, numThreads=int(n_threads), maxIters=2000)

    # Rank by GFN2-xTB; a conformer whose SCF fails is dropped, not fatal.
    energies: dict[int, float] = {}
    errors: list[str] = []
    for conf_id in conformer_ids:
        positions = mol.GetConformer(conf_id).GetPositions()
        if mmff and not _stereo_kept(template, positions):
            continue
        trial = Atoms(atoms.numbers, positions)
        trial.info = dict(atoms.info)
        try:
            energies[conf_id] = single_point_energy(trial)
        except (RuntimeError, ValueError) as err:
            errors.append(str(err))
    if not energies:
        detail = f": {errors[0]}" if errors else " (stereo lost in every relaxation)"
        raise RuntimeError(f"no conformer of {_label(atoms)} could be ranked{detail}")

    lowest = min(energies.values())
    window = window_kcal * KCAL_PER_MOL
    ranked = sorted((energy, conf_id) for conf_id, energy in energies.items() if energy - lowest <= window)

    # Greedy de-duplication in energy order: each kept conformer is the
    # lowest of its RMSD neighbourhood.
    subset = _rmsd_subset(mol, rmsd_atoms)
    symmetry = subset.GetSubstructMatches(subset, uniquify=False, useChirality=False, maxMatches=10000)
    atom_maps = [list(zip(match, range(len(match)))) for match in symmetry]
    kept: list[tuple[float, int]] = []
    for energy, conf_id in ranked:
        # GetBestRMS aligns the probe in place; only the subset copy moves.
        if all(rdMolAlign.GetBestRMS(subset, subset, conf_id, ref_id, map=atom_maps) >= rmsd_threshold
               for _, ref_id in kept):
            kept.append((energy, conf_id))
            if max_conformers is not None and len(kept) == max_conformers:
                break

    parent = structure_id(atoms)
    conformers = []
    for rank, (energy, conf_id) in enumerate(kept):
        conformer = Atoms(atoms.numbers, mol.GetConformer(conf_id).GetPositions())
        conformer.info = dict(atoms.info)
        conformer.info.update(conformer=rank, xtb_energy=float(energy),
                              rel_energy_kcal=float((energy - lowest) / KCAL_PER_MOL), parent_id=parent)
        conformers.append(conformer)
    return conformers


def search_many(structures: Iterable[Atoms], **kwargs) -> tuple[list[Atoms], list[tuple[str, str]]]:
    """Run :func:`conformer_search` on each structure; a failure does not stop the rest.

    Parameters
    ----------
    structures:
        Blocks with ``info['smiles']``.
    **kwargs:
        Passed to :func:`conformer_search` (``n_embed``, ``window_kcal``, ...).

    Returns
    -------
    results : list of ase.Atoms
        All conformers of all successful structures, block by block.
    failures : list of (str, str)
        ``(name, error text)`` for each structure whose search raised.
    """
    results: list[Atoms] = []
    failures: list[tuple[str, str]] = []
    for atoms in structures:
        try:
            results.extend(conformer_search(atoms, **kwargs))
        except Exception as err:  # recorded, never fatal: the stage goes on
            name = str(atoms.info.get("name", atoms.get_chemical_formula()))
            failures.append((name, "".join(traceback.format_exception_only(type(err), err)).strip()))
    return results, failures
