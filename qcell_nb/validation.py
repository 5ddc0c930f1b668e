"""Stage 07: errors of a model against held-out reference labels, parity plots, a 3D view."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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


def parity_plot(ref_energies, pred_energies, ref_forces, pred_forces, n_atoms, path=None, title: str = ""):
    """Energy-per-atom and force-component parity plots; saved to ``path`` if given."""
    import matplotlib.pyplot as plt

    fig, (ax_e, ax_f) = plt.subplots(1, 2, figsize=(9, 4))
    n_atoms = np.asarray(n_atoms)
    e_ref = np.asarray(ref_energies) / n_atoms
    e_pred = np.asarray(pred_energies) / n_atoms
    offset = e_ref.mean()
    ax_e.scatter(e_ref - offset, e_pred - offset, s=12)
    ax_e.set_xlabel("reference energy per atom - mean (eV)")
    ax_e.set_ylabel("predicted (eV)")
    f_ref = np.concatenate([np.ravel(f) for f in ref_forces])
    f_pred = np.concatenate([np.ravel(f) for f in pred_forces])
    ax_f.scatter(f_ref, f_pred, s=4, alpha=0.6)
    ax_f.set_xlabel("reference force component (eV/Å)")
    ax_f.set_ylabel("predicted (eV/Å)")
    for ax in (ax_e, ax_f):
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def view_structure(atoms: Atoms) -> Any:
    """An interactive 3D view: nglview where its widget works, py3Dmol otherwise."""
    try:
        import nglview

        return nglview.show_ase(atoms)
    except Exception as exc:  # noqa: BLE001 - any widget failure falls back to py3Dmol
        print(f"nglview unavailable ({type(exc).__name__}: {exc}); using py3Dmol")
    import io

    import py3Dmol
    from ase.io import write

    buffer = io.StringIO()
    write(buffer, atoms, format="xyz")
    view = py3Dmol.view(width=420, height=320)
    view.addModel(buffer.getvalue(), "xyz")
    view.setStyle({"stick": {}})
    view.zoomTo()
    return view
