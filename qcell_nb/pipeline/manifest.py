"""Stage manifests: what ran, with which parameters and inputs, and how it ended.

``manifest.json`` in each stage directory records the parameters, a
fingerprint of everything that determines the stage's result (notebook
source, parameters, digests of the input stages' outputs, package version),
package versions, counts, timings and status (``running``, ``complete`` or
``failed``). A stage whose manifest says ``complete`` with the same
fingerprint is up to date and is skipped.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import nbformat

from .. import __version__

MANIFEST = "manifest.json"
COUNTS = "counts.json"

#: Packages whose versions each manifest records.
TRACKED_PACKAGES = ("qcell-nb", "numpy", "ase", "rdkit", "openmm", "pyscf", "tblite", "jax", "e3x",
                    "flax", "optax", "papermill", "dask", "pymbd")


def package_versions() -> dict[str, str | None]:
    """Installed versions of :data:`TRACKED_PACKAGES` (None where absent)."""
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def notebook_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a notebook's code and markdown sources (outputs ignored)."""
    notebook = nbformat.read(str(path), as_version=4)
    digest = hashlib.sha256()
    for cell in notebook.cells:
        digest.update(cell.cell_type.encode())
        digest.update(cell.source.encode())
    return digest.hexdigest()


def database_digest(path: Path) -> str:
    """Content digest of an ASE database: its structure ids and energies.

    Hashing the file's bytes would change with row timestamps; the ids and
    energies are what later stages depend on.
    """
    import ase.db

    entries = []
    with ase.db.connect(str(path)) as db:
        for row in db.select(include_data=False):
            energy = row.get("energy")
            entries.append(f"{row.get('sid')}:{'-' if energy is None else f'{energy:.6f}'}")
    return hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()


def outputs_digest(stage_directory: str | os.PathLike, patterns: tuple[str, ...]) -> str:
    """Digest of a stage's output files (the ones later stages read)."""
    digest = hashlib.sha256()
    root = Path(stage_directory)
    for pattern in patterns:
        for name in sorted(glob.glob(str(root / pattern))):
            path = Path(name)
            if not path.is_file():
                continue
            digest.update(str(path.relative_to(root)).encode())
            if path.suffix == ".db":
                digest.update(database_digest(path).encode())
            else:
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def fingerprint(notebook_hash: str, parameters: dict[str, Any], input_digests: dict[str, str]) -> str:
    """Everything that determines a stage's result, hashed."""
    payload = json.dumps({"notebook": notebook_hash, "parameters": parameters,
                          "inputs": input_digests, "qcell_nb": __version__},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def read_manifest(stage_directory: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(stage_directory) / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a manifest cut short by a crash: treat the stage as never run


def write_manifest(stage_directory: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Write atomically, so a crash never leaves half a manifest."""
    path = Path(stage_directory) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def record_counts(stage_directory: str | os.PathLike, **counts: Any) -> None:
    """Called by a stage notebook: counts (structures, failures, ...) for its manifest."""
    path = Path(stage_directory) / COUNTS
    current = json.loads(path.read_text()) if path.exists() else {}
    current.update(counts)
    path.write_text(json.dumps(current, indent=2, sort_keys=True, default=str))


def read_counts(stage_directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(stage_directory) / COUNTS
    return json.loads(path.read_text()) if path.exists() else {}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
