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
    """Print a list of same-keyed dicts as an aligned text table."""
    if not rows:
        print("(empty)")
        return
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for row in rows:
        print("  ".join(str(row[k]).ljust(widths[k]) for k in keys))
