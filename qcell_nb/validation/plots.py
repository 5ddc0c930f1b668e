"""Figures and views of the validation stage: parity plots and an interactive 3D structure view."""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms

from ..figures import finish_figure


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
    return finish_figure(fig, path)


def plot_learning_curve(rows: list[dict[str, Any]], path=None):
    """Test force and energy MAE against training-set size (log-log), from stage 06's learning-curve rows.

    ``rows`` carry ``n_train``, ``force_mae_kcal_mol_A`` and ``energy_mae_meV_per_atom`` (as
    :func:`qcell_nb.experiments.learning_curve` writes them). A slope is fitted where there are
    two sizes or more: a model still learning shows a clearly negative one. Saved to ``path`` if given.
    """
    import matplotlib.pyplot as plt

    rows = sorted((r for r in rows if "n_train" in r), key=lambda r: r["n_train"])
    if not rows:
        raise ValueError("learning curve: no row with 'n_train' (was stage 06 run with learning_curve_fractions?)")
    n_train = np.array([r["n_train"] for r in rows], dtype=float)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key, label in ((axes[0], "force_mae_kcal_mol_A", "force MAE (kcal/mol/Å)"),
                           (axes[1], "energy_mae_meV_per_atom", "energy MAE (meV/atom)")):
        values = np.array([r.get(key, np.nan) for r in rows], dtype=float)
        text = ""
        if len(rows) >= 2 and np.all(values > 0) and len(set(n_train)) >= 2:
            slope = np.polyfit(np.log(n_train), np.log(values), 1)[0]
            text = f" (slope {slope:.2f})"
        ax.loglog(n_train, values, "o-", label=f"test{text}")
        ax.set_xlabel("training structures")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    return finish_figure(fig, path)


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
