"""Molecular dynamics with any ASE calculator (the trained model), with stability and energy-drift checks.

A force field is only useful if it runs: an NVE run must conserve energy, and no run may bring two
atoms closer than 0.5 Å or produce exploding forces. The run stops at the first unstable frame and
says why, keeping the frames before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
from ase.md.verlet import VelocityVerlet

from .data_checks import minimum_distance

#: Å: a pair closer than this means the model let atoms collapse.
UNSTABLE_DISTANCE = 0.5
#: eV/Å: a force component beyond this means the trajectory is exploding.
UNSTABLE_FORCE = 50.0
#: A kinetic temperature this many times the target (plus 500 K) means energy is being created.
UNSTABLE_HEATING = 5.0


@dataclass
class MDResult:
    """Frames and energies of one MD run.

    Attributes:
        positions: (n_frames, n_atoms, 3) Å, one frame every ``interval`` steps (frame 0 is the start).
        cells: (n_frames, 3, 3) Å.
        time: (n_frames,) ps.
        potential_energy, kinetic_energy: (n_frames,) eV.
        stable: False when the run was stopped early; ``reason`` then says why and at which time.
        simulated_ps: time integrated (ps), including the last stretch of an unstable run, which
            saved no frame.
    """

    positions: np.ndarray
    cells: np.ndarray
    time: np.ndarray
    potential_energy: np.ndarray
    kinetic_energy: np.ndarray
    stable: bool = True
    reason: str = ""
    numbers: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    simulated_ps: float = 0.0

    @property
    def total_energy(self) -> np.ndarray:
        """(n_frames,) eV."""
        return self.potential_energy + self.kinetic_energy

    @property
    def temperature(self) -> np.ndarray:
        """(n_frames,) K from the kinetic energy with 3N degrees of freedom."""
        return 2.0 * self.kinetic_energy / (3.0 * len(self.numbers) * units.kB)


def _instability(atoms: Atoms, temperature: float) -> str:
    limit = UNSTABLE_HEATING * temperature + 500.0
    if atoms.get_temperature() > limit:
        return f"kinetic temperature {atoms.get_temperature():.0f} K (> {limit:.0f} K)"
    shortest = minimum_distance(atoms)
    if shortest < UNSTABLE_DISTANCE:
        return f"atoms {shortest:.2f} Å apart (< {UNSTABLE_DISTANCE} Å)"
    forces = atoms.get_forces()
    if not np.all(np.isfinite(forces)):
        return "non-finite forces"
    largest = float(np.abs(forces).max())
    if largest > UNSTABLE_FORCE:
        return f"force component {largest:.0f} eV/Å (> {UNSTABLE_FORCE} eV/Å)"
    return ""


def run_md(atoms: Atoms, calculator: Calculator, *, steps: int, interval: int = 10, timestep: float = 0.5,
           temperature: float = 300.0, ensemble: Literal["nve", "langevin"] = "nve", friction: float = 0.01,
           seed: int = 0) -> MDResult:
    """Run MD from ``atoms`` (not modified) with ``calculator``.

    Args:
        steps: MD steps; interval: steps between saved frames.
        timestep: fs. temperature: K, for the initial velocities (and the thermostat with Langevin).
        ensemble: ``"nve"`` (velocity Verlet, for the energy-drift check) or ``"langevin"``.
        friction: Langevin friction in 1/fs.
        seed: initial velocities and the Langevin noise.
    """
    if steps < 1 or interval < 1:
        raise ValueError(f"steps={steps!r} and interval={interval!r} must be >= 1")
    if ensemble not in ("nve", "langevin"):
        raise ValueError(f"ensemble={ensemble!r}: expected 'nve' or 'langevin'")
    system = atoms.copy()
    system.calc = calculator
    rng = np.random.default_rng(seed)
    thermalize_momenta(system, temperature_K=temperature, rng=rng)
    Stationary(system)
    if not system.pbc.any():
        ZeroRotation(system)
    if ensemble == "nve":
        dynamics = VelocityVerlet(system, timestep * units.fs)
    else:
        dynamics = Langevin(system, timestep * units.fs, temperature_K=temperature, friction=friction / units.fs,
                            fixcm=False, rng=rng)
    frames: dict[str, list] = {"positions": [], "cells": [], "time": [], "potential": [], "kinetic": []}

    def record() -> None:
        frames["positions"].append(system.get_positions())
        frames["cells"].append(system.cell.array.copy())
        frames["time"].append(dynamics.get_time() / (1000 * units.fs))
        frames["potential"].append(system.get_potential_energy())
        frames["kinetic"].append(system.get_kinetic_energy())

    reason = _instability(system, temperature)
    if not reason:
        record()
    done = 0
    while not reason and done < steps:
        chunk = min(interval, steps - done)
        dynamics.run(chunk)
        done += chunk
        reason = _instability(system, temperature)
        if not reason:
            record()
    if reason:
        reason = f"{reason} at {done * timestep / 1000:.3f} ps"
    return MDResult(positions=np.asarray(frames["positions"]).reshape(-1, len(system), 3),
                    cells=np.asarray(frames["cells"]).reshape(-1, 3, 3), time=np.asarray(frames["time"]),
                    potential_energy=np.asarray(frames["potential"]), kinetic_energy=np.asarray(frames["kinetic"]),
                    stable=not reason, reason=reason, numbers=system.numbers.copy(),
                    simulated_ps=done * timestep / 1000)


def energy_drift(result: MDResult) -> float:
    """Drift of the total energy in meV per atom per ps: the slope of a straight-line fit.

    Only meaningful for an NVE run of at least two frames.
    """
    if len(result.time) < 2:
        raise ValueError("energy drift needs at least two frames")
    slope = np.polyfit(result.time, result.total_energy, 1)[0]
    return float(1000 * slope / len(result.numbers))
