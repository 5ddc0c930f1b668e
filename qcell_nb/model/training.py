"""Training, evaluation, prediction and (de)serialisation of the SO3LR-style model.

Loss (dimensionless; ``s`` = :attr:`EnergyBaseline.scale` in eV)::

    L = w_E * mean_molecules ((E - E_ref) / s)**2
      + w_F * mean_components ((F - F_ref) / (s / Å))**2
      + w_mu * mean_components (mu - mu_ref)**2          (e·Å)
      + w_h * mean_atoms (h - h_ref)**2                   (Hirshfeld ratios)
      + w_q * mean_atoms (q - q_ref)**2                   (Hirshfeld charges, e; off by default)

with ``w_F : w_mu : w_h : w_E = 100 : 10 : 10 : 1`` by default (SO3LR's
ratio). Molecules or atoms without a label are masked out of their term.
Dividing energies and forces by the same ``s`` keeps their ratio and makes
the learning rate independent of the dataset's energy scale.

A saved model is a directory with ``params.msgpack`` (flax serialisation) and
``model.json`` (architecture, element baseline, training history). Training
with ``checkpoint_dir`` keeps ``best/`` (a saved model: best validation loss
so far) and ``latest/`` (the full training state after the last finished
epoch: parameters, optimiser state, history); ``resume=True`` continues from
``latest/`` after a kill and reproduces the uninterrupted run exactly,
because batch order and learning rate depend only on (seed, epoch, step).
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

from .data import Batch, EnergyBaseline, Sample, batch_padding, fit_baseline, iterate_batches, samples_for
from .network import MM_CHARGE_EMBEDDING, ModelConfig, Params, SO3LRModel, init_params, predict_batch

FORMAT_VERSION = 2
_PARAMS_FILE = "params.msgpack"
_CONFIG_FILE = "model.json"
_STATE_FILE = "state.msgpack"

#: Labelled properties and the unit of their MAE.
PROPERTIES = {"energy": "eV", "forces": "eV/Å", "dipole": "e·Å", "hirshfeld": "", "charges": "e"}


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Relative loss weights (SO3LR: forces 100, dipole 10, Hirshfeld 10, energy 1)."""

    energy: float = 1.0
    forces: float = 100.0
    dipole: float = 10.0
    hirshfeld: float = 10.0
    charges: float = 0.0

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"loss weight {name}={value!r} must be finite and >= 0")


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
    def module(self) -> SO3LRModel:
        return SO3LRModel(self.config, energy_scale=self.baseline.scale)


@dataclasses.dataclass
class TrainingResult(TrainedModel):
    """A trained model (best parameters by validation loss) and its history.

    ``history`` holds per-epoch lists: ``epoch``, ``train_loss``,
    ``val_loss``, ``{train,val}_{energy,forces,dipole,hirshfeld,charges}_mae``
    (eV per molecule, eV/Å per component, e·Å per component, per atom, e per
    atom), ``learning_rate`` and ``epoch_time`` (s). Entries are NaN where
    there is no validation set or no label. Training metrics are running
    averages over the epoch's steps (parameters change during the epoch).
    """

    history: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    best_epoch: int = -1


# --------------------------------------------------------------------------
# loss and metrics (pure functions of params and one batch)
# --------------------------------------------------------------------------
def _masks(batch) -> dict[str, Any]:
    """Per-property label masks, broadcastable against the predictions."""
    atoms = batch["atom_mask"]
    return {"energy": batch["energy_mask"] & batch["graph_mask"],
            "forces": (batch["forces_mask"] & atoms)[:, None],
            "dipole": (batch["dipole_mask"] & batch["graph_mask"])[:, None],
            "hirshfeld": batch["hirshfeld_mask"] & atoms,
            "charges": batch["charges_mask"] & atoms}


def _error_sums(predicted: dict, batch, xp=jnp) -> dict[str, Any]:
    """Masked squared/absolute error sums and label counts for every property."""
    sums = {}
    for name, mask in _masks(batch).items():
        err = xp.where(mask, predicted[name] - batch[name], 0.0)
        components = err.shape[-1] if err.ndim == 2 else 1
        sums[f"{name}_sq"] = xp.sum(err**2)
        sums[f"{name}_abs"] = xp.sum(xp.abs(err))
        sums[f"{name}_count"] = components * xp.sum(mask)
    return sums


def _loss_from_sums(sums: dict, scale, weights: LossWeights, xp=jnp):
    """Weighted, normalised loss from error sums (works on jax or host numbers)."""
    loss = 0.0
    for name in PROPERTIES:
        weight = getattr(weights, name)
        if weight == 0:
            continue
        term = sums[f"{name}_sq"] / xp.maximum(sums[f"{name}_count"], 1)
        if name in ("energy", "forces"):
            term = term / scale**2
        loss = loss + weight * term
    return loss


def _optimizer(gradient_clip: float) -> optax.GradientTransformation:
    """Clipped Adam direction; the (scheduled) step size is applied in the step."""
    return optax.chain(optax.clip_by_global_norm(gradient_clip), optax.scale_by_adam())


@functools.lru_cache(maxsize=16)
def _train_step_fn(config: ModelConfig, weights: LossWeights, gradient_clip: float):
    """A jitted training step, cached so repeated ``train`` calls reuse compilations.

    The learning rate and the energy scale are traced arguments (not baked
    in), so a new dataset or schedule does not trigger a recompile; only new
    batch shapes do.
    """
    model = SO3LRModel(config)
    optimizer = _optimizer(gradient_clip)

    def loss_fn(params, batch, scale):
        sums = _error_sums(predict_batch(model, params, batch), batch)
        return _loss_from_sums(sums, scale, weights), sums

    @jax.jit
    def step(params, opt_state, batch, learning_rate, scale):
        (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, scale)
        direction, opt_state = optimizer.update(grads, opt_state, params)
        updates = jax.tree.map(lambda d: -learning_rate * d, direction)
        return optax.apply_updates(params, updates), opt_state, loss, sums

    return step


@functools.lru_cache(maxsize=16)
def _predict_fn(config: ModelConfig):
    model = SO3LRModel(config)
    return jax.jit(lambda params, batch: predict_batch(model, params, batch))


def _device_batch(batch: Batch) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v) for k, v in batch.items()}


def _metrics(total: dict[str, float], scale: float, weights: LossWeights) -> dict[str, float]:
    """Loss and per-property MAE from accumulated sums; NaN where unlabelled."""
    out = {"loss": float(_loss_from_sums(total, scale, weights, xp=np))}
    for name in PROPERTIES:
        n = total.get(f"{name}_count", 0.0)
        out[f"{name}_mae"] = total[f"{name}_abs"] / n if n else math.nan
    return out


def evaluate(model: TrainedModel, samples: Sequence[Sample], *, batch_size: int = 16,
             weights: LossWeights = LossWeights(), padding: dict[str, int] | None = None) -> dict[str, float]:
    """Loss and MAE of every labelled property over ``samples``.

    Returns ``loss``, ``energy_mae`` (eV per molecule), ``forces_mae``
    (eV/Å), ``dipole_mae`` (e·Å), ``hirshfeld_mae``, ``charges_mae`` (e).
    ``samples`` must have been made with ``model.baseline`` and the model's
    cutoffs (:func:`~qcell_nb.model.data.samples_for`). ``padding`` (see
    :func:`~qcell_nb.model.data.batch_padding`, the default) fixes the batch shape.
    """
    fn = _predict_fn(model.config)
    total: dict[str, float] = {}
    for batch, _ in iterate_batches(samples, batch_size, padding=padding or batch_padding(samples, batch_size)):
        out = jax.device_get(fn(model.params, _device_batch(batch)))
        predicted = {k: np.asarray(v, np.float64) for k, v in out.items()}
        for key, value in _error_sums(predicted, batch, xp=np).items():
            total[key] = total.get(key, 0.0) + float(value)
    return _metrics(total, model.baseline.scale, weights)


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------
def _history_keys() -> list[str]:
    keys = ["epoch", "train_loss", "val_loss"]
    keys += [f"{split}_{name}_mae" for name in PROPERTIES for split in ("train", "val")]
    return keys + ["learning_rate", "epoch_time"]


def average_neighbours(samples: Sequence[Sample]) -> float:
    """Mean short-range neighbour count per atom, rounded to an integer (>= 1).

    Rounding keeps the value (a static part of the architecture) the same
    for similar datasets, so they share one compilation.
    """
    atoms = sum(s.num_atoms for s in samples)
    pairs = sum(s.num_pairs for s in samples)
    return float(max(1, round(pairs / max(atoms, 1))))


def train(
    train_structures: Sequence[Atoms],
    val_structures: Sequence[Atoms] | None = None,
    *,
    size: str = "small",
    features: int | None = None,
    max_degree: int | None = None,
    num_iterations: int | None = None,
    num_heads: int | None = None,
    num_basis_functions: int | None = None,
    cutoff: float = 4.5,
    long_range_cutoff: float | None = 10.0,
    electrostatics: bool = True,
    dispersion: bool = True,
    repulsion: bool = True,
    scale_from: str = "forces",
    epochs: int = 100,
    batch_size: int = 8,
    learning_rate: float = 5e-3,
    final_learning_rate: float | None = None,
    gradient_clip: float = 1.0,
    energy_weight: float = 1.0,
    forces_weight: float = 100.0,
    dipole_weight: float = 10.0,
    hirshfeld_weight: float = 10.0,
    charges_weight: float = 0.0,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    fixed_shape: bool = True,
) -> TrainingResult:
    """Train an :class:`SO3LRModel`; return the best parameters by validation loss.

    Parameters
    ----------
    train_structures, val_structures:
        Labelled ase.Atoms: energy (eV), forces (eV/Å), dipole (e·Å), charges
        (e) in ``atoms.calc.results``, Hirshfeld ratios in
        ``atoms.info["hirsh_ratios"]``; any may be missing. Total charge and
        multiplicity from ``atoms.info``. Without a validation set the best
        epoch is chosen by training loss.
    size:
        ``"small"``, ``"medium"`` or ``"large"`` (:data:`~qcell_nb.model.network.SIZES`);
        ``features``, ``max_degree``, ``num_iterations``, ``num_heads``,
        ``num_basis_functions`` override single entries when given.
    cutoff, long_range_cutoff:
        Short-range (SO3krates, repulsion) and long-range (electrostatics,
        dispersion; None = all pairs) cutoffs in Å.
    electrostatics, dispersion, repulsion:
        Physical terms on or off.
    scale_from:
        ``"forces"`` or ``"energy"``: what sets the energy scale, see :func:`fit_baseline`.
    epochs, batch_size:
        Passes over the training set; molecules per step.
    learning_rate, final_learning_rate:
        Adam step size decays exponentially from ``learning_rate`` to
        ``final_learning_rate`` (default ``learning_rate / 100``) over the run.
    gradient_clip:
        Global gradient-norm clip (guards against the occasional bad batch).
    energy_weight, forces_weight, dipole_weight, hirshfeld_weight, charges_weight:
        Loss weights (:class:`LossWeights`; default 1 : 100 : 10 : 10 : 0).
    seed:
        Seeds parameter initialisation and the batch order; same seed, same result.
    checkpoint_dir, resume:
        Keep ``best/`` and ``latest/`` checkpoints there (see the module
        docstring); ``resume=True`` continues from ``latest/`` if present.
    fixed_shape:
        Pad every batch to one shape (:func:`~qcell_nb.model.data.batch_padding`), so the
        training step compiles once; False pads per batch to size buckets, which wastes less
        work when sizes vary widely but compiles once per bucket.
    progress:
        Show a tqdm bar with the running losses.

    Raises
    ------
    ValueError
        For an empty training set, a structure without labels, a validation
        structure with an element absent from the training set, or a
        checkpoint that belongs to a different run.
    """
    if not train_structures:
        raise ValueError("train_structures is empty")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    final_learning_rate = learning_rate / 100 if final_learning_rate is None else final_learning_rate
    if not (learning_rate > 0 and final_learning_rate > 0):
        raise ValueError(f"learning rates must be positive, got {learning_rate} -> {final_learning_rate}")
    weights = LossWeights(float(energy_weight), float(forces_weight), float(dipole_weight),
                          float(hirshfeld_weight), float(charges_weight))
    overrides = {k: v for k, v in (("features", features), ("max_degree", max_degree),
                                   ("num_iterations", num_iterations), ("num_heads", num_heads),
                                   ("num_basis_functions", num_basis_functions)) if v is not None}
    config = ModelConfig.for_size(size, **overrides, cutoff=float(cutoff),
                                  long_range_cutoff=None if long_range_cutoff is None else float(long_range_cutoff),
                                  electrostatics=bool(electrostatics), dispersion=bool(dispersion),
                                  repulsion=bool(repulsion))
    baseline = fit_baseline(train_structures, scale_from)
    try:
        train_samples = samples_for(train_structures, config, baseline)
    except ValueError as error:
        raise ValueError(f"training set: {error}") from error
    for i, s in enumerate(train_samples):
        if not np.isfinite(s.energy) and s.forces is None:
            raise ValueError(f"training set: structure {i} has neither an energy nor forces")
    try:
        val_samples = samples_for(val_structures, config, baseline) if val_structures else []
    except ValueError as error:
        raise ValueError(f"validation set: {error}") from error
    config = dataclasses.replace(config, avg_num_neighbors=average_neighbours(train_samples))

    steps_per_epoch = math.ceil(len(train_samples) / batch_size)
    total_steps = epochs * steps_per_epoch

    def schedule(step_number: int) -> float:
        """Exponential decay from learning_rate to final_learning_rate over the run."""
        return learning_rate * (final_learning_rate / learning_rate) ** (step_number / total_steps)

    module = SO3LRModel(config, energy_scale=baseline.scale)
    # One batch shape for training and validation: the step compiles once, not once per bucket.
    padding = batch_padding(list(train_samples) + list(val_samples or []), batch_size) if fixed_shape else None
    first_batch, _ = next(iterate_batches(train_samples, batch_size, padding=padding))
    params = init_params(module, _device_batch(first_batch), jax.random.PRNGKey(seed))
    opt_state = _optimizer(gradient_clip).init(params)
    step = _train_step_fn(config, weights, float(gradient_clip))
    scale = np.float32(baseline.scale)

    history: dict[str, list[float]] = {k: [] for k in _history_keys()}
    best_loss, best_params, best_epoch = math.inf, params, -1
    first_epoch = 0
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    run_key = {"config": config.to_dict(), "baseline": baseline.to_dict(), "epochs": epochs,
               "batch_size": batch_size, "learning_rate": learning_rate,
               "final_learning_rate": final_learning_rate, "seed": seed,
               "weights": dataclasses.asdict(weights), "gradient_clip": gradient_clip}
    if resume and checkpoint_dir is not None and (checkpoint_dir / "latest" / _STATE_FILE).exists():
        state = _read_training_state(checkpoint_dir / "latest", params, opt_state, run_key)
        params, opt_state, history = state["params"], state["opt_state"], state["history"]
        first_epoch = len(history["epoch"])
        best_epoch = state["best_epoch"]
        best_loss = state["best_loss"]
        best_params = load_model(checkpoint_dir / "best").params if best_epoch >= 0 else params

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total_steps, initial=first_epoch * steps_per_epoch, desc="training", unit="step")
    step_count = first_epoch * steps_per_epoch
    for epoch in range(first_epoch, epochs):
        start = time.perf_counter()
        epoch_sums = None
        # The batch order depends only on (seed, epoch): a resumed run replays it exactly.
        rng = np.random.default_rng([seed, epoch])
        for batch, _ in iterate_batches(train_samples, batch_size, shuffle=True, rng=rng, padding=padding):
            params, opt_state, loss, sums = step(params, opt_state, _device_batch(batch),
                                                 np.float32(schedule(step_count)), scale)
            # Sum on the device and read back once per epoch: a float() here
            # would wait for every step and stop host/device overlap.
            epoch_sums = sums if epoch_sums is None else jax.tree.map(jnp.add, epoch_sums, sums)
            step_count += 1
            if bar is not None:
                bar.update(1)
        train_metrics = _metrics({k: float(v) for k, v in epoch_sums.items()}, baseline.scale, weights)
        current = TrainedModel(config, baseline, params)
        if val_samples:
            val_metrics = evaluate(current, val_samples, batch_size=batch_size, weights=weights, padding=padding)
        else:
            val_metrics = {k: math.nan for k in train_metrics}
        record = {"epoch": epoch, "learning_rate": schedule(step_count),
                  "epoch_time": time.perf_counter() - start}
        for key in train_metrics:
            record[f"train_{key}"] = train_metrics[key]
            record[f"val_{key}"] = val_metrics[key]
        for key in history:
            history[key].append(float(record[key]))
        selection_loss = val_metrics["loss"] if val_samples else train_metrics["loss"]
        if selection_loss < best_loss:
            best_loss, best_params, best_epoch = selection_loss, params, epoch
            if checkpoint_dir is not None:
                save_model(checkpoint_dir / "best", TrainingResult(config, baseline, params, history, best_epoch))
        if checkpoint_dir is not None:
            _write_training_state(checkpoint_dir / "latest", TrainingResult(config, baseline, params, history,
                                                                            best_epoch),
                                  opt_state, run_key, best_loss)
        if bar is not None:
            shown = val_metrics if val_samples else train_metrics
            bar.set_postfix(epoch=epoch, loss=f"{train_metrics['loss']:.4g}", val=f"{val_metrics['loss']:.4g}",
                            f_mae=f"{shown['forces_mae']:.3g}")
    if bar is not None:
        bar.close()
    return TrainingResult(config, baseline, best_params, history, best_epoch)


def _write_training_state(path: Path, model: TrainingResult, opt_state, run_key: dict, best_loss: float) -> None:
    """``latest/``: a loadable model plus optimiser state and the run's identity."""
    save_model(path, model)
    payload = flax.serialization.to_bytes({"opt_state": jax.device_get(opt_state)})
    meta = {"run": run_key, "best_loss": best_loss}
    for name, data in ((_STATE_FILE, payload), ("run.json", json.dumps(meta).encode())):
        tmp = path / (name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path / name)


def _read_training_state(path: Path, params_template, opt_template, run_key: dict) -> dict:
    meta = json.loads((path / "run.json").read_text())
    if meta["run"] != json.loads(json.dumps(run_key)):
        changed = sorted(k for k in run_key if meta["run"].get(k) != json.loads(json.dumps(run_key[k])))
        raise ValueError(f"checkpoint {path} belongs to a different run (differs in {', '.join(changed)}); "
                         "use another checkpoint_dir or resume=False")
    saved = load_model(path)
    params = flax.serialization.from_state_dict(params_template, saved.params)
    try:
        state = flax.serialization.from_bytes({"opt_state": opt_template}, (path / _STATE_FILE).read_bytes())
    except ValueError as error:
        raise ValueError(f"checkpoint {path} holds optimiser state for other parameters (written by an older "
                         f"version of the model?): {error}; use another checkpoint_dir or resume=False") from error
    return {"params": params, "opt_state": state["opt_state"], "history": saved.history,
            "best_epoch": saved.best_epoch, "best_loss": float(meta["best_loss"])}


# --------------------------------------------------------------------------
# prediction
# --------------------------------------------------------------------------
def _predict_samples(model: TrainedModel, structures: Sequence[Atoms], batch_size: int):
    """Yield (structure index, per-structure outputs as float64 numpy) for every structure."""
    samples = samples_for(structures, model.config, model.baseline, with_labels=False)
    fn = _predict_fn(model.config)
    for batch, indices in iterate_batches(samples, batch_size, padding=batch_padding(samples, batch_size)):
        out = jax.device_get(fn(model.params, _device_batch(batch)))
        offset = 0
        for g, i in enumerate(indices):
            n = samples[i].num_atoms
            atoms = slice(offset, offset + n)
            result = {"energy_baseline": model.baseline.energy(samples[i].numbers)}
            for key, value in out.items():
                value = np.asarray(value, np.float64)
                result[key] = value[atoms].copy() if key in ("forces", "charges", "hirshfeld") else value[g].copy()
            result["energy"] = float(result["energy"]) + result["energy_baseline"]
            offset += n
            yield i, result


def predict(model: TrainedModel, structures: Sequence[Atoms], *, batch_size: int = 16
            ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Energies (n,) eV (float64, baseline included) and forces [(n_i, 3) eV/Å].

    Raises
    ------
    ValueError
        For an element the model was not trained on or a periodic structure.
    """
    energies = np.zeros(len(structures))
    forces: list[np.ndarray] = [np.empty((0, 3))] * len(structures)
    for i, result in _predict_samples(model, structures, batch_size):
        energies[i], forces[i] = result["energy"], result["forces"]
    return energies, forces


def predict_properties(model: TrainedModel, structures: Sequence[Atoms], *, batch_size: int = 16
                       ) -> list[dict[str, Any]]:
    """Every output for every structure, as a list of dicts.

    Keys: ``energy`` (float, eV, baseline included), ``energy_baseline``,
    ``energy_short``, ``energy_repulsion``, ``energy_electrostatics``,
    ``energy_dispersion`` (eV; the last four sum to energy - baseline),
    ``forces`` (n, 3) eV/Å, ``charges`` (n,) e, ``hirshfeld`` (n,),
    ``dipole`` (3,) e·Å (QM atoms, about the coordinate origin).
    """
    results: list[dict[str, Any]] = [{}] * len(structures)
    for i, result in _predict_samples(model, structures, batch_size):
        for key in ("energy_short", "energy_repulsion", "energy_electrostatics", "energy_dispersion"):
            result[key] = float(result[key])
        results[i] = result
    return results


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
    """Read a model written by :func:`save_model` (a TrainingResult if it has a history).

    A training ``checkpoint_dir`` works too: its ``best/`` model is read.
    """
    path = Path(path)
    if not (path / _CONFIG_FILE).exists() and (path / "best" / _CONFIG_FILE).exists():
        path = path / "best"
    if not (path / _CONFIG_FILE).exists() or not (path / _PARAMS_FILE).exists():
        raise FileNotFoundError(f"{path} is not a saved model (expected {_CONFIG_FILE} and {_PARAMS_FILE})")
    meta = json.loads((path / _CONFIG_FILE).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported model format_version {meta.get('format_version')!r} "
                         f"(this version reads {FORMAT_VERSION})")
    config = ModelConfig.from_dict(meta["config"])
    baseline = EnergyBaseline.from_dict(meta["baseline"])
    state = flax.serialization.msgpack_restore((path / _PARAMS_FILE).read_bytes())
    params = jax.tree.map(jnp.asarray, state)
    if MM_CHARGE_EMBEDDING not in params.get("params", {}):
        # saved before MM sites' features depended on their charge: zero is exactly the old model
        params["params"][MM_CHARGE_EMBEDDING] = jnp.zeros(config.features, jnp.float32)
    if "history" in meta:
        return TrainingResult(config, baseline, params, meta["history"], int(meta.get("best_epoch", -1)))
    return TrainedModel(config, baseline, params)


# --------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------
def save_learning_curves(history: dict[str, list[float]], path: str | os.PathLike) -> Path:
    """Write the history as JSON (NaN as null) to ``path``."""
    clean = {k: [None if not math.isfinite(v) else v for v in values] for k, values in history.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean, indent=1))
    return path


def plot_learning_curves(history: dict[str, list[float]], path: str | os.PathLike | None = None):
    """Loss and the MAE of every labelled property per epoch (train and validation).

    Uses a bare matplotlib Figure (no pyplot state), so it works under any
    backend, including headless Agg. With ``path`` the figure is saved there
    and the history next to it as JSON (same name, ``.json``). Returns the Figure.
    """
    from matplotlib.figure import Figure

    epochs = np.asarray(history.get("epoch", range(len(history["train_loss"])))) + 1
    panels = [("loss", "loss (normalised)")]
    labels = {"energy": "energy MAE / eV", "forces": "force MAE / eV Å$^{-1}$", "dipole": "dipole MAE / e Å",
              "hirshfeld": "Hirshfeld ratio MAE", "charges": "charge MAE / e"}
    for name, label in labels.items():
        values = np.asarray(history.get(f"train_{name}_mae", []) + history.get(f"val_{name}_mae", []), float)
        if values.size and np.any(np.isfinite(values)):
            panels.append((f"{name}_mae", label))
    fig = Figure(figsize=(3.6 * len(panels), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (key, label) in zip(axes, panels):
        for split, style in (("train", "-"), ("val", "--")):
            values = np.asarray(history.get(f"{split}_{key}", []), dtype=float)
            if values.size and np.any(np.isfinite(values)):
                ax.plot(epochs[:values.size], values, style, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.legend()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        save_learning_curves(history, Path(path).with_suffix(".json"))
    return fig
