"""Converging a density-fitted Kohn-Sham SCF in PySCF: inputs, device, coarse-grid start, rescue.

:mod:`qcell_nb.calculators.pbe0` (labels) and :mod:`qcell_nb.calculators.qmmm`
(embedding) build on these:

- :func:`check_structure` rejects inputs PySCF would fail on obscurely
  (overlapping atoms, an element the basis lacks, an impossible spin state)
  with a ValueError naming the structure;
- :func:`build_mole` makes the PySCF molecule (ECPs for heavy def2 elements,
  ghost atoms for counterpoise);
- :func:`select_device` picks the CPU or gpu4pyscf;
- :func:`run_scf` converges, escalating through rescue stages before it gives up;
- :func:`kohn_sham_matrices` extracts the converged Kohn-Sham matrix and overlap.

SCF path
--------
On the CPU the SCF first runs on coarse grids (:data:`PRE_CONVERGENCE`:
PySCF's level 0 to 1e-4 Ha, then level 1 to 1e-7 Ha, from ``pre_grid_level``
up and only below ``grid_level - 1``), then on the requested grid from that
density. XC integration dominates a cycle at these sizes, and the fine grid
then needs 4-5 instead of 12-13 cycles. The result is the fine-grid fixed
point (same energy to ~1e-8 eV). Molecules of more than
:data:`PRE_CONVERGENCE_MAX_NAO` basis functions (~50 atoms with def2-SVP)
start on the requested grid: there exchange dominates a cycle, and the fewest
cycles in all win. PySCF's extra confirmation cycle after
convergence (``conv_check``) is skipped on the fine grid: both criteria
already hold at the last cycle. Every stage, rescues included, works on the
same molecule and auxiliary basis and so reuses one set of density-fitting
tensors (those of the overlapping AO pairs only where the full set would not
fit in memory: :mod:`qcell_nb.calculators.pair_screened_df`), and integrates XC with :class:`~qcell_nb.calculators.screened_numint.ScreenedNumInt`
(PySCF's integrals, skipping the basis functions a block of grid points
does not see); each stage starts from the density whose Coulomb and exchange
matrices the last one has just built (they do not depend on the grid), and
:func:`remember_last_jk` hands those over instead of building them again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms
from pyscf import dft, gto

from qcell_nb.calculators.df_jk import install_symmetric_k
from qcell_nb.calculators.grid_boxes import fast_box_order
from qcell_nb.calculators.memory import memory_budget_mb
from qcell_nb.calculators.pair_screened_df import PairScreenedDF
from qcell_nb.calculators.screened_numint import ScreenedNumInt, release_ao_cache
from qcell_nb.structures import OVERLAP_DISTANCE, closest_pair

#: Coarse-grid SCF stages before the requested grid: (levels above ``pre_grid_level``, energy
#: tolerance in Ha). Measured on Gly3/def2-SVP, grid 3, one core: level 0 to 1e-6 then grid 3,
#: 9 + 8 cycles; level 0 to 1e-4, level 1 to 1e-7, then grid 3: 7 + 5 + 4 cycles, 18% less CPU
#: time (the level-0 fixed point is far enough from the fine one, orbital gradient 1.6e-2, that
#: DIIS restarts from it slowly; level 1's, 3e-4, is close). Grid 4 (Gly2): 15% less.
PRE_CONVERGENCE: tuple[tuple[int, float], ...] = ((0, 1e-4), (1, 1e-7))

#: Above this many basis functions the SCF starts on the requested grid. A coarse cycle saves
#: XC work but costs a full exchange build, which grows faster (N^3-N^4 against ~N for the
#: screened XC): the staged path takes more cycles in all (Gly10: 19 against 13). Measured on
#: glycine chains, def2-SVP, grid 3, one core, both paths in one process (CPU-s, staged / direct,
#: cycles): Gly5 (379 functions) 140.9 / 154.2 (17 / 13); Gly7 (521) 362.6 / 355.4 (17 / 13);
#: Gly10 (734) 1027.4 / 965.9 (19 / 13). Measured on grid 3 only: on the tight preset's grid 4 XC
#: weighs more and the crossover is likely higher (not measured).
PRE_CONVERGENCE_MAX_NAO = 500


def gpu_status() -> tuple[bool, str]:
    """Whether gpu4pyscf and a CUDA device are usable here, and why not if not."""
    try:
        import cupy
        import gpu4pyscf  # noqa: F401
    except ImportError as err:
        return False, f"gpu4pyscf/cupy not importable ({err}); install gpu4pyscf-cuda12x for GPU runs"
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # noqa: BLE001 - CUDA raises driver-specific types
        return False, f"no usable CUDA device ({err})"
    if n_devices < 1:
        return False, "no CUDA device visible"
    return True, f"gpu4pyscf on {n_devices} CUDA device(s)"


def select_device(device: str) -> str:
    """``"cpu"`` or ``"gpu"`` for a requested ``"auto"``/``"cpu"``/``"gpu"``.

    Raises
    ------
    RuntimeError
        ``device="gpu"`` but gpu4pyscf or a CUDA device is missing.
    """
    if device == "cpu":
        return "cpu"
    ok, why = gpu_status()
    if device == "gpu" and not ok:
        raise RuntimeError(f"device='gpu' requested but the GPU path is unavailable: {why}")
    return "gpu" if ok else "cpu"


def to_numpy(array: Any) -> np.ndarray:
    """NumPy copy of a NumPy or CuPy array."""
    return np.asarray(array.get() if hasattr(array, "get") and not isinstance(array, np.ndarray) else array)


def check_structure(atoms: Atoms, basis: str, charge: int, multiplicity: int) -> None:
    """Reject inputs PySCF would fail on obscurely, with a clear ValueError.

    Raises
    ------
    ValueError
        Two atoms closer than :data:`~qcell_nb.structures.OVERLAP_DISTANCE`; an element ``basis`` lacks;
        electron count inconsistent with ``multiplicity``.
    """
    name = atoms.info.get("name", "structure")
    symbols = atoms.get_chemical_symbols()
    if len(atoms) == 0:
        raise ValueError(f"{name}: no atoms")
    i, j, distance = closest_pair(atoms)
    if distance < OVERLAP_DISTANCE:
        raise ValueError(
            f"{name}: atoms {i} ({symbols[i]}) and {j} ({symbols[j]}) are "
            f"{distance:.3f} Å apart (minimum {OVERLAP_DISTANCE} Å)"
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


def build_mole(atoms: Atoms, basis: str, charge: int, multiplicity: int, verbose: int = 0,
               ghosts: Sequence[int] = ()) -> gto.Mole:
    """PySCF molecule (Å input, spherical AOs) for ``atoms``.

    Atoms listed in ``ghosts`` carry their basis functions (and grid) but no
    nucleus or electrons: the counterpoise correction's partner basis.
    """
    ghost_set = set(int(i) for i in ghosts)
    mol = gto.Mole()
    mol.atom = [(f"ghost-{s}" if i in ghost_set else s, tuple(p))
                for i, (s, p) in enumerate(zip(atoms.get_chemical_symbols(), atoms.get_positions()))]
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


def remember_last_jk(with_df) -> None:
    """Make ``with_df.get_jk`` return its last J and K again when asked for the same density matrix.

    A new SCF stage starts from the previous stage's last density, whose J and
    K (grid-independent) that stage built in its last cycle: the first Fock
    build of the new stage then costs its XC part only (at Gly5/def2-SVP a
    DF J+K build is ~2.3 CPU-s). The comparison is exact (``np.array_equal``);
    any other density is computed as usual. Idempotent.
    """
    if getattr(with_df, "_remembers_last_jk", False):
        return
    compute = with_df.get_jk
    last: dict[str, Any] = {}

    def get_jk(dm, hermi=1, with_j=True, with_k=True, *args, **kwargs):
        key = (hermi, with_j, with_k, args, tuple(sorted(kwargs.items())))
        dm_values = np.asarray(dm)
        if last.get("key") == key and np.array_equal(last["dm"], dm_values):
            return tuple(None if v is None else v.copy() for v in last["jk"])
        vj, vk = compute(dm, hermi, with_j, with_k, *args, **kwargs)
        last.update(key=key, dm=dm_values.copy(), jk=(vj, vk))
        return tuple(None if v is None else v.copy() for v in (vj, vk))

    with_df.get_jk = get_jk
    with_df._remembers_last_jk = True


def _make_scf(mol: gto.Mole, params: dict[str, Any], with_df=None):
    """DF-RKS/UKS object for ``params`` (embedded in MM charges if given; on the GPU if asked).

    ``with_df``: the density-fitting object of an earlier SCF on the same molecule and
    auxiliary basis (same device), whose 3-index tensors are then reused instead of rebuilt.
    """
    mf = dft.RKS(mol) if mol.spin == 0 else dft.UKS(mol)
    if params.get("_device") != "gpu":
        mf._numint = ScreenedNumInt()  # same XC integrals, fewer flops (see screened_numint)
    mf.xc = params["xc"]
    mf.grids.level = params["grid_level"]
    mf.conv_tol = params["conv_tol"]
    if params.get("conv_tol_grad") is not None:
        mf.conv_tol_grad = params["conv_tol_grad"]
    mf.max_cycle = params["max_cycle"]
    mf.verbose = params["verbose"]
    mf = mf.density_fit(auxbasis=params["auxbasis"])
    if params.get("_device") != "gpu" and with_df is None:
        # Same tensors, but only the AO pairs that overlap where the full ones would not fit (see pair_screened_df).
        mf.with_df = PairScreenedDF(mol, auxbasis=mf.with_df.auxbasis)  # as density_fit resolved it
    if params.get("mm_charges") is not None:
        from qcell_nb.calculators.qmmm import embed_point_charges

        mf = embed_point_charges(mf, params["mm_positions"], params["mm_charges"])
    if params.get("_device") == "gpu":
        mf = mf.to_gpu()
    if with_df is not None:
        mf.with_df = with_df
    if params.get("_device") != "gpu":
        install_symmetric_k(mf.with_df)  # half the flops of PySCF's K product (see df_jk)
        remember_last_jk(mf.with_df)
    return mf


def _kernel(mf, *args, **kwargs) -> None:
    """Run one SCF stage, then free the AO values its XC integration kept between cycles."""
    try:
        mf.kernel(*args, **kwargs)
    finally:
        release_ao_cache(mf)


def _pre_converge(mol: gto.Mole, params: dict[str, Any]):
    """Density converged on the coarse grids, its DF object and the cycles used (or None, None, 0).

    XC integration on the full grid dominates a DF-PBE0 SCF cycle at these
    sizes (Gly2/def2-SVP: ~85% of a cycle); most cycles only move the density
    towards the fixed point, which the coarse grids (a level-0 cycle is ~4x,
    a level-1 one ~2x cheaper than level 3) do as well. Stages: ``pre_grid_level``
    + each offset of :data:`PRE_CONVERGENCE` that stays 2 or more below
    ``grid_level``; each starts from the last one's density and reuses its
    density-fitting tensors.
    """
    start = params.get("pre_grid_level")
    if start is None or params.get("_device") == "gpu" or mol.nao_nr() > PRE_CONVERGENCE_MAX_NAO:
        return None, None, 0
    stages = [(start + offset, tol) for offset, tol in PRE_CONVERGENCE if start + offset <= params["grid_level"] - 2]
    dm, with_df, cycles = None, None, 0
    for level, tol in stages:
        coarse = _make_scf(mol, {**params, "grid_level": level, "conv_tol": max(tol, params["conv_tol"]),
                                 "conv_tol_grad": None}, with_df=with_df)
        coarse.conv_check = False
        _kernel(coarse, dm0=dm)
        # Converged or not, a coarse density is only a starting guess.
        dm, with_df = coarse.make_rdm1(), getattr(coarse, "with_df", None)
        cycles += int(getattr(coarse, "cycles", 0))
    return dm, with_df, cycles


def run_scf(mol: gto.Mole, params: dict[str, Any], name: str = "structure"):
    """Converge the SCF, escalating on failure.

    0. (``pre_grid_level``, CPU) converge on coarse grids
    (:data:`PRE_CONVERGENCE`); the density starts stage 1, and the density-fitting
    tensors, built once, serve every stage; 1. default DIIS on the full grid, without PySCF's extra
    confirmation cycle; 2. level shift
    0.25 Ha + damping 0.5 from the last density; 3. second-order (Newton)
    solver from the last orbitals; 4. level shift + damping from PySCF's Hückel guess
    instead of the first stage's start. Each stage gets ``max_cycle`` cycles.

    ``mol.max_memory`` (which the SCF, density-fitting and gradient objects
    copy) is set first from ``params["max_memory_mb"]`` (None: what the machine
    or the Dask worker has; see :func:`qcell_nb.calculators.memory.memory_budget_mb`).

    Returns
    -------
    mf : SCF object (converged), total cycles used (int, the coarse ones included)

    Raises
    ------
    RuntimeError
        If no stage converges; the message names the structure.
    """
    mol.max_memory = memory_budget_mb(params.get("max_memory_mb"))
    # Each stage builds its grid, and PySCF's sort of the points into boxes is slow (see grid_boxes).
    with fast_box_order():
        return _converge(mol, params, name)


def _converge(mol: gto.Mole, params: dict[str, Any], name: str):
    """:func:`run_scf`'s stages."""
    dm0, with_df, cycles = _pre_converge(mol, params)
    mf = _make_scf(mol, params, with_df=with_df)
    with_df = getattr(mf, "with_df", None)  # the rescue stages below reuse it too
    # The confirmation cycle costs a full Fock build and changes nothing once both the energy
    # and the orbital-gradient criteria hold (the rescue stages below keep it).
    mf.conv_check = False
    _kernel(mf, dm0=dm0)
    cycles += int(getattr(mf, "cycles", 0))
    if mf.converged:
        return mf, cycles

    shifted = _shifted_scf(mol, params, with_df, dm0=mf.make_rdm1())
    cycles += int(getattr(shifted, "cycles", 0))
    if shifted.converged:
        return shifted, cycles

    newton = _make_scf(mol, params, with_df=with_df).newton()
    _kernel(newton, shifted.mo_coeff, shifted.mo_occ)
    cycles += int(getattr(newton, "cycles", 0))
    if newton.converged:
        # Hand results to a plain DF object so gradients use the usual path.
        mf = _make_scf(mol, params, with_df=with_df)
        for key in ("mo_coeff", "mo_occ", "mo_energy", "e_tot", "converged"):
            setattr(mf, key, getattr(newton, key))
        mf.grids.build()  # the plain object has not run, so build its grid
        return mf, cycles

    # Every stage so far went on from the first one's start; a different start can leave a
    # basin that start led into (a wrong charge distribution over an ion and its waters, say).
    # CPU only: gpu4pyscf's initial guesses are not checked here.
    if params.get("_device") != "gpu":
        guessed = _shifted_scf(mol, params, with_df, init_guess="huckel")
        cycles += int(getattr(guessed, "cycles", 0))
        if guessed.converged:
            return guessed, cycles
    raise RuntimeError(
        f"{name}: SCF did not converge in {cycles} cycles "
        f"(DIIS, level shift + damping, second-order, Hückel guess; conv_tol={params['conv_tol']:g} Ha)"
    )


def _shifted_scf(mol: gto.Mole, params: dict[str, Any], with_df, dm0=None, init_guess: str | None = None):
    """SCF with a 0.25 Ha level shift, damping 0.5 and DIIS from cycle 2, from ``dm0`` (or from
    PySCF's ``init_guess``). Converged, the shift and damping are cleared: they change the path,
    not the fixed point, and gradients and analysis must see the plain Fock matrix."""
    mf = _make_scf(mol, params, with_df=with_df)
    mf.level_shift, mf.damp, mf.diis_start_cycle = 0.25, 0.5, 2
    if init_guess is not None:
        mf.init_guess = init_guess
    _kernel(mf, dm0=dm0)
    if mf.converged:
        mf.level_shift, mf.damp = 0.0, 0.0
    return mf


def kohn_sham_matrices(mf) -> dict[str, Any]:
    """Kohn-Sham matrix, overlap and orbitals of a converged SCF, in the AO basis.

    Returns
    -------
    dict
        ``hamiltonian`` (nao, nao) or (2, nao, nao) for UKS (alpha, beta), Ha:
        the Fock/KS matrix of the converged density (no level shift);
        ``overlap`` (nao, nao); ``orbital_energies`` (nmo,) or (2, nmo), Ha;
        ``orbital_coefficients`` (nao, nmo) or (2, nao, nmo);
        ``occupations``; ``ao_labels`` (list of str, PySCF order, spherical
        AOs); ``basis`` (str); ``restricted`` (bool). The orbitals are the
        eigenvectors of the stored matrix, so ``F C = S C diag(e)`` holds to
        round-off; they differ from the SCF's last orbitals (those of the
        previous cycle's Fock matrix) within the SCF convergence.
    """
    dm = mf.make_rdm1()
    fock = mf.get_fock(dm=dm)
    release_ao_cache(mf)  # one Fock build: nothing to keep the AO values for
    overlap = mf.get_ovlp()
    # The SCF's mo_energy belong to the Fock matrix one cycle earlier: with few cycles (a
    # pre-converged start) they miss the stored matrix's eigenvalues by ~1e-6 Ha.
    orbital_energies, orbital_coefficients = mf.eig(fock, overlap)
    occupations = mf.get_occ(orbital_energies, orbital_coefficients)
    mol = mf.mol
    return {
        "hamiltonian": to_numpy(fock),
        "overlap": to_numpy(overlap),
        "orbital_energies": to_numpy(orbital_energies),
        "orbital_coefficients": to_numpy(orbital_coefficients),
        "occupations": to_numpy(occupations),
        "ao_labels": [label.strip() for label in mol.ao_labels()],
        "basis": mol.basis if isinstance(mol.basis, str) else "custom",
        "restricted": mol.spin == 0,
    }
