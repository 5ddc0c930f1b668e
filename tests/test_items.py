"""Per-item stage work: a bad item is recorded by name and the others are kept."""

import json

from qcell_nb.blocks.carbohydrates import build_monosaccharide
from qcell_nb.pipeline import collect, collect_classes, read_counts, record_failures
from qcell_nb.pipeline.runner import stage_failures
from qcell_nb.store import read_failures


def test_bad_name_is_recorded_and_the_rest_built(tmp_path, capsys):
    built, failures = collect(build_monosaccharide, ["beta-D-glucopyranose", "beta-D-glucosaurus",
                                                     "alpha-D-glucopyranose"], subset="carbohydrates")
    assert [a.info["name"] for a in built] == ["beta-D-glucopyranose", "alpha-D-glucopyranose"]
    assert len(failures) == 1 and failures[0]["item"] == "beta-D-glucosaurus"
    assert "ValueError" in failures[0]["error"] and "glucosaurus" in failures[0]["error"]
    stage = tmp_path / "01_building_blocks"
    stage.mkdir()
    record_failures(stage, failures)
    [entry] = read_failures(stage / "structures.failures.jsonl")
    assert (entry["sid"], entry["name"], entry["stage"]) == (
        "carbohydrates:beta-D-glucosaurus", "beta-D-glucosaurus", "01_building_blocks")
    assert entry["error"] == failures[0]["error"]
    assert read_counts(stage)["failed"] == 1
    assert "FAILED carbohydrates beta-D-glucosaurus" in capsys.readouterr().out
    assert [f["name"] for f in stage_failures(tmp_path, ["01"])] == ["beta-D-glucosaurus"]  # qcell-nb failures
    record_failures(stage, [])  # the stage ran again and the item built: no longer a failure
    assert read_failures(stage / "structures.failures.jsonl") == [] and read_counts(stage)["failed"] == 0


def test_tuples_are_unpacked_and_only_declared_keywords_passed():
    from qcell_nb.blocks.ions_water import build_ion

    def pair(a, b):
        from ase import Atoms
        return Atoms("H2", positions=[[0, 0, 0], [0, 0, float(len(a + b))]])

    built, failures = collect(pair, [("ab", "c")], seed=3)
    assert failures == [] and built[0].positions[1, 2] == 3.0
    ions, failures = collect(build_ion, ["Na+", "Xx+"], subset="ions_water", seed=1)  # build_ion takes no seed
    assert [a.info["charge"] for a in ions] == [1] and failures[0]["item"] == "Xx+"


CALLS: list[str] = []


def _count_and_build(name):
    from qcell_nb.blocks.ions_water import build_ion

    CALLS.append(name)
    return build_ion(name)


def test_a_rerun_reads_finished_items_from_the_checkpoint_and_retries_only_the_failed(tmp_path):
    CALLS.clear()
    first, failures = collect(_count_and_build, ["Na+", "Xx+", "Cl-"], subset="ions_water", checkpoint=tmp_path)
    assert [a.info["name"] for a in first] == ["Na+", "Cl-"] and [f["item"] for f in failures] == ["Xx+"]
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "ions_water").iterdir()) == ["Cl", "Na+"]
    CALLS.clear()
    again, failures = collect(_count_and_build, ["Na+", "Xx+", "Cl-"], subset="ions_water", checkpoint=tmp_path)
    assert CALLS == ["Xx+"]  # the finished items were not recomputed
    assert [f["item"] for f in failures] == ["Xx+"]
    assert [a.info for a in again] == [a.info for a in first]
    assert all((a.positions == b.positions).all() for a, b in zip(again, first))


def test_checkpoints_are_found_by_content_so_a_longer_list_computes_only_the_new_items(tmp_path):
    CALLS.clear()
    collect(_count_and_build, ["Na+", "Cl-"], subset="ions_water", checkpoint=tmp_path / "first")
    CALLS.clear()
    # A block added in front: the old items keep their checkpoints, in this directory or an earlier one.
    grown, _ = collect(_count_and_build, ["K+", "Na+", "Cl-"], subset="ions_water", checkpoint=tmp_path / "first")
    assert CALLS == ["K+"] and [a.info["name"] for a in grown] == ["K+", "Na+", "Cl-"]
    CALLS.clear()
    moved, _ = collect_classes({"ions_water": (_count_and_build, ["Mg2+", "Na+", "Cl-"], {})},
                               checkpoint=tmp_path / "second", reuse=tmp_path / "first")
    assert CALLS == ["Mg2+"] and [a.info["name"] for a in moved] == ["Mg2+", "Na+", "Cl-"]
    assert len(list((tmp_path / "second" / "ions_water").iterdir())) == 3
    CALLS.clear()
    # Other options are another calculation: nothing is reused.
    collect_classes({"ions_water": (_count_and_build_seeded, ["Na+"], {})}, checkpoint=tmp_path / "seed0", seed=0)
    CALLS.clear()
    collect_classes({"ions_water": (_count_and_build_seeded, ["Na+"], {})}, checkpoint=tmp_path / "seed7",
                    reuse=tmp_path / "seed0", seed=7)
    assert CALLS == ["Na+"]


def _count_and_build_seeded(name, seed=0):
    return _count_and_build(name)


def test_classes_on_a_local_dask_cluster_come_back_in_the_order_of_the_work():
    from qcell_nb.blocks.dimers import build_monomer
    from qcell_nb.blocks.ions_water import build_ion
    from qcell_nb.pipeline import collect_classes

    work = {"ions_water": (build_ion, ["Ca2+", "Na+", "K+"], {}),
            "dimers": (build_monomer, ["water", "methane", "no-such-monomer", "ammonia"], {})}
    serial, serial_failures = collect_classes(work, seed=0)
    parallel, parallel_failures = collect_classes(work, executor="local", n_workers=2, seed=0)
    assert [a.info["name"] for a in parallel] == ["Ca2+", "Na+", "K+", "water", "methane", "ammonia"]
    assert [a.info["name"] for a in parallel] == [a.info["name"] for a in serial]
    assert all((a.positions == b.positions).all() for a, b in zip(parallel, serial))
    assert [(f["subset"], f["item"]) for f in parallel_failures] == [("dimers", "no-such-monomer")]
    assert parallel_failures[0]["error"].split(" (at ")[0] == serial_failures[0]["error"].split(" (at ")[0]
