"""Reference data shipped with the package (experimental values the validation compares against)."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).parent

#: Experimental first-shell ion-O and water O-O distances in liquid water (Å), with sources.
ION_WATER_RDF = _HERE / "ion_water_rdf.json"


def reference_path(name: str) -> Path:
    """Path of a shipped reference file, e.g. ``reference_path("ion_water_rdf.json")``."""
    path = _HERE / name
    if not path.is_file():
        available = sorted(p.name for p in _HERE.glob("*.json"))
        raise ValueError(f"reference data {name!r} is not shipped; available: {available}")
    return path
