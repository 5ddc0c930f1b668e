"""Stage 02 for nucleic acids: explicit-water OpenMM MD of the stage-01 blocks.

Each block (a duplex or an RNA strand with its counter-ions, topology in
``info``) goes into a rectangular TIP3P box ``box_padding`` wider than the
solute on every side, neutralised (the blocks already are) with optional
extra NaCl, and is simulated with PME electrostatics (0.9 nm cutoff), H-bond
constraints and a 2 fs Langevin middle integrator (:func:`qcell_nb.md.simulate`).
Saved frames keep the solute and the ions only; bulk water is dropped, the
fragments of stage 03 do not use it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import openmm
from ase import Atoms
from openmm import app, unit

from ...md import MDSettings, TOPOLOGY_KEYS, frames_to_atoms, simulate, solvate, topology_from_atoms
from ...structures import structure_id
from .build import nucleic_acid_forcefield

__all__ = ["box_size_for", "sample_block", "sample_duplexes"]

#: Real-space cutoff of PME, nm.
CUTOFF_NM = 0.9


def box_size_for(atoms: Atoms, padding: float) -> np.ndarray:
    """Box edges (3,) in Angstrom: the solute's extent plus ``padding`` on both sides.

    The minimum edge is twice the PME cutoff plus a margin, as OpenMM requires.
    """
    extent = atoms.get_positions().max(axis=0) - atoms.get_positions().min(axis=0)
    return np.maximum(extent + 2.0 * padding, 2.0 * CUTOFF_NM * 10.0 + 1.0)


def _pre_minimise(topology: app.Topology, positions, forcefield: app.ForceField, steps: int,
                  settings: MDSettings):
    """A capped minimisation without constraints (flexible water), positions in and out.

    :func:`qcell_nb.md.simulate` minimises with constraints to convergence, which
    on a fresh water box is slow (OpenMM's constrained L-BFGS restarts with
    rising penalties). Starting it from an unconstrained pre-minimum cuts its
    time about fourfold (41 s -> 10 s for an RNA trimer in 630 waters on a
    loaded core).
    """
    system = forcefield.createSystem(topology, nonbondedMethod=app.PME, nonbondedCutoff=CUTOFF_NM * unit.nanometer,
                                     constraints=None, rigidWater=False)
    threads = settings.threads or int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"),
                             {"Threads": str(threads), "DeterministicForces": "true"})
    context.setPeriodicBoxVectors(*topology.getPeriodicBoxVectors())
    context.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(context, 10.0, int(steps))
    return context.getState(getPositions=True).getPositions()


def sample_block(block: Atoms, settings: MDSettings, box_padding: float = 10.0, water_model: str = "tip3p",
                 ionic_strength: float = 0.0, pre_minimise_steps: int = 300) -> list[Atoms]:
    """Solvate one block, run MD, return its frames (solute + ions, Angstrom, with cell).

    Frame ``info``: the block's name, subset, form, sequence, kind, charge
    (0: neutralised), multiplicity, ``parent_id`` (structure id of the block),
    ``frame``, ``time_ps``, ``mm_energy`` and the topology arrays.

    Raises
    ------
    ValueError
        If the block carries no topology, or the MD blows up (named).
    """
    topology, positions = topology_from_atoms(block)
    forcefield = nucleic_acid_forcefield(water_model=water_model)
    box = box_size_for(block, box_padding)
    topology, positions = solvate(topology, positions, forcefield, box, ionic_strength=ionic_strength,
                                  water_model=water_model, seed=settings.seed)
    system = forcefield.createSystem(topology, nonbondedMethod=app.PME, nonbondedCutoff=CUTOFF_NM * unit.nanometer,
                                     constraints=app.HBonds, rigidWater=True)
    if pre_minimise_steps:
        positions = _pre_minimise(topology, positions, forcefield, pre_minimise_steps, settings)
    name = str(block.info.get("name", block.get_chemical_formula()))
    trajectory = simulate(topology, system, positions, settings, name=name)
    keep = np.array([atom.residue.name != "HOH" for atom in topology.atoms()])
    info = {key: value for key, value in block.info.items() if key not in TOPOLOGY_KEYS and key != "bonds"}
    info.update(charge=0, multiplicity=1, parent_id=structure_id(block), water_model=water_model,
                box_padding=float(box_padding))
    return frames_to_atoms(trajectory, info, atoms_mask=keep)


def sample_duplexes(blocks: Sequence[Atoms], settings: MDSettings, box_padding: float = 10.0,
                    water_model: str = "tip3p", ionic_strength: float = 0.0,
                    pre_minimise_steps: int = 300) -> list[Atoms]:
    """Stage 02: frames of every block (duplexes and RNA strands alike).

    Block k runs with seed ``settings.seed + k``, so the run is deterministic
    for a given block list and settings.
    """
    frames = []
    for k, block in enumerate(blocks):
        block_settings = dataclasses.replace(settings, seed=settings.seed + k)
        frames += sample_block(block, block_settings, box_padding, water_model, ionic_strength,
                               pre_minimise_steps)
    return frames
