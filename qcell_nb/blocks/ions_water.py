"""Ions in water: single ions, their MD in a water box, and ion-water clusters (stages 01-03).

Stage 01 builds the bare ions (:func:`build_ions`), stage 02 samples each ion in a periodic
water box with OpenMM (:func:`sample_ion_boxes`), stage 03 carves clusters of the ion and its
``n`` nearest whole waters out of the frames (:func:`carve_clusters`). The radial distribution
functions of the MM trajectories are checked against experimental first-shell distances
(:func:`ion_water_rdfs`, :func:`compare_first_peaks`, :func:`plot_rdfs`).

Water and ion model
-------------------
QCell sampled ions in water with MB-pol water and AMBER ions. MB-pol is not available to us
(it needs the MBX plugin, which is neither on PyPI nor in OpenMM), so this module uses the
best matched pair that OpenMM 8.6 ships: the four-site OPC water model with the Li/Merz 12-6
ion parameters fitted *for OPC* (``amber14/opc.xml``: Na+, K+, Cl- from the hydration-free-
energy (HFE) set of Sengupta et al., JCIM 61, 869 (2021); Mg2+ and Ca2+ from the compromise
(CM) set of Li et al., JCTC 16, 4429 (2020)). OPC reproduces the liquid's structure and
dielectric constant far better than TIP3P; ion parameters fitted for another water model
(Joung-Cheatham for TIP3P/TIP4P-Ew) would be mismatched. A plain 12-6 Lennard-Jones ion has
no ion-induced polarisation, so a divalent ion cannot get both its hydration free energy and
its ion-oxygen distance right at once; the CM set trades one against the other (the 12-6-4
model that fixes this is not shipped with OpenMM).

First-peak positions (Å) and first-shell coordination numbers (CN) measured with
:func:`sample_ion_boxes` (OPC: 21 Å box, NPT 1 bar 300 K, 2 fs, 10 ps equilibration + 12 ps
production, 120 frames; TIP4P-Ew: 20 Å box, NVT; 0.05 Å bins, so peaks are good to about
+/-0.05 Å) against experiment (:data:`EXPERIMENTAL_FIRST_SHELLS`):

=======  ================  ============================  ================
pair     experiment (CN)   OPC + Li/Merz (default; CN)   TIP4P-Ew + JC/LM
=======  ================  ============================  ================
Na-O     2.43 (6)          2.43 (5.9)                    2.33
K-O      2.81 (7)          2.73 (6.5)                    2.68
Cl-O     3.16 (6)          3.43 (7.2)                    3.18
Mg-O     2.09 (6)          2.03 (6.0)                    2.03
Ca-O     2.43 (6.3-8)      2.48 (7.7)                    2.53
O-O      2.80              2.83 (g_max 3.1-3.3)          2.78
=======  ================  ============================  ================

OPC's HFE-set Cl- sits 0.27 Å too far from water (the HFE sets trade ion-oxygen distance for
hydration free energy; the halide suffers most); the divalent CM ions are 0.06 Å short (Mg)
and 0.05 Å long (Ca); K+ is 0.08 Å short with one water too few. ``water_model="tip4pew"``
gives the better Cl- shell but shorter cation shells, so OPC stays the default.

Clusters are carved under the minimum-image convention from frames written with molecules
kept whole, so every water in a cluster is intact.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.geometry import find_mic
from openmm import app, unit

from ..figures import finish_figure
from ..md import MDSettings, first_peak, frames_to_atoms, rdf, simulate, solvate
from ..structures import structure_id

__all__ = [
    "EXPERIMENTAL_FIRST_SHELLS",
    "ION_NAMES",
    "ION_WATER_FORCEFIELD",
    "IONS",
    "Ion",
    "WATER_MODELS",
    "WaterModel",
    "build_ion",
    "build_ions",
    "carve_clusters",
    "compare_first_peaks",
    "ion_water_rdfs",
    "load_rdf_reference",
    "plot_rdfs",
    "sample_ion_boxes",
]


@dataclass(frozen=True)
class Ion:
    """A monatomic ion: its element, charge (e), SMILES and OpenMM residue/atom name."""

    name: str
    element: str
    charge: int
    smiles: str
    residue: str


#: The ions of the subset, keyed by their conventional names.
IONS: dict[str, Ion] = {
    "Na+": Ion("Na+", "Na", 1, "[Na+]", "NA"),
    "K+": Ion("K+", "K", 1, "[K+]", "K"),
    "Cl-": Ion("Cl-", "Cl", -1, "[Cl-]", "CL"),
    "Mg2+": Ion("Mg2+", "Mg", 2, "[Mg+2]", "MG"),
    "Ca2+": Ion("Ca2+", "Ca", 2, "[Ca+2]", "CA"),
}
ION_NAMES: tuple[str, ...] = tuple(IONS)


@dataclass(frozen=True)
class WaterModel:
    """A water model with the ion parameters fitted for it, as OpenMM ships them.

    ``forcefield`` is the OpenMM force field file (water and ions); ``solvent_box`` the
    ``Modeller.addSolvent`` model whose pre-equilibrated box has the right number of sites
    (OPC has none of its own and uses the four-site TIP4P-Ew box).
    """

    name: str
    forcefield: str
    solvent_box: str
    ion_model: str


#: Water models with matched ions. ``"opc"`` is the default (see the module docstring); the
#: others are there to compare against.
WATER_MODELS: dict[str, WaterModel] = {
    "opc": WaterModel("OPC", "amber14/opc.xml", "tip4pew", "Li/Merz 12-6 for OPC (HFE monovalent, CM divalent)"),
    "tip4pew": WaterModel("TIP4P-Ew", "amber14/tip4pew.xml", "tip4pew",
                          "Joung-Cheatham (monovalent), Li/Merz 12-6 (divalent) for TIP4P-Ew"),
    "tip3p": WaterModel("TIP3P", "amber14/tip3p.xml", "tip3p",
                        "Joung-Cheatham (monovalent), Li/Merz 12-6 (divalent) for TIP3P"),
}
#: The default: OPC with its Li/Merz 12-6 ions.
ION_WATER_FORCEFIELD = WATER_MODELS["opc"].forcefield
#: Å, default PME direct-space cutoff; the box edge must be at least twice the cutoff.
NONBONDED_CUTOFF = 9.0


def _ion(name: str) -> Ion:
    if name not in IONS:
        raise ValueError(f"unknown ion {name!r}; known ions: {', '.join(ION_NAMES)}")
    return IONS[name]


def build_ion(name: str) -> Atoms:
    """A single ion at the origin (stage 01).

    Returns:
        One-atom :class:`ase.Atoms` with info name, subset ``"ions_water"``, smiles, charge (e),
        multiplicity 1 (all ions here are closed-shell).

    Raises:
        ValueError: if ``name`` is not one of :data:`ION_NAMES`.
    """
    ion = _ion(name)
    atoms = Atoms(ion.element, positions=[[0.0, 0.0, 0.0]])
    atoms.info.update(name=ion.name, subset="ions_water", smiles=ion.smiles, charge=ion.charge, multiplicity=1)
    return atoms


def build_ions(names: Iterable[str] | None = None, seed: int = 0) -> list[Atoms]:
    """Stage 01: the bare ions ``names`` (all of :data:`ION_NAMES` by default), in that order.

    ``seed`` is accepted for the common stage-01 signature; a single atom has nothing random.
    Every name is checked before anything is built.
    """
    del seed
    selected = list(ION_NAMES) if names is None else list(names)
    for name in selected:
        _ion(name)
    return [build_ion(name) for name in selected]


def sample_ion_boxes(ions: Sequence[Atoms], box_size: float = 20.0, settings: MDSettings | None = None,
                     seed: int = 0, water_model: str = "opc", cutoff: float = NONBONDED_CUTOFF) -> list[Atoms]:
    """Stage 02: MD of each ion alone in a cubic OPC water box; one :class:`ase.Atoms` per saved frame.

    The box is not neutralised: one ion with PME's uniform neutralising background keeps the
    first shells free of counter-ions, which is what the clusters should contain.

    ``Modeller.addSolvent`` fills a small box about 8% below the liquid's density (0.0305-0.0308
    waters/Å^3 in 19-20 Å boxes against 0.0334), which in NVT over-structures the water (O-O
    g_max 3.6 instead of 3.2 at 1 bar). For sampling that matters, set ``settings.pressure=1.0``
    with 5-10 ps of equilibration; the box then shrinks by about 3%, so it must start at least
    5% above ``2 * cutoff``.

    Runs are reproducible bit for bit under the same seed and thread count (OpenMM's CPU
    platform with deterministic force summation).

    Args:
        ions: stage-01 ions (``info['name']`` one of :data:`ION_NAMES`).
        box_size: cubic box edge in Å; at least ``2 * cutoff`` (18 Å by default). A cluster of
            ``n`` waters needs the ``n``-th nearest oxygen within half the edge (about 9.5 Å for
            100 waters, so 20 Å is the least for 100 waters and 24 Å leaves margin).
        settings: the MD protocol (default :class:`MDSettings`); its seed is replaced by
            ``seed + index of the ion`` so each ion's run is reproducible on its own.
        seed: base seed.
        water_model: a key of :data:`WATER_MODELS`.
        cutoff: Å, PME direct-space and Lennard-Jones cutoff (the models' fits used 9-10 Å;
            a shorter one only makes quick runs in small boxes possible).

    Returns:
        Frames with ``pbc=True`` and the cell, atoms ion first then waters (O, H, H each; no
        virtual sites), info: name, subset, charge, multiplicity, water_model, ion_model,
        parent_id (the stage-01 ion), frame, time_ps, mm_energy (eV) and the per-atom topology
        arrays of :func:`qcell_nb.md.frames_to_atoms` (``residue_index`` identifies the waters).
    """
    if box_size < 2 * cutoff:
        raise ValueError(f"box_size={box_size} Å: must be at least twice the {cutoff} Å cutoff")
    settings = settings or MDSettings()
    if settings.pressure is not None and box_size < 1.05 * 2 * cutoff:
        # The barostat shrinks the under-filled box; OpenMM stops once it falls below 2 * cutoff.
        raise ValueError(f"box_size={box_size} Å at constant pressure: start at least {1.05 * 2 * cutoff:.1f} Å "
                         f"(5% above twice the {cutoff} Å cutoff), the box shrinks as the water densifies")
    if water_model not in WATER_MODELS:
        raise ValueError(f"unknown water model {water_model!r}; known: {', '.join(WATER_MODELS)}")
    model = WATER_MODELS[water_model]
    for block in ions:  # every name checked before any MD runs
        _ion(str(block.info.get("name")))
    forcefield = app.ForceField(model.forcefield)
    frames: list[Atoms] = []
    for index, block in enumerate(ions):
        ion = _ion(str(block.info.get("name")))
        topology = app.Topology()
        residue = topology.addResidue(ion.residue, topology.addChain())
        topology.addAtom(ion.residue, app.Element.getBySymbol(ion.element), residue)
        solvated, positions = solvate(topology, np.zeros((1, 3)), forcefield, (box_size,) * 3,
                                      neutralize=False, water_model=model.solvent_box)
        system = forcefield.createSystem(solvated, nonbondedMethod=app.PME,
                                         nonbondedCutoff=cutoff / 10.0 * unit.nanometer,
                                         constraints=app.HBonds, rigidWater=True)
        trajectory = simulate(solvated, system, positions, replace(settings, seed=seed + index), name=ion.name)
        info = {"name": ion.name, "subset": "ions_water", "charge": ion.charge, "multiplicity": 1,
                "water_model": model.name, "ion_model": model.ion_model, "parent_id": structure_id(block)}
        real_atoms = np.array([atom.element is not None for atom in solvated.atoms()])  # drop OPC's M sites
        frames.extend(frames_to_atoms(trajectory, info, atoms_mask=real_atoms))
    return frames


def _ion_index(frame: Atoms) -> int:
    """Index of the single non-water atom of a frame."""
    candidates = np.flatnonzero(~np.isin(frame.get_chemical_symbols(), ("O", "H")))
    if len(candidates) != 1:
        raise ValueError(f"frame {frame.info.get('name', frame.get_chemical_formula())!r} has "
                         f"{len(candidates)} non-water atoms; an ion-water frame has exactly one ion")
    return int(candidates[0])


def _water_molecules(frame: Atoms, ion_index: int) -> list[np.ndarray]:
    """Atom indices (O first, then the two H) of every water in the frame.

    Waters are the residues of ``info['residue_index']`` when present; otherwise each H is
    assigned to its nearest O under the minimum image.
    """
    symbols = np.array(frame.get_chemical_symbols())
    oxygens = np.flatnonzero(symbols == "O")
    if "residue_index" in frame.info:
        residues = np.asarray(frame.info["residue_index"])
        groups = []
        for oxygen in oxygens:
            members = np.flatnonzero(residues == residues[oxygen])
            hydrogens = members[symbols[members] == "H"]
            groups.append(np.concatenate([[oxygen], hydrogens]))
    else:
        hydrogens = np.flatnonzero(symbols == "H")
        vectors = frame.positions[hydrogens][:, None, :] - frame.positions[oxygens][None, :, :]
        _, lengths = find_mic(vectors.reshape(-1, 3), frame.cell, frame.pbc)
        owner = np.argmin(lengths.reshape(len(hydrogens), len(oxygens)), axis=1)
        groups = [np.concatenate([[oxygen], hydrogens[owner == k]]) for k, oxygen in enumerate(oxygens)]
    for group in groups:
        if len(group) != 3:
            raise ValueError(f"frame {frame.info.get('name', '')!r}: water at atom {group[0]} has "
                             f"{len(group) - 1} hydrogens, expected 2")
    return groups


def carve_cluster(frame: Atoms, n_waters: int) -> Atoms:
    """The ion and its ``n_waters`` nearest whole waters (by ion-O distance, minimum image).

    Each water is placed at its image nearest the ion and kept whole (H atoms at their minimum
    image from their O); the cluster is re-centred on its centre of mass and has no cell.

    Returns:
        :class:`ase.Atoms` ion first, then waters in order of distance (O, H, H); info: name
        ``"<ion>(H2O)<n>"``, subset, ion, n_waters, charge (the ion's), multiplicity 1,
        parent_id (the frame's structure id), frame, shell_radius (Å, the farthest O).

    Raises:
        ValueError: if the frame has fewer waters than asked, or the ``n``-th water lies beyond
            half the shortest box width, where the minimum image no longer gives the true
            neighbourhood.
    """
    ion_index = _ion_index(frame)
    waters = _water_molecules(frame, ion_index)
    if not 1 <= n_waters <= len(waters):
        raise ValueError(f"n_waters={n_waters}: frame {frame.info.get('name', '')!r} has {len(waters)} waters")
    centre = frame.positions[ion_index]
    oxygens = np.array([group[0] for group in waters])
    to_oxygen, distance = find_mic(frame.positions[oxygens] - centre, frame.cell, frame.pbc)
    order = np.argsort(distance, kind="stable")[:n_waters]
    half_width = 0.5 * min(frame.cell.volume / np.linalg.norm(np.cross(frame.cell[i - 1], frame.cell[i - 2]))
                           for i in range(3))
    if distance[order[-1]] >= half_width:
        raise ValueError(f"n_waters={n_waters}: the farthest water of {frame.info.get('name', '')!r} is "
                         f"{distance[order[-1]]:.2f} Å from the ion, beyond half the box width "
                         f"({half_width:.2f} Å); sample a larger box")
    numbers = [frame.numbers[ion_index]]
    positions = [np.zeros(3)]
    for k in order:
        group = waters[k]
        oxygen_position = to_oxygen[k]
        to_hydrogens, _ = find_mic(frame.positions[group[1:]] - frame.positions[group[0]], frame.cell, frame.pbc)
        numbers.extend(frame.numbers[group])
        positions.extend([oxygen_position, *(oxygen_position + to_hydrogens)])
    cluster = Atoms(numbers=numbers, positions=np.asarray(positions))
    cluster.positions -= cluster.get_center_of_mass()
    ion_name = str(frame.info.get("name", frame.get_chemical_symbols()[ion_index]))
    cluster.info.update(
        name=f"{ion_name}(H2O){n_waters}", subset="ions_water", ion=ion_name, n_waters=int(n_waters),
        charge=int(frame.info.get("charge", 0)), multiplicity=1, parent_id=structure_id(frame),
        shell_radius=float(distance[order[-1]]),
    )
    if "frame" in frame.info:
        cluster.info["frame"] = int(frame.info["frame"])
    return cluster


def carve_clusters(frames: Sequence[Atoms], n_waters: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 100),
                   max_per_frame: int | None = None, seed: int = 0) -> list[Atoms]:
    """Stage 03: ion-water clusters from every frame.

    Args:
        frames: stage-02 frames (one ion plus waters, periodic).
        n_waters: cluster sizes (number of waters); QCell spans 1 to 100.
        max_per_frame: when set, each frame gives this many sizes drawn without replacement
            from ``n_waters`` (seeded), so that long trajectories do not yield every size from
            every frame; ``None`` carves every size from every frame.
        seed: seeds the draw of sizes.

    Returns:
        Clusters frame by frame, sizes ascending within a frame (see :func:`carve_cluster`).
    """
    sizes = sorted({int(n) for n in n_waters})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"n_waters={tuple(n_waters)!r}: need positive water counts")
    if max_per_frame is not None and max_per_frame < 1:
        raise ValueError(f"max_per_frame={max_per_frame!r}: must be at least 1")
    rng = np.random.default_rng(seed)
    clusters = []
    for frame in frames:
        chosen = sizes
        if max_per_frame is not None and max_per_frame < len(sizes):
            chosen = sorted(rng.choice(sizes, size=max_per_frame, replace=False).tolist())
        clusters.extend(carve_cluster(frame, n) for n in chosen)
    return clusters


# --- radial distribution functions -----------------------------------------------------------

def ion_water_rdfs(frames: Sequence[Atoms], r_max: float | None = None,
                   n_bins: int | None = None) -> dict[str, dict[str, Any]]:
    """Ion-O and O-O g(r) of the stage-02 frames, grouped by ion.

    Args:
        frames: periodic ion-water frames (several ions may be mixed; each ion's frames are
            averaged together, O-O over all frames).
        r_max: Å; default half the shortest box edge, at most 8 Å.
        n_bins: default 0.05 Å bins.

    Returns:
        ``{"Na-O": {"r": (n_bins,) Å, "g": (n_bins,), "r_peak": Å, "r_min": Å (first minimum),
        "coordination": waters within r_min, "n_frames": int}, ..., "O-O": {...}}``.
    """
    if not frames:
        raise ValueError("ion_water_rdfs needs at least one frame")
    cells = np.array([frame.cell.array for frame in frames])
    shortest = float(np.linalg.norm(cells, axis=2).min())
    r_max = min(8.0, shortest / 2) if r_max is None else r_max
    n_bins = int(round(r_max / 0.05)) if n_bins is None else n_bins
    by_ion: dict[str, list[Atoms]] = {}
    for frame in frames:
        by_ion.setdefault(frame.get_chemical_symbols()[_ion_index(frame)], []).append(frame)
    result: dict[str, dict[str, Any]] = {}
    for element, group in by_ion.items():
        result[f"{element}-O"] = _rdf_entry(group, "ion", r_max, n_bins)
    result["O-O"] = _rdf_entry(frames, "O", r_max, n_bins)
    return result


def _rdf_entry(frames: Sequence[Atoms], centre: str, r_max: float, n_bins: int) -> dict[str, Any]:
    sizes = {len(frame) for frame in frames}
    if len(sizes) == 1:
        positions = np.array([frame.positions for frame in frames])
        cells = np.array([frame.cell.array for frame in frames])
        batches = [(positions, cells, frames[0])]
    else:  # frames of different boxes: average per frame, weighted equally
        batches = [(frame.positions[None], frame.cell.array[None], frame) for frame in frames]
    g_sum = 0.0
    for positions, cells, reference in batches:
        oxygens = np.flatnonzero(np.array(reference.get_chemical_symbols()) == "O")
        centres = [_ion_index(reference)] if centre == "ion" else oxygens
        r, g = rdf(positions, cells, centres, oxygens, r_max=r_max, n_bins=n_bins)
        g_sum = g_sum + g * len(positions)
    g = g_sum / len(frames)
    densities = [np.sum(np.array(f.get_chemical_symbols()) == "O") / f.get_volume() for f in frames]
    r_peak = first_peak(r, g)
    r_min, coordination = _first_shell(r, g, r_peak, float(np.mean(densities)))
    return {"r": r, "g": g, "r_peak": r_peak, "r_min": r_min, "coordination": coordination,
            "n_frames": len(frames)}


def _first_shell(r: np.ndarray, g: np.ndarray, r_peak: float, density: float) -> tuple[float, float]:
    """First minimum after the first peak (Å) and the coordination number up to it.

    The minimum is where the (5-bin running mean of) g stops falling after the peak; the
    coordination number is ``4 pi density * integral of g r^2 dr`` up to it (density in 1/Å^3).
    """
    smooth = np.convolve(g, np.ones(5) / 5.0, mode="same")
    near = int(np.searchsorted(r, r_peak))
    start = max(0, near - 2)
    index = start + int(np.argmax(smooth[start:near + 3]))
    while index + 1 < len(r) and smooth[index + 1] <= smooth[index]:
        index += 1
    width = r[1] - r[0]
    outer = r[: index + 1] + 0.5 * width
    inner = outer - width
    shells = 4.0 / 3.0 * np.pi * (outer ** 3 - inner ** 3)
    return float(outer[-1]), float(density * np.sum(g[: index + 1] * shells))


#: Experimental first-shell distances (Å) and coordination numbers in liquid water at ambient
#: conditions; the same values as the project's ``ion_water_rdf.json`` reference file.
EXPERIMENTAL_FIRST_SHELLS: dict[str, dict[str, Any]] = {
    "O-O": {"r_peak": 2.80, "source": "Skinner et al., J. Chem. Phys. 138, 074506 (2013)"},
    "Na-O": {"r_peak": 2.43, "coordination": 6, "source": "Mahler and Persson, Inorg. Chem. 51, 425 (2012)"},
    "K-O": {"r_peak": 2.81, "coordination": 7, "source": "Mahler and Persson, Inorg. Chem. 51, 425 (2012)"},
    "Mg-O": {"r_peak": 2.09, "coordination": 6, "source": "Ohtaki and Radnai, Chem. Rev. 93, 1157 (1993)"},
    "Ca-O": {"r_peak": 2.43, "source": "Ohtaki and Radnai, Chem. Rev. 93, 1157 (1993)"},
    "Cl-O": {"r_peak": 3.16, "coordination": 6, "source": "Ohtaki and Radnai, Chem. Rev. 93, 1157 (1993)"},
}


def load_rdf_reference(path: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """Experimental first-peak positions: ``{"Na-O": {"r_peak": Å, "source": ...}, ...}``.

    ``None`` gives :data:`EXPERIMENTAL_FIRST_SHELLS`. A file is a JSON object whose entries
    named ``"<X>-O"`` carry at least ``r_peak`` (Å); other top-level keys (a description) are
    skipped.
    """
    if path is None:
        return {pair: dict(entry) for pair, entry in EXPERIMENTAL_FIRST_SHELLS.items()}
    data = json.loads(Path(path).read_text())
    reference = {key: value for key, value in data.items() if isinstance(value, dict) and "r_peak" in value}
    if not reference:
        raise ValueError(f"{path}: no entry with an 'r_peak' value")
    return reference


def compare_first_peaks(rdfs: dict[str, dict[str, Any]],
                        reference: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Model vs experimental first-peak positions for every pair present in both (Å).

    Returns ``{"Na-O": {"model": Å, "experiment": Å, "difference": model - experiment}, ...}``.
    """
    return {pair: {"model": float(entry["r_peak"]), "experiment": float(reference[pair]["r_peak"]),
                   "difference": float(entry["r_peak"]) - float(reference[pair]["r_peak"])}
            for pair, entry in rdfs.items() if pair in reference}


def plot_rdfs(frames: Sequence[Atoms], reference_path: str | os.PathLike | None = None,
              path: str | os.PathLike | None = None, rdfs: dict[str, dict[str, Any]] | None = None,
              ylabel: str = "g(r)", source: str = "MD"):
    """One panel per pair: g(r) of the MM frames with the experimental first peak as a dashed line.

    ``reference_path`` as in :func:`load_rdf_reference` (``None``: the built-in values).
    Pass ``rdfs`` (from :func:`ion_water_rdfs`) to avoid recomputing them; a panel's entry may
    name its experimental pair in ``"pair"`` when its title is another text (``"Na+ O-O"``).
    Saves to ``path`` when given; returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    rdfs = ion_water_rdfs(frames) if rdfs is None else rdfs
    reference = load_rdf_reference(reference_path)
    pairs = list(rdfs)
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.2 * len(pairs), 3.0), squeeze=False)
    for axis, pair in zip(axes[0], pairs):
        entry = rdfs[pair]
        axis.plot(entry["r"], entry["g"], label=f"{source}: {entry['r_peak']:.2f} Å")
        experimental = reference.get(entry.get("pair", pair))
        if experimental:
            axis.axvline(experimental["r_peak"], color="k", linestyle="--",
                         label=f"experiment: {experimental['r_peak']:.2f} Å")
        axis.set_title(pair)
        axis.set_xlabel("r (Å)")
        axis.legend(fontsize=7)
    axes[0][0].set_ylabel(ylabel)
    return finish_figure(fig, path)
