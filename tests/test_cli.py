"""``qcell-nb failures`` and ``qcell-nb retry`` on small run directories.

The fast tests build a run directory with real stage outputs (an ASE database
of water molecules, a dataset with a failure table, manifests) and call the
command line in this process. The slow one runs stage 05's notebook for real
through papermill: a run with one item that fails, the listing, the retry
that recomputes exactly that item in place, and a rerun that does no work.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from qcell_nb.pipeline import read_manifest, run_stage
from qcell_nb.pipeline.cli import main
from qcell_nb.pipeline.manifest import write_manifest
from qcell_nb.pipeline.runner import EXECUTION_PARAMETERS, stage_failures
from qcell_nb.store import Dataset, write_structures
from qcell_nb.structures import structure_id


def waters() -> list[Atoms]:
    """A water molecule that labels, and one whose charge and multiplicity contradict each other."""
    good = molecule("H2O")
    good.info.update(name="water", subset="ions_water")
    bad = molecule("H2O")
    bad.info.update(name="water-cation-singlet", subset="ions_water", charge=1, multiplicity=1)
    return [good, bad]


def make_run(runs: Path, name: str = "tiny") -> Path:
    """A run whose stage 04 is complete (its structures written as stage 04 writes them)."""
    stage04 = runs / name / "04_preoptimisation"
    stage04.mkdir(parents=True)
    write_structures(stage04 / "structures.db", waters())
    write_manifest(stage04, {"stage": "04_preoptimisation", "status": "complete", "fingerprint": "built by the test"})
    return runs / name


def label_by_hand(run_dir: Path, fingerprint: str) -> Dataset:
    """Stage 05 outputs as the stage leaves them: one labelled row, one recorded failure."""
    stage05 = run_dir / "05_reference"
    stage05.mkdir()
    good, bad = waters()
    dataset = Dataset(stage05 / "dataset.db")
    dataset.add(good, {"energy": -2070.1, "forces": np.zeros((3, 3))}, key_value_pairs={"stage": "05_reference"})
    dataset.record_failure(structure_id(bad), "water-cation-singlet", "05_reference",
                           "ValueError: 9 electrons (charge 1) cannot have multiplicity 1")
    write_manifest(stage05, {"stage": "05_reference", "status": "complete", "fingerprint": fingerprint,
                             "injected": {}})
    return dataset


def test_failures_lists_each_failed_item_with_its_error(tmp_path, capsys):
    run_dir = make_run(tmp_path)
    label_by_hand(run_dir, "whatever")
    assert main(["failures", "tiny", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 failed item(s)" in out
    assert "05_reference" in out and "water-cation-singlet" in out and structure_id(waters()[1]) in out
    assert "cannot have multiplicity 1" in out
    assert "qcell-nb retry tiny --stage 05_reference" in out
    # By path too, and per stage.
    assert main(["failures", str(run_dir), "--stage", "04"]) == 0
    assert "0 failed item(s)" in capsys.readouterr().out
    [entry] = stage_failures(run_dir)
    assert entry["table"].endswith("05_reference/dataset.failures.jsonl")
    assert main(["status", "tiny", "--runs-dir", str(tmp_path)]) == 0
    assert "1 failed item(s): 'qcell-nb failures tiny' lists them" in capsys.readouterr().out


def test_failures_and_retry_name_a_missing_run(tmp_path, capsys):
    assert main(["failures", "nowhere", "--runs-dir", str(tmp_path)]) == 2
    assert "no run 'nowhere'" in capsys.readouterr().err
    assert main(["retry", "nowhere", "--runs-dir", str(tmp_path)]) == 2


def test_retry_refuses_a_stage_that_has_not_run_or_has_changed(tmp_path, capsys):
    run_dir = make_run(tmp_path)
    assert main(["retry", "tiny", "--runs-dir", str(tmp_path)]) == 2
    assert "has not run" in capsys.readouterr().err
    dataset = label_by_hand(run_dir, fingerprint="from another version of the notebook")
    assert main(["retry", "tiny", "--runs-dir", str(tmp_path)]) == 2
    assert "changed since it ran" in capsys.readouterr().err
    # Refused before anything was cleared: the failure is still listed.
    assert [f["name"] for f in dataset.failures()] == ["water-cation-singlet"]
    assert read_manifest(run_dir / "05_reference")["status"] == "complete"


def test_retry_may_change_how_a_stage_runs_but_not_what_it_computes(tmp_path, capsys):
    make_run(tmp_path)
    label_by_hand(tmp_path / "tiny", "whatever")
    assert main(["retry", "tiny", "--runs-dir", str(tmp_path), "--set", "basis=def2-svp"]) == 2
    err = capsys.readouterr().err
    assert "not 'basis'" in err and "qcell-nb run --set" in err
    assert main(["retry", "tiny", "--runs-dir", str(tmp_path), "--set", "n_workers=two"]) == 2
    assert "n_workers" in capsys.readouterr().err
    assert {"executor", "n_workers", "retries"} <= set(EXECUTION_PARAMETERS)


def test_retry_with_nothing_failed_does_nothing(tmp_path, capsys):
    run_dir = make_run(tmp_path)
    (run_dir / "05_reference").mkdir()
    write_manifest(run_dir / "05_reference", {"stage": "05_reference", "status": "complete", "fingerprint": "x"})
    assert main(["retry", "tiny", "--runs-dir", str(tmp_path)]) == 0
    assert "nothing to retry" in capsys.readouterr().out


def _cli(runs: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "qcell_nb.pipeline.cli", *args, "--runs-dir", str(runs)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.slow
def test_retry_recomputes_exactly_the_failed_items_in_place(tmp_path):
    """Stage 05 for real (PBE0+MBD/sto-3g on water, serial): about a minute on one core."""
    run_dir = make_run(tmp_path)
    first = _cli(tmp_path, "run", "--run", "tiny", "--stages", "05", "--set", "05.executor=serial")
    assert "complete" in first.stdout
    dataset = Dataset(run_dir / "05_reference" / "dataset.db")
    before = {row.sid: (row.id, row.mtime, row.energy) for row in dataset.rows()}
    assert list(before) == [structure_id(waters()[0])]
    [failure] = dataset.failures()
    assert "multiplicity 1" in failure["error"]

    listing = _cli(tmp_path, "failures", "tiny")
    assert "water-cation-singlet" in listing.stdout and "multiplicity 1" in listing.stdout

    retry = _cli(tmp_path, "retry", "tiny")
    assert "1 failed item(s) cleared" in retry.stdout and "retrying in place" in retry.stdout
    executed = (run_dir / "05_reference" / "05_reference.ipynb").read_text()
    assert "2 structures: 1 already labelled, 1 to compute" in executed
    assert {row.sid: (row.id, row.mtime, row.energy) for row in dataset.rows()} == before, "a labelled row changed"
    [again] = Dataset(run_dir / "05_reference" / "dataset.db").failures()
    assert again["sid"] == failure["sid"] and again["time"] > failure["time"]
    manifest = read_manifest(run_dir / "05_reference")
    assert manifest["status"] == "complete" and manifest["attempts"] == 2
    assert not (run_dir / ".superseded").exists(), "a retry must not supersede the stage"

    # Where it runs is not part of what it computes: still up to date on a local cluster.
    rerun = _cli(tmp_path, "run", "--run", "tiny", "--stages", "05", "--set", "05.executor=local")
    assert "[05_reference] up to date" in rerun.stdout


def test_run_stage_retry_needs_a_matching_fingerprint(tmp_path):
    run_dir = make_run(tmp_path)
    from qcell_nb.pipeline import get_stage
    from qcell_nb.pipeline.runner import default_notebooks_dir

    with pytest.raises(RuntimeError, match="has not run"):
        run_stage(get_stage("05"), run_dir, {}, default_notebooks_dir(), seed=0, retry=True)


def test_report_and_export_commands_name_a_missing_run(tmp_path, capsys):
    from qcell_nb.pipeline.cli import main

    assert main(["report", "nowhere", "--runs-dir", str(tmp_path)]) == 2
    assert main(["export", "nowhere", "--format", "mace", "--runs-dir", str(tmp_path)]) == 2
    assert "nowhere" in capsys.readouterr().err


@pytest.mark.slow
def test_stage_04_failures_are_listed_and_retried_in_place(tmp_path):
    """Stage 04 for real (GFN2-xTB on water, serial): a collapsed structure fails, the retry redoes only it."""
    good = molecule("H2O")
    good.info.update(name="water", subset="ions_water")
    collapsed = molecule("H2O")
    collapsed.positions[1] = collapsed.positions[0] + [0.05, 0.0, 0.0]
    collapsed.info.update(name="collapsed-water", subset="ions_water")
    stage03 = tmp_path / "tiny" / "03_selection"
    stage03.mkdir(parents=True)
    write_structures(stage03 / "structures.db", [good, collapsed])
    write_manifest(stage03, {"stage": "03_selection", "status": "complete", "fingerprint": "built by the test"})
    stage04 = tmp_path / "tiny" / "04_preoptimisation"

    _cli(tmp_path, "run", "--run", "tiny", "--stages", "04")
    assert read_manifest(stage04)["counts"]["failed"] == 1
    [checkpoint] = (stage04 / "items").rglob("*.db")  # the water that relaxed
    written = checkpoint.stat().st_mtime_ns
    listing = _cli(tmp_path, "failures", "tiny")
    assert "04_preoptimisation" in listing.stdout and "collapsed-water" in listing.stdout
    assert "retry with: qcell-nb retry tiny --stage 04_preoptimisation" in listing.stdout

    retry = _cli(tmp_path, "retry", "tiny", "--stage", "04")
    assert "1 failed item(s) cleared" in retry.stdout and "1 retried, 1 still failing" in retry.stdout
    executed = (stage04 / "04_preoptimisation.ipynb").read_text()
    assert "1 items already done" in executed and "1 to compute" in executed
    assert checkpoint.stat().st_mtime_ns == written, "a finished relaxation was recomputed"
    [again] = stage_failures(tmp_path / "tiny", ["04"])
    assert again["sid"] == structure_id(collapsed) and not (tmp_path / "tiny" / ".superseded").exists()


@pytest.mark.slow
def test_new_inputs_with_the_same_settings_reuse_the_unchanged_items(tmp_path):
    """Stages 04 and 05 for real on a water, then on water and ammonia: only ammonia is computed (about 1 min)."""
    water, ammonia = molecule("H2O"), molecule("NH3")
    water.info.update(name="water", subset="ions_water")
    ammonia.info.update(name="ammonia", subset="dimers")
    stage03 = tmp_path / "tiny" / "03_selection"
    stage03.mkdir(parents=True)

    def select(structures):
        write_structures(stage03 / "structures.db", structures)
        write_manifest(stage03, {"stage": "03_selection", "status": "complete", "fingerprint": str(len(structures))})

    select([water])
    _cli(tmp_path, "run", "--run", "tiny", "--stages", "04", "05", "--set", "05.executor=serial")
    first = {row.sid: row.energy for row in Dataset(tmp_path / "tiny" / "05_reference" / "dataset.db").rows()}
    assert len(first) == 2  # two frames of the water's relaxation

    select([water, ammonia])
    second = _cli(tmp_path, "run", "--run", "tiny", "--stages", "04", "05", "--set", "05.executor=serial")
    assert "[04_preoptimisation] same settings, new inputs" in second.stdout
    assert "[05_reference] same settings, new inputs" in second.stdout
    relaxed = (tmp_path / "tiny" / "04_preoptimisation" / "04_preoptimisation.ipynb").read_text()
    assert "1 items reused" in relaxed and "1 to compute" in relaxed
    labelled = (tmp_path / "tiny" / "05_reference" / "05_reference.ipynb").read_text()
    assert "2 labels reused" in labelled and "3 structures: 2 already labelled, 1 to compute" in labelled
    rows = {row.sid: row for row in Dataset(tmp_path / "tiny" / "05_reference" / "dataset.db").rows()}
    assert len(rows) == 3 and all(rows[sid].energy == energy for sid, energy in first.items())
    assert read_manifest(tmp_path / "tiny" / "05_reference")["counts"]["computed_now"] == 1
    assert len(list((tmp_path / "tiny" / ".superseded").iterdir())) == 2  # the old directories are kept

    # A changed setting is a different calculation: nothing is reused.
    third = _cli(tmp_path, "run", "--run", "tiny", "--stages", "05", "--set", "05.executor=serial",
                 "--set", "05.conv_tol=1e-9")
    assert "same settings" not in third.stdout
    assert read_manifest(tmp_path / "tiny" / "05_reference")["counts"]["computed_now"] == 3
