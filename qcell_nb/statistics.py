"""Overview statistics of a structure collection, per QCell subset (the paper's overview table)."""

from __future__ import annotations

from collections.abc import Sequence

from ase import Atoms
from ase.data import chemical_symbols


def overview_table(structures: Sequence[Atoms]) -> list[dict]:
    """One row per subset: structure count, atom-count range and the elements present."""
    by_subset: dict[str, list[Atoms]] = {}
    for atoms in structures:
        by_subset.setdefault(atoms.info.get("subset", "unlabelled"), []).append(atoms)
    rows = []
    for subset, members in sorted(by_subset.items()):
        sizes = [len(a) for a in members]
        numbers = sorted({int(z) for a in members for z in a.numbers})
        rows.append({"subset": subset, "structures": len(members), "min_atoms": min(sizes),
                     "max_atoms": max(sizes), "elements": " ".join(chemical_symbols[z] for z in numbers)})
    return rows


def print_table(rows: Sequence[dict]) -> None:
    """Print a list of dicts as an aligned text table (columns: every key, in order of appearance)."""
    if not rows:
        print("(empty)")
        return
    keys = list(dict.fromkeys(key for row in rows for key in row))
    text = [{k: _format(row.get(k)) for k in keys} for row in rows]
    widths = {k: max(len(k), *(len(r[k]) for r in text)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for row in text:
        print("  ".join(row[k].ljust(widths[k]) for k in keys))


def _format(value) -> str:
    """Floats to four significant digits (3.4300000000000002 -> 3.43); None as blank."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
