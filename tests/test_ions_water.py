"""Ions in water: ion building, minimum-image cluster carving, RDFs, and a short real OPC MD of Na+."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms

from qcell_nb.blocks.ions_water import (
    ION_NAMES, build_ions, carve_cluster, carve_clusters, compare_first_peaks, ion_water_rdfs,
    load_rdf_reference, plot_rdfs, sample_ion_boxes,
)
from qcell_nb.md import MDSettings
from qcell_nb.store import read_structures, write_structures
from qcell_nb.structures import structure_id

# Experimental first-peak positions (Å) of the shared reference file, kept here so the test
# does not depend on a path outside the repository.
REFERENCE = {"Na-O": {"r_peak": 2.43}, "O-O": {"r_peak": 2.80}}

WATER = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]])  # O, H, H (Å)


def test_build_ions_charges_and_errors():
    ions = build_ions(seed=3)
    assert [a.info["name"] for a in ions] == list(ION_NAMES) == ["Na+", "K+", "Cl-", "Mg2+", "Ca2+"]
    assert [a.info["charge"] for a in ions] == [1, 1, -1, 2, 2]
    assert [a.get_chemical_symbols()[0] for a in ions] == ["Na", "K", "Cl", "Mg", "Ca"]
    assert all(a.info["subset"] == "ions_water" and a.info["multiplicity"] == 1 for a in ions)
    with pytest.raises(ValueError, match=r"unknown ion 'Li\+'"):
        build_ions(["Na+", "Li+"])


def _box_with_waters(ion_position, oxygen_offsets, edge=12.0, with_residues=True):
    """A periodic box: one Na+ then waters whose O sit at ``ion + offset``, all wrapped into the cell."""
    numbers, positions = [11], [np.asarray(ion_position, dtype=float)]
    for offset in oxygen_offsets:
        numbers += [8, 1, 1]
        positions += list(WATER + positions[0] + np.asarray(offset))
    frame = Atoms(numbers=numbers, positions=np.array(positions), cell=[edge] * 3, pbc=True)
    frame.wrap()  # splits molecules across the boundary: carving must undo it
    frame.info.update(name="Na+", charge=1, frame=7)
    if with_residues:
        frame.info["residue_index"] = np.array([0] + [1 + k for k in range(len(oxygen_offsets)) for _ in range(3)])
    return frame


@pytest.mark.parametrize("with_residues", [True, False])
def test_carve_picks_nearest_whole_waters_under_minimum_image(with_residues):
    # The ion sits near a corner, so the nearest waters are across the boundary in the stored box.
    offsets = [(-2.5, 0.0, 0.0), (0.0, -3.0, -0.5), (4.0, 0.0, 0.0), (0.0, 0.0, 4.6), (2.0, 3.0, 3.0)]
    frame = _box_with_waters((0.3, 0.4, 0.2), offsets, with_residues=with_residues)
    expected = sorted(np.linalg.norm(offsets, axis=1))

    cluster = carve_cluster(frame, 3)
    assert len(cluster) == 1 + 3 * 3
    assert not cluster.pbc.any()
    assert cluster.get_chemical_symbols() == ["Na"] + ["O", "H", "H"] * 3
    ion_to_oxygen = np.linalg.norm(cluster.positions[1::3] - cluster.positions[0], axis=1)
    np.testing.assert_allclose(ion_to_oxygen, expected[:3], atol=1e-9)
    # Every water is whole with its original geometry.
    for k in range(3):
        water = cluster.positions[1 + 3 * k:4 + 3 * k]
        np.testing.assert_allclose(np.linalg.norm(water[1:] - water[0], axis=1),
                                   np.linalg.norm(WATER[1:], axis=1), atol=1e-9)
    np.testing.assert_allclose(cluster.get_center_of_mass(), 0.0, atol=1e-9)
    assert cluster.info["charge"] == 1 and cluster.info["multiplicity"] == 1
    assert cluster.info["name"] == "Na+(H2O)3" and cluster.info["n_waters"] == 3
    assert cluster.info["parent_id"] == structure_id(frame)
    assert cluster.info["shell_radius"] == pytest.approx(expected[2])


def test_carve_errors_and_seeded_sizes():
    frame = _box_with_waters((0.3, 0.4, 0.2), [(-2.5, 0.0, 0.0), (0.0, 5.0, 4.0)])
    with pytest.raises(ValueError, match="has 2 waters"):
        carve_cluster(frame, 3)
    with pytest.raises(ValueError, match="beyond half the box width"):
        carve_cluster(frame, 2)  # the second water is 6.4 Å away in a 12 Å box
    frames = [_box_with_waters((1.0, 1.0, 1.0), [(2.5 + 0.1 * k, 0, 0), (0, 3.0, 0), (0, 0, -3.5), (3, 3, 0)])
              for k in range(4)]
    first = carve_clusters(frames, n_waters=(1, 2, 3, 4), max_per_frame=2, seed=5)
    again = carve_clusters(frames, n_waters=(1, 2, 3, 4), max_per_frame=2, seed=5)
    assert len(first) == 8
    assert [c.info["n_waters"] for c in first] == [c.info["n_waters"] for c in again]
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(first, again))
    assert len(carve_clusters(frames[:1], n_waters=(4, 1, 2))) == 3


def test_rdf_of_a_simple_cubic_lattice():
    # Na on one site of a simple cubic lattice of O (spacing 3.13 Å): both first peaks sit at the
    # lattice spacing and the first shell holds the 6 nearest neighbours.
    spacing, n = 3.13, 5
    grid = np.array([[i, j, k] for i in range(n) for j in range(n) for k in range(n)], dtype=float) * spacing
    numbers = np.full(len(grid), 8)
    numbers[0] = 11
    frame = Atoms(numbers=numbers, positions=grid, cell=[n * spacing] * 3, pbc=True)
    rdfs = ion_water_rdfs([frame, frame.copy()])
    assert set(rdfs) == {"Na-O", "O-O"}
    for pair in ("Na-O", "O-O"):
        assert rdfs[pair]["r_peak"] == pytest.approx(spacing, abs=0.05)
    r, g = rdfs["Na-O"]["r"], rdfs["Na-O"]["g"]
    edges = np.concatenate([[0.0], 0.5 * (r[1:] + r[:-1]), [r[-1] + 0.5 * (r[1] - r[0])]])
    density = (len(frame) - 1) / frame.get_volume()
    first_shell = (r < 3.5)
    coordination = np.sum(g[first_shell] * density * 4 / 3 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)[first_shell])
    assert coordination == pytest.approx(6.0, abs=1e-6)
    # The first minimum lies between the 6 nearest (3.13 Å) and the 12 next-nearest (4.43 Å) sites.
    assert 3.13 < rdfs["Na-O"]["r_min"] < 4.43
    assert rdfs["Na-O"]["coordination"] == pytest.approx(6.0, abs=1e-6)
    assert rdfs["O-O"]["coordination"] == pytest.approx(6.0, abs=1e-6)
    comparison = compare_first_peaks(rdfs, REFERENCE)
    assert comparison["Na-O"]["difference"] == pytest.approx(rdfs["Na-O"]["r_peak"] - 2.43)


def test_reference_loader(tmp_path):
    builtin = load_rdf_reference()
    assert builtin["Na-O"]["r_peak"] == 2.43 and builtin["Cl-O"]["r_peak"] == 3.16 and len(builtin) == 6
    path = tmp_path / "ref.json"
    path.write_text(json.dumps({"description": "x", "Na-O": {"r_peak": 2.43, "source": "s"}}))
    assert load_rdf_reference(path) == {"Na-O": {"r_peak": 2.43, "source": "s"}}
    path.write_text(json.dumps({"description": "x"}))
    with pytest.raises(ValueError, match="no entry"):
        load_rdf_reference(path)


def test_na_in_opc_water_md_first_peaks_and_clusters(tmp_path):
    # A short real MD of Na+ in a 19 Å OPC box (~210 waters, 1.2 ps, 20 frames). OPC with its
    # Li/Merz 12-6 Na+ (HFE set) gives a Na-O first peak at 2.425 Å over 12 ps (120 frames) and
    # 2.375 Å from these 20 frames (0.05 Å bins); experiment: 2.43 Å.
    ions = build_ions(["Na+"])
    settings = MDSettings(equilibration_steps=200, production_steps=600, report_interval=30, threads=1)
    frames = sample_ion_boxes(ions, box_size=19.0, settings=settings, seed=0)
    assert len(frames) == 20
    assert frames[0].pbc.all() and frames[0].get_chemical_symbols()[0] == "Na"
    assert set(frames[0].get_chemical_symbols()[1:]) == {"O", "H"}  # OPC's virtual sites are dropped
    assert frames[0].info["parent_id"] == structure_id(ions[0])

    rdfs = ion_water_rdfs(frames)
    assert abs(rdfs["Na-O"]["r_peak"] - REFERENCE["Na-O"]["r_peak"]) < 0.2
    assert abs(rdfs["O-O"]["r_peak"] - REFERENCE["O-O"]["r_peak"]) < 0.2
    # OPC/Li-Merz Na+ holds 5 waters in its first shell in this run (experiment: 6).
    assert 4.5 <= rdfs["Na-O"]["coordination"] <= 6.5
    figure = plot_rdfs(frames, path=tmp_path / "rdf.png", rdfs=rdfs)
    assert (tmp_path / "rdf.png").stat().st_size > 0 and len(figure.axes) == 2

    # Frames survive the store and are carved into intact clusters whose first water is in the first shell.
    write_structures(tmp_path / "frames.db", frames[:2])
    stored = read_structures(tmp_path / "frames.db")
    clusters = carve_clusters(stored, n_waters=(1, 4, 20))
    assert [len(c) for c in clusters] == [4, 13, 61, 4, 13, 61]
    for cluster in clusters:
        assert cluster.info["charge"] == 1
        oxygens = cluster.positions[1::3]
        for hydrogen_offset in (1, 2):
            np.testing.assert_allclose(np.linalg.norm(cluster.positions[1 + hydrogen_offset::3] - oxygens, axis=1),
                                       0.8724, atol=1e-3)  # OPC's rigid O-H length
        assert np.linalg.norm(oxygens[0] - cluster.positions[0]) < 2.8


def test_md_is_reproducible_under_the_seed_and_models_are_named():
    # Bit-for-bit: OpenMM's CPU platform sums forces in a fixed order while ions are sampled.
    settings = MDSettings(equilibration_steps=0, production_steps=40, report_interval=20, threads=1)
    ion = build_ions(["Cl-"])
    first = sample_ion_boxes(ion, box_size=12.0, settings=settings, seed=2, water_model="tip3p", cutoff=6.0)
    again = sample_ion_boxes(ion, box_size=12.0, settings=settings, seed=2, water_model="tip3p", cutoff=6.0)
    assert [structure_id(f) for f in first] == [structure_id(f) for f in again]
    assert first[0].info["water_model"] == "TIP3P" and first[0].info["charge"] == -1
    with pytest.raises(ValueError, match="unknown water model 'mbpol'"):
        sample_ion_boxes(ion, settings=settings, water_model="mbpol")
    with pytest.raises(ValueError, match="box_size=15.0 Å: must be at least twice the 9.0 Å cutoff"):
        sample_ion_boxes(ion, box_size=15.0, settings=settings)


def test_sampling_rejects_bad_inputs_before_running():
    npt = MDSettings(pressure=1.0, equilibration_steps=0, production_steps=20, report_interval=20)
    with pytest.raises(ValueError, match="box_size=18.5 Å at constant pressure"):
        sample_ion_boxes(build_ions(["Na+"]), box_size=18.5, settings=npt)
    stray = build_ions(["Na+"])[0]
    stray.info["name"] = "Zn2+"
    with pytest.raises(ValueError, match=r"unknown ion 'Zn2\+'"):
        sample_ion_boxes([build_ions(["Na+"])[0], stray], box_size=20.0, settings=npt)
