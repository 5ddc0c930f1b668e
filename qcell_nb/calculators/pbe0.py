"""PBE0+MBD reference labels with PySCF (density fitting) and our JAX MBD.

:class:`PBE0MBD` is an ASE calculator; :func:`label_structure` is the picklable
pure function that Dask workers call. Both produce, in ASE units:

- ``energy`` (eV): PBE0 + dispersion,
- ``forces`` (eV/Å): density-fitted analytic PBE0 gradients (with grid
  response) + dispersion forces at fixed Hirshfeld ratios,
- ``dipole`` (e·Å): from the SCF density and the nuclei, about the coordinate
  origin (origin-dependent for charged systems, as in ASE),
- ``charges`` (e): Hirshfeld charges,

plus ``pbe0_energy``, ``mbd_energy`` (eV), ``hirsh_ratios``,
``hirshfeld_charges``, ``scf_iterations``, ``scf_converged``, ``wall_time_s``,
``device`` and, when asked for (``kohn_sham_matrices=True``), ``kohn_sham``:
the Kohn-Sham matrix, overlap, orbital energies and coefficients in the AO
basis (hartree; see :func:`kohn_sham_matrices` and :mod:`qcell_nb.hamiltonians`).
With MM point charges (``mm_positions``, ``mm_charges``; see
:mod:`qcell_nb.calculators.qmmm`) the SCF is electrostatically embedded and
``mm_forces`` holds the forces on the charges.

Presets
-------
``preset`` picks basis, auxiliary basis, grid and SCF thresholds together;
explicit parameters override the preset's values. The QCell paper labels with
FHI-aims "tight" species defaults and "intermediate" ones for fragments over
~350 atoms; the Gaussian-basis counterparts here are

============  ===========  ======================  ====  =========  =============
preset        basis        auxbasis (DF)           grid  conv_tol   conv_tol_grad
============  ===========  ======================  ====  =========  =============
tight         def2-TZVP    def2-universal-jkfit    4     1e-10 Ha   1e-6
intermediate  def2-SVP     def2-universal-jkfit    4     1e-10 Ha   1e-6
light         def2-SVP     def2-universal-jkfit    3     1e-9 Ha    PySCF default
auto          tight up to :data:`AUTO_INTERMEDIATE_ATOMS` atoms, intermediate above
============  ===========  ======================  ====  =========  =============

"grid" is PySCF's ``grids.level``; ``conv_tol`` the SCF energy change between
cycles (Ha) and ``conv_tol_grad`` the orbital-gradient norm.

Mapping of the paper's criteria (total energy 1e-5 eV, forces 1e-4 eV/Å; in
FHI-aims the SCF accuracy settings ``sc_accuracy_etot``/``sc_accuracy_forces``)
to these settings, measured against a much tighter reference (grid level 8,
conv_tol 1e-13 Ha, conv_tol_grad 1e-9) with def2-TZVP, DF, grid response, on
water and methanol displaced randomly by 0.05 Å (``bench/reference_engine.py
--convergence`` reproduces the table; max over atoms and components)::

    molecule  grid  conv_tol  |dE| (eV)  max|dF| (eV/Å)
    water     3     1e-10     6.4e-07    6.6e-05
    water     4     1e-10     3.3e-07    1.1e-05
    water     5     1e-10     8.3e-08    1.8e-05
    water     5     1e-9      8.3e-08    3.9e-05
    water     5     1e-8      8.3e-08    3.9e-05
    methanol  3     1e-10     8.2e-06    2.4e-04   <- grid 3 misses 1e-4 eV/Å
    methanol  4     1e-10     1.7e-06    4.0e-05
    methanol  5     1e-10     8.7e-08    1.2e-05
    methanol  5     1e-9      8.7e-08    1.2e-05

(conv_tol_grad was PySCF's default sqrt(conv_tol); setting it to 1e-5
changed nothing measurable.) Hence ``tight`` and ``intermediate`` use grid
level 4 with conv_tol 1e-10 Ha and conv_tol_grad 1e-6: energy changes below
2e-6 eV and force changes below 5e-5 eV/Å, inside the paper's 1e-5 eV and
1e-4 eV/Å. ``light`` (grid 3, 1e-9 Ha; the former demo setting) meets the
energy criterion but not the force one on methanol (2.4e-4 eV/Å): for quick
runs, not for paper-grade data. What remains is the basis-set and
density-fitting error (a property of the level of theory, not of convergence).
``intermediate`` differs from ``tight`` in the orbital basis only, which is
what makes >350-atom fragments affordable (about 2x fewer basis functions).

The SCF itself (coarse-grid start, rescue stages, input checks) is
:mod:`qcell_nb.calculators.scf`.

GPU
---
``device="auto"`` (default) runs the SCF and gradients with gpu4pyscf when it
is installed and a CUDA device is visible, otherwise on the CPU;
``device="gpu"`` insists (a clear RuntimeError if unavailable); ``"cpu"``
never uses the GPU. Hirshfeld analysis, dipole and MBD always run on the CPU.
``results["device"]`` says where the SCF ran.

Threads: PySCF's ``lib.num_threads()`` follows ``OMP_NUM_THREADS``; this module
does not override it (a Dask worker sets it for its own process). BLAS (numpy's
OpenBLAS) runs on ``blas_threads`` threads during a label, by default one: its
thread pool and PySCF's OpenMP one otherwise spin against each other, and on 2
cores a Gly1 label took 35 s wall instead of 4 s, Gly3 41 s instead of 30 s
(see :mod:`qcell_nb.calculators.threads`; None leaves BLAS as it is).

Memory: PySCF's ``max_memory`` is ``max_memory_mb``, by default 70% of the
memory this machine (or the Dask worker's limit) has, instead of PySCF's fixed
4,000 MB, under which the density-fitting tensors of a ``tight`` label go to
disk from ~35 atoms (see :mod:`qcell_nb.calculators.memory`).
Where the full tensors would not fit but those of the AO pairs that overlap
would, only the latter are stored (:mod:`qcell_nb.calculators.pair_screened_df`;
Gly14, 101 atoms, def2-SVP: 34% of the pairs, 7.2 instead of 21.3 GB; the
same energy to ~1e-7 kcal/mol); where not even those fit, they go to a file
in PySCF's temporary directory, a third of the size of PySCF's own at that
size. ``results["df_tensors_in_memory"]`` says
whether they stayed in memory, ``results["df_pair_fraction"]`` what share of
the AO pairs they hold (1.0: all). After a label that grew the process by
more than 500 MB, :func:`label_structure` hands the freed memory back to the
system (glibc keeps it otherwise, and PySCF and Dask count it against the
next label's room; see :func:`~qcell_nb.calculators.memory.memory_returned`).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.units import Bohr, Hartree

from qcell_nb.calculators.df_gradient import fast_df_gradient
from qcell_nb.calculators.grid_response import fast_grid_response
from qcell_nb.calculators.hirshfeld import hirshfeld_analysis
from qcell_nb.calculators.mbd import default_damping, mbd_energy_and_forces, mbd_nl_energy_and_forces_from_scf
from qcell_nb.calculators.memory import memory_returned
from qcell_nb.calculators.scf import (
    build_mole,
    check_structure,
    kohn_sham_matrices,
    run_scf,
    select_device,
    to_numpy,
)
from qcell_nb.calculators.threads import blas_threads, check_blas_threads
from qcell_nb.structures import charge_of, multiplicity_of

#: With ``preset="auto"``: fragments with more atoms than this get "intermediate".
AUTO_INTERMEDIATE_ATOMS = 350

#: Named settings (see the module docstring for how they were chosen).
PRESETS: dict[str, dict[str, Any]] = {
    "tight": {"basis": "def2-tzvp", "auxbasis": "def2-universal-jkfit", "grid_level": 4,
              "conv_tol": 1e-10, "conv_tol_grad": 1e-6},
    "intermediate": {"basis": "def2-svp", "auxbasis": "def2-universal-jkfit", "grid_level": 4,
                     "conv_tol": 1e-10, "conv_tol_grad": 1e-6},
    "light": {"basis": "def2-svp", "auxbasis": "def2-universal-jkfit", "grid_level": 3,
              "conv_tol": 1e-9, "conv_tol_grad": None},
}

#: Parameters that change how a label is computed (memory, logging, where cached free atoms
#: live), not its numbers: labels made with different values of these are the same labels.
RESOURCE_PARAMETERS = frozenset({"max_memory_mb", "verbose", "free_atom_cache", "blas_threads"})

#: Parameters a preset sets.
PRESET_KEYS = ("basis", "auxbasis", "grid_level", "conv_tol", "conv_tol_grad")

DEFAULT_PARAMETERS: dict[str, Any] = {
    # None: the explicit values below; "tight", "intermediate", "light" or
    # "auto" (tight up to AUTO_INTERMEDIATE_ATOMS atoms): see PRESETS.
    # Parameters given explicitly override the preset's.
    "preset": None,
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
    "conv_tol_grad": None,  # orbital gradient norm; None = PySCF's sqrt(conv_tol)
    "max_cycle": 100,
    # Converge first on this coarser grid (PySCF grids.level) and the next
    # (scf.PRE_CONVERGENCE), then finish on ``grid_level`` from that density (CPU
    # only; None = off; a coarse level is used when grid_level exceeds it by 2
    # or more). The final answer is the fine-grid fixed point either way; see scf.run_scf.
    "pre_grid_level": 0,
    "mbd": "rsscs",  # "rsscs", "nl" (MBD-NL from the VV polarisability of the density), "ts" or None
    "mbd_beta": None,  # None = libMBD's value for xc (PBE0: 0.85; TS s_R 0.96)
    "charge": None,  # None = atoms.info["charge"] (default 0)
    "multiplicity": None,  # None = atoms.info["multiplicity"] (default by parity)
    "device": "auto",  # "auto", "cpu" or "gpu" (gpu4pyscf)
    "kohn_sham_matrices": False,  # also return F, S, orbital energies/coefficients
    # Electrostatic embedding (qcell_nb.calculators.qmmm): MM point charges (Å, e).
    "mm_positions": None,
    "mm_charges": None,
    "free_atom_cache": None,  # None = ~/.cache/qcell_nb/free_atoms or $QCELL_NB_CACHE
    # PySCF's max_memory (MB); None = 70% of what this machine (or Dask worker) has, so that the
    # density-fitting tensors stay in memory where they fit (qcell_nb.calculators.memory).
    "max_memory_mb": None,
    # BLAS threads during a label (None = as they are); OpenMP (PySCF's C code) keeps OMP_NUM_THREADS.
    "blas_threads": 1,
    "verbose": 0,
}


def resolve_parameters(params: dict[str, Any], n_atoms: int | None = None) -> dict[str, Any]:
    """Full parameter set: defaults, then the preset's values, then ``params``.

    Parameters
    ----------
    params:
        Parameters given explicitly (a subset of :data:`DEFAULT_PARAMETERS`).
    n_atoms:
        Size of the structure; needed for ``preset="auto"`` only.
    """
    unknown = set(params) - set(DEFAULT_PARAMETERS)
    if unknown:
        raise ValueError(f"unknown PBE0MBD parameter(s): {sorted(unknown)}")
    preset = params.get("preset")
    resolved = dict(DEFAULT_PARAMETERS)
    if preset is not None:
        if preset == "auto":
            if n_atoms is None:
                raise ValueError("preset 'auto' needs the number of atoms to choose tight or intermediate")
            preset = "intermediate" if n_atoms > AUTO_INTERMEDIATE_ATOMS else "tight"
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; use one of {sorted(PRESETS) + ['auto']} or None")
        resolved.update(PRESETS[preset])
    resolved.update({k: v for k, v in params.items() if k != "preset"})
    resolved["preset"] = preset
    if resolved["device"] not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device {resolved['device']!r} is not 'auto', 'cpu' or 'gpu'")
    if resolved["mbd"] not in ("rsscs", "nl", "ts", None):
        raise ValueError(f"unknown mbd variant {resolved['mbd']!r}; use 'rsscs', 'nl', 'ts' or None")
    check_blas_threads(resolved["blas_threads"])
    return resolved


def level_of_theory(
    basis: str | None = None,
    xc: str = DEFAULT_PARAMETERS["xc"],
    mbd: str | None = DEFAULT_PARAMETERS["mbd"],
    preset: str | None = None,
    **_: Any,
) -> str:
    """Short description of a labelling setting, e.g. ``"PBE0+MBD@rsSCS/def2-svp (PySCF DF)"``.

    Accepts (and ignores) the calculator's other parameters so that
    ``level_of_theory(**calc_params)`` works. ``basis`` None means the
    preset's basis (``preset="auto"`` names both) or the default one.
    """
    disp = {"rsscs": "+MBD@rsSCS", "nl": "+MBD-NL", "ts": "+TS", None: ""}.get(mbd)
    if disp is None:
        raise ValueError(f"unknown mbd variant {mbd!r}; use 'rsscs', 'nl', 'ts' or None")
    if basis is None:
        if preset == "auto":
            tight, inter = PRESETS["tight"]["basis"], PRESETS["intermediate"]["basis"]
            basis = f"{tight} (<= {AUTO_INTERMEDIATE_ATOMS} atoms), {inter} (larger)"
        elif preset is not None:
            if preset not in PRESETS:
                raise ValueError(f"unknown preset {preset!r}; use one of {sorted(PRESETS) + ['auto']} or None")
            basis = PRESETS[preset]["basis"]
        else:
            basis = DEFAULT_PARAMETERS["basis"]
    return f"{xc.upper()}{disp}/{basis} (PySCF DF)"


#: The default setting's description.
LEVEL_OF_THEORY = level_of_theory()


class PBE0MBD(Calculator):
    """PBE0+MBD@rsSCS with PySCF density fitting and JAX MBD.

    Parameters (keywords; see :data:`DEFAULT_PARAMETERS`)
    ----------------------------------------------------
    preset : {"tight", "intermediate", "light", "auto"} or None
        Basis, auxbasis, grid and thresholds together (module docstring);
        other keywords given explicitly override it.
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
    conv_tol, conv_tol_grad : float
        SCF energy (Ha) and orbital-gradient convergence (default 1e-9, sqrt(conv_tol)).
    max_cycle : int
        SCF cycles per rescue stage.
    pre_grid_level : int or None
        Converge first on this coarse grid and the next (default 0, each used
        when ``grid_level`` exceeds it by 2 or more; CPU only; see
        :data:`~qcell_nb.calculators.scf.PRE_CONVERGENCE`), then on ``grid_level``; None: full grid from the start.
        Molecules of more than :data:`~qcell_nb.calculators.scf.PRE_CONVERGENCE_MAX_NAO` basis
        functions start on ``grid_level`` whatever this says (exchange dominates their cycles).
    mbd : {"rsscs", "nl", "ts", None}
        Dispersion model (default ``"rsscs"``); ``"nl"`` is MBD-NL with VV polarisabilities
        of the SCF density (see :mod:`qcell_nb.calculators.mbd`).
    mbd_beta : float or None
        Damping override (beta for rsSCS, s_R for TS).
    charge, multiplicity : int or None
        Override ``atoms.info``; RKS for multiplicity 1, UKS otherwise.
    device : {"auto", "cpu", "gpu"}
        Where the SCF and gradients run (gpu4pyscf); see the module docstring.
    kohn_sham_matrices : bool
        Also put :func:`kohn_sham_matrices` in ``results["kohn_sham"]``.
    mm_positions, mm_charges : array (m, 3) in Å, array (m,) in e, or None
        Point charges for electrostatic embedding; ``results["mm_forces"]``.
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
        ase_keys = {"restart", "ignore_bad_restart_file", "label", "atoms", "directory"}
        resolve_parameters({k: v for k, v in kwargs.items() if k not in ase_keys}, n_atoms=0)
        self._explicit: dict[str, Any] = {}
        super().__init__(**kwargs)
        self._mf = None

    def set(self, **kwargs: Any) -> dict[str, Any]:
        # Remember what the user set, so a preset does not override it.
        self._explicit.update(kwargs)
        return super().set(**kwargs)

    def reset(self) -> None:
        super().reset()
        self._mf = None

    def resolved_parameters(self, n_atoms: int) -> dict[str, Any]:
        """The parameters in effect for a structure of ``n_atoms`` atoms."""
        return resolve_parameters(self._explicit, n_atoms)

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        start = time.perf_counter()
        atoms = self.atoms
        name = atoms.info.get("name", "structure")
        p = self.resolved_parameters(len(atoms))
        with blas_threads(p["blas_threads"]):  # see threads.py
            if self._mf is None or system_changes:
                charge = charge_of(atoms) if p["charge"] is None else int(p["charge"])
                mult = multiplicity_of(atoms) if p["multiplicity"] is None else int(p["multiplicity"])
                check_structure(atoms, p["basis"], charge, mult)
                if p["mm_charges"] is not None:
                    from qcell_nb.calculators.qmmm import check_point_charges

                    check_point_charges(atoms, p["mm_positions"], p["mm_charges"])
                p["_device"] = select_device(p["device"])
                self._resolved = p
                mol = build_mole(atoms, p["basis"], charge, mult, p["verbose"])
                mf, cycles = run_scf(mol, p, name)
                self._mf = mf
                self._compute_energy_properties(mf, cycles)
            if "forces" in properties and "forces" not in self.results:
                self._compute_forces()
        self.results["wall_time_s"] = self.results.get("wall_time_s", 0.0) + time.perf_counter() - start

    def _compute_energy_properties(self, mf, cycles: int) -> None:
        p = self._resolved
        # Analysis on the CPU: a GPU object is copied back (orbitals and all).
        cpu_mf = mf.to_cpu() if p["_device"] == "gpu" else mf
        hirsh = hirshfeld_analysis(cpu_mf, cache_dir=p["free_atom_cache"], xc=p["xc"])
        e_pbe0 = float(mf.e_tot) * Hartree
        vv_ratios = None
        if p["mbd"] is None:
            e_disp, f_disp = 0.0, np.zeros((len(self.atoms), 3))
        elif p["mbd"] == "nl":
            # MBD-NL takes its polarisabilities from the density itself (VV functional, Hirshfeld-partitioned).
            e_disp, f_disp, vv_ratios = mbd_nl_energy_and_forces_from_scf(
                cpu_mf, xc=p["xc"], beta=p["mbd_beta"], cache_dir=p["free_atom_cache"])
        else:
            beta = p["mbd_beta"] if p["mbd_beta"] is not None else default_damping(p["mbd"], p["xc"])
            e_disp, f_disp = mbd_energy_and_forces(
                self.atoms.get_positions(), self.atoms.get_atomic_numbers(),
                hirsh["volume_ratios"], variant=p["mbd"], beta=beta,
            )
        dipole_au = cpu_mf.dip_moment(unit="AU", verbose=0)
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
            **({} if vv_ratios is None else {"vv_alpha0_ratios": np.asarray(vv_ratios["alpha0_ratios"]),
                                             "vv_c6_ratios": np.asarray(vv_ratios["c6_ratios"])}),
            "auxbasis": str(cpu_mf.with_df.auxbasis),
            "max_memory_mb": float(mf.max_memory),
            "basis": str(p["basis"]),
            "device": p["_device"],
            "wall_time_s": 0.0,
        }
        if p["kohn_sham_matrices"]:
            self.results["kohn_sham"] = kohn_sham_matrices(mf)
        if p["_device"] != "gpu":
            # False: the 3-index tensors went to a temporary file, which every cycle reads again
            # (slower); a larger max_memory_mb keeps them in memory.
            self.results["df_tensors_in_memory"] = isinstance(getattr(mf.with_df, "_cderi", None), np.ndarray)
            self.results["df_pair_fraction"] = float(getattr(mf.with_df, "pair_fraction", 1.0))

    def _compute_forces(self) -> None:
        grad = self._mf.nuc_grad_method()
        grad.grid_response = bool(self._resolved["grid_response"])
        grad.verbose = 0
        # gpu4pyscf has its own gradient code; ours replaces parts of PySCF's CPU one (same result).
        on_cpu = self._resolved.get("_device") != "gpu"
        with contextlib.ExitStack() as faster:
            if on_cpu:
                faster.enter_context(fast_df_gradient())
                if grad.grid_response:
                    faster.enter_context(fast_grid_response(self._mf.grids))
            g = to_numpy(grad.kernel())  # Ha/bohr
        forces = -g * (Hartree / Bohr) + self._disp_forces
        if not np.all(np.isfinite(forces)):
            raise RuntimeError(f"{self.atoms.info.get('name', 'structure')}: non-finite forces")
        self.results["forces"] = forces
        if self._resolved["mm_charges"] is not None:
            from qcell_nb.calculators.qmmm import point_charge_forces

            self.results["mm_forces"] = point_charge_forces(grad, self._mf)


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
        (float), ``level_of_theory`` (str), ``auxbasis`` (str), ``device``
        (str); ``kohn_sham`` (dict, see :func:`kohn_sham_matrices`) when
        ``kohn_sham_matrices=True``; ``mm_forces`` (m, 3; eV/Å) with MM charges.
    """
    start = time.perf_counter()
    calc = PBE0MBD(**calc_params)
    atoms = atoms.copy()
    atoms.calc = calc
    # After a large label, the memory of its SCF (tensors, grids), dropped with the calculator,
    # goes back to the system, so that the next label in this process or Dask worker has it.
    with memory_returned():
        try:
            calc.calculate(atoms, ["energy", "forces"], all_changes)
            r = calc.results
            params = calc.resolved_parameters(len(atoms))
        finally:
            calc.reset()
    result = {
        "energy": float(r["energy"]),
        "forces": np.asarray(r["forces"], dtype=np.float64),
        "dipole": np.asarray(r["dipole"], dtype=np.float64),
        "charges": np.asarray(r["charges"], dtype=np.float64),
        "hirsh_ratios": np.asarray(r["hirsh_ratios"], dtype=np.float64),
        "pbe0_energy": float(r["pbe0_energy"]),
        "mbd_energy": float(r["mbd_energy"]),
        "scf_iterations": int(r["scf_iterations"]),
        "wall_time_s": time.perf_counter() - start,
        "level_of_theory": level_of_theory(**{**params, "preset": None}),
        "auxbasis": str(r["auxbasis"]),
        "device": str(r["device"]),
    }
    for optional in ("kohn_sham", "mm_forces"):
        if optional in r:
            result[optional] = r[optional]
    # Resources, kept with the row so that a slow label can be explained (tensors read from disk).
    result["max_memory_mb"] = float(r["max_memory_mb"])
    if "df_tensors_in_memory" in r:
        result["df_tensors_in_memory"] = bool(r["df_tensors_in_memory"])
        result["df_pair_fraction"] = float(r["df_pair_fraction"])
    return result


def interaction_energy(dimer: Atoms, n_first: int, counterpoise: bool = True, **calc_params: Any) -> dict[str, float]:
    """PBE0+MBD interaction energy of a dimer: ``E(AB) - E(A) - E(B)`` in eV.

    Parameters
    ----------
    dimer:
        Both monomers; the first ``n_first`` atoms are monomer A. Charges and
        multiplicities of the monomers are taken as neutral singlets/doublets
        by electron parity; ``calc_params`` charge/multiplicity apply to the dimer.
    counterpoise:
        Boys-Bernardi correction of the PBE0 part: monomer energies in the
        dimer basis (the partner's atoms as ghosts). MBD has no basis-set
        superposition error; its monomer terms use each monomer's own
        Hirshfeld ratios.
    calc_params:
        :class:`PBE0MBD` parameters (preset, basis, grid, ...).

    Returns
    -------
    dict
        ``interaction_energy``, ``pbe0`` and ``mbd`` parts (eV), and the
        uncorrected PBE0 part ``pbe0_no_cp`` (eV).
    """
    if not 0 < n_first < len(dimer):
        raise ValueError(f"n_first={n_first} must split the {len(dimer)}-atom dimer into two monomers")
    parts = {"AB": dimer, "A": dimer[:n_first], "B": dimer[n_first:]}
    energies = {}
    for key, atoms in parts.items():
        calc = PBE0MBD(**calc_params)
        atoms = atoms.copy()
        if key != "AB":
            atoms.info = {"name": f"{dimer.info.get('name', 'dimer')} monomer {key}"}
        atoms.calc = calc
        atoms.get_potential_energy()
        energies[key] = (calc.results["pbe0_energy"], calc.results["mbd_energy"])
    pbe0_no_cp = energies["AB"][0] - energies["A"][0] - energies["B"][0]
    mbd = energies["AB"][1] - energies["A"][1] - energies["B"][1]
    pbe0 = pbe0_no_cp
    if counterpoise:
        p = resolve_parameters(calc_params, len(dimer))
        p["_device"] = select_device(p["device"])
        pbe0 = energies["AB"][0]
        for ghosts in (range(n_first, len(dimer)), range(n_first)):
            monomer = dimer[[i for i in range(len(dimer)) if i not in set(ghosts)]]
            mult = multiplicity_of(monomer)
            mol = build_mole(dimer, p["basis"], 0, mult, p["verbose"], ghosts=ghosts)
            mf, _ = run_scf(mol, p, f"{dimer.info.get('name', 'dimer')} counterpoise monomer")
            pbe0 -= float(mf.e_tot) * Hartree
    return {"interaction_energy": pbe0 + mbd, "pbe0": pbe0, "mbd": mbd, "pbe0_no_cp": pbe0_no_cp}
