"""ASE calculator around a trained model, for MD, optimisation, validation and ML/MM."""

from __future__ import annotations

import os

from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from .training import TrainedModel, load_model, predict_properties


class MLCalculator(Calculator):
    """Energy (eV), forces (eV/Å), dipole (e·Å) and charges (e) from a trained model.

    Parameters
    ----------
    model:
        A trained model, or the directory it was saved to (:func:`save_model`).

    Notes
    -----
    Total charge and multiplicity come from ``atoms.info["charge"]`` and
    ``atoms.info["multiplicity"]``. ML/MM: atoms with atomic number 0 are MM
    point charges, their charges in ``atoms.arrays["mm_charges"]`` (e); the
    energy then includes their electrostatic interaction with the predicted
    QM charges and the forces act on MM atoms too.

    Extra results: ``hirsh_ratios`` (n,), and the energy decomposition
    ``energy_short``, ``energy_repulsion``, ``energy_electrostatics``,
    ``energy_dispersion``, ``energy_baseline`` (eV).

    Neighbour lists are rebuilt on every call (positions change in MD);
    shapes are padded to buckets, so an MD run compiles a few times at most
    as the pair counts drift. Non-periodic structures only; an element the
    model was not trained on raises ValueError.
    """

    implemented_properties = ["energy", "free_energy", "forces", "dipole", "charges"]

    def __init__(self, model: TrainedModel | str | os.PathLike, **kwargs):
        super().__init__(**kwargs)
        self.model = model if isinstance(model, TrainedModel) else load_model(model)

    def calculate(self, atoms: Atoms | None = None, properties=("energy",),
                  system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        (out,) = predict_properties(self.model, [self.atoms], batch_size=1)
        self.results = {"energy": out["energy"], "free_energy": out["energy"], "forces": out["forces"],
                        "dipole": out["dipole"], "charges": out["charges"], "hirsh_ratios": out["hirshfeld"]}
        for key in ("energy_short", "energy_repulsion", "energy_electrostatics", "energy_dispersion",
                    "energy_baseline"):
            self.results[key] = float(out[key])
