"""Symmetries, forces, charges and the physical terms of the SO3LR-style model.

The model here is freshly initialised (random parameters: a non-trivial
function of the geometry with nonzero charges and every energy term on) and
evaluated in float64 (``jax.enable_x64``), so symmetry and
finite-difference checks are tight. Every prediction in this module has the
same padded shape (4 molecule slots, 32 atoms, 128 pairs, 128 long-range
pairs), so the module compiles the prediction function once.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

from qcell_nb.model import (MLCalculator, ModelConfig, bucket_size, collate, fit_baseline, make_samples,
                            neighbour_pairs, predict, predict_properties, samples_for)
from qcell_nb.model.data import EnergyBaseline
from qcell_nb.model.network import SO3LRModel, coulomb_kernel, init_params
from qcell_nb.model.training import TrainedModel, _device_batch

BATCH = 4


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _methanol(seed: int, charge: int = 0) -> Atoms:
    atoms = molecule("CH3OH")
    atoms.positions += np.random.default_rng(seed).normal(0.0, 0.05, atoms.positions.shape)
    atoms.info["charge"] = charge
    return atoms


@pytest.fixture(scope="module")
def model() -> TrainedModel:
    """A randomly initialised model with every term on (elements H, C, O)."""
    config = ModelConfig(avg_num_neighbors=5.0)
    baseline = EnergyBaseline({1: -13.6, 6: -1030.0, 8: -2040.0}, scale=1.0)
    batch = collate(samples_for([_methanol(0)], config), num_graphs=BATCH)
    params = init_params(SO3LRModel(config), _device_batch(batch), jax.random.PRNGKey(0))
    return TrainedModel(config, baseline, params)


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
def test_bucket_sizes_are_few_and_bound_the_waste():
    sizes = [bucket_size(n) for n in range(1, 2000)]
    assert all(s >= n for n, s in zip(range(1, 2000), sizes))
    assert all(s <= max(32, 1.5 * n) for n, s in zip(range(1, 2000), sizes))
    assert sorted(set(sizes)) == [32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048]


@pytest.mark.parametrize("cutoff", [3.0, None])
def test_neighbour_lists_match_a_direct_count(cutoff):
    rng = np.random.default_rng(0)
    positions = rng.uniform(0, 8, (60, 3))
    dist = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    limit = np.inf if cutoff is None else cutoff
    dst, src = neighbour_pairs(positions, cutoff)
    assert set(zip(dst.tolist(), src.tolist())) == {
        (i, j) for i in range(60) for j in range(60) if i != j and dist[i, j] < limit}
    i, j = neighbour_pairs(positions, cutoff, ordered=False)
    assert np.all(i < j) and len(i) == len(dst) // 2


def test_baseline_recovers_element_energies():
    true = {1: -13.6, 8: -2040.0, 6: -1030.0}
    structures = []
    for name in ("H2O", "CH4", "CH3OH", "CO2", "H2"):
        atoms = molecule(name)
        atoms.calc = SinglePointCalculator(atoms, energy=sum(true[z] for z in atoms.numbers))
        structures.append(atoms)
    baseline = fit_baseline(structures, scale_from="energy")
    for z, energy in true.items():
        assert baseline.element_energies[z] == pytest.approx(energy, abs=1e-6)


def test_collate_pads_and_masks_missing_labels():
    a, b = molecule("H2O"), molecule("CH3OH")
    a.calc = SinglePointCalculator(a, energy=-1.0, dipole=np.array([0.1, 0.0, 0.0]))
    b.calc = SinglePointCalculator(b, forces=np.ones((6, 3)), charges=np.zeros(6))
    b.info["hirsh_ratios"] = np.full(6, 0.8)
    b.info["charge"] = 1
    batch = collate(make_samples([a, b], 4.5, EnergyBaseline({1: 0.0, 6: 0.0, 8: 0.0})), num_graphs=4)
    # 128 ordered pairs of padding: 64 slots, each pair listed once (i < j)
    assert batch["numbers"].shape == (32,) and batch["pair_i"].shape == (64,)
    assert batch["atom_mask"].sum() == 9 and batch["pair_mask"].sum() == 3 + 15
    assert np.all(batch["pair_i"][:18] < batch["pair_j"][:18])
    assert batch["lr_mask"].sum() == 3 + 15 and np.all(batch["lr_dst"][:18] < batch["lr_src"][:18])
    assert batch["energy_mask"].tolist() == [True, False, False, False]
    assert batch["dipole_mask"].tolist() == [True, False, False, False]
    assert batch["forces_mask"][:9].tolist() == [False] * 3 + [True] * 6
    assert batch["charges_mask"][:9].tolist() == [False] * 3 + [True] * 6
    assert batch["hirshfeld"][3:9].tolist() == pytest.approx([0.8] * 6)
    assert batch["total_charge"].tolist() == [0.0, 1.0, 0.0, 0.0]


def test_bad_inputs_raise_clear_errors(model):
    with pytest.raises(ValueError, match=r"N \(Z=7\)"):
        predict(model, [molecule("NH3")])
    periodic = molecule("H2O")
    periodic.cell, periodic.pbc = [5, 5, 5], True
    with pytest.raises(ValueError, match="periodic"):
        predict(model, [periodic])
    mm = molecule("H2O") + Atoms("X", positions=[[3.0, 0, 0]])
    with pytest.raises(ValueError, match="mm_charges"):
        predict(model, [mm])
    with pytest.raises(ValueError, match="max_degree"):
        ModelConfig(max_degree=0)
    with pytest.raises(ValueError, match="not divisible"):
        ModelConfig(features=30, num_heads=4)
    with pytest.raises(ValueError, match="size 'huge'"):
        ModelConfig.for_size("huge")


# --------------------------------------------------------------------------
# symmetry, forces, charges
# --------------------------------------------------------------------------
def test_rotation_translation_invariance_and_covariance(model):
    rng = np.random.default_rng(3)
    original = _methanol(1)
    rotations = [_random_rotation(rng) for _ in range(3)]
    moved = []
    shifts = []
    for rotation in rotations:
        atoms = original.copy()
        shifts.append(rng.normal(0, 5, 3))
        atoms.positions = atoms.positions @ rotation.T + shifts[-1]
        moved.append(atoms)
    out = predict_properties(model, [original] + moved, batch_size=BATCH)
    assert np.abs(out[0]["forces"]).max() > 0.1 and np.abs(out[0]["charges"]).max() > 1e-3
    for k, (rotation, shift) in enumerate(zip(rotations, shifts), start=1):
        assert out[k]["energy"] == pytest.approx(out[0]["energy"], abs=1e-9)
        np.testing.assert_allclose(out[k]["forces"], out[0]["forces"] @ rotation.T, atol=1e-9)
        np.testing.assert_allclose(out[k]["charges"], out[0]["charges"], atol=1e-10)
        np.testing.assert_allclose(out[k]["hirshfeld"], out[0]["hirshfeld"], atol=1e-10)
        # a neutral molecule's dipole rotates and does not depend on the origin
        np.testing.assert_allclose(out[k]["dipole"], out[0]["dipole"] @ rotation.T, atol=1e-9)


def test_permutation_invariance(model):
    original = _methanol(2)
    perm = np.random.default_rng(4).permutation(len(original))
    out = predict_properties(model, [original, original[perm]], batch_size=BATCH)
    assert out[1]["energy"] == pytest.approx(out[0]["energy"], abs=1e-9)
    np.testing.assert_allclose(out[1]["forces"], out[0]["forces"][perm], atol=1e-9)
    np.testing.assert_allclose(out[1]["charges"], out[0]["charges"][perm], atol=1e-10)


def test_forces_are_minus_the_finite_difference_gradient(model):
    atoms = _methanol(3)
    h = 1e-4  # Å, central differences in float64
    displaced = []
    for i in range(len(atoms)):
        for c in range(3):
            for sign in (1, -1):
                d = atoms.copy()
                d.positions[i, c] += sign * h
                displaced.append(d)
    energies, _ = predict(model, displaced, batch_size=BATCH)
    numeric = -(energies[0::2] - energies[1::2]).reshape(len(atoms), 3) / (2 * h)
    _, (analytic,) = predict(model, [atoms], batch_size=BATCH)
    assert np.abs(analytic).max() > 0.1
    np.testing.assert_allclose(analytic, numeric, atol=1e-6)


@pytest.mark.parametrize("charge", [0, 1, -1])
def test_total_charge_is_conserved_exactly(model, charge):
    out = predict_properties(model, [_methanol(5, charge), _methanol(6, charge)], batch_size=BATCH)
    for result in out:
        assert result["charges"].sum() == pytest.approx(charge, abs=1e-12)
        assert np.ptp(result["charges"]) > 1e-3  # not simply charge / n on every atom


def test_energy_terms_add_up_and_depend_on_the_charge(model):
    neutral, cation = predict_properties(model, [_methanol(7), _methanol(7, 1)], batch_size=BATCH)
    for out in (neutral, cation):
        terms = sum(out[k] for k in ("energy_short", "energy_repulsion", "energy_electrostatics",
                                     "energy_dispersion"))
        assert out["energy"] == pytest.approx(terms + out["energy_baseline"], abs=1e-9)
        assert out["energy_repulsion"] > 0 and out["energy_dispersion"] < 0
    assert abs(cation["energy"] - neutral["energy"]) > 1e-3


def test_padding_and_batch_neighbours_do_not_change_predictions(model):
    target = _methanol(8)
    alone = predict_properties(model, [target], batch_size=BATCH)[0]
    together = predict_properties(model, [_methanol(9), target, molecule("H2O"), _methanol(10, 1)],
                                  batch_size=BATCH)[1]
    for key in ("energy", "forces", "charges", "dipole"):
        np.testing.assert_allclose(together[key], alone[key], atol=1e-10)


def test_coulomb_kernel_is_shifted_force_at_the_cutoff():
    r = np.array([1e-3, 1.0, 5.0, 9.999, 10.0, 12.0])
    kernel = np.asarray(coulomb_kernel(r, damping=1.0, cutoff=10.0))
    # erf damping: finite at r -> 0 (2/sqrt(pi)), minus the shift 1/rc and the force shift rc/rc^2
    assert kernel[0] == pytest.approx(2 / np.sqrt(np.pi) - 0.2, rel=1e-3)
    assert abs(kernel[3]) < 1e-8 and kernel[4] == 0.0 and kernel[5] == 0.0
    grad = jax.vmap(jax.grad(lambda x: coulomb_kernel(x, 1.0, 10.0)))(np.array([9.999, 10.5]))
    assert np.abs(np.asarray(grad)).max() < 1e-6
    bare = np.asarray(coulomb_kernel(r[1:4], damping=1.0, cutoff=None))
    np.testing.assert_allclose(bare[1], 1 / 5.0, rtol=1e-9)  # erf(5) = 1 - 1.5e-12


# --------------------------------------------------------------------------
# ML/MM: point charges of atomic number 0
# --------------------------------------------------------------------------
def _embedded(charge_position) -> Atoms:
    qm = _methanol(11)
    mm = Atoms([0, 0], positions=[charge_position, [-3.5, 1.0, 0.5]])
    system = qm + mm
    system.arrays["mm_charges"] = np.array([0.0] * len(qm) + [-0.8, 0.4])
    return system


def test_mm_charges_change_the_energy_and_forces_match_finite_differences(model):
    near, far = _embedded([3.0, 0.5, 0.0]), _embedded([3.6, 0.5, 0.0])
    out_near, out_far = predict_properties(model, [near, far], batch_size=BATCH)
    assert abs(out_near["energy"] - out_far["energy"]) > 1e-3
    assert out_near["charges"][6:].tolist() == pytest.approx([-0.8, 0.4])
    assert out_near["charges"][:6].sum() == pytest.approx(0.0, abs=1e-12)  # QM charge kept
    assert np.abs(out_near["forces"][6:]).max() > 1e-4  # MM sites feel the QM charges
    h = 1e-4
    for atom in (0, 6):  # a QM atom and an MM site
        for c in range(3):
            plus, minus = near.copy(), near.copy()
            plus.positions[atom, c] += h
            minus.positions[atom, c] -= h
            e_plus, e_minus = predict(model, [plus, minus], batch_size=BATCH)[0]
            assert -(e_plus - e_minus) / (2 * h) == pytest.approx(out_near["forces"][atom, c], abs=1e-6)


def test_calculator_reports_ml_mm_results(model):
    system = _embedded([3.0, 0.5, 0.0])
    system.calc = MLCalculator(model)
    (expected,) = predict_properties(model, [system], batch_size=1)
    assert system.get_potential_energy() == pytest.approx(expected["energy"], abs=1e-8)
    np.testing.assert_allclose(system.get_charges(), expected["charges"], atol=1e-10)
    np.testing.assert_allclose(system.get_dipole_moment(), expected["dipole"], atol=1e-10)
    assert system.calc.results["hirsh_ratios"].shape == (8,)


def test_calculator_capacities_are_tight_and_stable():
    from qcell_nb.model.calculator import capacity_for

    for n in list(range(1, 300)) + [1000, 4216, 25035, 100_000]:
        size = capacity_for(n, slack=0.05)
        assert n * 1.05 <= size <= max(8, n * 1.05 * 1.07 + 8)
    assert capacity_for(24, slack=0.0) == 24 and capacity_for(300, slack=0.0) == 304
    # an MD-like drift of a few per cent stays inside one capacity: no recompilation
    assert len({capacity_for(n) for n in range(4216, 4400)}) <= 2


def test_mm_site_features_depend_on_the_mm_charge(model, tmp_path):
    from qcell_nb.model import load_model, save_model
    from qcell_nb.model.network import MM_CHARGE_EMBEDDING

    system = _embedded([3.0, 0.5, 0.0])
    swapped = system.copy()
    swapped.arrays["mm_charges"] = system.arrays["mm_charges"].copy()
    swapped.arrays["mm_charges"][6:] = [0.4, -0.8]  # the same sites with their charges exchanged
    params = jax.tree.map(lambda x: x, model.params)
    assert not np.any(np.asarray(params["params"][MM_CHARGE_EMBEDDING]))  # zero: the old model exactly
    # not a constant vector: the layer norms would remove that
    params["params"][MM_CHARGE_EMBEDDING] = np.linspace(-1.0, 1.0, model.config.features)
    tuned = TrainedModel(model.config, model.baseline, params)
    plain = [r["energy_short"] for r in predict_properties(model, [system, swapped], batch_size=BATCH)]
    tuned_short = [r["energy_short"] for r in predict_properties(tuned, [system, swapped], batch_size=BATCH)]
    assert plain[0] == pytest.approx(plain[1], abs=1e-12)  # without the term MM sites are indistinguishable
    assert abs(tuned_short[0] - tuned_short[1]) > 1e-6
    # a model saved before the term existed loads with it at zero
    params = jax.tree.map(lambda x: x, model.params)
    del params["params"][MM_CHARGE_EMBEDDING]
    old = load_model(save_model(tmp_path / "old", TrainedModel(model.config, model.baseline, params)))
    assert not np.any(np.asarray(old.params["params"][MM_CHARGE_EMBEDDING]))
    assert predict_properties(old, [system], batch_size=BATCH)[0]["energy"] == pytest.approx(
        predict_properties(model, [system], batch_size=BATCH)[0]["energy"], abs=1e-10)
