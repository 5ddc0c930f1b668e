"""Carbohydrate blocks: stereochemistry, atom order, errors."""

from __future__ import annotations

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import rdCIPLabeler

from qcell_nb.blocks import (MONOSACCHARIDES, build_library, build_monosaccharide, canonical_smiles,
                             molecule_from_smiles)

# CIP descriptor of every ring stereocentre, by sugar carbon number, taken
# from the IUPAC names (e.g. beta-D-glucopyranose =
# (2R,3R,4S,5S,6R)-6-(hydroxymethyl)oxane-2,3,4,5-tetrol, oxane position n =
# sugar carbon n-1). Written out by hand: never derived from the SMILES.
EXPECTED_CIP: dict[str, dict[str, str]] = {
    "alpha-D-glucopyranose": {"C1": "S", "C2": "R", "C3": "S", "C4": "S", "C5": "R"},
    "beta-D-glucopyranose": {"C1": "R", "C2": "R", "C3": "S", "C4": "S", "C5": "R"},
    "alpha-D-galactopyranose": {"C1": "S", "C2": "R", "C3": "S", "C4": "R", "C5": "R"},
    "beta-D-galactopyranose": {"C1": "R", "C2": "R", "C3": "S", "C4": "R", "C5": "R"},
    "alpha-D-mannopyranose": {"C1": "S", "C2": "S", "C3": "S", "C4": "S", "C5": "R"},
    "beta-D-mannopyranose": {"C1": "R", "C2": "S", "C3": "S", "C4": "S", "C5": "R"},
    "beta-D-xylopyranose": {"C1": "R", "C2": "R", "C3": "S", "C4": "R"},
    "alpha-L-fucopyranose": {"C1": "R", "C2": "S", "C3": "R", "C4": "S", "C5": "S"},
    "N-acetyl-beta-D-glucosamine": {"C1": "R", "C2": "R", "C3": "R", "C4": "S", "C5": "R"},
    "alpha-D-ribofuranose": {"C1": "S", "C2": "R", "C3": "S", "C4": "R"},
    "beta-D-ribofuranose": {"C1": "R", "C2": "R", "C3": "S", "C4": "R"},
    "2-deoxy-beta-D-ribofuranose": {"C1": "R", "C3": "S", "C4": "R"},
    "beta-D-fructofuranose": {"C2": "R", "C3": "S", "C4": "S", "C5": "R"},
}


def sugar_carbon_cip(mol: Chem.Mol) -> dict[str, str]:
    """CIP codes of the ring carbons keyed by sugar carbon number.

    The ring is the one holding the ring oxygen; the anomeric carbon is the
    ring-O neighbour carrying an exocyclic O; it is C2 for a ketose (it also
    carries an exocyclic C) and C1 otherwise; numbering runs round the ring
    away from the ring O.
    """
    rdCIPLabeler.AssignCIPLabels(mol)
    ring = next(r for r in mol.GetRingInfo().AtomRings()
                if any(mol.GetAtomWithIdx(i).GetSymbol() == "O" for i in r))
    ring_o = next(i for i in ring if mol.GetAtomWithIdx(i).GetSymbol() == "O")

    def exocyclic(index: int, symbol: str) -> bool:
        return any(n.GetSymbol() == symbol and n.GetIdx() not in ring
                   for n in mol.GetAtomWithIdx(index).GetNeighbors())

    neighbours = [n.GetIdx() for n in mol.GetAtomWithIdx(ring_o).GetNeighbors() if n.GetIdx() in ring]
    anomeric = next(i for i in neighbours if exocyclic(i, "O"))
    number = 2 if exocyclic(anomeric, "C") else 1
    labels, previous, current = {}, ring_o, anomeric
    while current != ring_o:
        atom = mol.GetAtomWithIdx(current)
        if atom.HasProp("_CIPCode"):
            labels[f"C{number}"] = atom.GetProp("_CIPCode")
        following = next(n.GetIdx() for n in atom.GetNeighbors() if n.GetIdx() in ring and n.GetIdx() != previous)
        previous, current, number = current, following, number + 1
    return labels


def mol_from_atoms(atoms) -> Chem.Mol:
    """RDKit molecule from info['smiles'] with the Atoms' geometry and 3D-derived stereo."""
    mol = Chem.AddHs(Chem.MolFromSmiles(atoms.info["smiles"]))
    conformer = Chem.Conformer(mol.GetNumAtoms())
    for index, xyz in enumerate(atoms.positions):
        conformer.SetAtomPosition(index, xyz.tolist())
    mol.RemoveAllConformers()
    mol.AddConformer(conformer, assignId=True)
    Chem.AssignStereochemistryFrom3D(mol)
    return mol


@pytest.fixture(scope="module")
def library():
    return {atoms.info["name"]: atoms for atoms in build_library(seed=0)}


def test_table_covers_the_library():
    assert set(EXPECTED_CIP) == set(MONOSACCHARIDES)
    required = {"alpha-D-glucopyranose", "beta-D-glucopyranose", "beta-D-galactopyranose", "beta-D-ribofuranose"}
    assert required <= set(MONOSACCHARIDES)


@pytest.mark.parametrize("name", sorted(MONOSACCHARIDES))
def test_library_smiles_has_the_expected_configuration(name):
    mol = Chem.MolFromSmiles(MONOSACCHARIDES[name])
    assert sugar_carbon_cip(mol) == EXPECTED_CIP[name]
    # Every stereocentre is specified (none left for the embedding to guess).
    assert all(label != "?" for _, label in Chem.FindMolChiralCenters(mol, includeUnassigned=True,
                                                                      useLegacyImplementation=False))


@pytest.mark.parametrize("name", sorted(MONOSACCHARIDES))
def test_built_geometry_keeps_the_configuration(library, name):
    atoms = library[name]
    assert sugar_carbon_cip(Chem.MolFromSmiles(atoms.info["smiles"])) == EXPECTED_CIP[name]
    assert sugar_carbon_cip(mol_from_atoms(atoms)) == EXPECTED_CIP[name]


@pytest.mark.parametrize("name", sorted(MONOSACCHARIDES))
def test_smiles_reproduces_atom_order(library, name):
    atoms = library[name]
    smiles = atoms.info["smiles"]
    assert smiles == canonical_smiles(smiles)
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert [a.GetAtomicNum() for a in mol.GetAtoms()] == atoms.get_atomic_numbers().tolist()
    # Same elements is not enough: every bond of the graph is a bond in 3D.
    for bond in mol.GetBonds():
        assert atoms.get_distance(bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()) < 1.6
    # No explicit H atoms in the stored string.
    assert Chem.MolFromSmiles(smiles).GetNumAtoms() == int((atoms.numbers > 1).sum())


def test_info_keys(library):
    atoms = library["beta-D-glucopyranose"]
    assert atoms.info["name"] == "beta-D-glucopyranose"
    assert atoms.info["subset"] == "carbohydrates"
    assert atoms.info["charge"] == 0 and atoms.info["multiplicity"] == 1
    assert atoms.get_chemical_formula() == "C6H12O6"
    assert library["N-acetyl-beta-D-glucosamine"].get_chemical_formula() == "C8H15NO6"
    assert library["2-deoxy-beta-D-ribofuranose"].get_chemical_formula() == "C5H10O4"


def test_seeded_embedding_is_reproducible():
    first = build_monosaccharide("alpha-D-glucopyranose", seed=3)
    second = build_monosaccharide("alpha-D-glucopyranose", seed=3)
    np.testing.assert_array_equal(first.positions, second.positions)


def test_unknown_name_is_named():
    with pytest.raises(ValueError, match="beta-D-glucose-typo") as info:
        build_monosaccharide("beta-D-glucose-typo")
    assert "beta-D-glucopyranose" in str(info.value)  # lists the known names
    with pytest.raises(ValueError, match="nonsense"):
        build_library(["beta-D-glucopyranose", "nonsense"])


def test_bad_smiles_is_named():
    with pytest.raises(ValueError, match=r"C1CC\(O"):
        molecule_from_smiles("C1CC(O", name="broken")
    with pytest.raises(ValueError, match="proteins"):
        molecule_from_smiles("O", name="water", subset="proteins")


def test_small_molecules_from_smiles():
    water = molecule_from_smiles("O", name="water", subset="ions_water")
    methanol = molecule_from_smiles("OC", name="methanol")
    assert water.get_chemical_formula() == "H2O" and water.info["subset"] == "ions_water"
    assert methanol.get_chemical_formula() == "CH4O"
    assert 0.9 < water.get_distance(0, 1) < 1.05
    acetate = molecule_from_smiles("CC(=O)[O-]", name="acetate")
    assert acetate.info["charge"] == -1 and acetate.info["multiplicity"] == 1
