"""Stage 06 model: an SO3LR-style e3x force field.

``network``     :class:`SO3LRModel` (SO3krates layers, charges, Hirshfeld ratios,
                ZBL repulsion, electrostatics, dispersion), :class:`ModelConfig`, ``SIZES``
``data``        ase.Atoms -> padded fixed-shape batches; neighbour lists; per-element energy baseline
``training``    ``train``, ``evaluate``, ``predict``, ``predict_properties``,
                ``save_model`` / ``load_model``, learning curves
``calculator``  :class:`MLCalculator`, the ASE calculator for a trained model (ML/MM point charges too)
"""

from .calculator import MLCalculator
from .data import (EnergyBaseline, bucket_size, collate, fit_baseline, iterate_batches, make_samples,
                   neighbour_pairs, samples_for)
from .network import SIZES, EnergyModel, ModelConfig, SO3LRModel, energy_and_forces, predict_batch
from .training import (LossWeights, TrainedModel, TrainingResult, evaluate, load_model, plot_learning_curves,
                       predict, predict_properties, save_learning_curves, save_model, train)

__all__ = [
    "SIZES", "EnergyBaseline", "EnergyModel", "LossWeights", "MLCalculator", "ModelConfig", "SO3LRModel",
    "TrainedModel", "TrainingResult", "bucket_size", "collate", "energy_and_forces", "evaluate", "fit_baseline",
    "iterate_batches", "load_model", "make_samples", "neighbour_pairs", "plot_learning_curves", "predict",
    "predict_batch", "predict_properties", "samples_for", "save_learning_curves", "save_model", "train",
]
