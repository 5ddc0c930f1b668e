"""Disaccharides and glycopeptides built from the monosaccharide library (stage 01).

A glycosidic bond replaces the anomeric hydroxyl of the donor and the H of
the acceptor's hydroxyl (or of the Asn side-chain amide N). The product is
written as SMILES by splicing text, never by editing a molecule graph, so
that no stereocentre can be inverted by accident: the acceptor is written
starting at the linking atom X (``X...``), the donor starting at its anomeric
oxygen (``O C1 ...``), and the donor text minus that oxygen becomes a branch
on X: ``X(C1 ...)...``. SMILES chirality depends only on the order in which an
atom's neighbours are written; the donor's anomeric carbon keeps its first
neighbour (its former O1, now X) and every other atom keeps its neighbours in
the same order, so every configuration, the anomeric one included, is kept.

Glycopeptides are capped single residues, Ace-X-NMe (acetyl and N-methyl
amide caps, L-amino acid): the sugar on the side-chain amide N (ND2) of Asn
(N-linked; GlcNAc-beta is the natural one) or on the side-chain O (OG, OG1) of
Ser/Thr (O-linked; GalNAc-alpha, the mucin type, is the natural one).

Every block is neutral (see :mod:`qcell_nb.blocks.carbohydrates`) and carries
``info['block_type']`` (``"monosaccharide"``, ``"disaccharide"`` or
``"glycopeptide"``) so that later stages can treat the types differently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ase import Atoms
from rdkit import Chem

from .carbohydrates import LIBRARY, build_monosaccharide, molecule_from_smiles, sugar_residues

__all__ = [
    "DISACCHARIDES",
    "GLYCOPEPTIDES",
    "RESIDUES",
    "build_carbohydrate_blocks",
    "build_disaccharide",
    "build_glycopeptide",
    "build_named_disaccharide",
    "build_named_glycopeptide",
    "disaccharide_smiles",
    "glycopeptide_smiles",
]

#: Named disaccharides: name -> (donor, acceptor, linkage). The donor's name
#: fixes the anomer of the glycosidic bond; reducing ends are the beta anomer.
DISACCHARIDES: dict[str, tuple[str, str, str]] = {
    "maltose": ("alpha-D-glucopyranose", "beta-D-glucopyranose", "1-4"),
    "cellobiose": ("beta-D-glucopyranose", "beta-D-glucopyranose", "1-4"),
    "lactose": ("beta-D-galactopyranose", "beta-D-glucopyranose", "1-4"),
    "sucrose": ("alpha-D-glucopyranose", "beta-D-fructofuranose", "1-2"),
    "trehalose": ("alpha-D-glucopyranose", "alpha-D-glucopyranose", "1-1"),
    "isomaltose": ("alpha-D-glucopyranose", "beta-D-glucopyranose", "1-6"),
    "gentiobiose": ("beta-D-glucopyranose", "beta-D-glucopyranose", "1-6"),
    "laminaribiose": ("beta-D-glucopyranose", "beta-D-glucopyranose", "1-3"),
    "nigerose": ("alpha-D-glucopyranose", "beta-D-glucopyranose", "1-3"),
    "kojibiose": ("alpha-D-glucopyranose", "beta-D-glucopyranose", "1-2"),
    "melibiose": ("alpha-D-galactopyranose", "beta-D-glucopyranose", "1-6"),
    "N-acetyllactosamine": ("beta-D-galactopyranose", "N-acetyl-beta-D-glucosamine", "1-4"),
    "chitobiose": ("N-acetyl-beta-D-glucosamine", "N-acetyl-beta-D-glucosamine", "1-4"),
    "xylobiose": ("beta-D-xylopyranose", "beta-D-xylopyranose", "1-4"),
    "mannobiose": ("alpha-D-mannopyranose", "alpha-D-mannopyranose", "1-6"),
    # Sialic acid caps of glycans: the ketosidic C2 of Neu5Ac to Gal O3 / O6.
    "Neu5Ac-alpha-(2-3)-Gal": ("N-acetyl-alpha-neuraminic acid", "beta-D-galactopyranose", "2-3"),
    "Neu5Ac-alpha-(2-6)-Gal": ("N-acetyl-alpha-neuraminic acid", "beta-D-galactopyranose", "2-6"),
}

#: Capped residues Ace-X-NMe (L), written from the atom the sugar binds to,
#: which is atom 0: Asn ND2, Ser OG, Thr OG1. CIP: CA is S in all three, Thr CB R.
RESIDUES: dict[str, str] = {
    "Asn": "NC(=O)C[C@H](NC(C)=O)C(=O)NC",
    "Ser": "OC[C@H](NC(C)=O)C(=O)NC",
    "Thr": "O[C@H](C)[C@H](NC(C)=O)C(=O)NC",
}

#: Named glycopeptides: name -> (sugar, residue).
GLYCOPEPTIDES: dict[str, tuple[str, str]] = {
    "GlcNAc-beta-Asn": ("N-acetyl-beta-D-glucosamine", "Asn"),
    "GalNAc-alpha-Ser": ("N-acetyl-alpha-D-galactosamine", "Ser"),
    "GalNAc-alpha-Thr": ("N-acetyl-alpha-D-galactosamine", "Thr"),
    "Man-alpha-Ser": ("alpha-D-mannopyranose", "Ser"),
}

_ANOMERS = ("alpha", "beta")


def _sugar(name: str, anomer: str | None) -> tuple[str, str]:
    """(name, SMILES) of library sugar ``name`` as the ``anomer`` wanted (None: as named)."""
    if name not in LIBRARY:
        raise ValueError(f"unknown monosaccharide {name!r}; known names: {', '.join(LIBRARY)}")
    entry = LIBRARY[name]
    if anomer is None or anomer == entry.anomer:
        return name, entry.smiles
    if anomer not in _ANOMERS:
        raise ValueError(f"anomer must be 'alpha' or 'beta', got {anomer!r}")
    # Same sugar, other anomer: the entry regenerates its SMILES from the
    # Fischer projection, so only the anomeric carbon changes.
    other = dataclasses.replace(entry, anomer=anomer)
    return name.replace(entry.anomer, anomer, 1), other.smiles


def _residue(mol: Chem.Mol, label: str) -> dict[int, int]:
    residues = sugar_residues(mol)
    if len(residues) != 1:
        raise ValueError(f"{label}: expected one sugar ring, found {len(residues)}")
    return residues[0]


def _exocyclic_heteroatom(mol: Chem.Mol, carbon: int, ring: set[int]) -> int | None:
    """Index of the exocyclic O (hydroxyl) on ``carbon``, or None."""
    for neighbour in mol.GetAtomWithIdx(carbon).GetNeighbors():
        if neighbour.GetSymbol() == "O" and neighbour.GetIdx() not in ring and neighbour.GetTotalNumHs() == 1:
            return neighbour.GetIdx()
    return None


def _rooted(mol: Chem.Mol, atom: int) -> str:
    """SMILES of ``mol`` written starting at ``atom`` (a terminal heteroatom)."""
    text = Chem.MolToSmiles(mol, rootedAtAtom=int(atom), isomericSmiles=True)
    order = [int(i) for i in mol.GetProp("_smilesAtomOutputOrder").strip("[],").split(",") if i]
    if order[0] != atom or mol.GetAtomWithIdx(atom).GetDegree() != 1:
        raise AssertionError("linking atom must be terminal and written first")
    return text


def _splice(donor: Chem.Mol, donor_oxygen: int, acceptor: Chem.Mol, acceptor_atom: int) -> str:
    """SMILES with the donor (minus its anomeric O) as a branch on the acceptor's linking atom."""
    donor_text = _rooted(donor, donor_oxygen)
    acceptor_text = _rooted(acceptor, acceptor_atom)
    symbol = acceptor.GetAtomWithIdx(acceptor_atom).GetSymbol()
    if not (donor_text.startswith("O") and acceptor_text.startswith(symbol)):
        raise AssertionError(f"unexpected rooted SMILES {donor_text!r} / {acceptor_text!r}")
    # Ring-closure digits of the donor open and close inside the branch, before
    # any ring of the acceptor opens, so reusing digits is safe.
    return f"{symbol}({donor_text[1:]}){acceptor_text[len(symbol):]}"


def _donor(name: str, anomer: str | None) -> tuple[str, Chem.Mol, int, int]:
    """(name as used, molecule, anomeric carbon number, index of its anomeric O)."""
    used, smiles = _sugar(name, anomer)
    mol = Chem.MolFromSmiles(smiles)
    numbering = _residue(mol, used)
    anomeric = LIBRARY[name].anomeric_carbon
    oxygen = _exocyclic_heteroatom(mol, numbering[anomeric], set(numbering.values()))
    if oxygen is None:  # every library entry has an anomeric OH
        raise ValueError(f"{used}: no anomeric hydroxyl")
    return used, mol, anomeric, oxygen


def _parse_linkage(linkage: str) -> tuple[int, int]:
    try:
        first, second = (int(part) for part in linkage.split("-"))
    except ValueError:
        raise ValueError(f"linkage {linkage!r} is not of the form 'a-b' (e.g. '1-4')") from None
    return first, second


def disaccharide_smiles(donor: str, acceptor: str, linkage: str = "1-4", anomer: str | None = None) -> str:
    """Isomeric SMILES of donor-(a-b)-acceptor.

    Parameters
    ----------
    donor, acceptor:
        Names in :data:`qcell_nb.blocks.carbohydrates.LIBRARY`.
    linkage:
        ``"a-b"``: donor anomeric carbon ``a`` (1 for aldoses, 2 for ketoses)
        to the O on acceptor carbon ``b`` (1-1 and 1-2 to a ketose join two
        anomeric carbons, as in trehalose and sucrose).
    anomer:
        ``"alpha"`` or ``"beta"`` for the glycosidic bond; ``None`` keeps the
        donor's anomer as named.

    Raises
    ------
    ValueError
        Unknown sugar name, malformed linkage, a donor carbon that is not
        anomeric, or an acceptor carbon without a hydroxyl.
    """
    first, second = _parse_linkage(linkage)
    donor_name, donor_mol, anomeric, donor_oxygen = _donor(donor, anomer)
    if first != anomeric:
        raise ValueError(f"linkage {linkage!r}: the anomeric carbon of donor {donor_name!r} is C{anomeric}, "
                         f"not C{first}")
    _, acceptor_smiles = _sugar(acceptor, None)
    acceptor_mol = Chem.MolFromSmiles(acceptor_smiles)
    numbering = _residue(acceptor_mol, acceptor)
    carbon = numbering.get(second) if second > 0 else None
    oxygen = None if carbon is None else _exocyclic_heteroatom(acceptor_mol, carbon, set(numbering.values()))
    if oxygen is None:
        raise ValueError(f"linkage {linkage!r}: acceptor {acceptor!r} has no hydroxyl on C{second}")
    return _splice(donor_mol, donor_oxygen, acceptor_mol, oxygen)


def glycopeptide_smiles(sugar: str, residue: str, anomer: str | None = None) -> str:
    """Isomeric SMILES of the sugar glycosidically bound to capped Ace-``residue``-NMe.

    Parameters
    ----------
    sugar:
        Library name of the glycosyl donor.
    residue:
        ``"Asn"`` (N-linked at ND2), ``"Ser"`` or ``"Thr"`` (O-linked at OG/OG1).
    anomer:
        Anomer of the glycosidic bond; ``None`` keeps the sugar's as named.

    Raises
    ------
    ValueError
        Unknown sugar or residue.
    """
    if residue not in RESIDUES:
        raise ValueError(f"unknown residue {residue!r}; glycosylated residues are {', '.join(RESIDUES)}")
    _, donor_mol, _, donor_oxygen = _donor(sugar, anomer)
    peptide = Chem.MolFromSmiles(RESIDUES[residue])
    return _splice(donor_mol, donor_oxygen, peptide, 0)


def _block(smiles: str, name: str, seed: int, **info) -> Atoms:
    atoms = molecule_from_smiles(smiles, name=name, seed=seed, subset="carbohydrates")
    atoms.info.update(info)
    return atoms


def build_disaccharide(donor: str, acceptor: str, linkage: str = "1-4", anomer: str | None = None,
                       seed: int = 0, name: str | None = None) -> Atoms:
    """3D structure of the disaccharide donor-(a-b)-acceptor.

    Parameters
    ----------
    donor, acceptor, linkage:
        See :func:`disaccharide_smiles`.
    anomer:
        ``"alpha"``/``"beta"`` of the glycosidic bond; ``None`` (default)
        keeps the donor's anomer as named.
    seed:
        ETKDGv3 embedding seed.
    name:
        Block name; default ``"<donor>-(a-b)-<acceptor>"`` with the donor
        named as the anomer used.

    Returns
    -------
    ase.Atoms
        Neutral singlet, positions in Å; info as for a monosaccharide plus
        ``block_type="disaccharide"``, ``donor``, ``acceptor``, ``linkage``,
        ``anomer``.
    """
    donor_name, _ = _sugar(donor, anomer)
    smiles = disaccharide_smiles(donor, acceptor, linkage, anomer)
    return _block(smiles, name or f"{donor_name}-({linkage})-{acceptor}", seed, block_type="disaccharide",
                  donor=donor_name, acceptor=acceptor, linkage=linkage, anomer=LIBRARY[donor].anomer
                  if anomer is None else anomer)


def build_named_disaccharide(name: str, seed: int = 0) -> Atoms:
    """3D structure of a disaccharide of :data:`DISACCHARIDES` (``"maltose"``, ``"sucrose"``, ...)."""
    if name not in DISACCHARIDES:
        raise ValueError(f"unknown disaccharide {name!r}; known names: {', '.join(DISACCHARIDES)}")
    donor, acceptor, linkage = DISACCHARIDES[name]
    return build_disaccharide(donor, acceptor, linkage, anomer=None, seed=seed, name=name)


def build_glycopeptide(sugar: str, residue: str = "Asn", anomer: str | None = None, seed: int = 0,
                       name: str | None = None) -> Atoms:
    """3D structure of a capped glycosylated residue, sugar-Ace-X-NMe.

    Parameters
    ----------
    sugar, residue, anomer:
        See :func:`glycopeptide_smiles`.
    seed:
        ETKDGv3 embedding seed.
    name:
        Block name; default ``"<sugar>-<residue>"``.

    Returns
    -------
    ase.Atoms
        Neutral singlet; info plus ``block_type="glycopeptide"``, ``donor``,
        ``residue``, ``anomer``.
    """
    donor_name, _ = _sugar(sugar, anomer)
    smiles = glycopeptide_smiles(sugar, residue, anomer)
    return _block(smiles, name or f"{donor_name}-{residue}", seed, block_type="glycopeptide", donor=donor_name,
                  residue=residue, anomer=LIBRARY[sugar].anomer if anomer is None else anomer)


def build_named_glycopeptide(name: str, seed: int = 0) -> Atoms:
    """3D structure of a glycopeptide of :data:`GLYCOPEPTIDES` (``"GlcNAc-beta-Asn"``, ...)."""
    if name not in GLYCOPEPTIDES:
        raise ValueError(f"unknown glycopeptide {name!r}; known names: {', '.join(GLYCOPEPTIDES)}")
    sugar, residue = GLYCOPEPTIDES[name]
    return build_glycopeptide(sugar, residue, seed=seed, name=name)


def _names(selection: Sequence[str] | str | None, known: dict, kind: str) -> list[str]:
    if selection is None:
        return []
    names = list(known) if selection == "all" else [selection] if isinstance(selection, str) else list(selection)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown {kind}(s) {unknown}; known names: {', '.join(known)}")
    return names


def build_carbohydrate_blocks(monosaccharides: Sequence[str] | str | None = None,
                              disaccharides: Sequence[str] | str | None = None,
                              glycopeptides: Sequence[str] | str | None = None, seed: int = 0) -> list[Atoms]:
    """The stage-01 block list of the carbohydrate subset.

    Parameters
    ----------
    monosaccharides:
        Library names, ``"all"`` (the 52 of :data:`LIBRARY`) or None.
    disaccharides:
        Names of :data:`DISACCHARIDES`, ``"all"`` or None.
    glycopeptides:
        Names of :data:`GLYCOPEPTIDES`, ``"all"`` or None.
    seed:
        Embedding seed of every block.

    Returns
    -------
    list of ase.Atoms
        Monosaccharides, then disaccharides, then glycopeptides, each in the
        order given; ``info['block_type']`` says which.

    Raises
    ------
    ValueError
        Naming every unknown name, before anything is embedded.
    """
    mono = _names(monosaccharides, LIBRARY, "monosaccharide")
    di = _names(disaccharides, DISACCHARIDES, "disaccharide")
    glyco = _names(glycopeptides, GLYCOPEPTIDES, "glycopeptide")
    blocks = [build_monosaccharide(name, seed=seed) for name in mono]
    blocks += [build_named_disaccharide(name, seed=seed) for name in di]
    for name in glyco:
        sugar, residue = GLYCOPEPTIDES[name]
        blocks.append(build_glycopeptide(sugar, residue, seed=seed, name=name))
    return blocks
