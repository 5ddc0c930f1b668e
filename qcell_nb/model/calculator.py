"""ASE calculator around a trained model, for MD, optimisation, validation and ML/MM."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from .data import Sample, make_sample
from .network import ModelConfig, SO3LRModel, predict_batch
from .training import TrainedModel, load_model

_ENERGY_TERMS = ("energy_short", "energy_repulsion", "energy_electrostatics", "energy_dispersion")


def capacity_for(count: int, slack: float = 0.05, minimum: int = 8) -> int:
    """Padded size for ``count`` items: ``count * (1 + slack)`` rounded up on a grid of ~1/16.

    The grid step is the largest power of two not above a sixteenth of the size, so the
    padding wastes at most ~``slack`` + 6 % (size buckets of :func:`~qcell_nb.model.data.bucket_size`
    waste up to 50 %), and sizes stay on few distinct values.
    """
    target = max(minimum, int(np.ceil(count * (1.0 + slack))))
    step = max(minimum, 1 << max(0, (target // 16).bit_length() - 1))
    return -(-target // step) * step


@functools.lru_cache(maxsize=16)
def _calculator_fn(config: ModelConfig):
    """Jitted energy, forces and all other outputs of one padded structure.

    Takes only what inference needs (10 arrays instead of a training batch's 27);
    masks are rebuilt inside from the real counts, so nothing else is transferred.
    """
    model = SO3LRModel(config)

    @jax.jit
    def fn(params, numbers, positions, pair_i, pair_j, lr_i, lr_j, mm_charges, counts, charge_spin):
        num_atoms, num_pairs, num_lr = counts[0], counts[1], counts[2]
        atom_mask = jnp.arange(numbers.shape[0]) < num_atoms
        batch = {"numbers": numbers, "positions": positions, "pair_i": pair_i, "pair_j": pair_j,
                 "pair_mask": jnp.arange(pair_i.shape[0]) < num_pairs,
                 "lr_dst": lr_i, "lr_src": lr_j, "lr_mask": jnp.arange(lr_i.shape[0]) < num_lr,
                 "batch_segments": jnp.zeros(numbers.shape[0], jnp.int32), "atom_mask": atom_mask,
                 "graph_mask": jnp.ones(1, bool), "total_charge": charge_spin[:1], "spin": charge_spin[1:],
                 "mm_charges": mm_charges}
        return predict_batch(model, params, batch)

    return fn


class MLCalculator(Calculator):
    """Energy (eV), forces (eV/Å), dipole (e·Å) and charges (e) from a trained model.

    Parameters
    ----------
    model:
        A trained model, or the directory it was saved to (:func:`save_model`).
    slack:
        Head room of the padded sizes (fraction): pair counts may grow this much (in MD)
        before the padded shapes grow and the network compiles again.

    Notes
    -----
    Total charge and multiplicity come from ``atoms.info["charge"]`` and
    ``atoms.info["multiplicity"]``. ML/MM: atoms with atomic number 0 are MM
    point charges, their charges in ``atoms.arrays["mm_charges"]`` (e); the
    energy then includes their electrostatic interaction with the predicted
    QM charges and the forces act on MM atoms too.

    Extra results: ``hirsh_ratios`` (n,), and the energy decomposition
    ``energy_short``, ``energy_repulsion``, ``energy_electrostatics``,
    ``energy_dispersion``, ``energy_baseline`` (eV).

    Neighbour lists are rebuilt on every call (positions change in MD; one
    distance pass serves both cutoffs). Atom and pair counts are padded to
    capacities (:func:`capacity_for`) that only grow while the structure does
    (or shrink when it gets 4x smaller), so an MD run compiles once or twice
    and a sweep over many structures about once per 5 % growth of the largest.
    Non-periodic structures only; an element the model was not trained on
    raises ValueError.
    """

    implemented_properties = ["energy", "free_energy", "forces", "dipole", "charges"]

    def __init__(self, model: TrainedModel | str | os.PathLike, slack: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.model = model if isinstance(model, TrainedModel) else load_model(model)
        self.slack = float(slack)
        self._capacity = (-1, -1, -1)  # atoms, short-range pairs (each once), long-range pairs

    def _capacities(self, sample: Sample) -> tuple[int, int, int]:
        counts = (sample.num_atoms, len(sample.pair_i), sample.num_lr_pairs)
        capacity = []
        for count, current in zip(counts, self._capacity):
            if count > current or 4 * count < current:
                current = capacity_for(count, 0.0 if len(capacity) == 0 else self.slack)
            capacity.append(current)
        self._capacity = tuple(capacity)
        return self._capacity

    def calculate(self, atoms: Atoms | None = None, properties=("energy",),
                  system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        config, baseline = self.model.config, self.model.baseline
        sample = make_sample(self.atoms, config.cutoff, baseline, with_labels=False,
                             long_range=config.uses_long_range, long_range_cutoff=config.long_range_cutoff)
        n_atoms, n_pairs, n_lr = self._capacities(sample)
        n = sample.num_atoms

        def padded(values, size, dtype):
            out = np.zeros((size,) + np.shape(values)[1:], dtype)
            out[:len(values)] = values
            return out

        float_type = np.float64 if jax.config.jax_enable_x64 else np.float32
        out = _calculator_fn(config)(
            self.model.params, padded(sample.numbers, n_atoms, np.int32),
            padded(sample.positions, n_atoms, float_type),
            padded(sample.pair_i, n_pairs, np.int32), padded(sample.pair_j, n_pairs, np.int32),
            padded(sample.lr_dst, n_lr, np.int32), padded(sample.lr_src, n_lr, np.int32),
            padded(sample.mm_charges, n_atoms, float_type),
            np.array([n, len(sample.pair_i), sample.num_lr_pairs], np.int32),
            np.array([sample.total_charge, sample.spin], float_type))
        out = jax.device_get(out)
        energy_baseline = baseline.energy(sample.numbers)
        residual = float(out["energy"][0])
        self.results = {"energy": residual + energy_baseline, "free_energy": residual + energy_baseline,
                        "forces": np.asarray(out["forces"][:n], np.float64),
                        "dipole": np.asarray(out["dipole"][0], np.float64),
                        "charges": np.asarray(out["charges"][:n], np.float64),
                        "hirsh_ratios": np.asarray(out["hirshfeld"][:n], np.float64),
                        "energy_baseline": energy_baseline}
        for key in _ENERGY_TERMS:
            self.results[key] = float(out[key][0])
