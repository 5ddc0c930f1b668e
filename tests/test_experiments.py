"""Stage 06's extra experiments reuse the main model where it is the same experiment."""

import numpy as np
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


def test_model_sizes_table_has_a_column_per_size_and_trains_only_the_new_size(monkeypatch):
    from ase.calculators.singlepoint import SinglePointCalculator
    from tblite.ase import TBLite

    from qcell_nb.model import train

    rng = np.random.default_rng(0)
    structures = []
    for index in range(10):
        atoms = molecule("H2O")
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        atoms.info["subset"] = "ions_water" if index % 2 else "dimers"
        structures.append(atoms)
    split = {"train": [0, 1, 2, 3, 4, 5], "val": [6, 7], "test": [8, 9]}
    tiny = dict(features=8, max_degree=1, num_iterations=1, epochs=2, batch_size=4)
    main = train([structures[i] for i in split["train"]], None, size="small", seed=0, progress=False, **tiny)
    calls = []
    # Training another size is train() itself (tested in test_model_training); here it hands back a second
    # tiny model, which keeps this test to one compilation.
    other = train([structures[i] for i in split["train"]], None, size="small", seed=1, progress=False, **tiny)
    monkeypatch.setattr(experiments, "train", lambda *a, **kw: calls.append(kw["size"]) or other)
    rows = experiments.model_size_comparison(structures, split, ["small", "medium"], seed=0,
                                             main=("small", main), **tiny)
    assert calls == ["medium"]  # the main model's size is evaluated, not retrained
    by_subset = {row["subset"]: row for row in rows}
    assert set(by_subset) == {"dimers", "ions_water", "all"}
    assert by_subset["all"]["n_train"] == 6 and by_subset["all"]["n_test"] == 2
    assert by_subset["ions_water"]["paper_large"] == 0.7 and by_subset["all"]["paper_large"] is None
    assert all(row["small"] > 0 and row["medium"] > 0 for row in rows)
    assert by_subset["all"]["small"] != by_subset["all"]["medium"]
