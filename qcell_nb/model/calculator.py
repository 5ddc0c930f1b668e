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


@functools.lru_cache(maxsize=64)
def _calculator_fn(config: ModelConfig, num_atoms: int, num_pairs: int, num_lr: int):
    """Jitted energy, forces and all other outputs of one structure padded to the given sizes.

    Inputs travel as one int32 array (counts, numbers, pair lists) and one float array
    (positions, MM charges, total charge, spin), outputs as one float array: a call moves
    three buffers instead of a training batch's 27 plus ten results. Masks are rebuilt
    inside from the real counts. Returns ``(fn, unpack)``.
    """
    model = SO3LRModel(config)
    int_slices = _slices(("counts", 3), ("numbers", num_atoms), ("pair_i", num_pairs), ("pair_j", num_pairs),
                         ("lr_i", num_lr), ("lr_j", num_lr))
    float_slices = _slices(("positions", 3 * num_atoms), ("mm_charges", num_atoms), ("charge_spin", 2))
    out_slices = _slices(*((key, 1) for key in ("energy",) + _ENERGY_TERMS), ("dipole", 3),
                         ("forces", 3 * num_atoms), ("charges", num_atoms), ("hirshfeld", num_atoms))

    @jax.jit
    def fn(params, ints, floats):
        i = {key: ints[part] for key, part in int_slices.items()}
        f = {key: floats[part] for key, part in float_slices.items()}
        counts = i["counts"]
        batch = {"numbers": i["numbers"], "positions": f["positions"].reshape(num_atoms, 3),
                 "pair_i": i["pair_i"], "pair_j": i["pair_j"], "pair_mask": jnp.arange(num_pairs) < counts[1],
                 "lr_dst": i["lr_i"], "lr_src": i["lr_j"], "lr_mask": jnp.arange(num_lr) < counts[2],
                 "batch_segments": jnp.zeros(num_atoms, jnp.int32), "atom_mask": jnp.arange(num_atoms) < counts[0],
                 "graph_mask": jnp.ones(1, bool), "total_charge": f["charge_spin"][:1],
                 "spin": f["charge_spin"][1:], "mm_charges": f["mm_charges"]}
        out = predict_batch(model, params, batch)
        return jnp.concatenate([out[key].reshape(-1).astype(floats.dtype) for key in out_slices])

    def pack(sample: Sample, dtype) -> tuple[np.ndarray, np.ndarray]:
        ints = np.zeros(int_slices["lr_j"].stop, np.int32)
        for key, values in (("counts", [sample.num_atoms, len(sample.pair_i), sample.num_lr_pairs]),
                            ("numbers", sample.numbers), ("pair_i", sample.pair_i), ("pair_j", sample.pair_j),
                            ("lr_i", sample.lr_dst), ("lr_j", sample.lr_src)):
            part = int_slices[key]
            ints[part.start:part.start + len(values)] = values
        floats = np.zeros(float_slices["charge_spin"].stop, dtype)
        floats[:3 * sample.num_atoms] = sample.positions.reshape(-1)
        part = float_slices["mm_charges"]
        floats[part.start:part.start + sample.num_atoms] = sample.mm_charges
        floats[float_slices["charge_spin"]] = sample.total_charge, sample.spin
        return ints, floats

    def unpack(flat: np.ndarray, n: int) -> dict[str, np.ndarray]:
        out = {key: np.asarray(flat[part], np.float64) for key, part in out_slices.items()}
        out["forces"] = out["forces"].reshape(num_atoms, 3)[:n]
        for key in ("charges", "hirshfeld"):
            out[key] = out[key][:n]
        return out

    return fn, pack, unpack


def _slices(*parts: tuple[str, int]) -> dict[str, slice]:
    """Consecutive slices of the given lengths, by name."""
    out, start = {}, 0
    for key, length in parts:
        out[key] = slice(start, start + length)
        start += length
    return out


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
        fn, pack, unpack = _calculator_fn(config, *self._capacities(sample))
        ints, floats = pack(sample, np.float64 if jax.config.jax_enable_x64 else np.float32)
        out = unpack(jax.device_get(fn(self.model.params, ints, floats)), sample.num_atoms)
        energy_baseline = baseline.energy(sample.numbers)
        energy = float(out["energy"][0]) + energy_baseline
        self.results = {"energy": energy, "free_energy": energy, "forces": out["forces"],
                        "dipole": out["dipole"], "charges": out["charges"], "hirsh_ratios": out["hirshfeld"],
                        "energy_baseline": energy_baseline}
        for key in _ENERGY_TERMS:
            self.results[key] = float(out[key][0])
