"""An SO3LR-style force field in e3x: SO3krates layers plus physical long-range terms.

The network maps a batch of molecules, stored as one flat list of atoms with
sparse neighbour pairs (see :mod:`qcell_nb.model.data`), to per-molecule
energies; forces are minus their gradient with respect to the positions.
Following SO3LR (Kabylda et al., JACS 2025) the energy is a sum of four terms::

    E = E_short (SO3krates atomic energies, 4.5 Å)   learned many-body part
      + E_rep   (ZBL-type nuclear repulsion)            learnable ZBL coefficients
      + E_elec  (q_i q_j erf(r / a) / r)                predicted charges, total charge conserved
      + E_disp  (C6, C8, C10 with Becke-Johnson damping) predicted Hirshfeld ratios

Short-range part (Frank et al., "A Euclidean transformer for fast and stable
machine learned force fields", Nat. Commun. 2024): every atom carries
invariant features ``x`` (F channels) and Euclidean variables ``chi`` (one
channel of every degree 1..L, ``(L+1)**2 - 1`` components). Each layer

1. updates ``x`` by filter-based attention over neighbours (no softmax;
   attention weights times a smooth cutoff, summed and divided by the
   average neighbour count). Filters are MLPs of a Bernstein radial basis and
   of the per-degree invariants ``<chi_i^l, chi_j^l>``;
2. updates ``chi`` by a second attention whose heads are the degrees:
   ``chi_i^l += sum_j a^l_ij Y^l(r_ij)``;
3. exchanges information between the two (the interaction block): an MLP of
   ``x`` and the per-degree norms ``|chi_i^l|^2`` updates ``x`` and rescales
   ``chi^l``;
4. applies a residual MLP to ``x``.

Layer norms precede each block (pre-norm residual layout). Euclidean
variables carry one channel per degree, which is why the layers are cheap:
pair intermediates are (P, F) and (P, (L+1)**2), never (P, (L+1)**2, F).

Embeddings: elements (Z = 1..118, plus Z = 0 for MM point charges), the
molecule's total charge and its number of unpaired electrons (spin), spread
over atoms by an attention as in SpookyNet / SO3LR. An MM site's features
also get a learned vector times its charge (``mm_charge_embedding``, zero at
initialisation), so MM sites of different charge (an MM oxygen and an MM
hydrogen) look different to the short-range model.

Charges: the network predicts raw atomic charges; the difference between
their sum and the molecule's total charge is spread evenly over the QM
atoms, so the total charge is conserved exactly. MM atoms (Z = 0) keep their
fixed input charge ``mm_charges``; they enter the short-range model as an
element of their own and interact with QM charges electrostatically, but
carry no atomic energy, no repulsion and no dispersion, and MM-MM pairs are
excluded (that is the MM force field's business).

Dispersion (SO3LR's choice, with our parametrisation): free-atom
polarisability alpha_i and C6_i (Tkatchenko-Scheffler table,
:data:`qcell_nb.calculators.mbd.FREE_ATOM_PARAMS`) scaled by the predicted
Hirshfeld ratio ``h_i`` (alpha ~ h, C6 ~ h^2); pair C6 by the TS combination
rule; C8 and C10 from a quantum Drude oscillator with the electron's charge
(``gamma_i = m w = 3 alpha_i / (4 C6_i)``, ``C8/C6 = 5/gamma``,
``C10/C6 = 245/8/gamma^2``, pairs combined as ``5/2 (1/gamma_i + 1/gamma_j)``
and ``245/8 / (gamma_i gamma_j)``); rational (Becke-Johnson) damping
``C_n / (r^n + R^n)`` with ``R = a1 sqrt(C8/C6) + a2``, a1 and a2 learnable.

Long range: pairs for electrostatics and dispersion are listed up to
``long_range_cutoff`` (default 10 Å, as in QCell). There the Coulomb kernel
is shifted-force (energy and force vanish at the cutoff) and both terms are
multiplied by a smooth switch over its last :data:`LONG_RANGE_SWITCH_WIDTH`
Å; ``long_range_cutoff=None`` takes all pairs in a molecule, unswitched.

Units: positions Å, energies eV, forces eV/Å, charges e, dipoles e·Å.

Shape symbols: ``N`` atoms, ``P`` short-range pairs (each listed once,
``i < j``; messages run over the ``2P`` ordered pairs), ``Q`` long-range
pairs (once each), ``G`` molecules (all padded), ``F`` features,
``L`` ``max_degree``, ``S = (L+1)**2 - 1`` Euclidean components.

As before, the network predicts the energy *residual* to a fixed per-element
baseline (:class:`~qcell_nb.model.data.EnergyBaseline`), added back in
float64 outside; a learnable per-element scale and shift map the atomic
outputs to eV (SO3LR's per-element energy scale and shift).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import e3x
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ase.data import chemical_symbols
from ase.units import Bohr, Hartree

from qcell_nb.calculators.mbd import FREE_ATOM_PARAMS

#: Embedding and per-element tables cover Z = 0..118; 0 is the MM pseudo-element.
MAX_ATOMIC_NUMBER = 118
#: Parameter name of the MM-charge term of the atom embedding (absent from models saved before it).
MM_CHARGE_EMBEDDING = "mm_charge_embedding"
#: Coulomb constant e^2 / (4 pi eps0) in eV Å.
COULOMB = Hartree * Bohr
#: Width (Å) of the smooth switch that ends the long-range terms at their cutoff.
LONG_RANGE_SWITCH_WIDTH = 1.5
#: ZBL universal screening: coefficients, exponents (1/a), and a = 0.8854 a0 / (Zi^p + Zj^p).
ZBL_COEFFICIENTS = (0.18175, 0.50986, 0.28022, 0.02817)
ZBL_EXPONENTS = (3.19980, 0.94229, 0.40290, 0.20162)
ZBL_LENGTH = 0.8854 * Bohr
ZBL_POWER = 0.23

Params = Any  # a flax parameter pytree ({"params": {...}})
Batch = Mapping[str, jax.Array]

#: Published-size presets (SO3LR itself is "large": F = 128, 3 layers, degrees 1-4).
SIZES: dict[str, dict[str, int]] = {
    "small": {"features": 32, "max_degree": 2, "num_iterations": 2, "num_heads": 2, "num_basis_functions": 16},
    "medium": {"features": 64, "max_degree": 3, "num_iterations": 2, "num_heads": 4, "num_basis_functions": 24},
    "large": {"features": 128, "max_degree": 4, "num_iterations": 3, "num_heads": 4, "num_basis_functions": 32},
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture hyperparameters (hashable: it keys the jit caches).

    Parameters
    ----------
    features:
        Invariant feature channels per atom, ``F`` (divisible by ``num_heads``).
    max_degree:
        Highest degree ``L`` of the Euclidean variables (degrees 1..L).
    num_iterations:
        SO3krates layers.
    num_heads:
        Attention heads of the invariant update.
    num_basis_functions:
        Bernstein radial basis functions on [0, cutoff].
    cutoff:
        Short-range cutoff in Å (smooth; SO3LR uses 4.5 Å).
    avg_num_neighbors:
        Divides the attention sums (set by ``train`` from the training data).
    long_range_cutoff:
        Å; electrostatics and dispersion end smoothly there. None: all pairs.
    electrostatics, dispersion, repulsion:
        Switch the physical terms on or off.
    electrostatics_damping:
        Length ``a`` (Å) of the erf damping of the Coulomb kernel, ``erf(r/a)/r``.
    """

    features: int = 32
    max_degree: int = 2
    num_iterations: int = 2
    num_heads: int = 2
    num_basis_functions: int = 16
    cutoff: float = 4.5
    avg_num_neighbors: float = 8.0
    long_range_cutoff: float | None = 10.0
    electrostatics: bool = True
    dispersion: bool = True
    repulsion: bool = True
    electrostatics_damping: float = 1.0

    def __post_init__(self) -> None:
        for name in ("features", "max_degree", "num_iterations", "num_heads", "num_basis_functions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.features % self.num_heads:
            raise ValueError(f"ModelConfig.features={self.features} is not divisible by "
                             f"num_heads={self.num_heads}")
        for name in ("cutoff", "avg_num_neighbors", "electrostatics_damping"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)!r}")
        lr = self.long_range_cutoff
        if lr is not None and not lr > LONG_RANGE_SWITCH_WIDTH:
            raise ValueError(f"ModelConfig.long_range_cutoff must be None or > {LONG_RANGE_SWITCH_WIDTH} Å, "
                             f"got {lr!r}")

    @classmethod
    def for_size(cls, size: str, **overrides: Any) -> ModelConfig:
        """The ``"small"``, ``"medium"`` or ``"large"`` preset (:data:`SIZES`), with overrides."""
        if size not in SIZES:
            raise ValueError(f"model size {size!r} is not one of {', '.join(SIZES)}")
        return cls(**{**SIZES[size], **overrides})

    @property
    def uses_long_range(self) -> bool:
        return self.electrostatics or self.dispersion

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {sorted(unknown)}")
        return cls(**data)


# --------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------
def _displacements(positions: jax.Array, dst: jax.Array, src: jax.Array, mask: jax.Array,
                   far: float) -> tuple[jax.Array, jax.Array]:
    """Vectors src - dst (Q, 3) and lengths (Q,); padding pairs are put at ``far`` Å.

    Padding pairs may be self-pairs (zero vectors); moving them far away keeps
    every function finite there and keeps NaN gradients of a zero-length
    vector out of the forces.
    """
    vectors = positions[src] - positions[dst]
    vectors = jnp.where(mask[:, None], vectors, jnp.asarray([far, 0.0, 0.0], vectors.dtype))
    return vectors, jnp.linalg.norm(vectors, axis=-1)


def _degree_sums(values: jax.Array, max_degree: int) -> jax.Array:
    """Sum the components of every degree 1..L: (..., S) -> (..., L)."""
    return jnp.stack([jnp.sum(values[..., l * l - 1:(l + 1) ** 2 - 1], axis=-1)
                      for l in range(1, max_degree + 1)], axis=-1)


def _degree_repeat(values: jax.Array, max_degree: int) -> jax.Array:
    """Repeat one value per degree over its 2l+1 components: (..., L) -> (..., S)."""
    return jnp.concatenate([jnp.repeat(values[..., l - 1:l], 2 * l + 1, axis=-1)
                            for l in range(1, max_degree + 1)], axis=-1)


class MLP(nn.Module):
    """Dense -> silu -> Dense."""

    hidden: int
    out: int
    zero_init: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.silu(nn.Dense(self.hidden)(x))
        kernel_init = nn.initializers.zeros if self.zero_init else nn.initializers.lecun_normal()
        return nn.Dense(self.out, kernel_init=kernel_init)(h)


class SO3kratesLayer(nn.Module):
    """One Euclidean-transformer layer (see the module docstring)."""

    features: int
    max_degree: int
    num_heads: int
    avg_num_neighbors: float

    @nn.compact
    def __call__(self, x: jax.Array, chi: jax.Array, radial: jax.Array, ylm: jax.Array,
                 cut: jax.Array, pair_i: jax.Array, pair_j: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``x`` (N, F), ``chi`` (N, S); ``radial`` (P, K) of the pairs listed once (``pair_i``,
        ``pair_j``); ``ylm`` (2P, S) and ``cut`` (2P,) of the ordered pairs: first ``i <- j``, then
        ``j <- i``."""
        F, L, H = self.features, self.max_degree, self.num_heads
        head = F // H
        num_atoms = x.shape[0]
        dst, src = jnp.concatenate([pair_i, pair_j]), jnp.concatenate([pair_j, pair_i])
        # Pair filters from the radial basis and the Euclidean invariants
        # <chi_i^l, chi_j^l>; one MLP of both (SO3krates sums two MLPs). Both
        # inputs are symmetric in the pair, so the filter is evaluated once per
        # pair and used for both directions (this MLP is most of the cost).
        chi_dot = _degree_sums(chi[pair_i] * chi[pair_j], L)  # (P, L)
        filters = MLP(F, F + L * head)(jnp.concatenate([radial, chi_dot], axis=-1))
        filters = jnp.concatenate([filters, filters])  # (2P, F + L * head)
        w_inv, w_ev = filters[:, :F], filters[:, F:]

        # queries, keys, values of both attentions in one projection
        h = nn.LayerNorm()(x)
        qkv = nn.Dense(3 * F + 2 * L * head, use_bias=False)(h)
        q, k, v = qkv[:, :F], qkv[:, F:2 * F], qkv[:, 2 * F:3 * F]
        q2, k2 = qkv[:, 3 * F:3 * F + L * head], qkv[:, 3 * F + L * head:]

        # 1. invariant attention, H heads, no softmax
        scores = (q[dst] * w_inv * k[src]).reshape(-1, H, head).sum(-1) / np.sqrt(head)  # (P, H)
        weights = scores * cut[:, None]
        messages = (weights[:, :, None] * v[src].reshape(-1, H, head)).reshape(-1, F)
        x = x + nn.Dense(F)(e3x.ops.indexed_sum(messages, dst_idx=dst, num_segments=num_atoms)
                            / self.avg_num_neighbors)

        # 2. Euclidean attention, one head per degree
        scores2 = (q2[dst] * w_ev * k2[src]).reshape(-1, L, head).sum(-1) / np.sqrt(head)  # (P, L)
        ev_messages = _degree_repeat(scores2 * cut[:, None], L) * ylm  # (P, S)
        chi = chi + e3x.ops.indexed_sum(ev_messages, dst_idx=dst, num_segments=num_atoms) / self.avg_num_neighbors

        # 3. exchange between invariant features and Euclidean variables
        h = nn.LayerNorm()(x)
        norms = _degree_sums(chi * chi, L)  # (N, L)
        update = MLP(F, F + L, zero_init=True)(jnp.concatenate([h, norms], axis=-1))
        x = x + update[:, :F]
        chi = chi + _degree_repeat(update[:, F:], L) * chi

        # 4. residual MLP on the invariant features
        x = x + MLP(F, F, zero_init=True)(nn.LayerNorm()(x))
        return x, chi


class ChargeSpinEmbedding(nn.Module):
    """Spread a per-molecule scalar (total charge or unpaired electrons) over atoms.

    ``a_i = psi * softplus(q_i . k / sqrt(F)) / sum_{j in molecule} softplus(...)``
    and the atom gets ``MLP(a_i v)``; separate ``k``, ``v`` for positive and
    negative ``psi``. Zero ``psi`` adds exactly nothing.
    """

    features: int

    @nn.compact
    def __call__(self, x: jax.Array, psi: jax.Array, segments: jax.Array, atom_mask: jax.Array,
                 num_graphs: int) -> jax.Array:
        """``x`` (N, F), ``psi`` (G,) -> (N, F)."""
        F = self.features
        keys = self.param("keys", nn.initializers.normal(1.0), (2, F))
        values = self.param("values", nn.initializers.normal(1.0), (2, F))
        psi_atom = psi[segments]
        sign = (psi_atom < 0).astype(jnp.int32)
        query = nn.Dense(F, use_bias=False)(x)
        logits = jnp.sum(query * keys[sign], axis=-1) / np.sqrt(F)
        weight = jnp.where(atom_mask, nn.softplus(logits), 0.0)
        total = jax.ops.segment_sum(weight, segments, num_segments=num_graphs)[segments]
        a = psi_atom * weight / jnp.maximum(total, 1e-12)
        return MLP(F, F, zero_init=False)(a[:, None] * values[sign]) * (psi_atom != 0)[:, None]


def _element_table(index: int) -> np.ndarray:
    """Column ``index`` of the free-atom table by atomic number (0 where no data)."""
    table = np.zeros(MAX_ATOMIC_NUMBER + 1)
    for symbol, row in FREE_ATOM_PARAMS.items():
        table[chemical_symbols.index(symbol)] = row[index]
    return table


#: Free-atom polarisability (bohr^3) and C6 (Ha bohr^6) by atomic number; 0 = no data.
FREE_ALPHA = _element_table(0)
FREE_C6 = _element_table(1)


def _softplus_inverse(y: float) -> float:
    return float(np.log(np.expm1(y)))


class ZBLRepulsion(nn.Module):
    """ZBL-type screened nuclear repulsion with learnable coefficients (eV per pair).

    ``E_ij = k Z_i Z_j / r * sum_k c_k exp(-e_k r / a_ij) * f_cut(r)``,
    ``a_ij = d / (Z_i^p + Z_j^p)``; c (normalised to sum 1), e, d and p are
    learnable (positive through softplus) and start at the universal ZBL values.
    """

    @nn.compact
    def __call__(self, zi: jax.Array, zj: jax.Array, r: jax.Array, cut: jax.Array) -> jax.Array:
        def positive(name, init):
            raw = self.param(name, lambda key: jnp.asarray([_softplus_inverse(v) for v in np.atleast_1d(init)],
                                                           jnp.float32))
            return nn.softplus(raw)

        c = positive("coefficients", ZBL_COEFFICIENTS)
        c = c / jnp.sum(c)
        e = positive("exponents", ZBL_EXPONENTS)
        d = positive("length", ZBL_LENGTH)[0]
        p = positive("power", ZBL_POWER)[0]
        zi_f, zj_f = zi.astype(r.dtype), zj.astype(r.dtype)
        # Z^p with Z = 0 (MM atoms) is fine: the prefactor Zi*Zj is 0 there.
        a = d / (jnp.where(zi > 0, zi_f, 1.0) ** p + jnp.where(zj > 0, zj_f, 1.0) ** p)
        screening = jnp.sum(c * jnp.exp(-e * (r / a)[:, None]), axis=-1)
        return COULOMB * zi_f * zj_f / r * screening * cut


def _long_range_switch(r: jax.Array, cutoff: float | None) -> jax.Array:
    if cutoff is None:
        return jnp.ones_like(r)
    return 1.0 - e3x.nn.smooth_switch(r, cutoff - LONG_RANGE_SWITCH_WIDTH, cutoff)


def coulomb_kernel(r: jax.Array, damping: float, cutoff: float | None) -> jax.Array:
    """erf(r/a)/r (1/Å), shifted-force at ``cutoff`` and smoothly switched off there."""
    def v(x):
        return jax.scipy.special.erf(x / damping) / x

    kernel = v(r)
    if cutoff is not None:
        rc = jnp.asarray(cutoff, r.dtype)
        dv_rc = jax.grad(v)(rc)
        kernel = (kernel - v(rc) - dv_rc * (r - rc)) * (r < rc)
    return kernel * _long_range_switch(r, cutoff)


def dispersion_coefficients(numbers: jax.Array, hirshfeld: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Atom-in-molecule alpha (bohr^3), C6 (Ha bohr^6) and QDO gamma (bohr^-2) of every atom.

    Elements without free-atom data (and MM atoms) get alpha = C6 = 1, gamma = 0.75:
    finite dummies; their pairs are masked by the caller.
    """
    has = jnp.asarray(FREE_C6 > 0)[numbers]
    alpha = jnp.where(has, jnp.asarray(FREE_ALPHA, hirshfeld.dtype)[numbers] * hirshfeld, 1.0)
    c6 = jnp.where(has, jnp.asarray(FREE_C6, hirshfeld.dtype)[numbers] * hirshfeld**2, 1.0)
    return alpha, c6, 0.75 * alpha / c6


class Dispersion(nn.Module):
    """Pairwise C6/C8/C10 dispersion from per-atom coefficients (eV per pair; see module docstring)."""

    @nn.compact
    def __call__(self, alpha_i, alpha_j, c6_i, c6_j, gamma_i, gamma_j, r, cutoff: float | None) -> jax.Array:
        a1 = nn.softplus(self.param("a1", lambda key: jnp.asarray(_softplus_inverse(0.4), jnp.float32)))
        a2 = nn.softplus(self.param("a2", lambda key: jnp.asarray(_softplus_inverse(4.8), jnp.float32)))
        c6 = 2 * c6_i * c6_j / (alpha_j / alpha_i * c6_i + alpha_i / alpha_j * c6_j)
        c8_over_c6 = 2.5 * (1 / gamma_i + 1 / gamma_j)
        c10_over_c6 = (245.0 / 8.0) / (gamma_i * gamma_j)
        radius2 = (a1 * jnp.sqrt(c8_over_c6) + a2) ** 2
        r2 = (r / Bohr) ** 2
        r6, radius6 = r2**3, radius2**3
        terms = 1 / (r6 + radius6) + c8_over_c6 / (r6 * r2 + radius6 * radius2) \
            + c10_over_c6 / (r6 * r2 * r2 + radius6 * radius2 * radius2)
        return -Hartree * c6 * terms * _long_range_switch(r, cutoff)


class SO3LRModel(nn.Module):
    """Energies, charges, Hirshfeld ratios of a batch (see the module docstring).

    Attributes
    ----------
    config: architecture
    energy_scale: initial per-element energy scale in eV (only used at ``init``)
    """

    config: ModelConfig = ModelConfig()
    energy_scale: float = 1.0

    @nn.compact
    def __call__(self, positions: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        """Outputs for ``batch`` at ``positions`` (N, 3) Å.

        Returns a dict: ``energy`` (G,) eV (residual, sum of the terms),
        ``energy_short``, ``energy_repulsion``, ``energy_electrostatics``,
        ``energy_dispersion`` (G,) eV, ``charges`` (N,) e, ``hirshfeld`` (N,),
        ``dipole`` (G, 3) e·Å of the QM atoms about the coordinate origin.
        """
        cfg = self.config
        numbers, segments = batch["numbers"], batch["batch_segments"]
        atom_mask, pair_mask = batch["atom_mask"], batch["pair_mask"]
        pair_i, pair_j = batch["pair_i"], batch["pair_j"]
        num_graphs = batch["graph_mask"].shape[0]
        qm = atom_mask & (numbers > 0)
        mm = atom_mask & (numbers == 0)

        # short-range geometry, once per pair (i < j); the reversed pair j <- i has the same
        # distance and the mirrored direction, Y_l(-r) = (-1)^l Y_l(r)
        vectors, r = _displacements(positions, pair_i, pair_j, pair_mask, 2.0 * cfg.cutoff)
        cut = e3x.nn.smooth_cutoff(r, cutoff=cfg.cutoff) * pair_mask
        radial = e3x.nn.basic_bernstein(r, cfg.num_basis_functions, limit=cfg.cutoff) * cut[:, None]
        ylm = e3x.so3.spherical_harmonics(vectors / r[:, None], cfg.max_degree, r_is_normalized=True)[:, 1:]
        parity = np.concatenate([np.full(2 * l + 1, (-1.0) ** l) for l in range(1, cfg.max_degree + 1)])
        ylm_both = jnp.concatenate([ylm, ylm * parity.astype(ylm.dtype)])
        cut_both = jnp.concatenate([cut, cut])

        x = nn.Embed(MAX_ATOMIC_NUMBER + 1, cfg.features, name="element_embedding")(numbers)
        # zero-initialised, so a model saved before it existed predicts the same (see load_model)
        mm_vector = self.param(MM_CHARGE_EMBEDDING, nn.initializers.zeros, (cfg.features,), jnp.float32)
        x = x + jnp.where(mm, batch["mm_charges"], 0.0)[:, None] * mm_vector
        x = x + ChargeSpinEmbedding(cfg.features, name="charge_embedding")(
            x, batch["total_charge"], segments, atom_mask, num_graphs)
        x = x + ChargeSpinEmbedding(cfg.features, name="spin_embedding")(
            x, batch["spin"], segments, atom_mask, num_graphs)
        chi = jnp.zeros((x.shape[0], (cfg.max_degree + 1) ** 2 - 1), x.dtype)
        for i in range(cfg.num_iterations):
            x, chi = SO3kratesLayer(cfg.features, cfg.max_degree, cfg.num_heads, cfg.avg_num_neighbors,
                                    name=f"layer_{i}")(x, chi, radial, ylm_both, cut_both, pair_i, pair_j)
        x = nn.LayerNorm()(x)

        # atomic energies with per-element scale and shift
        heads = MLP(cfg.features, 3, name="heads")(x)  # energy, charge, Hirshfeld ratio
        atomic = heads[:, 0]
        table = MAX_ATOMIC_NUMBER + 1
        scale = self.param("element_scale", lambda key: jnp.full((table,), self.energy_scale, jnp.float32))
        shift = self.param("element_shift", nn.initializers.zeros, (table,), jnp.float32)
        atomic = jnp.where(qm, scale[numbers] * atomic + shift[numbers], 0.0)
        terms = {"energy_short": jax.ops.segment_sum(atomic, segments, num_segments=num_graphs)}

        # charges: total charge of the QM atoms conserved exactly
        raw = jnp.where(qm, heads[:, 1], 0.0)
        n_qm = jax.ops.segment_sum(qm.astype(raw.dtype), segments, num_segments=num_graphs)
        excess = (batch["total_charge"] - jax.ops.segment_sum(raw, segments, num_segments=num_graphs))
        correction = (excess / jnp.maximum(n_qm, 1.0))[segments]
        qm_charges = jnp.where(qm, raw + correction, 0.0)
        charges = jnp.where(mm, batch["mm_charges"], qm_charges)
        dipole = jax.ops.segment_sum(qm_charges[:, None] * positions, segments, num_segments=num_graphs)

        # Hirshfeld ratios in (0, 2), 1 at a zero raw output. Bounded because early in training the
        # energy and force losses pushed unbounded ratios to ~2 and beyond through the dispersion
        # term (C6 grows as the square), long before the Hirshfeld loss could hold them.
        hirshfeld = jnp.where(qm, 2.0 * nn.sigmoid(heads[:, 2]), 0.0)

        zero = jnp.zeros(num_graphs, atomic.dtype)
        if cfg.repulsion:
            pair_qm = pair_mask & qm[pair_i] & qm[pair_j]
            e_pair = ZBLRepulsion(name="repulsion")(numbers[pair_i], numbers[pair_j], r, cut * pair_qm)
            terms["energy_repulsion"] = jax.ops.segment_sum(e_pair, segments[pair_i], num_segments=num_graphs)
        else:
            terms["energy_repulsion"] = zero
        terms["energy_electrostatics"] = terms["energy_dispersion"] = zero
        if cfg.uses_long_range:
            i, j, lr_mask = batch["lr_dst"], batch["lr_src"], batch["lr_mask"]
            far = 2.0 * (cfg.long_range_cutoff or 1e3)
            _, r_lr = _displacements(positions, i, j, lr_mask, far)
            lr_graph = segments[i]
            if cfg.electrostatics:
                not_mm_mm = lr_mask & ~(mm[i] & mm[j])
                kernel = coulomb_kernel(r_lr, cfg.electrostatics_damping, cfg.long_range_cutoff)
                e_pair = jnp.where(not_mm_mm, COULOMB * charges[i] * charges[j] * kernel, 0.0)
                terms["energy_electrostatics"] = jax.ops.segment_sum(e_pair, lr_graph, num_segments=num_graphs)
            if cfg.dispersion:
                has_data = jnp.asarray(FREE_C6 > 0)[numbers] & qm
                both_qm = lr_mask & has_data[i] & has_data[j]
                alpha, c6, gamma = dispersion_coefficients(numbers, hirshfeld)
                e_pair = Dispersion(name="dispersion")(alpha[i], alpha[j], c6[i], c6[j], gamma[i], gamma[j],
                                                       r_lr, cfg.long_range_cutoff)
                terms["energy_dispersion"] = jax.ops.segment_sum(jnp.where(both_qm, e_pair, 0.0), lr_graph,
                                                                 num_segments=num_graphs)
        energy = sum(terms.values())
        return {"energy": energy, **terms, "charges": charges, "hirshfeld": hirshfeld, "dipole": dipole}


#: Backwards-compatible name of the network module.
EnergyModel = SO3LRModel


@functools.lru_cache(maxsize=8)
def _init_fn(config: ModelConfig):
    # XLA backend optimisation off: parameter shapes do not depend on the
    # batch and init runs once per model, so a quick unoptimised compile beats
    # an optimised one. Cached per config so repeated training runs reuse it.
    return jax.jit(SO3LRModel(config).init, compiler_options={"xla_backend_optimization_level": 0})


def init_params(model: SO3LRModel, batch: Batch, key: jax.Array) -> Params:
    """Initialise parameters from one example batch (any shape bucket).

    ``model.energy_scale`` is written into the per-element scales after
    init, so the compiled init is shared by models that differ only in it.
    """
    params = _init_fn(model.config)(key, batch["positions"], batch)
    params = jax.tree.map(lambda x: x, params)  # a fresh dict tree we may edit
    params["params"]["element_scale"] = jnp.full_like(params["params"]["element_scale"], model.energy_scale)
    return params


def predict_batch(model: SO3LRModel, params: Params, batch: Batch) -> dict[str, jax.Array]:
    """All outputs of :class:`SO3LRModel` plus ``forces`` (N, 3) eV/Å = -dE/dR.

    Forces of padded atoms are zero. Every atom belongs to exactly one
    molecule, so the gradient of the *sum* of molecular energies gives each
    atom's force in one backward pass.
    """
    def total_energy(positions):
        out = model.apply(params, positions, batch)
        return jnp.sum(out["energy"]), out

    (_, out), gradient = jax.value_and_grad(total_energy, has_aux=True)(batch["positions"])
    out["forces"] = jnp.where(batch["atom_mask"][:, None], -gradient, 0.0)
    return out


def energy_and_forces(model: SO3LRModel, params: Params, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """Residual energies (G,) eV and forces (N, 3) eV/Å."""
    out = predict_batch(model, params, batch)
    return out["energy"], out["forces"]
