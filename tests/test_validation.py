"""Validation helpers on constructed cases with known answers."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.lj import LennardJones
from ase.calculators.singlepoint import SinglePointCalculator
from ase.cluster import Icosahedron

from qcell_nb.validation import errors_by_subset
from qcell_nb.validation.data_checks import flag_outliers, minimum_distance, relative_energies
from qcell_nb.validation.dynamics import energy_drift, run_md


def _labelled(atoms, energy, forces, subset):
    atoms = atoms.copy()
    atoms.info["subset"] = subset
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


def test_outlier_filters_flag_close_atoms_and_large_forces():
    water = molecule("H2O")
    good = _labelled(water, -10.0, np.zeros((3, 3)), "dimers")
    squashed = water.copy()
    squashed.positions[1] = squashed.positions[0] + [0.1, 0, 0]
    close = _labelled(squashed, -10.0, np.zeros((3, 3)), "dimers")
    hot = _labelled(water, -10.0, np.array([[30.0, 0, 0], [0, 0, 0], [-30.0, 0, 0]]), "dimers")
    flagged = flag_outliers([good, close, hot])
    assert [row["index"] for row in flagged] == [1, 2]
    assert "0.100 Å apart" in flagged[0]["reason"] and "30.0 eV/Å" in flagged[1]["reason"]


def test_minimum_distance_of_a_water_dimer():
    dimer = molecule("H2O") + molecule("H2O")
    dimer.positions[3:] += [2.9, 0, 0]
    assert minimum_distance(dimer) == pytest.approx(min(dimer.get_distance(0, 1), 2.9 - 0.7633 * 2), abs=1e-3)


def test_relative_energies_remove_the_composition():
    # Energies that are exactly additive per element leave zero residual.
    structures = [_labelled(molecule(name), e, np.zeros((len(molecule(name)), 3)), "dimers")
                  for name, e in (("H2O", -2 * 1.0 - 5.0), ("CH4", -4 * 1.0 - 7.0), ("CH3OH", -4 - 7.0 - 5.0))]
    assert np.allclose(relative_energies(structures), 0.0, atol=1e-10)


def test_errors_by_subset_group_and_compare_with_the_paper():
    structures = [_labelled(molecule("H2O"), -1.0, np.zeros((3, 3)), "ions_water"),
                  _labelled(molecule("CH4"), -2.0, np.zeros((5, 3)), "carbohydrates")]
    predicted_forces = [np.full((3, 3), 0.1), np.full((5, 3), 0.2)]
    rows = {row["subset"]: row for row in errors_by_subset(structures, np.array([-1.0, -2.0]), predicted_forces,
                                                           n_train={"ions_water": 5, "carbohydrates": 7})}
    assert rows["ions_water"]["force_mae_eV_A"] == pytest.approx(0.1)
    assert rows["carbohydrates"]["force_mae_kcal_mol_A"] == pytest.approx(0.2 / 0.0433641, rel=1e-4)
    assert rows["carbohydrates"]["paper_force_mae_kcal_mol_A"] == 0.5
    assert rows["all"]["n_train"] == 12 and rows["all"]["n_test"] == 2
    assert "dipole_mae_eA" not in rows["all"]  # only with predicted properties


def test_dipole_and_hirshfeld_errors_per_subset_where_labelled():
    water = molecule("H2O")
    water.info.update(subset="ions_water", hirsh_ratios=[0.9, 0.6, 0.6])
    water.calc = SinglePointCalculator(water, energy=-1.0, forces=np.zeros((3, 3)), dipole=[0.0, 0.0, 0.4])
    methane = _labelled(molecule("CH4"), -2.0, np.zeros((5, 3)), "carbohydrates")  # no dipole, no ratios
    predicted = [{"dipole": np.array([0.0, 0.3, 0.1]), "hirshfeld": np.array([0.8, 0.6, 0.9])},
                 {"dipole": np.zeros(3), "hirshfeld": np.ones(5)}]
    rows = {row["subset"]: row for row in errors_by_subset([water, methane], np.array([-1.0, -2.0]),
                                                           [np.zeros((3, 3)), np.zeros((5, 3))],
                                                           predicted_properties=predicted)}
    assert rows["ions_water"]["dipole_mae_eA"] == pytest.approx((0.3 + 0.3) / 3, abs=1e-4)
    assert rows["ions_water"]["hirshfeld_mae"] == pytest.approx((0.1 + 0.3) / 3, abs=1e-4)
    assert rows["carbohydrates"]["dipole_mae_eA"] is None and rows["carbohydrates"]["hirshfeld_mae"] is None
    assert rows["all"]["dipole_mae_eA"] == pytest.approx(0.2, abs=1e-4)  # the unlabelled methane does not count


def test_nve_conserves_energy_and_a_huge_timestep_is_caught():
    cluster = Icosahedron("Ar", noshells=2)
    calculator = LennardJones(sigma=3.4, epsilon=0.0104, rc=10.0, smooth=True)
    stable = run_md(cluster, calculator, steps=400, interval=20, timestep=2.0, temperature=30.0, seed=1)
    assert stable.stable and len(stable.time) == 21 and stable.simulated_ps == pytest.approx(0.8)
    assert abs(energy_drift(stable)) < 0.05  # meV/atom/ps
    unstable = run_md(cluster, LennardJones(sigma=3.4, epsilon=0.0104, rc=10.0, smooth=True), steps=400,
                      interval=5, timestep=200.0, temperature=3000.0, seed=1)
    assert not unstable.stable and "ps" in unstable.reason
    assert unstable.simulated_ps > unstable.time[-1]  # the stretch in which it failed counts, though unsaved


def test_report_tables_come_from_the_run_directory(tmp_path):
    import json
    import shlex
    from pathlib import Path

    from qcell_nb.pipeline.cli import build_parser
    from qcell_nb.pipeline.parameters import parse_overrides

    from qcell_nb.validation.report import write_report

    with pytest.raises(FileNotFoundError, match="no stage has run"):
        write_report(tmp_path)
    stage = tmp_path / "07_validation"
    stage.mkdir()
    (stage / "manifest.json").write_text(json.dumps({"status": "complete", "seconds": 3.2, "counts": {"test": 2}}))
    (stage / "metrics.json").write_text(json.dumps({"per_subset": [{"subset": "dimers", "force_mae_eV_A": 0.123}]}))
    text = write_report(tmp_path).read_text()
    assert "| 07_validation | complete | 3.2 |" in text
    assert "| dimers | 0.123 |" in text and "| 01_building_blocks | not run |" in text
    assert f"--stages 07_validation --force" in text
    assert "## ML/MM" not in text

    # A demo run with one override: the report's command names the profile, the seed and that override.
    (stage / "manifest.json").write_text(json.dumps({
        "status": "complete", "seconds": 3.2, "profile": "demo", "seed": 2,
        "injected": {"droplet_waters": 24, "md_steps": 4000, "nve_steps": 50, "seed": 2, "executor": "serial"}}))
    text = write_report(tmp_path).read_text()
    [command] = [line for line in text.splitlines() if line.startswith("qcell-nb run")]
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert (args.profile, args.seed, args.stages, args.force) == ("demo", 2, ["07_validation"], True)
    assert parse_overrides(args.set) == {"07_validation": {"nve_steps": 50}}
    assert Path(args.runs_dir) / args.run == tmp_path

    training = tmp_path / "06_training"
    training.mkdir()
    (training / "mlmm_metrics.json").write_text(json.dumps({
        "n_train": 5, "n_test": 2, "model": {"qm_force_mae_eV_A": 0.204, "mm_force_mae_eV_A": 0.057},
        "mean_predictor": {"qm_force_mae_eV_A": 4.895, "mm_force_mae_eV_A": 0.405}}))
    text = write_report(tmp_path).read_text()
    assert "5 training and 2 test structures" in text
    assert "| model | 0.204 | 0.057 |" in text and "| mean_predictor | 4.895 | 0.405 |" in text


def _water_dimer_trajectory(oo_distance, n_frames=5):
    from qcell_nb.validation.dynamics import MDResult

    dimer = molecule("H2O") + molecule("H2O")
    dimer.positions[3:] += [oo_distance, 0, 0]
    positions = np.stack([dimer.positions] * n_frames)
    zeros = np.zeros(n_frames)
    return MDResult(positions=positions, cells=np.zeros((n_frames, 3, 3)), time=zeros, potential_energy=zeros,
                    kinetic_energy=zeros, numbers=dimer.numbers)


def test_first_peak_of_a_water_dimer_at_a_known_distance():
    from qcell_nb.validation.ion_md import pair_distance_peak

    _, _, peak = pair_distance_peak(_water_dimer_trajectory(2.91), [0, 3], [0, 3])
    assert peak == pytest.approx(2.91, abs=0.05)


def test_ion_droplet_md_with_gfn2():
    from qcell_nb.calculators.tightbinding import gfn2_calculator
    from qcell_nb.validation.ion_md import ion_droplet_check

    frame = Atoms("Na", positions=[[10.0, 10.0, 10.0]], cell=[20.0] * 3, pbc=True)
    for axis in np.vstack([np.eye(3), -np.eye(3)])[:4]:
        water = molecule("H2O")
        water.rotate([0, 0, 1], axis)  # the C2 axis (along z, H side +z) points away from the ion
        water.positions += frame.positions[0] + 2.4 * axis - water.positions[0]
        frame += water
    frame.info.update(name="Na+", charge=1)
    curves = {}
    row = ion_droplet_check(frame, gfn2_calculator(Atoms("Na", info={"charge": 1})), n_waters=4, steps=40,
                            nve_steps=20, timestep=0.5, seed=0, curves=curves)
    assert row["stable"], row["reason"]
    assert sorted(curves) == ["Na+ Na-O", "Na+ O-O"] and curves["Na+ Na-O"]["r_peak"] == pytest.approx(row["Na-O model"], abs=0.005)
    assert max(curves["Na+ O-O"]["g"]) == 1.0 and len(curves["Na+ O-O"]["r"]) == len(curves["Na+ O-O"]["g"])
    from qcell_nb.blocks.ions_water import plot_rdfs

    fig = plot_rdfs([], rdfs=curves, ylabel="h(r)/r²", source="model")
    [panel_ion, panel_water] = fig.axes
    assert panel_ion.get_lines()[1].get_xdata()[0] == pytest.approx(2.43)  # the experimental line, found by "pair"
    assert panel_water.get_lines()[1].get_xdata()[0] == pytest.approx(2.80)
    assert row["atoms"] == 13 and "nve_drift_meV_atom_ps" in row
    # GFN2-xTB keeps the first shell near its starting 2.4 Å; experiment says 2.43 Å.
    assert abs(row["Na-O model"] - 2.43) < 0.3 and row["Na-O experiment"] == pytest.approx(2.43)


def _rotate_about_link(atoms, torsion, angle):
    """Set ``torsion`` (a, b, c, d) to ``angle`` degrees by turning the part on c's side of the b-c bond."""
    from qcell_nb.blocks.carbohydrates import mol_with_hydrogens

    mol = mol_with_hydrogens(atoms.info["smiles"])
    b, c = torsion[1], torsion[2]
    side, frontier = {c}, [c]
    while frontier:
        for neighbour in mol.GetAtomWithIdx(frontier.pop()).GetNeighbors():
            if neighbour.GetIdx() not in side and neighbour.GetIdx() != b:
                side.add(neighbour.GetIdx())
                frontier.append(neighbour.GetIdx())
    mask = [i in side for i in range(len(atoms))]
    atoms.set_dihedral(*torsion, angle, mask=mask)


def test_glycosidic_exo_anomeric_basin_and_coverage_of_cellobiose():
    from qcell_nb.blocks.glycans import build_named_disaccharide
    from qcell_nb.validation.descriptors import _glycosidic_links, glycosidic_checks, staggered_sector

    assert [staggered_sector(a) for a in (-75.0, 50.0, 170.0, -170.0, 300.0)] == [-60, 60, 180, 180, -60]
    start = build_named_disaccharide("cellobiose")
    [(phi, psi, anti)] = _glycosidic_links(start.info["smiles"])
    assert phi[1:3] == anti[1:3] and phi[3] == anti[3] and psi[:3] == phi[1:]
    frames = []
    for anti_angle, psi_angle in ((180.0, 180.0), (180.0, 60.0), (60.0, 180.0), (300.0, -60.0)):
        atoms = start.copy()
        _rotate_about_link(atoms, anti, anti_angle)  # turns phi with it: phi = anti - 120 or + 120
        _rotate_about_link(atoms, psi, psi_angle)
        frames.append(atoms)
    exo, coverage = glycosidic_checks(frames)
    assert exo["n"] == 4 and exo["mean"] == 0.5  # two of the four have the aglycone anti to C2
    assert coverage["n"] == 1 and coverage["mean"] == 4  # four distinct (phi, psi) basins of one block
    glucose = start.copy()
    glucose.info["smiles"] = "OC[C@H]1O[C@@H](O)[C@H](O)[C@@H](O)[C@@H]1O"
    assert glycosidic_checks([glucose]) == []  # no glycosidic link, no rows


def test_learning_curve_figure_fits_the_slope_of_a_power_law(tmp_path):
    from qcell_nb.validation import plot_learning_curve

    rows = [{"fraction": f, "n_train": n, "force_mae_kcal_mol_A": 8.0 / n, "energy_mae_meV_per_atom": 30.0 / n**0.5}
            for f, n in ((1.0, 40), (0.25, 10), (0.5, 20))]
    fig = plot_learning_curve(rows, tmp_path / "learning_curve.png")
    forces, energies = fig.axes
    assert forces.get_legend().get_texts()[0].get_text() == "test (slope -1.00)"
    assert energies.get_legend().get_texts()[0].get_text() == "test (slope -0.50)"
    assert list(forces.get_lines()[0].get_xdata()) == [10, 20, 40] and (tmp_path / "learning_curve.png").exists()
    with pytest.raises(ValueError, match="learning_curve_fractions"):
        plot_learning_curve([{"fraction": 1.0, "note": "no test set"}])
