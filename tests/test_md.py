"""The shared OpenMM layer: solvation, MD frames in ASE units, topology round trips, RDFs."""

import numpy as np
import pytest
from openmm import app, unit

from qcell_nb.md import (MDSettings, atoms_from_topology, first_peak, frames_to_atoms, rdf, simulate, solvate,
                         topology_from_atoms)
from qcell_nb.store import read_structures, write_structures


@pytest.fixture(scope="module")
def sodium_in_water():
    forcefield = app.ForceField("amber14/tip3p.xml")
    topology = app.Topology()
    residue = topology.addResidue("NA", topology.addChain())
    topology.addAtom("NA", app.Element.getBySymbol("Na"), residue)
    topology, positions = solvate(topology, np.zeros((1, 3)), forcefield, (14.0, 14.0, 14.0), neutralize=False)
    system = forcefield.createSystem(topology, nonbondedMethod=app.PME, nonbondedCutoff=0.65 * unit.nanometer,
                                     constraints=app.HBonds, rigidWater=True)
    settings = MDSettings(equilibration_steps=50, production_steps=100, report_interval=50, seed=3)
    return topology, system, positions, simulate(topology, system, positions, settings, name="Na+ in water")


def test_md_frames_are_in_angstrom_with_a_box(sodium_in_water):
    topology, _, _, trajectory = sodium_in_water
    assert trajectory.positions.shape == (2, topology.getNumAtoms(), 3)
    assert np.allclose(np.diag(trajectory.cells[0]), 14.0, atol=0.5)  # Å, not nm
    assert np.all(trajectory.potential_energy < 0)  # a liquid is bound
    assert np.allclose(trajectory.time, [0.1, 0.2])
    frames = frames_to_atoms(trajectory, {"subset": "ions_water"})
    assert frames[1].info["frame"] == 1 and frames[0].pbc.all()
    water_oxygens = [i for i, name in enumerate(frames[0].info["atom_name"]) if name == "O"]
    assert len(water_oxygens) > 50
    # Rigid TIP3P: every O-H stays at 0.9572 Å.
    hydrogens = water_oxygens[0] + 1
    assert abs(frames[0].get_distance(water_oxygens[0], hydrogens) - 0.9572) < 1e-3


def test_topology_survives_the_dataset(tmp_path, sodium_in_water):
    topology, system, positions, _ = sodium_in_water
    atoms = atoms_from_topology(topology, positions, {"name": "Na+ box", "subset": "ions_water"})
    write_structures(tmp_path / "s.db", [atoms])
    (back,) = read_structures(tmp_path / "s.db")
    rebuilt, rebuilt_positions = topology_from_atoms(back)
    assert [r.name for r in rebuilt.residues()] == [r.name for r in topology.residues()]
    assert rebuilt.getNumBonds() == topology.getNumBonds()
    # The rebuilt topology is one the force field still accepts.
    app.ForceField("amber14/tip3p.xml").createSystem(rebuilt, nonbondedMethod=app.PME,
                                                     nonbondedCutoff=0.65 * unit.nanometer)
    assert np.allclose(rebuilt_positions.value_in_unit(unit.angstrom), atoms.positions)


def test_rdf_of_a_simple_cubic_lattice():
    spacing, n = 3.0, 6
    grid = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3) * spacing
    cell = np.eye(3) * spacing * n
    r, g = rdf(grid, cell, range(len(grid)), range(len(grid)), r_max=8.0, n_bins=160)
    assert first_peak(r, g) == pytest.approx(spacing, abs=0.05)
    # Six nearest neighbours: the integral of rho g 4 pi r^2 over the first shell.
    density = len(grid) / np.linalg.det(cell)
    shell = (r > 2.5) & (r < 3.5)
    coordination = np.sum(density * g[shell] * 4 * np.pi * r[shell] ** 2 * (r[1] - r[0]))
    assert coordination == pytest.approx(6.0, rel=0.05)


def test_rdf_rejects_a_range_beyond_half_the_box():
    with pytest.raises(ValueError, match="half the shortest box edge"):
        rdf(np.zeros((2, 3)), np.eye(3) * 10.0, [0], [1], r_max=6.0)


def test_settings_name_the_bad_value():
    with pytest.raises(ValueError, match="timestep"):
        MDSettings(timestep=0)


def test_same_seed_gives_the_same_frames(sodium_in_water):
    topology, system, positions, trajectory = sodium_in_water
    settings = MDSettings(equilibration_steps=50, production_steps=100, report_interval=50, seed=3)
    again = simulate(topology, system, positions, settings, name="Na+ in water")
    assert np.array_equal(again.positions, trajectory.positions)


def test_virtual_sites_can_be_masked_out():
    forcefield = app.ForceField("amber14/opc.xml")
    topology = app.Topology()
    residue = topology.addResidue("NA", topology.addChain())
    topology.addAtom("NA", app.Element.getBySymbol("Na"), residue)
    topology, positions = solvate(topology, np.zeros((1, 3)), forcefield, (14.0,) * 3, neutralize=False,
                                  water_model="tip4pew")  # four-site box geometry; OPC replaces it
    system = forcefield.createSystem(topology, nonbondedMethod=app.PME, nonbondedCutoff=0.65 * unit.nanometer,
                                     constraints=app.HBonds, rigidWater=True)
    trajectory = simulate(topology, system, positions, MDSettings(equilibration_steps=0, production_steps=20,
                                                                  report_interval=20, minimisation_iterations=20))
    real = [atom.element is not None for atom in topology.atoms()]
    (frame,) = frames_to_atoms(trajectory, atoms_mask=np.array(real))
    assert len(frame) == sum(real) < topology.getNumAtoms()


def test_counter_ions_go_to_the_same_waters_under_the_same_seed():
    import random

    forcefield = app.ForceField("amber14/tip3p.xml")

    def ion_positions(seed):
        topology = app.Topology()
        residue = topology.addResidue("CA", topology.addChain())
        topology.addAtom("CA", app.Element.getBySymbol("Ca"), residue)
        solvated, positions = solvate(topology, np.zeros((1, 3)), forcefield, (16.0,) * 3, seed=seed)
        chloride = [atom.index for atom in solvated.atoms() if atom.residue.name == "CL"]
        assert len(chloride) == 2  # Ca2+ neutralised
        return np.asarray(positions.value_in_unit(unit.angstrom))[chloride]

    random.seed(1)  # OpenMM draws from the global generator: its state must not matter
    first = ion_positions(seed=0)
    random.seed(2)
    state = random.getstate()
    assert np.array_equal(ion_positions(seed=0), first)
    assert random.getstate() == state  # the caller's random state is left as it was
    assert not np.array_equal(ion_positions(seed=5), first)
