"""Stage 06's extra experiments reuse the main model where it is the same experiment."""

import pytest
from ase.build import molecule

from qcell_nb import experiments


def test_the_learning_curves_full_point_is_the_main_model_not_a_second_training(monkeypatch):
    trained = []
    monkeypatch.setattr(experiments, "train_and_test",
                        lambda structures, split, **kw: trained.append(len(split["train"])) or {"n_train": 0})
    structures = [molecule("H2O") for _ in range(8)]
    split = {"train": [0, 1, 2, 3], "val": [4, 5], "test": [6, 7]}
    main = {"n_train": 4, "n_test": 2, "force_mae_eV_A": 0.1}
    rows = experiments.learning_curve(structures, split, [0.5, 1.0], seed=0, full=main)
    assert trained == [2]  # only the half-size model is trained
    assert rows[1] == {"fraction": 1.0, **main}
    rows = experiments.learning_curve(structures, split, [1.0], seed=0)
    assert trained == [2, 4]  # without the main model's row, fraction 1 is trained
    with pytest.raises(ValueError, match="fraction 1.5"):
        experiments.learning_curve(structures, split, [1.5], seed=0, full=main)
