"""Carbohydrate building blocks: monosaccharide SMILES and their 3D structures.

Stage 01 for the ``carbohydrates`` subset. Each block is a free, neutral
monosaccharide in its cyclic (pyranose or furanose) form with every stereo
centre specified, anomeric carbon included.

Every SMILES in :data:`MONOSACCHARIDES` was checked against the CIP
configuration of each ring carbon in its IUPAC name (for example
beta-D-glucopyranose = (2R,3R,4S,5S,6R)-6-(hydroxymethyl)oxane-2,3,4,5-tetrol);
``tests/test_carbohydrates.py`` keeps that table and re-checks it with RDKit's
new CIP labeller.

Atom order contract (see :mod:`qcell_nb.structures`): the ``smiles`` stored in
``atoms.info`` is RDKit's canonical isomeric SMILES, and the Atoms are built
from ``Chem.AddHs(Chem.MolFromSmiles(that_string))``, so re-parsing the stored
string reproduces the atom order exactly (heavy atoms in SMILES order, then
hydrogens).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from ase import Atoms
from rdkit import Chem
from rdkit.Chem import AllChem, Descriptors

from ..structures import SUBSETS

__all__ = [
    "MONOSACCHARIDES",
    "build_library",
    "build_monosaccharide",
    "canonical_smiles",
    "mol_with_hydrogens",
    "molecule_from_smiles",
]

#: Name -> isomeric SMILES (full stereo, no explicit H atoms). Sugar carbon
#: labels (C1..C5, C2..C5 for the ketose) and their expected CIP codes are in
#: the comments; they are the ring-position descriptors of the IUPAC name.
MONOSACCHARIDES: dict[str, str] = {
    # C1 S, C2 R, C3 S, C4 S, C5 R
    "alpha-D-glucopyranose": "OC[C@H]1O[C@H](O)[C@H](O)[C@@H](O)[C@@H]1O",
    # C1 R, C2 R, C3 S, C4 S, C5 R
    "beta-D-glucopyranose": "OC[C@H]1O[C@@H](O)[C@H](O)[C@@H](O)[C@@H]1O",
    # C1 S, C2 R, C3 S, C4 R, C5 R (C4 epimer of glucose)
    "alpha-D-galactopyranose": "OC[C@H]1O[C@H](O)[C@H](O)[C@@H](O)[C@H]1O",
    # C1 R, C2 R, C3 S, C4 R, C5 R
    "beta-D-galactopyranose": "OC[C@H]1O[C@@H](O)[C@H](O)[C@@H](O)[C@H]1O",
    # C1 S, C2 S, C3 S, C4 S, C5 R (C2 epimer of glucose)
    "alpha-D-mannopyranose": "OC[C@H]1O[C@H](O)[C@@H](O)[C@@H](O)[C@@H]1O",
    # C1 R, C2 S, C3 S, C4 S, C5 R
    "beta-D-mannopyranose": "OC[C@H]1O[C@@H](O)[C@@H](O)[C@@H](O)[C@@H]1O",
    # C1 R, C2 R, C3 S, C4 R (C4 reads R only because C5 lost its CH2OH)
    "beta-D-xylopyranose": "C1O[C@@H](O)[C@H](O)[C@@H](O)[C@@H]1O",
    # C1 R, C2 S, C3 R, C4 S, C5 S (enantiomer of 6-deoxy-alpha-D-galactose)
    "alpha-L-fucopyranose": "C[C@@H]1O[C@@H](O)[C@@H](O)[C@H](O)[C@@H]1O",
    # C1 R, C2 R, C3 R, C4 S, C5 R (C3 reads R because C2 carries N, not O)
    "N-acetyl-beta-D-glucosamine": "OC[C@H]1O[C@@H](O)[C@H](NC(C)=O)[C@@H](O)[C@@H]1O",
    # C1 S, C2 R, C3 S, C4 R
    "alpha-D-ribofuranose": "OC[C@H]1O[C@H](O)[C@H](O)[C@@H]1O",
    # C1 R, C2 R, C3 S, C4 R
    "beta-D-ribofuranose": "OC[C@H]1O[C@@H](O)[C@H](O)[C@@H]1O",
    # C1 R, C3 S, C4 R
    "2-deoxy-beta-D-ribofuranose": "OC[C@H]1O[C@@H](O)C[C@@H]1O",
    # C2 R, C3 S, C4 S, C5 R (anomeric carbon is C2)
    "beta-D-fructofuranose": "OC[C@H]1O[C@](O)(CO)[C@@H](O)[C@@H]1O",
}


def _parse(smiles: str) -> Chem.Mol:
    """RDKit molecule of ``smiles``; ValueError naming it if RDKit cannot parse it."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"unparsable SMILES {smiles!r}")
    return mol


def canonical_smiles(smiles: str) -> str:
    """RDKit canonical isomeric SMILES of ``smiles`` (no explicit H atoms).

    Raises
    ------
    ValueError
        If RDKit cannot parse ``smiles``.
    """
    return Chem.MolToSmiles(_parse(smiles), isomericSmiles=True)


def mol_with_hydrogens(smiles: str) -> Chem.Mol:
    """``Chem.AddHs(Chem.MolFromSmiles(smiles))``: the atom order of the contract.

    Raises
    ------
    ValueError
        If RDKit cannot parse ``smiles``.
    """
    return Chem.AddHs(_parse(smiles))


def _embed(mol: Chem.Mol, label: str, seed: int) -> None:
    """Embed one conformer in place with ETKDGv3, then relax with MMFF94 (or UFF)."""
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    if AllChem.EmbedMolecule(mol, params) != 0:
        # Random starting coordinates rescue most strained or bulky cases.
        params.useRandomCoords = True
        if AllChem.EmbedMolecule(mol, params) != 0:
            raise RuntimeError(f"ETKDGv3 could not embed {label} (seed {seed})")
    # The force field only tidies bond lengths and angles; the conformational
    # search proper is sampling.conformer_search.
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
    elif AllChem.UFFHasAllMoleculeParams(mol):
        AllChem.UFFOptimizeMolecule(mol, maxIters=2000)


def molecule_from_smiles(smiles: str, name: str, seed: int = 0, subset: str = "carbohydrates") -> Atoms:
    """3D structure of a molecule given by SMILES.

    The SMILES is canonicalised first and the molecule is built from the
    canonical string, so ``atoms.info['smiles']`` re-parses (with ``AddHs``) to
    exactly the atom order of the returned Atoms.

    Parameters
    ----------
    smiles:
        Isomeric SMILES; stereo centres left unspecified stay unspecified and
        ETKDG picks one at random (seeded).
    name:
        Block name stored in ``info['name']``.
    seed:
        Seed of the ETKDGv3 embedding; the same seed gives the same geometry.
    subset:
        QCell subset stored in ``info['subset']``; one of
        :data:`qcell_nb.structures.SUBSETS`.

    Returns
    -------
    ase.Atoms
        ``n_atoms`` atoms (hydrogens included) with positions in Å and info
        keys name, subset, smiles, charge (formal charge, e), multiplicity
        (1 + number of radical electrons).

    Raises
    ------
    ValueError
        If ``smiles`` cannot be parsed or ``subset`` is unknown.
    RuntimeError
        If no 3D embedding is found.
    """
    if subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r}; known subsets: {', '.join(SUBSETS)}")
    try:
        smiles_out = canonical_smiles(smiles)
    except ValueError as err:
        raise ValueError(f"unparsable SMILES {smiles!r} for {name!r}") from err
    mol = mol_with_hydrogens(smiles_out)
    _embed(mol, f"{name!r} ({smiles_out})", seed)
    atoms = Atoms(numbers=[atom.GetAtomicNum() for atom in mol.GetAtoms()],
                  positions=np.asarray(mol.GetConformer().GetPositions(), dtype=float))
    atoms.info.update(
        name=name,
        subset=subset,
        smiles=smiles_out,
        charge=int(Chem.GetFormalCharge(mol)),
        multiplicity=int(Descriptors.NumRadicalElectrons(mol)) + 1,
    )
    return atoms


def build_monosaccharide(name: str, seed: int = 0) -> Atoms:
    """3D structure of the monosaccharide ``name`` from :data:`MONOSACCHARIDES`.

    Parameters
    ----------
    name:
        A key of :data:`MONOSACCHARIDES`, e.g. ``"beta-D-glucopyranose"``.
    seed:
        Seed of the ETKDGv3 embedding.

    Returns
    -------
    ase.Atoms
        Neutral singlet, ``subset="carbohydrates"``, positions in Å (MMFF94
        relaxed); see :func:`molecule_from_smiles` for the info keys.

    Raises
    ------
    ValueError
        If ``name`` is not in the library (the message lists the known names).
    """
    if name not in MONOSACCHARIDES:
        raise ValueError(f"unknown monosaccharide {name!r}; known names: {', '.join(MONOSACCHARIDES)}")
    return molecule_from_smiles(MONOSACCHARIDES[name], name=name, seed=seed, subset="carbohydrates")


def build_library(names: Iterable[str] | None = None, seed: int = 0) -> list[Atoms]:
    """Build several monosaccharides (all of :data:`MONOSACCHARIDES` by default).

    Parameters
    ----------
    names:
        Library names in the order wanted; ``None`` means every entry.
    seed:
        Embedding seed used for every block.

    Returns
    -------
    list of ase.Atoms
        One structure per name, in the order given.
    """
    selected = list(MONOSACCHARIDES) if names is None else list(names)
    unknown = [name for name in selected if name not in MONOSACCHARIDES]
    if unknown:
        # Fail before any embedding so a typo does not cost a partial build.
        raise ValueError(f"unknown monosaccharide(s) {unknown}; known names: {', '.join(MONOSACCHARIDES)}")
    return [build_monosaccharide(name, seed=seed) for name in selected]
