"""Stage 06 model: an e3x equivariant message-passing force field.

``network``     the flax modules (:class:`EnergyModel`) and ``energy_and_forces``
``data``        ase.Atoms -> padded fixed-shape batches; per-element energy baseline
``training``    ``train``, ``predict``, ``evaluate``, ``save_model`` / ``load_model``, plots
``calculator``  :class:`MLCalculator`, the ASE calculator for a trained model
"""

from .calculator import MLCalculator
from .data import EnergyBaseline, bucket_size, collate, fit_baseline, iterate_batches, make_samples
from .network import EnergyModel, ModelConfig, energy_and_forces
from .training import (TrainedModel, TrainingResult, evaluate, load_model, plot_learning_curves,
                       predict, save_model, train)

__all__ = [
    "EnergyBaseline", "EnergyModel", "MLCalculator", "ModelConfig", "TrainedModel", "TrainingResult",
    "bucket_size", "collate", "energy_and_forces", "evaluate", "fit_baseline", "iterate_batches",
    "load_model", "make_samples", "plot_learning_curves", "predict", "save_model", "train",
]
