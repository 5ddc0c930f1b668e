import numpy as np
import pytest
from ase.build import molecule

from qcell_nb.store import (Dataset, clear_failures, failures_path_of, read_failures, read_structures,
                            record_failure, write_structures)
from qcell_nb.structures import closest_pair, multiplicity_of, structure_id


def water(**info):
    atoms = molecule("H2O")
    atoms.info.update(name="water", subset="ions_water", **info)
    return atoms


def test_structure_id_is_stable_under_float_noise_and_sensitive_to_charge():
    a = water()
    b = a.copy()
    b.positions += 1e-7
    assert structure_id(a) == structure_id(b)
    c = a.copy()
    c.info["charge"] = 1
    assert structure_id(c) != structure_id(a)
    d = a.copy()
    d.positions[0, 0] += 0.01
    assert structure_id(d) != structure_id(a)


def test_an_id_whose_digest_reads_as_a_number_is_written_and_found(tmp_path):
    # About one SHA-1 prefix in 600 reads as a float ("8459165549e40316"); ASE's database refused
    # such an id and a demo stage lost 88 minutes of MD at its final write.
    rng = np.random.default_rng(0)
    for _ in range(20000):
        atoms = water()
        atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
        sid = structure_id(atoms)
        if sid.startswith("x"):
            break
    else:
        pytest.fail("no numeric-looking digest in 20000 structures (expected about 30)")
    assert len(sid) == 17 and not sid[1:].isalpha()
    float(sid[1:])  # the raw digest does read as a number
    parent = water()
    atoms.info["parent_id"] = sid
    assert write_structures(tmp_path / "s.db", [atoms, parent]) == 2
    back = read_structures(tmp_path / "s.db")
    assert structure_id(back[0]) == sid and back[0].info["parent_id"] == sid
    assert len(structure_id(parent)) == 16  # ordinary ids are unchanged


def test_info_texts_that_read_as_numbers_or_bools_round_trip_as_texts(tmp_path):
    # ASE's database refuses a key-value string that reads as a number or a bool; such texts
    # (a block named "1e5", a flag "True") go to the row's data and come back as the same strings.
    atoms = water(label="1e5", flag="True", code="0042", nan_name="nan", tag="B-DNA")
    write_structures(tmp_path / "s.db", [atoms])
    (back,) = read_structures(tmp_path / "s.db")
    assert {k: back.info[k] for k in ("label", "flag", "code", "nan_name", "tag")} == {
        "label": "1e5", "flag": "True", "code": "0042", "nan_name": "nan", "tag": "B-DNA"}
    assert read_structures(tmp_path / "s.db", tag="B-DNA")  # ordinary texts stay searchable


def test_closest_pair_names_the_two_atoms_and_uses_the_minimum_image():
    from ase import Atoms

    atoms = Atoms("H3", positions=[[0, 0, 0], [0, 0, 3.0], [0, 0, 0.8]])
    assert closest_pair(atoms) == (0, 2, pytest.approx(0.8))
    assert closest_pair(atoms[:1]) == (0, 0, float("inf"))
    periodic = Atoms("H2", positions=[[0, 0, 0.1], [0, 0, 4.7]], cell=[5, 5, 5], pbc=True)
    assert closest_pair(periodic)[2] == pytest.approx(0.4)  # across the cell face, not 4.6


def test_default_multiplicity_follows_electron_count():
    assert multiplicity_of(water()) == 1
    assert multiplicity_of(water(charge=1)) == 2


def test_structures_round_trip_keeps_info_including_reserved_names(tmp_path):
    atoms = water(charge=0, conformer=3, weights=[1.0, 2.0])
    assert write_structures(tmp_path / "s.db", [atoms, water()]) == 2
    back = read_structures(tmp_path / "s.db")
    assert len(back) == 2
    assert back[0].info["charge"] == 0 and back[0].info["conformer"] == 3
    assert back[0].info["weights"] == [1.0, 2.0]
    assert np.allclose(back[0].positions, atoms.positions)
    assert structure_id(back[0]) == structure_id(atoms)


def test_read_structures_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.db"):
        read_structures(tmp_path / "missing.db")


def test_dataset_adds_once_and_tracks_failures(tmp_path):
    dataset = Dataset(tmp_path / "dataset.db")
    atoms = water()
    sid = structure_id(atoms)
    dataset.record_failure(sid, "water", "05_reference", "SCF did not converge")
    assert [f["sid"] for f in dataset.failures()] == [sid]
    forces = np.arange(9.0).reshape(3, 3)
    dataset.add(atoms, {"energy": -2000.0, "forces": forces, "dipole": np.zeros(3)},
                key_value_pairs={"level_of_theory": "test"}, data={"hirsh_ratios": np.ones(3)})
    dataset.add(atoms, {"energy": -1.0, "forces": forces})
    assert len(dataset) == 1
    assert dataset.done_ids() == {sid}
    assert dataset.failures() == []  # labelled since: no longer a failure
    (row,) = dataset.rows()
    assert row.energy == -2000.0 and row.level_of_theory == "test"
    assert np.allclose(row.data["hirsh_ratios"], 1.0)
    back = dataset.structures()[0]
    assert np.allclose(back.get_forces(), forces)


def test_dataset_reads_the_same_sequence_whatever_order_the_labels_arrived_in(tmp_path):
    from qcell_nb.splits import split_by_group

    frames = []
    for i, name in enumerate(["H2O", "CH4", "NH3", "CH3OH", "C2H6", "HCOOH"]):
        atoms = molecule(name)
        atoms.info.update(name=name, subset="dimers", parent_id=f"path{i % 3}")
        frames.append(atoms)
    arrived = {}
    for label, order in (("first", range(6)), ("resumed", [4, 1, 5, 0, 3, 2])):
        dataset = Dataset(tmp_path / f"{label}.db")
        for i in order:
            dataset.add(frames[i], {"energy": -float(i), "forces": np.zeros((len(frames[i]), 3))})
        arrived[label] = dataset.structures()
    ids = {label: [structure_id(atoms) for atoms in found] for label, found in arrived.items()}
    assert ids["first"] == ids["resumed"] == sorted(ids["first"])
    assert [a.get_potential_energy() for a in arrived["first"]] == [a.get_potential_energy() for a in arrived["resumed"]]
    assert split_by_group(arrived["first"], 0.34, 0.34) == split_by_group(arrived["resumed"], 0.34, 0.34)


def test_dataset_metadata_persists(tmp_path):
    Dataset(tmp_path / "d.db").update_metadata(level_of_theory="PBE0+MBD", units={"energy": "eV"})
    reopened = Dataset(tmp_path / "d.db")
    reopened.update_metadata(extra=1)
    assert reopened.metadata == {"level_of_theory": "PBE0+MBD", "units": {"energy": "eV"}, "extra": 1}


def test_failures_can_be_cleared_for_a_retry_and_read_without_a_database(tmp_path):
    dataset = Dataset(tmp_path / "dataset.db")
    first, second = water(), water(charge=1)
    dataset.record_failure(structure_id(first), "water", "05_reference", "SCF did not converge")
    dataset.record_failure(structure_id(second), "cation", "05_reference", "9 electrons cannot have multiplicity 1")
    table = failures_path_of(tmp_path / "dataset.db")
    assert table == dataset.failures_path == tmp_path / "dataset.failures.jsonl"
    assert [f["error"] for f in read_failures(table)] == ["SCF did not converge",
                                                           "9 electrons cannot have multiplicity 1"]
    assert read_failures(tmp_path / "absent.failures.jsonl") == []

    cleared = dataset.clear_failures([structure_id(first)])
    assert [f["name"] for f in cleared] == ["water"]
    assert [f["name"] for f in dataset.failures()] == ["cation"]
    assert [f["name"] for f in clear_failures(table)] == ["cation"]
    assert Dataset(tmp_path / "dataset.db").failures() == []
    # A failure recorded again after a retry is current again, with its new error.
    dataset.record_failure(structure_id(second), "cation", "05_reference", "still inconsistent")
    assert [f["error"] for f in read_failures(table)] == ["still inconsistent"]
    with open(table, "a") as handle:
        handle.write('{"sid": "cut-sho')  # a line cut short by a crash
    assert [f["error"] for f in read_failures(table)] == ["still inconsistent"]
    dataset.record_failure(structure_id(first), "water", "05_reference", "after the crash")
    assert sorted(f["error"] for f in read_failures(table)) == ["after the crash", "still inconsistent"]


def test_a_stage_without_a_dataset_records_failures_beside_its_structures(tmp_path):
    table = failures_path_of(tmp_path / "04" / "structures.db")
    record_failure(table, structure_id(water()), "water", "04_preoptimisation", "TightBindingError: SCF failed")
    assert table == tmp_path / "04" / "structures.failures.jsonl"
    [entry] = read_failures(table)
    assert entry["stage"] == "04_preoptimisation" and entry["error"] == "TightBindingError: SCF failed"
