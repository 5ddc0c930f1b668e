"""From labelled ase.Atoms to padded, fixed-shape batches for the network.

A batch is one flat list of atoms from several molecules plus a sparse list
of neighbour pairs within the cutoff, each pair listed once (``i < j``); the
network runs messages both ways over it. Listing each pair once lets the
network evaluate everything symmetric in a pair (distances, radial basis,
the filter MLP) once instead of twice. jit compiles once per distinct
array shape, so atom and pair counts are padded up to a small set of bucket
sizes (:func:`bucket_size`) and the molecule count to the batch size: a whole
training run compiles a handful of times instead of every step.

Batch dict (numpy arrays; ``N`` atoms, ``P`` short-range pairs listed once,
``Q`` long-range pairs, ``G`` molecules, padded):

================  =============  ==============================================
``numbers``       (N,) int32     atomic numbers, 0 for padding
``positions``     (N, 3) f32     Å
``forces``        (N, 3) f32     reference forces, eV/Å (0 where missing)
``energy``        (G,) f32       reference energy minus the element baseline, eV
``pair_i``        (P,) int32     first atom of each short-range pair (``i < j``)
``pair_j``        (P,) int32     second atom of each short-range pair
``lr_dst``        (Q,) int32     first atom of each long-range pair (``i < j``)
``lr_src``        (Q,) int32     second atom of each long-range pair
``batch_segments`` (N,) int32    molecule index of each atom
``atom_mask``     (N,) bool      real atoms
``graph_mask``    (G,) bool      real molecules
``pair_mask``     (P,) bool      real short-range pairs
``lr_mask``       (Q,) bool      real long-range pairs
``energy_mask``   (G,) bool      molecules with an energy label
``forces_mask``   (N,) bool      atoms with a force label
``num_atoms``     (G,) int32     atoms per molecule (0 for padding)
================  =============  ==============================================

Only non-periodic structures (molecular fragments) are supported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from scipy.spatial import cKDTree

from qcell_nb.structures import charge_of, multiplicity_of

Batch = dict[str, np.ndarray]


# --------------------------------------------------------------------------
# labels and neighbour pairs
# --------------------------------------------------------------------------
def labels_of(atoms: Atoms, index: int | None = None) -> tuple[float | None, np.ndarray | None]:
    """Reference (energy eV, forces (n, 3) eV/Å) of a structure; None where absent.

    Reads the attached calculator's stored ``results`` only, so a live
    calculator (a DFT engine) is never triggered into a new calculation.

    Raises
    ------
    ValueError
        If a label is present but not finite, or forces have the wrong shape.
    """
    where = f"structure {index}" if index is not None else "structure"
    results = getattr(atoms.calc, "results", None) or {}
    energy = results.get("energy")
    forces = results.get("forces")
    if energy is not None:
        energy = float(energy)
        if not np.isfinite(energy):
            raise ValueError(f"{where}: energy {energy} is not finite")
    if forces is not None:
        forces = np.asarray(forces, dtype=np.float64)
        if forces.shape != (len(atoms), 3):
            raise ValueError(f"{where}: forces have shape {forces.shape}, expected {(len(atoms), 3)}")
        if not np.all(np.isfinite(forces)):
            raise ValueError(f"{where}: forces contain non-finite values")
    return energy, forces


def extra_labels_of(atoms: Atoms, index: int | None = None
                    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Reference dipole (3,) e·Å, Hirshfeld charges (n,) e and Hirshfeld ratios (n,); None where absent.

    Dipole and charges are read from the stored calculator results, the
    ratios from ``atoms.info["hirsh_ratios"]`` (row data of the dataset) or
    the results.
    """
    where = f"structure {index}" if index is not None else "structure"
    results = getattr(atoms.calc, "results", None) or {}
    values = {"dipole": results.get("dipole"), "charges": results.get("charges"),
              "hirsh_ratios": atoms.info.get("hirsh_ratios", results.get("hirsh_ratios"))}
    shapes = {"dipole": (3,), "charges": (len(atoms),), "hirsh_ratios": (len(atoms),)}
    out = []
    for name, value in values.items():
        if value is not None:
            value = np.asarray(value, dtype=np.float64)
            if value.shape != shapes[name]:
                raise ValueError(f"{where}: {name} has shape {value.shape}, expected {shapes[name]}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{where}: {name} contains non-finite values")
        out.append(value)
    return tuple(out)


#: Up to this many atoms, neighbour lists come from one dense distance matrix (numpy);
#: beyond it from a k-d tree. Dense is 2-4x faster at a few hundred atoms with a 10 Å cutoff.
DENSE_NEIGHBOUR_LIMIT = 600


def _pairs_within(positions: np.ndarray, cutoffs: Sequence[float | None]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Unordered pairs ``i < j`` closer than each cutoff (None = all pairs), from one distance pass.

    Each list is sorted by ``(i, j)``. Distances equal to a cutoff are excluded.
    """
    n = len(positions)
    if n < 2:
        empty = np.zeros(0, np.int32)
        return [(empty, empty) for _ in cutoffs]
    finite = [c for c in cutoffs if c is not None]
    if n <= DENSE_NEIGHBOUR_LIMIT or len(finite) < len(cutoffs):
        i, j = np.triu_indices(n, k=1)
        d = positions[i] - positions[j]
        d2 = np.sum(d * d, axis=-1)
    else:
        # the largest cutoff's pairs once; smaller cutoffs select from them
        found = cKDTree(positions).query_pairs(max(finite), output_type="ndarray")
        found = found[np.lexsort((found[:, 1], found[:, 0]))]
        i, j = found[:, 0], found[:, 1]
        d2 = np.sum((positions[i] - positions[j]) ** 2, axis=-1)
    out = []
    for cutoff in cutoffs:
        keep = slice(None) if cutoff is None else d2 < cutoff * cutoff
        out.append((i[keep].astype(np.int32), j[keep].astype(np.int32)))
    return out


def neighbour_pairs(positions: np.ndarray, cutoff: float | None, ordered: bool = True
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of atoms closer than ``cutoff`` Å (all pairs for ``cutoff=None``).

    ``ordered=True``: both ``(i, j)`` and ``(j, i)``, sorted by the first
    index. ``ordered=False``: each pair once with ``i < j`` (what batches
    hold). Small structures use one dense distance matrix, large ones a k-d
    tree (O(n log n)).

    Returns
    -------
    dst_idx, src_idx: (P,) int32
    """
    ((i, j),) = _pairs_within(np.asarray(positions, dtype=np.float64), [cutoff])
    if ordered:
        i, j = np.concatenate([i, j]), np.concatenate([j, i])
        order = np.lexsort((j, i))
        i, j = i[order], j[order]
    return i, j


# --------------------------------------------------------------------------
# per-element energy baseline
# --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EnergyBaseline:
    """Fixed per-element energies and the residual energy scale.

    ``E_baseline = sum_i element_energies[Z_i]``; the network learns
    ``E - E_baseline``. The element set also defines what the model may be
    applied to.

    Attributes
    ----------
    element_energies:
        Atomic number -> energy per atom of that element, eV.
    scale:
        Standard deviation of the per-atom residual energy, eV (the initial
        output scale of the network and the loss normalisation).
    """

    element_energies: Mapping[int, float]
    scale: float = 1.0

    @property
    def elements(self) -> tuple[int, ...]:
        return tuple(sorted(int(z) for z in self.element_energies))

    def check_elements(self, numbers: np.ndarray, index: int | None = None) -> None:
        """Raise ValueError naming any element the model was not trained on."""
        unknown = sorted(set(int(z) for z in np.unique(numbers)) - set(self.elements) - {0})
        if unknown:
            where = f"structure {index}" if index is not None else "structure"
            names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in unknown)
            known = ", ".join(chemical_symbols[z] for z in self.elements)
            raise ValueError(f"{where} contains {names}, not in the training data; the model knows {known}")

    def energy(self, numbers: np.ndarray) -> float:
        """Baseline energy of one structure in eV (float64); MM atoms (Z = 0) add nothing."""
        return float(sum(self.element_energies[int(z)] for z in numbers if z > 0))

    def to_dict(self) -> dict:
        return {"element_energies": {str(z): float(e) for z, e in sorted(self.element_energies.items())},
                "scale": float(self.scale)}

    @classmethod
    def from_dict(cls, data: Mapping) -> EnergyBaseline:
        return cls({int(z): float(e) for z, e in data["element_energies"].items()}, float(data["scale"]))


def fit_baseline(structures: Sequence[Atoms], scale_from: str = "forces") -> EnergyBaseline:
    """Least-squares fit of energy against element counts, and the output scale.

    Solves ``E_k ~ sum_Z count_kZ * e_Z`` over all structures with an energy
    label (minimum-norm solution where compositions are collinear, e.g. a
    single molecule's conformers).

    ``scale`` (eV) sets the network's initial output scale and normalises the
    loss:

    ``"forces"`` (default)
        RMS force component (eV/Å, read as eV over a 1 Å length). Forces carry
        100x the weight of energies in the loss, and the per-atom energy
        spread of conformer data is often ~30x smaller than the forces, which
        leaves an energy-derived scale far too small for them: on rattled
        methanol it trained to a force MAE of 0.75 eV/Å against 0.43 eV/Å
        with this choice.
    ``"energy"``
        Standard deviation of the per-atom residual ``(E_k - E_baseline_k) / n_k``.

    Either falls back to the other when undefined (no forces; fewer than two
    energies), then to 1 eV.
    """
    if scale_from not in ("forces", "energy"):
        raise ValueError(f"scale_from must be 'forces' or 'energy', got {scale_from!r}")
    elements = sorted({int(z) for atoms in structures for z in atoms.numbers if z > 0})
    if not elements:
        raise ValueError("cannot fit an energy baseline to an empty set of structures")
    column = {z: k for k, z in enumerate(elements)}
    rows, energies, sizes, force_values = [], [], [], []
    for index, atoms in enumerate(structures):
        energy, forces = labels_of(atoms, index)
        if forces is not None:
            force_values.append(forces.ravel())
        if energy is None:
            continue
        counts = np.zeros(len(elements))
        for z in atoms.numbers:
            if z > 0:
                counts[column[int(z)]] += 1
        rows.append(counts)
        energies.append(energy)
        sizes.append(len(atoms))
    if rows:
        counts = np.asarray(rows)
        targets = np.asarray(energies)
        coefficients = np.linalg.lstsq(counts, targets, rcond=None)[0]
        per_atom_residual = (targets - counts @ coefficients) / np.asarray(sizes)
    else:
        coefficients = np.zeros(len(elements))
        per_atom_residual = np.zeros(0)
    energy_scale = float(np.std(per_atom_residual)) if len(per_atom_residual) > 1 else 0.0
    forces_scale = float(np.sqrt(np.mean(np.concatenate(force_values) ** 2))) if force_values else 0.0
    candidates = (forces_scale, energy_scale) if scale_from == "forces" else (energy_scale, forces_scale)
    scale = next((c for c in candidates if c > 1e-6), 1.0)
    return EnergyBaseline({z: float(c) for z, c in zip(elements, coefficients)}, scale)


# --------------------------------------------------------------------------
# samples and batches
# --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Sample:
    """One structure ready for batching.

    ``energy`` is the residual (reference minus baseline) in eV, or NaN when
    absent; other labels are None when absent. ``pair_i``/``pair_j`` are
    local indices of the short-range pairs, ``lr_dst``/``lr_src`` of the
    long-range pairs (empty when the model has no long-range terms), each
    pair once with ``i < j``.
    """

    numbers: np.ndarray  # (n,) int32
    positions: np.ndarray  # (n, 3) float64, Å
    energy: float  # eV (residual), NaN if missing
    forces: np.ndarray | None  # (n, 3) eV/Å
    pair_i: np.ndarray  # (p,) int32
    pair_j: np.ndarray  # (p,) int32
    lr_dst: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))  # (q,)
    lr_src: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))  # (q,)
    total_charge: float = 0.0  # e
    spin: float = 0.0  # unpaired electrons
    mm_charges: np.ndarray | None = None  # (n,) e, nonzero only on MM atoms
    dipole: np.ndarray | None = None  # (3,) e·Å
    charges: np.ndarray | None = None  # (n,) e
    hirshfeld: np.ndarray | None = None  # (n,)

    @property
    def num_atoms(self) -> int:
        return len(self.numbers)

    @property
    def num_pairs(self) -> int:
        """Ordered short-range pairs (each neighbour relation counted both ways)."""
        return 2 * len(self.pair_i)

    @property
    def dst_idx(self) -> np.ndarray:
        """Receiving atom of every ordered short-range pair (first half ``i``, second ``j``)."""
        return np.concatenate([self.pair_i, self.pair_j])

    @property
    def src_idx(self) -> np.ndarray:
        """Sending atom of every ordered short-range pair."""
        return np.concatenate([self.pair_j, self.pair_i])

    @property
    def num_lr_pairs(self) -> int:
        return len(self.lr_dst)


def mm_charges_of(atoms: Atoms, index: int | None = None) -> np.ndarray:
    """Per-atom MM charges (n,) e from ``atoms.arrays["mm_charges"]`` (zeros if absent).

    Falls back to ``atoms.info["mm_charges"]``, where a structure read back from the dataset
    carries them (ASE databases keep no custom per-atom arrays).

    Raises
    ------
    ValueError
        If MM atoms (Z = 0) have no charges, or charges sit on QM atoms.
    """
    where = f"structure {index}" if index is not None else "structure"
    mm = atoms.numbers == 0
    charges = atoms.arrays.get("mm_charges")
    if charges is None:
        charges = atoms.info.get("mm_charges")
    if charges is None:
        if mm.any():
            raise ValueError(f"{where} has {int(mm.sum())} MM atoms (Z=0) but no atoms.arrays['mm_charges']")
        return np.zeros(len(atoms))
    charges = np.asarray(charges, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(charges)):
        raise ValueError(f"{where}: mm_charges contain non-finite values")
    if np.any(charges[~mm] != 0):
        raise ValueError(f"{where}: mm_charges are nonzero on QM atoms (Z>0); MM sites must have Z=0")
    return charges


def make_sample(atoms: Atoms, cutoff: float, baseline: EnergyBaseline | None = None,
                index: int | None = None, with_labels: bool = True, *,
                long_range: bool = True, long_range_cutoff: float | None = 10.0) -> Sample:
    """Convert one structure; ``baseline`` (if given) is subtracted and checked.

    ``long_range=False`` skips the long-range pair list (a model without
    electrostatics and dispersion); ``long_range_cutoff`` in Å, None = all pairs.

    Raises
    ------
    ValueError
        For a periodic structure, an empty one, an element outside the
        baseline's element set, or MM atoms without charges.
    """
    where = f"structure {index}" if index is not None else "structure"
    if len(atoms) == 0:
        raise ValueError(f"{where} has no atoms")
    if np.any(atoms.pbc):
        raise ValueError(f"{where} is periodic (pbc={atoms.pbc.tolist()}); only molecular fragments are supported")
    numbers = np.asarray(atoms.numbers, dtype=np.int32)
    if np.all(numbers == 0):
        raise ValueError(f"{where} has only MM atoms (Z=0)")
    if baseline is not None:
        baseline.check_elements(numbers, index)
    positions = np.asarray(atoms.positions, dtype=np.float64)
    if not np.all(np.isfinite(positions)):
        raise ValueError(f"{where} has non-finite positions")
    energy, forces = labels_of(atoms, index) if with_labels else (None, None)
    dipole, charges, hirshfeld = extra_labels_of(atoms, index) if with_labels else (None, None, None)
    if energy is None:
        energy = float("nan")
    elif baseline is not None:
        energy = energy - baseline.energy(numbers)
    if long_range:
        (pair_i, pair_j), (lr_dst, lr_src) = _pairs_within(positions, [cutoff, long_range_cutoff])
    else:
        ((pair_i, pair_j),) = _pairs_within(positions, [cutoff])
        lr_dst = lr_src = np.zeros(0, np.int32)
    return Sample(numbers, positions, energy, forces, pair_i, pair_j, lr_dst, lr_src,
                  total_charge=float(charge_of(atoms)), spin=float(multiplicity_of(atoms) - 1),
                  mm_charges=mm_charges_of(atoms, index), dipole=dipole, charges=charges, hirshfeld=hirshfeld)


def make_samples(structures: Sequence[Atoms], cutoff: float, baseline: EnergyBaseline | None = None,
                 with_labels: bool = True, *, long_range: bool = True,
                 long_range_cutoff: float | None = 10.0) -> list[Sample]:
    """:func:`make_sample` for every structure (errors name the index)."""
    return [make_sample(a, cutoff, baseline, i, with_labels, long_range=long_range,
                        long_range_cutoff=long_range_cutoff) for i, a in enumerate(structures)]


def samples_for(structures: Sequence[Atoms], config, baseline: EnergyBaseline | None = None,
                with_labels: bool = True) -> list[Sample]:
    """:func:`make_samples` with the cutoffs of a :class:`~qcell_nb.model.network.ModelConfig`."""
    return make_samples(structures, config.cutoff, baseline, with_labels,
                        long_range=config.uses_long_range, long_range_cutoff=config.long_range_cutoff)


def bucket_size(n: int, minimum: int = 32) -> int:
    """Smallest bucket >= ``n``: ``minimum * 2**k`` or ``1.5 * minimum * 2**k``.

    Half steps bound the padding waste at 50 % (pure powers of two waste up to
    100 %) while keeping the number of distinct shapes logarithmic.
    """
    if minimum < 2 or minimum % 2:
        raise ValueError(f"bucket minimum must be an even integer >= 2, got {minimum}")
    size = minimum
    while True:
        if n <= size:
            return size
        if n <= size * 3 // 2:
            return size * 3 // 2
        size *= 2


def collate(samples: Sequence[Sample], num_graphs: int | None = None, num_atoms: int | None = None,
            num_pairs: int | None = None, atom_bucket: int = 32, pair_bucket: int = 128,
            num_lr_pairs: int | None = None) -> Batch:
    """Pad and concatenate samples into one batch dict (see module docstring).

    ``num_graphs`` defaults to ``len(samples)``; ``num_atoms``, ``num_pairs``
    and ``num_lr_pairs`` default to the bucket sizes of the totals.
    ``num_pairs`` counts ordered pairs (:attr:`Sample.num_pairs`, both
    directions); the batch lists each once, so its pair arrays have
    ``ceil(num_pairs / 2)`` entries.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    num_graphs = len(samples) if num_graphs is None else num_graphs
    if num_graphs < len(samples):
        raise ValueError(f"num_graphs={num_graphs} is smaller than the {len(samples)} samples")
    total_atoms = sum(s.num_atoms for s in samples)
    total_pairs = sum(s.num_pairs for s in samples)
    total_lr = sum(s.num_lr_pairs for s in samples)
    num_atoms = bucket_size(total_atoms, atom_bucket) if num_atoms is None else num_atoms
    num_pairs = bucket_size(total_pairs, pair_bucket) if num_pairs is None else num_pairs
    if num_lr_pairs is None:
        num_lr_pairs = bucket_size(total_lr, pair_bucket) if total_lr else 2
    if num_atoms < total_atoms or num_pairs < total_pairs or num_lr_pairs < total_lr:
        raise ValueError(f"padding sizes ({num_atoms} atoms, {num_pairs} pairs, {num_lr_pairs} long-range "
                         f"pairs) are smaller than the batch ({total_atoms}, {total_pairs}, {total_lr})")
    half_pairs = (num_pairs + 1) // 2

    batch: Batch = {
        "numbers": np.zeros(num_atoms, np.int32),
        "positions": np.zeros((num_atoms, 3), np.float64),
        "forces": np.zeros((num_atoms, 3), np.float32),
        "energy": np.zeros(num_graphs, np.float32),
        # Padding pairs point at atom 0 and padding atoms at the last
        # molecule: valid indices, neutralised by the masks.
        "pair_i": np.zeros(half_pairs, np.int32),
        "pair_j": np.zeros(half_pairs, np.int32),
        "lr_dst": np.zeros(num_lr_pairs, np.int32),
        "lr_src": np.zeros(num_lr_pairs, np.int32),
        "batch_segments": np.full(num_atoms, num_graphs - 1, np.int32),
        "atom_mask": np.zeros(num_atoms, bool),
        "graph_mask": np.zeros(num_graphs, bool),
        "pair_mask": np.zeros(half_pairs, bool),
        "lr_mask": np.zeros(num_lr_pairs, bool),
        "energy_mask": np.zeros(num_graphs, bool),
        "forces_mask": np.zeros(num_atoms, bool),
        "num_atoms": np.zeros(num_graphs, np.int32),
        "total_charge": np.zeros(num_graphs, np.float32),
        "spin": np.zeros(num_graphs, np.float32),
        "mm_charges": np.zeros(num_atoms, np.float32),
        "dipole": np.zeros((num_graphs, 3), np.float32),
        "dipole_mask": np.zeros(num_graphs, bool),
        "charges": np.zeros(num_atoms, np.float32),
        "charges_mask": np.zeros(num_atoms, bool),
        "hirshfeld": np.zeros(num_atoms, np.float32),
        "hirshfeld_mask": np.zeros(num_atoms, bool),
    }
    atom_offset = pair_offset = lr_offset = 0
    for g, sample in enumerate(samples):
        atoms = slice(atom_offset, atom_offset + sample.num_atoms)
        pairs = slice(pair_offset, pair_offset + len(sample.pair_i))
        lr = slice(lr_offset, lr_offset + sample.num_lr_pairs)
        batch["numbers"][atoms] = sample.numbers
        batch["positions"][atoms] = sample.positions
        batch["batch_segments"][atoms] = g
        batch["atom_mask"][atoms] = True
        batch["pair_i"][pairs] = sample.pair_i + atom_offset
        batch["pair_j"][pairs] = sample.pair_j + atom_offset
        batch["pair_mask"][pairs] = True
        batch["lr_dst"][lr] = sample.lr_dst + atom_offset
        batch["lr_src"][lr] = sample.lr_src + atom_offset
        batch["lr_mask"][lr] = True
        batch["graph_mask"][g] = True
        batch["num_atoms"][g] = sample.num_atoms
        batch["total_charge"][g] = sample.total_charge
        batch["spin"][g] = sample.spin
        if sample.mm_charges is not None:
            batch["mm_charges"][atoms] = sample.mm_charges
        if np.isfinite(sample.energy):
            batch["energy"][g] = sample.energy
            batch["energy_mask"][g] = True
        if sample.forces is not None:
            batch["forces"][atoms] = sample.forces
            batch["forces_mask"][atoms] = True
        if sample.dipole is not None:
            batch["dipole"][g] = sample.dipole
            batch["dipole_mask"][g] = True
        for name in ("charges", "hirshfeld"):
            value = getattr(sample, name)
            if value is not None:
                batch[name][atoms] = value
                batch[f"{name}_mask"][atoms] = sample.numbers > 0
        atom_offset += sample.num_atoms
        pair_offset += len(sample.pair_i)
        lr_offset += sample.num_lr_pairs
    return batch


def batch_padding(samples: Sequence[Sample], batch_size: int, atom_bucket: int = 32,
                  pair_bucket: int = 128) -> dict[str, int]:
    """One padding that fits every batch of ``batch_size`` drawn from ``samples``.

    The totals of the ``batch_size`` largest samples (per quantity) bound any batch, so with
    this padding a whole training run compiles its step once. The price is padding work when
    sizes vary a lot (4-atom dimers beside 400-atom lipid trimers); per-batch buckets
    (``padding=None``) compile once per bucket instead.

    Returns:
        ``num_atoms``, ``num_pairs`` and ``num_lr_pairs`` for :func:`collate`.
    """
    if not samples:
        raise ValueError("no samples to pad for")

    def bound(values: list[int]) -> int:
        return int(sum(sorted(values, reverse=True)[:batch_size]))

    lr_total = bound([s.num_lr_pairs for s in samples])
    return {"num_atoms": bucket_size(bound([s.num_atoms for s in samples]), atom_bucket),
            "num_pairs": bucket_size(max(bound([s.num_pairs for s in samples]), 1), pair_bucket),
            "num_lr_pairs": bucket_size(lr_total, pair_bucket) if lr_total else 2}


def iterate_batches(samples: Sequence[Sample], batch_size: int, *, shuffle: bool = False,
                    rng: np.random.Generator | None = None, atom_bucket: int = 32,
                    pair_bucket: int = 128, padding: dict[str, int] | None = None
                    ) -> Iterator[tuple[Batch, list[int]]]:
    """Yield ``(batch, sample indices)``; every batch has ``batch_size`` molecule slots.

    The last batch is padded rather than dropped, so every sample is seen
    each epoch. Shuffling uses ``rng`` (a seeded Generator gives the same
    order every run).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.arange(len(samples))
    if shuffle:
        if rng is None:
            raise ValueError("shuffle=True needs a seeded numpy Generator (rng) for reproducibility")
        order = rng.permutation(len(samples))
    for start in range(0, len(order), batch_size):
        indices = [int(i) for i in order[start:start + batch_size]]
        yield (collate([samples[i] for i in indices], num_graphs=batch_size,
                       atom_bucket=atom_bucket, pair_bucket=pair_bucket, **(padding or {})), indices)
