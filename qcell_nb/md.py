"""Classical MD with OpenMM for the sampling stage (nucleic acids, lipids, ions in water).

One small layer that every MM-sampled class shares: solvate a solute, run Langevin MD
(optionally at constant pressure), collect frames in ASE units, and move topologies in and
out of :class:`ase.Atoms` so that a stage-01 block stored in the dataset can be simulated in
stage 02. Radial distribution functions live here too because they are computed from MM
trajectories (ions in water) as well as from ML-driven ones (validation).

Units at this boundary: OpenMM works in nm, ps, kJ/mol; everything returned here is in Å,
ps and eV.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any, Sequence

import numpy as np
import openmm
from ase import Atoms
from openmm import app, unit

__all__ = [
    "MDSettings", "Trajectory", "solvate", "simulate", "frames_to_atoms", "atoms_from_topology",
    "topology_from_atoms", "rdf", "first_peak",
]

_KJ_PER_MOL_IN_EV = 0.010364269656262175
#: A frame whose coordinates grow beyond this many Å from the origin has exploded.
_EXPLOSION_LIMIT = 1.0e4
TOPOLOGY_KEYS = ("residue_index", "residue_name", "atom_name", "chain_index")


@dataclass(frozen=True)
class MDSettings:
    """Langevin MD protocol.

    Attributes:
        temperature: K.
        friction: collision rate of the Langevin middle integrator, 1/ps.
        timestep: fs; bonds to hydrogen are expected to be constrained by the system.
        equilibration_steps: steps after energy minimisation that are not saved.
        production_steps: steps of the saved part.
        report_interval: steps between saved frames.
        pressure: bar; when set, NPT with a Monte Carlo barostat.
        membrane: with ``pressure``, a membrane barostat (xy isotropic, z free, zero surface tension).
        seed: seeds the integrator, the barostat and the initial velocities.
        threads: OpenMM CPU threads (default ``OMP_NUM_THREADS`` or 1).
        minimisation_iterations: cap on the energy minimiser's iterations (0: until converged);
            a capped minimisation is enough to remove clashes before MD and is several times faster.
    """

    temperature: float = 300.0
    friction: float = 1.0
    timestep: float = 2.0
    equilibration_steps: int = 500
    production_steps: int = 2000
    report_interval: int = 100
    pressure: float | None = None
    membrane: bool = False
    seed: int = 0
    threads: int | None = None
    minimisation_iterations: int = 0

    def __post_init__(self):
        for name in ("temperature", "friction", "timestep"):
            if not getattr(self, name) > 0:
                raise ValueError(f"MDSettings.{name}={getattr(self, name)!r}: must be positive")
        if self.report_interval < 1:
            raise ValueError(f"MDSettings.report_interval={self.report_interval!r}: must be >= 1")
        if self.production_steps < self.report_interval:
            raise ValueError(f"MDSettings.production_steps={self.production_steps!r} is shorter than "
                             f"report_interval={self.report_interval!r}: no frame would be saved")
        if self.minimisation_iterations < 0:
            raise ValueError(f"MDSettings.minimisation_iterations={self.minimisation_iterations!r}: must be >= 0")
        if self.equilibration_steps < 0:
            raise ValueError(f"MDSettings.equilibration_steps={self.equilibration_steps!r}: must be >= 0")


@dataclass
class Trajectory:
    """Saved frames of one MD run.

    Attributes:
        topology: the simulated OpenMM topology.
        positions: (n_frames, n_atoms, 3) Å; molecules are kept whole (not wrapped into the box).
        cells: (n_frames, 3, 3) Å box vectors (zeros for a non-periodic system).
        potential_energy: (n_frames,) eV.
        time: (n_frames,) ps since the start of production.
    """

    topology: app.Topology
    positions: np.ndarray
    cells: np.ndarray
    potential_energy: np.ndarray
    time: np.ndarray

    def __len__(self) -> int:
        return len(self.positions)


def solvate(topology: app.Topology, positions, forcefield: app.ForceField, box_size: Sequence[float], *,
            neutralize: bool = True, positive_ion: str = "Na+", negative_ion: str = "Cl-",
            ionic_strength: float = 0.0, water_model: str = "tip3p", seed: int = 0) -> tuple[app.Topology, Any]:
    """Put a solute in a rectangular water box.

    Args:
        topology, positions: the solute (positions as an OpenMM Quantity or an (n, 3) array in Å).
        forcefield: the force field that will parameterise the system (it provides the water template).
        box_size: (3,) box edge lengths in Å. Explicit, because OpenMM's padding mode sizes the box
            from the solute's extent and gives surprising boxes for flat or small solutes.
        neutralize: add counter-ions to make the system neutral.
        positive_ion, negative_ion: OpenMM ion names (``"Na+"``, ``"K+"``, ``"Cl-"``, ...).
        ionic_strength: molar; extra salt beyond neutralisation.
        water_model: OpenMM water model name (``"tip3p"``, ``"tip4pew"``, ``"opc"``, ...).
        seed: chooses the waters that become ions.

    Returns:
        (topology, positions) of the solvated system.
    """
    box = np.asarray(box_size, dtype=float)
    if box.shape != (3,) or not np.all(box > 0):
        raise ValueError(f"box_size={box_size!r}: need three positive edge lengths in Å")
    modeller = app.Modeller(topology, _quantity(positions))
    # OpenMM picks the waters it replaces by ions with Python's global, unseeded ``random``: seeded
    # for this call, or each process places the counter-ions differently.
    with seeded_python_random(seed):
        modeller.addSolvent(forcefield, model=water_model, boxSize=openmm.Vec3(*(box / 10.0)) * unit.nanometer,
                            positiveIon=positive_ion, negativeIon=negative_ion,
                            ionicStrength=ionic_strength * unit.molar, neutralize=neutralize)
    return modeller.topology, modeller.positions


@contextlib.contextmanager
def seeded_python_random(seed: int) -> Iterator[None]:
    """Seed Python's global ``random`` inside the block and give the caller's state back after it.

    OpenMM's Modeller draws from that unseeded generator (ions in ``addSolvent``, the start of
    every new hydrogen in ``addHydrogens``); seeding it makes those steps the same in every process.
    """
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def add_hydrogens(modeller: app.Modeller, forcefield: app.ForceField, seed: int = 0) -> None:
    """``modeller.addHydrogens(forcefield)``, the same in every process.

    OpenMM starts each new hydrogen at a random offset and relaxes them on the default platform,
    whose force sums are not deterministic: two processes gave B-DNA blocks 1.8 Å apart after the
    restrained minimisation that follows. Seeded offsets and the Reference platform fix both.
    """
    with seeded_python_random(seed):
        modeller.addHydrogens(forcefield, platform=openmm.Platform.getPlatformByName("Reference"))


def _quantity(positions) -> Any:
    if unit.is_quantity(positions):
        return positions
    array = np.asarray(positions, dtype=float)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"positions of shape {array.shape}: need (n_atoms, 3) in Å")
    return [openmm.Vec3(*row) for row in array / 10.0] * unit.nanometer


def _threads(settings: MDSettings) -> int:
    if settings.threads is not None:
        return int(settings.threads)
    return int(os.environ.get("OMP_NUM_THREADS", "1") or 1)


def _check_frame(positions: np.ndarray, energy: float, name: str, step: int) -> None:
    if not np.isfinite(energy) or not np.all(np.isfinite(positions)):
        raise ValueError(f"MD of {name!r} became non-finite at step {step}: check the starting structure "
                         "for overlapping atoms and the timestep")
    if np.abs(positions).max() > _EXPLOSION_LIMIT:
        raise ValueError(f"MD of {name!r} exploded at step {step}: atoms moved beyond "
                         f"{_EXPLOSION_LIMIT:g} Å")


def simulate(topology: app.Topology, system: openmm.System, positions, settings: MDSettings,
             name: str = "system") -> Trajectory:
    """Minimise, equilibrate and run Langevin MD, saving frames every ``report_interval`` steps.

    The caller's ``system`` is not modified (the barostat is added to a copy).

    Raises:
        ValueError: naming ``name`` when the energy or coordinates become non-finite or explode.
    """
    system = copy.deepcopy(system)
    temperature = settings.temperature * unit.kelvin
    if settings.pressure is not None:
        if not system.usesPeriodicBoundaryConditions():
            raise ValueError(f"MDSettings.pressure={settings.pressure!r} for {name!r}: constant pressure "
                             "needs a periodic system")
        if settings.membrane:
            barostat = openmm.MonteCarloMembraneBarostat(
                settings.pressure * unit.bar, 0.0 * unit.bar * unit.nanometer, temperature,
                openmm.MonteCarloMembraneBarostat.XYIsotropic, openmm.MonteCarloMembraneBarostat.ZFree)
        else:
            barostat = openmm.MonteCarloBarostat(settings.pressure * unit.bar, temperature)
        barostat.setRandomNumberSeed(settings.seed + 1)
        system.addForce(barostat)
    integrator = openmm.LangevinMiddleIntegrator(temperature, settings.friction / unit.picosecond,
                                                 settings.timestep * unit.femtosecond)
    integrator.setRandomNumberSeed(settings.seed + 1)  # 0 would ask OpenMM for a random seed
    platform = openmm.Platform.getPlatformByName("CPU")
    # Without deterministic force summation two runs with the same seed drift apart (0.006 Å after
    # minimisation, ~1 Å after 150 steps, measured), and so would every fragment carved from them.
    properties = {"Threads": str(_threads(settings)), "DeterministicForces": "true"}
    simulation = app.Simulation(topology, system, integrator, platform, properties)
    simulation.context.setPositions(_quantity(positions))
    if topology.getPeriodicBoxVectors() is not None:
        simulation.context.setPeriodicBoxVectors(*topology.getPeriodicBoxVectors())
    simulation.minimizeEnergy(maxIterations=settings.minimisation_iterations)
    simulation.context.setVelocitiesToTemperature(temperature, settings.seed + 1)
    if settings.equilibration_steps:
        simulation.step(settings.equilibration_steps)
        _state_arrays(simulation, name, settings.equilibration_steps)

    frames, cells, energies, times = [], [], [], []
    n_frames = settings.production_steps // settings.report_interval
    for index in range(n_frames):
        simulation.step(settings.report_interval)
        step = (index + 1) * settings.report_interval
        positions_a, cell_a, energy_ev = _state_arrays(simulation, name, step)
        frames.append(positions_a)
        cells.append(cell_a)
        energies.append(energy_ev)
        times.append(step * settings.timestep * 1e-3)
    return Trajectory(topology=topology, positions=np.asarray(frames), cells=np.asarray(cells),
                      potential_energy=np.asarray(energies), time=np.asarray(times))


def _state_arrays(simulation: app.Simulation, name: str, step: int) -> tuple[np.ndarray, np.ndarray, float]:
    state = simulation.context.getState(getPositions=True, getEnergy=True, enforcePeriodicBox=False)
    positions = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) * _KJ_PER_MOL_IN_EV
    _check_frame(positions, energy, name, step)
    if simulation.system.usesPeriodicBoundaryConditions():
        cell = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom)
    else:
        cell = np.zeros((3, 3))
    return np.asarray(positions, dtype=float), np.asarray(cell, dtype=float), float(energy)


def _topology_info(topology: app.Topology, atom_indices: np.ndarray | None = None) -> dict[str, Any]:
    atoms = list(topology.atoms())
    if atom_indices is not None:
        atoms = [atoms[i] for i in atom_indices]
    chain_of = {chain.index: position for position, chain in enumerate(topology.chains())}
    info: dict[str, Any] = {
        "residue_index": np.array([a.residue.index for a in atoms], dtype=np.int64),
        "residue_name": [a.residue.name for a in atoms],
        "residue_id": [str(a.residue.id) for a in atoms],
        "atom_name": [a.name for a in atoms],
        "chain_index": np.array([chain_of[a.residue.chain.index] for a in atoms], dtype=np.int64),
    }
    kept = {a.index: position for position, a in enumerate(atoms)}
    bonds = [(kept[b.atom1.index], kept[b.atom2.index]) for b in topology.bonds()
             if b.atom1.index in kept and b.atom2.index in kept]
    info["bonds"] = np.array(bonds, dtype=np.int64).reshape(-1, 2)
    return info


def _numbers(topology: app.Topology) -> np.ndarray:
    return _numbers_of(topology.atoms())


def _numbers_of(atoms) -> np.ndarray:
    numbers = []
    for atom in atoms:
        if atom.element is None:
            raise ValueError(f"atom {atom.name!r} of residue {atom.residue.name} {atom.residue.id} has no element "
                             "(a virtual site?): pass atoms_mask to drop it")
        numbers.append(atom.element.atomic_number)
    return np.array(numbers, dtype=np.int64)


def atoms_from_topology(topology: app.Topology, positions_angstrom, info: dict | None = None,
                        cell: np.ndarray | None = None) -> Atoms:
    """One :class:`ase.Atoms` carrying its OpenMM topology in ``info``.

    Per-atom topology goes to ``info`` arrays ``residue_index``, ``residue_name``, ``residue_id``,
    ``atom_name``, ``chain_index`` and ``bonds`` ((n_bonds, 2) atom indices), so that
    :func:`topology_from_atoms` can rebuild the topology after a round trip through the dataset.
    """
    positions = np.asarray(positions_angstrom.value_in_unit(unit.angstrom)
                           if unit.is_quantity(positions_angstrom) else positions_angstrom, dtype=float)
    atoms = Atoms(numbers=_numbers(topology), positions=positions)
    if cell is None and topology.getPeriodicBoxVectors() is not None:
        cell = np.asarray(topology.getPeriodicBoxVectors().value_in_unit(unit.angstrom))
    if cell is not None and np.any(cell):
        atoms.set_cell(cell)
        atoms.pbc = True
    atoms.info.update(copy.deepcopy(info or {}))
    atoms.info.update(_topology_info(topology))
    return atoms


def topology_from_atoms(atoms: Atoms) -> tuple[app.Topology, Any]:
    """Rebuild the OpenMM topology (and positions) stored by :func:`atoms_from_topology`.

    Bonds come from ``info["bonds"]`` when present, otherwise from OpenMM's standard residue
    templates (``createStandardBonds``).
    """
    missing = [key for key in TOPOLOGY_KEYS if key not in atoms.info]
    if missing:
        raise ValueError(f"structure {atoms.info.get('name', atoms.get_chemical_formula())!r} has no topology "
                         f"(info lacks {missing}); build it with atoms_from_topology")
    topology = app.Topology()
    chains: dict[int, Any] = {}
    residues: dict[int, Any] = {}
    residue_ids = atoms.info.get("residue_id")
    created = []
    for i, number in enumerate(atoms.get_atomic_numbers()):
        chain_index = int(atoms.info["chain_index"][i])
        if chain_index not in chains:
            chains[chain_index] = topology.addChain()
        residue_index = int(atoms.info["residue_index"][i])
        if residue_index not in residues:
            residue_id = str(residue_ids[i]) if residue_ids is not None else str(residue_index + 1)
            residues[residue_index] = topology.addResidue(str(atoms.info["residue_name"][i]), chains[chain_index],
                                                          id=residue_id)
        created.append(topology.addAtom(str(atoms.info["atom_name"][i]), app.Element.getByAtomicNumber(int(number)),
                                        residues[residue_index]))
    bonds = atoms.info.get("bonds")
    if bonds is not None and len(bonds):
        for a, b in np.asarray(bonds, dtype=np.int64).reshape(-1, 2):
            topology.addBond(created[a], created[b])
    else:
        topology.createStandardBonds()
    if atoms.pbc.any():
        vectors = atoms.cell.array / 10.0
        topology.setPeriodicBoxVectors([openmm.Vec3(*row) for row in vectors] * unit.nanometer)
    return topology, _quantity(atoms.get_positions())


def frames_to_atoms(trajectory: Trajectory, info: dict | None = None,
                    atoms_mask: np.ndarray | Sequence[int] | None = None) -> list[Atoms]:
    """One :class:`ase.Atoms` per saved frame.

    Args:
        trajectory: from :func:`simulate`.
        info: copied into each frame's ``info`` (plus ``frame`` and ``time_ps``).
        atoms_mask: boolean mask or indices of the atoms to keep (e.g. drop bulk water); the stored
            topology arrays and bonds are restricted and renumbered accordingly.
    """
    n_atoms = trajectory.positions.shape[1]
    if atoms_mask is None:
        indices = np.arange(n_atoms)
    else:
        mask = np.asarray(atoms_mask)
        indices = np.flatnonzero(mask) if mask.dtype == bool else mask.astype(np.int64)
    topology_info = _topology_info(trajectory.topology, indices)
    atoms_list = list(trajectory.topology.atoms())
    numbers = _numbers_of([atoms_list[i] for i in indices])
    frames = []
    for index, (positions, cell) in enumerate(zip(trajectory.positions, trajectory.cells)):
        atoms = Atoms(numbers=numbers, positions=positions[indices])
        if np.any(cell):
            atoms.set_cell(cell)
            atoms.pbc = True
        atoms.info.update(copy.deepcopy(info or {}))
        atoms.info.update(copy.deepcopy(topology_info))
        atoms.info["frame"] = index
        atoms.info["time_ps"] = float(trajectory.time[index])
        atoms.info["mm_energy"] = float(trajectory.potential_energy[index])
        frames.append(atoms)
    return frames


def _minimum_image(vectors: np.ndarray, cell: np.ndarray) -> np.ndarray:
    fractional = vectors @ np.linalg.inv(cell)
    fractional -= np.round(fractional)
    return fractional @ cell


def rdf(positions: np.ndarray, cells: np.ndarray, centre_indices: Sequence[int], other_indices: Sequence[int],
        r_max: float = 8.0, n_bins: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """Radial distribution function g(r) under the minimum-image convention, averaged over frames.

    Args:
        positions: (n_frames, n_atoms, 3) or (n_atoms, 3) Å.
        cells: (n_frames, 3, 3) or (3, 3) Å periodic box of each frame. ``r_max`` must not exceed half
            the shortest box edge (minimum image would miscount beyond it).
        centre_indices, other_indices: atom indices of the two species; they may be the same set
            (O-O), in which case self pairs are excluded.
        r_max: Å; n_bins: number of histogram bins.

    Returns:
        (r, g): bin centres in Å and g(r), normalised by the ideal-gas pair count of the other species.
    """
    positions = np.asarray(positions, dtype=float)
    cells = np.asarray(cells, dtype=float)
    if positions.ndim == 2:
        positions = positions[None]
    if cells.ndim == 2:
        cells = np.broadcast_to(cells, (len(positions), 3, 3))
    if len(cells) != len(positions):
        raise ValueError(f"{len(positions)} frames but {len(cells)} cells")
    centres = np.asarray(centre_indices, dtype=np.int64)
    others = np.asarray(other_indices, dtype=np.int64)
    if centres.size == 0 or others.size == 0:
        raise ValueError("rdf needs at least one centre and one other atom")
    shortest = min(np.linalg.norm(cells, axis=2).min(), np.inf)
    if not shortest > 0:
        raise ValueError("rdf needs a periodic cell in every frame")
    if r_max > shortest / 2 + 1e-9:
        raise ValueError(f"r_max={r_max} Å exceeds half the shortest box edge ({shortest / 2:.2f} Å)")
    edges = np.linspace(0.0, r_max, n_bins + 1)
    counts = np.zeros(n_bins)
    density_sum = 0.0
    same = np.isin(centres, others)
    for frame, cell in zip(positions, cells):
        vectors = frame[others][None, :, :] - frame[centres][:, None, :]
        distances = np.linalg.norm(_minimum_image(vectors.reshape(-1, 3), cell), axis=1).reshape(len(centres), -1)
        if same.any():
            self_pairs = centres[:, None] == others[None, :]
            distances = np.where(self_pairs, np.inf, distances)
        counts += np.histogram(distances[np.isfinite(distances)], bins=edges)[0]
        n_other = len(others) - (1 if same.all() else 0)
        density_sum += n_other / abs(np.linalg.det(cell))
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    mean_density = density_sum / len(positions)
    g = counts / (len(positions) * len(centres) * mean_density * shell)
    return 0.5 * (edges[1:] + edges[:-1]), g


def first_peak(r: np.ndarray, g: np.ndarray, threshold: float = 1.0) -> float:
    """Position (Å) of the first local maximum of g(r) that rises above ``threshold``.

    A three-point running mean suppresses single-bin noise before the maximum is located.
    """
    r = np.asarray(r, dtype=float)
    g = np.asarray(g, dtype=float)
    smooth = np.convolve(g, np.ones(3) / 3.0, mode="same")
    above = np.flatnonzero(smooth > threshold)
    if above.size == 0:
        raise ValueError(f"g(r) never exceeds {threshold}: no first peak")
    start = above[0]
    end = start
    while end + 1 < len(smooth) and smooth[end + 1] > threshold:
        end += 1
    return float(r[start + int(np.argmax(smooth[start:end + 1]))])
