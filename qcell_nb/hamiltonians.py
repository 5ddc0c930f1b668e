"""Kohn-Sham Hamiltonian, overlap and orbital energies beside the dataset, in HDF5.

In the style of nablaDFT: one file (``dataset.hamiltonians.h5`` next to
``dataset.db``), one group per structure id (the dataset row's ``sid``)::

    /<sid>/hamiltonian            (nao, nao) or (2, nao, nao) for UKS, Ha
    /<sid>/overlap                (nao, nao), dimensionless
    /<sid>/orbital_energies       (nmo,) or (2, nmo), Ha
    /<sid>/orbital_coefficients   (nao, nmo) or (2, nao, nmo)
    /<sid>/occupations            (nmo,) or (2, nmo)
    /<sid>/ao_labels              (nao,) str, PySCF order ("0 O 1s", "0 O 2px", ...)
    /<sid>/atomic_numbers         (n,)
    /<sid>/positions              (n, 3), Å

and attributes ``units`` (JSON: hamiltonian/orbital_energies "Ha"), ``basis``,
``auxbasis``, ``level_of_theory``, ``restricted``, ``ao_convention``
("PySCF spherical"), ``charge``, ``multiplicity``. The file itself carries
``format`` and ``created_by`` attributes.

Only the driver writes (workers return matrices, :func:`qcell_nb.reference.label_missing`
stores them), one structure at a time: each entry is written under a
temporary name and renamed when complete, and the file is closed after each
entry, so an interrupted stage leaves only whole entries, and a resumed one
adds the missing ones (half-written temporaries are removed on open).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

#: Version tag written to the file.
FORMAT = "qcell_nb.hamiltonians/1"

_ARRAYS = ("hamiltonian", "overlap", "orbital_energies", "orbital_coefficients", "occupations")
_TMP_PREFIX = "_incomplete_"
UNITS = {"hamiltonian": "Ha", "orbital_energies": "Ha", "overlap": "1", "orbital_coefficients": "1",
         "occupations": "electrons", "positions": "Å"}


def hamiltonians_path(dataset_path: str | os.PathLike) -> Path:
    """The HDF5 file beside a dataset file: ``x/dataset.db`` -> ``x/dataset.hamiltonians.h5``."""
    target = str(dataset_path)
    if "://" in target:
        raise ValueError(f"dataset {target!r} is a database URL; give the Hamiltonian file path explicitly")
    return Path(target).with_suffix(".hamiltonians.h5")


class HamiltonianStore:
    """Reader/writer of the per-structure Kohn-Sham matrices file.

    Parameters
    ----------
    path:
        The ``.h5`` file; created on the first :meth:`write`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.exists():
            with h5py.File(self.path, "a") as handle:
                for name in [n for n in handle if n.startswith(_TMP_PREFIX)]:
                    del handle[name]  # left by an interrupted write

    def ids(self) -> set[str]:
        """Structure ids with a complete entry."""
        if not self.path.exists():
            return set()
        with h5py.File(self.path, "r") as handle:
            return {name for name in handle if not name.startswith(_TMP_PREFIX)}

    def __contains__(self, sid: str) -> bool:
        return sid in self.ids()

    def __len__(self) -> int:
        return len(self.ids())

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.ids()))

    def write(self, sid: str, matrices: dict[str, Any], *, atomic_numbers: Any, positions: Any,
              **attributes: Any) -> bool:
        """Store one structure's matrices (from :func:`~qcell_nb.calculators.scf.kohn_sham_matrices`).

        ``attributes`` (level_of_theory, auxbasis, charge, multiplicity, ...)
        become HDF5 attributes. Returns False (and writes nothing) if ``sid``
        is already stored.
        """
        missing = [key for key in _ARRAYS + ("ao_labels", "basis") if key not in matrices]
        if missing:
            raise ValueError(f"structure {sid}: Kohn-Sham matrices lack {missing}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(self.path, "a") as handle:
            if sid in handle:
                return False
            if not handle.attrs.get("format"):
                handle.attrs["format"] = FORMAT
                handle.attrs["created_by"] = "qcell_nb"
            tmp = _TMP_PREFIX + sid
            if tmp in handle:
                del handle[tmp]
            group = handle.create_group(tmp)
            for key in _ARRAYS:
                group.create_dataset(key, data=np.asarray(matrices[key], dtype=np.float64),
                                     compression="gzip", shuffle=True)
            group.create_dataset("ao_labels", data=np.array(matrices["ao_labels"], dtype=h5py.string_dtype()))
            group.create_dataset("atomic_numbers", data=np.asarray(atomic_numbers, dtype=np.int64))
            group.create_dataset("positions", data=np.asarray(positions, dtype=np.float64))
            group.attrs["units"] = json.dumps(UNITS)
            group.attrs["basis"] = str(matrices["basis"])
            group.attrs["restricted"] = bool(matrices.get("restricted", True))
            group.attrs["ao_convention"] = "PySCF spherical"
            for key, value in attributes.items():
                group.attrs[key] = value if isinstance(value, (int, float, str, bool, np.number)) else json.dumps(value)
            handle.move(tmp, sid)
            handle.flush()
        return True

    def copy_from(self, source: "HamiltonianStore", sids: Iterable[str]) -> int:
        """Copy the entries of ``sids`` that ``source`` holds and this file lacks; returns how many."""
        wanted = (set(sids) & source.ids()) - self.ids()
        for sid in sorted(wanted):
            entry = source.read(sid)
            attributes = {k: v for k, v in entry.items() if k not in _ARRAYS + ("ao_labels", "atomic_numbers",
                                                                                  "positions", "units")}
            self.write(sid, entry, atomic_numbers=entry["atomic_numbers"], positions=entry["positions"],
                       **attributes)
        return len(wanted)

    def read(self, sid: str) -> dict[str, Any]:
        """One structure's entry: arrays, ``ao_labels`` (list of str) and attributes (``units`` as a dict).

        Raises
        ------
        KeyError
            ``sid`` is not stored (the message names the file).
        """
        if not self.path.exists():
            raise KeyError(f"{sid}: no Hamiltonian file {self.path}")
        with h5py.File(self.path, "r") as handle:
            if sid not in handle:
                raise KeyError(f"{sid}: not in {self.path} ({len(handle)} entries)")
            group = handle[sid]
            entry: dict[str, Any] = {key: np.array(group[key]) for key in _ARRAYS + ("atomic_numbers", "positions")}
            entry["ao_labels"] = [label.decode() if isinstance(label, bytes) else str(label)
                                  for label in group["ao_labels"][()]]
            for key, value in group.attrs.items():
                entry[key] = value.item() if isinstance(value, np.generic) else value
            entry["units"] = json.loads(entry["units"])
        return entry


def generalized_eigen_residual(entry: dict[str, Any]) -> float:
    """max |F C - S C diag(e)| (Ha) over the occupied and virtual orbitals of a stored entry."""
    fock, overlap = entry["hamiltonian"], entry["overlap"]
    coeff, energies = entry["orbital_coefficients"], entry["orbital_energies"]
    if fock.ndim == 2:
        fock, coeff, energies = fock[None], coeff[None], energies[None]
    return float(max(np.abs(f @ c - overlap @ c * e[None, :]).max() for f, c, e in zip(fock, coeff, energies)))
