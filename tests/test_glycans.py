"""Disaccharides and glycopeptides: stereochemistry kept, known molecules reproduced, errors named."""

from __future__ import annotations

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import rdCIPLabeler

from qcell_nb.blocks.carbohydrates import MONOSACCHARIDES, mol_with_geometry, sugar_residues
from qcell_nb.blocks.glycans import (DISACCHARIDES, GLYCOPEPTIDES, build_carbohydrate_blocks, build_disaccharide,
                                     build_glycopeptide, build_named_disaccharide, disaccharide_smiles,
                                     glycopeptide_smiles)

# Isomeric SMILES of well-known disaccharides as PubChem writes them (beta
# anomer at the reducing end), checked by hand ring by ring against the
# monosaccharide table; independent of the splicing code.
KNOWN_SMILES = {
    "sucrose": "C([C@@H]1[C@H]([C@@H]([C@H]([C@H](O1)O[C@]2([C@H]([C@@H]([C@H](O2)CO)O)O)CO)O)O)O)O",
    "trehalose": "C([C@@H]1[C@H]([C@@H]([C@H]([C@H](O1)O[C@@H]2[C@@H]([C@H]([C@@H]([C@H](O2)CO)O)O)O)O)O)O)O",
    "cellobiose": "C([C@@H]1[C@H]([C@@H]([C@H]([C@@H](O1)O[C@@H]2[C@H](O[C@H]([C@@H]([C@H]2O)O)O)CO)O)O)O)O",
    "maltose": "C([C@@H]1[C@H]([C@@H]([C@H]([C@H](O1)O[C@@H]2[C@H](O[C@H]([C@@H]([C@H]2O)O)O)CO)O)O)O)O",
    "lactose": "C([C@@H]1[C@@H]([C@@H]([C@H]([C@@H](O1)O[C@@H]2[C@H](O[C@H]([C@@H]([C@H]2O)O)O)CO)O)O)O)O",
}

# CIP label of the donor's anomeric carbon in the glycoside, worked out by
# hand. In the free sugar the ring O outranks the anomeric OH, so alpha-D is S
# and beta-D R. In a glycoside the glycosidic O competes with the ring O: it
# wins when the acceptor carbon it reaches outranks C5 of the donor (1-1, 1-2,
# 1-3, 1-4: a ring carbon with two C/O neighbours beyond), so the label flips
# (maltose C1 is R, cellobiose C1 S, as in their IUPAC names); it loses
# through the CH2 of a 1-6 link, a Ser CB or a Thr CB (CA with N < C4 with O)
# and to the N of an N-glycoside, so alpha stays S there. Sucrose: Glc C1 R,
# and Fru C2 S (its glycosidic O, reaching Glc C1 (O,C,H), outranks the ring
# O reaching C5 (C,C,H)). alpha-Neu5Ac is R free (carboxyl above C3); to Gal O3
# the glycosidic O wins (Gal C2 (O,C,H) beats Neu5Ac C5 (N,C,H)) -> S; to Gal
# O6 it loses -> R. (The 2-3 product is, with chirality, a substructure of
# ChEBI's alpha-Neu5Ac-(2-3)-beta-Gal-containing pentasaccharide, whose
# Neu5Ac C2 reads S.)
GLYCOSIDIC_CIP = {
    "maltose": "R", "cellobiose": "S", "lactose": "S", "sucrose": "R", "trehalose": "R", "isomaltose": "S",
    "gentiobiose": "R", "laminaribiose": "S", "nigerose": "R", "kojibiose": "R", "melibiose": "S",
    "N-acetyllactosamine": "S", "chitobiose": "S", "xylobiose": "S", "mannobiose": "S",
    "Neu5Ac-alpha-(2-3)-Gal": "S", "Neu5Ac-alpha-(2-6)-Gal": "R",
    "GlcNAc-beta-Asn": "R", "GalNAc-alpha-Ser": "S", "GalNAc-alpha-Thr": "S", "Man-alpha-Ser": "S",
}


def canonical(smiles: str) -> str:
    return Chem.MolToSmiles(Chem.MolFromSmiles(smiles))


def block_smiles(name: str) -> str:
    if name in DISACCHARIDES:
        return disaccharide_smiles(*DISACCHARIDES[name], anomer=None)
    return glycopeptide_smiles(*GLYCOPEPTIDES[name])


def donor_anomeric_carbon(mol: Chem.Mol) -> int:
    """The anomeric carbon bonded through an exocyclic O/N to another heavy atom (the donor's).

    For sucrose and trehalose both ends qualify; the aldose one (it has an H) is the donor.
    """
    candidates = []
    for numbering in sugar_residues(mol):
        # C1 of an aldose is bonded to the ring O; a ketose's C1 is exocyclic.
        anomeric = numbering[1] if mol.GetBondBetweenAtoms(numbering[0], numbering[1]) else numbering[2]
        for neighbour in mol.GetAtomWithIdx(anomeric).GetNeighbors():
            if neighbour.GetSymbol() in "ON" and not neighbour.IsInRing() and neighbour.GetDegree() == 2:
                candidates.append((mol.GetAtomWithIdx(anomeric).GetTotalNumHs() == 0, anomeric))
    return sorted(candidates)[0][1]


def test_named_lists():
    assert {"maltose", "cellobiose", "lactose", "sucrose", "trehalose", "isomaltose", "laminaribiose"} \
        <= set(DISACCHARIDES)
    assert {linkage for _, _, linkage in DISACCHARIDES.values()} == {"1-1", "1-2", "1-3", "1-4", "1-6", "2-3", "2-6"}
    assert set(GLYCOSIDIC_CIP) == set(DISACCHARIDES) | set(GLYCOPEPTIDES)
    assert {residue for _, residue in GLYCOPEPTIDES.values()} == {"Asn", "Ser", "Thr"}


@pytest.mark.parametrize("name", sorted(KNOWN_SMILES))
def test_known_disaccharides_match_their_smiles(name):
    assert canonical(block_smiles(name)) == canonical(KNOWN_SMILES[name])


@pytest.mark.parametrize("name", sorted(GLYCOSIDIC_CIP))
def test_glycosidic_carbon_label(name):
    mol = Chem.MolFromSmiles(block_smiles(name))
    rdCIPLabeler.AssignCIPLabels(mol)
    assert mol.GetAtomWithIdx(donor_anomeric_carbon(mol)).GetProp("_CIPCode") == GLYCOSIDIC_CIP[name]


@pytest.mark.parametrize("name", sorted(DISACCHARIDES))
def test_both_residues_keep_every_stereocentre(name):
    donor, acceptor, _ = DISACCHARIDES[name]
    mol = Chem.MolFromSmiles(block_smiles(name))
    for sugar in (donor, acceptor):
        assert mol.HasSubstructMatch(Chem.MolFromSmiles(MONOSACCHARIDES[sugar]), useChirality=True), sugar
    # The check can fail: the other anomer of the donor is not in there (unless it is the acceptor).
    other = donor.replace("alpha", "beta") if "alpha" in donor else donor.replace("beta", "alpha")
    if other != acceptor and other in MONOSACCHARIDES:
        assert not mol.HasSubstructMatch(Chem.MolFromSmiles(MONOSACCHARIDES[other]), useChirality=True)


def test_anomer_argument_switches_the_glycosidic_bond():
    assert canonical(disaccharide_smiles("alpha-D-glucopyranose", "beta-D-glucopyranose", "1-4", anomer="beta")) \
        == canonical(KNOWN_SMILES["cellobiose"])
    assert canonical(disaccharide_smiles("beta-D-glucopyranose", "beta-D-glucopyranose", "1-4", anomer="alpha")) \
        == canonical(KNOWN_SMILES["maltose"])
    # An anomer that is not in the library: beta-L-idopyranuronic acid as donor.
    smiles = disaccharide_smiles("alpha-L-idopyranuronic acid", "beta-D-glucopyranose", "1-4", anomer="beta")
    assert canonical(smiles) != canonical(disaccharide_smiles("alpha-L-idopyranuronic acid", "beta-D-glucopyranose",
                                                              "1-4", anomer="alpha"))


def test_glycopeptides_keep_the_amino_acid_configuration():
    expected = {"Asn": {"CA": "S"}, "Ser": {"CA": "S"}, "Thr": {"CA": "S", "CB": "R"}}
    for name, (sugar, residue) in GLYCOPEPTIDES.items():
        mol = Chem.MolFromSmiles(block_smiles(name))
        # The sugar as a query whose anomeric O (the first "(O)" of a
        # hexopyranose SMILES) may also be the N of an N-glycoside.
        query = Chem.MolFromSmarts(MONOSACCHARIDES[sugar].replace("(O)", "([O,N])", 1))
        assert mol.HasSubstructMatch(query, useChirality=True)
        rdCIPLabeler.AssignCIPLabels(mol)
        # CA: the sp3 C bonded to the acetylated N and to the NMe amide C.
        backbone = mol.GetSubstructMatch(Chem.MolFromSmarts("CC(=O)N[CX4:1]C(=O)NC"))
        ca = mol.GetAtomWithIdx(backbone[4])
        assert ca.GetProp("_CIPCode") == expected[residue]["CA"]
        if residue == "Thr":
            cb = next(n for n in ca.GetNeighbors() if n.GetSymbol() == "C" and n.GetDegree() == 3
                      and any(m.GetSymbol() == "O" for m in n.GetNeighbors()))
            assert cb.GetProp("_CIPCode") == "R"


def test_built_structures(tmp_path):
    cellobiose = build_named_disaccharide("cellobiose", seed=1)
    assert cellobiose.get_chemical_formula() == "C12H22O11" and len(cellobiose) == 45
    assert cellobiose.info["block_type"] == "disaccharide" and cellobiose.info["linkage"] == "1-4"
    assert cellobiose.info["anomer"] == "beta" and cellobiose.info["charge"] == 0
    asn = build_glycopeptide("N-acetyl-beta-D-glucosamine", "Asn")
    assert asn.get_chemical_formula() == "C15H26N4O8" and asn.info["block_type"] == "glycopeptide"
    assert asn.info["name"] == "N-acetyl-beta-D-glucosamine-Asn" and asn.info["multiplicity"] == 1
    thr = build_glycopeptide("N-acetyl-alpha-D-galactosamine", "Thr", seed=2)
    assert thr.get_chemical_formula() == "C15H27N3O8"
    again = build_named_disaccharide("cellobiose", seed=1)
    np.testing.assert_array_equal(again.positions, cellobiose.positions)
    custom = build_disaccharide("beta-D-galactopyranose", "N-acetyl-beta-D-glucosamine", "1-3")
    assert custom.info["name"] == "beta-D-galactopyranose-(1-3)-N-acetyl-beta-D-glucosamine"


def test_3d_structures_keep_the_stereo():
    blocks = build_carbohydrate_blocks(disaccharides="all", glycopeptides="all", seed=0)
    assert len(blocks) == len(DISACCHARIDES) + len(GLYCOPEPTIDES)
    for atoms in blocks:
        mol = mol_with_geometry(atoms.info["smiles"], atoms.positions)
        assert Chem.MolToSmiles(Chem.RemoveHs(mol)) == atoms.info["smiles"], atoms.info["name"]
        assert 35 <= len(atoms) <= 75


def test_block_list():
    blocks = build_carbohydrate_blocks(monosaccharides=["beta-D-glucopyranose"], disaccharides=["sucrose"],
                                       glycopeptides=["GalNAc-alpha-Ser"], seed=3)
    assert [b.info["name"] for b in blocks] == ["beta-D-glucopyranose", "sucrose", "GalNAc-alpha-Ser"]
    assert [b.info["block_type"] for b in blocks] == ["monosaccharide", "disaccharide", "glycopeptide"]
    assert all(b.info["subset"] == "carbohydrates" for b in blocks)
    assert build_carbohydrate_blocks() == []


def test_errors_name_the_input():
    with pytest.raises(ValueError, match="beta-D-glucose-typo"):
        build_disaccharide("beta-D-glucose-typo", "beta-D-glucopyranose")
    with pytest.raises(ValueError, match="'14'"):
        disaccharide_smiles("beta-D-glucopyranose", "beta-D-glucopyranose", "14")
    with pytest.raises(ValueError, match="C5"):  # C5 carries the ring O, not a hydroxyl
        disaccharide_smiles("beta-D-glucopyranose", "beta-D-glucopyranose", "1-5")
    with pytest.raises(ValueError, match="C2"):  # GlcNAc C2 carries N
        disaccharide_smiles("beta-D-glucopyranose", "N-acetyl-beta-D-glucosamine", "1-2")
    with pytest.raises(ValueError, match="anomeric carbon .* is C1"):
        disaccharide_smiles("beta-D-glucopyranose", "beta-D-glucopyranose", "2-4")
    with pytest.raises(ValueError, match="gamma"):
        disaccharide_smiles("beta-D-glucopyranose", "beta-D-glucopyranose", "1-4", anomer="gamma")
    with pytest.raises(ValueError, match="Lys"):
        build_glycopeptide("N-acetyl-beta-D-glucosamine", "Lys")
    with pytest.raises(ValueError, match="lactulose"):
        build_carbohydrate_blocks(disaccharides=["maltose", "lactulose"])
    with pytest.raises(ValueError, match="GlcNAc-Lys"):
        build_carbohydrate_blocks(glycopeptides=["GlcNAc-Lys"])


def test_every_library_sugar_as_donor_and_acceptor():
    """Each sugar linked from/to glucose at every position that has a hydroxyl keeps all its stereocentres."""
    from qcell_nb.blocks.carbohydrates import LIBRARY

    glucose = Chem.MolFromSmiles(MONOSACCHARIDES["beta-D-glucopyranose"])
    built = 0
    for name, entry in LIBRARY.items():
        sugar = Chem.MolFromSmiles(MONOSACCHARIDES[name])
        pairs = [(name, "beta-D-glucopyranose", f"{entry.anomeric_carbon}-{p}") for p in (1, 2, 3, 4, 6)]
        pairs += [("beta-D-glucopyranose", name, f"1-{p}") for p in range(1, 10)]
        for donor, acceptor, linkage in pairs:
            try:
                smiles = disaccharide_smiles(donor, acceptor, linkage)
            except ValueError as err:
                assert f"C{linkage.split('-')[1]}" in str(err)  # no hydroxyl there: named
                continue
            mol = Chem.MolFromSmiles(smiles)
            assert mol.HasSubstructMatch(sugar, useChirality=True), (donor, acceptor, linkage)
            assert mol.HasSubstructMatch(glucose, useChirality=True), (donor, acceptor, linkage)
            built += 1
    assert built > 300
