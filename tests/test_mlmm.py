"""ML/MM training structures: Na+ and waters in a TIP3P box, QM/MM labels, a tiny ML/MM model."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from openmm import app
from scipy.spatial.distance import pdist

from qcell_nb.blocks.ions_water import carve_cluster
from qcell_nb.calculators.qmmm import TIP3P_CHARGES
from qcell_nb.md import atoms_from_topology, solvate
from qcell_nb.mlmm import (carve_mlmm, label_mlmm, label_mlmm_missing, mlmm_forces, molecules_of, qm_region_indices,
                           restore_mm_charges, split_qm_mm)
from qcell_nb.store import Dataset, read_structures, write_structures
from qcell_nb.structures import structure_id

FAST = dict(basis="sto-3g", mbd=None, grid_level=1)


@pytest.fixture(autouse=True)
def free_atom_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("QCELL_NB_CACHE", str(tmp_path_factory.getbasetemp() / "qcell_cache"))


@pytest.fixture(scope="module")
def frame() -> Atoms:
    """Na+ at a corner of a 12 Å periodic box of OpenMM's pre-equilibrated TIP3P water: its shell crosses the box."""
    forcefield = app.ForceField("amber14/tip3p.xml")
    topology = app.Topology()
    residue = topology.addResidue("NA", topology.addChain())
    topology.addAtom("NA", app.Element.getBySymbol("Na"), residue)
    solvated, positions = solvate(topology, np.zeros((1, 3)), forcefield, (12.0,) * 3, neutralize=False)
    return atoms_from_topology(solvated, positions, info={"name": "Na+", "charge": 1, "subset": "ions_water"})


def test_carved_structure_is_the_ion_cluster_in_whole_tip3p_waters(frame):
    structure = carve_mlmm(frame, n_qm_waters=2, mm_radius=4.0)
    n_qm, n_mm = structure.info["n_qm"], structure.info["n_mm"]
    assert n_qm == 7 and n_mm == 3 * structure.info["n_mm_molecules"] and n_mm >= 30
    assert structure.get_chemical_symbols()[:7] == ["Na", "O", "H", "H", "O", "H", "H"]
    assert np.all(structure.numbers[7:] == 0) and not structure.pbc.any()
    # the QM region is exactly the ion-water cluster of stage 03
    cluster = carve_cluster(frame, 2)
    np.testing.assert_allclose(np.sort(pdist(structure.positions[:7])), np.sort(pdist(cluster.positions)), atol=1e-9)
    # TIP3P charges on the sites, O H H per whole, neutral water; none on QM atoms
    charges = structure.arrays["mm_charges"]
    assert np.all(charges[:7] == 0)
    np.testing.assert_allclose(charges[7:].reshape(-1, 3), [[TIP3P_CHARGES["O"], TIP3P_CHARGES["H"],
                                                            TIP3P_CHARGES["H"]]] * structure.info["n_mm_molecules"])
    assert structure.info["mm_elements"][:3] == ["O", "H", "H"]
    sites = structure.positions[7:].reshape(-1, 3, 3)
    oh = np.linalg.norm(sites[:, 1:] - sites[:, :1], axis=2)
    np.testing.assert_allclose(oh, 0.9572, atol=1e-3)  # rigid TIP3P: no water split by the box
    nearest = np.linalg.norm(sites[:, :, None] - structure.positions[None, None, :7], axis=3).min(axis=(1, 2))
    assert nearest.max() < 4.0 and nearest.min() > 1.0
    # every water of the box within the radius is there: count independently under the minimum image
    from ase.geometry import get_distances
    waters = [m for m in molecules_of(frame) if len(m) == 3]
    qm = qm_region_indices(frame, 2)
    within = sum(get_distances(frame.positions[m], frame.positions[qm], frame.cell, frame.pbc)[1].min() < 4.0
                 for m in waters if not np.isin(m, qm).any())
    assert within == structure.info["n_mm_molecules"]
    assert structure.info["charge"] == 1 and structure.info["name"].startswith("Na+(H2O)2+MM")
    # molecules from bonds (no residue table) give the same structure
    bare = frame.copy()
    del bare.info["residue_index"]
    np.testing.assert_allclose(carve_mlmm(bare, 2, 4.0).positions, structure.positions)
    # after a dataset round trip the charges come back from info
    qm_atoms, mm_positions, mm_charges = split_qm_mm(structure)
    assert len(qm_atoms) == 7 and mm_positions.shape == (n_mm, 3) and mm_charges.sum() == pytest.approx(0, abs=1e-9)


def test_carve_errors(frame):
    with pytest.raises(ValueError, match="half-width"):
        carve_mlmm(frame, 2, mm_radius=6.5)
    with pytest.raises(ValueError, match="n_waters=500"):
        carve_mlmm(frame, 500, 3.0)
    nearest_water = [int(qm_region_indices(frame, 1)[1])]
    with pytest.raises(ValueError, match="outside the QM region.*pass charge="):
        carve_mlmm(frame, 0, 3.5, core=nearest_water)
    with pytest.raises(ValueError, match="not a water; pass charges="):
        carve_mlmm(frame, 0, 3.5, core=nearest_water, charge=0)  # the Na+ falls into MM
    with pytest.raises(ValueError, match="MM sites .* no mm_charges"):
        restore_mm_charges(Atoms([8, 0], positions=[[0, 0, 0], [3, 0, 0]]))


def test_stage_05_carves_ion_box_frames_labels_them_apart_and_records_a_bad_frame(frame, tmp_path):
    from qcell_nb.mlmm_stage import label_mlmm_stage, read_mlmm_dataset

    run = tmp_path / "run"
    small = frame.copy()  # a box too small for the MM radius: carving fails, the stage goes on
    small.set_cell([5.0, 5.0, 5.0])
    small.info["name"] = "Na+ small box"
    write_structures(run / "02_sampling" / "structures.db", [frame, small])
    # three asked, two frames: each picked once, the i-th with qm_waters[i % 2] QM waters
    counts = label_mlmm_stage(run, 3, [1, 0], 3.0, seed=1, executor="serial", progress=False, **FAST)
    assert counts == {"mlmm_rows": 1, "mlmm_computed_now": 1, "mlmm_failed": 1}
    stage = run / "05_reference"
    assert not (stage / "dataset.db").exists()  # the main dataset gets no MM pseudo-atoms
    (failure,) = Dataset(stage / "mlmm.db").failures()
    assert failure["sid"] == structure_id(small) and "half-width" in failure["error"]
    (row,) = read_mlmm_dataset(run)
    n_qm = row.info["n_qm"]
    assert n_qm == 4 and row.info["charge"] == 1 and row.info["parent_id"] == structure_id(frame)
    assert np.all(row.numbers[n_qm:] == 0) and row.info["n_mm"] > 0
    np.testing.assert_allclose(row.arrays["mm_charges"][n_qm:].reshape(-1, 3)[:, 0], TIP3P_CHARGES["O"])
    assert row.get_forces().shape == (len(row), 3) and np.abs(row.get_forces()[n_qm:]).max() > 1e-3
    # a rerun (resume) computes nothing again; the bad frame is still reported
    again = label_mlmm_stage(run, 3, [1, 0], 3.0, seed=1, executor="serial", progress=False, **FAST)
    assert again == {"mlmm_rows": 1, "mlmm_computed_now": 0, "mlmm_failed": 1}
    assert label_mlmm_stage(run, 0, [1], 3.0) == {}
    # a run without stage 02's ion boxes (stage 05 fed by hand) has nothing to carve and fails nothing
    assert label_mlmm_stage(tmp_path / "bare", 3, [1], 3.0)["mlmm_failed"] == 0
    assert not (tmp_path / "bare" / "05_reference" / "mlmm.db").exists()


def far_waters(frame: Atoms, distance: float = 5.0) -> list[np.ndarray]:
    """Waters whose oxygen is farther than ``distance`` Å from the ion (minimum image)."""
    from ase.geometry import get_distances
    return [m for m in molecules_of(frame) if len(m) == 3
            and get_distances(frame.positions[m[0]], frame.positions[0], frame.cell, frame.pbc)[1].min() > distance]


def test_labels_forces_on_mm_charges_are_energy_gradients(frame):
    params = dict(FAST, conv_tol=1e-11, conv_tol_grad=1e-7)  # tight SCF for finite differences
    # a QM water in its TIP3P neighbours (cheap enough for finite differences)
    structure = carve_mlmm(frame, 0, 3.0, core=[int(far_waters(frame)[0][0])], charge=0)
    n_qm, n = structure.info["n_qm"], len(structure)
    labelled = label_mlmm(structure, **params)
    forces = labelled.get_forces()
    assert forces.shape == (n, 3) and np.all(np.isfinite(forces))
    assert labelled.get_charges().shape == (n,) and labelled.info["hirsh_ratios"].shape == (n,)
    np.testing.assert_allclose(labelled.get_charges()[n_qm:], structure.arrays["mm_charges"][n_qm:])
    assert np.abs(forces[n_qm:]).max() > 1e-2  # the QM water's field pushes the charges
    # translating everything leaves the energy unchanged: QM and MM forces cancel
    assert np.abs(forces.sum(axis=0)).max() < 1e-3
    step = 1e-3
    oxygen, hydrogen = n_qm, n_qm + 4
    for atom, axis in [(oxygen, 0), (hydrogen, 2)]:
        energies = []
        for sign in (1, -1):
            moved = structure.copy()
            moved.positions[atom, axis] += sign * step
            energies.append(label_mlmm(moved, **params).get_potential_energy())
        assert forces[atom, axis] == pytest.approx(-(energies[0] - energies[1]) / (2 * step), abs=2e-4)


@pytest.fixture(scope="module")
def labelled_set(frame, tmp_path_factory) -> list[Atoms]:
    """QM waters away from the ion (in TIP3P waters) and Na+ with 0 or 1 QM water, through a dataset."""
    structures = [carve_mlmm(frame, 0, 3.0, core=[int(m[0])], charge=0) for m in far_waters(frame)[:4]]
    structures += [carve_mlmm(frame, n, 3.0) for n in (0, 1)]
    dataset = Dataset(tmp_path_factory.mktemp("mlmm") / "mlmm.db")
    summary = label_mlmm_missing(structures, dataset, progress=False, **FAST)
    assert summary.succeeded == 6 and not summary.failed
    assert label_mlmm_missing(structures, dataset, progress=False, **FAST).submitted == 0  # resumable
    assert dataset.metadata["level_of_theory"] == "PBE0/sto-3g (PySCF DF)"
    rows = {structure_id(a): a for a in dataset.structures()}
    labelled = [restore_mm_charges(rows[structure_id(s)]) for s in structures]
    for row, structure in zip(labelled, structures):
        np.testing.assert_array_equal(row.arrays["mm_charges"], structure.arrays["mm_charges"])
        assert row.get_forces().shape == (len(structure), 3) and len(row.info["hirsh_ratios"]) == len(structure)
    return labelled


def test_tiny_mlmm_model_gives_qm_and_mm_forces_and_feels_the_charges(labelled_set, tmp_path):
    import json

    from qcell_nb.mlmm_stage import train_mlmm_stage
    from qcell_nb.model import load_model

    # Stage 06's ML/MM helper, one batch of all five training structures: one array shape, so JAX
    # compiles the step once (each compilation costs tens of seconds on a loaded CPU). Dispersion
    # off: MM sites carry none, so it tests nothing here and only adds compile time.
    metrics = train_mlmm_stage(labelled_set, tmp_path, split={"train": [0, 1, 2, 3, 4], "val": [], "test": [5]},
                               epochs=3, batch_size=5, features=8, num_iterations=1, num_basis_functions=8,
                               max_degree=1, dispersion=False, seed=0)
    assert json.loads((tmp_path / "mlmm_metrics.json").read_text()) == metrics
    assert (tmp_path / "mlmm_parity.png").exists()
    result = load_model(tmp_path / "mlmm_model")
    structure = labelled_set[5]
    out = mlmm_forces(result, structure)
    n_qm = structure.info["n_qm"]
    # the helper's QM and MM errors are those of the QM and MM parts of the prediction
    assert (metrics["n_test_qm_atoms"], metrics["n_test_mm_sites"]) == (n_qm, len(structure) - n_qm)
    reference = structure.get_forces()
    assert metrics["model"]["qm_force_mae_eV_A"] == pytest.approx(
        np.abs(out["qm_forces"] - reference[:n_qm]).mean(), abs=2e-5)
    assert metrics["model"]["mm_force_mae_eV_A"] == pytest.approx(
        np.abs(out["mm_forces"] - reference[n_qm:]).mean(), abs=2e-5)
    mean_mm = np.concatenate([a.get_forces()[a.info["n_qm"]:] for a in labelled_set[:5]]).mean(axis=0)
    assert metrics["mean_predictor"]["mm_force_mae_eV_A"] == pytest.approx(
        np.abs(reference[n_qm:] - mean_mm).mean(), abs=2e-5)
    assert out["qm_forces"].shape == (n_qm, 3) and out["mm_forces"].shape == (len(structure) - n_qm, 3)
    assert np.isfinite(out["energy"]) and np.all(np.isfinite(out["qm_forces"])) and np.all(np.isfinite(out["mm_forces"]))
    assert np.abs(out["mm_forces"]).max() > 1e-4
    assert out["qm_charges"].sum() == pytest.approx(1.0, abs=1e-4)  # the ion's charge, conserved
    # moving one MM charge changes the energy
    moved = structure.copy()
    moved.positions[n_qm] += [0.3, 0.0, 0.0]
    assert abs(mlmm_forces(result, moved)["energy"] - out["energy"]) > 1e-5
    # a dataset round trip (charges through info) gives the same prediction
    write_structures(tmp_path / "mlmm.db", [structure])
    (back,) = read_structures(tmp_path / "mlmm.db")
    assert "mm_charges" not in back.arrays
    again = mlmm_forces(result, back)
    assert again["energy"] == pytest.approx(out["energy"], abs=1e-5)
    np.testing.assert_allclose(again["mm_forces"], out["mm_forces"], atol=1e-5)
