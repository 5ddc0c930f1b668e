"""Stage 05: reference labels for every structure, written to the dataset as they arrive.

Resumable by construction: structures whose id is already in the dataset are
not submitted again, and each result is committed to the dataset the moment
the driver receives it, so an interrupted stage loses at most the items in
flight. With ``store_hamiltonian=True`` the Kohn-Sham matrices go to an HDF5
file beside the dataset (:mod:`qcell_nb.hamiltonians`); structures labelled
earlier without them are recomputed for their matrices (their dataset row is
kept as it is).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from .compute import MapSummary, map_items
from .hamiltonians import HamiltonianStore, hamiltonians_path
from .store import Dataset
from .structures import charge_of, multiplicity_of, structure_id

#: Results stored as the row's calculator properties; the rest go in ``data``.
CALCULATOR_KEYS = ("energy", "forces", "dipole", "charges")


def _label_one(atoms: Atoms, **calc_params: Any) -> dict[str, Any]:
    from .calculators.pbe0 import label_structure

    return label_structure(atoms, **calc_params)


def _settings_text(calc_params: dict[str, Any] | None) -> str:
    """The parameters that decide a label's numbers, as comparable text (resource settings left out)."""
    from .calculators.pbe0 import RESOURCE_PARAMETERS

    if calc_params is None:  # a dataset that did not record its settings matches nothing
        return "null"
    decisive = {k: v for k, v in calc_params.items() if k not in RESOURCE_PARAMETERS}
    return json.dumps(decisive, sort_keys=True, default=str)


def reuse_labels(dataset: Dataset, source: str | os.PathLike | None, structures: dict[str, Atoms],
                 calc_params: dict[str, Any]) -> list[str]:
    """Copy into ``dataset`` the rows of ``structures`` (id -> structure) that ``source`` already labelled.

    Only when ``source`` was labelled with the same calculator parameters (its metadata says
    so); otherwise nothing is copied and the reason is printed. This is how a stage whose inputs
    changed keeps the labels of the structures that did not: the runner points ``source`` at the
    superseded stage directory's dataset. Returns the ids copied.
    """
    if not source or "://" not in str(source) and not Path(source).exists():
        return []
    previous = Dataset(source)
    if _settings_text(previous.metadata.get("calculator_parameters")) != _settings_text(calc_params):
        print(f"labels in {source} were computed with other settings "
              f"({previous.metadata.get('calculator_parameters')}): none reused", flush=True)
        return []
    copied = dataset.adopt_rows(previous, structures)
    print(f"{len(copied)} labels reused from {source} (same structures, same settings)", flush=True)
    return copied


def label_missing(structures: list[Atoms], dataset: Dataset, *, stage: str = "05_reference",
                  executor: str = "local", n_workers: int | None = None, retries: int = 1,
                  progress: bool = True, store_hamiltonian: bool = False,
                  hamiltonian_path: str | os.PathLike | None = None,
                  reuse_from: str | os.PathLike | None = None, **calc_params: Any) -> MapSummary:
    """Label the structures not yet in ``dataset``; record failures in its failure table.

    Parameters
    ----------
    structures, dataset:
        What to label and where the rows go (one per structure id).
    store_hamiltonian:
        Also store the Kohn-Sham matrix, overlap and orbitals of each
        structure in ``hamiltonian_path`` (default: ``<dataset>.hamiltonians.h5``).
    reuse_from:
        An earlier dataset (a superseded stage's ``dataset.db``): its rows for these structures
        are copied instead of recomputed when it was labelled with the same settings
        (:func:`reuse_labels`), with their Kohn-Sham matrices when those are stored.
    calc_params:
        Go to :func:`qcell_nb.calculators.pbe0.label_structure` (preset, basis,
        mbd variant, grid level, device, ...).
    """
    from .calculators.pbe0 import level_of_theory, resolve_parameters

    resolve_parameters(calc_params, n_atoms=0)  # a typo fails here, not once per structure
    settings = dict(calc_params)
    dataset.update_metadata(
        level_of_theory=level_of_theory(**calc_params), calculator_parameters=calc_params,
        units={"energy": "eV", "forces": "eV/Å", "dipole": "e·Å", "charges": "e (Hirshfeld)"},
        mbd_forces="analytic (JAX autodiff) at fixed Hirshfeld volume ratios: the dependence of the "
                   "ratios on positions is neglected (about 2e-4 eV/Å for water)",
        dipole_origin="coordinate origin")
    hamiltonians = None
    if store_hamiltonian:
        hamiltonians = HamiltonianStore(hamiltonian_path or hamiltonians_path(dataset.path))
        dataset.update_metadata(hamiltonians=str(hamiltonians.path))
        calc_params = {**calc_params, "kohn_sham_matrices": True}
    by_id = {structure_id(atoms): atoms for atoms in structures}
    reused = reuse_labels(dataset, reuse_from, by_id, settings)
    if hamiltonians is not None and reused and reuse_from and "://" not in str(reuse_from):
        hamiltonians.copy_from(HamiltonianStore(hamiltonians_path(reuse_from)), reused)
    done = dataset.done_ids()
    if hamiltonians is not None:
        done &= hamiltonians.ids()
    todo = [sid for sid in by_id if sid not in done]
    print(f"{len(by_id)} structures: {len(by_id) - len(todo)} already labelled, {len(todo)} to compute", flush=True)

    from_disk: list[str] = []  # labels whose DF tensors did not fit in memory

    def store(sid: str, result: dict[str, Any]) -> None:
        atoms = by_id[sid]
        for key in ("energy", "forces"):
            if not np.all(np.isfinite(result[key])):
                dataset.record_failure(sid, atoms.info.get("name", ""), stage, f"non-finite {key} in result")
                return
        result = dict(result)
        matrices = result.pop("kohn_sham", None)
        if hamiltonians is not None and matrices is not None:
            # Matrices first: a crash between the two writes leaves a row-less
            # entry that the rerun completes, never a row whose matrices are lost.
            hamiltonians.write(sid, matrices, atomic_numbers=atoms.numbers, positions=atoms.positions,
                               level_of_theory=result["level_of_theory"], auxbasis=result["auxbasis"],
                               charge=charge_of(atoms), multiplicity=multiplicity_of(atoms),
                               name=str(atoms.info.get("name", "")))
        results = {k: result[k] for k in CALCULATOR_KEYS if k in result}
        extra = {k: v for k, v in result.items() if k not in CALCULATOR_KEYS}
        # Scalars and strings (level of theory, auxiliary basis) become searchable key-value
        # pairs; arrays (Hirshfeld ratios, ...) go in the row's data.
        pairs = {k: v for k, v in extra.items() if isinstance(v, (str, int, float, np.number))}
        pairs["stage"] = stage
        data = {k: np.asarray(v) for k, v in extra.items() if k not in pairs}
        dataset.add(atoms, results, key_value_pairs=pairs, data=data, sid=sid)
        if result.get("df_tensors_in_memory") is False:
            from_disk.append(sid)

    def fail(sid: str, error: str) -> None:
        dataset.record_failure(sid, by_id[sid].info.get("name", ""), stage, error)

    summary = map_items(_label_one, [by_id[sid] for sid in todo], todo, on_result=store, on_failure=fail,
                        executor=executor, n_workers=n_workers, retries=retries, progress=progress,
                        description="PBE0+MBD labels", **calc_params)
    if from_disk:
        print(f"{len(from_disk)} of {summary.succeeded} labels kept their density-fitting tensors on disk "
              "(slower, same numbers): give the workers more memory or set max_memory_mb; "
              "their rows have df_tensors_in_memory=False", flush=True)
    return summary
