"""GFN2-xTB single points and pre-optimisation through tblite's ASE calculator.

Stage 04 (and the ranking step of stage 02's conformer search). QCell
pre-optimises fragments with DFTB3+MBD before the PBE0+MBD labels; this module
is the open stand-in: GFN2-xTB from ``tblite`` (pip/conda installable, no
licence, no parameter files), driven by an ASE optimiser. A ``dftb+`` backend
(ASE's ``Dftb`` calculator with 3ob parameters and MBD) can later sit beside it
behind the same functions, chosen where the binary is installed.

Charge and multiplicity come from ``atoms.info`` (see
:mod:`qcell_nb.structures`); energies are in eV, forces in eV/Å.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.optimize import LBFGS

from ..structures import charge_of, multiplicity_of, structure_id

__all__ = ["METHOD", "TightBindingError", "gfn2_calculator", "optimise", "single_point_energy"]

METHOD = "GFN2-xTB"

#: Non-periodic atoms closer than this (Å) are taken as an input error.
MIN_DISTANCE = 0.5


class TightBindingError(RuntimeError):
    """A tight-binding calculation failed (SCF, spin state, non-finite result)."""


def _label(atoms: Atoms) -> str:
    return repr(atoms.info.get("name", atoms.get_chemical_formula()))


def _check_input(atoms: Atoms) -> None:
    """Reject empty and overlapping structures before calling the library."""
    if len(atoms) == 0:
        raise ValueError(f"structure {_label(atoms)} has no atoms")
    if not np.all(np.isfinite(atoms.positions)):
        raise ValueError(f"structure {_label(atoms)} has non-finite positions")
    if len(atoms) > 1 and not atoms.pbc.any():
        from scipy.spatial.distance import pdist

        closest = float(pdist(atoms.positions).min())
        if closest < MIN_DISTANCE:
            raise ValueError(f"structure {_label(atoms)} has overlapping atoms "
                             f"({closest:.3f} Å apart, below {MIN_DISTANCE} Å)")


def gfn2_calculator(atoms: Atoms, accuracy: float = 1.0, max_iterations: int = 250) -> Calculator:
    """A silent tblite GFN2-xTB calculator for ``atoms`` (not attached to it).

    Parameters
    ----------
    atoms:
        Structure whose ``info['charge']`` (e) and ``info['multiplicity']``
        (2S+1) set the electronic state; defaults as in
        :func:`qcell_nb.structures.charge_of` / ``multiplicity_of``.
    accuracy:
        tblite accuracy factor (smaller is tighter SCF and integral cutoffs).
    max_iterations:
        Maximum SCF cycles; beyond it the calculation fails.

    Returns
    -------
    tblite.ase.TBLite
        An ASE calculator; energies in eV, forces in eV/Å.

    Raises
    ------
    ImportError
        If tblite is not installed (message says how to install it).
    """
    try:
        from tblite.ase import TBLite
    except ImportError as err:
        raise ImportError("GFN2-xTB needs tblite with its Python API: "
                          "`pip install tblite` or `conda install -c conda-forge tblite-python`") from err
    if accuracy <= 0:
        raise ValueError(f"accuracy must be positive, got {accuracy}")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be at least 1, got {max_iterations}")
    return TBLite(method=METHOD, charge=charge_of(atoms), multiplicity=multiplicity_of(atoms),
                  accuracy=float(accuracy), max_iterations=int(max_iterations), verbosity=0)


@contextmanager
def _thread_limit(threads: int | None) -> Iterator[None]:
    """Cap OpenMP/BLAS threads while tblite runs (``None``: leave as is).

    One thread is the default because molecules of tens of atoms gain little
    from more, and on a busy machine OpenMP threads spinning against other
    processes made GFN2 single points of glucose ~10x slower (measured);
    stages parallelise over structures instead. Must be entered after tblite
    is loaded, or its OpenMP runtime is not seen.
    """
    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"threads must be at least 1 or None, got {threads}")
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # an optional speed-up, not a requirement
        yield
        return
    with threadpool_limits(limits=int(threads)):
        yield


def _energy_forces(atoms: Atoms) -> tuple[float, np.ndarray]:
    """Energy (eV) and forces (eV/Å) of ``atoms`` with its attached calculator.

    Library failures (SCF not converged, impossible spin) and non-finite
    results become a RuntimeError naming the structure.
    """
    try:
        energy = float(atoms.get_potential_energy())
        forces = np.asarray(atoms.get_forces(), dtype=float)
    except Exception as err:  # tblite raises CalculationFailed / InputError
        raise TightBindingError(f"{METHOD} failed for {_label(atoms)}: {err}") from err
    if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
        raise TightBindingError(f"{METHOD} gave a non-finite energy or force for {_label(atoms)}")
    return energy, forces


def single_point_energy(atoms: Atoms, accuracy: float = 1.0, max_iterations: int = 250,
                        threads: int | None = 1) -> float:
    """GFN2-xTB total energy of ``atoms`` in eV (``atoms`` is not modified).

    ``accuracy`` and ``max_iterations`` go to :func:`gfn2_calculator`;
    ``threads`` caps OpenMP/BLAS threads during the call (``None``: no cap).

    Raises
    ------
    ValueError
        If the structure is empty or has overlapping atoms.
    TightBindingError
        (a RuntimeError) if the SCF fails or the energy is non-finite; the
        message names the structure.
    """
    _check_input(atoms)
    work = atoms.copy()
    # A fresh calculator per structure: no SCF restart from another geometry,
    # so an energy does not depend on what was computed before it.
    work.calc = gfn2_calculator(atoms, accuracy=accuracy, max_iterations=max_iterations)
    with _thread_limit(threads):
        return _energy_forces(work)[0]


def _frame_indices(n_path: int, keep_frames: int) -> list[int]:
    """Indices of ``keep_frames`` frames spread evenly over ``n_path``, last always kept."""
    if keep_frames == 1 or n_path == 1:
        return [n_path - 1]
    picks = np.round(np.linspace(0, n_path - 1, min(keep_frames, n_path))).astype(int)
    return sorted(set(picks.tolist()))


def optimise(atoms: Atoms, fmax: float = 0.05, steps: int = 200, keep_frames: int = 1,
             accuracy: float = 1.0, max_iterations: int = 250, threads: int | None = 1) -> list[Atoms]:
    """Relax ``atoms`` with GFN2-xTB and LBFGS; return frames along the path.

    Parameters
    ----------
    atoms:
        Start structure (not modified); charge and multiplicity from info.
    fmax:
        Convergence threshold on the largest atomic force, eV/Å.
    steps:
        Maximum optimiser steps.
    keep_frames:
        How many frames to return, spread evenly over the path (step 0 to the
        last step). The final frame is always included, and the start too
        when ``keep_frames >= 2``; fewer come back when the path is shorter.
    accuracy, max_iterations:
        Passed to :func:`gfn2_calculator`.
    threads:
        Cap on OpenMP/BLAS threads during the run; ``None`` leaves it.

    Returns
    -------
    list of ase.Atoms
        Copies in path order, the relaxed structure last. Each carries the
        input's info plus ``frame`` (optimiser step), ``xtb_energy`` (eV),
        ``xtb_fmax`` (largest force, eV/Å), ``converged`` (whether the whole
        run reached ``fmax``; the same on every frame) and ``parent_id``
        (structure id of the input).

    Raises
    ------
    ValueError
        On bad arguments or an empty/overlapping structure.
    TightBindingError
        (a RuntimeError) if the SCF fails or an energy/force is non-finite at
        any step; the message names the structure.
    """
    if fmax <= 0:
        raise ValueError(f"fmax must be positive, got {fmax}")
    if steps < 0:
        raise ValueError(f"steps must be non-negative, got {steps}")
    if keep_frames < 1:
        raise ValueError(f"keep_frames must be at least 1, got {keep_frames}")
    _check_input(atoms)

    work = atoms.copy()
    work.calc = gfn2_calculator(atoms, accuracy=accuracy, max_iterations=max_iterations)
    path: list[tuple[np.ndarray, float, float]] = []

    def record() -> None:
        # Runs at step 0 and after every step; the check here catches a
        # failure or NaN at the step where it happens, not after the run.
        energy, forces = _energy_forces(work)
        path.append((work.positions.copy(), energy, float(np.linalg.norm(forces, axis=1).max())))

    optimizer = LBFGS(work, logfile=None)
    optimizer.attach(record, interval=1)
    try:
        with _thread_limit(threads):
            converged = bool(optimizer.run(fmax=fmax, steps=steps))
    except TightBindingError:
        raise
    except Exception as err:  # a failure inside the optimiser's own force call
        raise TightBindingError(f"{METHOD} optimisation failed for {_label(atoms)}: {err}") from err
    if not path or not np.array_equal(path[-1][0], work.positions):
        record()

    parent = structure_id(atoms)
    frames = []
    for index in _frame_indices(len(path), keep_frames):
        positions, energy, largest_force = path[index]
        frame = Atoms(atoms.numbers, positions, cell=atoms.cell, pbc=atoms.pbc)
        frame.info = dict(atoms.info)
        frame.info.update(frame=int(index), xtb_energy=energy, xtb_fmax=largest_force,
                          converged=converged, parent_id=parent)
        frames.append(frame)
    return frames
