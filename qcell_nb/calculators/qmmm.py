"""QM/MM electrostatic embedding for the PBE0+MBD calculator (PySCF's ``pyscf.qmmm``).

The QM region (an ``ase.Atoms``) is computed with PBE0 in the field of MM
point charges (e.g. TIP3P water charges). The one-electron Hamiltonian gets
the charges' Coulomb potential and the nuclear repulsion gets the QM-nuclei /
MM-charge interaction, so the SCF density is polarised by the environment.

Energy (eV) = E_PBE0[QM in the field of the charges] + E_MBD[QM only]:
it includes the electrostatic interaction of the QM electrons and nuclei with
the charges, but *not* the charge-charge energy among MM sites, MM bonded or
Lennard-Jones terms (those belong to the MM force field), nor dispersion
between QM and MM: MBD is evaluated on the QM atoms alone, with Hirshfeld
ratios of the polarised density.

Forces: ``forces`` on the QM atoms (PBE0 analytic DF gradient with grid
response + MBD) and ``mm_forces`` on the point charges, from the QM electron
density and the QM nuclei (the derivative of the energy above with respect to
the charge positions; checked against finite differences in
``tests/test_qmmm.py``). Point charges are bare (no Gaussian smearing).

Usage::

    from qcell_nb.calculators.qmmm import label_embedded, tip3p_charges
    result = label_embedded(water, mm_waters.positions, tip3p_charges(mm_waters), basis="def2-svp")
    result["energy"], result["forces"], result["mm_forces"]

or ``PBE0MBD(mm_positions=..., mm_charges=...)`` as an ASE calculator.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms
from ase.units import Bohr, Hartree
from pyscf import qmmm

from qcell_nb.calculators.pbe0 import label_structure
from qcell_nb.calculators.scf import to_numpy

#: TIP3P partial charges (e) by element (W. L. Jorgensen et al., J. Chem. Phys. 79, 926 (1983)).
TIP3P_CHARGES = {"O": -0.834, "H": 0.417}

#: Closest allowed distance (Å) between a QM atom and an MM charge: bare
#: charges closer than this pull electron density onto themselves.
MIN_QM_MM_DISTANCE = 1.0


def tip3p_charges(waters: Atoms) -> np.ndarray:
    """TIP3P charges (e) for a collection of whole water molecules (O and H only), shape (n,)."""
    symbols = waters.get_chemical_symbols()
    bad = sorted(set(symbols) - set(TIP3P_CHARGES))
    if bad:
        raise ValueError(f"TIP3P charges are defined for O and H only, got {bad}")
    charges = np.array([TIP3P_CHARGES[s] for s in symbols])
    if abs(charges.sum()) > 1e-9:
        raise ValueError(f"{len(symbols)} atoms are not whole waters (total TIP3P charge {charges.sum():+.3f} e)")
    return charges


def check_point_charges(qm_atoms: Atoms, mm_positions: Any, mm_charges: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated MM positions (m, 3; Å) and charges (m,; e).

    Raises
    ------
    ValueError
        Shapes that do not match, non-finite values, or a charge closer than
        :data:`MIN_QM_MM_DISTANCE` to a QM atom (the message names both).
    """
    name = qm_atoms.info.get("name", "structure")
    positions = np.asarray(mm_positions, dtype=np.float64)
    charges = np.asarray(mm_charges, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"{name}: mm_positions must have shape (m, 3), got {positions.shape}")
    if charges.shape != (len(positions),):
        raise ValueError(f"{name}: mm_charges must have shape ({len(positions)},), got {charges.shape}")
    if not (np.all(np.isfinite(positions)) and np.all(np.isfinite(charges))):
        raise ValueError(f"{name}: non-finite MM positions or charges")
    if len(positions) and len(qm_atoms):
        dist = np.linalg.norm(qm_atoms.positions[:, None, :] - positions[None, :, :], axis=2)
        i, j = np.unravel_index(np.argmin(dist), dist.shape)
        if dist[i, j] < MIN_QM_MM_DISTANCE:
            raise ValueError(
                f"{name}: MM charge {j} is {dist[i, j]:.3f} Å from QM atom {i} "
                f"({qm_atoms.get_chemical_symbols()[i]}); minimum {MIN_QM_MM_DISTANCE} Å"
            )
    return positions, charges


def embed_point_charges(mf, mm_positions: Any, mm_charges: Any):
    """The SCF object ``mf`` in the field of point charges (positions in Å, charges in e)."""
    return qmmm.mm_charge(mf, np.asarray(mm_positions, dtype=np.float64),
                          np.asarray(mm_charges, dtype=np.float64), unit="Angstrom")


def point_charge_forces(grad, mf) -> np.ndarray:
    """Forces (m, 3; eV/Å) on the MM charges of an embedded, converged SCF.

    ``grad`` is the SCF's QM/MM gradient object (``mf.nuc_grad_method()``):
    the electronic part contracts the derivative of the charges' potential
    integrals with the total density matrix, the nuclear part is the Coulomb
    force of the QM nuclei.
    """
    dm = mf.make_rdm1()
    if getattr(dm, "ndim", 2) == 3:  # UKS: alpha + beta
        dm = dm[0] + dm[1]
    gradient = to_numpy(grad.grad_hcore_mm(dm)) + to_numpy(grad.grad_nuc_mm())  # Ha/bohr
    return -gradient * (Hartree / Bohr)


def label_embedded(qm_atoms: Atoms, mm_positions: Any, mm_charges: Any, **calc_params: Any) -> dict[str, Any]:
    """PBE0+MBD of ``qm_atoms`` embedded in MM point charges.

    Parameters
    ----------
    qm_atoms:
        The QM region (charge/multiplicity from ``info`` as usual).
    mm_positions:
        (m, 3) charge positions in Å.
    mm_charges:
        (m,) charges in e.
    calc_params:
        Any :class:`~qcell_nb.calculators.pbe0.PBE0MBD` parameter (basis, preset, mbd, ...).

    Returns
    -------
    dict
        Everything :func:`~qcell_nb.calculators.pbe0.label_structure` returns
        (``energy`` eV, ``forces`` (n, 3) eV/Å on the QM atoms, dipole,
        Hirshfeld charges and ratios of the polarised density, ...) plus
        ``mm_forces`` (m, 3) eV/Å and ``mm_positions``/``mm_charges`` as given.
        MBD covers the QM atoms only.
    """
    positions, charges = check_point_charges(qm_atoms, mm_positions, mm_charges)
    result = label_structure(qm_atoms, mm_positions=positions, mm_charges=charges, **calc_params)
    result["mm_positions"] = positions
    result["mm_charges"] = charges
    return result
