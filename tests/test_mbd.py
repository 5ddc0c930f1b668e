"""MBD@rsSCS and TS in JAX: agreement with pymbd, forces, physical behaviour."""

from __future__ import annotations

import numpy as np
import pytest
from ase.data import chemical_symbols
from ase.units import Bohr, Hartree

from qcell_nb.calculators import mbd

# beta-D-glucopyranose (RDKit ETKDG + MMFF, seed 7), Å
GLUCOSE = [
    ("O", 2.8812, -2.0221, -0.0686), ("C", 2.1630, -0.9728, 0.5905), ("C", 1.1198, -0.3630, -0.3602),
    ("O", 0.0803, -1.3256, -0.6652), ("C", -1.1120, -1.1763, 0.0996), ("O", -0.8411, -1.3178, 1.4849),
    ("C", -1.7915, 0.1786, -0.1987), ("O", -2.6839, 0.0815, -1.3197), ("C", -0.7551, 1.2715, -0.5101),
    ("O", -1.2443, 2.5572, -0.0829), ("C", 0.5714, 0.9705, 0.1868), ("O", 1.4954, 2.0387, -0.0467),
    ("H", 3.2865, -2.5695, 0.6266), ("H", 1.6842, -1.4097, 1.4703), ("H", 2.8947, -0.2233, 0.9067),
    ("H", 1.6251, -0.1763, -1.3184), ("H", -1.7713, -2.0026, -0.1960), ("H", -1.7123, -1.5248, 1.9196),
    ("H", -2.4089, 0.4807, 0.6563), ("H", -2.1797, -0.3300, -2.0504), ("H", -0.5907, 1.3696, -1.5908),
    ("H", -2.1037, 2.6793, -0.5298), ("H", 0.4180, 0.9271, 1.2707), ("H", 0.9751, 2.8592, 0.0797),
]

# Watson-Crick G-C pair: 9-methylguanine + 1-methylcytosine (RDKit ETKDG + MMFF, seed 1, each
# base put in the xy plane), cytosine placed rigidly in plane so that O6...N4 = 2.91, N1...N3 = 2.95
# and N2...O2 = 2.86 Å (typical Watson-Crick H-bond lengths). Å; guanine first (19 atoms).
GC_PAIR = [
    ("C", -2.6396, 1.7872, 0.0120),
    ("N", -1.8852, 0.5624, 0.0008),
    ("C", -2.3961, -0.7092, -0.0054),
    ("N", -1.4457, -1.6233, -0.0099),
    ("C", -0.2793, -0.8995, -0.0051),
    ("C", -0.5254, 0.4552, -0.0019),
    ("N", 0.3675, 1.4737, 0.0025),
    ("C", 1.6084, 1.0671, -0.0004),
    ("N", 2.6176, 1.9746, -0.0011),
    ("N", 1.9851, -0.2611, -0.0121),
    ("C", 1.1008, -1.3320, 0.0012),
    ("O", 1.4918, -2.4951, 0.0193),
    ("H", -3.7085, 1.5591, 0.0133),
    ("H", -2.3804, 2.3478, 0.9138),
    ("H", -2.3855, 2.3610, -0.8828),
    ("H", -3.4594, -0.9128, -0.0053),
    ("H", 3.4333, 1.7368, -0.5499),
    ("H", 2.2787, 2.9113, -0.2002),
    ("H", 2.9576, -0.5108, 0.0407),
    ("C", 7.8296, 0.1631, 0.0011),
    ("N", 6.8570, -0.9162, 0.0262),
    ("C", 7.3019, -2.2167, -0.0056),
    ("C", 6.4444, -3.2349, -0.0189),
    ("C", 5.0148, -2.8689, -0.0023),
    ("N", 4.0652, -3.8536, 0.0077),
    ("N", 4.5902, -1.6452, 0.0088),
    ("C", 5.4919, -0.6062, 0.0023),
    ("O", 5.1030, 0.5597, -0.0194),
    ("H", 8.2054, 0.2700, -1.0212),
    ("H", 8.6602, -0.0708, 0.6750),
    ("H", 7.3881, 1.1129, 0.3155),
    ("H", 8.3750, -2.3787, -0.0237),
    ("H", 6.7436, -4.2715, -0.0546),
    ("H", 4.2868, -4.6934, 0.5273),
    ("H", 3.1469, -3.4819, 0.2344),
]

WATER = np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]])
WATER_RATIOS = np.array([0.94, 0.53, 0.53])  # PBE0/def2-SVP Hirshfeld ratios, rounded


def water_dimer(separation: float = 2.9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two waters, O...O = ``separation`` Å along x (second one rotated), Å."""
    second = WATER[:, [2, 1, 0]] * np.array([1.0, 1.0, 1.0]) + np.array([separation, 0.0, 0.3])
    positions = np.vstack([WATER, second])
    return positions, np.array([8, 1, 1, 8, 1, 1]), np.tile(WATER_RATIOS, 2)


def glucose() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    numbers = np.array([chemical_symbols.index(row[0]) for row in GLUCOSE])
    positions = np.array([row[1:] for row in GLUCOSE])
    rng = np.random.default_rng(0)
    ratios = np.where(numbers == 1, 0.6, 0.85) + 0.05 * rng.random(len(numbers))
    return positions, numbers, ratios


def gc_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    numbers = np.array([chemical_symbols.index(row[0]) for row in GC_PAIR])
    positions = np.array([row[1:] for row in GC_PAIR])
    rng = np.random.default_rng(1)
    ratios = np.where(numbers == 1, 0.55, 0.8) + 0.1 * rng.random(len(numbers))
    return positions, numbers, ratios


SYSTEMS = {"water_dimer": water_dimer, "glucose": glucose, "gc_pair": gc_pair}


@pytest.mark.parametrize("system", sorted(SYSTEMS))
@pytest.mark.parametrize("beta", [0.85, 0.83])
def test_rsscs_energy_matches_pymbd(system: str, beta: float) -> None:
    pymbd = pytest.importorskip(
        "pymbd", reason="pymbd (libMBD's Python package) not installed; the reference comparison is skipped"
    )
    positions, numbers, ratios = SYSTEMS[system]()
    species = [chemical_symbols[z] for z in numbers]
    reference = pymbd.mbd_energy_species(positions / Bohr, species, ratios, beta) * Hartree
    ours = mbd.mbd_energy(positions, numbers, ratios, variant="rsscs", beta=beta)
    assert ours == pytest.approx(reference, abs=1e-6)


def test_free_atom_table_matches_libmbd() -> None:
    pymbd = pytest.importorskip("pymbd", reason="pymbd not installed; table cross-check skipped")
    from pymbd.pymbd import vdw_params

    for symbol, (alpha0, c6, r_vdw) in mbd.FREE_ATOM_PARAMS.items():
        row = vdw_params[symbol]
        assert (alpha0, c6, r_vdw) == pytest.approx((row["alpha_0(TS)"], row["C6(TS)"], row["R_vdw(TS)"]))
    assert pymbd is not None


@pytest.mark.parametrize("variant", ["rsscs", "ts", "nl"])
def test_forces_match_finite_differences(variant: str) -> None:
    positions, numbers, ratios = water_dimer(2.9)
    energy, forces = mbd.mbd_energy_and_forces(positions, numbers, ratios, variant=variant)
    assert energy == pytest.approx(mbd.mbd_energy(positions, numbers, ratios, variant=variant), abs=1e-10)
    step = 1e-4  # Å; central differences, error ~ step^2
    fd = np.zeros_like(forces)
    for i in range(len(numbers)):
        for k in range(3):
            shifted = positions.copy()
            shifted[i, k] += step
            e_plus = mbd.mbd_energy(shifted, numbers, ratios, variant=variant)
            shifted[i, k] -= 2 * step
            e_minus = mbd.mbd_energy(shifted, numbers, ratios, variant=variant)
            fd[i, k] = -(e_plus - e_minus) / (2 * step)
    np.testing.assert_allclose(forces, fd, atol=1e-5)
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-10)  # translation invariance


def test_dimer_interaction_negative_and_decaying() -> None:
    mono = mbd.mbd_energy(WATER, [8, 1, 1], WATER_RATIOS)
    interactions = []
    for separation in (2.9, 4.0, 6.0, 12.0):
        positions, numbers, ratios = water_dimer(separation)
        interactions.append(mbd.mbd_energy(positions, numbers, ratios) - 2 * mono)
    interactions = np.array(interactions)
    assert np.all(interactions < 0)
    assert np.all(np.diff(np.abs(interactions)) < 0)
    # long range: E ~ -C6/R^6, so doubling 6 -> 12 Å divides it by ~64
    assert interactions[2] / interactions[3] == pytest.approx(64, rel=0.15)
    # total (intra + inter) energy of a molecule is negative too
    assert mono < 0


def test_ts_two_atoms_closed_form() -> None:
    # Two carbons: E = -f(R) C6 / R^6 with the TS Fermi damping (d=20, s_R=0.96).
    r_ang = 3.5
    ratios = np.array([0.9, 0.9])
    energy = mbd.mbd_energy([[0, 0, 0], [0, 0, r_ang]], [6, 6], ratios, variant="ts")
    alpha0, c6, r0 = mbd.FREE_ATOM_PARAMS["C"]
    c6_eff = c6 * 0.9**2
    r_vdw = r0 * 0.9 ** (1 / 3)
    r = r_ang / Bohr
    damping = 1 / (1 + np.exp(-20 * (r / (0.96 * 2 * r_vdw) - 1)))
    assert energy == pytest.approx(-damping * c6_eff / r**6 * Hartree, rel=1e-10)


def test_default_damping_is_libmbd_pbe0() -> None:
    assert mbd.default_damping("rsscs", "PBE0") == 0.85
    assert mbd.default_damping("ts", "pbe0") == 0.96
    with pytest.raises(ValueError, match="m06"):
        mbd.default_damping("rsscs", "m06")


def test_frequency_grid_integrates_casimir_polder() -> None:
    # int_0^inf du a0^2 / (1 + (u/w)^2)^2 = pi a0^2 w / 4, i.e. C6 = 3/4 a0^2 w
    freq, weights = mbd.frequency_grid()
    assert freq[0] == 0.0 and weights[0] == 0.0
    omega = 0.4
    c6 = 3 / np.pi * np.sum(weights / (1 + (freq / omega) ** 2) ** 2)
    assert c6 == pytest.approx(0.75 * omega, rel=1e-5)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="Og"):
        mbd.mbd_energy([[0, 0, 0], [0, 0, 3]], [118, 1], [1.0, 1.0])
    with pytest.raises(ValueError, match="variant"):
        mbd.mbd_energy(WATER, [8, 1, 1], WATER_RATIOS, variant="mbd-nl")
    with pytest.raises(ValueError, match="positive"):
        mbd.mbd_energy(WATER, [8, 1, 1], [0.9, -0.1, 0.5])
    assert mbd.mbd_energy_and_forces([[0, 0, 0]], [8], [1.0])[0] == 0.0


def test_x64_does_not_leak() -> None:
    import jax
    import jax.numpy as jnp

    mbd.mbd_energy(WATER, [8, 1, 1], WATER_RATIOS)
    if not jax.config.jax_enable_x64:  # unless someone enabled it globally
        assert jnp.zeros(1).dtype == jnp.float32


# --- padding, MBD-NL -------------------------------------------------------------------------


def test_padding_buckets() -> None:
    assert [mbd.padded_size(n) for n in (2, 8, 9, 64, 65, 257)] == [8, 8, 16, 64, 80, 288]


def _plain_mbd_reference(positions_bohr, alpha0, c6, r_vdw, beta) -> float:
    """Unscreened MBD energy (Ha) with pymbd's own "fermi,dip" dipole matrix."""
    from pymbd.pymbd import dipole_matrix

    omega = 4 / 3 * c6 / alpha0**2
    pre = np.repeat(omega * np.sqrt(alpha0), 3)
    h = np.diag(np.repeat(omega**2, 3)) + np.outer(pre, pre) * dipole_matrix(
        positions_bohr, "fermi,dip", R_vdw=r_vdw, beta=beta)
    return np.sum(np.sqrt(np.linalg.eigvalsh(h))) / 2 - 1.5 * np.sum(omega)


@pytest.mark.parametrize("system", ["glucose", "gc_pair"])
def test_nl_energy_matches_pymbd_dipole_matrix(system: str) -> None:
    pytest.importorskip("pymbd", reason="pymbd not installed; the reference comparison is skipped")
    positions, numbers, ratios = SYSTEMS[system]()
    rng = np.random.default_rng(3)
    c6_ratios = ratios**2 * (0.8 + 0.4 * rng.random(len(numbers)))  # independent of alpha ratios
    alpha0, c6, r_vdw = mbd.mbd_nl_parameters(numbers, ratios, c6_ratios)
    reference = _plain_mbd_reference(positions / Bohr, alpha0, c6, r_vdw, 0.83) * Hartree
    ours = mbd.mbd_energy(positions, numbers, ratios, variant="nl", c6_ratios=c6_ratios)
    assert ours == pytest.approx(reference, abs=1e-9)
    assert ours != pytest.approx(mbd.mbd_energy(positions, numbers, ratios), abs=1e-3)  # not rsSCS


def test_nl_parameters_and_defaults() -> None:
    alpha0, c6, r_vdw = mbd.mbd_nl_parameters([6, 1], [1.0, 0.5], [1.0, 0.25])
    assert alpha0 == pytest.approx([12.0, 2.25]) and c6 == pytest.approx([46.6, 6.5 * 0.25])
    assert r_vdw == pytest.approx([2.5 * 12.0 ** (1 / 7), 2.5 * 4.5 ** (1 / 7) * 0.5 ** (1 / 3)])
    assert mbd.default_damping("nl", "pbe0") == 0.83 and mbd.default_damping("nl", "pbe") == 0.81
    with pytest.raises(ValueError, match="c6_ratios.*'nl'"):
        mbd.mbd_energy(WATER, [8, 1, 1], WATER_RATIOS, c6_ratios=WATER_RATIOS**2)
    with pytest.raises(ValueError, match="c6_ratios have shape"):
        mbd.mbd_energy(WATER, [8, 1, 1], WATER_RATIOS, variant="nl", c6_ratios=[1.0])


def test_vv_cutoff_keeps_one_orbital_regions_and_cuts_electron_gas() -> None:
    rho = np.array([1e-2, 1e-2])
    # hydrogen-like tail: |grad n|/n = 2 (I = 13.6 eV), tau = tau_W (one orbital)
    grad_h = 2 * rho[0]
    tau_w = grad_h**2 / (8 * rho[0])
    # uniform electron gas: no gradient (I = 0), tau = tau_unif (iso-orbital indicator 1)
    tau_unif = 0.3 * (3 * np.pi**2) ** (2 / 3) * rho[1] ** (5 / 3)
    cut = mbd.vv_cutoff(rho, np.array([grad_h, 0.0]), np.array([tau_w, tau_unif]))
    assert cut[0] == pytest.approx(1.0, abs=1e-6)
    assert cut[1] == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def water_scf(tmp_path_factory):
    from pyscf import dft, gto

    mol = gto.M(atom=[("O", WATER[0]), ("H", WATER[1]), ("H", WATER[2])], basis="def2-svp", verbose=0)
    mf = dft.RKS(mol)
    mf.xc = "pbe0"
    mf.grids.level = 2
    mf.kernel()
    # the free-atom cache location tests/test_pbe0.py uses: a suite run computes free atoms once
    return mf, tmp_path_factory.getbasetemp() / "qcell_cache" / "free_atoms"


def test_vv_ratios_of_water_from_the_density(water_scf) -> None:
    mf, cache = water_scf
    ratios = mbd.vv_polarisability_ratios(mf, cache_dir=cache)
    a, c = ratios["alpha0_ratios"], ratios["c6_ratios"]
    # measured (def2-SVP): O 1.04 / 1.09, H 0.23 / 0.10: O gains electrons, H loses them
    assert 0.9 < a[0] < 1.2 and 0.9 < c[0] < 1.3
    assert np.all((0.1 < a[1:]) & (a[1:] < 0.5)) and a[1] == pytest.approx(a[2], rel=1e-6)
    assert np.all(c[1:] < a[1:])
    # free-atom VV values are physical (exact alpha0: O 5.4, H 4.5 bohr^3)
    assert ratios["alpha0_vv_free"] == pytest.approx([4.8, 5.4, 5.4], rel=0.1)

    # the Hirshfeld weights are a partition of unity: atomic alphas add up to the molecule's
    from pyscf import dft

    ni = dft.numint.NumInt()
    freq, _ = mbd.frequency_grid()
    total = np.zeros(len(freq))
    dm = mf.make_rdm1()
    for ao, mask, weights, _ in ni.block_loop(mf.mol, mf.grids, deriv=1):
        rho = ni.eval_rho(mf.mol, ao, dm, mask, "MGGA", with_lapl=False)
        total += mbd._vv_integrals(rho, weights[None, :], freq)[0]
    assert ratios["alpha0_vv"].sum() == pytest.approx(total[0], rel=1e-10)


def test_vv_ratios_of_a_free_atom_are_one(water_scf) -> None:
    from pyscf import dft, gto

    mol = gto.M(atom="Ne 0 0 0", basis="def2-svp", verbose=0)
    mf = dft.RKS(mol)
    mf.xc = "pbe0"
    mf.kernel()
    ratios = mbd.vv_polarisability_ratios(mf, cache_dir=water_scf[1])
    # closed-shell Ne is its own spherical free atom; only the grids differ
    assert ratios["alpha0_ratios"][0] == pytest.approx(1.0, abs=2e-3)
    assert ratios["c6_ratios"][0] == pytest.approx(1.0, abs=4e-3)


def test_mbd_nl_from_scf(water_scf) -> None:
    mf, cache = water_scf
    energy, forces, ratios = mbd.mbd_nl_energy_and_forces_from_scf(mf, cache_dir=cache)
    expected = mbd.mbd_energy_and_forces(WATER, [8, 1, 1], ratios["alpha0_ratios"], variant="nl",
                                         c6_ratios=ratios["c6_ratios"])
    assert energy == pytest.approx(expected[0], abs=1e-12) and energy < 0
    np.testing.assert_allclose(forces, expected[1], atol=1e-12)


@pytest.mark.parametrize("variant", ["rsscs", "nl"])
def test_base_pair_forces_match_finite_differences(variant: str) -> None:
    # a larger, padded system (35 atoms -> 40): padding must not leak into the gradient
    positions, numbers, ratios = gc_pair()
    _, forces = mbd.mbd_energy_and_forces(positions, numbers, ratios, variant=variant)
    step = 1e-4
    for i, k in [(11, 0), (24, 1), (34, 2)]:  # guanine O6, cytosine N4, a cytosine H
        energies = []
        for sign in (1, -1):
            shifted = positions.copy()
            shifted[i, k] += sign * step
            energies.append(mbd.mbd_energy(shifted, numbers, ratios, variant=variant))
        assert forces[i, k] == pytest.approx(-(energies[0] - energies[1]) / (2 * step), abs=1e-6)


def test_compilation_cache_directory(tmp_path, monkeypatch) -> None:
    import jax

    previous = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv("QCELL_NB_CACHE", str(tmp_path))
    try:
        path = mbd.enable_compilation_cache()
        assert path == tmp_path / "jax" and path.is_dir()
        assert jax.config.jax_compilation_cache_dir == str(path)
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)
