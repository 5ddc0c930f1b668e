"""Carbohydrate blocks: stereochemistry, atom order, errors."""

from __future__ import annotations

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import rdCIPLabeler

from qcell_nb.blocks import (LIBRARY, MONOSACCHARIDES, build_library, build_monosaccharide, canonical_smiles,
                             mol_with_geometry, molecule_from_smiles)

# CIP descriptor of every stereocentre, by sugar carbon number, written out by
# hand from the IUPAC names (e.g. beta-D-glucopyranose =
# (2R,3R,4S,5S,6R)-6-(hydroxymethyl)oxane-2,3,4,5-tetrol, oxane position n =
# sugar carbon n-1) and, for the rest, from the CIP rules worked through per
# ring position: in an aldohexopyranose O2 > C1 > C3 puts C2 at R when its OH
# is right in the Fischer projection, C2 > C4 makes C3 R when right, C5 > C3
# (via the ring O) makes C4 S when right, and C5 of the D series is R; in a
# pentopyranose C3 > C5 turns C4 to R when right; in a furanose C4 > C2 turns
# C3 to S when right; an acetamido or amino group at C2 turns C3 (C4 > C2); a
# COOH at C6 turns C5 (C6 > C4); the L series mirrors everything. Neu5Ac:
# (4S,5R,6R) ring with a (1R,2R) side chain, beta = 2S (its carboxyl cis to
# the side chain, both equatorial; the alpha residue of ChEBI's
# Neu5Ac-alpha-(2-3)-Gal SMILES reads 2R). Never derived from the SMILES.
EXPECTED_CIP: dict[str, dict[str, str]] = {
    "alpha-D-allopyranose": {"C1": "S", "C2": "R", "C3": "R", "C4": "S", "C5": "R"},
    "beta-D-allopyranose": {"C1": "R", "C2": "R", "C3": "R", "C4": "S", "C5": "R"},
    "alpha-D-altropyranose": {"C1": "S", "C2": "S", "C3": "R", "C4": "S", "C5": "R"},
    "beta-D-altropyranose": {"C1": "R", "C2": "S", "C3": "R", "C4": "S", "C5": "R"},
    "alpha-D-glucopyranose": {"C1": "S", "C2": "R", "C3": "S", "C4": "S", "C5": "R"},
    "beta-D-glucopyranose": {"C1": "R", "C2": "R", "C3": "S", "C4": "S", "C5": "R"},
    "alpha-D-mannopyranose": {"C1": "S", "C2": "S", "C3": "S", "C4": "S", "C5": "R"},
    "beta-D-mannopyranose": {"C1": "R", "C2": "S", "C3": "S", "C4": "S", "C5": "R"},
    "alpha-D-gulopyranose": {"C1": "S", "C2": "R", "C3": "R", "C4": "R", "C5": "R"},
    "beta-D-gulopyranose": {"C1": "R", "C2": "R", "C3": "R", "C4": "R", "C5": "R"},
    "alpha-D-idopyranose": {"C1": "S", "C2": "S", "C3": "R", "C4": "R", "C5": "R"},
    "beta-D-idopyranose": {"C1": "R", "C2": "S", "C3": "R", "C4": "R", "C5": "R"},
    "alpha-D-galactopyranose": {"C1": "S", "C2": "R", "C3": "S", "C4": "R", "C5": "R"},
    "beta-D-galactopyranose": {"C1": "R", "C2": "R", "C3": "S", "C4": "R", "C5": "R"},
    "alpha-D-talopyranose": {"C1": "S", "C2": "S", "C3": "S", "C4": "R", "C5": "R"},
    "beta-D-talopyranose": {"C1": "R", "C2": "S", "C3": "S", "C4": "R", "C5": "R"},
    "alpha-D-ribopyranose": {"C1": "S", "C2": "R", "C3": "R", "C4": "R"},
    "beta-D-ribopyranose": {"C1": "R", "C2": "R", "C3": "R", "C4": "R"},
    "alpha-L-arabinopyranose": {"C1": "R", "C2": "R", "C3": "S", "C4": "S"},
    "beta-L-arabinopyranose": {"C1": "S", "C2": "R", "C3": "S", "C4": "S"},
    "alpha-D-xylopyranose": {"C1": "S", "C2": "R", "C3": "S", "C4": "R"},
    "beta-D-xylopyranose": {"C1": "R", "C2": "R", "C3": "S", "C4": "R"},
    "alpha-D-lyxopyranose": {"C1": "S", "C2": "S", "C3": "S", "C4": "R"},
    "beta-D-lyxopyranose": {"C1": "R", "C2": "S", "C3": "S", "C4": "R"},
    "alpha-D-ribofuranose": {"C1": "S", "C2": "R", "C3": "S", "C4": "R"},
    "beta-D-ribofuranose": {"C1": "R", "C2": "R", "C3": "S", "C4": "R"},
    "alpha-L-arabinofuranose": {"C1": "R", "C2": "R", "C3": "R", "C4": "S"},
    "beta-L-arabinofuranose": {"C1": "S", "C2": "R", "C3": "R", "C4": "S"},
    "2-deoxy-alpha-D-ribofuranose": {"C1": "S", "C3": "S", "C4": "R"},
    "2-deoxy-beta-D-ribofuranose": {"C1": "R", "C3": "S", "C4": "R"},
    "alpha-D-fructofuranose": {"C2": "S", "C3": "S", "C4": "S", "C5": "R"},
    "beta-D-fructofuranose": {"C2": "R", "C3": "S", "C4": "S", "C5": "R"},
    "alpha-D-fructopyranose": {"C2": "S", "C3": "S", "C4": "R", "C5": "R"},
    "beta-D-fructopyranose": {"C2": "R", "C3": "S", "C4": "R", "C5": "R"},
    "alpha-L-fucopyranose": {"C1": "R", "C2": "S", "C3": "R", "C4": "S", "C5": "S"},
    "beta-L-fucopyranose": {"C1": "S", "C2": "S", "C3": "R", "C4": "S", "C5": "S"},
    "alpha-L-rhamnopyranose": {"C1": "R", "C2": "R", "C3": "R", "C4": "R", "C5": "S"},
    "beta-L-rhamnopyranose": {"C1": "S", "C2": "R", "C3": "R", "C4": "R", "C5": "S"},
    "N-acetyl-alpha-D-glucosamine": {"C1": "S", "C2": "R", "C3": "R", "C4": "S", "C5": "R"},
    "N-acetyl-beta-D-glucosamine": {"C1": "R", "C2": "R", "C3": "R", "C4": "S", "C5": "R"},
    "N-acetyl-alpha-D-galactosamine": {"C1": "S", "C2": "R", "C3": "R", "C4": "R", "C5": "R"},
    "N-acetyl-beta-D-galactosamine": {"C1": "R", "C2": "R", "C3": "R", "C4": "R", "C5": "R"},
    "alpha-D-glucopyranuronic acid": {"C1": "S", "C2": "R", "C3": "S", "C4": "S", "C5": "S"},
    "beta-D-glucopyranuronic acid": {"C1": "R", "C2": "R", "C3": "S", "C4": "S", "C5": "S"},
    "alpha-D-galactopyranuronic acid": {"C1": "S", "C2": "R", "C3": "S", "C4": "R", "C5": "S"},
    "beta-D-galactopyranuronic acid": {"C1": "R", "C2": "R", "C3": "S", "C4": "R", "C5": "S"},
    "N-acetyl-alpha-neuraminic acid": {"C2": "R", "C4": "S", "C5": "R", "C6": "R", "C7": "R", "C8": "R"},
    "N-acetyl-beta-neuraminic acid": {"C2": "S", "C4": "S", "C5": "R", "C6": "R", "C7": "R", "C8": "R"},
    "beta-D-galactofuranose": {"C1": "R", "C2": "R", "C3": "R", "C4": "S", "C5": "R"},
    "N-acetyl-beta-D-mannosamine": {"C1": "R", "C2": "S", "C3": "R", "C4": "S", "C5": "R"},
    "beta-D-glucosamine": {"C1": "R", "C2": "R", "C3": "R", "C4": "S", "C5": "R"},
    "alpha-L-idopyranuronic acid": {"C1": "R", "C2": "R", "C3": "S", "C4": "S", "C5": "R"},
}

#: The anomeric carbon of each entry and whether the name says alpha or beta.
ANOMERIC_CARBON = {name: ("C2" if "fructo" in name or "neuraminic" in name else "C1") for name in EXPECTED_CIP}


def sugar_carbon_cip(mol: Chem.Mol) -> dict[str, str]:
    """CIP codes of the sugar's stereocentres keyed by sugar carbon number.

    The ring is the one holding the ring oxygen; the anomeric carbon is the
    ring-O neighbour carrying an exocyclic O; it is C2 for a ketose (it also
    carries an exocyclic C) and C1 otherwise; numbering runs round the ring
    away from the ring O, then along the exocyclic carbon chain of the last
    ring carbon (C5 of a galactofuranose, C7-C8 of neuraminic acid).
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
    visited = {ring_o}
    while current is not None:
        atom = mol.GetAtomWithIdx(current)
        visited.add(current)
        if atom.HasProp("_CIPCode"):
            labels[f"C{number}"] = atom.GetProp("_CIPCode")
        in_ring = [n.GetIdx() for n in atom.GetNeighbors() if n.GetIdx() in ring and n.GetIdx() not in visited]
        chain = [n.GetIdx() for n in atom.GetNeighbors() if n.GetSymbol() == "C" and n.GetIdx() not in ring
                 and n.GetIdx() not in visited and current != anomeric]
        following = in_ring or chain
        previous, current, number = current, (following[0] if following else None), number + 1
    return labels


def mol_from_atoms(atoms) -> Chem.Mol:
    """RDKit molecule from info['smiles'] with the Atoms' geometry and 3D-derived stereo."""
    return mol_with_geometry(atoms.info["smiles"], atoms.positions)


@pytest.fixture(scope="module")
def library():
    return {atoms.info["name"]: atoms for atoms in build_library(seed=0)}


def test_table_covers_the_library():
    assert set(EXPECTED_CIP) == set(MONOSACCHARIDES)
    assert len(MONOSACCHARIDES) == 52
    required = {"alpha-D-glucopyranose", "beta-D-glucopyranose", "beta-D-galactopyranose", "beta-D-ribofuranose"}
    assert required <= set(MONOSACCHARIDES)
    # Every aldohexose and aldopentose has both anomers as a pyranose.
    for parent in ("allo", "altro", "gluco", "manno", "gulo", "ido", "galacto", "talo", "D-ribo", "L-arabino",
                   "D-xylo", "D-lyxo"):
        for anomer in ("alpha", "beta"):
            assert sum(name.startswith(anomer) and f"{parent}pyranose" in name for name in MONOSACCHARIDES) == 1


@pytest.mark.parametrize("name", sorted(MONOSACCHARIDES))
def test_anomeric_carbon_matches_the_name(name):
    """alpha/beta in the name vs the anomeric CIP label, given the other labels.

    For D-pyranoses and furanoses of the table alpha reads S, beta R at the
    anomeric carbon (O-ring > O-anomeric > C2 > H); the L series mirrors it;
    neuraminic acid ranks its carboxyl above C3 and so reads the other way.
    """
    labels = sugar_carbon_cip(Chem.MolFromSmiles(MONOSACCHARIDES[name]))
    anomer_is_alpha = "alpha" in name
    expected = "S" if anomer_is_alpha else "R"
    if "-L-" in name or "neuraminic" in name:
        expected = {"S": "R", "R": "S"}[expected]
    assert labels[ANOMERIC_CARBON[name]] == expected
    assert LIBRARY[name].anomer == ("alpha" if anomer_is_alpha else "beta")


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


def test_entries_are_validated():
    from qcell_nb.blocks.carbohydrates import Monosaccharide

    with pytest.raises(ValueError, match="RLR"):
        Monosaccharide("bad-hexose", "hexopyranose", "RLR", "alpha")
    with pytest.raises(ValueError, match="gamma"):
        Monosaccharide("bad-anomer", "hexopyranose", "RLRR", "gamma")
    with pytest.raises(ValueError, match="heptopyranose"):
        Monosaccharide("bad-ring", "heptopyranose", "RLRR", "alpha")
    # A hand-made entry: 6-deoxy-beta-D-glucopyranose (quinovose) has glucose's ring labels
    # except C4, whose C5 branch now reads (O,C,H) through the ring O as before: same labels.
    quinovose = Monosaccharide("beta-D-quinovopyranose", "hexopyranose", "RLRR", "beta", ((6, "C"),))
    assert sugar_carbon_cip(Chem.MolFromSmiles(quinovose.smiles)) == {"C1": "R", "C2": "R", "C3": "S", "C4": "S",
                                                                       "C5": "R"}
