"""GFN2-xTB through tblite: single points, optimisation frames, clear failures."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.calculator import Calculator, all_changes

from qcell_nb.blocks import build_monosaccharide
from qcell_nb.calculators import tightbinding
from qcell_nb.calculators.tightbinding import optimise, single_point_energy
from qcell_nb.structures import structure_id

pytest.importorskip("tblite")


def named(formula: str, name: str) -> Atoms:
    atoms = molecule(formula)
    atoms.info.update(name=name, charge=0, multiplicity=1)
    return atoms


def test_water_relaxes_to_a_plausible_geometry():
    water = named("H2O", "water")
    start = water.positions.copy()
    frames = optimise(water, fmax=0.01, steps=100)
    assert len(frames) == 1
    final = frames[-1]
    assert final.info["converged"] is True
    assert final.info["xtb_fmax"] < 0.01
    # GFN2-xTB water: r(O-H) ~0.96 Å, angle a few degrees above experiment's 104.5°.
    for hydrogen in (1, 2):
        assert 0.95 < final.get_distance(0, hydrogen) < 0.975
    assert 100.0 < final.get_angle(1, 0, 2) < 110.0
    np.testing.assert_array_equal(water.positions, start)  # input untouched
    assert water.calc is None


def test_frames_along_the_path():
    methanol = named("CH3OH", "methanol")
    methanol.positions[0] += [0.15, 0.0, 0.0]  # stretch C-O so the path has several steps
    parent = structure_id(methanol)
    frames = optimise(methanol, keep_frames=3)
    indices = [frame.info["frame"] for frame in frames]
    assert len(frames) == 3 and indices[0] == 0 and indices == sorted(indices)
    assert len(set(indices)) == 3
    energies = [frame.info["xtb_energy"] for frame in frames]
    assert np.all(np.isfinite(energies)) and energies[-1] == min(energies)
    assert energies[0] == pytest.approx(single_point_energy(methanol), abs=1e-6)
    for frame in frames:
        assert frame.info["name"] == "methanol"
        assert frame.info["parent_id"] == parent
        assert frame.info["converged"] is True
    np.testing.assert_allclose(frames[0].positions, methanol.positions)
    # keep_frames=1 gives only the relaxed structure, the same as the last frame above.
    (only,) = optimise(methanol, keep_frames=1)
    np.testing.assert_allclose(only.positions, frames[-1].positions)
    assert only.info["frame"] == frames[-1].info["frame"]


def test_unconverged_run_is_flagged():
    water = named("H2O", "water")
    water.positions[1] += [0.3, 0.0, 0.0]
    frames = optimise(water, fmax=1e-4, steps=1, keep_frames=5)
    assert frames[-1].info["converged"] is False
    assert [frame.info["frame"] for frame in frames] == [0, 1]


def test_glucose_relaxes():
    glucose = build_monosaccharide("beta-D-glucopyranose")
    (final,) = optimise(glucose, fmax=0.05, steps=300)
    assert final.info["converged"] is True
    assert final.info["xtb_energy"] < single_point_energy(glucose)
    assert final.info["smiles"] == glucose.info["smiles"]


def test_charge_and_multiplicity_from_info():
    hydroxyl = Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]], info={"name": "hydroxyl radical"})
    assert np.isfinite(single_point_energy(hydroxyl))  # odd electron count: doublet by default
    hydroxide = hydroxyl.copy()
    hydroxide.info.update(name="hydroxide", charge=-1, multiplicity=1)
    assert single_point_energy(hydroxide) != pytest.approx(single_point_energy(hydroxyl))


def test_impossible_spin_names_the_structure():
    water = named("H2O", "water")
    water.info["multiplicity"] = 2
    with pytest.raises(RuntimeError, match="water"):
        single_point_energy(water)


def test_scf_failure_names_the_structure():
    with pytest.raises(RuntimeError, match="stubborn water.*SCF"):
        optimise(named("H2O", "stubborn water"), max_iterations=1)


def test_overlapping_atoms_are_rejected():
    bad = Atoms("OHH", positions=[[0, 0, 0], [0, 0, 0.1], [0, 0.9, 0]], info={"name": "crushed"})
    with pytest.raises(ValueError, match="crushed"):
        single_point_energy(bad)


class _NaNCalculator(Calculator):
    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": float("nan"), "forces": np.zeros((len(self.atoms), 3))}


def test_non_finite_energy_names_the_structure(monkeypatch):
    monkeypatch.setattr(tightbinding, "gfn2_calculator", lambda atoms, **kw: _NaNCalculator())
    with pytest.raises(RuntimeError, match="non-finite.*'nan water'"):
        optimise(named("H2O", "nan water"))


def test_bad_arguments():
    water = named("H2O", "water")
    with pytest.raises(ValueError, match="keep_frames"):
        optimise(water, keep_frames=0)
    with pytest.raises(ValueError, match="fmax"):
        optimise(water, fmax=0)


# --- GFN2-xTB + MBD and the common interface ---------------------------------------------------


def water_dimer() -> Atoms:
    from ase.collections import s22

    dimer = s22["Water_dimer"]  # the S22 reference geometry
    dimer.info.update(name="water dimer", charge=0, multiplicity=1)
    return dimer


def test_gfn2_mbd_energy_is_gfn2_without_d4_plus_mbd():
    from qcell_nb.calculators.mbd import mbd_energy

    dimer = water_dimer()
    combined = tightbinding.tight_binding_calculator(dimer, mbd=True)
    energy = combined.get_potential_energy(dimer)
    bare = dimer.copy()
    bare.calc = tightbinding.gfn2_calculator(dimer, dispersion=False)
    e_bare = bare.get_potential_energy()
    ratios = tightbinding.charge_population_ratios(dimer.numbers, bare.get_charges())
    e_mbd = mbd_energy(dimer.positions, dimer.numbers, ratios, beta=tightbinding.TB_MBD_BETA)
    assert energy == pytest.approx(e_bare + e_mbd, abs=1e-8)
    assert combined.results["mbd_energy"] == pytest.approx(e_mbd, abs=1e-10)
    np.testing.assert_allclose(combined.results["volume_ratios"], ratios)
    # CPA ratios: H gave electrons away (ratio < 1), O gained (> 1)
    assert np.all(ratios[dimer.numbers == 1] < 1) and np.all(ratios[dimer.numbers == 8] > 1)
    # D4 really was removed: plain GFN2 is lower by its (attractive) D4 energy, tens of meV here
    d4 = single_point_energy(dimer) - e_bare
    assert -0.1 < d4 < -0.005
    assert -0.2 < e_mbd < -0.005


@pytest.mark.parametrize("ratios, tolerance", [("fixed", 2e-4), ("charges", 2e-3)])
def test_gfn2_mbd_forces_match_finite_differences(ratios, tolerance):
    # Fixed ratios: forces are the exact gradient (measured error 6e-5 eV/Å, the SCC noise at
    # accuracy 0.01). CPA ratios follow the charges, whose geometry dependence the MBD forces
    # neglect: measured 4e-4 eV/Å.
    dimer = water_dimer()
    mbd_ratios = np.where(dimer.numbers == 1, 0.6, 0.9) if ratios == "fixed" else "charges"

    def calc():
        return tightbinding.tight_binding_calculator(dimer, mbd=True, mbd_ratios=mbd_ratios, accuracy=0.01)

    dimer.calc = calc()
    forces = dimer.get_forces()
    step = 1e-3
    for i, k in [(0, 0), (1, 1), (4, 0), (5, 2)]:
        energies = []
        for sign in (1, -1):
            shifted = dimer.copy()
            shifted.positions[i, k] += sign * step
            shifted.calc = calc()
            energies.append(shifted.get_potential_energy())
        assert forces[i, k] == pytest.approx(-(energies[0] - energies[1]) / (2 * step), abs=tolerance)


def test_water_dimer_optimises_with_mbd():
    dimer = water_dimer()
    frames = optimise(dimer, fmax=0.01, steps=200, keep_frames=2, mbd=True)
    final = frames[-1]
    assert final.info["converged"] is True and final.info["xtb_fmax"] < 0.01
    assert final.info["tb_method"] == "GFN2-xTB(-D4)+MBD@rsSCS"
    assert frames[0].info["xtb_energy"] > final.info["xtb_energy"]
    # hydrogen-bonded O...O distance (S22 reference 2.91 Å; GFN2 binds it a little tighter)
    assert 2.75 < final.get_distance(0, 3) < 3.0
    assert final.info["xtb_energy"] == pytest.approx(single_point_energy(final, mbd=True), abs=1e-6)


def test_unknown_method_and_bad_ratios():
    water = named("H2O", "water")
    with pytest.raises(ValueError, match="'dftb2'"):
        tightbinding.tight_binding_calculator(water, method="dftb2")
    with pytest.raises(ValueError, match="'hirshfeld'"):
        tightbinding.tight_binding_calculator(water, mbd=True, mbd_ratios="hirshfeld")
    with pytest.raises(ValueError, match="shape"):
        tightbinding.charge_population_ratios([8, 1, 1], [0.1, 0.2])


def test_preoptimise_passes_method_and_mbd():
    from qcell_nb.preoptimisation import preoptimise

    assert tightbinding.resolve_method("gfn2-xtb") == "gfn2-xtb"
    if tightbinding.resolve_method("auto") == "gfn2-xtb":  # no DFTB+ here
        with pytest.raises(ValueError, match="'xtb'"):
            preoptimise([water_dimer()], method="xtb", progress=False)
    frames, failures = preoptimise([water_dimer(), named("H2O", "water")], mbd=True, fmax=0.02,
                                   progress=False)
    assert failures == []
    assert [f.info["tb_method"] for f in frames] == ["GFN2-xTB(-D4)+MBD@rsSCS"] * 2
    assert all(f.info["converged"] for f in frames)


def test_fixed_subsets_get_a_single_point_not_an_optimisation():
    from ase.build import molecule

    from qcell_nb.preoptimisation import preoptimise

    scan_point = molecule("H2O") + molecule("H2O")
    scan_point.positions[3:] += [3.5, 0, 0]
    scan_point.info.update(subset="dimers", name="water...water")
    strained = molecule("H2O")
    strained.positions[1] *= 1.1
    strained.info.update(subset="ions_water", name="water")
    frames, failures = preoptimise([scan_point, strained], steps=50, keep_frames=1, fixed_subsets=["dimers"],
                                   progress=False)
    assert not failures and [f.info["name"] for f in frames] == ["water...water", "water"]
    assert np.allclose(frames[0].positions, scan_point.positions) and "xtb_energy" in frames[0].info
    assert not np.allclose(frames[1].positions, strained.positions)


def test_cpa_counts_valence_electrons_so_a_cation_loses_its_polarisability():
    assert tightbinding.valence_electrons([1, 6, 8, 11, 12, 17, 19, 20, 35]).tolist() == [1, 4, 6, 1, 2, 7, 1, 2, 7]
    # Na+ in water carries about +0.8 e: its valence shell is mostly gone. With all 11 electrons as the
    # reference it kept 93% of the free atom's 163 bohr^3 and GFN2+MBD optimisations of Na+(H2O)n collapsed.
    ratios = tightbinding.charge_population_ratios([11, 8, 1], [0.8, -0.6, 0.3])
    np.testing.assert_allclose(ratios, [0.2, 1.1, 0.7])
    with pytest.raises(ValueError, match="Z = 1-86"):
        tightbinding.valence_electrons([0, 8])


def test_preoptimise_checkpoints_each_structure_and_recomputes_only_failures(tmp_path, monkeypatch):
    from ase.build import molecule

    from qcell_nb import preoptimisation

    water, methane = named("H2O", "water"), named("CH4", "methane")
    broken = molecule("H2O")
    broken.positions[1] = broken.positions[0] + [0.05, 0, 0]  # atoms 0.05 Å apart
    broken.info.update(name="collapsed water", subset="ions_water")
    frames, failures = preoptimisation.preoptimise([water, broken, methane, water], keep_frames=2,
                                                   progress=False, checkpoint=tmp_path)
    assert [f["item"] for f in failures] == ["collapsed water"] and failures[0]["subset"] == "ions_water"
    assert failures[0]["sid"] == structure_id(broken) and "apart" in failures[0]["error"]
    assert len(list(tmp_path.rglob("*.db"))) == 2  # one checkpoint per structure that finished
    names = [f.info["name"] for f in frames]
    assert names == ["water", "water", "methane", "methane"]  # input order, the duplicate computed once

    calls = []
    real = tightbinding.optimise
    monkeypatch.setattr(tightbinding, "optimise", lambda atoms, **kw: calls.append(atoms.info["name"]) or real(atoms, **kw))
    again, failures_again = preoptimisation.preoptimise([water, broken, methane], keep_frames=2, progress=False,
                                                        checkpoint=tmp_path)
    assert set(calls) == {"collapsed water"} and len(failures_again) == 1  # (retried once: map_items retries)
    assert [f.info["name"] for f in again] == names
    assert all(np.allclose(a.positions, b.positions) for a, b in zip(again, frames))
