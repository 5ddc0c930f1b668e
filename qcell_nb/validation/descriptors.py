"""Structural checks of the labelled fragments, one per QCell class, against reference values.

========================  ==========================================  ==================================
class                     descriptor                                  reference
========================  ==========================================  ==================================
nucleic acids             adjacent intra-strand P-P distance,          canonical A/B/Z fibre values
                          P-P-P backbone angle                         (:data:`nucleic_acids.CANONICAL`)
lipids                    radius of gyration per fragment kind         distribution only
carbohydrates             hydroxymethyl rotamers (O5-C5-C6-O6:         known gg/gt/tg basins at
                          gg/gt/tg), glycosidic phi basin               -60/+60/180 deg; exo-anomeric phi
ions in water             ion-O distance of the first shell            experimental first peaks
dimers                    closest A-B distance against scan factor     scan range 0.8-2.0
========================  ==========================================  ==================================

Every function reads what the fragment itself carries (``info`` topology arrays, SMILES in the
atom order of the structure), so the checks run on the dataset of stage 05 as well as on the
fragments of stage 03.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from ase import Atoms
from rdkit import Chem

from ..blocks import dimers as dimer_blocks
from ..blocks import ions_water, lipids, nucleic_acids
from ..blocks.carbohydrates import mol_with_hydrogens
from ..selection import glycosidic_dihedral_indices

#: Staggered hydroxymethyl rotamers of O5-C5-C6-O6 (deg): gauche-gauche, gauche-trans, trans-gauche.
HYDROXYMETHYL_ROTAMERS = {"gg": -60.0, "gt": 60.0, "tg": 180.0}
_HYDROXYMETHYL = Chem.MolFromSmarts("[O;R]@[C;R]-[CH2;!R]-[OX2;!R]")


def _of(structures: Sequence[Atoms], subset: str) -> list[Atoms]:
    return [a for a in structures if a.info.get("subset") == subset]


def _summary(values: Sequence[float]) -> dict:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not values.size:
        return {"n": 0, "mean": None, "min": None, "max": None}
    return {"n": int(values.size), "mean": round(float(values.mean()), 3), "min": round(float(values.min()), 3),
            "max": round(float(values.max()), 3)}


def nucleic_acid_checks(structures: Sequence[Atoms]) -> list[dict]:
    """P-P distances and backbone angles per DNA form, beside the canonical values."""
    rows = []
    by_form: dict[str, list[Atoms]] = {}
    for atoms in _of(structures, "nucleic_acids"):
        if "atom_name" in atoms.info:
            by_form.setdefault(str(atoms.info.get("form", "?")), []).append(atoms)
    for form, members in sorted(by_form.items()):
        canonical = nucleic_acids.CANONICAL.get(form, {})
        distances = np.concatenate([nucleic_acids.phosphate_distances(a) for a in members] or [np.zeros(0)])
        if not distances.size:  # base-pair dimers carry no phosphate
            continue
        angles = [nucleic_acids.bending_angle(a) for a in members]
        rows.append({"subset": "nucleic_acids", "descriptor": f"{form}-form P-P distance (Å)", **_summary(distances),
                     "reference": canonical.get("pp")})
        rows.append({"subset": "nucleic_acids", "descriptor": f"{form}-form P-P-P angle (deg)", **_summary(angles),
                     "reference": None if canonical.get("bending") is None else round(canonical["bending"], 1)})
    return rows


def lipid_checks(structures: Sequence[Atoms]) -> list[dict]:
    """Radius of gyration (Å, mass-weighted) per lipid fragment kind."""
    by_kind: dict[str, list[float]] = {}
    for atoms in _of(structures, "lipids"):
        kind = str(atoms.info.get("fragment_kind", atoms.info.get("name", "lipid")))
        by_kind.setdefault(kind, []).append(lipids.radius_of_gyration(atoms))
    return [{"subset": "lipids", "descriptor": f"{kind} radius of gyration (Å)", **_summary(values),
             "reference": None} for kind, values in sorted(by_kind.items())]


@lru_cache(maxsize=None)
def _hydroxymethyl_torsions(smiles: str) -> tuple[tuple[int, int, int, int], ...]:
    return tuple(tuple(match) for match in mol_with_hydrogens(smiles).GetSubstructMatches(_HYDROXYMETHYL))


def hydroxymethyl_rotamer(angle: float) -> str:
    """Name of the staggered rotamer (gg, gt, tg) nearest to an O5-C5-C6-O6 angle in degrees."""
    distance = {name: abs((angle - centre + 180.0) % 360.0 - 180.0) for name, centre in HYDROXYMETHYL_ROTAMERS.items()}
    return min(distance, key=distance.get)


def staggered_sector(angle: float) -> int:
    """The staggered position (-60, +60 or 180 deg) nearest to a torsion angle in degrees."""
    centres = (-60, 60, 180)
    return min(centres, key=lambda centre: abs((angle - centre + 180.0) % 360.0 - 180.0))


@lru_cache(maxsize=None)
def _glycosidic_links(smiles: str) -> tuple[tuple[tuple[int, ...], tuple[int, ...] | None, tuple[int, ...]], ...]:
    """Per glycosidic link: (phi atoms, psi atoms or None, the C2-C1-X-C'x atoms that tell exo-anomeric)."""
    torsions = glycosidic_dihedral_indices(smiles)
    mol = mol_with_hydrogens(smiles)
    links = []
    for name, phi in torsions.items():
        if not name.startswith("phi") or name.endswith("_bb"):
            continue
        ring_o, anomeric, linker, aglycone = phi
        # The anomeric carbon's other ring neighbour (C2 of an aldose, C3 of a ketose): the
        # aglycone anti to it, gauche to the ring O, is the exo-anomeric conformation.
        ring_c = next(a.GetIdx() for a in mol.GetAtomWithIdx(anomeric).GetNeighbors()
                      if a.IsInRing() and a.GetSymbol() == "C" and a.GetIdx() != ring_o
                      and mol.GetBondBetweenAtoms(anomeric, a.GetIdx()).IsInRing())
        links.append((tuple(phi), torsions.get("psi" + name[3:]), (ring_c, anomeric, linker, aglycone)))
    return tuple(links)


def glycosidic_checks(structures: Sequence[Atoms]) -> list[dict]:
    """Glycosidic phi/psi coverage of the sugar fragments with a glycosidic link.

    Two rows: the fraction of links in the exo-anomeric phi basin (the aglycone carbon anti to
    the ring carbon next to C1 and gauche to O5: the basin the exo-anomeric effect favours and
    crystal and solution structures mostly show), and per linked block the number of staggered
    (phi, psi) basins its fragments visit, of the 9 that -60/+60/180 in each torsion make.
    """
    exo = []
    cells: dict[str, set[tuple[int, int]]] = {}
    for atoms in _of(structures, "carbohydrates"):
        smiles = atoms.info.get("smiles")
        if not smiles:
            continue
        for phi, psi, anti in _glycosidic_links(str(smiles)):
            exo.append(abs(atoms.get_dihedral(*anti) - 180.0) <= 60.0)  # ASE's angles lie in [0, 360)
            if psi is not None:
                cell = (staggered_sector(atoms.get_dihedral(*phi)), staggered_sector(atoms.get_dihedral(*psi)))
                cells.setdefault(str(atoms.info.get("name", smiles)), set()).add(cell)
    rows = []
    if exo:
        rows.append({"subset": "carbohydrates", "descriptor": "glycosidic phi in the exo-anomeric basin (fraction)",
                     "n": len(exo), "mean": round(float(np.mean(exo)), 3), "min": None, "max": None,
                     "reference": "exo-anomeric basin dominant"})
    if cells:
        rows.append({"subset": "carbohydrates", "descriptor": "glycosidic phi/psi basins visited per linked block (of 9)",
                     **_summary([len(visited) for visited in cells.values()]),
                     "reference": "phi, psi at -60/+60/180"})
    return rows


def carbohydrate_checks(structures: Sequence[Atoms]) -> list[dict]:
    """Occupancy of the gg/gt/tg hydroxymethyl rotamers over all sugar fragments that have a C6-O6,
    then the glycosidic phi/psi coverage (:func:`glycosidic_checks`)."""
    counts = {name: 0 for name in HYDROXYMETHYL_ROTAMERS}
    for atoms in _of(structures, "carbohydrates"):
        smiles = atoms.info.get("smiles")
        if not smiles:
            continue
        for torsion in _hydroxymethyl_torsions(str(smiles)):
            counts[hydroxymethyl_rotamer(atoms.get_dihedral(*torsion))] += 1
    total = sum(counts.values())
    rows = [{"subset": "carbohydrates", "descriptor": f"hydroxymethyl rotamer {name} (fraction)", "n": total,
             "mean": round(count / total, 3), "min": None, "max": None,
             "reference": f"{HYDROXYMETHYL_ROTAMERS[name]:+.0f} deg basin"}
            for name, count in counts.items()] if total else []
    return rows + glycosidic_checks(structures)


def ion_checks(structures: Sequence[Atoms]) -> list[dict]:
    """Distance (Å) from each ion to the oxygen of its nearest water, beside the experimental first peak."""
    reference = ions_water.load_rdf_reference()
    by_ion: dict[str, list[float]] = {}
    for atoms in _of(structures, "ions_water"):
        symbols = atoms.get_chemical_symbols()
        ions = [i for i, s in enumerate(symbols) if s not in ("O", "H")]
        oxygens = [i for i, s in enumerate(symbols) if s == "O"]
        if len(ions) != 1 or not oxygens:
            continue
        by_ion.setdefault(symbols[ions[0]], []).append(float(atoms.get_distances(ions[0], oxygens).min()))
    return [{"subset": "ions_water", "descriptor": f"{ion}-O nearest water (Å)", **_summary(values),
             "reference": reference.get(f"{ion}-O", {}).get("r_peak")} for ion, values in sorted(by_ion.items())]


def dimer_checks(structures: Sequence[Atoms]) -> list[dict]:
    """Scan factors covered and the closest intermolecular distance (Å) of the dimers."""
    members = [a for a in _of(structures, "dimers") if "n_atoms_a" in a.info]
    if not members:
        return []
    closest = [dimer_blocks.closest_intermolecular_distance(a) for a in members]
    factors = [float(a.info.get("scan_factor", np.nan)) for a in members]
    return [{"subset": "dimers", "descriptor": "scan factor (x contact)", **_summary(factors), "reference": "0.8-2.0"},
            {"subset": "dimers", "descriptor": "closest A-B distance (Å)", **_summary(closest), "reference": None}]


def class_checks(structures: Sequence[Atoms]) -> list[dict]:
    """All per-class descriptor rows of :mod:`qcell_nb.validation.descriptors` for ``structures``."""
    return [*carbohydrate_checks(structures), *nucleic_acid_checks(structures), *lipid_checks(structures),
            *ion_checks(structures), *dimer_checks(structures)]


def plot_class_checks(structures: Sequence[Atoms], directory) -> list:
    """The class figures of stage 03, redrawn for ``structures``; saved into ``directory``."""
    from pathlib import Path

    directory = Path(directory)
    figures = []
    # Base-pair dimers carry no phosphate: with only those there is no backbone to draw.
    nucleic = [a for a in _of(structures, "nucleic_acids") if "atom_name" in a.info
               and nucleic_acids.phosphate_distances(a).size]
    if nucleic:
        figures.append(nucleic_acids.plot_backbone_checks(nucleic, directory / "nucleic_acid_backbone.png"))
    if _of(structures, "lipids"):
        figures.append(lipids.plot_radius_of_gyration(_of(structures, "lipids"),
                                                      directory / "lipid_radius_of_gyration.png"))
    scans = [a for a in _of(structures, "dimers") if "n_atoms_a" in a.info]
    if scans:
        figures.append(dimer_blocks.plot_distance_coverage(scans, directory / "dimer_distance_coverage.png"))
    return figures
