"""Stage-05 driver: bad input becomes named failures in the dataset's failure table; good items are labelled."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from qcell_nb.reference import label_missing
from qcell_nb.store import Dataset
from qcell_nb.structures import structure_id

PARAMS = dict(basis="sto-3g", mbd="rsscs", grid_level=1)


@pytest.fixture(autouse=True)
def free_atom_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("QCELL_NB_CACHE", str(tmp_path_factory.getbasetemp() / "qcell_cache"))


def water(name: str = "water") -> Atoms:
    return Atoms("OH2", positions=[[0, 0, 0.1173], [0, 0.7572, -0.4692], [0, -0.7572, -0.4692]],
                 info={"name": name, "subset": "ions_water"})


def test_bad_inputs_are_named_failures_and_the_stage_finishes(tmp_path) -> None:
    dataset = Dataset(tmp_path / "dataset.db")
    good = [water(), Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], info={"name": "hydrogen"})]
    bad = {
        # STO-3G stops at Kr
        "xenon dimer": Atoms("Xe2", positions=[[0, 0, 0], [0, 0, 4.4]]),
        "squashed water": Atoms("OH2", positions=[[0, 0, 0], [0, 0, 0.1], [0, 0.9, 0.3]]),
        "OH singlet": Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]], info={"multiplicity": 1}),
    }
    for name, atoms in bad.items():
        atoms.info["name"] = name
    summary = label_missing(good + list(bad.values()), dataset, executor="serial", progress=False, **PARAMS)
    assert summary.submitted == 5 and summary.succeeded == 2 and len(summary.failed) == 3
    assert len(dataset) == 2
    rows = {row.name: row for row in dataset.rows()}
    assert set(rows) == {"water", "hydrogen"}
    row = rows["water"]
    assert np.isfinite(row.energy) and row.forces.shape == (3, 3) and row.dipole.shape == (3,)
    assert row.data["hirsh_ratios"].shape == (3,) and row.charges.shape == (3,)
    assert row.scf_iterations > 0 and row.wall_time_s > 0 and row.stage == "05_reference"
    assert row.level_of_theory == "PBE0+MBD@rsSCS/sto-3g (PySCF DF)" and row.subset == "ions_water"
    assert row.df_tensors_in_memory is True and row.max_memory_mb >= 500  # resources, kept to explain speed

    errors = {f["name"]: f["error"] for f in dataset.failures()}
    assert set(errors) == set(bad)
    assert errors["xenon dimer"].startswith("ValueError: xenon dimer: basis 'sto-3g' has no functions for element Xe")
    assert "ValueError: squashed water: atoms 0 (O) and 1 (H) are 0.100 Å apart" in errors["squashed water"]
    assert "ValueError: OH singlet: 9 electrons (charge 0) cannot have multiplicity 1" in errors["OH singlet"]
    assert all(f["stage"] == "05_reference" for f in dataset.failures())

    # An SCF that cannot converge (cycles capped): a named failure; what is done stays done.
    stubborn = water("stubborn water")
    stubborn.positions[0, 2] += 0.05
    summary = label_missing([water(), stubborn], dataset, executor="serial", progress=False,
                            **{**PARAMS, "max_cycle": 1, "conv_tol": 1e-14})
    assert summary.submitted == 1  # water is already labelled
    assert len(dataset) == 2
    failure = {f["name"]: f for f in dataset.failures()}["stubborn water"]
    assert failure["sid"] == structure_id(stubborn)
    assert failure["error"].startswith("RuntimeError: stubborn water: SCF did not converge in")

    # A later good run of a failed structure clears its failure.
    label_missing([stubborn], dataset, executor="serial", progress=False, **PARAMS)
    assert "stubborn water" not in {f["name"] for f in dataset.failures()} and len(dataset) == 3


def test_unknown_parameter_fails_before_any_work(tmp_path) -> None:
    dataset = Dataset(tmp_path / "dataset.db")
    with pytest.raises(ValueError, match="grid_levle"):
        label_missing([water()], dataset, executor="serial", progress=False, grid_levle=3)
    assert len(dataset) == 0


def test_preset_metadata(tmp_path) -> None:
    dataset = Dataset(tmp_path / "dataset.db")
    label_missing([], dataset, executor="serial", progress=False, preset="auto")
    assert dataset.metadata["level_of_theory"].startswith("PBE0+MBD@rsSCS/def2-tzvp (<= 350 atoms)")
    assert dataset.metadata["calculator_parameters"] == {"preset": "auto"}


def test_labels_whose_tensors_went_to_disk_are_counted_for_the_user(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("PYSCF_MAX_MEMORY", raising=False)
    dataset = Dataset(tmp_path / "dataset.db")
    label_missing([water()], dataset, executor="serial", progress=False, max_memory_mb=1.0, **PARAMS)
    assert "1 of 1 labels kept their density-fitting tensors on disk" in capsys.readouterr().out
    (row,) = dataset.rows()
    assert row.df_tensors_in_memory is False and row.max_memory_mb == 1.0
