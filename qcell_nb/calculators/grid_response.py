"""Derivatives of Becke grid weights for DFT gradients with grid response.

With ``grid_response`` on, the DFT gradient includes how the integration grid
moves with the atoms: each point rides with its parent atom and its Becke
partition weight changes with every atom position. PySCF's generator
:func:`pyscf.grad.rks.grids_response_cc` builds, for each parent atom, the
full (atom, atom, xyz, point) array of cell-function derivatives in numpy,
O(N_atoms^3) work per atom: at Gly5 (38 atoms, grid level 3) it was 44 of
the 142 CPU-s of a PBE0 gradient, and it grows fastest of all the parts.

:func:`becke_weight_response` yields the same three arrays per atom (point
coordinates, weights, weight derivatives), to ~1e-13 relative, from far less
work: the Becke cell functions P_B(r) of all atoms come from PySCF's C
routine (the one its grids use), and the derivative terms are formed only
for the (point, atom B) pairs whose relative cell function P_B/sum_C P_C
exceeds :data:`RELATIVE_CUTOFF`, on average ~7 atoms per point whatever the
molecule's size; points their own atom holds less than that share of (weight
and derivatives below 1e-14 of the point's volume) are left out.

The formulas, for a point r of atom A (r = R_A + fixed offset), weight
w = vol P_A / Z with Z = sum_B P_B, P_B = prod_{C != B} s(nu_BC),
mu_BC = (|r - R_B| - |r - R_C|) / R_BC and nu_BC = mu_BC + a_BC (1 - mu_BC^2)
(the atomic-size adjustment), s Becke's thrice-iterated cell function:
dw/dR_n = sum_{B != C} q_BC [delta_nB dmu_BC/dR_B + delta_nC dmu_BC/dR_C
+ delta_nA dmu_BC/dr] with q_BC = vol (delta_AB / Z - P_A / Z^2) P_B
(d ln s / dmu)_BC; dmu_BC/dR_B = -(u_B + mu_BC e_BC) / R_BC,
dmu_BC/dR_C = (u_C + mu_BC e_BC) / R_BC, dmu_BC/dr = (u_B - u_C) / R_BC,
with u_X the unit vector from R_X to r and e_BC the one from R_C to R_B.

:func:`fast_grid_response` swaps the generator into PySCF's gradient code for
a ``with`` block (PySCF looks it up as a module global in ``pyscf.grad.rks``;
the UKS gradient uses the same one), together with the density-contracted XC
term of :mod:`qcell_nb.calculators.xc_gradient`. Grids other than PySCF's default
partitioning (original Becke scheme, Treutler or Becke size adjustment, or
none) keep PySCF's own generator.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

import numpy as np
from pyscf.dft import gen_grid, radi
from pyscf.grad import rks as rks_grad

#: Pairs (point, atom B) with P_B / sum_C P_C at or below this are dropped, as are points whose
#: own atom's share is at or below it.
RELATIVE_CUTOFF = 1e-14

#: Points per block: the (pairs, atoms) temporaries, ~10 x BLOCK_POINTS x N_atoms doubles, then stay
#: in cache. Measured (whole generator, level 3, one core): 2,048 points Gly1 0.70, Gly3 4.3, Gly7 20.0
#: CPU-s; 256 points 0.49, 2.5, 13.2; 128 points about the same as 256.
BLOCK_POINTS = 256


def size_adjustment(grids) -> np.ndarray | None:
    """Becke's a_BC size-adjustment matrix (N_atoms, N_atoms) of ``grids``, or None if unsupported.

    Zero for grids without adjustment; None for an adjustment other than
    PySCF's Treutler or Becke ones.
    """
    mol = grids.mol
    if grids.radii_adjust is None or grids.atomic_radii is None:
        return np.zeros((mol.natm, mol.natm))
    charges = mol.atom_charges()
    if grids.radii_adjust == radi.treutler_atomic_radii_adjust:
        radius = np.sqrt(grids.atomic_radii[charges]) + 1e-200
    elif grids.radii_adjust == radi.becke_atomic_radii_adjust:
        radius = grids.atomic_radii[charges] + 1e-200
    else:
        return None
    ratio = radius[:, None] / radius[None, :]
    return np.clip(0.25 * (ratio.T - ratio), -0.5, 0.5)


def supported(grids) -> bool:
    """True when :func:`becke_weight_response` reproduces PySCF's generator for ``grids``."""
    return grids.becke_scheme is gen_grid.original_becke and size_adjustment(grids) is not None


def _cell_functions(coords: np.ndarray, atom_coords: np.ndarray, adjust: np.ndarray) -> np.ndarray:
    """Unnormalised Becke cell functions P_B(r), shape (N_atoms, N_points), from PySCF's C routine."""
    coords = np.asarray(coords, order="F")
    natm, npts = len(atom_coords), len(coords)
    cells = np.empty((natm, npts))
    gen_grid.libdft.VXCgen_grid(
        cells.ctypes.data_as(ctypes.c_void_p), coords.ctypes.data_as(ctypes.c_void_p),
        atom_coords.ctypes.data_as(ctypes.c_void_p), adjust.ctypes.data_as(ctypes.c_void_p),
        ctypes.c_int(natm), ctypes.c_int(npts))
    return cells


def _becke_step(nu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Becke's cell function s(nu) = (1 - p3(nu)) / 2 and its derivative ds/dnu.

    In place on a few temporaries: the (pairs, atoms) arrays are large and the
    polynomial is memory-bound.
    """
    nu_sq = nu * nu
    p1 = 3.0 - nu_sq
    p1 *= nu
    p1 *= 0.5
    p1_sq = p1 * p1
    p2 = 3.0 - p1_sq
    p2 *= p1
    p2 *= 0.5
    p2_sq = p2 * p2
    s = 3.0 - p2_sq
    s *= p2
    s *= 0.5  # p3
    np.subtract(1.0, s, out=s)
    s *= 0.5
    ds = np.subtract(1.0, p2_sq, out=p2_sq)
    ds *= np.subtract(1.0, p1_sq, out=p1_sq)
    ds *= np.subtract(1.0, nu_sq, out=nu_sq)
    ds *= -0.5 * 27.0 / 8.0
    return s, ds


def _block_response(points, volumes, owner, atom_coords, inv_dist, adjust):
    """Weights (g,), weight derivatives (N_atoms, 3, g) and held mask (g,) of ``owner``'s points (bohr).

    Some angular grids have negative weights, so ``volumes`` may be negative.
    """
    natm, npts = len(atom_coords), len(points)
    cells = _cell_functions(points, atom_coords, adjust)
    z = 1.0 / cells.sum(axis=0)
    weights = volumes * cells[owner] * z
    d_weights = np.zeros((natm, 3, npts))
    share = cells * z
    held = share[owner] > RELATIVE_CUTOFF
    share[:, ~held] = 0.0
    # (point, atom) pairs, grouped by point: nonzero of the transposed array is point-major.
    pt, b = np.nonzero(share.T > RELATIVE_CUTOFF)
    if len(pt) == 0:
        return weights, d_weights, held

    offsets = points[None, :, :] - atom_coords[:, None, :]          # (N_atoms, g, 3): r - R_B
    dist = np.sqrt(np.einsum("bgx,bgx->bg", offsets, offsets)) + 1e-200
    unit = offsets / dist[:, :, None]
    inv_b = inv_dist[b]                                             # (K, N_atoms) 1/R_BC, 0 at C = B
    mu = (dist[b, pt][:, None] - dist.T[pt]) * inv_b
    a_b = adjust[b]
    s, ds = _becke_step(mu + a_b * (1 - mu**2))
    s += 1e-200
    s[np.arange(len(b)), b] = 1.0
    dlns = ds * (1 - 2 * a_b * mu) / s                             # d ln s_BC / d mu_BC

    p_own, zk = cells[owner, pt], z[pt]
    coef = -(volumes[pt] * p_own * zk**2) * cells[b, pt]           # dw/dP_B * P_B
    is_owner = b == owner
    coef[is_owner] += (volumes[pt] * zk * p_own)[is_owner]
    q = coef[:, None] * dlns * inv_b                              # q_BC / R_BC, (K, N_atoms)
    n = q * mu * inv_b                                            # q_BC mu_BC / R_BC^2
    q_row, n_row = q.sum(axis=1), n.sum(axis=1)
    # sum_C q_BC mu_BC e_BC / R_BC = R_B sum_C n_BC - sum_C n_BC R_C
    n_e = atom_coords[b] * n_row[:, None] - n @ atom_coords
    u_b = unit[b, pt]                                             # (K, 3)
    starts = np.flatnonzero(np.r_[True, pt[1:] != pt[:-1]])
    pts = pt[starts]
    # Sums over each point's pairs, in one reduceat over rows of 5 x N_atoms (a trailing axis of
    # 3 made the reduction several times slower): sum_B q_BC / R_BC, sum_B n_BC, sum_B n_BC R_B.
    terms = np.empty((len(b), 5, natm))
    terms[:, 0], terms[:, 1] = q, n
    np.multiply(n[:, None, :], atom_coords[b][:, :, None], out=terms[:, 2:])
    columns = np.add.reduceat(terms, starts, axis=0)              # (G, 5, N_atoms)
    q_col, n_col, nr_col = columns[:, 0], columns[:, 1], columns[:, 2:]
    u_c = unit[:, pts].transpose(1, 2, 0)                         # (G, 3, N_atoms)

    # n = B terms, then n = C terms, then the point's own motion with the owner atom.
    d_weights[b, :, pt] -= u_b * q_row[:, None] + n_e
    d_weights[:, :, pts] += (u_c * q_col[:, None, :] + nr_col - n_col[:, None, :] * atom_coords.T[None]).transpose(2, 1, 0)
    own_motion = np.add.reduceat(u_b * q_row[:, None], starts, axis=0) - np.einsum("gxn,gn->gx", u_c, q_col)
    d_weights[owner][:, pts] += own_motion.T
    return weights, d_weights, held


def becke_weight_response(grids) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per atom: grid coordinates (g, 3), weights (g,), d weights / d R (N_atoms, 3, g), bohr.

    Same contract as :func:`pyscf.grad.rks.grids_response_cc` (whose grids
    these are: the unpruned atom-centred grids of ``grids``), except that
    points whose own atom's share of the partition is at or below
    :data:`RELATIVE_CUTOFF` are left out (their weight and derivatives are
    below 1e-14 of their volume).

    Raises
    ------
    ValueError
        If ``grids`` uses a partitioning this does not implement (see :func:`supported`).
    """
    if not supported(grids):
        raise ValueError(
            f"becke_weight_response: grids with becke_scheme={getattr(grids.becke_scheme, '__name__', grids.becke_scheme)} "
            f"and radii_adjust={getattr(grids.radii_adjust, '__name__', grids.radii_adjust)} are not supported"
        )
    mol = grids.mol
    atom_grids = grids.gen_atomic_grids(mol, grids.atom_grid, grids.radi_method, grids.level, grids.prune)
    atom_coords = np.ascontiguousarray(mol.atom_coords(), dtype=float)
    dist = np.linalg.norm(atom_coords[:, None] - atom_coords[None], axis=2)
    np.fill_diagonal(dist, np.inf)
    inv_dist = 1.0 / dist
    adjust = np.ascontiguousarray(size_adjustment(grids))
    for owner in range(mol.natm):
        offsets, volumes = atom_grids[mol.atom_symbol(owner)]
        points = offsets + atom_coords[owner]
        weights = np.empty(len(points))
        d_weights = np.empty((mol.natm, 3, len(points)))
        held = np.empty(len(points), dtype=bool)
        for p0 in range(0, len(points), BLOCK_POINTS):
            block = slice(p0, p0 + BLOCK_POINTS)
            weights[block], d_weights[:, :, block], held[block] = _block_response(
                points[block], volumes[block], owner, atom_coords, inv_dist, adjust)
        yield points[held], weights[held], d_weights[:, :, held]


@contextlib.contextmanager
def fast_grid_response(grids) -> Iterator[None]:
    """Within the block, PySCF's DFT gradients with grid response use our code.

    The weight derivatives come from :func:`becke_weight_response` (if
    ``grids`` allows) and the XC term from
    :mod:`qcell_nb.calculators.xc_gradient` (contracted with the density
    instead of built as a matrix); PySCF's functions are restored on exit.
    """
    from pyscf.grad import uks as uks_grad

    from qcell_nb.calculators.xc_gradient import rks_vxc_full_response, uks_vxc_full_response

    swaps = [(rks_grad, "get_vxc_full_response", rks_vxc_full_response),
             (uks_grad, "get_vxc_full_response", uks_vxc_full_response)]
    if supported(grids):
        swaps.append((rks_grad, "grids_response_cc", becke_weight_response))
    originals = [(module, name, getattr(module, name)) for module, name, _ in swaps]
    for module, name, replacement in swaps:
        setattr(module, name, replacement)
    try:
        yield
    finally:
        for module, name, original in originals:
            setattr(module, name, original)
