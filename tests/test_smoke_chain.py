"""The whole chain on the smoke profile through papermill, as a user runs it.

One run is started, killed with SIGKILL (with every process it started) once
stage 05 has written some rows, and run again: the resumed stage must compute
only what was missing. A third run must do no work. Then the products are
checked: executed notebooks, dataset, forces, Hirshfeld ratios, model errors.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from qcell_nb.pipeline import STAGES, read_manifest
from qcell_nb.store import Dataset, read_structures

pytestmark = pytest.mark.slow
RUN = "ci"


def _command(runs: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "qcell_nb.pipeline.cli", "run", "--profile", "smoke", "--run", RUN,
            "--runs-dir", str(runs), *extra]


def _rows(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as connection:
            return connection.execute("select count(*) from systems").fetchone()[0]
    except sqlite3.Error:
        return 0


def _kill_tree(pid: int) -> None:
    parent = psutil.Process(pid)
    processes = parent.children(recursive=True) + [parent]
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=30)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    run_dir = runs / RUN
    dataset_db = run_dir / "05_reference" / "dataset.db"
    log = open(runs / "first.log", "w")
    first = subprocess.Popen(_command(runs), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 1200
    while time.time() < deadline and first.poll() is None and _rows(dataset_db) < 2:
        time.sleep(0.5)
    assert first.poll() is None, f"the first run ended before it could be killed: {(runs / 'first.log').read_text()}"
    _kill_tree(first.pid)
    log.close()
    rows_at_kill = _rows(dataset_db)
    second = subprocess.run(_command(runs), capture_output=True, text=True, timeout=1800)
    assert second.returncode == 0, second.stdout + second.stderr
    third = subprocess.run(_command(runs), capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stdout + third.stderr
    return {"run_dir": run_dir, "rows_at_kill": rows_at_kill, "second": second.stdout, "third": third.stdout}


def test_every_stage_ran_and_left_its_executed_notebook_and_figure(smoke_run):
    run_dir = smoke_run["run_dir"]
    for stage in STAGES:
        manifest = read_manifest(run_dir / stage.name)
        assert manifest["status"] == "complete", stage.name
        assert (run_dir / stage.name / stage.notebook).exists()
        assert manifest["packages"]["pyscf"]
        if stage.name != "00_overview":
            assert list((run_dir / stage.name).glob("*.png")), f"no figure from {stage.name}"
    assert (run_dir / "stage_times.png").exists()


def test_resume_after_kill_computes_only_the_missing_structures(smoke_run):
    run_dir = smoke_run["run_dir"]
    assert 0 < smoke_run["rows_at_kill"]
    assert "[05_reference] resuming" in smoke_run["second"]
    executed = (run_dir / "05_reference" / "05_reference.ipynb").read_text()
    structures = read_structures(run_dir / "04_preoptimisation" / "structures.db")
    assert f"{len(structures)} structures: {smoke_run['rows_at_kill']} already labelled" in executed
    dataset = Dataset(run_dir / "05_reference" / "dataset.db")
    sids = [row.sid for row in dataset.rows()]
    assert len(sids) == len(set(sids)) == len(structures), "rows lost or duplicated"
    assert dataset.failures() == []


def test_a_rerun_does_no_work(smoke_run):
    for stage in STAGES:
        assert f"[{stage.name}] up to date" in smoke_run["third"]


def test_dataset_labels_are_physical(smoke_run):
    dataset = Dataset(smoke_run["run_dir"] / "05_reference" / "dataset.db")
    assert "fixed Hirshfeld" in dataset.metadata["mbd_forces"]
    assert dataset.metadata["level_of_theory"].startswith("PBE0+MBD@rsSCS/")
    rows = list(dataset.rows())
    # Every QCell class reaches the dataset through the same stages 04-07.
    assert {row.subset for row in rows} == {"carbohydrates", "nucleic_acids", "lipids", "ions_water", "dimers"}
    for row in rows:
        assert np.isfinite(row.energy) and np.all(np.isfinite(row.forces))
        assert row.level_of_theory.startswith("PBE0+MBD")
        ratios = row.data["hirsh_ratios"]
        assert ratios.shape == (row.natoms,)
        # Neutral molecules stay near their free atoms; a cation's ratio can drop far below.
        low = 0.3 if row.subset in ("carbohydrates", "lipids") else 0.02
        assert np.all((ratios > low) & (ratios < 1.5)), (row.subset, ratios)
        assert row.total_charge == int(row.get("info_charge", row.get("charge", 0)) or 0)
        if row.natoms > 1:
            assert row.mbd_energy < 0


def test_stored_forces_match_finite_differences(smoke_run):
    from qcell_nb.calculators.pbe0 import label_structure

    run_dir = smoke_run["run_dir"]
    parameters = read_manifest(run_dir / "05_reference")["parameters"]
    calc = {k: parameters[k] for k in ("basis", "mbd", "grid_level", "conv_tol")}
    dataset = Dataset(run_dir / "05_reference" / "dataset.db")
    atoms = min(dataset.structures(), key=len)
    forces = atoms.get_forces()
    step = 2e-3
    rng = np.random.default_rng(0)
    for atom in rng.choice(len(atoms), size=2, replace=False):
        axis = int(rng.integers(3))
        energies = []
        for sign in (1, -1):
            displaced = atoms.copy()
            displaced.positions[atom, axis] += sign * step
            energies.append(label_structure(displaced, **calc)["energy"])
        numeric = -(energies[0] - energies[1]) / (2 * step)
        assert abs(numeric - forces[atom, axis]) < 5e-3, (atom, axis, numeric, forces[atom, axis])


def test_model_beats_the_mean_predictor(smoke_run):
    metrics = json.loads((smoke_run["run_dir"] / "07_validation" / "metrics.json").read_text())
    assert metrics["n_test"] > 0
    assert metrics["model"]["force_mae_eV_A"] < metrics["mean_predictor"]["force_mae_eV_A"]


def test_validation_regenerates_the_checks_and_the_report(smoke_run):
    from qcell_nb.pipeline.cli import main

    run_dir = smoke_run["run_dir"]
    metrics = json.loads((run_dir / "07_validation" / "metrics.json").read_text())
    assert {row["subset"] for row in metrics["per_subset"]} >= {"all"}
    everything = next(row for row in metrics["per_subset"] if row["subset"] == "all")
    assert everything["dipole_mae_eA"] > 0 and everything["hirshfeld_mae"] > 0  # the smoke labels carry both
    sizes = {row["subset"]: row for row in metrics["model_sizes"]}
    assert sizes["all"]["small"] == everything["force_mae_kcal_mol_A"]  # the main model, not a retrained one
    assert {row["subset"] for row in metrics["class_checks"]} >= {"carbohydrates", "ions_water", "lipids", "dimers"}
    assert [row["ion"] for row in metrics["ion_md"]] == ["Na+", "Ca2+"]
    for row in metrics["ion_md"]:
        # The model ran MD (stability is reported, not required of a smoke model), or it says why it could not:
        # two ion clusters go on to DFT in smoke, so one ion may be absent from the training data.
        assert row.get("ps", 0) > 0 or "not in the training data" in row["error"], row
    assert any(row.get("ps", 0) > 0 for row in metrics["ion_md"])
    assert (run_dir / "06_training" / "model.zip").exists()
    assert (run_dir / "06_training" / "model" / "MODEL_CARD.md").exists()
    assert main(["report", RUN, "--runs-dir", str(run_dir.parent)]) == 0
    report = (run_dir / "report.md").read_text()
    assert "per subset" in report and "07_validation/parity.png" in report
    assert (run_dir / "07_validation" / "07_validation.html").exists()
