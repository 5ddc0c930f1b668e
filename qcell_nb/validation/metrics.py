"""Errors of a model against reference labels: overall, per QCell subset, and beside the paper's values."""

from __future__ import annotations

from collections.abc import Sequence
import numpy as np
from ase import Atoms


def reference_labels(structures: Sequence[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Reference energies (eV, shape (n,)) and forces (eV/Å, each (n_atoms, 3)) of labelled structures."""
    energies = np.array([atoms.get_potential_energy() for atoms in structures])
    forces = [np.asarray(atoms.get_forces()) for atoms in structures]
    return energies, forces


def errors(ref_energies: np.ndarray, ref_forces: Sequence[np.ndarray], pred_energies: np.ndarray,
           pred_forces: Sequence[np.ndarray], n_atoms: Sequence[int]) -> dict[str, float]:
    """Mean absolute and root-mean-square errors.

    Returns energy MAE (eV per structure and meV per atom), energy RMSE (eV),
    force MAE and RMSE (eV/Å, over all Cartesian components).
    """
    ref_energies, pred_energies = np.asarray(ref_energies), np.asarray(pred_energies)
    if ref_energies.shape != pred_energies.shape:
        raise ValueError(f"energies: reference shape {ref_energies.shape} but prediction {pred_energies.shape}")
    e_err = pred_energies - ref_energies
    f_err = np.concatenate([(np.asarray(p) - np.asarray(r)).ravel() for p, r in zip(pred_forces, ref_forces)])
    return {
        "energy_mae_eV": float(np.mean(np.abs(e_err))),
        "energy_rmse_eV": float(np.sqrt(np.mean(e_err**2))),
        "energy_mae_meV_per_atom": float(1000 * np.mean(np.abs(e_err) / np.asarray(n_atoms))),
        "force_mae_eV_A": float(np.mean(np.abs(f_err))),
        "force_rmse_eV_A": float(np.sqrt(np.mean(f_err**2))),
    }


def mean_predictor(train: Sequence[Atoms], test: Sequence[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The trivial baseline: the training mean energy per atom times the atom count, and the mean force.

    Energies use the mean per-atom energy of the training set (a mean total
    energy would be meaningless across molecules of different size); every
    force component is predicted as the training mean of that component
    (close to zero).
    """
    energies, forces = reference_labels(train)
    per_atom = float(np.mean(energies / np.array([len(a) for a in train])))
    mean_force = np.mean(np.concatenate(forces), axis=0)
    return (np.array([per_atom * len(a) for a in test]),
            [np.tile(mean_force, (len(a), 1)) for a in test])


#: 1 kcal/mol in eV: the paper reports force errors in kcal/mol/Å.
KCAL_PER_MOL_IN_EV = 0.0433641043

#: Force MAE (kcal/mol/Å) of the large SO3LR model trained on QCell, per subset, as read from the
#: QCell paper's model-validation table (Kabylda et al., arXiv 2510.09939); approximate values.
PAPER_FORCE_MAE_KCAL = {"nucleic_acids": 0.8, "lipids": 0.6, "carbohydrates": 0.5, "ions_water": 0.7,
                        "dimers": 0.8}


def count_by_subset(structures: Sequence[Atoms]) -> dict[str, int]:
    """Structures per QCell class (``info["subset"]``; "unlabelled" where it is missing)."""
    counts: dict[str, int] = {}
    for atoms in structures:
        subset = str(atoms.info.get("subset", "unlabelled"))
        counts[subset] = counts.get(subset, 0) + 1
    return counts


def property_errors(structures: Sequence[Atoms], predicted: Sequence[dict]) -> dict[str, float | None]:
    """Dipole MAE (e·Å, over Cartesian components) and Hirshfeld-ratio MAE over the structures that carry
    those labels (stored calculator dipole, ``info["hirsh_ratios"]``); None where none does.

    ``predicted``: one dict per structure with ``dipole`` (3,) and ``hirshfeld`` (n_atoms,), as
    :func:`qcell_nb.model.predict_properties` returns them.
    """
    from ..model.data import extra_labels_of

    dipole_errors, ratio_errors = [], []
    for index, (atoms, prediction) in enumerate(zip(structures, predicted)):
        dipole, _, ratios = extra_labels_of(atoms, index)
        if dipole is not None:
            dipole_errors.append(np.abs(np.asarray(prediction["dipole"]) - dipole))
        if ratios is not None:
            ratio_errors.append(np.abs(np.asarray(prediction["hirshfeld"]) - ratios))
    return {"dipole_mae_eA": float(np.mean(np.concatenate(dipole_errors))) if dipole_errors else None,
            "hirshfeld_mae": float(np.mean(np.concatenate(ratio_errors))) if ratio_errors else None}


def errors_by_subset(structures: Sequence[Atoms], pred_energies: np.ndarray, pred_forces: Sequence[np.ndarray],
                     n_train: dict[str, int] | None = None,
                     predicted_properties: Sequence[dict] | None = None) -> list[dict]:
    """One row per QCell subset (plus ``all``): sizes, our errors and the paper's force MAE beside them.

    Args:
        structures: labelled test structures (``info["subset"]`` names the class).
        pred_energies: (n,) eV; pred_forces: n arrays (n_atoms_i, 3) eV/Å, in the order of ``structures``.
        n_train: training structures per subset, reported beside the errors.
        predicted_properties: the model's dipoles and Hirshfeld ratios per structure
            (:func:`property_errors`); adds their MAE columns.

    Returns:
        Rows with ``subset``, ``n_test``, ``n_train``, ``energy_mae_meV_per_atom``, ``force_mae_eV_A``,
        ``force_mae_kcal_mol_A`` and ``paper_force_mae_kcal_mol_A`` (None where the paper has no value),
        and with ``predicted_properties`` ``dipole_mae_eA`` and ``hirshfeld_mae``.
    """
    if predicted_properties is not None and len(predicted_properties) != len(structures):
        raise ValueError(f"{len(structures)} structures but {len(predicted_properties)} predicted property sets")
    if len(pred_energies) != len(structures) or len(pred_forces) != len(structures):
        raise ValueError(f"{len(structures)} structures but {len(pred_energies)} predicted energies and "
                         f"{len(pred_forces)} force arrays")
    groups: dict[str, list[int]] = {}
    for index, atoms in enumerate(structures):
        groups.setdefault(str(atoms.info.get("subset", "unlabelled")), []).append(index)
    rows = []
    for subset, members in [*sorted(groups.items()), ("all", list(range(len(structures))))]:
        chosen = [structures[i] for i in members]
        ref_e, ref_f = reference_labels(chosen)
        result = errors(ref_e, ref_f, np.asarray(pred_energies)[members], [pred_forces[i] for i in members],
                        [len(a) for a in chosen])
        trained = (sum((n_train or {}).values()) if subset == "all" else (n_train or {}).get(subset))
        row = {
            "subset": subset, "n_test": len(members), "n_train": trained,
            "energy_mae_meV_per_atom": round(result["energy_mae_meV_per_atom"], 3),
            "force_mae_eV_A": round(result["force_mae_eV_A"], 4),
            "force_mae_kcal_mol_A": round(result["force_mae_eV_A"] / KCAL_PER_MOL_IN_EV, 3),
            "paper_force_mae_kcal_mol_A": PAPER_FORCE_MAE_KCAL.get(subset),
        }
        if predicted_properties is not None:
            extra = property_errors(chosen, [predicted_properties[i] for i in members])
            row.update({key: None if value is None else round(value, 4) for key, value in extra.items()})
        rows.append(row)
    return rows
