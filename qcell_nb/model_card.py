"""Model cards and a single-file export of a trained model (stage 06/07).

:func:`write_model_card` writes ``model_card.json`` (machine-readable) and ``MODEL_CARD.md``
(for people) beside a saved model (:func:`qcell_nb.model.save_model`): what data it was trained
on (a content digest of the dataset, its level of theory, sizes per subset), how the data were
split, the architecture and its parameter count, the training settings and loss weights, the
training time, the errors (per split and per subset when given), package versions, intended use
and limitations.

:func:`export_model` packs parameters, architecture and card into one zip archive;
:func:`import_model` unpacks it, checks the parameters against the card's SHA-256 and loads
the model (``load_model`` on the unpacked directory works too).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .pipeline.manifest import database_digest, now, package_versions
from .store import Dataset

CARD_JSON = "model_card.json"
CARD_MARKDOWN = "MODEL_CARD.md"
CARD_FORMAT = 1
#: Files of a saved model (see :func:`qcell_nb.model.save_model`).
MODEL_FILES = ("model.json", "params.msgpack")
SPLIT_PARTS = ("train", "val", "test")

DEFAULT_INTENDED_USE = (
    "Energies and forces of neutral and charged biomolecular fragments (sugars, nucleic-acid pieces, lipids, "
    "ions in water, dimers) made of the training elements, at the dataset's level of theory; molecular dynamics "
    "and geometry optimisation of such fragments in vacuum, or as the QM part of ML/MM with point-charge "
    "environments when the training data held MM sites."
)
DEFAULT_LIMITATIONS = (
    "Non-periodic structures only. Not valid for elements, total charges or spin states absent from the "
    "training data, nor for chemistry far from it (bond breaking, high-energy geometries, much larger systems "
    "than trained on); errors are only known for the splits reported here. Long-range terms stop at the "
    "long-range cutoff. In ML/MM the energy excludes MM-MM Coulomb, Lennard-Jones and bonded MM terms, which "
    "the MM force field supplies."
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _clean(value: Any) -> Any:
    """JSON-safe copy: numpy to Python, NaN/inf to None, tuples to lists."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def _model_directory(model_dir: str | os.PathLike) -> Path:
    """The directory holding ``model.json``: ``model_dir`` or, for a checkpoint directory, its ``best/``."""
    path = Path(model_dir)
    if not (path / MODEL_FILES[0]).exists() and (path / "best" / MODEL_FILES[0]).exists():
        path = path / "best"
    missing = [name for name in MODEL_FILES if not (path / name).exists()]
    if missing:
        raise FileNotFoundError(f"{model_dir} is not a saved model: {', '.join(missing)} missing")
    return path


def dataset_summary(dataset_path: str | os.PathLike) -> dict[str, Any]:
    """Digest, level of theory and composition of a labelled dataset (ASE database file).

    ``digest`` is the content digest the stage manifests use (structure ids and energies; row
    timestamps do not change it). ``level_of_theory`` comes from the dataset metadata, or from
    the rows when the metadata lacks it. Also: ``n_structures``, ``subsets`` (count per subset),
    ``elements`` (symbols), ``charges`` (count per total charge), ``max_atoms``, ``has_mm_sites``.
    """
    from ase.data import chemical_symbols

    path = Path(dataset_path)
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} does not exist")
    dataset = Dataset(path)
    metadata = dataset.metadata
    subsets: Counter = Counter()
    charges: Counter = Counter()
    levels: set[str] = set()
    elements: set[int] = set()
    max_atoms = 0
    for row in dataset.rows():
        subsets[str(row.get("subset", "unknown"))] += 1
        charges[int(row.get("total_charge", row.get("info_charge", 0)) or 0)] += 1
        if row.get("level_of_theory"):
            levels.add(str(row.get("level_of_theory")))
        elements.update(int(z) for z in row.numbers)
        max_atoms = max(max_atoms, row.natoms)
    level = metadata.get("level_of_theory") or (" | ".join(sorted(levels)) if levels else None)
    return {
        "file": path.name, "digest": database_digest(path), "level_of_theory": level,
        "n_structures": len(dataset), "subsets": dict(sorted(subsets.items())),
        "elements": [chemical_symbols[z] if z > 0 else "MM" for z in sorted(elements)],
        "charges": {str(k): v for k, v in sorted(charges.items())}, "max_atoms": max_atoms,
        "has_mm_sites": 0 in elements,
        "calculator_parameters": metadata.get("calculator_parameters"),
    }


def split_summary(split: Mapping[str, Any], n_structures: int, subsets: Sequence[str] | None = None
                  ) -> dict[str, Any]:
    """Sizes (and, for index lists, a digest and subset counts) of a train/val/test split.

    ``split`` maps ``train``/``val``/``test`` to index lists into the dataset's rows (as
    :mod:`qcell_nb.splits` returns them) or to counts; optional ``kind`` (e.g.
    ``"conformations"``), ``seed`` and ``test_fraction``/``val_fraction`` are copied.

    Raises:
        ValueError: a part missing, an index outside the dataset, parts that overlap, or more
            structures than the dataset has.
    """
    if "train" not in split:
        raise ValueError(f"split has no 'train' part (keys: {sorted(split)})")
    summary: dict[str, Any] = {k: _clean(split[k]) for k in split if k not in SPLIT_PARTS}
    sizes, seen = {}, set()
    indexed = all(not isinstance(split.get(p, []), (int, np.integer)) for p in SPLIT_PARTS)
    for part in SPLIT_PARTS:
        value = split.get(part, [])
        if isinstance(value, (int, np.integer)):
            sizes[part] = int(value)
            continue
        indices = [int(i) for i in value]
        bad = [i for i in indices if not 0 <= i < n_structures]
        if bad:
            raise ValueError(f"split part {part!r}: indices {bad[:5]} outside the dataset's {n_structures} rows")
        overlap = seen & set(indices)
        if overlap:
            raise ValueError(f"split part {part!r} shares indices {sorted(overlap)[:5]} with another part")
        seen |= set(indices)
        sizes[part] = len(indices)
        if subsets is not None:
            summary.setdefault("subsets", {})[part] = dict(sorted(Counter(subsets[i] for i in indices).items()))
    if sum(sizes.values()) > n_structures:
        raise ValueError(f"split sizes {sizes} add up to more than the dataset's {n_structures} structures")
    summary["sizes"] = sizes
    if indexed:
        payload = json.dumps({p: sorted(int(i) for i in split.get(p, [])) for p in SPLIT_PARTS})
        summary["digest"] = hashlib.sha256(payload.encode()).hexdigest()
    return summary


def _loss_weights(config: Mapping[str, Any]) -> dict[str, float]:
    from .model import LossWeights

    weights = dict(config.get("loss_weights") or {})
    defaults = LossWeights()
    for name in ("energy", "forces", "dipole", "hirshfeld", "charges"):
        weights.setdefault(name, float(config.get(f"{name}_weight", getattr(defaults, name))))
    return {k: float(v) for k, v in weights.items()}


def write_model_card(model_dir: str | os.PathLike, dataset_path: str | os.PathLike, split: Mapping[str, Any],
                     metrics: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None, *,
                     intended_use: str = DEFAULT_INTENDED_USE, limitations: str = DEFAULT_LIMITATIONS,
                     name: str | None = None) -> Path:
    """Write ``model_card.json`` and ``MODEL_CARD.md`` beside a saved model; return the JSON path.

    Args:
        model_dir: a directory written by :func:`qcell_nb.model.save_model` (or a training
            checkpoint directory: its ``best/`` model is described and the card goes there).
        dataset_path: the labelled dataset (ASE database) the model was trained on.
        split: ``train``/``val``/``test`` index lists into the dataset's rows (or counts), plus
            optional ``kind``/``seed`` (see :func:`split_summary`).
        metrics: errors, e.g. ``{"test": evaluate(...), "per_subset": {"lipids": {...}}}``
            (eV, eV/Å, e·Å as :func:`qcell_nb.model.evaluate` returns them); stored as given.
        config: the training settings (the keyword arguments of :func:`qcell_nb.model.train`,
            e.g. size, epochs, batch_size, learning_rate, ``*_weight``, seed) and optionally
            ``training_time_s`` (default: the sum of the history's epoch times).
        intended_use, limitations: free text for the card.
        name: the model's name (default: the directory name).

    Raises:
        FileNotFoundError: no saved model or dataset. ValueError: an inconsistent split.
    """
    from .model import load_model

    directory = _model_directory(model_dir)
    model = load_model(directory)
    config = dict(config or {})
    data = dataset_summary(dataset_path)
    subsets = [str(row.get("subset", "unknown")) for row in Dataset(dataset_path).rows()]
    split_info = split_summary(split, data["n_structures"], subsets)
    history = getattr(model, "history", {}) or {}
    epoch_times = [t for t in history.get("epoch_time", []) if t is not None and math.isfinite(t)]
    training_time = config.pop("training_time_s", None)
    if training_time is None and epoch_times:
        training_time = float(sum(epoch_times))
    n_parameters = int(sum(np.size(leaf) for leaf in _leaves(model.params)))
    trained_elements = [e for e in data["elements"] if e != "MM"]
    card = {
        "card_format": CARD_FORMAT,
        "name": name or Path(model_dir).name,
        "created": now(),
        "model": {
            "architecture": _architecture(model.config),
            "size": config.get("size"),
            "config": model.config.to_dict(),
            "n_parameters": n_parameters,
            "elements": trained_elements,
            "element_energies_eV": model.baseline.to_dict()["element_energies"],
            "energy_scale_eV": model.baseline.scale,
            "ml_mm": data["has_mm_sites"],
            "best_epoch": getattr(model, "best_epoch", None),
            "epochs_trained": len(history.get("epoch", [])),
            "files": {n: _sha256(directory / n) for n in MODEL_FILES},
        },
        "training": {
            "settings": {k: v for k, v in config.items() if not k.endswith("_weight") and k != "loss_weights"},
            "loss_weights": _loss_weights(config),
            "training_time_s": training_time,
            "final": {k: history[k][-1] for k in ("train_loss", "val_loss", "train_forces_mae", "val_forces_mae",
                                                   "train_energy_mae", "val_energy_mae") if history.get(k)},
        },
        "dataset": data,
        "split": split_info,
        "metrics": metrics or {},
        "units": {"energy": "eV", "forces": "eV/Å", "dipole": "e·Å", "charges": "e", "time": "s"},
        "package_versions": package_versions(),
        "intended_use": intended_use,
        "limitations": limitations,
    }
    card = _clean(card)
    json_path = directory / CARD_JSON
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card, indent=1, ensure_ascii=False))
    os.replace(tmp, json_path)
    (directory / CARD_MARKDOWN).write_text(render_markdown(card))
    return json_path


def _architecture(config: Any) -> str:
    """One line naming the network and the physical terms that are switched on."""
    terms = [name for name, on in (("ZBL repulsion", config.repulsion), ("electrostatics", config.electrostatics),
                                   ("dispersion", config.dispersion)) if on]
    return "SO3LR-style e3x force field: SO3krates layers" + "".join(f" + {t}" for t in terms)


def _leaves(tree: Any) -> list[Any]:
    import jax

    return jax.tree.leaves(tree)


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "–" if value is None else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _metric_rows(metrics: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str, Any]]:
    """Flatten nested metrics into (group, quantity, value) rows."""
    rows = []
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            rows += _metric_rows(value, f"{prefix}{key} / ")
        else:
            rows.append((prefix.rstrip(" /") or "-", key, value))
    return rows


def render_markdown(card: Mapping[str, Any]) -> str:
    """``MODEL_CARD.md`` text for a card dict (as written to ``model_card.json``)."""
    model, training, data, split = card["model"], card["training"], card["dataset"], card["split"]
    arch = model["config"]
    lines = [
        f"# Model card: {card['name']}", "",
        f"Created {card['created']} by qcell-nb {card['package_versions'].get('qcell-nb')}.", "",
        "## Model", "",
        f"{model['architecture']}; size `{model.get('size')}`, {model['n_parameters']} parameters, "
        f"elements {', '.join(model['elements'])}" + (" plus MM point-charge sites (ML/MM)" if model["ml_mm"] else "")
        + ".", "",
        _table([(k, v) for k, v in arch.items()], ("setting", "value")), "",
        f"Trained {model['epochs_trained']} epochs, best epoch {model['best_epoch']}, "
        "training time " + (f"{training['training_time_s']:.1f} s (wall clock, JIT compilation included)"
                            if training["training_time_s"] is not None else "not recorded") + ".", "",
        "Loss weights: " + ", ".join(f"{k} {v:g}" for k, v in training["loss_weights"].items()) + ".", "",
        "Training settings: " + (", ".join(f"`{k}={v}`" for k, v in training["settings"].items()) or "–") + ".", "",
        "## Data", "",
        f"`{data['file']}`: {data['n_structures']} structures, level of theory **{data['level_of_theory']}**, "
        f"up to {data['max_atoms']} atoms, total charges {data['charges']}.", "",
        f"Content digest (structure ids and energies): `{data['digest']}`.", "",
        _table(list(data["subsets"].items()), ("subset", "structures")), "",
        "## Split", "",
        f"Kind `{split.get('kind', 'unspecified')}`" + (f", seed {split['seed']}" if "seed" in split else "")
        + ": " + ", ".join(f"{k} {v}" for k, v in split["sizes"].items())
        + (f" (digest `{split['digest'][:16]}`)" if "digest" in split else "") + ".", "",
    ]
    if split.get("subsets"):
        names = sorted({s for part in split["subsets"].values() for s in part})
        lines += [_table([(s, *(split["subsets"].get(p, {}).get(s, 0) for p in SPLIT_PARTS)) for s in names],
                         ("subset", *SPLIT_PARTS)), ""]
    lines += ["## Errors", ""]
    rows = _metric_rows(card.get("metrics") or {})
    lines += [_table(rows, ("set", "quantity", "value")) if rows else "No errors reported.", "",
              "Units: energies eV (per structure), forces eV/Å, dipoles e·Å, charges e.", "",
              "## Intended use", "", card["intended_use"], "",
              "## Limitations", "", card["limitations"], "",
              "## Package versions", "",
              _table(sorted(card["package_versions"].items()), ("package", "version")), ""]
    return "\n".join(lines)


def read_model_card(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``model_card.json`` of a saved model."""
    path = _model_directory(model_dir) / CARD_JSON
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; call write_model_card first")
    return json.loads(path.read_text())


def export_model(model_dir: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """One zip archive with the model's parameters, architecture and card; returns its path.

    The archive holds ``model.json``, ``params.msgpack``, ``model_card.json`` and
    ``MODEL_CARD.md`` at its top level: unpack it anywhere and :func:`qcell_nb.model.load_model`
    reads the directory (or use :func:`import_model`).

    Raises:
        FileNotFoundError: no saved model, or no card (call :func:`write_model_card` first).
        ValueError: the parameters changed since the card was written (their SHA-256 differs).
    """
    directory = _model_directory(model_dir)
    card = read_model_card(directory)
    for name in MODEL_FILES:
        if _sha256(directory / name) != card["model"]["files"][name]:
            raise ValueError(f"{directory / name} changed since its model card was written; write the card again")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in (*MODEL_FILES, CARD_JSON, CARD_MARKDOWN):
            archive.write(directory / name, arcname=name)
    os.replace(tmp, out_path)
    return out_path


def import_model(archive_path: str | os.PathLike, directory: str | os.PathLike):
    """Unpack an :func:`export_model` archive into ``directory`` and load the model.

    Only the four known files are extracted (no paths from the archive are trusted), and the
    parameters are checked against the card's SHA-256.

    Raises:
        ValueError: a file missing from the archive, or parameters that do not match the card.
    """
    from .model import load_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive_path) as archive:
        names = set(archive.namelist())
        missing = [n for n in (*MODEL_FILES, CARD_JSON) if n not in names]
        if missing:
            raise ValueError(f"{archive_path} is not a model archive: {', '.join(missing)} missing")
        for name in (*MODEL_FILES, CARD_JSON, CARD_MARKDOWN):
            if name in names:
                (directory / name).write_bytes(archive.read(name))
    card = json.loads((directory / CARD_JSON).read_text())
    for name in MODEL_FILES:
        if _sha256(directory / name) != card["model"]["files"][name]:
            raise ValueError(f"{archive_path}: {name} does not match the SHA-256 in its model card")
    return load_model(directory)
