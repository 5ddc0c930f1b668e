"""Many-body dispersion (MBD@rsSCS, MBD-NL) and Tkatchenko-Scheffler (TS) energies in JAX.

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

MBD-NL (J. Hermann, A. Tkatchenko, Phys. Rev. Lett. 124, 146401 (2020)),
``variant="nl"``:

- *From the density* (:func:`vv_polarisability_ratios`,
  :func:`mbd_nl_energy_and_forces_from_scf`): on the DFT grid, the
  Vydrov-Van Voorhis local polarisability
  ``alpha(r, iu) = n / (4 pi n / 3 + C |grad n / n|^4 + u^2)`` (C = 0.0093)
  of the SCF density n, multiplied by a cutoff that removes low-ionisation,
  metallic-like regions (:func:`vv_cutoff`; uses n, |grad n| and the
  kinetic-energy density tau of the occupied orbitals), is partitioned into
  atoms with Hirshfeld weights (the same free-atom promolecule as
  :mod:`qcell_nb.calculators.hirshfeld`) and integrated on the imaginary
  frequency grid: alpha_A(iu), hence alpha0_A and C6_A = 3/pi int alpha_A^2.
  The same integrals over each free atom's density give reference values,
  and the MBD parameters are the accurate free-atom alpha0 and C6 scaled by
  the ratios (molecule / free atom), R_vdW = 2.5 alpha0_free^(1/7)
  (alpha ratio)^(1/3) (:func:`mbd_nl_parameters`). No self-consistent
  screening; the MBD Hamiltonian uses the "fermi,dip" coupling with a = 6
  and beta = 0.83 for PBE0 (0.81 for PBE; see :data:`MBD_NL_BETA`).
  Approximations relative to the paper's FHI-aims implementation: Gaussian
  basis sets and PySCF grids instead of numeric atom-centred orbitals; the
  free atoms are spherical, spin-restricted PySCF atoms in the molecule's
  basis and functional (as for our Hirshfeld ratios); the cutoff function is
  our implementation of the paper's form (switch on the local ionisation
  potential at 5 eV, width 1 eV, and on the iso-orbital indicator), not
  checked against FHI-aims numbers, which we cannot run.
- *Without a density* (e.g. after tight binding): ``volume_ratios`` are
  taken as the alpha0 ratios and their squares as the C6 ratios, i.e.
  ratio-scaled free-atom values with MBD-NL's radii, damping and unscreened
  coupled-dipole form. This is an approximation to MBD-NL, not MBD-NL.

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

import os
from functools import partial
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import chemical_symbols
from ase.units import Bohr, Hartree

Variant = Literal["rsscs", "ts", "nl"]

#: Dispersion variants: MBD@rsSCS, pairwise TS, MBD-NL.
VARIANTS = ("rsscs", "ts", "nl")

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
#: MBD-NL beta by functional (libMBD's "mbd-nl" values as we know them: the
#: same as its MBD@TS betas; the installed pymbd has no MBD-NL to check against).
MBD_NL_BETA: dict[str, float] = {"pbe": 0.81, "pbe0": 0.83, "hse": 0.83}
TS_SR: dict[str, float] = {"pbe": 0.94, "pbe0": 0.96, "hse": 0.96, "b3lyp": 0.84}

#: Fermi-damping steepness for MBD (libMBD's MBD_DAMPING_A) and for TS (d).
MBD_DAMPING_A = 6.0
TS_DAMPING_D = 20.0

#: Frequency quadrature: number of Gauss-Legendre points and the scale L (Ha).
N_FREQ = 15
FREQ_SCALE = 0.6


def default_damping(variant: Variant, xc: str = "pbe0") -> float:
    """Damping parameter for ``variant`` and functional ``xc``.

    Returns beta for ``"rsscs"`` and ``"nl"``, s_R for ``"ts"`` (dimensionless).
    """
    table = {"rsscs": MBD_RSSCS_BETA, "ts": TS_SR, "nl": MBD_NL_BETA}.get(variant)
    if table is None:
        raise ValueError(f"unknown dispersion variant {variant!r}; use one of {', '.join(VARIANTS)}")
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
# masking the result: this keeps jax.grad free of 0/0 NaNs. ``mask`` (n,) is 1
# for real atoms and 0 for padding atoms (see _pad): pairs involving padding
# get zero coupling, so padding changes nothing but the array size.
# ----------------------------------------------------------------------------


def _pair_geometry(coords: jnp.ndarray, mask: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    n = coords.shape[0]
    eye = jnp.eye(n, dtype=coords.dtype)
    r = coords[:, None, :] - coords[None, :, :]
    dist = jnp.sqrt(jnp.sum(r**2, axis=-1) + eye)
    return r, dist, (1.0 - eye) * mask[:, None] * mask[None, :]


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


def _coupled_oscillator_energy_au(r, dist, pairs, alpha0, omega, r_vdw, beta, mask):
    """MBD energy of coupled dipole oscillators with "fermi,dip" long-range coupling (Ha).

    E = 1/2 Tr sqrt(H) - 3/2 sum_i omega_i, H = diag(omega^2) + omega_i omega_j
    sqrt(alpha_i alpha_j) f_ij T_ij; padding atoms contribute 3/2 omega - 3/2
    omega = 0 (their blocks are decoupled), their omega are excluded exactly.
    """
    s_vdw = beta * (r_vdw[:, None] + r_vdw[None, :])
    long_range = _fermi(dist, s_vdw, MBD_DAMPING_A) * pairs
    t_lr = _to_matrix(long_range[..., None, None] * _t_bare(r, dist))
    pre = jnp.repeat(omega * jnp.sqrt(alpha0), 3)
    h = jnp.diag(jnp.repeat(omega**2, 3)) + pre[:, None] * pre[None, :] * t_lr
    padding = 1.5 * jnp.sum((1.0 - mask) * omega)
    return 0.5 * _sum_sqrt_eigs(h) - padding - 1.5 * jnp.sum(mask * omega)


def _rsscs_energy_au(coords, alpha0, c6, r_vdw, mask, beta, freq, freq_w) -> jnp.ndarray:
    """MBD@rsSCS energy (Ha) from atom-in-molecule alpha0, C6, R_vdW (a.u.)."""
    n = coords.shape[0]
    r, dist, pairs = _pair_geometry(coords, mask)
    omega = 4.0 / 3.0 * c6 / alpha0**2
    s_vdw = beta * (r_vdw[:, None] + r_vdw[None, :])
    short_range = (1.0 - _fermi(dist, s_vdw, MBD_DAMPING_A)) * pairs
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
    return _coupled_oscillator_energy_au(r, dist, pairs, alpha0_scs, omega_scs, r_vdw_scs, beta, mask)


def _plain_mbd_energy_au(coords, alpha0, c6, r_vdw, mask, beta) -> jnp.ndarray:
    """MBD energy without screening (Ha): the MBD-NL form, "fermi,dip" coupling."""
    r, dist, pairs = _pair_geometry(coords, mask)
    omega = 4.0 / 3.0 * c6 / alpha0**2
    return _coupled_oscillator_energy_au(r, dist, pairs, alpha0, omega, r_vdw, beta, mask)


def _ts_energy_au(coords, alpha0, c6, r_vdw, mask, s_r) -> jnp.ndarray:
    """Pairwise TS energy (Ha) with Fermi damping (d = 20)."""
    _, dist, pairs = _pair_geometry(coords, mask)
    # combination rule of Tang (Phys. Rev. 177, 108 (1969)) as used by TS
    c6_ij = (
        2.0
        * c6[:, None]
        * c6[None, :]
        / (alpha0[None, :] / alpha0[:, None] * c6[:, None] + alpha0[:, None] / alpha0[None, :] * c6[None, :])
    )
    damp = _fermi(dist, s_r * (r_vdw[:, None] + r_vdw[None, :]), TS_DAMPING_D)
    return -0.5 * jnp.sum(pairs * damp * c6_ij / dist**6)


@partial(jax.jit, static_argnames=("variant",))
def _energy_and_grad_au(coords, alpha0, c6, r_vdw, mask, damping, freq, freq_w, variant):
    # One compiled function per (padded size, variant) serves both energy-only
    # and energy+forces calls: the gradient costs little next to compilation.
    if variant == "rsscs":
        fun = lambda x: _rsscs_energy_au(x, alpha0, c6, r_vdw, mask, damping, freq, freq_w)  # noqa: E731
    elif variant == "nl":
        fun = lambda x: _plain_mbd_energy_au(x, alpha0, c6, r_vdw, mask, damping)  # noqa: E731
    else:
        fun = lambda x: _ts_energy_au(x, alpha0, c6, r_vdw, mask, damping)  # noqa: E731
    return jax.value_and_grad(fun)(coords)


# ----------------------------------------------------------------------------
# Public API (Å, eV)
# ----------------------------------------------------------------------------


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> Path:
    """Keep JAX's compiled MBD functions on disk, so later processes skip XLA compilation.

    Compiling MBD@rsSCS energy+forces takes seconds per padded system size
    (measured: a 24-atom first call 24 s -> 5 s with a warm cache on a loaded
    2-core machine). This switches on JAX's persistent compilation cache for
    the whole process (it also serves any other JAX code, e.g. the model);
    it is not done on import because it changes global JAX configuration.
    Call it once at the start of a stage or worker, before the first JAX
    computation: JAX sets its cache up at the first compilation.

    Parameters
    ----------
    directory:
        Cache directory; default ``$QCELL_NB_CACHE/jax`` or
        ``~/.cache/qcell_nb/jax``.

    Returns
    -------
    Path
        The directory in use.
    """
    if directory is None:
        root = os.environ.get("QCELL_NB_CACHE")
        directory = (Path(root) if root else Path.home() / ".cache" / "qcell_nb") / "jax"
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


def padded_size(n: int) -> int:
    """Array size the JAX functions compile for when a system has ``n`` atoms.

    XLA compiles once per array shape (seconds per size on one core), so
    sizes are rounded up (to a multiple of 8 up to 64 atoms, of 16 up to 256,
    of 32 beyond): a data set of fragments of many sizes compiles a handful
    of times, not once per size. Padding atoms are decoupled and contribute
    exactly nothing (checked against pymbd in the tests).
    """
    step = 8 if n <= 64 else 16 if n <= 256 else 32
    return max(step, -(-n // step) * step)


def _pad(coords, alpha0, c6, r_vdw):
    """Append decoupled padding atoms (far away, unit parameters) up to :func:`padded_size`."""
    n = len(coords)
    extra = padded_size(n) - n
    mask = np.concatenate([np.ones(n), np.zeros(extra)])
    if extra == 0:
        return coords, alpha0, c6, r_vdw, mask
    # distinct, distant positions keep every pair distance finite and non-zero
    far = np.max(np.abs(coords)) + 1e3 * (1.0 + np.arange(extra))
    pad_coords = np.stack([far, np.zeros(extra), np.zeros(extra)], axis=1)
    ones = np.ones(extra)
    return (np.vstack([coords, pad_coords]), np.concatenate([alpha0, ones]), np.concatenate([c6, ones]),
            np.concatenate([r_vdw, ones]), mask)


def mbd_nl_parameters(numbers: np.ndarray, alpha0_ratios: np.ndarray,
                      c6_ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MBD-NL atomic alpha0, C6, R_vdW (atomic units) from VV-functional ratios.

    alpha0 = alpha0_free * a, C6 = C6_free * c with a, c the ratios of the
    VV-functional values in the molecule and in the free atom, and
    R_vdW = 2.5 * alpha0_free**(1/7) * a**(1/3) (bohr): the free-atom radius
    from the polarisability (Fedorov et al., Phys. Rev. Lett. 121, 183401
    (2018)), scaled like a volume; the same form as libMBD's MBD-NL setup.
    """
    alpha_free, c6_free, _ = free_atom_params(numbers)
    a = np.asarray(alpha0_ratios, dtype=np.float64)
    c = np.asarray(c6_ratios, dtype=np.float64)
    return alpha_free * a, c6_free * c, 2.5 * alpha_free ** (1.0 / 7.0) * a ** (1.0 / 3.0)


def _check_ratios(name: str, ratios: np.ndarray, n: int) -> np.ndarray:
    ratios = np.asarray(ratios, dtype=np.float64)
    if ratios.shape != (n,):
        raise ValueError(f"{name} have shape {ratios.shape}, expected ({n},)")
    if not np.all(np.isfinite(ratios)) or np.any(ratios <= 0):
        raise ValueError(f"{name} must be finite and positive, got {ratios}")
    return ratios


def _prepare(positions_ang, numbers, volume_ratios, variant, beta, xc, c6_ratios):
    if variant not in VARIANTS:
        raise ValueError(f"unknown dispersion variant {variant!r}; use one of {', '.join(VARIANTS)}")
    positions = np.asarray(positions_ang, dtype=np.float64)
    numbers = np.asarray(numbers, dtype=int)
    n = len(numbers)
    if positions.shape != (n, 3):
        raise ValueError(f"positions have shape {positions.shape}, expected ({n}, 3)")
    ratios = _check_ratios("volume_ratios", volume_ratios, n)
    if variant == "nl":
        c6r = ratios**2 if c6_ratios is None else _check_ratios("c6_ratios", c6_ratios, n)
        alpha0, c6, r_vdw = mbd_nl_parameters(numbers, ratios, c6r)
    else:
        if c6_ratios is not None:
            raise ValueError(f"c6_ratios are used only by variant 'nl', not {variant!r}")
        alpha_free, c6_free, r_free = free_atom_params(numbers)
        alpha0, c6, r_vdw = alpha_free * ratios, c6_free * ratios**2, r_free * ratios ** (1.0 / 3.0)
    damping = default_damping(variant, xc) if beta is None else float(beta)
    return _pad(positions / Bohr, alpha0, c6, r_vdw) + (damping,)


def mbd_energy_and_forces(
    positions_ang: np.ndarray,
    numbers: np.ndarray,
    volume_ratios: np.ndarray,
    variant: Variant = "rsscs",
    beta: float | None = None,
    xc: str = "pbe0",
    c6_ratios: np.ndarray | None = None,
) -> tuple[float, np.ndarray]:
    """Dispersion energy and forces of a finite system at fixed atomic parameters.

    Parameters
    ----------
    positions_ang : array, shape (n, 3)
        Positions in Å.
    numbers : array of int, shape (n,)
        Atomic numbers.
    volume_ratios : array, shape (n,)
        ``"rsscs"``/``"ts"``: Hirshfeld volume ratios V_eff / V_free
        (alpha0 ~ v, C6 ~ v**2, R_vdW ~ v**(1/3)). ``"nl"``: the
        static-polarisability ratios alpha0[n] / alpha0[n_free] of the VV
        functional (see :func:`vv_polarisability_ratios`), or, as the
        documented approximation when no density is at hand, Hirshfeld
        volume ratios.
    variant : {"rsscs", "ts", "nl"}
        MBD@rsSCS, pairwise TS, or MBD-NL (no screening, "fermi,dip"
        coupling, VV-based parameters; see the module notes).
    beta : float, optional
        Damping parameter: beta for rsSCS/NL, s_R for TS. Default: the value
        for ``xc`` (PBE0: rsSCS 0.85, NL 0.83, TS 0.96).
    xc : str
        Functional the damping is fitted for (used only when ``beta`` is None).
    c6_ratios : array, shape (n,), optional
        ``"nl"`` only: C6[n] / C6[n_free] from the VV functional; default
        ``volume_ratios**2`` (the ratio-scaled approximation).

    Returns
    -------
    energy : float
        Energy in eV.
    forces : np.ndarray, shape (n, 3)
        Forces -dE/dR in eV/Å, with the atomic parameters (ratios) held fixed.
    """
    n = len(numbers)
    if n < 2:
        _prepare(positions_ang, numbers, volume_ratios, variant, beta, xc, c6_ratios)  # validate
        return 0.0, np.zeros((n, 3))
    coords, alpha0, c6, r_vdw, mask, damping = _prepare(positions_ang, numbers, volume_ratios, variant, beta,
                                                         xc, c6_ratios)
    freq, freq_w = frequency_grid()
    with jax.enable_x64(True):
        e, g = _energy_and_grad_au(
            jnp.asarray(coords), jnp.asarray(alpha0), jnp.asarray(c6), jnp.asarray(r_vdw), jnp.asarray(mask),
            damping, jnp.asarray(freq), jnp.asarray(freq_w), variant,
        )
        return float(e) * Hartree, -np.asarray(g, dtype=np.float64)[:n] * (Hartree / Bohr)


def mbd_energy(
    positions_ang: np.ndarray,
    numbers: np.ndarray,
    volume_ratios: np.ndarray,
    variant: Variant = "rsscs",
    beta: float | None = None,
    xc: str = "pbe0",
    c6_ratios: np.ndarray | None = None,
) -> float:
    """Dispersion energy (eV) of a finite system; parameters as :func:`mbd_energy_and_forces`."""
    return mbd_energy_and_forces(positions_ang, numbers, volume_ratios, variant, beta, xc, c6_ratios)[0]


# ----------------------------------------------------------------------------
# MBD-NL atomic parameters from the electron density (VV polarisability)
# ----------------------------------------------------------------------------

#: C of the Vydrov-Van Voorhis local polarisability (the VV10 value).
VV_C = 0.0093

#: Densities below this (bohr^-3) contribute nothing to the VV integrals:
#: there the polarisability density n/(...) is negligible and the reduced
#: quantities in the cutoff are numerically meaningless.
VV_DENSITY_FLOOR = 1e-10

# Cutoff constants (atomic units): logistic switch of the local ionisation
# potential I = |grad n|^2 / (8 n^2) centred at 5 eV with width 1 eV, and the
# interpolation steepness c of the iso-orbital switch.
_EV = 1.0 / Hartree
_CUT_I0, _CUT_IW, _CUT_C = 5.0 * _EV, 1.0 * _EV, 0.1


def vv_polarisability_density(rho: np.ndarray, grad: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Local VV polarisability alpha(r, iu) = n / (4 pi n / 3 + C |grad n / n|^4 + u^2).

    Vydrov and Van Voorhis, Phys. Rev. A 81, 062708 (2010); atomic units.

    Parameters
    ----------
    rho : array, shape (g,)
        Density n (bohr^-3), positive.
    grad : array, shape (g,)
        |grad n| (bohr^-4).
    u : array, shape (f,)
        Imaginary frequencies (Ha).

    Returns
    -------
    np.ndarray, shape (f, g)
        Polarisability per volume (dimensionless: bohr^3 / bohr^3).
    """
    omega_sq = 4.0 * np.pi / 3.0 * rho + VV_C * (grad / rho) ** 4
    return rho[None, :] / (omega_sq[None, :] + np.asarray(u)[:, None] ** 2)


def vv_cutoff(rho: np.ndarray, grad: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """MBD-NL's cutoff of the VV polarisability density, values in [0, 1], shape (g,).

    f = 1 - (1 - L(I)) (1 - h(a - 3 sqrt(I))): the polarisability is removed
    where the local ionisation potential I = |grad n|^2 / (8 n^2) is low (L is
    a logistic switch centred at 5 eV, width 1 eV) *and* the iso-orbital
    indicator a = (tau - tau_W) / tau_unif is large compared with 3 sqrt(I)
    (h goes from 1 at x <= 0 to 0 at x >= 1 as exp(-c x / (1 - x)), c = 0.1):
    low-density, metallic-like regions, where the VV model overestimates the
    polarisability. tau = 1/2 sum |grad phi|^2 (PySCF's convention),
    tau_W = |grad n|^2 / (8 n), tau_unif = 3/10 (3 pi^2)^(2/3) n^(5/3).
    """
    ion = grad**2 / (8.0 * rho**2)
    tau_w = grad**2 / (8.0 * rho)
    tau_unif = 0.3 * (3.0 * np.pi**2) ** (2.0 / 3.0) * rho ** (5.0 / 3.0)
    iso = (tau - tau_w) / tau_unif
    logistic = 1.0 / (1.0 + np.exp(-4.0 / _CUT_IW * (ion - _CUT_I0)))
    x = iso - 3.0 * np.sqrt(ion)
    inside = np.clip(x, 1e-12, 1.0 - 1e-12)
    h = np.where(x <= 0.0, 1.0, np.where(x >= 1.0, 0.0, np.exp(-_CUT_C * inside / (1.0 - inside))))
    return 1.0 - (1.0 - logistic) * (1.0 - h)


def _vv_integrals(rho_block: np.ndarray, weights: np.ndarray, freq: np.ndarray) -> np.ndarray:
    """Cut-off VV polarisability integrated with weights over one grid block, shape (k, f).

    ``rho_block`` is PySCF's ``eval_rho(..., "MGGA", with_lapl=False)`` output
    (n, grad n (3 rows), tau), shape (5, g); ``weights`` has shape (k, g):
    quadrature weights times one partition per row (e.g. Hirshfeld weights
    of k atoms); ``freq`` the imaginary frequencies (f,). Returns
    sum_g weights[k, g] f_cut(g) alpha_VV(g, iu_f) in bohr^3.
    """
    rho, grad_vec, tau = rho_block[0], rho_block[1:4], rho_block[-1]
    keep = rho > VV_DENSITY_FLOOR
    rho, tau, weights = rho[keep], tau[keep], weights[:, keep]
    grad = np.linalg.norm(grad_vec[:, keep], axis=0)
    local = vv_polarisability_density(rho, grad, freq) * vv_cutoff(rho, grad, tau)[None, :]
    return weights @ local.T


_VV_FREE_CACHE: dict[tuple, np.ndarray] = {}


def _free_atom_vv(mol, atom_index: int, xc: str, cache_dir, freq: np.ndarray) -> np.ndarray:
    """VV alpha(iu) (shape (f,), bohr^3) of the free atom of ``mol``'s atom ``atom_index``."""
    from pyscf import dft

    from .hirshfeld import FREE_ATOM_GRID, _atom_mol, free_atom

    dm, _ = free_atom(mol, atom_index, xc, cache_dir)
    atom = _atom_mol(mol, atom_index)
    key = (atom.atom_symbol(0), repr(atom._basis), repr(atom._ecp), xc, tuple(np.round(freq, 12)))
    if key not in _VV_FREE_CACHE:
        grids = dft.gen_grid.Grids(atom)
        grids.atom_grid = {atom.atom_symbol(0): FREE_ATOM_GRID}
        grids.build()
        ao = dft.numint.eval_ao(atom, grids.coords, deriv=1)
        rho = dft.numint.eval_rho(atom, ao, dm, xctype="MGGA", with_lapl=False)
        _VV_FREE_CACHE[key] = _vv_integrals(rho, grids.weights[None, :], freq)[0]
    return _VV_FREE_CACHE[key]


def vv_polarisability_ratios(mf, cache_dir=None, xc: str | None = None) -> dict[str, np.ndarray]:
    """MBD-NL ratios from a converged PySCF SCF: VV alpha0 and C6 of atoms in the molecule over free atoms.

    For every atom A, on the molecular DFT grid,
    ``alpha_A(iu) = int w_A(r) f_cut(r) alpha_VV[n](r, iu) d^3r`` with the
    Hirshfeld weight ``w_A = n_A^free / sum_B n_B^free`` (the promolecule of
    :mod:`qcell_nb.calculators.hirshfeld`: spherical free atoms in the same
    basis and functional), the VV polarisability density
    (:func:`vv_polarisability_density`) of the SCF density and the cutoff
    :func:`vv_cutoff` (needs n, |grad n| and the kinetic-energy density tau).
    C6_A = 3/pi int alpha_A(iu)^2 du on :func:`frequency_grid`. The same
    integrals over the free atom's density (fine atom-centred grid) give the
    reference; the ratios feed :func:`mbd_nl_parameters`, which scales the
    accurate free-atom alpha0 and C6 with them.

    Parameters
    ----------
    mf : pyscf.scf.hf.SCF
        Converged RKS/UKS (or HF) object; ``mf.grids`` is used (built at
        level 3 if absent).
    cache_dir : path, optional
        Free-atom cache directory (see :func:`qcell_nb.calculators.hirshfeld.free_atom`).
    xc : str, optional
        Functional of the free atoms; default ``mf.xc``.

    Returns
    -------
    dict
        ``alpha0_ratios`` (n,), ``c6_ratios`` (n,), and the VV values
        ``alpha0_vv``, ``c6_vv``, ``alpha0_vv_free``, ``c6_vv_free`` (n,;
        a.u.: bohr^3, Ha bohr^6).
    """
    from .hirshfeld import density_blocks

    mol = mf.mol
    if xc is None:
        xc = getattr(mf, "xc", "hf")
    freq, freq_w = frequency_grid()
    n_atoms = mol.natm
    alpha = np.zeros((n_atoms, len(freq)))
    for rho, hirshfeld_weights, weights, _ in density_blocks(mf, cache_dir, xc, deriv=1, xctype="MGGA"):
        alpha += _vv_integrals(rho, hirshfeld_weights * weights[None, :], freq)

    alpha_free = np.array([_free_atom_vv(mol, ia, xc, cache_dir, freq) for ia in range(n_atoms)])
    c6 = 3.0 / np.pi * (alpha**2) @ freq_w
    c6_free = 3.0 / np.pi * (alpha_free**2) @ freq_w
    return {
        "alpha0_ratios": alpha[:, 0] / alpha_free[:, 0],
        "c6_ratios": c6 / c6_free,
        "alpha0_vv": alpha[:, 0],
        "c6_vv": c6,
        "alpha0_vv_free": alpha_free[:, 0],
        "c6_vv_free": c6_free,
    }


def mbd_nl_energy_and_forces_from_scf(mf, xc: str | None = None, beta: float | None = None,
                                      cache_dir=None) -> tuple[float, np.ndarray, dict[str, np.ndarray]]:
    """MBD-NL energy (eV) and forces (eV/Å) for the molecule of a converged PySCF SCF.

    The one call a DFT driver needs: :func:`vv_polarisability_ratios` on the
    SCF density, then :func:`mbd_energy_and_forces` with ``variant="nl"``.
    Forces hold the VV ratios fixed (as the rsSCS forces hold the Hirshfeld
    ratios fixed). ``beta`` defaults to :data:`MBD_NL_BETA` for ``xc``
    (default ``mf.xc``). Returns ``(energy, forces, ratios)`` with the dict
    of :func:`vv_polarisability_ratios`.
    """
    xc = xc if xc is not None else getattr(mf, "xc", "pbe0")
    ratios = vv_polarisability_ratios(mf, cache_dir=cache_dir, xc=xc)
    from pyscf import gto

    mol = mf.mol
    # nuclear charges, not mol.atom_charges() (net of ECP cores)
    numbers = np.array([gto.charge(mol.atom_pure_symbol(i)) for i in range(mol.natm)])
    energy, forces = mbd_energy_and_forces(mol.atom_coords() * Bohr, numbers, ratios["alpha0_ratios"],
                                           variant="nl", beta=beta, xc=xc, c6_ratios=ratios["c6_ratios"])
    return energy, forces, ratios
