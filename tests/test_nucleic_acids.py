"""Nucleic acids, stages 01-03, on small real structures: built helices, fragments, a short MD run."""

from __future__ import annotations

import numpy as np
import pytest

from qcell_nb.blocks.nucleic_acids import (
    CANONICAL,
    bending_angle,
    build_duplex,
    build_duplexes,
    build_rna_strand,
    check_sequence,
    extract_fragments,
    phosphate_distances,
    sample_duplexes,
)
from qcell_nb.md import MDSettings
from qcell_nb.store import read_structures, write_structures
from qcell_nb.structures import structure_id


@pytest.fixture(scope="module")
def b_dna():
    return build_duplex("GCGATCG", "B")


@pytest.fixture(scope="module")
def a_dna():
    return build_duplex("GCGAC", "A")


@pytest.fixture(scope="module")
def z_dna():
    return build_duplex("CGCGC", "Z")


def _central_trimer(duplex):
    (trimer,) = extract_fragments([duplex], kinds=["trimer"])
    return trimer


def _twist_sense(duplex) -> float:
    """Sum of signed rotations (deg) of strand I's C1' about the axis through the base-pair midpoints."""
    names, chains = duplex.info["atom_name"], duplex.info["chain_index"]
    c1 = {c: [i for i, (n, ch) in enumerate(zip(names, chains)) if n == "C1'" and ch == c] for c in (0, 1)}
    pos = duplex.get_positions()
    first, second = pos[c1[0]], pos[c1[1]][::-1]  # strand II runs 3'->5' along strand I
    mids = (first + second) / 2
    axis = mids[-1] - mids[0]
    axis /= np.linalg.norm(axis)
    radial = first - mids
    radial -= np.outer(radial @ axis, axis)
    total = 0.0
    for u, v in zip(radial, radial[1:]):
        total += np.degrees(np.arctan2(np.cross(u, v) @ axis, u @ v))
    return total


def test_b_dna_trimer_phosphate_distances_match_canonical(b_dna):
    trimer = _central_trimer(b_dna)
    distances = phosphate_distances(trimer)
    assert len(distances) == 4  # two P-P per strand in a double-strand trimer
    assert abs(distances.mean() - CANONICAL["B"]["pp"]) < 0.3, distances
    assert np.all(np.abs(distances - CANONICAL["B"]["pp"]) < 0.5), distances
    assert abs(bending_angle(trimer) - CANONICAL["B"]["bending"]) < 5.0
    # the built duplex: every O3'-P bond closed, charge neutral with one Na+ per phosphate
    names = b_dna.info["atom_name"]
    o3p = [np.linalg.norm(b_dna.positions[i] - b_dna.positions[j]) for i, j in b_dna.info["bonds"]
           if {names[i], names[j]} == {"O3'", "P"}]
    assert len(o3p) == 12 and max(o3p) < 1.7
    assert b_dna.info["charge"] == 0 and b_dna.get_chemical_symbols().count("Na") == 12
    assert b_dna.info["name"] == "B-DNA GCGATCG" and b_dna.info["subset"] == "nucleic_acids"


def test_a_form_is_shorter_and_z_form_left_handed(a_dna, b_dna, z_dna):
    a_pp = phosphate_distances(_central_trimer(a_dna))
    b_pp = phosphate_distances(_central_trimer(b_dna))
    assert abs(a_pp.mean() - CANONICAL["A"]["pp"]) < 0.4, a_pp
    assert b_pp.mean() - a_pp.mean() > 0.4
    assert _twist_sense(b_dna) > 150.0  # 6 steps of ~36 deg, right-handed
    assert _twist_sense(a_dna) > 80.0
    assert _twist_sense(z_dna) < -80.0  # left-handed
    z_pp = phosphate_distances(z_dna)
    low, high = CANONICAL["Z"]["pp_range"]
    assert np.all((z_pp > low - 0.4) & (z_pp < high + 0.4)), z_pp


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"letter 'U' at position 4 is not one of ACGT"):
        check_sequence("ACGU")
    with pytest.raises(ValueError, match=r"letter 'T' at position 2 is not one of ACGU"):
        build_rna_strand("AT")
    with pytest.raises(ValueError, match=r"unknown helix form 'C'"):
        build_duplex("ACGT", form="C")
    with pytest.raises(ValueError, match=r"does not alternate purines and pyrimidines"):
        build_duplex("GGCC", form="Z")
    with pytest.raises(ValueError, match=r"letter 'X' at position 3"):
        build_duplexes(["GCG", "GCXT"], forms=("B",))


def test_fragments_are_closed_shell_capped_and_stored(b_dna, tmp_path):
    rna = build_rna_strand("GCAUC")
    fragments = extract_fragments([b_dna, rna], max_per_frame=2, seed=3)
    kinds = [f.info["fragment"] for f in fragments]
    assert kinds.count("trimer") == 1 and kinds.count("rna_trimer") == 1
    assert kinds.count("wc_pair") == 2 and kinds.count("stacked_pair") == 2
    for fragment in fragments:
        info = fragment.info
        assert info["multiplicity"] == 1 and info["charge"] == 0
        assert (fragment.get_atomic_numbers().sum() - info["charge"]) % 2 == 0
        assert info["parent_id"] in {structure_id(b_dna), structure_id(rna)}
        distances = fragment.get_all_distances()
        np.fill_diagonal(distances, np.inf)
        assert distances.min() > 0.9  # no cap on top of another atom
        for h in np.flatnonzero(fragment.numbers == 1):  # every H bonded to exactly one atom
            assert (distances[h] < 1.25).sum() == 1, info["name"]
    pairs = [f for f in fragments if f.info["fragment"] == "wc_pair"]
    formulas = {"C10H11N7O2", "C9H10N8O2"}  # 9-H-adenine:1-H-thymine, 9-H-guanine:1-H-cytosine
    assert all(f.get_chemical_formula() in formulas and len(f) <= 40 for f in pairs)
    # anionic phosphates: one negative charge per phosphate, still closed-shell
    (anionic,) = extract_fragments([b_dna], kinds=["trimer"], protonate_phosphates=False)
    assert anionic.info["charge"] == -6 == -anionic.info["n_phosphates"]
    assert (anionic.get_atomic_numbers().sum() + 6) % 2 == 0
    # same seed, same selection; the dataset round trip keeps charge and topology
    again = extract_fragments([b_dna, rna], max_per_frame=2, seed=3)
    assert [f.info["name"] for f in again] == [f.info["name"] for f in fragments]
    write_structures(tmp_path / "fragments.db", fragments)
    stored = read_structures(tmp_path / "fragments.db")
    assert [structure_id(s) for s in stored] == [structure_id(f) for f in fragments]
    assert list(stored[0].info["atom_name"]) == list(fragments[0].info["atom_name"])


def test_short_md_run_gives_frames_and_fragments():
    block = build_rna_strand("GCA")
    settings = MDSettings(equilibration_steps=10, production_steps=20, report_interval=10, seed=1)
    frames = sample_duplexes([block], settings, box_padding=4.0)
    assert len(frames) == 2
    for frame in frames:
        assert frame.pbc.all() and "HOH" not in frame.info["residue_name"]
        assert frame.info["parent_id"] == structure_id(block)
        assert len(frame) == len(block)  # solute and its counter-ions, water dropped
        assert np.isfinite(frame.positions).all()
        assert np.all(np.abs(phosphate_distances(frame) - 6.0) < 1.5)
    (trimer,) = extract_fragments(frames[:1], kinds=["rna_trimer"])
    assert trimer.info["parent_id"] == structure_id(frames[0]) and trimer.info["charge"] == 0


def test_a_duplex_is_built_the_same_in_every_process():
    # OpenMM's addHydrogens starts hydrogens at random offsets and relaxes them with non-deterministic
    # force sums; unseeded, two processes built this block 1.8 Å apart (so its id, and every later
    # stage's, changed from run to run). Seeded, importing numpy before openmm still moved the heavy
    # atoms by 4e-15 Å (BLAS results depend on array alignment), which the minimisation made 0.01 Å.
    import random
    import subprocess
    import sys

    script = ("from qcell_nb.blocks.nucleic_acids import build_duplex; from qcell_nb.structures import structure_id; "
              "print(structure_id(build_duplex('GCGC', 'B')))")
    ids = {subprocess.run([sys.executable, "-c", first + script], capture_output=True, text=True,
                          check=True).stdout.strip()
           for first in ("", "", "import numpy; ")}
    random.seed(123)
    expected = random.random()
    random.seed(123)
    from qcell_nb.blocks.nucleic_acids import build_duplex
    from qcell_nb.structures import structure_id

    here = structure_id(build_duplex("GCGC", "B"))
    assert random.random() == expected, "the build changed the caller's random state"
    assert ids == {here}
