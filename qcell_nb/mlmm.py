"""ML/MM training structures: a QM region in the field of TIP3P point charges, labelled with QM/MM.

An ML/MM structure is one :class:`ase.Atoms` holding the QM atoms first and then the MM sites,
which have atomic number 0 (the model's MM pseudo-element, see :mod:`qcell_nb.model.network`)
and carry fixed point charges in ``atoms.arrays["mm_charges"]`` (e; zero on QM atoms), where
:func:`qcell_nb.model.data.mm_charges_of` reads them. The same charges are also kept in
``atoms.info["mm_charges"]`` because the dataset (an ASE database) stores ``info`` but not
custom per-atom arrays; :func:`restore_mm_charges` puts them back after reading.

Building (:func:`carve_mlmm`)
    From an MD frame (periodic or not), the QM region is a core (an ion or a solute) plus its
    ``n`` nearest whole waters (by core-oxygen distance, minimum image: for an ion this is
    exactly :func:`qcell_nb.blocks.ions_water.carve_cluster`'s choice), and the MM environment is
    every other whole molecule with an atom within ``mm_radius`` of a QM atom. Each molecule is
    placed at its image nearest the QM region and kept whole; the result has no cell.

Labels (:func:`label_mlmm`, through :func:`qcell_nb.calculators.qmmm.label_embedded`)
    ``energy`` (eV) is the QM energy in the field of the charges: PBE0 of the polarised QM
    density including the Coulomb interaction of QM electrons and nuclei with the charges, plus
    MBD of the QM atoms. It does **not** include the Coulomb energy among MM charges. That term
    is constant for one set of MM positions but differs from frame to frame and from one
    environment size to another by far more than the QM energy varies, and it is exactly
    computable; leaving it to the MM force field keeps the label a smooth function the network
    can learn, and matches the model, which excludes MM-MM pairs from its electrostatics.
    ``forces`` (eV/Å) are minus the gradient of that energy: on QM atoms the analytic QM/MM
    gradient, on MM sites the force of the QM density and nuclei on the charges (no MM-MM
    Coulomb, no Lennard-Jones, no bonded MM terms). The MM force field adds those in an ML/MM
    simulation: total = model energy + E_MM(MM-MM) + E_LJ(QM-MM).

After training, :func:`mlmm_forces` splits the model's prediction on such a structure back
into the energy, the forces on the QM atoms and the forces on the MM charges.

The environment's charges are TIP3P water's (:func:`~qcell_nb.calculators.qmmm.tip3p_charges`)
whatever water model sampled the frame (OPC for the ion boxes): a fixed, widely used charge set
that the model learns to respond to; other molecules need their charges passed explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.geometry import find_mic
from ase.neighborlist import NeighborList, natural_cutoffs
from scipy.sparse.csgraph import connected_components

from .calculators.qmmm import label_embedded, tip3p_charges
from .structures import charge_of, structure_id

#: Atomic number of an MM site (the model's MM pseudo-element).
MM_NUMBER = 0


def mm_sites(atoms: Atoms) -> np.ndarray:
    """(n_atoms,) bool: True for the MM sites (Z = MM_NUMBER) of an ML/MM structure."""
    return atoms.numbers == MM_NUMBER


#: Elements that form no covalent bonds here (monatomic ions): their natural
#: radii would otherwise glue an ion to its first-shell waters.
_IONIC = {3, 4, 11, 12, 19, 20, 37, 38, 55, 56}


# --------------------------------------------------------------------------
# molecules and minimum-image geometry
# --------------------------------------------------------------------------
def molecules_of(frame: Atoms) -> list[np.ndarray]:
    """Atom indices of every molecule of ``frame``, in order of their first atom.

    Molecules are the residues of ``info["residue_index"]`` (OpenMM frames, see
    :func:`qcell_nb.md.frames_to_atoms`) when present; otherwise the connected components of the
    covalent bond graph (ASE natural radii, minimum image), with monatomic ions kept apart.
    """
    n = len(frame)
    residues = frame.info.get("residue_index")
    if residues is not None and len(residues) == n:
        residues = np.asarray(residues)
        _, labels = np.unique(residues, return_inverse=True)
    else:
        cutoffs = [0.0 if z in _IONIC else c for z, c in zip(frame.numbers, natural_cutoffs(frame))]
        neighbours = NeighborList(cutoffs, skin=0.0, self_interaction=False, bothways=True)
        neighbours.update(frame)
        _, labels = connected_components(neighbours.get_connectivity_matrix(sparse=True), directed=False)
    groups: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        groups.setdefault(int(label), []).append(index)
    return sorted((np.asarray(g, dtype=np.int64) for g in groups.values()), key=lambda g: int(g[0]))


def _is_water(frame: Atoms, molecule: np.ndarray) -> bool:
    return sorted(frame.numbers[molecule].tolist()) == [1, 1, 8]


def _mic(vectors: np.ndarray, frame: Atoms) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-image vectors (k, 3) and lengths (k,); plain vectors for a non-periodic frame."""
    vectors = np.asarray(vectors, dtype=np.float64).reshape(-1, 3)
    if not np.any(frame.pbc):
        return vectors, np.linalg.norm(vectors, axis=1)
    return find_mic(vectors, frame.cell, frame.pbc)


def _half_width(frame: Atoms) -> float:
    """Half the shortest distance between opposite periodic faces (inf without periodicity)."""
    if not np.any(frame.pbc):
        return np.inf
    cell = frame.cell.array
    volume = abs(np.linalg.det(cell))
    widths = [volume / np.linalg.norm(np.cross(cell[i - 1], cell[i - 2])) for i in range(3) if frame.pbc[i]]
    return 0.5 * min(widths)


def _closest_distances(frame: Atoms, targets: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """For every atom in ``targets``, the minimum-image distance (Å) to the nearest ``sources`` atom."""
    vectors = frame.positions[targets][:, None, :] - frame.positions[sources][None, :, :]
    _, lengths = _mic(vectors, frame)
    return lengths.reshape(len(targets), len(sources)).min(axis=1)


# --------------------------------------------------------------------------
# QM region and MM environment
# --------------------------------------------------------------------------
def qm_region_indices(frame: Atoms, n_waters: int, core: Sequence[int] | None = None) -> np.ndarray:
    """Atom indices (k,) of the QM region, see :func:`qm_molecules`."""
    return np.concatenate(qm_molecules(frame, n_waters, core))


def qm_molecules(frame: Atoms, n_waters: int, core: Sequence[int] | None = None) -> list[np.ndarray]:
    """Atom indices of the QM region: the core's molecules and their ``n_waters`` nearest waters.

    Args:
        frame: an MD frame (periodic or not), e.g. from :func:`qcell_nb.md.frames_to_atoms`.
        n_waters: waters added to the core, nearest first by oxygen distance to any core atom
            (minimum image); 0 gives the core alone.
        core: atom indices of the core; whole molecules containing them are taken. Default:
            every atom outside water molecules (the ion or the solute).

    Returns:
        Atom indices of each QM molecule: the core's molecules, then waters nearest first.

    Raises:
        ValueError: no core, core indices out of range, too few waters, or the farthest chosen
            water beyond half the box width (the minimum image would no longer be the true
            neighbourhood).
    """
    name = frame.info.get("name", frame.get_chemical_formula())
    molecules = molecules_of(frame)
    water = [_is_water(frame, m) for m in molecules]
    if core is None:
        core_atoms = np.concatenate([m for m, w in zip(molecules, water) if not w] or [np.zeros(0, np.int64)])
        if not len(core_atoms):
            raise ValueError(f"frame {name!r}: no atom outside water molecules; pass core= indices")
    else:
        core_atoms = np.asarray(core, dtype=np.int64).reshape(-1)
        if not len(core_atoms) or core_atoms.min() < 0 or core_atoms.max() >= len(frame):
            raise ValueError(f"frame {name!r}: core indices {core_atoms.tolist()} are empty or outside "
                             f"0..{len(frame) - 1}")
    in_core = np.zeros(len(frame), bool)
    in_core[core_atoms] = True
    core_molecules = [m for m in molecules if in_core[m].any()]
    core_atoms = np.concatenate(core_molecules)
    candidates = [m for m, w in zip(molecules, water) if w and not in_core[m].any()]
    if not 0 <= n_waters <= len(candidates):
        raise ValueError(f"n_waters={n_waters}: frame {name!r} has {len(candidates)} waters outside the core")
    chosen: list[np.ndarray] = []
    if n_waters:
        oxygens = np.array([m[frame.numbers[m] == 8][0] for m in candidates])
        distance = _closest_distances(frame, oxygens, core_atoms)
        order = np.argsort(distance, kind="stable")[:n_waters]
        if distance[order[-1]] >= _half_width(frame):
            raise ValueError(f"n_waters={n_waters}: the farthest QM water of {name!r} is {distance[order[-1]]:.2f} Å "
                             f"from the core, beyond half the box width ({_half_width(frame):.2f} Å)")
        chosen = [candidates[k] for k in order]
    return [*core_molecules, *chosen]


def _placed(frame: Atoms, molecule: np.ndarray, reference_atoms: np.ndarray,
            reference_positions: np.ndarray) -> np.ndarray:
    """Positions (k, 3) Å of a whole molecule at its image nearest already placed atoms.

    The molecule's first atom goes to its minimum image from the nearest reference atom (frame
    indices ``reference_atoms``, placed at ``reference_positions``), its other atoms to their
    minimum images from that first atom, so a molecule is never split by the box.
    """
    to_first, lengths = _mic(frame.positions[molecule[0]] - frame.positions[reference_atoms], frame)
    nearest = int(np.argmin(lengths))
    within, _ = _mic(frame.positions[molecule] - frame.positions[molecule[0]], frame)
    return reference_positions[nearest] + to_first[nearest] + within


def _qm_charge(frame: Atoms, qm_atoms: np.ndarray) -> int:
    """The frame's charge when all non-water atoms are QM; otherwise the caller must say."""
    in_qm = np.zeros(len(frame), bool)
    in_qm[qm_atoms] = True
    outside = [m for m in molecules_of(frame) if not _is_water(frame, m) and not in_qm[m].all()]
    if outside:
        raise ValueError(f"frame {frame.info.get('name', frame.get_chemical_formula())!r}: non-water atoms "
                         f"{np.concatenate(outside)[:10].tolist()} are outside the QM region, so its charge is "
                         "not the frame's; pass charge=")
    return charge_of(frame)


def carve_mlmm(frame: Atoms, n_qm_waters: int = 2, mm_radius: float = 6.0, *,
               core: Sequence[int] | None = None, charges: Sequence[float] | None = None,
               charge: int | None = None, multiplicity: int | None = None) -> Atoms:
    """One unlabelled ML/MM structure from an MD frame: QM region plus charged MM environment.

    Args:
        frame: an MD frame (periodic: minimum image; or a non-periodic structure).
        n_qm_waters: waters in the QM region besides the core (see :func:`qm_region_indices`).
        mm_radius: Å; every whole molecule outside the QM region with an atom closer than this
            to a QM atom becomes MM. Must be below half the box width.
        core: QM core atom indices (default: all non-water atoms, e.g. the ion).
        charges: (len(frame),) e, charges of the frame's atoms for MM molecules; default TIP3P
            for waters (any other MM molecule then raises).
        charge, multiplicity: of the QM region; default 1 for the multiplicity and, for the
            charge, ``frame.info["charge"]`` when the QM region holds every non-water atom (waters
            are neutral, so the frame's charge is the QM region's: the ion-water frames).

    Returns:
        :class:`ase.Atoms`, no cell, QM atoms first then MM sites (Z = 0, ``O H H`` per water),
        centred on the QM centre of mass. ``arrays["mm_charges"]`` (n,) e, zero on QM atoms.
        ``info``: name ``"<core>(H2O)<k>+MM<m>"`` (m MM molecules; the core is the frame's
        name, or its formula when ``core`` is given), subset (the frame's, default
        ``"ions_water"``), charge, multiplicity, parent_id (the frame's structure id), n_qm,
        n_mm (sites), n_qm_waters, n_mm_molecules, mm_radius, mm_charges (list, as the array),
        mm_elements (list of the MM sites' element symbols), frame/time_ps when the frame has them.

    Raises:
        ValueError: bad radius, an MM molecule without charges, or a region too large for the box.
    """
    name = frame.info.get("name", frame.get_chemical_formula())
    if not mm_radius > 0:
        raise ValueError(f"mm_radius={mm_radius!r}: must be a positive distance in Å")
    if mm_radius >= _half_width(frame):
        raise ValueError(f"mm_radius={mm_radius} Å: frame {name!r} is periodic with half-width "
                         f"{_half_width(frame):.2f} Å; the minimum image only holds below that")
    if charges is not None:
        charges = np.asarray(charges, dtype=np.float64).reshape(-1)
        if charges.shape != (len(frame),):
            raise ValueError(f"charges: expected one per atom of {name!r} ({len(frame)}), got {charges.shape}")
    qm_ordered = qm_molecules(frame, n_qm_waters, core)
    qm_atoms = np.concatenate(qm_ordered)
    qm_charge = int(_qm_charge(frame, qm_atoms) if charge is None else charge)
    in_qm = np.zeros(len(frame), bool)
    in_qm[qm_atoms] = True
    others = [m for m in molecules_of(frame) if not in_qm[m].any()]
    mm_molecules = [m for m in others if _closest_distances(frame, m, qm_atoms).min() < mm_radius]
    # the first core atom stays put; everything else goes to its image nearest what is placed
    placed_atoms = qm_ordered[0][:1]
    placed_positions = frame.positions[placed_atoms]
    for molecule in qm_ordered:
        positions = _placed(frame, molecule, placed_atoms, placed_positions)
        placed_atoms = np.concatenate([placed_atoms, molecule])
        placed_positions = np.concatenate([placed_positions, positions])
    qm_positions = placed_positions[1:]
    mm_positions_list = []
    mm_charges_list = []
    mm_symbols: list[str] = []
    for molecule in mm_molecules:
        if charges is not None:
            q = charges[molecule]
        elif _is_water(frame, molecule):
            q = tip3p_charges(frame[molecule])
        else:
            raise ValueError(f"frame {name!r}: MM molecule at atom {int(molecule[0])} "
                             f"({frame[molecule].get_chemical_formula()}) is not a water; pass charges=")
        placed = _placed(frame, molecule, qm_atoms, qm_positions)
        mm_positions_list.append(placed)
        mm_charges_list.append(np.asarray(q, dtype=np.float64))
        mm_symbols.extend(frame[molecule].get_chemical_symbols())
    qm_numbers = frame.numbers[np.concatenate(qm_ordered)]
    n_qm, n_mm = len(qm_numbers), len(mm_symbols)
    mm_positions = np.concatenate(mm_positions_list) if mm_positions_list else np.zeros((0, 3))
    structure = Atoms(numbers=np.concatenate([qm_numbers, np.full(n_mm, MM_NUMBER)]),
                      positions=np.concatenate([qm_positions, mm_positions]))
    structure.positions -= structure[:n_qm].get_center_of_mass()
    site_charges = np.concatenate([np.zeros(n_qm), *mm_charges_list])
    structure.arrays["mm_charges"] = site_charges
    n_core = len(qm_ordered) - n_qm_waters
    core_formula = Atoms(numbers=frame.numbers[np.concatenate(qm_ordered[:n_core])]).get_chemical_formula()
    core_name = str(frame.info.get("name", core_formula)) if core is None else core_formula
    structure.info.update(
        name=f"{core_name}(H2O){n_qm_waters}+MM{len(mm_molecules)}",
        subset=str(frame.info.get("subset", "ions_water")),
        charge=qm_charge,
        multiplicity=int(1 if multiplicity is None else multiplicity),
        parent_id=structure_id(frame), n_qm=n_qm, n_mm=n_mm, n_qm_waters=int(n_qm_waters),
        n_mm_molecules=len(mm_molecules), mm_radius=float(mm_radius),
        mm_charges=site_charges.tolist(), mm_elements=mm_symbols,
    )
    for key in ("frame", "time_ps"):
        if key in frame.info:
            structure.info[key] = frame.info[key]
    return structure


def carve_mlmm_structures(frames: Sequence[Atoms], n_qm_waters: Sequence[int] = (2,), mm_radius: float = 6.0,
                          **kwargs: Any) -> list[Atoms]:
    """:func:`carve_mlmm` for every frame and every QM water count (frame by frame)."""
    return [carve_mlmm(frame, int(n), mm_radius, **kwargs) for frame in frames for n in n_qm_waters]


# --------------------------------------------------------------------------
# QM / MM parts of a structure
# --------------------------------------------------------------------------
def restore_mm_charges(atoms: Atoms) -> Atoms:
    """Put ``info["mm_charges"]`` back into ``arrays["mm_charges"]`` (after a dataset read); returns ``atoms``.

    Raises:
        ValueError: MM sites without charges in either place, or a length mismatch.
    """
    if "mm_charges" not in atoms.arrays:
        stored = atoms.info.get("mm_charges")
        if stored is None:
            if np.any(mm_sites(atoms)):
                raise ValueError(f"{atoms.info.get('name', 'structure')!r} has MM sites (Z=0) but no mm_charges "
                                 "in arrays or info")
            return atoms
        stored = np.asarray(stored, dtype=np.float64).reshape(-1)
        if stored.shape != (len(atoms),):
            raise ValueError(f"{atoms.info.get('name', 'structure')!r}: info['mm_charges'] has {stored.size} "
                             f"entries for {len(atoms)} atoms")
        atoms.arrays["mm_charges"] = stored
    return atoms


def split_qm_mm(structure: Atoms) -> tuple[Atoms, np.ndarray, np.ndarray]:
    """(QM atoms with the structure's info, MM positions (m, 3) Å, MM charges (m,) e).

    Raises:
        ValueError: if MM sites (Z = 0) do not all follow the QM atoms, or there is no QM atom.
    """
    restore_mm_charges(structure)
    mm = mm_sites(structure)
    n_qm = int((~mm).sum())
    name = structure.info.get("name", "structure")
    if n_qm == 0:
        raise ValueError(f"{name!r} has no QM atom")
    if mm[:n_qm].any():
        raise ValueError(f"{name!r}: MM sites (Z=0) must all come after the QM atoms")
    qm = Atoms(numbers=structure.numbers[:n_qm], positions=structure.positions[:n_qm])
    qm.info.update({k: v for k, v in structure.info.items() if k not in ("mm_charges", "mm_elements")})
    charges = np.asarray(structure.arrays.get("mm_charges", np.zeros(len(structure))), dtype=np.float64)
    return qm, structure.positions[n_qm:].copy(), charges[n_qm:].copy()


# --------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------
def label_mlmm(structure: Atoms, **calc_params: Any) -> Atoms:
    """QM/MM-label an ML/MM structure (:func:`carve_mlmm`); returns a labelled copy.

    Args:
        structure: QM atoms then MM sites (Z = 0) with ``mm_charges``.
        calc_params: :class:`~qcell_nb.calculators.pbe0.PBE0MBD` parameters (basis, mbd, ...).

    Returns:
        A copy with a :class:`SinglePointCalculator`: ``energy`` (eV; QM in the field of the
        charges, no MM-MM term, see the module docstring), ``forces`` (n_qm + m, 3) eV/Å (QM
        gradient, then the forces on the charges), ``dipole`` (3,) e·Å of the QM density,
        ``charges`` (n,) e (Hirshfeld on QM atoms, the fixed charges on MM sites). ``info``
        gains ``hirsh_ratios`` (n,; 0 on MM sites), ``level_of_theory``, ``pbe0_energy``,
        ``mbd_energy`` and ``embedding``.
    """
    qm, mm_positions, mm_charges = split_qm_mm(structure)
    result = label_embedded(qm, mm_positions, mm_charges, **calc_params)
    labelled = structure.copy()
    n_mm = len(mm_positions)
    forces = np.concatenate([result["forces"], result["mm_forces"].reshape(n_mm, 3)])
    charges = np.concatenate([result["charges"], mm_charges])
    if not (np.isfinite(result["energy"]) and np.all(np.isfinite(forces))):
        raise ValueError(f"{structure.info.get('name', 'structure')!r}: non-finite QM/MM energy or forces")
    labelled.calc = SinglePointCalculator(labelled, energy=float(result["energy"]), forces=forces,
                                          dipole=np.asarray(result["dipole"]), charges=charges)
    labelled.info.update(
        hirsh_ratios=np.concatenate([result["hirsh_ratios"], np.zeros(n_mm)]),
        level_of_theory=str(result["level_of_theory"]), pbe0_energy=float(result["pbe0_energy"]),
        mbd_energy=float(result["mbd_energy"]),
        embedding="electrostatic, bare point charges; energy without MM-MM Coulomb",
    )
    return labelled


def label_mlmm_missing(structures: Sequence[Atoms], dataset: Any, *, stage: str = "05_mlmm",
                       executor: str = "serial", n_workers: int | None = None, retries: int = 1,
                       progress: bool = True, reuse_from: str | os.PathLike | None = None,
                       **calc_params: Any) -> Any:
    """Stage 05 for ML/MM structures: label those not yet in ``dataset`` and write them as they finish.

    Like :func:`qcell_nb.reference.label_missing` (resumable by structure id, failures recorded
    in the dataset's failure table, any executor of :func:`qcell_nb.compute.map_items`), with
    :func:`label_mlmm` as the engine. Rows keep the MM charges in their data (read them back
    with :func:`restore_mm_charges`); the dataset metadata records the level of theory and the
    energy definition. Returns the :class:`~qcell_nb.compute.MapSummary`.
    """
    from .calculators.pbe0 import level_of_theory, resolve_parameters
    from .compute import map_items
    from .reference import reuse_labels

    resolve_parameters(dict(calc_params), n_atoms=0)  # a typo fails here, not once per structure
    dataset.update_metadata(
        level_of_theory=level_of_theory(**calc_params), calculator_parameters=calc_params,
        embedding="ML/MM: MM sites Z=0 with TIP3P point charges (info mm_charges); energy = QM in the field of "
                  "the charges without MM-MM Coulomb; forces on QM atoms and on the charges",
        units={"energy": "eV", "forces": "eV/Å", "dipole": "e·Å", "charges": "e"})
    by_id = {structure_id(atoms): atoms for atoms in structures}
    reuse_labels(dataset, reuse_from, by_id, calc_params)
    done = dataset.done_ids()
    todo = [sid for sid in by_id if sid not in done]

    def store(sid: str, labelled: Atoms) -> None:
        results = dict(labelled.calc.results)
        dataset.add(labelled, results, key_value_pairs={"stage": stage}, sid=sid)

    def fail(sid: str, error: str) -> None:
        dataset.record_failure(sid, str(by_id[sid].info.get("name", "")), stage, error)

    return map_items(label_mlmm, [by_id[sid] for sid in todo], todo, on_result=store, on_failure=fail,
                     executor=executor, n_workers=n_workers, retries=retries, progress=progress,
                     description="ML/MM labels", **calc_params)


# --------------------------------------------------------------------------
# model predictions
# --------------------------------------------------------------------------
def mlmm_forces(model: Any, structure: Atoms) -> dict[str, Any]:
    """A trained model's energy and forces on an ML/MM structure, split into QM and MM parts.

    Args:
        model: a :class:`~qcell_nb.model.training.TrainedModel` or the directory it was saved to.
        structure: QM atoms then MM sites (Z = 0) with ``mm_charges`` (arrays, or info after a
            dataset read).

    Returns:
        dict: ``energy`` (eV, same definition as the label: no MM-MM term), ``qm_forces``
        (n_qm, 3) eV/Å, ``mm_forces`` (m, 3) eV/Å on the charges, ``qm_charges`` (n_qm,) e
        predicted, ``energy_electrostatics`` (eV, the model's Coulomb term including QM-MM).
    """
    from .model import load_model, predict_properties  # jax only when a model is used

    if not hasattr(model, "params"):
        model = load_model(model)
    structure = restore_mm_charges(structure.copy())
    qm, _, _ = split_qm_mm(structure)
    n_qm = len(qm)
    (out,) = predict_properties(model, [structure], batch_size=1)
    return {"energy": float(out["energy"]), "qm_forces": out["forces"][:n_qm], "mm_forces": out["forces"][n_qm:],
            "qm_charges": out["charges"][:n_qm], "energy_electrostatics": float(out["energy_electrostatics"])}
