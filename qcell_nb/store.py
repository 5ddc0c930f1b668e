"""Structure collections and the labelled dataset, both as ASE databases.

A stage's structures and the dataset are ASE databases (SQLite by default; a
``postgresql://`` URL works through the same code). ``atoms.info`` metadata is
kept: scalars become key-value pairs (searchable), everything else goes into
the row's ``data``. Every row carries ``sid``, the :func:`structure_id`.

The failure table is a JSON-lines file beside the database: one line per
failed item with its id, name, stage and error text, so failures never mix
with dataset rows and never stop a stage.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import ase.db
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from .structures import charge_of, multiplicity_of, reads_as_scalar, structure_id

# ASE reserves these names for its own columns; info keys of the same name
# are stored under a prefixed key and restored on read.
_RESERVED = {"id", "unique_id", "ctime", "mtime", "user", "calculator", "energy",
             "natoms", "fmax", "smax", "volume", "mass", "charge", "magmom",
             "forces", "stress", "dipole", "charges", "magmoms", "numbers",
             "positions", "cell", "pbc"}
_PREFIX = "info_"
_CALC_RESULT_NAMES = ("energy", "forces", "dipole", "charges", "stress", "free_energy")


def _connect(path: str | os.PathLike, append: bool = True):
    target = str(path)
    if "://" not in target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
    return ase.db.connect(target, type="db" if "://" not in target else "extract_from_name",
                          append=append)


def _split_info(info: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``atoms.info`` into (key_value_pairs, data) that ASE db accepts."""
    pairs, data = {}, {}
    for key, value in info.items():
        stored_key = _PREFIX + key if key in _RESERVED else key
        if isinstance(value, (bool, np.bool_)):
            pairs[stored_key] = bool(value)
        elif isinstance(value, (int, np.integer)):
            pairs[stored_key] = int(value)
        elif isinstance(value, (float, np.floating)):
            pairs[stored_key] = float(value)
        elif isinstance(value, str) and stored_key.isidentifier() and not reads_as_scalar(value):
            pairs[stored_key] = value  # a text that reads as a number or bool ("1e5", "True") ASE refuses: data
        else:
            data[stored_key] = value
    return pairs, data


def _restore_info(pairs: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    info = {}
    for key, value in list(pairs.items()) + list(data.items()):
        if key.startswith(_PREFIX) and key[len(_PREFIX):] in _RESERVED:
            key = key[len(_PREFIX):]
        info[key] = value
    return info


def _row_to_atoms(row) -> Atoms:
    atoms = row.toatoms()
    info = _restore_info(dict(row.key_value_pairs), dict(row.data))
    info.pop("sid", None)
    atoms.info.update(info)
    if row.get("calculator") is not None or row.get("energy") is not None:
        results = {name: row.get(name) for name in _CALC_RESULT_NAMES if row.get(name) is not None}
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def write_structures(path: str | os.PathLike, structures: Iterable[Atoms]) -> int:
    """Write structures to a fresh ASE database at ``path``; returns the count.

    An existing file is replaced, so a stage's output is exactly what it
    produced this time. Rows are written to a temporary file first and moved
    into place, so a crash leaves either the old or the new collection.
    """
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    if tmp.exists():
        tmp.unlink()
    count = 0
    db = _connect(tmp)
    with db:
        for atoms in structures:
            pairs, data = _split_info(atoms.info)
            pairs["sid"] = structure_id(atoms)
            clean = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
            db.write(clean, key_value_pairs=pairs, data=data)
            count += 1
    os.replace(tmp, path)
    return count


def read_structures(path: str | os.PathLike, **selection) -> list[Atoms]:
    """Read every structure (optionally filtered by key=value) from ``path``."""
    if not Path(path).exists():
        raise FileNotFoundError(f"structure collection {path} does not exist; run the previous stage first")
    db = _connect(path)
    return [_row_to_atoms(row) for row in db.select(**selection)]


class Dataset:
    """The labelled dataset: one row per structure, keyed by ``sid``.

    Only the driver writes (workers return results). Each :meth:`add` commits
    at once, so an interrupted stage keeps every row it wrote, and
    :meth:`done_ids` tells a resumed stage what is left.

    Parameters
    ----------
    path:
        Database file (``.db``) or a ``postgresql://`` URL.
    failures_path:
        JSON-lines failure table; defaults to ``<path stem>.failures.jsonl``.
    """

    def __init__(self, path: str | os.PathLike, failures_path: str | os.PathLike | None = None):
        self.path = str(path)
        self.db = _connect(path)
        if failures_path is None:
            failures_path = failures_path_of(self.path if "://" not in self.path else "dataset.db")
        self.failures_path = Path(failures_path)
        # Ids with an unresolved failure, read from the file once: add() consults it for every
        # row, and re-reading the file each time would make labelling quadratic in its length.
        self._failed_ids = {f["sid"] for f in self.failures()}

    def __len__(self) -> int:
        return self.db.count()

    def done_ids(self) -> set[str]:
        """Structure ids already in the dataset."""
        return {row.sid for row in self.db.select(columns=["key_value_pairs"], include_data=False)}

    def add(self, atoms: Atoms, results: dict[str, Any], key_value_pairs: dict[str, Any] | None = None,
            data: dict[str, Any] | None = None, sid: str | None = None) -> int:
        """Write one labelled structure; skip it if its ``sid`` is present.

        ``results`` holds the calculator properties (energy in eV, forces in
        eV/Å, dipole in e·Å, charges in e); extra arrays go in ``data``.
        Returns the row id (existing or new).
        """
        sid = sid or structure_id(atoms)
        for row in self.db.select(sid=sid):
            return row.id
        pairs, info_data = _split_info(atoms.info)
        pairs.update(key_value_pairs or {})
        pairs["sid"] = sid
        pairs.setdefault("total_charge", charge_of(atoms))
        pairs.setdefault("multiplicity", multiplicity_of(atoms))
        info_data.update(data or {})
        clean = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        known = {k: np.asarray(v) if k != "energy" else float(v) for k, v in results.items()
                 if k in _CALC_RESULT_NAMES}
        clean.calc = SinglePointCalculator(clean, **known)
        row_id = self.db.write(clean, key_value_pairs=pairs, data=info_data)
        self.clear_failure(sid)
        return row_id

    @property
    def metadata(self) -> dict[str, Any]:
        """Dataset-wide metadata (level of theory, units, approximations)."""
        return dict(self.db.metadata)

    def update_metadata(self, **entries: Any) -> None:
        self.db.metadata = {**self.db.metadata, **entries}

    def rows(self, **selection) -> Iterator:
        return self.db.select(**selection)

    def structures(self, **selection) -> list[Atoms]:
        """Labelled structures as Atoms with a single-point calculator attached, in structure-id order.

        Rows land in the order their labels arrive, which depends on worker timing and on where
        an interrupted stage resumed; sorting by ``sid`` gives every reader (splits, training,
        exports) the same sequence for the same content, so the same dataset trains the same model.
        """
        rows = sorted(self.db.select(**selection), key=lambda row: row.sid)
        return [_row_to_atoms(row) for row in rows]

    def adopt_rows(self, source: "Dataset", structures: dict[str, Atoms]) -> list[str]:
        """Copy the rows of ``structures`` (id -> structure) that ``source`` holds and this dataset lacks.

        Positions, calculator results and the label's own entries are copied as they are; the
        structure's current ``info`` (name, subset, provenance) replaces the old row's, since the
        same geometry may come from a renamed block. The caller checks that ``source`` was
        labelled with the same settings. Returns the ids copied.
        """
        have = self.done_ids()
        wanted = set(structures) - have
        copied = []
        for row in source.db.select():
            if row.sid in wanted:
                pairs, data = _split_info(structures[row.sid].info)
                pairs = {**row.key_value_pairs, **pairs, "sid": row.sid}
                data = {**row.data, **data}
                self.db.write(row.toatoms(), key_value_pairs=pairs, data=data)
                self.clear_failure(row.sid)
                wanted.discard(row.sid)
                copied.append(row.sid)
        return copied

    # --- failures -------------------------------------------------------
    def record_failure(self, sid: str, name: str, stage: str, error: str) -> None:
        """Append a failed item (its id, name, stage and error text)."""
        record_failure(self.failures_path, sid, name, stage, error)
        self._failed_ids.add(sid)

    def failures(self) -> list[dict[str, Any]]:
        """Current failures, the latest entry per structure id, minus those since labelled or cleared."""
        return read_failures(self.failures_path)

    def clear_failure(self, sid: str) -> None:
        """Mark an earlier failure of ``sid`` resolved (it was since computed)."""
        if sid in self._failed_ids:
            _append_resolved(self.failures_path, [sid], "labelled")
            self._failed_ids.discard(sid)

    def clear_failures(self, sids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Clear current failures (all, or those of ``sids``) so they can be retried.

        Returns the cleared entries. The failure table keeps their history;
        items that fail again are recorded again with their new error.
        """
        cleared = clear_failures(self.failures_path, sids)
        self._failed_ids -= {entry["sid"] for entry in cleared}
        return cleared


def failures_path_of(dataset_path: str | os.PathLike) -> Path:
    """The failure table beside a dataset file: ``dataset.db`` -> ``dataset.failures.jsonl``."""
    return Path(dataset_path).with_suffix(".failures.jsonl")


def record_failure(failures_path: str | os.PathLike, sid: str, name: str, stage: str, error: str) -> None:
    """Append a failed item to a failure table (for stages whose output is not a :class:`Dataset`).

    A stage writing ``structures.db`` records into ``structures.failures.jsonl``
    (:func:`failures_path_of`), where ``qcell-nb failures`` finds it.
    """
    path = Path(failures_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _append_entries(path, [{"sid": sid, "name": name, "stage": stage, "error": error, "time": time.time()}])


def read_failures(failures_path: str | os.PathLike) -> list[dict[str, Any]]:
    """Unresolved failures in a failure table: the latest entry per structure id.

    Each entry has ``sid``, ``name``, ``stage``, ``error`` (text) and ``time``
    (Unix seconds). A missing file has none. Reads without opening any database.
    """
    path = Path(failures_path)
    if not path.exists():
        return []
    latest: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash while it was written
            latest[entry["sid"]] = entry
    return [entry for entry in latest.values() if not entry.get("resolved")]


def clear_failures(failures_path: str | os.PathLike, sids: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Mark the current failures of a table (all, or those in ``sids``) cleared for a retry.

    Returns the cleared entries.
    """
    wanted = None if sids is None else set(sids)
    cleared = [entry for entry in read_failures(failures_path) if wanted is None or entry["sid"] in wanted]
    if cleared:
        _append_resolved(Path(failures_path), [entry["sid"] for entry in cleared], "retry")
    return cleared


def _append_resolved(path: Path, sids: list[str], reason: str) -> None:
    _append_entries(path, [{"sid": sid, "resolved": True, "reason": reason, "time": time.time()} for sid in sids])


def _append_entries(path: Path, entries: list[dict[str, Any]]) -> None:
    """Append JSON lines; start on a fresh line if a crash left the last one unfinished."""
    with open(path, "a+b") as handle:
        handle.seek(0, os.SEEK_END)
        broken = False
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            broken = handle.read(1) != b"\n"
        text = ("\n" if broken else "") + "".join(json.dumps(entry) + "\n" for entry in entries)
        handle.write(text.encode())
