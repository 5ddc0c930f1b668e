"""Lipid blocks: stereochemistry and charges, Lipid21 naming, a tiny MD patch, fragments, Rg."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from rdkit import Chem
from rdkit.Chem import rdCIPLabeler

from qcell_nb.blocks import lipids
from qcell_nb.md import MDSettings, topology_from_atoms
from qcell_nb.structures import structure_id

#: Expected CIP labels by Lipid21 atom name (IUPAC: natural sn-3 phospholipids are (2R); the
#: POPG head is 1'-sn-glycerol (2'S, the template's C12); POPS is L-serine (S, the template's C12);
#: cholesterol is (3S,8S,9S,10R,13R,14S,17R,20R)).
EXPECTED_CENTRES = {
    "POPC": {"C2": "R"},
    "POPE": {"C2": "R"},
    "POPG": {"C2": "R", "C12": "S"},
    "POPS": {"C2": "R", "C12": "S"},
    "cholesterol": {"C3": "S", "C8": "S", "C9": "S", "C10": "R", "C13": "R", "C14": "S", "C17": "R",
                    "C20": "R"},
}
EXPECTED_CHARGES = {"POPC": 0, "POPE": 0, "POPG": -1, "POPS": -1, "cholesterol": 0}


@pytest.fixture(scope="module")
def blocks():
    return lipids.build_lipids(seed=0)


def test_stereochemistry_and_charges_by_template_name(blocks):
    for atoms in blocks:
        name = atoms.info["name"]
        assert atoms.info["charge"] == EXPECTED_CHARGES[name]
        assert atoms.info["multiplicity"] == 1
        mol = Chem.AddHs(Chem.MolFromSmiles(atoms.info["smiles"]))
        assert [a.GetAtomicNum() for a in mol.GetAtoms()] == list(atoms.numbers)
        rdCIPLabeler.AssignCIPLabels(mol)
        index = {atom_name: i for i, atom_name in enumerate(atoms.info["atom_name"])}
        labelled = {a.GetIdx(): a.GetProp("_CIPCode") for a in mol.GetAtoms() if a.HasProp("_CIPCode")}
        expected = {index[n]: code for n, code in EXPECTED_CENTRES[name].items()}
        assert labelled == expected, name
        if name != "cholesterol":  # oleoyl C9=C10 is cis
            bond = mol.GetBondBetweenAtoms(index["C29"], index["C210"])
            assert bond.GetBondType() == Chem.BondType.DOUBLE and bond.GetProp("_CIPCode") == "Z"


def test_template_names_give_a_system_lipid21_accepts(blocks):
    forcefield = lipids.lipid_forcefield()
    for atoms in blocks:
        topology, _ = topology_from_atoms(atoms)
        system = forcefield.createSystem(topology)
        assert system.getNumParticles() == len(atoms)
        assert len(set(atoms.info["atom_name"])) == len(atoms)  # a true one-to-one naming
        # Extended along z, head up: what the bilayer placement relies on.
        spec = lipids.LIPIDS[atoms.info["name"]]
        names = list(atoms.info["atom_name"])
        head_z = atoms.positions[names.index(spec.head), 2]
        assert all(head_z - atoms.positions[names.index(t), 2] > 8.0 for t in spec.tails)


def test_bad_names_and_smiles_are_named():
    with pytest.raises(ValueError, match="'DPPX'"):
        lipids.build_lipids(["POPC", "DPPX"])
    with pytest.raises(ValueError, match="'POPQ'"):
        lipids.build_lipid("POPQ")
    with pytest.raises(ValueError, match="unparsable SMILES 'CC\\(C'"):
        lipids.molecule_from_smiles("CC(C", name="broken", subset="lipids")
    with pytest.raises(ValueError, match="'DPPX'"):
        lipids.assemble_bilayer([], 4, {"DPPX": 1.0})
    wrong = Chem.AddHs(Chem.MolFromSmiles("CCCCCCCCCCCCCCCC(=O)OCC(COP(=O)([O-])OCC[NH3+])OC(=O)CCCCCCCCCCCCCCC"))
    with pytest.raises(ValueError, match="POPE"):
        lipids.template_atom_names(wrong, "POPE")


@pytest.fixture(scope="module")
def frames(blocks):
    # NVT: a 2-lipid leaflet is too small for the barostat to shrink safely with a 9 Å cutoff.
    settings = MDSettings(equilibration_steps=10, production_steps=20, report_interval=10, seed=3, threads=1)
    # Two lipids per leaflet: energy minimisation to OpenMM's default tolerance dominates the cost.
    return lipids.sample_bilayer(blocks, 2, {"POPC": 0.5, "POPS": 0.5}, water_per_lipid=6, settings=settings,
                                 seed=3)


def test_tiny_patch_runs_md_and_keeps_layers(frames):
    assert len(frames) == 2
    last = frames[-1]
    assert last.pbc.all() and np.all(np.isfinite(last.positions))
    assert last.info["charge"] == 0 and last.info["n_sodium"] == 2  # two POPS
    names = list(last.info["residue_name"])
    assert names.count("NA") == 2 and "HOH" not in names
    # Phosphorus of the two leaflets stays on its own side of the bilayer centre.
    p = last.positions[[i for i, n in enumerate(last.info["atom_name"]) if n == "P"], 2]
    assert (p > np.median(p)).sum() == (p < np.median(p)).sum()
    assert np.ptp(p) > 15.0


def test_assembly_is_deterministic(blocks):
    one = lipids.assemble_bilayer(blocks, 4, {"POPC": 1.0}, water_per_lipid=8, seed=5)
    two = lipids.assemble_bilayer(blocks, 4, {"POPC": 1.0}, water_per_lipid=8, seed=5)
    assert structure_id(one) == structure_id(two)
    other = lipids.assemble_bilayer(blocks, 4, {"POPC": 1.0}, water_per_lipid=8, seed=6)
    assert structure_id(one) != structure_id(other)


@pytest.mark.parametrize("unit, carbons", [("lipid", None), ("acyl", 4)])
def test_fragments_are_closed_shell_with_integer_charge(frames, unit, carbons):
    fragments = lipids.select_fragments(frames, max_per_frame=2, seed=1, unit=unit, max_chain_carbons=carbons)
    again = lipids.select_fragments(frames, max_per_frame=2, seed=1, unit=unit, max_chain_carbons=carbons)
    assert [structure_id(f) for f in fragments] == [structure_id(f) for f in again]
    parents = {structure_id(f) for f in frames}
    kinds = set()
    for fragment in fragments:
        kinds.add(fragment.info["fragment_kind"])
        assert fragment.info["parent_id"] in parents
        assert (int(fragment.numbers.sum()) - fragment.info["charge"]) % 2 == 0
        assert fragment.info["multiplicity"] == 1
        size = lipids.FRAGMENT_KINDS[fragment.info["fragment_kind"]]
        assert len(fragment.info["members"]) == size
        distances = np.linalg.norm(fragment.positions[:, None] - fragment.positions[None], axis=-1)
        np.fill_diagonal(distances, np.inf)
        assert distances.min() > 0.85  # caps sit at bond length, no image overlaps
        if unit == "acyl":  # capped butanoic acids: C4H8O2 per unit, neutral
            assert fragment.info["charge"] == 0
            assert fragment.get_chemical_formula(mode="hill") == f"C{4 * size}H{8 * size}O{2 * size}"
        else:
            expected = sum(lipids.build_charge(m.split("#")[0]) for m in fragment.info["members"])
            assert fragment.info["charge"] == expected
        # Clustered by proximity: every member within the contact cutoff of another member.
        assert lipids.radius_of_gyration(fragment) < 6.0 * size + 6.0
    assert kinds == {"monomer", "dimer", "trimer"}
    if unit == "acyl":
        assert max(len(f) for f in fragments if f.info["fragment_kind"] == "dimer") <= 40


def test_bad_fragment_kind_is_named(frames):
    with pytest.raises(ValueError, match="'tetramer'"):
        lipids.select_fragments(frames, kinds=("tetramer",))


def test_radius_of_gyration_of_known_geometries(tmp_path):
    pair = Atoms("OO", positions=[[0, 0, 0], [0, 0, 3.0]])
    assert lipids.radius_of_gyration(pair) == pytest.approx(1.5)
    # Mass-weighted: H2 at 1 Å from a heavy O sits nearly on the O.
    oh = Atoms("OH", positions=[[0, 0, 0], [0, 0, 1.0]])
    masses = oh.get_masses()
    expected = np.sqrt(masses[0] * masses[1]) / masses.sum()
    assert lipids.radius_of_gyration(oh) == pytest.approx(expected)
    assert lipids.radius_of_gyration(oh, mass_weighted=False) == pytest.approx(0.5)
    figure = lipids.plot_radius_of_gyration([pair, oh], path=tmp_path / "rg.png")
    assert (tmp_path / "rg.png").stat().st_size > 0 and figure.axes


def test_blocks_and_frames_survive_the_store(blocks, frames, tmp_path):
    from qcell_nb.store import read_structures, write_structures
    write_structures(tmp_path / "blocks.db", blocks)
    write_structures(tmp_path / "frames.db", frames)
    cholesterol = read_structures(tmp_path / "blocks.db", name="cholesterol")[0]
    topology, _ = topology_from_atoms(cholesterol)
    assert lipids.lipid_forcefield().createSystem(topology).getNumParticles() == 74
    stored = read_structures(tmp_path / "frames.db")
    kept = lipids.select_fragments(frames, kinds=("dimer",), max_per_frame=2, seed=4)
    again = lipids.select_fragments(stored, kinds=("dimer",), max_per_frame=2, seed=4)
    assert [structure_id(f) for f in kept] == [structure_id(f) for f in again]


def test_blocks_are_deterministic_under_the_seed():
    one, two = lipids.build_lipid("cholesterol", seed=2), lipids.build_lipid("cholesterol", seed=2)
    assert structure_id(one) == structure_id(two)
