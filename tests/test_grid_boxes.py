"""Box sorting of grid points: PySCF's permutation, faster."""

from __future__ import annotations

import numpy as np
import pytest
from pyscf import gto
from pyscf.dft import gen_grid

from qcell_nb.calculators.grid_boxes import box_order, fast_box_order

# Glycine: an asymmetric molecule, so boxes differ along x, y and z.
GLYCINE = """N 1.46 0.11 -0.02; C 0.00 0.03 0.00; C -0.52 1.46 0.02; O 0.19 2.45 0.05; O -1.86 1.54 0.01;
H 1.79 -0.85 -0.04; H 1.80 0.57 0.81; H -0.37 -0.49 0.88; H -0.36 -0.51 -0.87; H -2.11 2.48 0.03"""


@pytest.mark.parametrize("level", [0, 3])
def test_same_permutation_as_pyscf(level: int) -> None:
    mol = gto.M(atom=GLYCINE, basis="sto-3g", verbose=0)
    grids = gen_grid.Grids(mol)
    grids.level = level
    grids.build(sort_grids=False)
    # The radial grids reach far past PySCF's boundary margin: the clipped outer boxes are exercised.
    assert np.abs(grids.coords).max() > np.abs(mol.atom_coords()).max() + 2 * gen_grid.GROUP_BOUNDARY_PENALTY
    expected = gen_grid.arg_group_grids(mol, grids.coords)
    np.testing.assert_array_equal(box_order(mol, grids.coords), expected)
    # A different box size is a different partition, and still PySCF's.
    np.testing.assert_array_equal(box_order(mol, grids.coords, box_size=2.0),
                                  gen_grid.arg_group_grids(mol, grids.coords, box_size=2.0))


def test_sorted_grids_are_unchanged_inside_the_context() -> None:
    mol = gto.M(atom=GLYCINE, basis="sto-3g", verbose=0)
    plain = gen_grid.Grids(mol).build()
    original = gen_grid.arg_group_grids
    with fast_box_order():
        assert gen_grid.arg_group_grids is box_order
        fast = gen_grid.Grids(mol).build()
    assert gen_grid.arg_group_grids is original
    np.testing.assert_array_equal(fast.coords, plain.coords)
    np.testing.assert_array_equal(fast.weights, plain.weights)


def test_bad_coords_named() -> None:
    mol = gto.M(atom=GLYCINE, basis="sto-3g", verbose=0)
    with pytest.raises(ValueError, match="coords must have shape"):
        box_order(mol, np.zeros((5, 2)))
