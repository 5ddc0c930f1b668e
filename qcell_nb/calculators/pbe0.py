"""PBE0+MBD reference labels with PySCF (density fitting) and our JAX MBD.

:class:`PBE0MBD` is an ASE calculator; :func:`label_structure` is the picklable
pure function that Dask workers call. Both produce, in ASE units:

- ``energy`` (eV): PBE0 + dispersion,
- ``forces`` (eV/Å): density-fitted analytic PBE0 gradients + dispersion
  forces at fixed Hirshfeld ratios,
- ``dipole`` (e·Å): from the SCF density and the nuclei, about the coordinate
  origin (origin-dependent for charged systems, as in ASE),
- ``charges`` (e): Hirshfeld charges,

plus ``pbe0_energy``, ``mbd_energy`` (eV), ``hirsh_ratios``,
``hirshfeld_charges``, ``scf_iterations``, ``scf_converged``, ``wall_time_s``.

Threads: PySCF's ``lib.num_threads()`` follows ``OMP_NUM_THREADS``; this module
does not override it (a Dask worker sets it for its own process).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.units import Bohr, Hartree
from pyscf import dft, gto

from qcell_nb.calculators.hirshfeld import hirshfeld_analysis
from qcell_nb.calculators.mbd import default_damping, mbd_energy_and_forces
from qcell_nb.structures import charge_of, multiplicity_of

#: Closest allowed interatomic distance (Å); closer pairs are rejected.
MIN_DISTANCE = 0.5

DEFAULT_PARAMETERS: dict[str, Any] = {
    "basis": "def2-svp",
    "xc": "pbe0",
    # None = PySCF's default for the basis (def2-universal-jkfit for def2
    # orbital bases, reported by PySCF as "def2-svp-jkfit"; cc-pVDZ-jkfit for
    # Pople bases). The resolved name is in results["auxbasis"].
    "auxbasis": None,
    "grid_level": 3,
    # Include the derivative of the grid weights in the forces so that forces
    # are the exact gradient of the energy (see tests/test_pbe0.py).
    "grid_response": True,
    "conv_tol": 1e-9,  # Ha
    "max_cycle": 100,
    "mbd": "rsscs",  # "rsscs", "ts" or None
    "mbd_beta": None,  # None = libMBD's value for xc (PBE0: 0.85; TS s_R 0.96)
    "charge": None,  # None = atoms.info["charge"] (default 0)
    "multiplicity": None,  # None = atoms.info["multiplicity"] (default by parity)
    "free_atom_cache": None,  # None = ~/.cache/qcell_nb/free_atoms or $QCELL_NB_CACHE
    "verbose": 0,
}


def level_of_theory(
    basis: str = DEFAULT_PARAMETERS["basis"],
    xc: str = DEFAULT_PARAMETERS["xc"],
    mbd: str | None = DEFAULT_PARAMETERS["mbd"],
    **_: Any,
) -> str:
    """Short description of a labelling setting, e.g. ``"PBE0+MBD@rsSCS/def2-svp (PySCF DF)"``.

    Accepts (and ignores) the calculator's other parameters so that
    ``level_of_theory(**calc_params)`` works.
    """
    disp = {"rsscs": "+MBD@rsSCS", "ts": "+TS", None: ""}.get(mbd)
    if disp is None:
        raise ValueError(f"unknown mbd variant {mbd!r}; use 'rsscs', 'ts' or None")
    return f"{xc.upper()}{disp}/{basis} (PySCF DF)"


#: The default setting's description.
LEVEL_OF_THEORY = level_of_theory()


def check_structure(atoms: Atoms, basis: str, charge: int, multiplicity: int) -> None:
    """Reject inputs PySCF would fail on obscurely, with a clear ValueError.

    Raises
    ------
    ValueError
        Two atoms closer than :data:`MIN_DISTANCE`; an element ``basis`` lacks;
        electron count inconsistent with ``multiplicity``.
    """
    name = atoms.info.get("name", "structure")
    symbols = atoms.get_chemical_symbols()
    if len(atoms) == 0:
        raise ValueError(f"{name}: no atoms")
    if len(atoms) > 1:
        dist = atoms.get_all_distances()
        np.fill_diagonal(dist, np.inf)
        i, j = np.unravel_index(np.argmin(dist), dist.shape)
        if dist[i, j] < MIN_DISTANCE:
            raise ValueError(
                f"{name}: atoms {i} ({symbols[i]}) and {j} ({symbols[j]}) are "
                f"{dist[i, j]:.3f} Å apart (minimum {MIN_DISTANCE} Å)"
            )
    if isinstance(basis, str):
        for symbol in sorted(set(symbols)):
            try:
                shells = gto.basis.load(basis, symbol)
            except Exception as err:  # PySCF raises several types for unknown names
                raise ValueError(f"{name}: basis {basis!r} has no functions for element {symbol} ({err})") from None
            if not shells:
                raise ValueError(f"{name}: basis {basis!r} has no functions for element {symbol}")
    if multiplicity < 1:
        raise ValueError(f"{name}: multiplicity must be >= 1, got {multiplicity}")
    n_electrons = int(atoms.get_atomic_numbers().sum()) - charge
    if n_electrons < multiplicity - 1 or (n_electrons - (multiplicity - 1)) % 2:
        raise ValueError(
            f"{name}: {n_electrons} electrons (charge {charge}) cannot have multiplicity {multiplicity}"
        )


def build_mole(atoms: Atoms, basis: str, charge: int, multiplicity: int, verbose: int = 0) -> gto.Mole:
    """PySCF molecule (Å input, spherical AOs) for ``atoms``."""
    mol = gto.Mole()
    mol.atom = [(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.get_positions())]
    mol.unit = "Angstrom"
    mol.basis = basis
    # def2 bases beyond Kr are defined together with an ECP of the same name.
    heavy = sorted({s for s, z in zip(atoms.get_chemical_symbols(), atoms.numbers) if z > 36})
    if heavy and isinstance(basis, str) and basis.lower().startswith("def2"):
        mol.ecp = {s: basis for s in heavy}
    mol.charge = charge
    mol.spin = multiplicity - 1
    mol.verbose = verbose
    mol.build()
    return mol


def _make_scf(mol: gto.Mole, params: dict[str, Any]):
    mf = dft.RKS(mol) if mol.spin == 0 else dft.UKS(mol)
    mf.xc = params["xc"]
    mf.grids.level = params["grid_level"]
    mf.conv_tol = params["conv_tol"]
    mf.max_cycle = params["max_cycle"]
    mf.verbose = params["verbose"]
    return mf.density_fit(auxbasis=params["auxbasis"])


def run_scf(mol: gto.Mole, params: dict[str, Any], name: str = "structure"):
    """Converge the SCF, escalating on failure.

    1. default DIIS; 2. level shift 0.25 Ha + damping 0.5 from the last
    density; 3. second-order (Newton) solver from the last orbitals. Each stage
    gets ``max_cycle`` cycles.

    Returns
    -------
    mf : SCF object (converged), total cycles used (int)

    Raises
    ------
    RuntimeError
        If no stage converges; the message names the structure.
    """
    mf = _make_scf(mol, params)
    mf.kernel()
    cycles = int(mf.cycles)
    if mf.converged:
        return mf, cycles

    shifted = _make_scf(mol, params)
    shifted.level_shift = 0.25
    shifted.damp = 0.5
    shifted.diis_start_cycle = 2
    shifted.kernel(dm0=mf.make_rdm1())
    cycles += int(shifted.cycles)
    if shifted.converged:
        # Level shift only changes the path, not the fixed point; clear it so
        # gradients and analysis see the plain Fock matrix.
        shifted.level_shift = 0.0
        shifted.damp = 0.0
        return shifted, cycles

    newton = _make_scf(mol, params).newton()
    newton.kernel(shifted.mo_coeff, shifted.mo_occ)
    cycles += int(getattr(newton, "cycles", 0))
    if newton.converged:
        # Hand results to a plain DF object so gradients use the usual path.
        mf = _make_scf(mol, params)
        for key in ("mo_coeff", "mo_occ", "mo_energy", "e_tot", "converged"):
            setattr(mf, key, getattr(newton, key))
        mf.grids.build()  # the plain object has not run, so build its grid
        return mf, cycles
    raise RuntimeError(
        f"{name}: SCF did not converge in {cycles} cycles "
        f"(DIIS, level shift + damping, second-order; conv_tol={params['conv_tol']:g} Ha)"
    )


class PBE0MBD(Calculator):
    """PBE0+MBD@rsSCS with PySCF density fitting and JAX MBD.

    Parameters (keywords; see :data:`DEFAULT_PARAMETERS`)
    ----------------------------------------------------
    basis : str
        Orbital basis (default ``"def2-svp"``).
    xc : str
        Functional (default ``"pbe0"``).
    auxbasis : str or None
        Density-fitting basis; None = PySCF's default (def2-universal-jkfit for def2).
    grid_level : int
        PySCF DFT grid level (default 3).
    grid_response : bool
        Include grid-weight derivatives in forces (default True).
    conv_tol : float
        SCF energy convergence in Ha (default 1e-9).
    max_cycle : int
        SCF cycles per rescue stage.
    mbd : {"rsscs", "ts", None}
        Dispersion model (default ``"rsscs"``).
    mbd_beta : float or None
        Damping override (beta for rsSCS, s_R for TS).
    charge, multiplicity : int or None
        Override ``atoms.info``; RKS for multiplicity 1, UKS otherwise.
    free_atom_cache : path or None
        Hirshfeld free-atom cache directory.
    verbose : int
        PySCF verbosity.

    Notes
    -----
    One ``calculate`` runs the SCF, Hirshfeld analysis, dipole and dispersion;
    forces (the expensive gradient) are computed when requested, reusing the
    converged SCF of the same geometry if energy was asked for first.
    """

    implemented_properties = ["energy", "forces", "dipole", "charges"]
    default_parameters = dict(DEFAULT_PARAMETERS)

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(DEFAULT_PARAMETERS) - {"restart", "ignore_bad_restart_file", "label", "atoms", "directory"}
        if unknown:
            raise ValueError(f"unknown PBE0MBD parameter(s): {sorted(unknown)}")
        super().__init__(**kwargs)
        self._mf = None

    def reset(self) -> None:
        super().reset()
        self._mf = None

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        start = time.perf_counter()
        atoms = self.atoms
        p = self.parameters
        name = atoms.info.get("name", "structure")

        if self._mf is None or system_changes:
            charge = charge_of(atoms) if p["charge"] is None else int(p["charge"])
            mult = multiplicity_of(atoms) if p["multiplicity"] is None else int(p["multiplicity"])
            check_structure(atoms, p["basis"], charge, mult)
            if p["mbd"] not in ("rsscs", "ts", None):
                raise ValueError(f"unknown mbd variant {p['mbd']!r}; use 'rsscs', 'ts' or None")
            mol = build_mole(atoms, p["basis"], charge, mult, p["verbose"])
            mf, cycles = run_scf(mol, p, name)
            self._mf = mf
            self._compute_energy_properties(mf, cycles)
        if "forces" in properties and "forces" not in self.results:
            self._compute_forces()
        self.results["wall_time_s"] = self.results.get("wall_time_s", 0.0) + time.perf_counter() - start

    def _compute_energy_properties(self, mf, cycles: int) -> None:
        p = self.parameters
        hirsh = hirshfeld_analysis(mf, cache_dir=p["free_atom_cache"], xc=p["xc"])
        e_pbe0 = float(mf.e_tot) * Hartree
        if p["mbd"] is None:
            e_disp, f_disp = 0.0, np.zeros((len(self.atoms), 3))
        else:
            beta = p["mbd_beta"] if p["mbd_beta"] is not None else default_damping(p["mbd"], p["xc"])
            e_disp, f_disp = mbd_energy_and_forces(
                self.atoms.get_positions(), self.atoms.get_atomic_numbers(),
                hirsh["volume_ratios"], variant=p["mbd"], beta=beta,
            )
        dipole_au = mf.dip_moment(unit="AU", verbose=0)
        self._disp_forces = f_disp
        self.results = {
            "energy": e_pbe0 + e_disp,
            "free_energy": e_pbe0 + e_disp,
            "dipole": np.asarray(dipole_au) * Bohr,
            "charges": hirsh["charges"].copy(),
            "pbe0_energy": e_pbe0,
            "mbd_energy": e_disp,
            "hirsh_ratios": hirsh["volume_ratios"],
            "hirshfeld_charges": hirsh["charges"],
            "hirshfeld_free_volumes": hirsh["free_volumes"],
            "scf_iterations": cycles,
            "scf_converged": bool(mf.converged),
            "auxbasis": str(mf.with_df.auxbasis),
            "wall_time_s": 0.0,
        }

    def _compute_forces(self) -> None:
        grad = self._mf.nuc_grad_method()
        grad.grid_response = bool(self.parameters["grid_response"])
        grad.verbose = 0
        g = grad.kernel()  # Ha/bohr
        forces = -np.asarray(g) * (Hartree / Bohr) + self._disp_forces
        if not np.all(np.isfinite(forces)):
            raise RuntimeError(f"{self.atoms.info.get('name', 'structure')}: non-finite forces")
        self.results["forces"] = forces


def label_structure(atoms: Atoms, **calc_params: Any) -> dict[str, Any]:
    """Label one structure with PBE0+MBD (energy, forces, dipole, Hirshfeld).

    Pure and picklable: safe to ship to a Dask worker. ``atoms.info`` supplies
    charge, multiplicity and name unless ``calc_params`` override them.

    Returns
    -------
    dict
        ``energy`` (float, eV), ``forces`` (n, 3; eV/Å), ``dipole`` (3; e·Å),
        ``charges`` (n; e, Hirshfeld), ``hirsh_ratios`` (n), ``pbe0_energy``
        and ``mbd_energy`` (eV), ``scf_iterations`` (int), ``wall_time_s``
        (float), ``level_of_theory`` (str), ``auxbasis`` (str).
    """
    start = time.perf_counter()
    calc = PBE0MBD(**calc_params)
    atoms = atoms.copy()
    atoms.calc = calc
    calc.calculate(atoms, ["energy", "forces"], all_changes)
    r = calc.results
    params = {**DEFAULT_PARAMETERS, **calc_params}
    return {
        "energy": float(r["energy"]),
        "forces": np.asarray(r["forces"], dtype=np.float64),
        "dipole": np.asarray(r["dipole"], dtype=np.float64),
        "charges": np.asarray(r["charges"], dtype=np.float64),
        "hirsh_ratios": np.asarray(r["hirsh_ratios"], dtype=np.float64),
        "pbe0_energy": float(r["pbe0_energy"]),
        "mbd_energy": float(r["mbd_energy"]),
        "scf_iterations": int(r["scf_iterations"]),
        "wall_time_s": time.perf_counter() - start,
        "level_of_theory": level_of_theory(**params),
        "auxbasis": str(r["auxbasis"]),
    }
