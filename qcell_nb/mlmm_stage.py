"""ML/MM as a pipeline option: stage 05 carves and labels ML/MM structures, stage 06 trains on them.

Stage 05 (:func:`label_mlmm_stage`)
    Picks ``n`` frames of stage 02's ion-in-water boxes (spread over the ions, then over time,
    seeded), carves each into an ML/MM structure (:func:`qcell_nb.mlmm.carve_mlmm`: the ion and
    its nearest waters as QM atoms, the waters within ``mm_radius`` as Z = 0 sites with TIP3P
    charges) and labels them with QM/MM electrostatic embedding
    (:func:`qcell_nb.mlmm.label_mlmm_missing`) into their own dataset, ``mlmm.db`` beside the main
    ``dataset.db``: the main dataset never holds MM pseudo-atoms. A frame that cannot be carved
    and a structure whose QM/MM calculation fails are recorded in ``mlmm.failures.jsonl`` (where
    ``qcell-nb failures`` and ``qcell-nb retry`` find them) and the stage goes on.

Stage 06 (:func:`train_mlmm_stage`)
    Trains a model on ``mlmm.db`` with the same training API and settings as the main model
    (whole frames held out, :func:`qcell_nb.splits.split_by_group`) and reports held-out force
    errors on QM atoms and on MM sites separately, beside the mean predictor, in
    ``mlmm_metrics.json`` and ``mlmm_parity.png``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from .figures import finish_figure
from .mlmm import carve_mlmm, label_mlmm_missing, mm_sites, restore_mm_charges
from .structures import structure_id

#: The ML/MM dataset's file name inside stage 05's directory.
MLMM_DATASET = "mlmm.db"

#: The stage name recorded with ML/MM rows and failures.
MLMM_STAGE = "05_mlmm"


# --------------------------------------------------------------------------
# stage 05
# --------------------------------------------------------------------------
def pick_frames(frames: Sequence[Atoms], n: int, seed: int = 0) -> list[Atoms]:
    """``n`` frames (or all, if fewer), alternating between ions, each ion's frames in seeded random order.

    Frames are grouped by ``info["name"]`` (the ion); the groups, in name order, take turns, so
    a small ``n`` still covers every ion. Deterministic under ``seed``.
    """
    if n < 0:
        raise ValueError(f"n={n}: the number of ML/MM structures cannot be negative")
    groups: dict[str, list[Atoms]] = {}
    for frame in frames:
        groups.setdefault(str(frame.info.get("name", frame.get_chemical_formula())), []).append(frame)
    rng = np.random.default_rng(seed)
    queues = [[group[i] for i in rng.permutation(len(group))] for _, group in sorted(groups.items())]
    picked: list[Atoms] = []
    while len(picked) < n and any(queues):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop(0))
    return picked


def carve_stage_structures(frames: Sequence[Atoms], n: int, qm_waters: Sequence[int], mm_radius: float,
                           seed: int = 0) -> tuple[list[Atoms], list[dict[str, str]]]:
    """ML/MM structures from ``n`` picked frames; the ``i``-th gets ``qm_waters[i % len(qm_waters)]`` QM waters.

    Returns:
        (structures, failures): a frame that cannot be carved (too few waters, a radius beyond
        half the box, ...) gives a failure ``{"sid": frame id, "name": ..., "error": ...}``
        instead of a structure.
    """
    qm_waters = [int(k) for k in qm_waters]
    if not qm_waters or min(qm_waters) < 0:
        raise ValueError(f"mlmm_qm_waters={qm_waters!r}: give one or more QM water counts (0 or more)")
    structures, failures = [], []
    for i, frame in enumerate(pick_frames(frames, n, seed)):
        waters = qm_waters[i % len(qm_waters)]
        try:
            structures.append(carve_mlmm(frame, waters, mm_radius))
        except ValueError as exc:
            failures.append({"sid": structure_id(frame), "name": f"{frame.info.get('name', '')}(H2O){waters}+MM",
                             "error": f"carving ML/MM structure: {exc}"})
    return structures, failures


def label_mlmm_stage(run_dir: str | os.PathLike, n_structures: int, qm_waters: Sequence[int], mm_radius: float,
                     *, seed: int = 0, executor: str = "local", n_workers: int | None = None, retries: int = 1,
                     progress: bool = True, reuse_from: str | os.PathLike | None = None,
                     **calc_params: Any) -> dict[str, int]:
    """Stage 05's ML/MM part: carve from stage 02's ion boxes, QM/MM-label into ``05_reference/mlmm.db``.

    Resumable like the main labels: structures already in ``mlmm.db`` are not computed again.

    Args:
        run_dir: the run directory (stage 02 must have written its ``structures.db``).
        n_structures: ML/MM structures to make; 0 does nothing (no file is written).
        qm_waters: QM waters per structure, cycled over the structures.
        mm_radius: Å, see :func:`qcell_nb.mlmm.carve_mlmm`.
        seed: picks the frames.
        executor, n_workers, retries, progress: as for :func:`qcell_nb.reference.label_missing`.
        reuse_from: an earlier ``05_reference`` directory whose ``mlmm.db`` rows for these
            structures are copied when labelled with the same settings (a superseded stage).
        calc_params: the PBE0+MBD settings of the main labels (preset or basis/grid, mbd, device).

    Returns:
        Counts for the manifest: ``mlmm_rows``, ``mlmm_computed_now``, ``mlmm_failed`` (empty
        when ``n_structures`` is 0; zeros, with a printed note, when the run has no ion frames).
    """
    from .pipeline.stages import stage_dir
    from .store import Dataset, read_structures

    if n_structures <= 0:
        return {}
    sampled = stage_dir(run_dir, "02_sampling", create=False) / "structures.db"
    frames = read_structures(sampled, subset="ions_water") if sampled.exists() else []
    if not frames:
        # A run without ion boxes (other classes only, or stage 05 fed by hand): nothing to carve,
        # which is no item's failure.
        print(f"ML/MM: no ion-in-water frames in {sampled} (is 'ions_water' among stage 02's classes?); "
              "no ML/MM structures", flush=True)
        return {"mlmm_rows": 0, "mlmm_computed_now": 0, "mlmm_failed": 0}
    out = stage_dir(run_dir, "05_reference")
    dataset = Dataset(out / MLMM_DATASET)
    structures, carve_failures = carve_stage_structures(frames, n_structures, qm_waters, mm_radius, seed)
    for failure in carve_failures:
        dataset.record_failure(failure["sid"], failure["name"], MLMM_STAGE, failure["error"])
    done = dataset.done_ids()
    print(f"ML/MM: {len(structures)} structures carved from {len(frames)} ion-box frames "
          f"({len(carve_failures)} could not be carved), {sum(structure_id(a) in done for a in structures)} "
          "already labelled", flush=True)
    summary = label_mlmm_missing(structures, dataset, stage=MLMM_STAGE, executor=executor, n_workers=n_workers,
                                 retries=retries, progress=progress,
                                 reuse_from=Path(reuse_from) / MLMM_DATASET if reuse_from else None, **calc_params)
    dataset.update_metadata(mlmm_carving={"n_structures": int(n_structures), "qm_waters": [int(k) for k in qm_waters],
                                          "mm_radius": float(mm_radius), "seed": int(seed),
                                          "frames": "02_sampling ions_water"})
    failures = dataset.failures()
    for failure in failures:
        print(f"FAILED ML/MM {failure['name']} ({failure['sid']}): {failure['error']}", flush=True)
    print(f"ML/MM dataset {dataset.path}: {len(dataset)} rows; {dataset.metadata['level_of_theory']} "
          "with TIP3P point-charge embedding", flush=True)
    return {"mlmm_rows": len(dataset), "mlmm_computed_now": summary.succeeded, "mlmm_failed": len(failures)}


def read_mlmm_dataset(run_dir: str | os.PathLike) -> list[Atoms]:
    """The labelled ML/MM structures of a run (MM charges restored), or [] when stage 05 made none."""
    from .pipeline.stages import stage_dir
    from .store import Dataset

    path = stage_dir(run_dir, "05_reference", create=False) / MLMM_DATASET
    if not path.exists():
        return []
    return [restore_mm_charges(atoms) for atoms in Dataset(path).structures()]


# --------------------------------------------------------------------------
# stage 06
# --------------------------------------------------------------------------
def qm_mm_errors(test: Sequence[Atoms], pred_energies: Sequence[float] | None,
                 pred_forces: Sequence[np.ndarray]) -> dict[str, float]:
    """Force MAE/RMSE (eV/Å, over Cartesian components) on QM atoms and on MM sites; energy MAE (eV) if given."""
    qm_err, mm_err = [], []
    for atoms, forces in zip(test, pred_forces):
        error = np.asarray(forces) - atoms.get_forces()
        mm = mm_sites(atoms)
        qm_err.append(error[~mm].ravel())
        mm_err.append(error[mm].ravel())
    qm_err, mm_err = np.concatenate(qm_err), np.concatenate(mm_err)
    result = {"qm_force_mae_eV_A": float(np.mean(np.abs(qm_err))),
              "qm_force_rmse_eV_A": float(np.sqrt(np.mean(qm_err**2)))}
    if mm_err.size:
        result.update(mm_force_mae_eV_A=float(np.mean(np.abs(mm_err))),
                      mm_force_rmse_eV_A=float(np.sqrt(np.mean(mm_err**2))))
    if pred_energies is not None:
        reference = np.array([atoms.get_potential_energy() for atoms in test])
        result["energy_mae_eV"] = float(np.mean(np.abs(np.asarray(pred_energies) - reference)))
    return {key: round(value, 5) for key, value in result.items()}


def mean_qm_mm_forces(train: Sequence[Atoms], test: Sequence[Atoms]) -> list[np.ndarray]:
    """The trivial baseline: every QM atom gets the training mean QM force, every MM site the mean MM force.

    (No energy baseline: the training mean per atom means nothing across ions of different
    elements, whose total energies differ by hundreds of eV.)
    """
    forces = [atoms.get_forces() for atoms in train]
    mm = [mm_sites(atoms) for atoms in train]
    qm_mean = np.mean(np.concatenate([f[~m] for f, m in zip(forces, mm)]), axis=0)
    mm_all = np.concatenate([f[m] for f, m in zip(forces, mm)])
    mm_mean = np.mean(mm_all, axis=0) if len(mm_all) else np.zeros(3)
    return [np.where(mm_sites(atoms)[:, None], mm_mean, qm_mean) for atoms in test]


def train_mlmm_stage(structures: Sequence[Atoms], out: str | os.PathLike, *, seed: int = 0,
                     test_fraction: float = 0.25, val_fraction: float = 0.15, resume: bool = True,
                     split: dict[str, list[int]] | None = None, **train_kwargs: Any) -> dict[str, Any]:
    """Stage 06's ML/MM part: train on ML/MM structures, test on held-out frames, write the results.

    Args:
        structures: labelled ML/MM structures (:func:`read_mlmm_dataset`).
        out: stage 06's directory; the model goes to ``mlmm_model/`` (checkpoints in
            ``mlmm_checkpoints/``), the metrics to ``mlmm_metrics.json``, the parity plot to
            ``mlmm_parity.png``.
        seed, test_fraction, val_fraction: the split (whole frames, :func:`split_by_group`),
            unless ``split`` (indices of ``train``, ``val``, ``test``) is given.
        train_kwargs: :func:`qcell_nb.model.train` settings (size, epochs, ...).

    Returns:
        The metrics written: sizes, ``model`` and ``mean_predictor`` errors on the test set
        (:func:`qm_mm_errors`), the split, the training time; or a ``note`` saying why there
        was nothing to test (fewer than three frames).
    """
    import time

    from .model import predict, save_model, train
    from .splits import split_by_group

    out = Path(out)
    if split is None:
        split = split_by_group(structures, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed)
    metrics: dict[str, Any] = {"n_structures": len(structures), "split": split,
                               "n_train": len(split["train"]), "n_val": len(split["val"]), "n_test": len(split["test"])}
    if not split["train"] or not split["test"]:
        metrics["note"] = (f"{len(structures)} ML/MM structures give {len(split['train'])} training and "
                           f"{len(split['test'])} test structures: need both (at least three frames)")
        (out / "mlmm_metrics.json").write_text(json.dumps(metrics, indent=1))
        return metrics
    train_set = [structures[i] for i in split["train"]]
    test_set = [structures[i] for i in split["test"]]
    start = time.time()
    result = train(train_set, [structures[i] for i in split["val"]] or None, seed=seed,
                   checkpoint_dir=out / "mlmm_checkpoints", resume=resume, progress=False, **train_kwargs)
    metrics["train_seconds"] = round(time.time() - start, 1)
    save_model(out / "mlmm_model", result)
    # batches no larger than the test set: no padded molecule slots (and one compiled shape for a
    # single test structure, the one mlmm_forces uses)
    pred_e, pred_f = predict(result, test_set, batch_size=min(16, len(test_set)))
    metrics["model"] = qm_mm_errors(test_set, pred_e, pred_f)
    metrics["mean_predictor"] = qm_mm_errors(test_set, None, mean_qm_mm_forces(train_set, test_set))
    metrics["n_test_qm_atoms"] = int(sum((~mm_sites(a)).sum() for a in test_set))
    metrics["n_test_mm_sites"] = int(sum(mm_sites(a).sum() for a in test_set))
    (out / "mlmm_metrics.json").write_text(json.dumps(metrics, indent=1))
    plot_mlmm_parity(test_set, pred_f, out / "mlmm_parity.png")
    model, mean = metrics["model"], metrics["mean_predictor"]
    print(f"ML/MM test ({len(test_set)} structures): force MAE on QM atoms {model['qm_force_mae_eV_A']:.3f} eV/Å "
          f"(mean predictor {mean['qm_force_mae_eV_A']:.3f}), on MM sites {model.get('mm_force_mae_eV_A', 0):.3f} "
          f"eV/Å (mean predictor {mean.get('mm_force_mae_eV_A', 0):.3f})", flush=True)
    return metrics


def mlmm_counts(metrics: dict[str, Any]) -> dict[str, Any]:
    """The manifest counts of :func:`train_mlmm_stage`'s metrics (sizes and the model's test errors)."""
    counts = {f"mlmm_{part}": metrics[f"n_{part}"] for part in ("train", "val", "test")}
    counts.update({f"mlmm_{key}": value for key, value in metrics.get("model", {}).items() if "mae" in key})
    return counts


def plot_mlmm_parity(test: Sequence[Atoms], pred_forces: Sequence[np.ndarray], path: str | os.PathLike | None = None):
    """Predicted against reference force components, QM atoms and MM sites in separate panels."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
    for ax, (title, want_mm) in zip(axes, (("QM atoms", False), ("MM sites", True))):
        ref = np.concatenate([a.get_forces()[mm_sites(a) == want_mm].ravel() for a in test])
        pred = np.concatenate([np.asarray(f)[mm_sites(a) == want_mm].ravel()
                               for a, f in zip(test, pred_forces)])
        ax.plot(ref, pred, ".", alpha=0.5, ms=3)
        if ref.size:
            low, high = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
            ax.plot([low, high], [low, high], "k-", lw=0.8)
            ax.set_title(f"{title}: MAE {np.mean(np.abs(pred - ref)):.3f} eV/Å")
        ax.set_xlabel("QM/MM reference force (eV/Å)")
        ax.set_ylabel("ML/MM model force (eV/Å)")
    return finish_figure(fig, path)


def plot_mlmm_labels(structures: Sequence[Atoms], path: str | os.PathLike | None = None):
    """Histograms of the QM/MM label forces |F| on QM atoms and on MM sites (stage 05's ML/MM figure)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for title, want_mm in (("QM atoms", False), ("MM sites", True)):
        norms = [np.linalg.norm(a.get_forces()[mm_sites(a) == want_mm], axis=1) for a in structures]
        values = np.concatenate(norms) if norms else np.zeros(0)
        ax.hist(values, bins=30, alpha=0.6, label=f"{title} ({values.size})")
    ax.set_xlabel("|F| of the QM/MM labels (eV/Å)")
    ax.set_yscale("log")
    ax.legend()
    return finish_figure(fig, path)
