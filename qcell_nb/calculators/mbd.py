"""Many-body dispersion (MBD@rsSCS) and Tkatchenko-Scheffler (TS) energies in JAX.

Non-periodic systems only. The method follows

- A. Tkatchenko, M. Scheffler, Phys. Rev. Lett. 102, 073005 (2009) (TS),
- A. Tkatchenko, R. A. DiStasio Jr., R. Car, M. Scheffler, Phys. Rev. Lett.
  108, 236402 (2012) (MBD),
- A. Ambrosetti, A. M. Reilly, R. A. DiStasio Jr., A. Tkatchenko, J. Chem.
  Phys. 140, 18A508 (2014) (range-separated self-consistent screening, rsSCS),

with the numerical choices of libMBD (J. Hermann et al., J. Chem. Phys. 159,
174802 (2023)) so that energies agree with it to ~1e-8 eV: a 15-point
Gauss-Legendre frequency grid mapped onto [0, inf) by u = L (1+x)/(1-x),
L = 0.6 Ha, plus the static point u = 0 with zero weight; "fermi,dip,gg"
coupling for the screening (short-range part of a Gaussian-smeared dipole
tensor) and "fermi,dip" coupling for the MBD Hamiltonian, Fermi steepness
a = 6.

Atom-in-molecule parameters come from free-atom reference data scaled by the
Hirshfeld volume ratio v = V_eff / V_free: alpha0 ~ v, C6 ~ v**2,
R_vdW ~ v**(1/3).

Forces are the analytic derivative (``jax.grad``) at *fixed* volume ratios:
the dependence of the Hirshfeld ratios on the nuclear positions is neglected,
as is common (it is a small term; libMBD, FHI-aims and most MLFF data sets
that carry MBD forces do the same unless Hirshfeld gradients are requested).

Precision: the functions here run under ``jax.enable_x64(True)`` as a
*context*, so importing this module does not switch the rest of the program
(e.g. a float32 neural network) to 64-bit.

Units: public functions take Å and return eV and eV/Å; internally everything
is in atomic units (bohr, hartree), converted once at the boundary with
:data:`ase.units.Bohr` and :data:`ase.units.Hartree`.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import chemical_symbols
from ase.units import Bohr, Hartree

Variant = Literal["rsscs", "ts"]

# ----------------------------------------------------------------------------
# Free-atom reference data (atomic units): static dipole polarisability
# alpha0 (bohr^3), C6 (Ha bohr^6), van der Waals radius R_vdW (bohr).
#
# Sources: the Tkatchenko-Scheffler table (Phys. Rev. Lett. 102, 073005 (2009),
# alpha0 and C6 from X. Chu, A. Dalgarno, J. Chem. Phys. 121, 4083 (2004) and
# references therein; R_vdW from the free-atom density contour of the noble
# gas of the same row), in the compilation used by libMBD / FHI-aims
# (V. V. Gobre, PhD thesis, TU Berlin 2016, Table A.1). Values agree with the
# "TS" columns of libMBD's vdw-params table, which the tests check against
# when pymbd is installed.
# ----------------------------------------------------------------------------
#: element -> (alpha0 [bohr^3], C6 [Ha bohr^6], R_vdW [bohr])
FREE_ATOM_PARAMS: dict[str, tuple[float, float, float]] = {
    "H": (4.5, 6.5, 3.1),
    "He": (1.38, 1.46, 2.65),
    "Li": (164.2, 1387.0, 4.16),
    "Be": (38.0, 214.0, 4.17),
    "B": (21.0, 99.5, 3.89),
    "C": (12.0, 46.6, 3.59),
    "N": (7.4, 24.2, 3.34),
    "O": (5.4, 15.6, 3.19),
    "F": (3.8, 9.52, 3.04),
    "Ne": (2.67, 6.38, 2.91),
    "Na": (162.7, 1556.0, 3.73),
    "Mg": (71.0, 627.0, 4.27),
    "Al": (60.0, 528.0, 4.33),
    "Si": (37.0, 305.0, 4.20),
    "P": (25.0, 185.0, 4.01),
    "S": (19.6, 134.0, 3.86),
    "Cl": (15.0, 94.6, 3.71),
    "Ar": (11.1, 64.3, 3.55),
    "K": (292.9, 3897.0, 3.71),
    "Ca": (160.0, 2221.0, 4.65),
    "Sc": (120.0, 1383.0, 4.59),
    "Ti": (98.0, 1044.0, 4.51),
    "V": (84.0, 832.0, 4.44),
    "Cr": (78.0, 602.0, 3.99),
    "Mn": (63.0, 552.0, 3.97),
    "Fe": (56.0, 482.0, 4.23),
    "Co": (50.0, 408.0, 4.18),
    "Ni": (48.0, 373.0, 3.82),
    "Cu": (42.0, 253.0, 3.76),
    "Zn": (40.0, 284.0, 4.02),
    "Ga": (60.0, 498.0, 4.19),
    "Ge": (41.0, 354.0, 4.20),
    "As": (29.0, 246.0, 4.11),
    "Se": (25.0, 210.0, 4.04),
    "Br": (20.0, 162.0, 3.93),
    "Kr": (16.8, 129.6, 3.82),
    "Rb": (319.2, 4691.0, 3.72),
    "Sr": (199.0, 3170.0, 4.54),
    "I": (35.0, 385.0, 4.17),
    "Xe": (27.3, 285.9, 4.08),
    "Cs": (427.12, 6582.08, 3.78),
}

#: Damping parameters by exchange-correlation functional, as in libMBD
#: (``damping_set_params_from_xc``): MBD@rsSCS beta and TS s_R. Note that
#: PBE0 uses beta = 0.85 (Ambrosetti et al. 2014); 0.83 is the PBE value.
MBD_RSSCS_BETA: dict[str, float] = {"pbe": 0.83, "pbe0": 0.85, "hse": 0.85}
TS_SR: dict[str, float] = {"pbe": 0.94, "pbe0": 0.96, "hse": 0.96, "b3lyp": 0.84}

#: Fermi-damping steepness for MBD (libMBD's MBD_DAMPING_A) and for TS (d).
MBD_DAMPING_A = 6.0
TS_DAMPING_D = 20.0

#: Frequency quadrature: number of Gauss-Legendre points and the scale L (Ha).
N_FREQ = 15
FREQ_SCALE = 0.6


def default_damping(variant: Variant, xc: str = "pbe0") -> float:
    """Damping parameter for ``variant`` and functional ``xc``.

    Returns beta for ``"rsscs"`` and s_R for ``"ts"`` (dimensionless).
    """
    table = MBD_RSSCS_BETA if variant == "rsscs" else TS_SR if variant == "ts" else None
    if table is None:
        raise ValueError(f"unknown dispersion variant {variant!r}; use 'rsscs' or 'ts'")
    try:
        return table[xc.lower()]
    except KeyError:
        raise ValueError(
            f"no {variant} damping parameter for functional {xc!r}; known: {sorted(table)}"
        ) from None


def free_atom_params(numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Free-atom alpha0, C6, R_vdW (atomic units), each shape (n,).

    Raises
    ------
    ValueError
        If an element has no reference data.
    """
    rows = []
    for z in np.asarray(numbers, dtype=int):
        symbol = chemical_symbols[z]
        if symbol not in FREE_ATOM_PARAMS:
            raise ValueError(
                f"no free-atom vdW reference data for element {symbol} (Z={z}); "
                f"known: {', '.join(FREE_ATOM_PARAMS)}"
            )
        rows.append(FREE_ATOM_PARAMS[symbol])
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    return arr[:, 0], arr[:, 1], arr[:, 2]


def frequency_grid(n: int = N_FREQ, scale: float = FREQ_SCALE) -> tuple[np.ndarray, np.ndarray]:
    """Imaginary-frequency quadrature for Casimir-Polder integrals.

    Gauss-Legendre nodes x on (-1, 1) mapped to u = L (1+x)/(1-x) on (0, inf)
    with weights 2L/(1-x)^2 w_x, in increasing u, preceded by the static point
    u = 0 with weight 0 (it only supplies the static screened polarisability).

    Returns
    -------
    freq, weights : np.ndarray, shape (n + 1,)
        Frequencies and weights in Ha.
    """
    x, w = np.polynomial.legendre.leggauss(n)
    u = scale * (1 + x) / (1 - x)
    wu = 2 * scale / (1 - x) ** 2 * w
    order = np.argsort(u)
    return np.concatenate(([0.0], u[order])), np.concatenate(([0.0], wu[order]))


# ----------------------------------------------------------------------------
# Dipole tensors (atomic units). ``r`` has shape (n, n, 3) with r_ij = x_i - x_j.
# The diagonal i == j is handled by giving it a dummy distance of 1 bohr and
# masking the result: this keeps jax.grad free of 0/0 NaNs.
# ----------------------------------------------------------------------------


def _pair_geometry(coords: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    n = coords.shape[0]
    eye = jnp.eye(n, dtype=coords.dtype)
    r = coords[:, None, :] - coords[None, :, :]
    dist = jnp.sqrt(jnp.sum(r**2, axis=-1) + eye)
    return r, dist, 1.0 - eye


def _t_bare(r: jnp.ndarray, dist: jnp.ndarray) -> jnp.ndarray:
    """Bare dipole tensor T_ab = (delta_ab R^2 - 3 R_a R_b) / R^5, shape (n, n, 3, 3)."""
    rr = r[..., :, None] * r[..., None, :]
    return (dist[..., None, None] ** 2 * jnp.eye(3) - 3 * rr) / dist[..., None, None] ** 5


def _t_gaussian(r: jnp.ndarray, dist: jnp.ndarray, sigma: jnp.ndarray) -> jnp.ndarray:
    """Dipole tensor between Gaussian charge distributions of width ``sigma`` (n, n).

    Second derivative of erf(R/sigma)/R:
    T = [erf(z) - th] T_bare + 2 z^2 th R R^T / R^5 with z = R/sigma,
    th = 2 z exp(-z^2) / sqrt(pi).
    """
    z = dist / sigma
    th = 2 * z / jnp.sqrt(jnp.pi) * jnp.exp(-(z**2))
    rr = r[..., :, None] * r[..., None, :] / dist[..., None, None] ** 5
    return (jax.scipy.special.erf(z) - th)[..., None, None] * _t_bare(r, dist) + (
        2 * z**2 * th
    )[..., None, None] * rr


def _fermi(dist: jnp.ndarray, s_vdw: jnp.ndarray, a: float) -> jnp.ndarray:
    return 1.0 / (1.0 + jnp.exp(-a * (dist / s_vdw - 1.0)))


def _to_matrix(t: jnp.ndarray) -> jnp.ndarray:
    """(n, n, 3, 3) -> (3n, 3n) with atom-major, Cartesian-minor ordering."""
    n = t.shape[0]
    return jnp.transpose(t, (0, 2, 1, 3)).reshape(3 * n, 3 * n)


# ----------------------------------------------------------------------------
# Energies in atomic units
# ----------------------------------------------------------------------------


@jax.custom_jvp
def _sum_sqrt_eigs(h: jnp.ndarray) -> jnp.ndarray:
    """Tr sqrt(H) = sum_k sqrt(lambda_k) for a symmetric positive-definite H."""
    return jnp.sum(jnp.sqrt(jnp.linalg.eigvalsh(h)))


@_sum_sqrt_eigs.defjvp
def _sum_sqrt_eigs_jvp(primals, tangents):
    # d Tr f(H) = Tr(f'(H) dH): exact also for degenerate eigenvalues, unlike
    # differentiating through eigenvectors (whose derivatives diverge there).
    (h,), (dh,) = primals, tangents
    lam, vec = jnp.linalg.eigh(h)
    grad = (vec / (2 * jnp.sqrt(lam))) @ vec.T
    return jnp.sum(jnp.sqrt(lam)), jnp.sum(grad * dh)


def _rsscs_energy_au(
    coords: jnp.ndarray,
    alpha0: jnp.ndarray,
    c6: jnp.ndarray,
    r_vdw: jnp.ndarray,
    beta: float,
    freq: jnp.ndarray,
    freq_w: jnp.ndarray,
) -> jnp.ndarray:
    """MBD@rsSCS energy (Ha) from atom-in-molecule alpha0, C6, R_vdW (a.u.)."""
    n = coords.shape[0]
    r, dist, offdiag = _pair_geometry(coords)
    omega = 4.0 / 3.0 * c6 / alpha0**2
    s_vdw = beta * (r_vdw[:, None] + r_vdw[None, :])
    short_range = (1.0 - _fermi(dist, s_vdw, MBD_DAMPING_A)) * offdiag
    # sum over partner atoms j of the 3x3 blocks: A @ (1_n (x) I_3)
    block_sum = jnp.tile(jnp.eye(3), (n, 1))

    def screened_alpha(u: jnp.ndarray) -> jnp.ndarray:
        # Dyson-like screening at imaginary frequency u: A = (alpha^-1 + T_SR)^-1,
        # atomic alpha_i = 1/3 Tr sum_j A_ij.
        alpha = alpha0 / (1.0 + (u / omega) ** 2)
        sigma = (jnp.sqrt(2.0 / jnp.pi) * alpha / 3.0) ** (1.0 / 3.0)
        sigma_ij = jnp.sqrt(sigma[:, None] ** 2 + sigma[None, :] ** 2)
        t_sr = _to_matrix(short_range[..., None, None] * _t_gaussian(r, dist, sigma_ij))
        m = jnp.diag(jnp.repeat(1.0 / alpha, 3)) + t_sr
        a_contracted = jnp.linalg.solve(m, block_sum).reshape(n, 3, 3)
        return jnp.trace(a_contracted, axis1=1, axis2=2) / 3.0

    alpha_scs = jax.vmap(screened_alpha)(freq)  # (n_freq, n)
    alpha0_scs = alpha_scs[0]
    c6_scs = 3.0 / jnp.pi * jnp.sum(freq_w[:, None] * alpha_scs**2, axis=0)
    r_vdw_scs = r_vdw * (alpha0_scs / alpha0) ** (1.0 / 3.0)
    omega_scs = 4.0 / 3.0 * c6_scs / alpha0_scs**2

    s_vdw_scs = beta * (r_vdw_scs[:, None] + r_vdw_scs[None, :])
    long_range = _fermi(dist, s_vdw_scs, MBD_DAMPING_A) * offdiag
    t_lr = _to_matrix(long_range[..., None, None] * _t_bare(r, dist))
    pre = jnp.repeat(omega_scs * jnp.sqrt(alpha0_scs), 3)
    h = jnp.diag(jnp.repeat(omega_scs**2, 3)) + pre[:, None] * pre[None, :] * t_lr
    return 0.5 * _sum_sqrt_eigs(h) - 1.5 * jnp.sum(omega_scs)


def _ts_energy_au(
    coords: jnp.ndarray,
    alpha0: jnp.ndarray,
    c6: jnp.ndarray,
    r_vdw: jnp.ndarray,
    s_r: float,
) -> jnp.ndarray:
    """Pairwise TS energy (Ha) with Fermi damping (d = 20)."""
    _, dist, offdiag = _pair_geometry(coords)
    # combination rule of Tang (Phys. Rev. 177, 108 (1969)) as used by TS
    c6_ij = (
        2.0
        * c6[:, None]
        * c6[None, :]
        / (alpha0[None, :] / alpha0[:, None] * c6[:, None] + alpha0[:, None] / alpha0[None, :] * c6[None, :])
    )
    damp = _fermi(dist, s_r * (r_vdw[:, None] + r_vdw[None, :]), TS_DAMPING_D)
    return -0.5 * jnp.sum(offdiag * damp * c6_ij / dist**6)


@partial(jax.jit, static_argnames=("variant",))
def _energy_and_grad_au(coords, alpha0, c6, r_vdw, damping, freq, freq_w, variant):
    if variant == "rsscs":
        fun = lambda x: _rsscs_energy_au(x, alpha0, c6, r_vdw, damping, freq, freq_w)  # noqa: E731
    else:
        fun = lambda x: _ts_energy_au(x, alpha0, c6, r_vdw, damping)  # noqa: E731
    return jax.value_and_grad(fun)(coords)


@partial(jax.jit, static_argnames=("variant",))
def _energy_au(coords, alpha0, c6, r_vdw, damping, freq, freq_w, variant):
    if variant == "rsscs":
        return _rsscs_energy_au(coords, alpha0, c6, r_vdw, damping, freq, freq_w)
    return _ts_energy_au(coords, alpha0, c6, r_vdw, damping)


# ----------------------------------------------------------------------------
# Public API (Å, eV)
# ----------------------------------------------------------------------------


def _prepare(positions_ang, numbers, volume_ratios, variant, beta, xc):
    if variant not in ("rsscs", "ts"):
        raise ValueError(f"unknown dispersion variant {variant!r}; use 'rsscs' or 'ts'")
    positions = np.asarray(positions_ang, dtype=np.float64)
    numbers = np.asarray(numbers, dtype=int)
    ratios = np.asarray(volume_ratios, dtype=np.float64)
    n = len(numbers)
    if positions.shape != (n, 3):
        raise ValueError(f"positions have shape {positions.shape}, expected ({n}, 3)")
    if ratios.shape != (n,):
        raise ValueError(f"volume_ratios have shape {ratios.shape}, expected ({n},)")
    if not np.all(np.isfinite(ratios)) or np.any(ratios <= 0):
        raise ValueError(f"volume ratios must be finite and positive, got {ratios}")
    alpha_free, c6_free, r_free = free_atom_params(numbers)
    damping = default_damping(variant, xc) if beta is None else float(beta)
    return (
        positions / Bohr,
        alpha_free * ratios,
        c6_free * ratios**2,
        r_free * ratios ** (1.0 / 3.0),
        damping,
    )


def mbd_energy(
    positions_ang: np.ndarray,
    numbers: np.ndarray,
    volume_ratios: np.ndarray,
    variant: Variant = "rsscs",
    beta: float | None = None,
    xc: str = "pbe0",
) -> float:
    """Dispersion energy of a finite system.

    Parameters
    ----------
    positions_ang : array, shape (n, 3)
        Positions in Å.
    numbers : array of int, shape (n,)
        Atomic numbers.
    volume_ratios : array, shape (n,)
        Hirshfeld volume ratios V_eff / V_free (dimensionless).
    variant : {"rsscs", "ts"}
        MBD@rsSCS or pairwise TS.
    beta : float, optional
        Damping parameter: beta for rsSCS, s_R for TS. Default: libMBD's value
        for ``xc`` (PBE0: beta = 0.85, s_R = 0.96).
    xc : str
        Functional the damping is fitted for (used only when ``beta`` is None).

    Returns
    -------
    float
        Energy in eV.
    """
    if len(numbers) < 2:
        return 0.0
    coords, alpha0, c6, r_vdw, damping = _prepare(positions_ang, numbers, volume_ratios, variant, beta, xc)
    freq, freq_w = frequency_grid()
    with jax.enable_x64(True):
        e = _energy_au(
            jnp.asarray(coords), jnp.asarray(alpha0), jnp.asarray(c6), jnp.asarray(r_vdw),
            damping, jnp.asarray(freq), jnp.asarray(freq_w), variant,
        )
        return float(e) * Hartree


def mbd_energy_and_forces(
    positions_ang: np.ndarray,
    numbers: np.ndarray,
    volume_ratios: np.ndarray,
    variant: Variant = "rsscs",
    beta: float | None = None,
    xc: str = "pbe0",
) -> tuple[float, np.ndarray]:
    """Dispersion energy and forces at fixed volume ratios.

    Parameters are those of :func:`mbd_energy`.

    Returns
    -------
    energy : float
        Energy in eV.
    forces : np.ndarray, shape (n, 3)
        Forces -dE/dR in eV/Å (volume ratios held fixed).
    """
    n = len(numbers)
    if n < 2:
        return 0.0, np.zeros((n, 3))
    coords, alpha0, c6, r_vdw, damping = _prepare(positions_ang, numbers, volume_ratios, variant, beta, xc)
    freq, freq_w = frequency_grid()
    with jax.enable_x64(True):
        e, g = _energy_and_grad_au(
            jnp.asarray(coords), jnp.asarray(alpha0), jnp.asarray(c6), jnp.asarray(r_vdw),
            damping, jnp.asarray(freq), jnp.asarray(freq_w), variant,
        )
        return float(e) * Hartree, -np.asarray(g, dtype=np.float64) * (Hartree / Bohr)
