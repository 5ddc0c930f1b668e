"""Tight-binding single points and pre-optimisation: GFN2-xTB (tblite) or DFTB3/3ob (dftb+), optionally +MBD.

Stage 04 (and the ranking step of stage 02's conformer search). QCell
pre-optimises fragments with DFTB3+MBD before the PBE0+MBD labels. Two
methods sit behind one interface, :func:`tight_binding_calculator`:

``"gfn2-xtb"`` (default)
    GFN2-xTB from ``tblite`` (pip/conda installable, no licence, no parameter
    files). With ``mbd=False`` it is plain GFN2-xTB, including its own D4
    dispersion. With ``mbd=True`` the D4 term is removed from the GFN2
    parametrisation (tblite accepts the exported GFN2 parameters without their
    ``dispersion`` section) and MBD@rsSCS from :mod:`qcell_nb.calculators.mbd`
    is added instead: the open analogue of the paper's DFTB3+MBD, without
    counting dispersion twice.
``"dftb3-3ob"``
    DFTB3 with the 3ob-3-1 Slater-Koster set through ASE's ``Dftb``
    calculator, as the paper did; needs a ``dftb+`` binary on PATH (conda:
    ``conda install -c conda-forge dftbplus``) and the 3ob files in
    ``$DFTB_PREFIX``. With ``mbd=True`` DFTB+'s own MBD is used (see
    :mod:`qcell_nb.calculators.dftb`).

MBD on top of GFN2 needs Hirshfeld volume ratios, which a tight-binding
calculation does not have. The cheap estimate used here is the
charge-population approach (CPA) of Stöhr et al. (J. Chem. Phys. 144, 151101
(2016)): the ratio of the atom's valence population in the molecule to the
free atom's, ``v_A = (N_A - q_A) / N_A`` with ``N_A`` valence electrons and
tblite's (Mulliken-type) atomic charges ``q_A`` (:func:`charge_population_ratios`).
Valence, not all electrons, as in the DFTB original (both methods are valence-only):
the polarisability lives there, and a cation that gave its valence electron
away (Na+ in water, q ~ 0.8) must lose most of it. With all electrons
(``(Z - q) / Z``) Na+ kept 93% of the free atom's 163 bohr^3, and GFN2+MBD
optimisations of Na+(H2O)6-8 collapsed to non-finite energies. Because q depends on the
geometry while the MBD forces are taken at fixed ratios, GFN2+MBD forces miss
the small ``dE/dv dv/dR`` term (measured below 1e-3 eV/Å for a water dimer);
``mbd_ratios="free"`` (all ratios 1) or an explicit array make the forces the
exact gradient.

Charge and multiplicity come from ``atoms.info`` (see
:mod:`qcell_nb.structures`); energies are in eV, forces in eV/Å.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.optimize import LBFGS

from ..structures import OVERLAP_DISTANCE, charge_of, closest_pair, multiplicity_of, structure_id

__all__ = ["METHOD", "METHODS", "MBDCorrected", "TightBindingError", "charge_population_ratios", "gfn2_calculator",
           "method_label", "optimise", "resolve_method", "single_point", "single_point_energy",
           "tight_binding_calculator", "valence_electrons"]

METHOD = "GFN2-xTB"

#: Methods accepted by :func:`tight_binding_calculator`.
METHODS = ("gfn2-xtb", "dftb3-3ob")
Method = Literal["gfn2-xtb", "dftb3-3ob"]

#: MBD@rsSCS range-separation parameter for tight binding (DFTB+'s default
#: ``Beta`` of its MBD block, used with DFTB3/3ob).
TB_MBD_BETA = 0.83


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
    if not atoms.pbc.any():
        closest = closest_pair(atoms)[2]
        if closest < OVERLAP_DISTANCE:
            raise ValueError(f"structure {_label(atoms)} has overlapping atoms "
                             f"({closest:.3f} Å apart, below {OVERLAP_DISTANCE} Å)")


@lru_cache(maxsize=1)
def _gfn2_parameters_without_dispersion() -> dict[str, Any]:
    """tblite's GFN2-xTB parametrisation as a dict, minus its D4 ``dispersion`` section."""
    from tblite import library

    try:
        param = library.new_param()
        library.export_gfn2_param(param)
        table = library.new_table()
        library.dump_param(param, table)
        data = library.table_to_dict(table)
    except AttributeError as err:  # older tblite without the parameter-table API
        raise RuntimeError("GFN2-xTB without D4 (for +MBD) needs tblite's parameter export "
                           f"(tblite 0.8 has it): {err}") from err
    if "dispersion" not in data:
        raise RuntimeError("tblite's exported GFN2-xTB parameters have no 'dispersion' section to remove")
    return {key: value for key, value in data.items() if key != "dispersion"}


def gfn2_calculator(atoms: Atoms, accuracy: float = 1.0, max_iterations: int = 250,
                    dispersion: bool = True) -> Calculator:
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
    dispersion:
        Keep GFN2's D4 dispersion (default). ``False`` runs the same
        Hamiltonian without it, for use with another dispersion model (MBD).

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
    method = METHOD if dispersion else _gfn2_parameters_without_dispersion()
    return TBLite(method=method, charge=charge_of(atoms), multiplicity=multiplicity_of(atoms),
                  accuracy=float(accuracy), max_iterations=int(max_iterations), verbosity=0)


#: Electron counts of the noble-gas cores up to Xe.
_NOBLE_GAS_CORES = (0, 2, 10, 18, 36, 54)


def valence_electrons(numbers: np.ndarray) -> np.ndarray:
    """Valence electrons of neutral atoms (beyond the noble-gas core; a filled d shell counts as core
    in the p block, so Br has 7), for Z = 1-86. Shape of ``numbers``.

    Raises:
        ValueError: for Z outside 1-86.
    """
    numbers = np.asarray(numbers, dtype=int)
    if np.any(numbers < 1) or np.any(numbers > 86):
        raise ValueError(f"atomic numbers {sorted(set(numbers[(numbers < 1) | (numbers > 86)].tolist()))}: "
                         "valence counts cover Z = 1-86")
    cores = np.array(_NOBLE_GAS_CORES)
    core = cores[np.searchsorted(cores, numbers, side="left") - 1]
    count = numbers - core
    # p block of periods 4-6: past the filled (n-1)d shell (and 4f in period 6).
    filled = np.where(core >= 54, 24, 10)
    return np.where((core >= 18) & (count > filled + 2), count - filled, count)


def charge_population_ratios(numbers: np.ndarray, charges: np.ndarray) -> np.ndarray:
    """Volume-ratio estimate ``v_A = (N_A - q_A) / N_A`` from atomic charges (CPA; N_A valence electrons).

    Parameters
    ----------
    numbers : array of int, shape (n,)
        Atomic numbers Z.
    charges : array, shape (n,)
        Atomic partial charges q in e (tight-binding Mulliken-type charges).

    Returns
    -------
    np.ndarray, shape (n,)
        Estimated V_eff / V_free (dimensionless). Clipped to [0.1, 2] so a
        strongly charged light atom (H with q -> +1) keeps a finite
        polarisability.
    """
    numbers = np.asarray(numbers, dtype=float)
    charges = np.asarray(charges, dtype=float)
    if charges.shape != numbers.shape:
        raise ValueError(f"charges have shape {charges.shape}, expected {numbers.shape}")
    if not np.all(np.isfinite(charges)):
        raise ValueError(f"charges must be finite, got {charges}")
    valence = valence_electrons(numbers.astype(int))
    return np.clip((valence - charges) / valence, 0.1, 2.0)


class MBDCorrected(Calculator):
    """A calculator plus MBD dispersion with volume ratios estimated from its charges.

    ``energy = base energy + E_MBD``; ``forces = base forces + F_MBD`` where
    F_MBD is the MBD force at fixed ratios. Also in ``results``:
    ``tb_energy`` and ``mbd_energy`` (eV), ``volume_ratios``, and the base
    calculator's ``charges`` (e) and ``dipole`` (e·Å) when it has them.

    Parameters
    ----------
    base:
        The underlying calculator (e.g. tblite GFN2-xTB without D4); it must
        provide ``charges`` when ``ratios="charges"``.
    ratios:
        ``"charges"`` (CPA from the base calculator's charges, see
        :func:`charge_population_ratios`), ``"free"`` (all 1: free-atom
        parameters), or an explicit array of shape (n,).
    variant, beta, xc:
        Passed to :func:`qcell_nb.calculators.mbd.mbd_energy_and_forces`;
        ``beta`` defaults to :data:`TB_MBD_BETA` for rsSCS.
    """

    implemented_properties = ["energy", "free_energy", "forces", "charges", "dipole"]

    def __init__(self, base: Calculator, ratios: str | np.ndarray = "charges", variant: str = "rsscs",
                 beta: float | None = None, xc: str = "pbe", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(ratios, str) and ratios not in ("charges", "free"):
            raise ValueError(f"mbd ratios {ratios!r}: use 'charges', 'free' or an array of volume ratios")
        if variant not in ("rsscs", "ts"):
            raise ValueError(f"unknown dispersion variant {variant!r}; use 'rsscs' or 'ts'")
        self.base = base
        self.ratios = ratios
        self.variant = variant
        self.beta = TB_MBD_BETA if beta is None and variant == "rsscs" else beta
        self.xc = xc

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        from .mbd import mbd_energy_and_forces

        super().calculate(atoms, properties, system_changes)
        work = self.atoms.copy()
        work.calc = self.base
        tb_energy = float(work.get_potential_energy())
        tb_forces = np.asarray(work.get_forces(), dtype=float)
        charges = dipole = None
        if "charges" in self.base.implemented_properties:
            charges = np.asarray(self.base.get_property("charges", work), dtype=float)
        if "dipole" in self.base.implemented_properties:
            dipole = np.asarray(self.base.get_property("dipole", work), dtype=float)
        if isinstance(self.ratios, str) and self.ratios == "charges":
            if charges is None:
                raise ValueError(f"{type(self.base).__name__} gives no atomic charges; use ratios='free'")
            ratios = charge_population_ratios(work.numbers, charges)
        elif isinstance(self.ratios, str):
            ratios = np.ones(len(work))
        else:
            ratios = np.asarray(self.ratios, dtype=float)
        e_mbd, f_mbd = mbd_energy_and_forces(work.positions, work.numbers, ratios, variant=self.variant,
                                             beta=self.beta, xc=self.xc)
        self.results = {"energy": tb_energy + e_mbd, "free_energy": tb_energy + e_mbd,
                        "forces": tb_forces + f_mbd, "tb_energy": tb_energy, "mbd_energy": e_mbd,
                        "volume_ratios": ratios}
        if charges is not None:
            self.results["charges"] = charges
        if dipole is not None:
            self.results["dipole"] = dipole


def method_label(method: str = "gfn2-xtb", mbd: bool = False) -> str:
    """Readable name of a tight-binding setting, e.g. ``"GFN2-xTB(-D4)+MBD@rsSCS"``."""
    _check_method(method)
    if method == "gfn2-xtb":
        return "GFN2-xTB(-D4)+MBD@rsSCS" if mbd else METHOD
    return "DFTB3/3ob+MBD" if mbd else "DFTB3/3ob"


def resolve_method(method: str) -> str:
    """``"auto"`` -> ``"dftb3-3ob"`` where DFTB+ and the 3ob files are installed, else ``"gfn2-xtb"``.

    Other names are checked and returned unchanged.
    """
    if method != "auto":
        _check_method(method)
        return method
    from .dftb import dftb_plus_binary, slater_koster_directory

    if dftb_plus_binary() is None:
        return "gfn2-xtb"
    try:
        slater_koster_directory()
    except RuntimeError:
        return "gfn2-xtb"
    return "dftb3-3ob"


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"tight-binding method {method!r} is not one of {', '.join(METHODS)}")


def tight_binding_calculator(atoms: Atoms, method: Method = "gfn2-xtb", mbd: bool = False, *,
                             mbd_ratios: str | np.ndarray = "charges", mbd_beta: float | None = None,
                             accuracy: float = 1.0, max_iterations: int = 250,
                             directory: str | None = None) -> Calculator:
    """An ASE calculator for ``atoms`` (not attached): GFN2-xTB or DFTB3/3ob, optionally +MBD.

    Parameters
    ----------
    atoms:
        Structure whose ``info['charge']`` and ``info['multiplicity']`` set
        the electronic state.
    method:
        ``"gfn2-xtb"`` (tblite) or ``"dftb3-3ob"`` (``dftb+`` binary).
    mbd:
        Add MBD@rsSCS dispersion. GFN2-xTB: its D4 term is replaced by MBD
        from :mod:`qcell_nb.calculators.mbd` with ratios ``mbd_ratios``.
        DFTB3: DFTB+'s own MBD (ratios from its charge-population approach).
    mbd_ratios:
        GFN2-xTB only: ``"charges"`` (CPA, default), ``"free"``, or an array.
    mbd_beta:
        MBD range-separation parameter (default :data:`TB_MBD_BETA`).
    accuracy, max_iterations:
        SCC accuracy factor (tblite; DFTB3: tolerance 1e-7 x accuracy) and
        cycle limit.
    directory:
        DFTB3 only: where DFTB+ writes its files (default: a fresh temporary
        directory, so parallel workers never share one).

    Raises
    ------
    ValueError
        Unknown method.
    RuntimeError
        ``"dftb3-3ob"`` without a ``dftb+`` binary or 3ob files (the message
        says how to install them).
    """
    _check_method(method)
    if method == "dftb3-3ob":
        from .dftb import dftb3_calculator

        return dftb3_calculator(atoms, mbd=mbd, mbd_beta=mbd_beta, accuracy=accuracy,
                                max_iterations=max_iterations, directory=directory)
    if not mbd:
        return gfn2_calculator(atoms, accuracy=accuracy, max_iterations=max_iterations)
    base = gfn2_calculator(atoms, accuracy=accuracy, max_iterations=max_iterations, dispersion=False)
    return MBDCorrected(base, ratios=mbd_ratios, beta=mbd_beta)


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


def _energy_forces(atoms: Atoms, method: str = METHOD) -> tuple[float, np.ndarray]:
    """Energy (eV) and forces (eV/Å) of ``atoms`` with its attached calculator.

    Library failures (SCF not converged, impossible spin) and non-finite
    results become a RuntimeError naming the structure.
    """
    try:
        energy = float(atoms.get_potential_energy())
        forces = np.asarray(atoms.get_forces(), dtype=float)
    except Exception as err:  # tblite raises CalculationFailed / InputError
        raise TightBindingError(f"{method} failed for {_label(atoms)}: {err}") from err
    if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
        raise TightBindingError(f"{method} gave a non-finite energy or force for {_label(atoms)}")
    return energy, forces


def single_point(atoms: Atoms, accuracy: float = 1.0, max_iterations: int = 250, threads: int | None = 1,
                 method: Method = "gfn2-xtb", mbd: bool = False) -> tuple[float, np.ndarray]:
    """Tight-binding energy (eV) and forces (eV/Å, (n, 3)) of ``atoms`` (not modified).

    ``method``, ``mbd``, ``accuracy`` and ``max_iterations`` go to
    :func:`tight_binding_calculator` (default: plain GFN2-xTB); ``threads``
    caps OpenMP/BLAS threads during the call (``None``: no cap).

    Raises
    ------
    ValueError
        If the structure is empty or has overlapping atoms.
    TightBindingError
        (a RuntimeError) if the SCF fails or a result is non-finite; the
        message names the structure.
    """
    _check_input(atoms)
    work = atoms.copy()
    # A fresh calculator per structure: no SCF restart from another geometry,
    # so an energy does not depend on what was computed before it.
    work.calc = tight_binding_calculator(atoms, method, mbd, accuracy=accuracy, max_iterations=max_iterations)
    try:
        with _thread_limit(threads):
            return _energy_forces(work, method_label(method, mbd))
    finally:
        _release(work.calc)


def single_point_energy(atoms: Atoms, accuracy: float = 1.0, max_iterations: int = 250,
                        threads: int | None = 1, method: Method = "gfn2-xtb", mbd: bool = False) -> float:
    """Tight-binding total energy of ``atoms`` in eV: :func:`single_point` without the forces."""
    return single_point(atoms, accuracy, max_iterations, threads, method, mbd)[0]


def _release(calc: Calculator) -> None:
    """Remove a DFTB+ scratch directory the calculator factory created (no-op otherwise)."""
    if getattr(calc, "temporary_directory", None):
        from .dftb import remove_temporary_directory

        remove_temporary_directory(calc)


def _frame_indices(n_path: int, keep_frames: int) -> list[int]:
    """Indices of ``keep_frames`` frames spread evenly over ``n_path``, last always kept."""
    if keep_frames == 1 or n_path == 1:
        return [n_path - 1]
    picks = np.round(np.linspace(0, n_path - 1, min(keep_frames, n_path))).astype(int)
    return sorted(set(picks.tolist()))


def optimise(atoms: Atoms, fmax: float = 0.05, steps: int = 200, keep_frames: int = 1,
             accuracy: float = 1.0, max_iterations: int = 250, threads: int | None = 1,
             method: Method = "gfn2-xtb", mbd: bool = False) -> list[Atoms]:
    """Relax ``atoms`` with tight binding and LBFGS; return frames along the path.

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
        Passed to :func:`tight_binding_calculator`.
    threads:
        Cap on OpenMP/BLAS threads during the run; ``None`` leaves it.
    method, mbd:
        Tight-binding method and dispersion (see
        :func:`tight_binding_calculator`); default plain GFN2-xTB.

    Returns
    -------
    list of ase.Atoms
        Copies in path order, the relaxed structure last. Each carries the
        input's info plus ``frame`` (optimiser step), ``xtb_energy`` (eV,
        the tight-binding energy of whichever method ran), ``xtb_fmax``
        (largest force, eV/Å), ``converged`` (whether the whole run reached
        ``fmax``; the same on every frame), ``tb_method`` (e.g.
        ``"GFN2-xTB"``) and ``parent_id`` (structure id of the input).

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
    label = method_label(method, mbd)

    work = atoms.copy()
    work.calc = tight_binding_calculator(atoms, method, mbd, accuracy=accuracy, max_iterations=max_iterations)
    path: list[tuple[np.ndarray, float, float]] = []

    def record() -> None:
        # Runs at step 0 and after every step; the check here catches a
        # failure or NaN at the step where it happens, not after the run.
        energy, forces = _energy_forces(work, label)
        path.append((work.positions.copy(), energy, float(np.linalg.norm(forces, axis=1).max())))

    optimizer = LBFGS(work, logfile=None)
    optimizer.attach(record, interval=1)
    try:
        with _thread_limit(threads):
            converged = bool(optimizer.run(fmax=fmax, steps=steps))
        if not path or not np.array_equal(path[-1][0], work.positions):
            record()
    except TightBindingError:
        raise
    except Exception as err:  # a failure inside the optimiser's own force call
        raise TightBindingError(f"{label} optimisation failed for {_label(atoms)}: {err}") from err
    finally:
        _release(work.calc)

    parent = structure_id(atoms)
    frames = []
    for index in _frame_indices(len(path), keep_frames):
        positions, energy, largest_force = path[index]
        frame = Atoms(atoms.numbers, positions, cell=atoms.cell, pbc=atoms.pbc)
        frame.info = dict(atoms.info)
        frame.info.update(frame=int(index), xtb_energy=energy, xtb_fmax=largest_force,
                          converged=converged, tb_method=label, parent_id=parent)
        frames.append(frame)
    return frames
