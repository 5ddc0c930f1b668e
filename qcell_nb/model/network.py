"""A small e3x equivariant message-passing energy model.

The network maps a batch of molecules, stored as one flat list of atoms and a
sparse list of neighbour pairs (see :mod:`qcell_nb.model.data`), to one energy
per molecule; forces are minus its gradient with respect to the positions.

Units: positions in Å, energies in eV, forces in eV/Å.

Shapes use these symbols:

``N``  atoms in the (padded) batch
``P``  neighbour pairs in the (padded) batch (ordered: i→j and j→i both listed)
``G``  molecules (graphs) in the (padded) batch
``F``  features per atom
``L``  ``max_degree``; equivariant features have ``(L + 1)**2`` components

The network predicts the *residual* energy: the reference energy minus a fixed
per-element baseline fitted by least squares (:class:`EnergyBaseline` in
:mod:`qcell_nb.model.data`). The baseline (``~ -10^4 eV`` for PBE0 total
energies) is added back in float64 outside the network, because float32 cannot
resolve meV differences on numbers that large. Inside the network a learnable
per-element scale and shift map the normalised atomic outputs to eV; the scale
starts at the data's energy scale (:attr:`EnergyBaseline.scale`) and the shift
at zero, so an untrained model predicts about the baseline.

Messages: by default :class:`RadialMessages` (cheap, degree-preserving pair
messages plus atom-wise ``e3x.nn.TensorDense`` coupling);
``ModelConfig(messages="tensor")`` uses ``e3x.nn.MessagePass`` (full
Clebsch-Gordan products on every pair), 3-5x slower per step on CPU.

Later stages grow this into the full SO3LR architecture (attention, charges,
long-range terms); each piece here is its own small module so they can be
replaced one at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import e3x
import flax.linen as nn
import jax
import jax.numpy as jnp

#: Embedding and per-element tables cover Z = 0..118; index 0 is "no atom" (padding).
MAX_ATOMIC_NUMBER = 118

Params = Any  # a flax parameter pytree ({"params": {...}})
Batch = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture hyperparameters (hashable: it keys the jit caches).

    Parameters
    ----------
    features:
        Feature channels per atom and degree, ``F``.
    max_degree:
        Highest degree of spherical harmonics / equivariant features, ``L``.
    num_iterations:
        Message-passing iterations (interaction blocks).
    num_basis_functions:
        Radial basis functions (reciprocal Bernstein polynomials).
    cutoff:
        Interaction cutoff in Å; pairs beyond it do not interact and the smooth
        cutoff makes energies differentiable as atoms cross it.
    messages:
        ``"radial"`` (default): :class:`RadialMessages` on pairs plus atom-wise
        ``e3x.nn.TensorDense`` coupling. ``"tensor"``: ``e3x.nn.MessagePass``
        (full Clebsch-Gordan products on every pair). On 2 CPU cores, 8
        glucose (24 atoms, ~3900 pairs at 5 Å) take ~0.08 s per training step
        with ``"radial"`` against ~0.3-0.5 s with ``"tensor"``, whose
        (P, (L+1)**4, F) pair intermediates make it memory-bound.
    """

    features: int = 32
    max_degree: int = 2
    num_iterations: int = 2
    num_basis_functions: int = 16
    cutoff: float = 5.0
    messages: str = "radial"

    def __post_init__(self) -> None:
        for name in ("features", "num_iterations", "num_basis_functions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.max_degree, int) or self.max_degree < 0:
            raise ValueError(f"ModelConfig.max_degree must be a non-negative integer, got {self.max_degree!r}")
        if not self.cutoff > 0:
            raise ValueError(f"ModelConfig.cutoff must be positive (Å), got {self.cutoff!r}")
        if self.messages not in ("radial", "tensor"):
            raise ValueError(f"ModelConfig.messages must be 'radial' or 'tensor', got {self.messages!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {sorted(unknown)}")
        types = {"cutoff": float, "messages": str}
        return cls(**{k: types.get(k, int)(v) for k, v in data.items()})


@dataclasses.dataclass(frozen=True)
class PairGeometry:
    """Rotation-aware description of every neighbour pair.

    Attributes
    ----------
    radial: (P, K)
        Reciprocal Bernstein radial functions times a smooth cutoff; exactly
        zero beyond the cutoff and for padding pairs.
    angular: (P, (L+1)**2)
        Real spherical harmonics (Racah normalisation, e3x ordering) of the
        unit vector from ``dst`` to ``src``.
    """

    radial: jax.Array
    angular: jax.Array

    def basis(self) -> jax.Array:
        """The e3x basis layout (P, 1, (L+1)**2, K), as ``e3x.nn.basis`` returns."""
        return self.angular[:, None, :, None] * self.radial[:, None, None, :]


def pair_geometry(
    positions: jax.Array,
    dst_idx: jax.Array,
    src_idx: jax.Array,
    pair_mask: jax.Array,
    *,
    max_degree: int,
    num_basis_functions: int,
    cutoff: float,
) -> PairGeometry:
    """Radial and angular functions of every pair (padding pairs give zeros).

    Parameters
    ----------
    positions: (N, 3) Å
    dst_idx, src_idx: (P,) int; the pair j→i is ``(dst=i, src=j)``
    pair_mask: (P,) bool, False for padding pairs
    """
    displacements = positions[src_idx] - positions[dst_idx]  # (P, 3)
    # Padding pairs may be self-pairs (zero vector); move them beyond the
    # cutoff so every function is exactly zero there and no NaN gradient of a
    # zero-length vector can leak into the forces.
    far = jnp.asarray([2.0 * cutoff, 0.0, 0.0], dtype=displacements.dtype)
    displacements = jnp.where(pair_mask[:, None], displacements, far)
    unit, distance = e3x.ops.normalize_and_return_norm(displacements, axis=-1)  # (P, 3), (P,)
    radial = e3x.nn.reciprocal_bernstein(distance, num_basis_functions)
    radial = radial * e3x.nn.smooth_cutoff(distance, cutoff=cutoff)[:, None]
    radial = radial * pair_mask[:, None].astype(radial.dtype)
    angular = e3x.so3.spherical_harmonics(unit, max_degree, r_is_normalized=True)
    return PairGeometry(radial=radial, angular=angular)


class TensorMessages(nn.Module):
    """Messages by ``e3x.nn.MessagePass``: full Clebsch-Gordan tensor products.

    ``m_i = sum_j tensor(x_j, dense(basis_ij))`` couples every pair of
    degrees on every pair of atoms. Most expressive, but its (P, (L+1)**4, F)
    intermediates make it memory-bound on CPU (see ``RadialMessages``).
    """

    output_max_degree: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, geometry: PairGeometry, dst_idx: jax.Array,
                 src_idx: jax.Array) -> jax.Array:
        """``x``: (N, 1, (l+1)**2, F) -> (N, 1, (l'+1)**2, F)."""
        return e3x.nn.MessagePass(max_degree=self.output_max_degree, include_pseudotensors=False)(
            x, geometry.basis(), dst_idx=dst_idx, src_idx=src_idx, num_segments=x.shape[0])


class RadialMessages(nn.Module):
    """Cheap equivariant messages: no coupling of degrees on pairs.

    For every pair j→i, with learned radial filters ``a, b, c`` (functions of
    ``r_ij``, one per degree l and feature f)::

        m_i[lm] = sum_j  a_l(r) * x_j[00] * Y_lm(u_ij)       scalars -> every degree
                       + b_l(r) * x_j[lm]                     each degree -> itself
        m_i[00] += sum_j sum_{l>0} c_l(r) * sum_m x_j[lm] Y_lm(u_ij)   every degree -> scalars

    Each term is equivariant (invariant weights times equivariant quantities,
    or a rotation-invariant dot product). Pair intermediates are only
    (P, (L+1)**2, F); coupling between degrees happens atom-wise afterwards
    (``e3x.nn.TensorDense`` in :class:`InteractionBlock`), where there are far
    fewer atoms than pairs. Terms that would be zero (l > 0 inputs of the
    first block, which are scalars, and l > 0 outputs of the last block,
    which are discarded) are not computed.
    """

    max_degree: int

    @nn.compact
    def __call__(self, x: jax.Array, geometry: PairGeometry, dst_idx: jax.Array,
                 src_idx: jax.Array) -> jax.Array:
        """``x``: (N, 1, (l_in+1)**2, F) -> (N, 1, (max_degree+1)**2, F)."""
        num_atoms, features = x.shape[0], x.shape[-1]
        l_in = math.isqrt(x.shape[-2]) - 1
        l_out = self.max_degree
        l_both = min(l_in, l_out)
        num_filters = (l_out + 1) + (l_both + 1) + l_in
        filters = nn.Dense(num_filters * features, use_bias=False)(geometry.radial)
        filters = filters.reshape(-1, num_filters, features)  # (P, num_filters, F)
        a = filters[:, : l_out + 1]
        b = filters[:, l_out + 1 : l_out + l_both + 2]
        c = filters[:, l_out + l_both + 2 :]
        x_src = e3x.ops.gather_src(x[:, 0], src_idx=src_idx)  # (P, (l_in+1)**2, F)
        scalar_src = x_src[:, :1]  # (P, 1, F)
        ylm = geometry.angular[:, :, None]  # (P, S, 1)
        # Degree by degree with static slices: gathers along the degree axis
        # turn into slow scatters in the backward pass on CPU.
        parts = []
        for l in range(l_out + 1):
            block = slice(l * l, (l + 1) ** 2)
            part = a[:, l : l + 1] * scalar_src * ylm[:, block]
            if l <= l_both:
                part = part + b[:, l : l + 1] * x_src[:, block]
            if l == 0:
                for k in range(1, l_in + 1):
                    dot = jnp.sum(x_src[:, k * k : (k + 1) ** 2] * ylm[:, k * k : (k + 1) ** 2], axis=1)
                    part = part + (c[:, k - 1] * dot)[:, None]
            parts.append(part)
        messages = jnp.concatenate(parts, axis=1)  # (P, (l_out+1)**2, F)
        summed = e3x.ops.indexed_sum(messages, dst_idx=dst_idx, num_segments=num_atoms)
        return summed[:, None]


class InteractionBlock(nn.Module):
    """One message-passing iteration: equivariant messages, then an atom-wise update.

    Both steps are residual, so stacking blocks starts close to the identity.
    ``output_max_degree=0`` (used for the last block) keeps only scalars, which
    is all the energy readout needs.
    """

    features: int
    max_degree: int
    messages: str = "radial"
    output_max_degree: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, geometry: PairGeometry, dst_idx: jax.Array,
                 src_idx: jax.Array) -> jax.Array:
        """``x``: (N, 1, (l+1)**2, F) -> (N, 1, (l'+1)**2, F)."""
        if self.messages == "tensor":
            m = TensorMessages(output_max_degree=self.output_max_degree)(x, geometry, dst_idx, src_idx)
        else:
            out_degree = self.max_degree if self.output_max_degree is None else self.output_max_degree
            m = RadialMessages(max_degree=out_degree)(x, geometry, dst_idx, src_idx)
        if self.output_max_degree is not None:
            x = e3x.nn.change_max_degree_or_type(x, max_degree=self.output_max_degree,
                                                 include_pseudotensors=False)
        y = e3x.nn.add(x, m)
        if self.messages != "tensor" and self.output_max_degree != 0:
            # Atom-wise degree coupling (the part RadialMessages leaves out
            # on pairs). A scalar-only output needs none: its messages
            # already carry the invariant dot products.
            y = e3x.nn.add(y, e3x.nn.TensorDense(max_degree=self.max_degree, include_pseudotensors=False)(y))
        # Atom-wise MLP; the zero-initialised output layer makes the block
        # start as "x + messages", which trains stably.
        z = e3x.nn.Dense(self.features)(y)
        z = e3x.nn.silu(z)
        z = e3x.nn.Dense(self.features, kernel_init=jax.nn.initializers.zeros)(z)
        return e3x.nn.add(y, z)


class ElementScaleShift(nn.Module):
    """Learnable per-element affine map from normalised to eV atomic energies.

    ``E_i = scale[Z_i] * e_i + shift[Z_i]``. ``scale`` starts at
    ``energy_scale`` (eV) for every element and ``shift`` at zero.
    """

    energy_scale: float = 1.0

    @nn.compact
    def __call__(self, atomic_outputs: jax.Array, numbers: jax.Array) -> jax.Array:
        """``atomic_outputs``: (N,), ``numbers``: (N,) int -> (N,) eV."""
        table_size = MAX_ATOMIC_NUMBER + 1
        scale = self.param(
            "element_scale",
            lambda key, shape: jnp.full(shape, self.energy_scale, jnp.float32),
            (table_size,),
        )
        shift = self.param("element_shift", jax.nn.initializers.zeros, (table_size,), jnp.float32)
        return scale[numbers] * atomic_outputs + shift[numbers]


class EnergyModel(nn.Module):
    """Per-molecule residual energies (eV) from numbers and positions.

    Attributes
    ----------
    config:
        Architecture (:class:`ModelConfig`).
    energy_scale:
        Initial per-element energy scale in eV (only used at ``init``).
    """

    config: ModelConfig = ModelConfig()
    energy_scale: float = 1.0

    @nn.compact
    def __call__(
        self,
        numbers: jax.Array,
        positions: jax.Array,
        dst_idx: jax.Array,
        src_idx: jax.Array,
        batch_segments: jax.Array,
        atom_mask: jax.Array,
        pair_mask: jax.Array,
        num_graphs: int,
    ) -> jax.Array:
        """Residual energy of every molecule.

        Parameters
        ----------
        numbers: (N,) int, atomic numbers (0 for padding)
        positions: (N, 3) Å
        dst_idx, src_idx: (P,) int, neighbour pairs within the cutoff
        batch_segments: (N,) int, molecule index of each atom
        atom_mask, pair_mask: (N,), (P,) bool, False for padding
        num_graphs: G (static)

        Returns
        -------
        (G,) eV; padded molecules get 0.
        """
        cfg = self.config
        geometry = pair_geometry(
            positions, dst_idx, src_idx, pair_mask,
            max_degree=cfg.max_degree,
            num_basis_functions=cfg.num_basis_functions,
            cutoff=cfg.cutoff,
        )
        x = e3x.nn.Embed(num_embeddings=MAX_ATOMIC_NUMBER + 1, features=cfg.features)(numbers)
        for i in range(cfg.num_iterations):
            last = i == cfg.num_iterations - 1
            x = InteractionBlock(features=cfg.features, max_degree=cfg.max_degree, messages=cfg.messages,
                                 output_max_degree=0 if last else None)(x, geometry, dst_idx, src_idx)
        # Scalar readout: (N, 1, 1, F) -> (N,)
        h = e3x.nn.silu(e3x.nn.Dense(cfg.features)(x))
        atomic = e3x.nn.Dense(1, use_bias=False)(h)[:, 0, 0, 0]
        atomic = ElementScaleShift(energy_scale=self.energy_scale, name="element_scale_shift")(atomic, numbers)
        atomic = jnp.where(atom_mask, atomic, 0.0)
        return jax.ops.segment_sum(atomic, batch_segments, num_segments=num_graphs)


def _model_inputs(batch: Batch) -> tuple:
    return (batch["numbers"], batch["dst_idx"], batch["src_idx"], batch["batch_segments"],
            batch["atom_mask"], batch["pair_mask"])


@functools.lru_cache(maxsize=8)
def _init_fn(config: ModelConfig):
    # XLA backend optimisation off: parameter shapes do not depend on the
    # batch and init runs once per model, so a quick unoptimised compile
    # (~2 s) beats both an optimised one and eager op-by-op dispatch (~15 s
    # on 2 cores). Cached per config so repeated training runs reuse it.
    return jax.jit(EnergyModel(config).init, static_argnums=(8,),
                   compiler_options={"xla_backend_optimization_level": 0})


def init_params(model: EnergyModel, batch: Batch, key: jax.Array) -> Params:
    """Initialise parameters from one example batch (any shape bucket).

    ``model.energy_scale`` is written into the per-element scales after
    init, so the compiled init is shared by models that differ only in it.
    """
    numbers, dst, src, segments, atom_mask, pair_mask = _model_inputs(batch)
    params = _init_fn(model.config)(key, numbers, batch["positions"], dst, src, segments, atom_mask,
                                    pair_mask, int(batch["graph_mask"].shape[0]))
    params = jax.tree.map(lambda x: x, params)  # a fresh dict tree we may edit
    readout = params["params"]["element_scale_shift"]
    readout["element_scale"] = jnp.full_like(readout["element_scale"], model.energy_scale)
    return params


def energy_and_forces(model: EnergyModel, params: Params, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """Residual energies (G,) eV and forces (N, 3) eV/Å, forces = -dE/dR.

    Forces of padded atoms are zero. Because every atom belongs to exactly
    one molecule, the gradient of the *sum* of molecular energies gives each
    atom's force in one backward pass.
    """
    numbers, dst, src, segments, atom_mask, pair_mask = _model_inputs(batch)
    num_graphs = int(batch["graph_mask"].shape[0])

    def total_energy(positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        energies = model.apply(params, numbers, positions, dst, src, segments, atom_mask, pair_mask,
                               num_graphs)
        return jnp.sum(energies), energies

    (_, energies), gradient = jax.value_and_grad(total_energy, has_aux=True)(batch["positions"])
    forces = jnp.where(atom_mask[:, None], -gradient, 0.0)
    return energies, forces
