"""Carbohydrate building blocks: monosaccharide SMILES and their 3D structures.

Stage 01 for the ``carbohydrates`` subset. Each block is a free, neutral
monosaccharide in its cyclic (pyranose or furanose) form with every stereo
centre specified, anomeric carbon included. The library (:data:`LIBRARY`,
52 entries) holds both anomers of the eight D-aldohexopyranoses, of the
aldopentopyranoses (D-Rib, L-Ara, D-Xyl, D-Lyx) and of the common furanoses
(D-Rib, L-Ara, 2-deoxy-D-Rib, D-Fru), D-fructopyranose, beta-D-Galf, the
6-deoxy sugars L-Fuc and L-Rha, the amino sugars GlcNAc, GalNAc (both
anomers), beta-ManNAc and beta-GlcN, the uronic acids GlcA, GalA (both
anomers) and alpha-L-IdoA, and sialic acid (Neu5Ac, both anomers).

Charge: acids (uronic acids, Neu5Ac) are the neutral COOH forms, so every
block is a neutral singlet. An isolated carboxylate in vacuum is what the
PBE0 labels of stage 05 would see without counter-ions or solvent, and its
HOMO is barely bound without diffuse functions; the neutral acid is the
well-defined gas-phase fragment. Build a carboxylate with
:func:`molecule_from_smiles` if wanted (its charge is read from the SMILES).

Every SMILES is generated from the Fischer projection (:data:`FISCHER_D`, the
series, the anomer and the ring template) and checked against hand-written
CIP labels of every stereocentre (for example beta-D-glucopyranose =
(2R,3R,4S,5S,6R)-6-(hydroxymethyl)oxane-2,3,4,5-tetrol) in
``tests/test_carbohydrates.py`` with RDKit's new CIP labeller.

Atom order contract (see :mod:`qcell_nb.structures`): the ``smiles`` stored in
``atoms.info`` is RDKit's canonical isomeric SMILES, and the Atoms are built
from ``Chem.AddHs(Chem.MolFromSmiles(that_string))``, so re-parsing the stored
string reproduces the atom order exactly (heavy atoms in SMILES order, then
hydrogens).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from rdkit import Chem
from rdkit.Chem import AllChem, Descriptors

from ..structures import SUBSETS

__all__ = [
    "FISCHER_D",
    "LIBRARY",
    "MONOSACCHARIDES",
    "Monosaccharide",
    "build_library",
    "build_monosaccharide",
    "canonical_smiles",
    "mol_with_geometry",
    "mol_with_hydrogens",
    "molecule_from_smiles",
    "sugar_residues",
]

#: D-series Fischer configuration of the chain stereocentres, lowest-numbered
#: first: ``R`` when the substituent points right, ``L`` left (aldohexoses
#: C2-C5, aldopentoses C2-C4, the ketohexose C3-C5, neuraminic acid C4-C8,
#: i.e. D-glycero-D-galacto). The L series mirrors every letter.
FISCHER_D: dict[str, str] = {
    "allo": "RRRR", "altro": "LRRR", "gluco": "RLRR", "manno": "LLRR",
    "gulo": "RRLR", "ido": "LRLR", "galacto": "RLLR", "talo": "LLLR",
    "ribo": "RRR", "arabino": "LRR", "xylo": "RLR", "lyxo": "LLR",
    "fructo": "LRR", "neuramino": "RLLRR",
}

# Ring templates: ``{cN}`` is sugar carbon N as a stereocentre, ``{xN}`` its
# exocyclic substituent. Chirality in SMILES depends only on the order in
# which neighbours are written, so within one template moving a substituent
# from one side of the Fischer projection to the other (swapping it with the
# H) is exactly one flip of that carbon's @/@@ tag. _RIGHT_TAG holds, per
# template, the tag that puts the substituent on the right; it was calibrated
# on the CIP-checked alpha-D-glucopyranose, beta-D-xylopyranose,
# alpha-D-ribofuranose and beta-D-fructofuranose and, for open-chain carbons,
# on D-glyceraldehyde ("O=C[C@H](O)CO" is R: top, H, OH, bottom -> @ means OH
# right). tests/test_carbohydrates.py re-checks every entry against
# hand-written CIP labels.
_TEMPLATES: dict[str, str] = {
    "hexopyranose": "{x6}{c5}1O{c1}({x1}){c2}({x2}){c3}({x3}){c4}1{x4}",
    "pentopyranose": "C1O{c1}({x1}){c2}({x2}){c3}({x3}){c4}1{x4}",
    "pentofuranose": "OC{c4}1O{c1}({x1}){c2}({x2}){c3}1{x3}",
    "hexofuranose": "OC{c5}(O){c4}1O{c1}({x1}){c2}({x2}){c3}1{x3}",
    "ketohexofuranose": "OC{c5}1O{c2}({x2})(CO){c3}({x3}){c4}1{x4}",
    "ketohexopyranose": "C1O{c2}({x2})(CO){c3}({x3}){c4}({x4}){c5}1{x5}",
    # 3-deoxy-non-2-ulopyranosonic acid (C1 carboxyl, C3 CH2, side chain C7-C9)
    "nonulopyranosonic": "OC{c8}(O){c7}(O){c6}1O{c2}({x2})(C(=O)O)C{c4}({x4}){c5}1{x5}",
}
_RIGHT_TAG: dict[str, dict[int, str]] = {
    "hexopyranose": {1: "@", 2: "@", 3: "@", 4: "@@", 5: "@"},
    "pentopyranose": {1: "@", 2: "@", 3: "@", 4: "@@"},
    "pentofuranose": {1: "@", 2: "@", 3: "@@", 4: "@"},
    "hexofuranose": {1: "@", 2: "@", 3: "@@", 4: "@", 5: "@@"},
    "ketohexofuranose": {2: "@@", 3: "@", 4: "@@", 5: "@"},
    "ketohexopyranose": {2: "@@", 3: "@", 4: "@", 5: "@@"},
    "nonulopyranosonic": {2: "@@", 4: "@", 5: "@@", 6: "@", 7: "@@", 8: "@@"},
}
#: Anomeric carbon and anomeric reference carbon (alpha: the anomeric O is cis
#: in the Fischer projection to the O of the reference carbon; beta: trans).
_ANOMERIC: dict[str, tuple[int, int]] = {
    "hexopyranose": (1, 5), "pentopyranose": (1, 4), "pentofuranose": (1, 4), "hexofuranose": (1, 5),
    "ketohexofuranose": (2, 5), "ketohexopyranose": (2, 5), "nonulopyranosonic": (2, 7),
}
_TOKEN = re.compile(r"\{c(\d)\}|\(\{x(\d)\}\)|\{x(\d)\}")
_MIRROR = str.maketrans("RL", "LR")


@dataclass(frozen=True)
class Monosaccharide:
    """One library entry: a cyclic monosaccharide with every stereocentre fixed.

    Attributes
    ----------
    name:
        Library name, e.g. ``"beta-D-glucopyranose"``.
    template:
        Ring template: ``hexopyranose``, ``pentopyranose``, ``pentofuranose``,
        ``hexofuranose``, ``ketohexofuranose``, ``ketohexopyranose`` or
        ``nonulopyranosonic``.
    configuration:
        Fischer side (``R``/``L``) of each chain stereocentre, lowest carbon first.
    anomer:
        ``"alpha"`` or ``"beta"``.
    substituents:
        ``(carbon, group)`` pairs overriding the default exocyclic hydroxyl:
        group as SMILES written from the ring carbon, ``""`` for a deoxy
        carbon, ``"NC(C)=O"`` acetamido, ``"N"`` amino; carbon 6 of a
        hexopyranose is the C6 group itself: ``"OC"`` CH2OH (default),
        ``"C"`` CH3, ``"OC(=O)"`` COOH.
    """

    name: str
    template: str
    configuration: str
    anomer: str
    substituents: tuple[tuple[int, str], ...] = ()

    def __post_init__(self) -> None:
        if self.template not in _TEMPLATES:
            raise ValueError(f"{self.name}: unknown ring template {self.template!r}; known: {', '.join(_TEMPLATES)}")
        chain = len(_RIGHT_TAG[self.template]) - 1
        if len(self.configuration) != chain or set(self.configuration) - {"R", "L"}:
            raise ValueError(f"{self.name}: configuration {self.configuration!r} must be {chain} letters R/L "
                             f"for a {self.template}")
        if self.anomer not in ("alpha", "beta"):
            raise ValueError(f"{self.name}: anomer must be 'alpha' or 'beta', got {self.anomer!r}")

    @property
    def anomeric_carbon(self) -> int:
        """Sugar number of the anomeric carbon (1 for aldoses, 2 for ketoses)."""
        return _ANOMERIC[self.template][0]

    @property
    def smiles(self) -> str:
        """Isomeric SMILES, no explicit H atoms, every stereocentre specified."""
        anomeric, reference = _ANOMERIC[self.template]
        side = dict(zip(sorted(number for number in _RIGHT_TAG[self.template] if number != anomeric),
                        self.configuration))
        side[anomeric] = side[reference] if self.anomer == "alpha" else side[reference].translate(_MIRROR)
        groups = {6: "OC"} if self.template == "hexopyranose" else {}
        groups.update(self.substituents)

        def fill(match: re.Match) -> str:
            carbon, branch, tail = match.groups()
            if carbon is not None:
                number = int(carbon)
                if groups.get(number, "O") == "":
                    return "C"  # deoxy: no longer a stereocentre
                right = _RIGHT_TAG[self.template][number]
                tag = right if side[number] == "R" else ("@@" if right == "@" else "@")
                # A ketose's anomeric carbon has no H.
                return f"[C{tag}]" if number == anomeric and anomeric == 2 else f"[C{tag}H]"
            group = groups.get(int(branch or tail), "O")
            return group if tail or not group else f"({group})"

        return _TOKEN.sub(fill, _TEMPLATES[self.template])


def _entry(name: str, template: str, parent: str, series: str, anomer: str, **groups: str) -> Monosaccharide:
    configuration = FISCHER_D[parent] if series == "D" else FISCHER_D[parent].translate(_MIRROR)
    substituents = tuple(sorted((int(key[1:]), value) for key, value in groups.items()))
    return Monosaccharide(name, template, configuration, anomer, substituents)


def _library() -> dict[str, Monosaccharide]:
    """The 52 entries, in a fixed order (families together, alpha before beta)."""
    entries: list[Monosaccharide] = []
    for parent in ("allo", "altro", "gluco", "manno", "gulo", "ido", "galacto", "talo"):
        for anomer in ("alpha", "beta"):
            entries.append(_entry(f"{anomer}-D-{parent}pyranose", "hexopyranose", parent, "D", anomer))
    for parent, series in (("ribo", "D"), ("arabino", "L"), ("xylo", "D"), ("lyxo", "D")):
        for anomer in ("alpha", "beta"):
            entries.append(_entry(f"{anomer}-{series}-{parent}pyranose", "pentopyranose", parent, series, anomer))
    families = [
        ("{}-D-ribofuranose", "pentofuranose", "ribo", "D", {}),
        ("{}-L-arabinofuranose", "pentofuranose", "arabino", "L", {}),
        ("2-deoxy-{}-D-ribofuranose", "pentofuranose", "ribo", "D", {"x2": ""}),
        ("{}-D-fructofuranose", "ketohexofuranose", "fructo", "D", {}),
        ("{}-D-fructopyranose", "ketohexopyranose", "fructo", "D", {}),
        ("{}-L-fucopyranose", "hexopyranose", "galacto", "L", {"x6": "C"}),  # 6-deoxy-L-galactose
        ("{}-L-rhamnopyranose", "hexopyranose", "manno", "L", {"x6": "C"}),  # 6-deoxy-L-mannose
        ("N-acetyl-{}-D-glucosamine", "hexopyranose", "gluco", "D", {"x2": "NC(C)=O"}),
        ("N-acetyl-{}-D-galactosamine", "hexopyranose", "galacto", "D", {"x2": "NC(C)=O"}),
        # Acids as the neutral COOH form, like every other block (see module docstring).
        ("{}-D-glucopyranuronic acid", "hexopyranose", "gluco", "D", {"x6": "OC(=O)"}),
        ("{}-D-galactopyranuronic acid", "hexopyranose", "galacto", "D", {"x6": "OC(=O)"}),
        ("N-acetyl-{}-neuraminic acid", "nonulopyranosonic", "neuramino", "D", {"x5": "NC(C)=O"}),
    ]
    for pattern, template, parent, series, groups in families:
        for anomer in ("alpha", "beta"):
            entries.append(_entry(pattern.format(anomer), template, parent, series, anomer, **groups))
    entries += [
        _entry("beta-D-galactofuranose", "hexofuranose", "galacto", "D", "beta"),
        _entry("N-acetyl-beta-D-mannosamine", "hexopyranose", "manno", "D", "beta", x2="NC(C)=O"),
        _entry("beta-D-glucosamine", "hexopyranose", "gluco", "D", "beta", x2="N"),
        _entry("alpha-L-idopyranuronic acid", "hexopyranose", "ido", "L", "alpha", x6="OC(=O)"),
    ]
    return {entry.name: entry for entry in entries}


#: Name -> library entry (52 monosaccharides).
LIBRARY: dict[str, Monosaccharide] = _library()

#: Name -> isomeric SMILES (full stereo, no explicit H atoms) of every entry.
MONOSACCHARIDES: dict[str, str] = {name: entry.smiles for name, entry in LIBRARY.items()}


def sugar_residues(mol: Chem.Mol) -> list[dict[int, int]]:
    """Sugar carbon numbering of every monosaccharide residue in ``mol``.

    A residue is a 5- or 6-membered ring of carbons and one oxygen. Its
    anomeric carbon is the ring-O neighbour carrying an exocyclic O or N (the
    hydroxyl of a free sugar, the glycosidic O, the N of an N-glycoside); it is
    C2 when it also carries an exocyclic carbon (ketoses, sialic acid, whose C1
    that carbon is) and C1 otherwise. Numbers run round the ring away from the
    ring O and then along the exocyclic C-C chain of the last ring carbon
    (C6 of a hexopyranose, C5-C6 of a hexofuranose, C7-C9 of Neu5Ac).

    Parameters
    ----------
    mol:
        RDKit molecule (with or without explicit H).

    Returns
    -------
    list of dict
        One mapping per residue: sugar carbon number -> atom index, plus key
        ``0`` for the ring oxygen. Residues whose anomeric carbon cannot be
        told apart are skipped.
    """
    residues = []
    for ring in mol.GetRingInfo().AtomRings():
        symbols = [mol.GetAtomWithIdx(i).GetSymbol() for i in ring]
        if len(ring) not in (5, 6) or symbols.count("O") != 1 or symbols.count("C") != len(ring) - 1:
            continue
        ring_o = ring[symbols.index("O")]

        def exocyclic(index: int, elements: tuple[str, ...]) -> list[int]:
            return [n.GetIdx() for n in mol.GetAtomWithIdx(index).GetNeighbors()
                    if n.GetSymbol() in elements and n.GetIdx() not in ring]

        anomeric = [n.GetIdx() for n in mol.GetAtomWithIdx(ring_o).GetNeighbors()
                    if n.GetIdx() in ring and exocyclic(n.GetIdx(), ("O", "N"))]
        if len(anomeric) != 1:
            continue
        first = anomeric[0]
        numbering = {0: ring_o}
        number = 1
        ketose_c1 = exocyclic(first, ("C",))
        if ketose_c1:
            numbering[1] = ketose_c1[0]
            number = 2
        previous, current = ring_o, first
        while True:
            numbering[number] = current
            following = [n.GetIdx() for n in mol.GetAtomWithIdx(current).GetNeighbors()
                         if n.GetIdx() in ring and n.GetIdx() not in (previous, ring_o)]
            if not following:
                break
            previous, current, number = current, following[0], number + 1
        # Exocyclic chain of the last ring carbon.
        seen = set(numbering.values())
        chain = exocyclic(current, ("C",))
        while chain:
            number += 1
            current = chain[0]
            numbering[number] = current
            seen.add(current)
            chain = [n.GetIdx() for n in mol.GetAtomWithIdx(current).GetNeighbors()
                     if n.GetSymbol() == "C" and n.GetIdx() not in seen]
        residues.append(numbering)
    return residues


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


def mol_with_geometry(smiles: str, positions: np.ndarray, assign_stereo: bool = True) -> Chem.Mol:
    """:func:`mol_with_hydrogens` of ``smiles`` carrying ``positions`` as its one conformer.

    Parameters
    ----------
    smiles:
        SMILES whose ``AddHs`` atom order matches ``positions`` (``atoms.info['smiles']``
        of a block).
    positions:
        Shape (n_atoms, 3), Å.
    assign_stereo:
        Set the stereo tags from the 3D geometry (``AssignStereochemistryFrom3D``), so the
        molecule says what the geometry is, not what the SMILES asked for.

    Raises
    ------
    ValueError
        If ``smiles`` is unparsable or ``positions`` does not have one row per atom.
    """
    mol = mol_with_hydrogens(smiles)
    positions = np.asarray(positions, dtype=float)
    if positions.shape != (mol.GetNumAtoms(), 3):
        raise ValueError(f"positions of shape {positions.shape} for {smiles!r}, "
                         f"which has {mol.GetNumAtoms()} atoms with hydrogens")
    conformer = Chem.Conformer(mol.GetNumAtoms())
    for index, xyz in enumerate(positions):
        conformer.SetAtomPosition(index, xyz.tolist())
    mol.RemoveAllConformers()
    mol.AddConformer(conformer, assignId=True)
    if assign_stereo:
        Chem.AssignStereochemistryFrom3D(mol)
    return mol


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
    atoms = molecule_from_smiles(MONOSACCHARIDES[name], name=name, seed=seed, subset="carbohydrates")
    atoms.info["block_type"] = "monosaccharide"
    return atoms


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
