"""Stage 07: checks of the data and of the trained model, regenerated from a run directory."""

from .metrics import (KCAL_PER_MOL_IN_EV, PAPER_FORCE_MAE_KCAL, count_by_subset, errors, errors_by_subset,
                      mean_predictor, property_errors, reference_labels)
from .plots import parity_plot, plot_learning_curve, view_structure

__all__ = ["KCAL_PER_MOL_IN_EV", "PAPER_FORCE_MAE_KCAL", "count_by_subset", "errors", "errors_by_subset",
           "mean_predictor", "parity_plot", "plot_learning_curve", "property_errors", "reference_labels", "view_structure"]
