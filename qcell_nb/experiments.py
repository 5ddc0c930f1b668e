"""Training experiments beyond the main model: nablaDFT splits, learning curves, direct vs delta-learning,
model sizes.

Each experiment trains fresh models with the same settings as the main one and reports held-out
errors, so that the validation stage can show how the model generalises (new conformations, new
molecules, new scaffolds, unseen classes), how its error falls with data and with model size, and
what a GFN2-xTB baseline buys. All are deterministic under the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms

from .delta import delta_structures
from .model import predict, train
from .splits import nabladft_splits
from .validation.metrics import (KCAL_PER_MOL_IN_EV, PAPER_FORCE_MAE_KCAL, count_by_subset, errors, errors_by_subset,
                                 reference_labels)


def test_errors(model, test: Sequence[Atoms]) -> dict[str, float]:
    """Energy and force errors of ``model`` on labelled ``test`` structures (eV, meV/atom, eV/Å, kcal/mol/Å)."""
    ref_e, ref_f = reference_labels(test)
    pred_e, pred_f = predict(model, test)
    result = errors(ref_e, ref_f, pred_e, pred_f, [len(a) for a in test])
    result["force_mae_kcal_mol_A"] = result["force_mae_eV_A"] / KCAL_PER_MOL_IN_EV
    return {key: round(float(value), 5) for key, value in result.items()}


def _split_sets(structures: Sequence[Atoms], split: dict[str, list[int]]
                ) -> tuple[list[Atoms], list[Atoms] | None, list[Atoms]]:
    """(train, val or None, test) structures of ``split``; an empty training or test set is an error."""
    train_set = [structures[i] for i in split["train"]]
    val_set = [structures[i] for i in split["val"]] or None
    test_set = [structures[i] for i in split["test"]]
    if not train_set or not test_set:
        raise ValueError(f"split has {len(train_set)} training and {len(test_set)} test structures: need both")
    return train_set, val_set, test_set


def train_and_test(structures: Sequence[Atoms], split: dict[str, list[int]], **train_kwargs: Any) -> dict[str, Any]:
    """Train on ``split["train"]`` (validating on ``split["val"]``) and return test-set errors and sizes."""
    train_set, val_set, test_set = _split_sets(structures, split)
    model = train(train_set, val_set, progress=False, **train_kwargs)
    return {"n_train": len(train_set), "n_test": len(test_set), **test_errors(model, test_set)}


def split_comparison(structures: Sequence[Atoms], kinds: Sequence[str], *, test_fraction: float,
                     val_fraction: float, seed: int, test_subsets: Sequence[str] | None = None,
                     **train_kwargs: Any) -> list[dict[str, Any]]:
    """Test errors on each nablaDFT split kind (conformations, molecules, scaffolds, subsets).

    Kinds whose test set is empty on this data are reported with the reason instead of errors.
    """
    splits = nabladft_splits(structures, test_fraction, val_fraction, seed, test_subsets=test_subsets)
    rows = []
    for kind in kinds:
        if kind not in splits:
            rows.append({"split": kind, "note": "no test structures for this split on this data"})
            continue
        rows.append({"split": kind, **train_and_test(structures, splits[kind], seed=seed, **train_kwargs)})
    return rows


def learning_curve(structures: Sequence[Atoms], split: dict[str, list[int]], fractions: Sequence[float], *,
                   seed: int, full: dict[str, Any] | None = None, **train_kwargs: Any) -> list[dict[str, Any]]:
    """Test errors against training-set size: the first ``fraction`` of a seeded shuffle of the training set.

    ``full``: the :func:`train_and_test`-style row of a model already trained on all of ``split["train"]``
    with these settings (stage 06's main model); fraction 1 reports it instead of training it again.
    """
    order = np.random.default_rng(seed).permutation(split["train"])
    rows = []
    for fraction in fractions:
        if not 0 < fraction <= 1:
            raise ValueError(f"learning-curve fraction {fraction!r}: must be in (0, 1]")
        if fraction == 1 and full is not None:
            rows.append({"fraction": fraction, **full})
            continue
        subset = {"train": [int(i) for i in order[:max(1, round(fraction * len(order)))]], "val": split["val"],
                  "test": split["test"]}
        rows.append({"fraction": fraction, **train_and_test(structures, subset, seed=seed, **train_kwargs)})
    return rows


def delta_comparison(structures: Sequence[Atoms], split: dict[str, list[int]], *, seed: int,
                     full: dict[str, Any] | None = None, **train_kwargs: Any) -> list[dict[str, Any]]:
    """The same split learned directly (PBE0+MBD) and as a correction to GFN2-xTB.

    Test errors of the delta model are taken on the delta targets: the baseline is added exactly to
    both prediction and reference, so they equal the errors of baseline + model against PBE0+MBD.
    ``full``: as in :func:`learning_curve`, the direct model's row when it is already trained.
    """
    delta = delta_structures(structures)
    direct = full if full is not None else train_and_test(structures, split, seed=seed, **train_kwargs)
    return [{"target": "PBE0+MBD (direct)", **direct},
            {"target": "PBE0+MBD - GFN2-xTB (delta)", **train_and_test(delta, split, seed=seed, **train_kwargs)}]


def model_size_comparison(structures: Sequence[Atoms], split: dict[str, list[int]], sizes: Sequence[str], *,
                          seed: int, main: tuple[str, Any] | None = None, **train_kwargs: Any) -> list[dict[str, Any]]:
    """Force MAE (kcal/mol/Å) per QCell class and model size on one split, laid out like the paper's table.

    Returns one row per class of the test set (and ``all``): ``subset``, ``n_train``, ``n_test``, a
    column per size, and ``paper_large`` (the paper's large-model value, None where it has none).
    ``main``: ``(size, trained model)`` of the model already trained on this split with these settings
    (stage 06's main model): that size is evaluated, not trained again.
    """
    train_set, val_set, test_set = _split_sets(structures, split)
    n_train = count_by_subset(train_set)
    table: dict[str, dict[str, Any]] = {}
    for size in sizes:
        if main is not None and main[0] == size:
            model = main[1]
        else:
            model = train(train_set, val_set, progress=False, **{**train_kwargs, "size": size, "seed": seed})
        pred_e, pred_f = predict(model, test_set)
        for row in errors_by_subset(test_set, pred_e, pred_f, n_train):
            entry = table.setdefault(row["subset"], {"subset": row["subset"], "n_train": row["n_train"],
                                                     "n_test": row["n_test"]})
            entry[size] = row["force_mae_kcal_mol_A"]
    for subset, entry in table.items():
        entry["paper_large"] = PAPER_FORCE_MAE_KCAL.get(subset)
    return list(table.values())
