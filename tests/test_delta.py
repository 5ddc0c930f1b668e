"""Delta-learning targets and the calculator that adds the GFN2-xTB baseline back."""

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.lj import LennardJones

from qcell_nb.calculators.pbe0 import PBE0MBD
from qcell_nb.calculators.tightbinding import gfn2_calculator
from qcell_nb.delta import DeltaCalculator, baseline_energy_forces, delta_structures


@pytest.fixture(scope="module")
def labelled_water():
    water = molecule("H2O")
    water.info["name"] = "water"
    water.calc = PBE0MBD(basis="sto-3g", grid_level=1)
    water.get_forces()
    return water


def test_delta_targets_are_reference_minus_gfn2(labelled_water):
    (delta,) = delta_structures([labelled_water])
    tb = labelled_water.copy()
    tb.calc = gfn2_calculator(tb)
    assert delta.get_potential_energy() == pytest.approx(
        labelled_water.get_potential_energy() - tb.get_potential_energy(), abs=1e-8)
    assert np.allclose(delta.get_forces(), labelled_water.get_forces() - tb.get_forces(), atol=1e-8)
    # PBE0 and GFN2 total energies differ by hundreds of eV; the delta must not be either of them.
    assert abs(delta.get_potential_energy()) < abs(labelled_water.get_potential_energy())
    assert np.allclose(delta.calc.results["dipole"], labelled_water.calc.results["dipole"])


def test_delta_calculator_adds_the_baseline_back():
    water = molecule("H2O")
    correction = LennardJones(sigma=1.0, epsilon=0.01, rc=3.0)
    water.calc = DeltaCalculator(correction)
    energy, forces = baseline_energy_forces(water)
    alone = water.copy()
    alone.calc = LennardJones(sigma=1.0, epsilon=0.01, rc=3.0)
    assert water.get_potential_energy() == pytest.approx(energy + alone.get_potential_energy(), abs=1e-8)
    assert np.allclose(water.get_forces(), forces + alone.get_forces())


def test_unlabelled_structure_is_named():
    water = molecule("H2O")
    water.info["name"] = "bare water"
    with pytest.raises(ValueError, match="bare water"):
        delta_structures([water])
