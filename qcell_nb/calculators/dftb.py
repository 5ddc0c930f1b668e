"""DFTB3/3ob (+MBD) through ASE's ``Dftb`` calculator and a ``dftb+`` binary.

The paper pre-optimised fragments with DFTB3+MBD in DFTB+. DFTB+ is not on
PyPI, so this backend is used where a ``dftb+`` binary is on PATH (conda:
``conda install -c conda-forge dftbplus``) and the 3ob-3-1 Slater-Koster files
(Gaus, Goez, Elstner, J. Chem. Theory Comput. 9, 338 (2013); distributed by
dftb.org) are in the directory named by ``$DFTB_PREFIX``. Both are checked at
run time, with a message saying what is missing.

The input follows the 3ob-3-1 recipe: SCC with full third-order terms
(``ThirdOrderFull``), the 3ob Hubbard derivatives, the damped X-H
correction (``HCorrection = Damping`` with exponent 4.0), and, with
``mbd=True``, DFTB+'s own MBD@rsSCS (``Dispersion = MBD``, ``Beta`` 0.83,
free-atom reference set "ts"; DFTB+ estimates the volume ratios from its
Mulliken populations). Charge from ``atoms.info['charge']``; only closed
shells (multiplicity 1) are supported, because spin-polarised DFTB needs
per-element spin constants this module does not carry.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ase import Atoms
from ase.calculators.calculator import Calculator

from ..structures import charge_of, multiplicity_of

__all__ = ["HUBBARD_DERIVATIVES_3OB", "dftb3_calculator", "dftb3_parameters", "dftb_plus_binary",
           "remove_temporary_directory", "slater_koster_directory"]

#: 3ob-3-1 Hubbard derivatives dU/dq (Ha/e) for ThirdOrderFull, as listed in
#: the 3ob-3-1 set's documentation.
HUBBARD_DERIVATIVES_3OB: dict[str, float] = {
    "Br": -0.0573, "C": -0.1492, "Ca": -0.0340, "Cl": -0.0697, "F": -0.1623, "H": -0.1857, "I": -0.0433,
    "K": -0.0339, "Mg": -0.02, "N": -0.1535, "Na": -0.0454, "O": -0.1575, "P": -0.14, "S": -0.11,
    "Zn": -0.03,
}

#: Highest angular momentum of each element's 3ob-3-1 basis.
MAX_ANGULAR_MOMENTUM_3OB: dict[str, str] = {
    "Br": "d", "C": "p", "Ca": "p", "Cl": "d", "F": "p", "H": "s", "I": "d", "K": "p", "Mg": "p",
    "N": "p", "Na": "p", "O": "p", "P": "d", "S": "d", "Zn": "d",
}

#: Exponent of the damped X-H correction of 3ob (zeta).
HCORRECTION_EXPONENT_3OB = 4.0

#: DFTB+'s default MBD range-separation parameter.
DFTB_MBD_BETA = 0.83


def dftb_plus_binary() -> str | None:
    """Path of the ``dftb+`` executable on PATH, or None."""
    return shutil.which("dftb+")


def slater_koster_directory(elements: list[str] | None = None) -> Path:
    """The 3ob Slater-Koster directory from ``$DFTB_PREFIX``, checked for ``elements``' pair files.

    Raises
    ------
    RuntimeError
        If ``DFTB_PREFIX`` is unset, not a directory, or lacks an ``X-Y.skf``
        file for a pair of ``elements``.
    """
    prefix = os.environ.get("DFTB_PREFIX")
    if not prefix:
        raise RuntimeError("DFTB3/3ob needs the 3ob-3-1 Slater-Koster files: set DFTB_PREFIX to the directory "
                           "holding them (e.g. .../3ob-3-1/, with files like C-H.skf)")
    directory = Path(prefix)
    if not directory.is_dir():
        raise RuntimeError(f"DFTB_PREFIX={prefix!r} is not a directory")
    missing = [f"{a}-{b}.skf" for a in elements or [] for b in elements or []
               if not (directory / f"{a}-{b}.skf").exists()]
    if missing:
        raise RuntimeError(f"DFTB_PREFIX={prefix!r} lacks Slater-Koster file(s) {', '.join(sorted(missing))}")
    return directory


def dftb3_parameters(atoms: Atoms, mbd: bool = False, mbd_beta: float | None = None,
                     accuracy: float = 1.0, max_iterations: int = 250) -> dict[str, Any]:
    """Keyword arguments of ASE's ``Dftb`` for DFTB3/3ob (+MBD) on ``atoms``.

    Parameters
    ----------
    atoms:
        Structure; ``info['charge']`` gives the total charge (e).
    mbd:
        Add DFTB+'s MBD@rsSCS dispersion.
    mbd_beta:
        MBD range-separation parameter (default :data:`DFTB_MBD_BETA`).
    accuracy:
        Scales the SCC tolerance 1e-7 (e).
    max_iterations:
        Maximum SCC cycles.

    Raises
    ------
    ValueError
        Open-shell structure, or an element 3ob-3-1 does not cover.
    """
    name = atoms.info.get("name", atoms.get_chemical_formula())
    if multiplicity_of(atoms) != 1:
        raise ValueError(f"{name!r}: DFTB3/3ob here supports closed shells only, got multiplicity "
                         f"{multiplicity_of(atoms)}; use method='gfn2-xtb'")
    elements = sorted(set(atoms.get_chemical_symbols()))
    unknown = [e for e in elements if e not in HUBBARD_DERIVATIVES_3OB]
    if unknown:
        raise ValueError(f"{name!r}: element(s) {', '.join(unknown)} not in the 3ob-3-1 set "
                         f"({', '.join(sorted(HUBBARD_DERIVATIVES_3OB))})")
    params: dict[str, Any] = {
        "Hamiltonian_SCC": "Yes",
        "Hamiltonian_SCCTolerance": 1e-7 * accuracy,
        "Hamiltonian_MaxSCCIterations": int(max_iterations),
        "Hamiltonian_Charge": float(charge_of(atoms)),
        "Hamiltonian_ThirdOrderFull": "Yes",
        "Hamiltonian_HCorrection_": "Damping",
        "Hamiltonian_HCorrection_Exponent": HCORRECTION_EXPONENT_3OB,
        "Hamiltonian_HubbardDerivs_": "",
        "Hamiltonian_MaxAngularMomentum_": "",
        "Analysis_": "",
        "Analysis_CalculateForces": "Yes",
    }
    for element in elements:
        params[f"Hamiltonian_HubbardDerivs_{element}"] = HUBBARD_DERIVATIVES_3OB[element]
        params[f"Hamiltonian_MaxAngularMomentum_{element}"] = f'"{MAX_ANGULAR_MOMENTUM_3OB[element]}"'
    if mbd:
        params.update({
            "Hamiltonian_Dispersion_": "MBD",
            "Hamiltonian_Dispersion_Beta": DFTB_MBD_BETA if mbd_beta is None else float(mbd_beta),
            "Hamiltonian_Dispersion_NOmegaGrid": 15,
            "Hamiltonian_Dispersion_ReferenceSet": "ts",
        })
    return params


def dftb3_calculator(atoms: Atoms, mbd: bool = False, mbd_beta: float | None = None, accuracy: float = 1.0,
                     max_iterations: int = 250, directory: str | os.PathLike | None = None) -> Calculator:
    """ASE ``Dftb`` calculator for DFTB3/3ob (+MBD) on ``atoms`` (not attached).

    Raises
    ------
    RuntimeError
        No ``dftb+`` binary on PATH, or no usable ``$DFTB_PREFIX`` (the
        message says how to get them).
    ValueError
        See :func:`dftb3_parameters`.
    """
    from ase.calculators.dftb import Dftb

    params = dftb3_parameters(atoms, mbd=mbd, mbd_beta=mbd_beta, accuracy=accuracy,
                              max_iterations=max_iterations)
    binary = dftb_plus_binary()
    if binary is None:
        raise RuntimeError("method 'dftb3-3ob' needs the dftb+ binary on PATH, which pip cannot install: "
                           "`conda install -c conda-forge dftbplus`, or use method='gfn2-xtb'")
    slako = slater_koster_directory(sorted(set(atoms.get_chemical_symbols())))
    temporary = directory is None
    if temporary:
        directory = tempfile.mkdtemp(prefix="qcell-dftb-")
    calc = Dftb(directory=str(directory), label="dftb", command=f"{binary} > dftb.out",
                slako_dir=str(slako) + "/", **params)
    # optimise() and single_point_energy() remove a directory they did not get from the caller
    calc.temporary_directory = str(directory) if temporary else None
    return calc


def remove_temporary_directory(calc: Calculator) -> None:
    """Delete the scratch directory :func:`dftb3_calculator` made for ``calc``, if any."""
    directory = getattr(calc, "temporary_directory", None)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
        calc.temporary_directory = None
