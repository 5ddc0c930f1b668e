"""Torsion features and k-means representatives."""

from __future__ import annotations

import numpy as np
import pytest
from rdkit import Chem

from qcell_nb.blocks import build_monosaccharide
from qcell_nb.sampling import conformer_search
from qcell_nb.selection import dihedral_features, dihedral_indices, select_representatives

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
