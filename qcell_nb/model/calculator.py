"""ASE calculator around a trained model, for MD, optimisation and validation."""

from __future__ import annotations

import os

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from .training import TrainedModel, load_model, predict


class MLCalculator(Calculator):
    """Energy (eV) and forces (eV/Å) from a trained :class:`TrainedModel`.

    Parameters
    ----------
    model:
        A trained model, or the directory it was saved to (:func:`save_model`).

    Notes
    -----
    Neighbour pairs are recomputed on every call (positions change in MD).
    Shapes are padded to buckets, so an MD run compiles a few times at most
    as the pair count drifts. Non-periodic structures only; an element the
    model was not trained on raises ValueError.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, model: TrainedModel | str | os.PathLike, **kwargs):
        super().__init__(**kwargs)
        self.model = model if isinstance(model, TrainedModel) else load_model(model)

    def calculate(self, atoms: Atoms | None = None, properties=("energy",),
                  system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        energies, forces = predict(self.model, [self.atoms], batch_size=1)
        self.results = {"energy": float(energies[0]), "free_energy": float(energies[0]),
                        "forces": np.asarray(forces[0])}
