"""Torsion features and k-means representatives."""

from __future__ import annotations

import numpy as np
import pytest
from rdkit import Chem

from qcell_nb.blocks import build_monosaccharide
from qcell_nb.sampling import conformer_search
from qcell_nb.selection import (block_dihedral_indices, dihedral_features, dihedral_indices,
                                glycosidic_dihedral_indices, plot_dihedral_coverage, plot_glycosidic_coverage,
                                select_representatives)

pytest.importorskip("tblite")

GLUCOSE = "beta-D-glucopyranose"


@pytest.fixture(scope="module")
def conformers():
    glucose = conformer_search(build_monosaccharide(GLUCOSE), n_embed=10, seed=0)
    alpha = conformer_search(build_monosaccharide("alpha-D-glucopyranose"), n_embed=10, seed=0)
    return glucose + alpha


def glucose_only(conformers):
    return [c for c in conformers if c.info["name"] == GLUCOSE]


def test_glucose_torsions(conformers):
    smiles = glucose_only(conformers)[0].info["smiles"]
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    table = dihedral_indices(smiles)
    symbols = [[mol.GetAtomWithIdx(int(i)).GetSymbol() for i in row] for row in table]
    in_ring = [all(mol.GetAtomWithIdx(int(i)).IsInRing() for i in row) for row in table]
    # 6 endocyclic torsions, omega (O5-C5-C6-O6) and 5 hydroxyl rotors ending on H.
    assert table.shape == (12, 4)
    assert sum(in_ring) == 6
    assert sum(s[-1] == "H" or s[0] == "H" for s in symbols) == 5
    assert sum(s == ["O", "C", "C", "O"] for s, r in zip(symbols, in_ring) if not r) == 1
    for row in table:  # consecutive atoms are bonded
        for first, second in zip(row[:-1], row[1:]):
            assert mol.GetBondBetweenAtoms(int(first), int(second)) is not None


def test_small_molecules_and_bad_smiles():
    assert dihedral_indices("O").shape == (0, 4)
    assert dihedral_indices("CO").shape == (0, 4)  # C-H3 rotor carries no information
    assert dihedral_indices("CCO").shape == (1, 4)  # C-C-O-H
    with pytest.raises(ValueError, match=r"C1CC\("):
        dihedral_indices("C1CC(")


def test_features_are_sin_cos_of_ase_dihedrals(conformers):
    group = glucose_only(conformers)
    table = dihedral_indices(group[0].info["smiles"])
    features = dihedral_features(group)
    assert features.shape == (len(group), 2 * len(table))
    np.testing.assert_allclose(features[:, 0::2] ** 2 + features[:, 1::2] ** 2, 1.0)
    angle = np.radians(group[1].get_dihedral(*table[3]))
    np.testing.assert_allclose(features[1, 6:8], [np.sin(angle), np.cos(angle)], atol=1e-12)


def test_selection_is_deterministic_and_distinct(conformers):
    group = glucose_only(conformers)
    assert len(group) >= 4
    k = 3
    first = select_representatives(group, n_per_block=k, seed=7)
    second = select_representatives(group, n_per_block=k, seed=7)
    ids = [c.info["conformer"] for c in first]
    assert ids == [c.info["conformer"] for c in second]
    assert len(first) == k and len(set(ids)) == k
    assert [c.info["cluster"] for c in first] == list(range(k))
    assert sum(c.info["cluster_size"] for c in first) == len(group)
    energies = [c.info["xtb_energy"] for c in first]
    assert energies == sorted(energies)


def test_selection_groups_by_block(conformers):
    chosen = select_representatives(conformers, n_per_block=2, seed=0)
    names = [c.info["name"] for c in chosen]
    assert names == [GLUCOSE] * 2 + ["alpha-D-glucopyranose"] * 2
    everything = select_representatives(conformers, n_per_block=100, seed=0)
    assert len(everything) == len(conformers)


def test_explicit_indices(conformers):
    group = glucose_only(conformers)
    table = dihedral_indices(group[0].info["smiles"])
    one = table[[1]]  # a single torsion, passed as a disaccharide's phi/psi would be
    chosen = select_representatives(group, n_per_block=2, seed=0, indices={GLUCOSE: one})
    assert len(chosen) == 2
    assert dihedral_features(group, one).shape == (len(group), 2)
    assert len(select_representatives(group, n_per_block=2, seed=0, indices=one.tolist())) == 2


def test_bad_selection_arguments(conformers):
    with pytest.raises(ValueError, match="n_per_block"):
        select_representatives(conformers, n_per_block=0, seed=0)
    nameless = conformers[0].copy()
    nameless.info = {}
    with pytest.raises(ValueError, match="name"):
        select_representatives([nameless], n_per_block=1, seed=0)


# --- disaccharides and glycopeptides: glycosidic torsions -------------------------------------------------------

def torsion_atoms(smiles: str, torsions: dict) -> dict[str, list[tuple[str, bool, int]]]:
    """Per torsion: (element, in ring, sugar-carbon-like H count) of each atom, to check definitions."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    for name, row in torsions.items():  # consecutive atoms bonded
        for first, second in zip(row[:-1], row[1:]):
            assert mol.GetBondBetweenAtoms(int(first), int(second)) is not None, name
    return {name: "".join(mol.GetAtomWithIdx(int(i)).GetSymbol() for i in row) for name, row in torsions.items()}


def test_glycosidic_definitions():
    from qcell_nb.blocks.glycans import DISACCHARIDES, GLYCOPEPTIDES, disaccharide_smiles, glycopeptide_smiles

    def smiles(name):
        if name in DISACCHARIDES:
            return Chem.MolToSmiles(Chem.MolFromSmiles(disaccharide_smiles(*DISACCHARIDES[name], anomer=None)))
        return Chem.MolToSmiles(Chem.MolFromSmiles(glycopeptide_smiles(*GLYCOPEPTIDES[name])))

    cellobiose = glycosidic_dihedral_indices(smiles("cellobiose"))
    assert torsion_atoms(smiles("cellobiose"), cellobiose) == {"phi": "OCOC", "psi": "COCC"}
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles("cellobiose")))
    o5, c1, o4, c4 = cellobiose["phi"]
    assert mol.GetAtomWithIdx(o5).IsInRing() and not mol.GetAtomWithIdx(o4).IsInRing()
    assert cellobiose["psi"][:3] == (c1, o4, c4) and mol.GetAtomWithIdx(cellobiose["psi"][3]).IsInRing()
    isomaltose = glycosidic_dihedral_indices(smiles("isomaltose"))
    assert torsion_atoms(smiles("isomaltose"), isomaltose) == {"phi": "OCOC", "psi": "COCC", "omega": "OCCO"}
    assert isomaltose["omega"][3] == isomaltose["phi"][2]  # omega ends on the glycosidic O6
    # 1-1: psi ends on the acceptor's ring O; sucrose: the aldose (Glc) is the donor, psi ends on Fru C1.
    assert torsion_atoms(smiles("trehalose"), glycosidic_dihedral_indices(smiles("trehalose")))["psi"] == "COCO"
    sucrose = glycosidic_dihedral_indices(smiles("sucrose"))
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles("sucrose")))
    assert mol.GetAtomWithIdx(sucrose["phi"][1]).GetTotalNumHs(includeNeighbors=True) == 1
    assert torsion_atoms(smiles("sucrose"), sucrose)["psi"] == "COCC"
    assert not mol.GetAtomWithIdx(sucrose["psi"][3]).IsInRing()
    sialyl = glycosidic_dihedral_indices(smiles("Neu5Ac-alpha-(2-6)-Gal"))
    assert torsion_atoms(smiles("Neu5Ac-alpha-(2-6)-Gal"), sialyl) == {"phi": "OCOC", "psi": "COCC", "omega": "OCCO"}
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles("Neu5Ac-alpha-(2-6)-Gal")))
    assert mol.GetAtomWithIdx(sialyl["phi"][1]).GetTotalNumHs(includeNeighbors=True) == 0  # ketosidic C2
    asn = glycosidic_dihedral_indices(smiles("GlcNAc-beta-Asn"))
    assert torsion_atoms(smiles("GlcNAc-beta-Asn"), asn) == {"phi": "OCNC", "psi": "CNCC", "chi1": "NCCC",
                                                             "chi2": "CCCN", "phi_bb": "CNCC", "psi_bb": "NCCN"}
    thr = glycosidic_dihedral_indices(smiles("GalNAc-alpha-Thr"))
    assert torsion_atoms(smiles("GalNAc-alpha-Thr"), thr) == {"phi": "OCOC", "psi": "COCC", "chi1": "NCCO",
                                                              "phi_bb": "CNCC", "psi_bb": "NCCN"}
    # psi of Thr runs to CA (three heavy neighbours), not to the methyl.
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles("GalNAc-alpha-Thr")))
    assert mol.GetAtomWithIdx(thr["psi"][3]).GetDegree() == 4 and thr["psi"][3] == thr["chi1"][1]
    # Monosaccharides have none; a methyl glycoside has one.
    assert glycosidic_dihedral_indices(glucose_smiles := Chem.MolToSmiles(Chem.MolFromSmiles(
        "OC[C@H]1O[C@@H](O)[C@H](O)[C@@H](O)[C@@H]1O"))) == {}
    assert block_dihedral_indices(glucose_smiles).shape == (12, 4)
    assert set(glycosidic_dihedral_indices("CO[C@@H]1O[C@H](CO)[C@@H](O)[C@H](O)[C@H]1O")) == {"phi"}
    with pytest.raises(ValueError, match="no glycosidic bond"):
        block_dihedral_indices(glucose_smiles, torsions="glycosidic")
    with pytest.raises(ValueError, match="torsions"):
        block_dihedral_indices(glucose_smiles, torsions="phi")


@pytest.fixture(scope="module")
def cellobiose_conformers():
    from qcell_nb.blocks.glycans import build_named_disaccharide

    return conformer_search(build_named_disaccharide("cellobiose"), n_embed=8, seed=0, rmsd_atoms="heavy+polar_h")


def test_disaccharide_selection_clusters_on_phi_psi(cellobiose_conformers, tmp_path):
    group = cellobiose_conformers
    assert len(group) >= 3
    table = block_dihedral_indices(group[0])
    np.testing.assert_array_equal(table, np.asarray(list(glycosidic_dihedral_indices(group[0]).values())))
    chosen = select_representatives(group, n_per_block=2, seed=0)
    again = select_representatives(group, n_per_block=2, seed=0)
    assert [c.info["conformer"] for c in chosen] == [c.info["conformer"] for c in again]
    assert len(chosen) == 2 and sum(c.info["cluster_size"] for c in chosen) == len(group)
    # Same clusters as k-means on the phi/psi features passed explicitly.
    explicit = select_representatives(group, n_per_block=2, seed=0, indices=table)
    assert [c.info["conformer"] for c in explicit] == [c.info["conformer"] for c in chosen]
    # "all" clusters on every torsion instead: a different feature space.
    assert dihedral_features(group, block_dihedral_indices(group[0], "all")).shape[1] > 2 * len(table)
    select_representatives(group, n_per_block=2, seed=0, torsions="all")
    with pytest.raises(ValueError, match="torsions"):
        select_representatives(group, n_per_block=2, torsions="everything")
    figure = plot_glycosidic_coverage(group, chosen, tmp_path / "phi_psi.png")
    assert (tmp_path / "phi_psi.png").stat().st_size > 0
    assert figure.axes[0].get_xlabel().startswith("phi")
    assert plot_glycosidic_coverage([group[0].copy()], [], None) is not None
    plot_dihedral_coverage(group, chosen, tmp_path / "torsions.png")
    assert (tmp_path / "torsions.png").stat().st_size > 0


def test_coverage_grid_for_many_blocks(conformers, cellobiose_conformers):
    everything = list(conformers) + list(cellobiose_conformers)
    renamed = []
    for copy in range(3):  # six blocks: a 3-column grid
        for atoms in everything:
            clone = atoms.copy()
            clone.info = dict(atoms.info, name=f"{atoms.info['name']} #{copy}")
            renamed.append(clone)
    figure = plot_dihedral_coverage(renamed, renamed[:2])
    assert len([ax for ax in figure.axes if ax.axison]) == 9


def test_limit_fragments_caps_size_and_count_per_subset():
    from ase.build import molecule

    from qcell_nb.selection import limit_fragments

    fragments = []
    for k in range(6):
        for subset, name in (("dimers", "H2O"), ("carbohydrates", "C6H6")):
            atoms = molecule(name)
            atoms.info.update(subset=subset, index=k)
            fragments.append(atoms)
    kept = limit_fragments(fragments, max_atoms=5, max_per_subset=4, seed=1)
    assert {a.info["subset"] for a in kept} == {"dimers"} and len(kept) == 4  # benzene has 12 atoms
    assert [a.info["index"] for a in kept] == sorted(a.info["index"] for a in kept)
    assert kept == limit_fragments(fragments, max_atoms=5, max_per_subset=4, seed=1)
    assert len(limit_fragments(fragments)) == 12
    capped = limit_fragments(fragments, max_per_subset=3, subset_caps={"carbohydrates": 1}, seed=1)
    assert [a.info["subset"] for a in capped].count("carbohydrates") == 1 and len(capped) == 4
    with pytest.raises(ValueError, match="max_atoms"):
        limit_fragments(fragments, max_atoms=0)
