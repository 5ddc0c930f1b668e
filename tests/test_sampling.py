"""CREST-like conformer search: window, sorting, de-duplication, determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from ase import units
from rdkit import Chem
from rdkit.Chem import rdMolAlign

from qcell_nb.blocks import build_monosaccharide, molecule_from_smiles
from qcell_nb.blocks.carbohydrates import mol_with_geometry
from qcell_nb.sampling import KCAL_PER_MOL, conformer_search, search_many
from qcell_nb.structures import structure_id

pytest.importorskip("tblite")

N_EMBED = 10


@pytest.fixture(scope="module")
def glucose():
    return build_monosaccharide("beta-D-glucopyranose")


@pytest.fixture(scope="module")
def conformers(glucose):
    return conformer_search(glucose, n_embed=N_EMBED, seed=0)


def heavy_mol(atoms) -> Chem.Mol:
    """Heavy-atom RDKit molecule with the Atoms' geometry (for an independent RMSD)."""
    return Chem.RemoveHs(mol_with_geometry(atoms.info["smiles"], atoms.positions, assign_stereo=False))


def test_kcal_conversion():
    assert KCAL_PER_MOL == pytest.approx(0.0433641, rel=1e-5)
    assert KCAL_PER_MOL == units.kcal / units.mol


def test_glucose_conformers_within_window_and_sorted(glucose, conformers):
    assert len(conformers) >= 2
    energies = np.array([c.info["xtb_energy"] for c in conformers])
    relative = np.array([c.info["rel_energy_kcal"] for c in conformers])
    assert np.all(np.isfinite(energies))
    assert np.all(np.diff(energies) >= 0)
    assert relative[0] == pytest.approx(0.0) and np.all(relative <= 12.0 + 1e-9)
    np.testing.assert_allclose(relative, (energies - energies[0]) / KCAL_PER_MOL)
    parent = structure_id(glucose)
    for rank, conformer in enumerate(conformers):
        assert conformer.info["conformer"] == rank
        assert conformer.info["parent_id"] == parent
        assert conformer.info["name"] == "beta-D-glucopyranose"
        assert conformer.info["smiles"] == glucose.info["smiles"]
        assert conformer.get_atomic_numbers().tolist() == glucose.get_atomic_numbers().tolist()


def test_no_duplicates_below_rmsd_threshold(conformers):
    mols = [heavy_mol(c) for c in conformers]
    for first, second in itertools.combinations(mols, 2):
        assert rdMolAlign.GetBestRMS(first, second) >= 0.5


def test_stereo_is_kept(glucose, conformers):
    reference = Chem.MolToSmiles(Chem.MolFromSmiles(glucose.info["smiles"]))
    for conformer in conformers:
        mol = heavy_mol(conformer)
        Chem.AssignStereochemistryFrom3D(mol)
        assert Chem.MolToSmiles(mol) == reference


def test_same_seed_same_conformers(glucose, conformers):
    again = conformer_search(glucose, n_embed=N_EMBED, seed=0)
    assert [c.info["xtb_energy"] for c in again] == [c.info["xtb_energy"] for c in conformers]
    for first, second in zip(again, conformers):
        np.testing.assert_array_equal(first.positions, second.positions)


def test_window_and_cap(glucose, conformers):
    assert len(conformer_search(glucose, n_embed=N_EMBED, seed=0, window_kcal=0.0)) == 1
    capped = conformer_search(glucose, n_embed=N_EMBED, seed=0, max_conformers=2)
    assert [c.info["xtb_energy"] for c in capped] == [c.info["xtb_energy"] for c in conformers[:2]]


def test_rigid_molecules_give_one_conformer():
    water = molecule_from_smiles("O", name="water", subset="ions_water")
    (only,) = conformer_search(water, n_embed=4)
    assert only.info["rel_energy_kcal"] == 0.0


def test_bad_inputs_are_named(glucose):
    no_smiles = glucose.copy()
    no_smiles.info = {"name": "anonymous sugar"}
    with pytest.raises(ValueError, match="anonymous sugar"):
        conformer_search(no_smiles)
    shuffled = glucose[::-1]
    shuffled.info = dict(glucose.info)
    with pytest.raises(ValueError, match="atom order"):
        conformer_search(shuffled)
    with pytest.raises(ValueError, match="n_embed"):
        conformer_search(glucose, n_embed=0)


def test_search_many_records_failures_and_goes_on():
    water = molecule_from_smiles("O", name="water", subset="ions_water")
    broken = water.copy()
    broken.info.update(name="broken", smiles="C1CC(")
    methanol = molecule_from_smiles("CO", name="methanol")
    results, failures = search_many([water, broken, methanol], n_embed=4)
    assert [r.info["name"] for r in results] == ["water", "methanol"]
    assert len(failures) == 1
    name, error = failures[0]
    assert name == "broken" and "ValueError" in error and "C1CC(" in error


def stereo_smiles(atoms) -> str:
    """Canonical SMILES with stereo read from the 3D geometry."""
    mol = heavy_mol(atoms)
    Chem.AssignStereochemistryFrom3D(mol)
    return Chem.MolToSmiles(mol)


def test_disaccharide_search_keeps_both_rings_and_is_seeded():
    from qcell_nb.blocks.glycans import build_named_disaccharide

    sucrose = build_named_disaccharide("sucrose")
    conformers = conformer_search(sucrose, n_embed=6, seed=1, rmsd_atoms="heavy+polar_h")
    assert len(conformers) >= 2
    reference = Chem.MolToSmiles(Chem.MolFromSmiles(sucrose.info["smiles"]))
    assert all(stereo_smiles(c) == reference for c in conformers)
    assert all(c.info["block_type"] == "disaccharide" and c.info["linkage"] == "1-2" for c in conformers)
    assert max(c.info["rel_energy_kcal"] for c in conformers) <= 12.0
    threaded = conformer_search(sucrose, n_embed=6, seed=1, rmsd_atoms="heavy+polar_h", n_threads=2)
    assert [c.info["xtb_energy"] for c in threaded] == [c.info["xtb_energy"] for c in conformers]


def test_glycopeptide_search():
    from qcell_nb.blocks.glycans import build_glycopeptide

    peptide = build_glycopeptide("N-acetyl-alpha-D-galactosamine", "Ser")
    conformers = conformer_search(peptide, n_embed=3, seed=0)
    assert 1 <= len(conformers) <= 3
    reference = Chem.MolToSmiles(Chem.MolFromSmiles(peptide.info["smiles"]))
    assert all(stereo_smiles(c) == reference for c in conformers)
    with pytest.raises(ValueError, match="n_threads"):
        conformer_search(peptide, n_threads=-1)
