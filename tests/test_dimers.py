"""Dimers: monomer library coverage, contact distance, orientations, distance scans, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest

from qcell_nb.blocks.dimers import (
    ION_RADII, MONOMERS, build_monomer, build_monomers, contact_distance, contact_radii,
    dimer_orientations, distance_scan, distance_scans, generate_dimers, pair_orientations,
    plot_distance_coverage, random_pairs,
)
from qcell_nb.structures import structure_id


def test_library_covers_the_elements_and_sizes():
    monomers = build_monomers(seed=0)
    elements = {symbol for m in monomers for symbol in m.get_chemical_symbols()}
    assert {"H", "C", "N", "O", "F", "P", "S", "Cl", "Br", "Na", "K", "Mg", "Ca"} <= elements
    charges = {m.info["name"]: m.info["charge"] for m in monomers}
    assert {name: charges[name] for name in ("Na+", "K+", "Cl-", "Mg2+", "Ca2+")} == \
        {"Na+": 1, "K+": 1, "Cl-": -1, "Mg2+": 2, "Ca2+": 2}
    assert all(charge == 0 for name, charge in charges.items() if len(name) > 4)
    assert 2 * max(len(m) for m in monomers) <= 34  # every dimer within QCell's 2-34 atoms
    assert all(m.info["subset"] == "dimers" and m.info["multiplicity"] == 1 for m in monomers)


def test_contact_distance_of_two_ions_is_the_sum_of_ionic_radii():
    na, cl = build_monomers(["Na+", "Cl-"])
    expected = ION_RADII[("Na", 1)] + ION_RADII[("Cl", -1)]
    assert contact_distance(na, cl, np.array([0.3, -1.0, 2.0])) == pytest.approx(expected)
    assert contact_radii(build_monomer("water")).tolist() == [1.52, 1.2, 1.2]


@pytest.mark.parametrize("pair", [("water", "methanol"), ("benzene", "trimethyl phosphate"), ("water", "Na+")])
def test_orientations_touch_at_contact_and_scans_follow_the_factors(pair):
    a, b = build_monomers(pair, seed=1)
    radius_sum = contact_radii(a)[:, None] + contact_radii(b)[None, :]
    factors = np.linspace(0.8, 2.0, 7)
    for orientation in dimer_orientations(a, b, n=5, seed=2):
        n_a = orientation.info["n_atoms_a"]
        scans = distance_scan(orientation, factors)
        assert [s.info["scan_factor"] for s in scans] == pytest.approx(factors)
        for scan, factor in zip(scans, factors):
            com = scan[n_a:].get_center_of_mass() - scan[:n_a].get_center_of_mass()
            assert np.linalg.norm(com) == pytest.approx(factor * orientation.info["contact_distance"], abs=1e-9)
            np.testing.assert_allclose(com / np.linalg.norm(com), orientation.info["direction"], atol=1e-9)
            assert scan.info["parent_id"] == structure_id(orientation)
            distances = np.linalg.norm(scan.positions[n_a:][None] - scan.positions[:n_a][:, None], axis=2)
            ratio = (distances / radius_sum).min()
            if factor == pytest.approx(1.0):
                assert ratio == pytest.approx(1.0, abs=1e-9)  # the closest pair just touches
            elif factor > 1.0:
                assert ratio > 1.0
            # Monomers move rigidly: intramolecular distances are those of the input monomers.
            np.testing.assert_allclose(scan[:n_a].get_all_distances(), a.get_all_distances(), atol=1e-9)
            np.testing.assert_allclose(scan[n_a:].get_all_distances(), b.get_all_distances(), atol=1e-9)


def test_generate_dimers_metadata_and_determinism(tmp_path):
    pairs = [("water", "methanol"), ("water", "Na+"), ("Cl-", "hydrogen bromide")]
    dimers = generate_dimers(pairs, n_orientations=2, factors=(0.9, 1.0, 1.5), seed=4)
    assert len(dimers) == 3 * 2 * 3
    assert dimers[0].info["name"] == "water...methanol" and len(dimers[0]) == 9
    assert [d.info["charge"] for d in dimers[::6]] == [0, 1, -1]
    assert all(d.info["subset"] == "dimers" and d.info["multiplicity"] == 1 for d in dimers)
    again = generate_dimers(pairs, n_orientations=2, factors=(0.9, 1.0, 1.5), seed=4)
    assert [structure_id(d) for d in dimers] == [structure_id(d) for d in again]
    other = generate_dimers(pairs, n_orientations=2, factors=(0.9, 1.0, 1.5), seed=5)
    assert [structure_id(d) for d in dimers] != [structure_id(d) for d in other]
    figure = plot_distance_coverage(dimers, path=tmp_path / "coverage.png")
    assert (tmp_path / "coverage.png").stat().st_size > 0 and len(figure.axes) == 2
    chosen = random_pairs(list(MONOMERS)[:6], 5, seed=1)
    assert chosen == random_pairs(list(MONOMERS)[:6], 5, seed=1) and len(set(chosen)) == 5


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"unknown monomer\(s\) \['Xe\+'\]"):
        build_monomers(["water", "Xe+"])
    with pytest.raises(ValueError, match=r"unparsable SMILES 'C1CC'"):
        build_monomers(["ring"], library={"ring": "C1CC"})
    with pytest.raises(ValueError, match=r"unknown monomer\(s\) \['argon'\]"):
        generate_dimers([("water", "argon")], n_orientations=1)
    water = build_monomer("water")
    with pytest.raises(ValueError, match="lacks info"):
        distance_scan(water)
    with pytest.raises(ValueError, match="n_pairs=100"):
        random_pairs(["water", "methanol"], 100)


def test_stagewise_api_matches_generate_dimers():
    pairs = [("water", "methanol"), ("methanol", "Cl-")]
    monomers = build_monomers(["water", "methanol", "Cl-"], seed=4)
    orientations = pair_orientations(monomers, pairs, n_orientations=2, seed=4)
    assert len(orientations) == 4 and all(o.info["scan_factor"] == 1.0 for o in orientations)
    staged = distance_scans(orientations, (0.8, 2.0))
    direct = generate_dimers(pairs, n_orientations=2, factors=(0.8, 2.0), seed=4)
    assert [structure_id(d) for d in staged] == [structure_id(d) for d in direct]
    with pytest.raises(ValueError, match=r"monomer\(s\) \['benzene'\] that were not built"):
        pair_orientations(monomers, [("water", "benzene")])
