"""Ion hydration with the trained model: MD of ion-water droplets, first-shell distances vs experiment.

The model has no periodic boundary conditions, so instead of a periodic box each ion is simulated
in a droplet carved from its stage-02 MM box (the ion and its ``n_waters`` nearest waters). The
first peak of a pair-distance distribution is a local property that a droplet of a few shells
reproduces; the normalisation of g(r) is not (a droplet has no bulk density), so only peak
positions are compared with experiment, and the histograms are shown divided by r² only.

Each droplet gets a Langevin run (structure) and an NVE run from its end (energy drift), both
with the stability checks of :func:`qcell_nb.validation.dynamics.run_md`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from ..blocks.ions_water import carve_cluster, load_rdf_reference
from .dynamics import MDResult, energy_drift, run_md


def pair_distance_peak(result: MDResult, centres: Sequence[int], others: Sequence[int], r_max: float = 6.0,
                       bin_width: float = 0.05) -> tuple[np.ndarray, np.ndarray, float]:
    """Histogram of centre-other distances over all frames, divided by r², and its first peak.

    Returns:
        (r, h, r_peak): bin centres (Å), the r²-normalised histogram (arbitrary units) and the
        position of its maximum below the first minimum after it (Å).
    """
    centres = np.asarray(centres, dtype=int)
    others = np.asarray(others, dtype=int)
    vectors = result.positions[:, others][:, None, :, :] - result.positions[:, centres][:, :, None, :]
    distances = np.linalg.norm(vectors, axis=-1)
    if np.array_equal(centres, others):
        distances = distances[:, ~np.eye(len(centres), dtype=bool)]
    edges = np.arange(0.0, r_max + bin_width, bin_width)
    counts = np.histogram(distances.ravel(), bins=edges)[0].astype(float)
    r = 0.5 * (edges[1:] + edges[:-1])
    h = counts / r**2
    if not h.any():
        raise ValueError(f"no pair closer than {r_max} Å")
    smooth = np.convolve(h, np.ones(3) / 3.0, mode="same")
    # The first local maximum once the curve has risen above a fifth of its height.
    index = int(np.flatnonzero(smooth > 0.2 * smooth.max())[0])
    while index + 1 < len(smooth) and smooth[index + 1] > smooth[index]:
        index += 1
    return r, h, float(r[index])


def ion_droplet_check(frame: Atoms, calculator: Calculator, *, n_waters: int = 24, steps: int = 400,
                      nve_steps: int = 200, timestep: float = 0.5, temperature: float = 300.0,
                      seed: int = 0, curves: dict | None = None) -> dict:
    """MD of one ion droplet with ``calculator``; first-shell distances and NVE drift.

    Args:
        frame: a stage-02 ion-in-water MM frame (periodic).
        calculator: the trained model's ASE calculator.
        n_waters: waters in the droplet. steps / nve_steps: Langevin and NVE MD steps.
        timestep: fs. temperature: K. seed: velocities and noise.
        curves: when given, the r²-normalised distance histograms are added to it as
            ``{"<ion> <pair>": {"pair", "r", "g", "r_peak"}}`` (Å; the form
            :func:`qcell_nb.blocks.ions_water.plot_rdfs` draws).

    Returns:
        A row: ion, atoms, stability and reason, NVE drift (meV/atom/ps), and for ``<X>-O`` and
        ``O-O`` the model's first peak, the experimental one and their difference (Å).
    """
    droplet = carve_cluster(frame, n_waters)
    ion = str(droplet.info["ion"])
    symbol = droplet.get_chemical_symbols()[0]
    langevin = run_md(droplet, calculator, steps=steps, interval=10, timestep=timestep, temperature=temperature,
                      ensemble="langevin", seed=seed)
    row: dict = {"ion": ion, "atoms": len(droplet), "stable": langevin.stable, "reason": langevin.reason,
                 "ps": round(langevin.simulated_ps, 3)}  # an unstable run's last stretch saved no frame
    if langevin.stable and nve_steps:
        start = droplet.copy()
        start.positions = langevin.positions[-1]
        nve = run_md(start, calculator, steps=nve_steps, interval=10, timestep=timestep, temperature=temperature,
                     ensemble="nve", seed=seed + 1)
        row["stable"] = nve.stable
        row["reason"] = nve.reason
        if len(nve.time) >= 2:
            row["nve_drift_meV_atom_ps"] = round(energy_drift(nve), 3)
    if len(langevin.time) < 2:
        return row
    reference = load_rdf_reference()
    oxygens = [i for i, s in enumerate(droplet.get_chemical_symbols()) if s == "O"]
    for pair, centres, others in ((f"{symbol}-O", [0], oxygens), ("O-O", oxygens, oxygens)):
        r, h, peak = pair_distance_peak(langevin, centres, others)
        if curves is not None:
            curves[f"{ion} {pair}"] = {"pair": pair, "r": np.round(r, 4).tolist(), "g": (h / h.max()).tolist(),
                                       "r_peak": peak}
        experiment = reference.get(pair, {}).get("r_peak")
        row[f"{pair} model"] = round(peak, 2)
        row[f"{pair} experiment"] = experiment
        row[f"{pair} difference"] = None if experiment is None else round(peak - float(experiment), 2) + 0.0  # no -0.0
    return row


def ion_droplet_checks(frames: Sequence[Atoms], ions: Sequence[str], calculator: Calculator, **kwargs) -> list[dict]:
    """:func:`ion_droplet_check` for each ion in ``ions``, from the first of its MM frames.

    ``kwargs`` go to :func:`ion_droplet_check` (``curves`` collects every ion's histograms).

    An ion without a stage-02 box, or one the model cannot run (an element absent from its
    training data), gets a row with ``error`` saying why; the other ions go on.
    """
    rows = []
    for ion in ions:
        boxes = [a for a in frames if a.info.get("subset") == "ions_water" and a.info.get("name") == ion]
        if not boxes:
            rows.append({"ion": ion, "stable": None, "error": "no stage-02 MM box of this ion"})
            continue
        try:
            rows.append(ion_droplet_check(boxes[0], calculator, **kwargs))
        except ValueError as exc:
            rows.append({"ion": ion, "stable": None, "error": str(exc)})
    return rows
