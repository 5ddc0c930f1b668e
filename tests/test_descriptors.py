"""Per-class structural checks on constructed cases with known answers."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from qcell_nb.blocks.carbohydrates import build_monosaccharide
from qcell_nb.blocks.nucleic_acids import build_duplex, extract_fragments
from qcell_nb.validation.descriptors import (carbohydrate_checks, class_checks, hydroxymethyl_rotamer,
                                             ion_checks, nucleic_acid_checks)


def test_ideal_b_dna_trimer_backbone_near_canonical():
    duplex = build_duplex("GCGATCG", "B")
    duplex.info["frame"] = 0
    (trimer,) = [f for f in extract_fragments([duplex], kinds=["trimer"]) if f.info["fragment"] == "trimer"]
    rows = {row["descriptor"]: row for row in nucleic_acid_checks([trimer])}
    distance = rows["B-form P-P distance (Å)"]
    assert distance["n"] >= 4 and abs(distance["mean"] - 7.0) < 0.3 and distance["reference"] == 7.0
    assert abs(rows["B-form P-P-P angle (deg)"]["mean"] - 148.6) < 10


def test_water_around_an_ion_at_a_known_distance():
    cluster = Atoms("Na", positions=[[0, 0, 0]], info={"subset": "ions_water"})
    water = molecule("H2O")
    water.positions += np.array([2.40, 0, 0]) - water.positions[0]
    far = molecule("H2O")
    far.positions += np.array([0, 4.5, 0]) - far.positions[0]
    cluster += water
    cluster += far
    (row,) = ion_checks([cluster])
    assert row["mean"] == pytest.approx(2.40) and row["reference"] == pytest.approx(2.43)


def test_hydroxymethyl_rotamers_are_named_by_their_basin():
    assert [hydroxymethyl_rotamer(a) for a in (-70, 55, 175, -170)] == ["gg", "gt", "tg", "tg"]
    glucose = build_monosaccharide("beta-D-glucopyranose")
    rows = carbohydrate_checks([glucose])
    assert sum(row["mean"] for row in rows) == pytest.approx(1.0) and rows[0]["n"] == 1


def test_class_checks_skip_what_is_absent():
    assert class_checks([molecule("H2O")]) == []
