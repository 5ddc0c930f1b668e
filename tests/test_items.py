"""Per-item stage work: a bad item is recorded by name and the others are kept."""

import json

from qcell_nb.blocks.carbohydrates import build_monosaccharide
from qcell_nb.pipeline import collect, read_counts, record_failures


def test_bad_name_is_recorded_and_the_rest_built(tmp_path, capsys):
    built, failures = collect(build_monosaccharide, ["beta-D-glucopyranose", "beta-D-glucosaurus",
                                                     "alpha-D-glucopyranose"], subset="carbohydrates")
    assert [a.info["name"] for a in built] == ["beta-D-glucopyranose", "alpha-D-glucopyranose"]
    assert len(failures) == 1 and failures[0]["item"] == "beta-D-glucosaurus"
    assert "ValueError" in failures[0]["error"] and "glucosaurus" in failures[0]["error"]
    record_failures(tmp_path, failures)
    assert json.loads((tmp_path / "failures.json").read_text()) == failures
    assert read_counts(tmp_path)["failed"] == 1
    assert "FAILED carbohydrates beta-D-glucosaurus" in capsys.readouterr().out


def test_tuples_are_unpacked_and_only_declared_keywords_passed():
    from qcell_nb.blocks.ions_water import build_ion

    def pair(a, b):
        from ase import Atoms
        return Atoms("H2", positions=[[0, 0, 0], [0, 0, float(len(a + b))]])

    built, failures = collect(pair, [("ab", "c")], seed=3)
    assert failures == [] and built[0].positions[1, 2] == 3.0
    ions, failures = collect(build_ion, ["Na+", "Xx+"], subset="ions_water", seed=1)  # build_ion takes no seed
    assert [a.info["charge"] for a in ions] == [1] and failures[0]["item"] == "Xx+"
