"""Model card and export: a tiny model trained on PBE0/sto-3g waters labelled by the stage-05 code."""

from __future__ import annotations

import json
import math
import zipfile

import jax
import numpy as np
import pytest
from ase.build import molecule

from qcell_nb.model import evaluate, load_model, predict, samples_for, save_model, train
from qcell_nb.model_card import (CARD_JSON, CARD_MARKDOWN, export_model, import_model, read_model_card,
                                 split_summary, write_model_card)
from qcell_nb.pipeline.manifest import database_digest
from qcell_nb.reference import label_missing
from qcell_nb.splits import split_by_group
from qcell_nb.store import Dataset

PARAMS = dict(basis="sto-3g", mbd=None, grid_level=1)


@pytest.fixture(autouse=True)
def free_atom_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("QCELL_NB_CACHE", str(tmp_path_factory.getbasetemp() / "qcell_cache"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """10 distorted waters (two subsets) -> dataset -> split -> 3 epochs -> saved model."""
    root = tmp_path_factory.mktemp("card")
    waters = []
    for seed in range(10):
        water = molecule("H2O")
        water.rattle(0.08, seed=seed)
        water.info.update(name=f"water {seed}", subset="ions_water" if seed % 2 else "dimers",
                          parent_id=f"water-{seed}", charge=0, multiplicity=1)
        waters.append(water)
    dataset = Dataset(root / "dataset.db")
    label_missing(waters, dataset, executor="serial", progress=False, **PARAMS)
    structures = dataset.structures()
    split = split_by_group(structures, test_fraction=0.2, val_fraction=0.0, seed=3)
    train_set = [structures[i] for i in split["train"]]
    # one batch per epoch: a single array shape, so JAX compiles one training step
    settings = dict(size="small", features=8, num_iterations=1, num_basis_functions=8, max_degree=1,
                    electrostatics=False, dispersion=False, epochs=3, batch_size=len(train_set), seed=0,
                    energy_weight=1.0, forces_weight=100.0)
    result = train(train_set, None, progress=False, **settings)
    model_dir = save_model(root / "model", result)
    test_set = [structures[i] for i in split["test"]]
    metrics = {"test": evaluate(result, samples_for(test_set, result.config, result.baseline),
                                batch_size=len(test_set))}
    return {"root": root, "dataset": root / "dataset.db", "split": {**split, "kind": "by parent", "seed": 3},
            "settings": settings, "model_dir": model_dir, "metrics": metrics, "structures": structures,
            "result": result}


def test_card_describes_the_data_split_model_and_errors(trained):
    path = write_model_card(trained["model_dir"], trained["dataset"], trained["split"], trained["metrics"],
                            trained["settings"])
    assert path.name == CARD_JSON and (path.parent / CARD_MARKDOWN).exists()
    card = json.loads(path.read_text())
    assert card == read_model_card(trained["model_dir"])
    data = card["dataset"]
    assert data["digest"] == database_digest(trained["dataset"]) and len(data["digest"]) == 64
    assert data["level_of_theory"] == "PBE0/sto-3g (PySCF DF)"
    assert data["n_structures"] == 10 and data["subsets"] == {"dimers": 5, "ions_water": 5}
    assert data["elements"] == ["H", "O"] and data["charges"] == {"0": 10} and not data["has_mm_sites"]
    split = card["split"]
    assert split["sizes"] == {"train": 8, "val": 0, "test": 2} and split["kind"] == "by parent"
    assert sum(split["subsets"]["test"].values()) == 2
    model = card["model"]
    result = trained["result"]
    assert model["config"]["features"] == 8 and model["elements"] == ["H", "O"] and model["size"] == "small"
    assert model["n_parameters"] == sum(np.size(x) for x in jax.tree.leaves(result.params)) > 100
    assert model["epochs_trained"] == 3 and model["best_epoch"] == result.best_epoch
    training = card["training"]
    assert training["loss_weights"]["forces"] == 100.0 and training["loss_weights"]["dipole"] == 10.0
    assert "forces_weight" not in training["settings"] and training["settings"]["epochs"] == 3
    assert training["training_time_s"] == pytest.approx(sum(result.history["epoch_time"]))
    test_metrics = card["metrics"]["test"]
    assert test_metrics["forces_mae"] == pytest.approx(trained["metrics"]["test"]["forces_mae"])
    assert test_metrics["charges_mae"] is None or math.isfinite(test_metrics["charges_mae"])  # NaN -> null
    assert card["package_versions"]["jax"] and card["package_versions"]["pyscf"]
    text = (path.parent / CARD_MARKDOWN).read_text()
    for expected in ("PBE0/sto-3g", data["digest"], "forces_mae", "## Limitations", "train 8"):
        assert expected in text


def test_split_errors_name_the_problem(trained):
    with pytest.raises(ValueError, match="indices \\[10\\] outside the dataset's 10 rows"):
        split_summary({"train": [0, 10]}, 10)
    with pytest.raises(ValueError, match="shares indices \\[1\\]"):
        split_summary({"train": [0, 1], "test": [1]}, 10)
    with pytest.raises(ValueError, match="no 'train' part"):
        split_summary({"test": [1]}, 10)
    assert split_summary({"train": 8, "test": 2}, 10)["sizes"] == {"train": 8, "val": 0, "test": 2}


def test_export_round_trips_and_guards_the_parameters(trained, tmp_path):
    write_model_card(trained["model_dir"], trained["dataset"], trained["split"], trained["metrics"],
                     trained["settings"])
    archive = export_model(trained["model_dir"], tmp_path / "water.zip")
    assert sorted(zipfile.ZipFile(archive).namelist()) == sorted(
        ["model.json", "params.msgpack", CARD_JSON, CARD_MARKDOWN])
    # the test waters at the evaluation's batch shape: no new compilation
    waters = [trained["structures"][i] for i in trained["split"]["test"]]
    reference = predict(trained["result"], waters, batch_size=len(waters))[0]
    # unpacked by hand and read by load_model, or through import_model
    zipfile.ZipFile(archive).extractall(tmp_path / "unzipped")
    n = len(waters)
    np.testing.assert_allclose(predict(load_model(tmp_path / "unzipped"), waters, batch_size=n)[0], reference)
    np.testing.assert_allclose(predict(import_model(archive, tmp_path / "imported"), waters, batch_size=n)[0],
                               reference)
    assert read_model_card(tmp_path / "imported")["dataset"]["digest"] == database_digest(trained["dataset"])
    # parameters that no longer match their card are refused
    params = tmp_path / "imported" / "params.msgpack"
    params.write_bytes(params.read_bytes()[:-1] + bytes([params.read_bytes()[-1] ^ 1]))
    with pytest.raises(ValueError, match="changed since its model card was written"):
        export_model(tmp_path / "imported", tmp_path / "bad.zip")
