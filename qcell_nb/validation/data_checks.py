"""Checks of the labelled data itself: outliers and the distributions of energies and forces.

The outlier filters are the ones SO3LR's fine-tuning applies before training: a structure with two
atoms closer than 0.25 Å, or with any force component larger than 25 eV/Å, is flagged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from ..figures import finish_figure
from ..structures import closest_pair, structure_id

#: Å: closer pairs are unphysical for a ground-state fragment.
MIN_DISTANCE = 0.25
#: eV/Å: larger force components are far outside the training distribution.
MAX_FORCE = 25.0


def minimum_distance(atoms: Atoms) -> float:
    """Shortest interatomic distance in Å (minimum image where the structure is periodic); inf for one atom."""
    return closest_pair(atoms)[2]


def flag_outliers(structures: Sequence[Atoms], min_distance: float = MIN_DISTANCE,
                  max_force: float = MAX_FORCE) -> list[dict]:
    """Structures failing the SO3LR fine-tuning filters.

    Returns:
        One row per flagged structure: ``index``, ``id``, ``name``, ``subset``, ``reason``.
    """
    if not min_distance > 0 or not max_force > 0:
        raise ValueError(f"min_distance={min_distance!r} and max_force={max_force!r} must be positive")
    flagged = []
    for index, atoms in enumerate(structures):
        reasons = []
        shortest = minimum_distance(atoms)
        if shortest < min_distance:
            reasons.append(f"atoms {shortest:.3f} Å apart (< {min_distance} Å)")
        if atoms.calc is not None and "forces" in atoms.calc.results:
            largest = float(np.abs(atoms.get_forces()).max())
            if not np.isfinite(largest):
                reasons.append("non-finite force")
            elif largest > max_force:
                reasons.append(f"force component {largest:.1f} eV/Å (> {max_force} eV/Å)")
        if reasons:
            flagged.append({"index": index, "id": structure_id(atoms), "name": atoms.info.get("name", ""),
                            "subset": atoms.info.get("subset", ""), "reason": "; ".join(reasons)})
    return flagged


def relative_energies(structures: Sequence[Atoms]) -> np.ndarray:
    """Energies per atom (eV) after removing a least-squares per-element reference.

    Total energies of different molecules are dominated by their composition; fitting
    E ≈ Σ_Z n_Z ε_Z and dividing the residual by the atom count leaves the part that says
    something about the structure (a crude binding energy per atom).
    """
    energies = np.array([atoms.get_potential_energy() for atoms in structures])
    elements = sorted({int(z) for atoms in structures for z in atoms.numbers})
    counts = np.array([[np.count_nonzero(atoms.numbers == z) for z in elements] for atoms in structures], float)
    coefficients, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return (energies - counts @ coefficients) / counts.sum(axis=1)


def plot_label_distributions(structures: Sequence[Atoms], path=None, outliers: Sequence[dict] = ()):
    """Histograms per subset of relative energies per atom and force-component magnitudes."""
    import matplotlib.pyplot as plt

    subsets = sorted({str(a.info.get("subset", "unlabelled")) for a in structures})
    energies = relative_energies(structures) if len(structures) > 1 else np.zeros(len(structures))
    fig, (ax_e, ax_f) = plt.subplots(1, 2, figsize=(10, 3.8))
    for subset in subsets:
        members = [i for i, a in enumerate(structures) if str(a.info.get("subset", "unlabelled")) == subset]
        ax_e.hist(energies[members] * 1000, bins=20, alpha=0.6, label=f"{subset} ({len(members)})")
        forces = np.concatenate([np.abs(structures[i].get_forces()).ravel() for i in members])
        ax_f.hist(forces, bins=40, alpha=0.6, label=subset, log=True)
    ax_e.set_xlabel("energy per atom minus element reference (meV)")
    ax_f.set_xlabel("|force component| (eV/Å)")
    ax_f.axvline(MAX_FORCE, color="k", ls="--", lw=0.8)
    ax_e.legend(fontsize=8)
    title = f"{len(structures)} structures, {len(outliers)} flagged as outliers"
    fig.suptitle(title)
    return finish_figure(fig, path)


def element_counts(structures: Sequence[Atoms]) -> dict[str, int]:
    """Atoms per element over the whole collection."""
    numbers = np.concatenate([a.numbers for a in structures]) if structures else np.array([], int)
    values, counts = np.unique(numbers, return_counts=True)
    return {chemical_symbols[int(z)]: int(n) for z, n in zip(values, counts)}
