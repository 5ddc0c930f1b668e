"""Backbone checks of nucleic-acid structures against canonical A-, B- and Z-DNA.

Two descriptors, both from the phosphorus atoms alone, so they apply to whole
duplexes, MD frames and capped trimers alike (any structure whose ``info``
carries ``atom_name``, ``residue_index`` and ``chain_index``):

* :func:`phosphate_distances`: distances between the P atoms of adjacent
  nucleotides of one strand (Angstrom).
* :func:`bending_angle`: the backbone virtual bond angle P(i)-P(i+1)-P(i+2)
  of three consecutive nucleotides of one strand (degrees), averaged over all
  such triples in the structure. A straight backbone gives 180 degrees; the
  tighter the helix winds the backbone, the smaller the angle.

Canonical values (:data:`CANONICAL`): adjacent-phosphate distances 5.9 A (A),
7.0 A (B) and 5.7-7.3 A (Z, alternating) as tabulated by Saenger, Principles of
Nucleic Acid Structure (1984) and Dickerson, Methods Enzymol. 211, 67 (1992).
The canonical P-P-P angle of A and B is that of phosphates on a uniform helix
with the form's twist and rise (A 32.7 deg / 2.56 A, B 36 deg / 3.38 A, fibre
values, same sources) whose neighbour distance is the canonical one; Z has no
uniform helix per nucleotide, so only its distance range is given.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms

from ...figures import finish_figure

__all__ = ["CANONICAL", "bending_angle", "helix_bending_angle", "phosphate_distances",
           "phosphate_triples_angles", "plot_backbone_checks"]


def helix_bending_angle(pp_distance: float, rise: float, twist: float) -> float:
    """P-P-P angle (degrees) of points on a uniform helix.

    Points k = 0, 1, 2 at (r cos k*twist, r sin k*twist, k*rise) with r chosen
    so that neighbours are ``pp_distance`` (Angstrom) apart.
    """
    half = np.radians(twist) / 2
    radius = np.sqrt(pp_distance**2 - rise**2) / (2 * abs(np.sin(half)))
    k = np.arange(3)
    points = np.stack([radius * np.cos(2 * half * k), radius * np.sin(2 * half * k), rise * k], axis=1)
    u, v = points[0] - points[1], points[2] - points[1]
    return float(np.degrees(np.arccos(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))))


#: Canonical backbone values per form: ``pp`` (A), ``pp_range`` (A), ``bending`` (deg or None),
#: ``twist`` (deg per bp), ``rise`` (A per bp) and ``source``.
CANONICAL: dict[str, dict] = {
    "A": {"pp": 5.9, "pp_range": (5.9, 5.9), "twist": 32.7, "rise": 2.56,
          "bending": helix_bending_angle(5.9, 2.56, 32.7),
          "source": "Saenger 1984; Dickerson 1992 (fibre A-DNA)"},
    "B": {"pp": 7.0, "pp_range": (7.0, 7.0), "twist": 36.0, "rise": 3.38,
          "bending": helix_bending_angle(7.0, 3.38, 36.0),
          "source": "Saenger 1984; Dickerson 1992 (fibre B-DNA)"},
    "Z": {"pp": 6.5, "pp_range": (5.7, 7.3), "twist": -30.0, "rise": 3.7, "bending": None,
          "source": "Saenger 1984; Dickerson 1992 (Z-DNA, dinucleotide repeat: -60 deg and 7.4 A per CpG)"},
}


def _phosphorus_by_strand(atoms: Atoms) -> list[list[tuple[int, int]]]:
    """Per strand: (residue index, atom index) of each P, in residue order."""
    info = atoms.info
    missing = [k for k in ("atom_name", "residue_index", "chain_index") if k not in info]
    if missing:
        raise ValueError(f"structure {info.get('name', atoms.get_chemical_formula())!r} has no topology "
                         f"(info lacks {missing})")
    strands: dict[int, list[tuple[int, int]]] = {}
    for i, name in enumerate(info["atom_name"]):
        if name == "P":
            strands.setdefault(int(info["chain_index"][i]), []).append((int(info["residue_index"][i]), i))
    return [sorted(p) for _, p in sorted(strands.items())]


def phosphate_distances(atoms: Atoms) -> np.ndarray:
    """Distances (n,) in Angstrom between P atoms of adjacent nucleotides of the same strand.

    Adjacent means consecutive residue indices in one chain; all strands
    concatenated, strand by strand, 5' to 3'.
    """
    positions = atoms.get_positions()
    out = []
    for strand in _phosphorus_by_strand(atoms):
        for (r1, a1), (r2, a2) in zip(strand, strand[1:]):
            if r2 == r1 + 1:
                out.append(np.linalg.norm(positions[a2] - positions[a1]))
    return np.asarray(out, dtype=float)


def phosphate_triples_angles(atoms: Atoms) -> np.ndarray:
    """P(i)-P(i+1)-P(i+2) angles (n,) in degrees for consecutive nucleotides of each strand."""
    positions = atoms.get_positions()
    out = []
    for strand in _phosphorus_by_strand(atoms):
        for (r1, a1), (r2, a2), (r3, a3) in zip(strand, strand[1:], strand[2:]):
            if r2 == r1 + 1 and r3 == r2 + 1:
                u, v = positions[a1] - positions[a2], positions[a3] - positions[a2]
                cosine = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
                out.append(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))
    return np.asarray(out, dtype=float)


def bending_angle(atoms: Atoms) -> float:
    """Backbone bending angle in degrees: the mean P(i)-P(i+1)-P(i+2) angle.

    Averaged over every run of three consecutive phosphorylated nucleotides
    in each strand (a double-strand trimer has one per strand); NaN when the
    structure has no such run (a base-pair dimer).
    """
    angles = phosphate_triples_angles(atoms)
    return float(angles.mean()) if len(angles) else float("nan")


def plot_backbone_checks(structures: Sequence[Atoms], path: str | None = None, forms: Sequence[str] | None = None):
    """Histograms of P-P distances and bending angles per form, with the canonical values as lines.

    ``forms`` defaults to each structure's ``info['form']`` (structures
    without phosphates are skipped). Returns the matplotlib figure; saves it
    to ``path`` when given.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    by_form: dict[str, tuple[list[float], list[float]]] = {}
    for k, atoms in enumerate(structures):
        form = forms[k] if forms is not None else str(atoms.info.get("form", "?"))
        distances = phosphate_distances(atoms)
        if not len(distances):
            continue
        entry = by_form.setdefault(form, ([], []))
        entry[0].extend(distances.tolist())
        entry[1].extend(phosphate_triples_angles(atoms).tolist())
    fig, (ax_pp, ax_bend) = plt.subplots(1, 2, figsize=(9, 3.5))
    colours = {"A": "tab:blue", "B": "tab:orange", "Z": "tab:green"}
    for form, (distances, angles) in sorted(by_form.items()):
        colour = colours.get(form, "tab:gray")
        label = f"{form}-form"
        ax_pp.hist(distances, bins=30, alpha=0.5, color=colour, label=f"{label} ({len(distances)})")
        if angles:
            ax_bend.hist(angles, bins=30, alpha=0.5, color=colour, label=f"{label} ({len(angles)})")
        canonical = CANONICAL.get(form)
        if canonical:
            low, high = canonical["pp_range"]
            for value in sorted({low, high}):
                ax_pp.axvline(value, color=colour, ls="--")
            if canonical["bending"] is not None:
                ax_bend.axvline(canonical["bending"], color=colour, ls="--")
    ax_pp.set_xlabel("adjacent P-P distance (Å)")
    ax_bend.set_xlabel("P-P-P bending angle (°)")
    for ax in (ax_pp, ax_bend):
        ax.set_ylabel("count")
        ax.legend(fontsize=8)
    ax_pp.set_title("dashed: canonical values")
    return finish_figure(fig, path)
