"""Training, evaluation, prediction and (de)serialisation of the energy model.

Loss (dimensionless; ``s`` = :attr:`EnergyBaseline.scale` in eV)::

    L = w_E * mean_molecules ((E - E_ref) / s)**2
      + w_F * mean_components ((F - F_ref) / (s / Å))**2

with ``w_E : w_F = 1 : 100`` by default (the QCell / SO3LR ratio). Dividing
both terms by the same ``s`` keeps their ratio and makes the learning rate
independent of the dataset's energy unit scale. Energies are totals per
molecule (eV), forces per Cartesian component (eV/Å). Molecules or atoms
without a label are masked out of their term.

A saved model is a directory with ``params.msgpack`` (flax serialisation) and
``model.json`` (architecture, element baseline, training history).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ase import Atoms

from .data import Batch, EnergyBaseline, Sample, fit_baseline, iterate_batches, make_samples
from .network import EnergyModel, ModelConfig, Params, energy_and_forces, init_params

FORMAT_VERSION = 1
_PARAMS_FILE = "params.msgpack"
_CONFIG_FILE = "model.json"


@dataclasses.dataclass
class TrainedModel:
    """Everything needed to evaluate a model.

    Attributes
    ----------
    config: architecture
    baseline: per-element energies (eV) and residual scale; also the element set
    params: flax parameters
    """

    config: ModelConfig
    baseline: EnergyBaseline
    params: Params

    @property
    def module(self) -> EnergyModel:
        return EnergyModel(self.config, energy_scale=self.baseline.scale)


@dataclasses.dataclass
class TrainingResult(TrainedModel):
    """A trained model (best parameters by validation loss) and its history.

    ``history`` holds per-epoch lists: ``epoch``, ``train_loss``,
    ``val_loss``, ``train_energy_mae`` / ``val_energy_mae`` (eV per molecule),
    ``train_forces_mae`` / ``val_forces_mae`` (eV/Å per component),
    ``learning_rate`` and ``epoch_time`` (s). Validation entries are NaN when
    no validation set was given. Training metrics are running averages over
    the epoch's steps (parameters change during the epoch).
    """

    history: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    best_epoch: int = -1


# --------------------------------------------------------------------------
# loss and metrics (pure functions of params and one batch)
# --------------------------------------------------------------------------
def _batch_errors(model: EnergyModel, params: Params, batch: Batch) -> dict[str, jax.Array]:
    """Masked error sums of one batch (eV and eV/Å)."""
    energy, forces = energy_and_forces(model, params, batch)
    e_mask = batch["energy_mask"] & batch["graph_mask"]
    f_mask = (batch["forces_mask"] & batch["atom_mask"])[:, None]
    e_err = jnp.where(e_mask, energy - batch["energy"], 0.0)
    f_err = jnp.where(f_mask, forces - batch["forces"], 0.0)
    return {
        "e_sq": jnp.sum(e_err**2), "e_abs": jnp.sum(jnp.abs(e_err)), "e_count": jnp.sum(e_mask),
        "f_sq": jnp.sum(f_err**2), "f_abs": jnp.sum(jnp.abs(f_err)), "f_count": 3 * jnp.sum(f_mask),
    }


def _loss_from_sums(sums: dict, scale, energy_weight: float, forces_weight: float):
    """Weighted, normalised loss from error sums (jax scalars)."""
    e_term = sums["e_sq"] / jnp.maximum(sums["e_count"], 1) / scale**2
    f_term = sums["f_sq"] / jnp.maximum(sums["f_count"], 1) / scale**2
    return energy_weight * e_term + forces_weight * f_term


def _optimizer(gradient_clip: float) -> optax.GradientTransformation:
    """Clipped Adam direction; the (scheduled) step size is applied in the step."""
    return optax.chain(optax.clip_by_global_norm(gradient_clip), optax.scale_by_adam())


@functools.lru_cache(maxsize=16)
def _train_step_fn(config: ModelConfig, energy_weight: float, forces_weight: float, gradient_clip: float):
    """A jitted training step, cached so repeated ``train`` calls reuse compilations.

    The learning rate and the energy scale are traced arguments (not baked
    in), so a new dataset or schedule does not trigger a recompile; only new
    batch shapes do.
    """
    model = EnergyModel(config)
    optimizer = _optimizer(gradient_clip)

    def loss_fn(params, batch, scale):
        sums = _batch_errors(model, params, batch)
        return _loss_from_sums(sums, scale, energy_weight, forces_weight), sums

    @jax.jit
    def step(params, opt_state, batch, learning_rate, scale):
        (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, scale)
        direction, opt_state = optimizer.update(grads, opt_state, params)
        updates = jax.tree.map(lambda d: -learning_rate * d, direction)
        return optax.apply_updates(params, updates), opt_state, loss, sums

    return step


@functools.lru_cache(maxsize=16)
def _predict_fn(config: ModelConfig):
    model = EnergyModel(config)
    return jax.jit(lambda params, batch: energy_and_forces(model, params, batch))


def _device_batch(batch: Batch) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v) for k, v in batch.items()}


def _accumulate(total: dict[str, float], sums: dict) -> None:
    for key, value in sums.items():
        total[key] = total.get(key, 0.0) + float(value)


def _metrics(total: dict[str, float], scale: float, energy_weight: float, forces_weight: float):
    """(loss, energy MAE eV, forces MAE eV/Å) from accumulated sums; NaN where unlabelled."""
    e_n, f_n = total.get("e_count", 0.0), total.get("f_count", 0.0)
    e_term = total["e_sq"] / e_n / scale**2 if e_n else 0.0
    f_term = total["f_sq"] / f_n / scale**2 if f_n else 0.0
    loss = energy_weight * e_term + forces_weight * f_term
    return (loss, total["e_abs"] / e_n if e_n else math.nan, total["f_abs"] / f_n if f_n else math.nan)


def _numpy_errors(energy: np.ndarray, forces: np.ndarray, batch: Batch) -> dict[str, float]:
    """:func:`_batch_errors` on host arrays (evaluation reuses the predict jit)."""
    e_mask = batch["energy_mask"] & batch["graph_mask"]
    f_mask = (batch["forces_mask"] & batch["atom_mask"])[:, None]
    e_err = np.where(e_mask, np.asarray(energy, np.float64) - batch["energy"], 0.0)
    f_err = np.where(f_mask, np.asarray(forces, np.float64) - batch["forces"], 0.0)
    return {"e_sq": float(np.sum(e_err**2)), "e_abs": float(np.sum(np.abs(e_err))),
            "e_count": float(np.sum(e_mask)), "f_sq": float(np.sum(f_err**2)),
            "f_abs": float(np.sum(np.abs(f_err))), "f_count": 3.0 * float(np.sum(f_mask))}


def evaluate(model: TrainedModel, samples: Sequence[Sample], *, batch_size: int = 16,
             energy_weight: float = 1.0, forces_weight: float = 100.0) -> dict[str, float]:
    """Loss, energy MAE (eV per molecule) and forces MAE (eV/Å) over ``samples``.

    ``samples`` must have been made with ``model.baseline`` (residual energies).
    """
    fn = _predict_fn(model.config)
    total: dict[str, float] = {}
    for batch, _ in iterate_batches(samples, batch_size):
        energy, forces = fn(model.params, _device_batch(batch))
        _accumulate(total, _numpy_errors(np.asarray(energy), np.asarray(forces), batch))
    loss, e_mae, f_mae = _metrics(total, model.baseline.scale, energy_weight, forces_weight)
    return {"loss": loss, "energy_mae": e_mae, "forces_mae": f_mae}


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------
def train(
    train_structures: Sequence[Atoms],
    val_structures: Sequence[Atoms] | None = None,
    *,
    features: int = 32,
    max_degree: int = 2,
    num_iterations: int = 2,
    num_basis_functions: int = 16,
    cutoff: float = 5.0,
    messages: str = "radial",
    scale_from: str = "forces",
    epochs: int = 100,
    batch_size: int = 8,
    learning_rate: float = 5e-3,
    final_learning_rate: float | None = None,
    gradient_clip: float = 1.0,
    energy_weight: float = 1.0,
    forces_weight: float = 100.0,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> TrainingResult:
    """Train an :class:`EnergyModel` and return the best parameters by validation loss.

    Parameters
    ----------
    train_structures, val_structures:
        Labelled ase.Atoms (energy eV and/or forces eV/Å in ``atoms.calc.results``).
        Without a validation set the best epoch is chosen by training loss.
    features, max_degree, num_iterations, num_basis_functions, cutoff, messages:
        Architecture, see :class:`ModelConfig` (cutoff in Å).
    scale_from:
        ``"forces"`` or ``"energy"``: what sets the energy scale, see :func:`fit_baseline`.
    epochs, batch_size:
        Passes over the training set; molecules per step.
    learning_rate, final_learning_rate:
        Adam step size decays exponentially from ``learning_rate`` to
        ``final_learning_rate`` (default ``learning_rate / 100``) over the run.
    gradient_clip:
        Global gradient-norm clip (guards against the occasional bad batch).
    energy_weight, forces_weight:
        Loss weights (default 1 : 100 as in QCell / SO3LR).
    seed:
        Seeds parameter initialisation and the batch order; same seed, same result.
    checkpoint_dir:
        If given, the best model so far is saved there (see :func:`save_model`)
        whenever validation loss improves, with the history so far.
    progress:
        Show a tqdm bar with the running loss.

    Raises
    ------
    ValueError
        For an empty training set, a structure without labels, or a
        validation structure with an element absent from the training set.
    """
    if not train_structures:
        raise ValueError("train_structures is empty")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    final_learning_rate = learning_rate / 100 if final_learning_rate is None else final_learning_rate
    if not (learning_rate > 0 and final_learning_rate > 0):
        raise ValueError(f"learning rates must be positive, got {learning_rate} -> {final_learning_rate}")
    config = ModelConfig(features, max_degree, num_iterations, num_basis_functions, float(cutoff), messages)
    baseline = fit_baseline(train_structures, scale_from)
    try:
        train_samples = make_samples(train_structures, config.cutoff, baseline)
    except ValueError as error:
        raise ValueError(f"training set: {error}") from error
    for i, s in enumerate(train_samples):
        if not np.isfinite(s.energy) and s.forces is None:
            raise ValueError(f"training set: structure {i} has neither an energy nor forces")
    try:
        val_samples = make_samples(val_structures, config.cutoff, baseline) if val_structures else []
    except ValueError as error:
        raise ValueError(f"validation set: {error}") from error

    steps_per_epoch = math.ceil(len(train_samples) / batch_size)
    total_steps = epochs * steps_per_epoch

    def schedule(step_number: int) -> float:
        """Exponential decay from learning_rate to final_learning_rate over the run."""
        return learning_rate * (final_learning_rate / learning_rate) ** (step_number / total_steps)

    module = EnergyModel(config, energy_scale=baseline.scale)
    rng = np.random.default_rng(seed)
    first_batch, _ = next(iterate_batches(train_samples, batch_size))
    params = init_params(module, _device_batch(first_batch), jax.random.PRNGKey(seed))
    opt_state = _optimizer(gradient_clip).init(params)
    step = _train_step_fn(config, float(energy_weight), float(forces_weight), float(gradient_clip))
    scale = np.float32(baseline.scale)

    history: dict[str, list[float]] = {k: [] for k in (
        "epoch", "train_loss", "val_loss", "train_energy_mae", "val_energy_mae",
        "train_forces_mae", "val_forces_mae", "learning_rate", "epoch_time")}
    best_loss, best_params, best_epoch = math.inf, params, -1
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=epochs * steps_per_epoch, desc="training", unit="step")
    step_count = 0
    for epoch in range(epochs):
        start = time.perf_counter()
        epoch_sums = None
        for batch, _ in iterate_batches(train_samples, batch_size, shuffle=True, rng=rng):
            params, opt_state, loss, sums = step(params, opt_state, _device_batch(batch),
                                                 np.float32(schedule(step_count)), scale)
            # Sum on the device and read back once per epoch: a float() here
            # would wait for every step and stop host/device overlap.
            epoch_sums = sums if epoch_sums is None else jax.tree.map(jnp.add, epoch_sums, sums)
            step_count += 1
            if bar is not None:
                bar.update(1)
        total = {k: float(v) for k, v in epoch_sums.items()}
        train_loss, train_e, train_f = _metrics(total, baseline.scale, energy_weight, forces_weight)
        current = TrainedModel(config, baseline, params)
        if val_samples:
            val = evaluate(current, val_samples, batch_size=batch_size,
                           energy_weight=energy_weight, forces_weight=forces_weight)
            val_loss, val_e, val_f = val["loss"], val["energy_mae"], val["forces_mae"]
        else:
            val_loss = val_e = val_f = math.nan
        for key, value in (("epoch", epoch), ("train_loss", train_loss), ("val_loss", val_loss),
                           ("train_energy_mae", train_e), ("val_energy_mae", val_e),
                           ("train_forces_mae", train_f), ("val_forces_mae", val_f),
                           ("learning_rate", schedule(step_count)),
                           ("epoch_time", time.perf_counter() - start)):
            history[key].append(float(value))
        selection_loss = val_loss if val_samples else train_loss
        if selection_loss < best_loss:
            best_loss, best_params, best_epoch = selection_loss, params, epoch
            if checkpoint_dir is not None:
                save_model(checkpoint_dir, TrainingResult(config, baseline, params, history, best_epoch))
        if bar is not None:
            bar.set_postfix(epoch=epoch, loss=f"{train_loss:.4g}", val=f"{val_loss:.4g}",
                            f_mae=f"{(val_f if val_samples else train_f):.3g}")
    if bar is not None:
        bar.close()
    return TrainingResult(config, baseline, best_params, history, best_epoch)


# --------------------------------------------------------------------------
# prediction
# --------------------------------------------------------------------------
def predict(model: TrainedModel, structures: Sequence[Atoms], *, batch_size: int = 16
            ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Energies (n,) eV (float64, baseline included) and forces [(n_i, 3) eV/Å].

    Raises
    ------
    ValueError
        For an element the model was not trained on or a periodic structure.
    """
    samples = make_samples(structures, model.config.cutoff, model.baseline, with_labels=False)
    fn = _predict_fn(model.config)
    energies = np.zeros(len(samples))
    forces: list[np.ndarray] = [np.empty((0, 3))] * len(samples)
    for batch, indices in iterate_batches(samples, batch_size):
        e, f = fn(model.params, _device_batch(batch))
        e, f = np.asarray(e, dtype=np.float64), np.asarray(f, dtype=np.float64)
        offset = 0
        for g, i in enumerate(indices):
            n = samples[i].num_atoms
            energies[i] = e[g] + model.baseline.energy(samples[i].numbers)
            forces[i] = f[offset:offset + n].copy()
            offset += n
    return energies, forces


# --------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------
def save_model(path: str | os.PathLike, model: TrainedModel) -> Path:
    """Write ``params.msgpack`` and ``model.json`` into directory ``path``.

    Files are written to temporaries and moved into place, so a crash during
    a checkpoint leaves the previous one readable.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "config": model.config.to_dict(),
                            "baseline": model.baseline.to_dict()}
    if isinstance(model, TrainingResult):
        meta["history"] = model.history
        meta["best_epoch"] = model.best_epoch
    params_bytes = flax.serialization.to_bytes(jax.device_get(model.params))
    for name, payload in ((_PARAMS_FILE, params_bytes), (_CONFIG_FILE, json.dumps(meta, indent=1).encode())):
        tmp = path / (name + ".tmp")
        tmp.write_bytes(payload)
        os.replace(tmp, path / name)
    return path


def load_model(path: str | os.PathLike) -> TrainedModel:
    """Read a model written by :func:`save_model` (a TrainingResult if it has a history)."""
    path = Path(path)
    if not (path / _CONFIG_FILE).exists() or not (path / _PARAMS_FILE).exists():
        raise FileNotFoundError(f"{path} is not a saved model (expected {_CONFIG_FILE} and {_PARAMS_FILE})")
    meta = json.loads((path / _CONFIG_FILE).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported model format_version {meta.get('format_version')!r}")
    config = ModelConfig.from_dict(meta["config"])
    baseline = EnergyBaseline.from_dict(meta["baseline"])
    state = flax.serialization.msgpack_restore((path / _PARAMS_FILE).read_bytes())
    params = jax.tree.map(jnp.asarray, state)
    if "history" in meta:
        return TrainingResult(config, baseline, params, meta["history"], int(meta.get("best_epoch", -1)))
    return TrainedModel(config, baseline, params)


# --------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------
def plot_learning_curves(history: dict[str, list[float]], path: str | os.PathLike | None = None):
    """Loss, energy MAE and force MAE per epoch (train and validation).

    Uses a bare matplotlib Figure (no pyplot state), so it works under any
    backend, including headless Agg. Saves to ``path`` if given; returns the
    Figure.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    epochs = np.asarray(history.get("epoch", range(len(history["train_loss"])))) + 1
    panels = (("loss", "loss (normalised)", True), ("energy_mae", "energy MAE / eV", True),
              ("forces_mae", "force MAE / eV Å$^{-1}$", True))
    for ax, (key, label, log) in zip(axes, panels):
        for split, style in (("train", "-"), ("val", "--")):
            values = np.asarray(history.get(f"{split}_{key}", []), dtype=float)
            if values.size and np.any(np.isfinite(values)):
                ax.plot(epochs[:values.size], values, style, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.legend()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig
