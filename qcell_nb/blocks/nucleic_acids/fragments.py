"""Stage 03 for nucleic acids: closed-shell fragments cut from MD frames.

Fragment kinds (QCell's nucleic-acid fragments):

``trimer``        central double-strand trimer of a duplex: three base pairs, both
                  strands, each strand from the phosphate of its first nucleotide
                  (with the bridging O3' of the previous one) to the O3' of its last.
``wc_pair``       one Watson-Crick base pair: the two bases, cut at the glycosidic bond.
``stacked_pair``  two stacked bases of one strand, cut at the glycosidic bonds.
``rna_trimer``    three consecutive nucleotides of a single RNA strand, cut like a trimer.

Every cut bond is capped with hydrogen along the bond (C-H 1.09, N-H 1.01,
O-H 0.97 A), so a cut O3'-C3' bond leaves a terminal OH and a cut C1'-N bond
an N-H base (9-H purine, 1-H pyrimidine). Counter-ions are not carried into
the fragments; the phosphates are instead either protonated (default: one H on
OP1, anti to O5', so the fragment is neutral) or kept anionic (charge = minus
the number of phosphates). Either way the fragment is closed-shell
(multiplicity 1) with its charge in ``info``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from ase import Atoms

from ...structures import structure_id

__all__ = ["FRAGMENT_KINDS", "cap_hydrogens", "extract_fragments", "fragments_of_frame"]

FRAGMENT_KINDS = ("trimer", "wc_pair", "stacked_pair", "rna_trimer")
_CAP_LENGTH = {"C": 1.09, "N": 1.01, "O": 0.97}
_OH_LENGTH = 0.97
_SUGAR_PHOSPHATE = {"P", "OP1", "OP2"}


def _place(a: np.ndarray, b: np.ndarray, c: np.ndarray, bond: float, angle: float, dihedral: float) -> np.ndarray:
    """Position of d bonded to c with |cd| = bond, angle b-c-d and dihedral a-b-c-d (degrees)."""
    bc = (c - b) / np.linalg.norm(c - b)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    theta, phi = np.radians(angle), np.radians(dihedral)
    local = np.array([-bond * np.cos(theta), bond * np.sin(theta) * np.cos(phi), bond * np.sin(theta) * np.sin(phi)])
    return c + local[0] * bc + local[1] * m + local[2] * n


def _residues_by_chain(atoms: Atoms) -> dict[int, list[int]]:
    """Chain index -> its residue indices in 5'->3' order (ions excluded)."""
    chains: dict[int, list[int]] = {}
    for residue, chain, name in zip(atoms.info["residue_index"], atoms.info["chain_index"], atoms.info["residue_name"]):
        if name in ("NA", "CL", "K", "HOH"):
            continue
        residues = chains.setdefault(int(chain), [])
        if int(residue) not in residues:
            residues.append(int(residue))
    return chains


def cap_hydrogens(atoms: Atoms, kept: Sequence[int], name: str, protonate_phosphates: bool = True) -> Atoms:
    """Cut ``kept`` atoms out of ``atoms`` and cap every cut bond with hydrogen.

    Parameters
    ----------
    atoms:
        A frame carrying ``residue_index``, ``residue_name``, ``atom_name``,
        ``chain_index`` and ``bonds`` in ``info`` (see :mod:`qcell_nb.md`).
    kept:
        Atom indices of the fragment.
    name:
        Fragment name stored in ``info['name']``.
    protonate_phosphates:
        Put one H on OP1 of each phosphate (neutral fragment) instead of
        leaving it anionic.

    Returns
    -------
    ase.Atoms
        Positions in Angstrom, no cell; ``info`` has name, subset, charge,
        multiplicity (1), the per-atom topology arrays restricted to the
        fragment (cap hydrogens named ``HCAP``/``HOP1`` in the residue of their
        heavy atom) and ``bonds``.
    """
    kept = [int(i) for i in kept]
    kept_set = set(kept)
    info = atoms.info
    names = list(info["atom_name"])
    positions = atoms.get_positions()
    symbols = atoms.get_chemical_symbols()
    new_index = {old: new for new, old in enumerate(kept)}
    bonds = np.asarray(info["bonds"], dtype=np.int64).reshape(-1, 2)
    neighbours: dict[int, list[int]] = {}
    for a, b in bonds:
        neighbours.setdefault(int(a), []).append(int(b))
        neighbours.setdefault(int(b), []).append(int(a))
    out_symbols = [symbols[i] for i in kept]
    out_positions = [positions[i] for i in kept]
    out_names = [names[i] for i in kept]
    out_residue = [int(info["residue_index"][i]) for i in kept]
    out_resname = [str(info["residue_name"][i]) for i in kept]
    out_chain = [int(info["chain_index"][i]) for i in kept]
    out_bonds = [(new_index[int(a)], new_index[int(b)]) for a, b in bonds if int(a) in kept_set and int(b) in kept_set]

    def add_hydrogen(parent: int, xyz: np.ndarray, atom_name: str) -> None:
        out_symbols.append("H")
        out_positions.append(xyz)
        out_names.append(atom_name)
        out_residue.append(int(info["residue_index"][parent]))
        out_resname.append(str(info["residue_name"][parent]))
        out_chain.append(int(info["chain_index"][parent]))
        out_bonds.append((new_index[parent], len(out_symbols) - 1))

    for i in kept:
        for j in neighbours.get(i, []):
            if j in kept_set:
                continue
            if symbols[i] not in _CAP_LENGTH:
                raise ValueError(f"fragment {name!r}: cannot cap the cut bond {names[i]}-{names[j]} "
                                 f"({symbols[i]} has no cap length)")
            direction = positions[j] - positions[i]
            add_hydrogen(i, positions[i] + _CAP_LENGTH[symbols[i]] * direction / np.linalg.norm(direction), "HCAP")
    n_phosphates = 0
    for i in kept:
        if names[i] != "P":
            continue
        n_phosphates += 1
        if protonate_phosphates:
            by_name = {names[j]: j for j in neighbours[i]}
            o5, op1 = by_name["O5'"], by_name["OP1"]
            add_hydrogen(op1, _place(positions[o5], positions[i], positions[op1], _OH_LENGTH, 109.5, 180.0), "HOP1")
    fragment = Atoms(symbols=out_symbols, positions=np.asarray(out_positions))
    charge = 0 if protonate_phosphates else -n_phosphates
    n_electrons = int(fragment.get_atomic_numbers().sum()) - charge
    if n_electrons % 2:
        raise ValueError(f"fragment {name!r} has {n_electrons} electrons at charge {charge}: not closed-shell")
    fragment.info.update(
        name=name, subset="nucleic_acids", charge=charge, multiplicity=1, n_phosphates=n_phosphates,
        residue_index=np.asarray(out_residue, dtype=np.int64), residue_name=out_resname, atom_name=out_names,
        chain_index=np.asarray(out_chain, dtype=np.int64), bonds=np.asarray(out_bonds, dtype=np.int64).reshape(-1, 2),
    )
    return fragment


def _strand_segment(atoms: Atoms, residues: list[int], start: int, length: int) -> list[int]:
    """Atoms of ``length`` nucleotides from position ``start`` of a strand, plus the previous O3'.

    The previous nucleotide's O3' keeps the first phosphate a phosphodiester
    (its cap H then sits where C3' was).
    """
    wanted = set(residues[start:start + length])
    residue_index = atoms.info["residue_index"]
    names = atoms.info["atom_name"]
    kept = [i for i, r in enumerate(residue_index) if int(r) in wanted]
    if start > 0:
        previous = residues[start - 1]
        kept += [i for i, r in enumerate(residue_index) if int(r) == previous and names[i] == "O3'"]
    return sorted(kept)


def _base_atoms(atoms: Atoms, residue: int) -> list[int]:
    """Base atoms of one nucleotide: names without a prime, phosphate excluded."""
    names = atoms.info["atom_name"]
    return [i for i, r in enumerate(atoms.info["residue_index"])
            if int(r) == residue and "'" not in names[i] and names[i] not in _SUGAR_PHOSPHATE]


def _label(atoms: Atoms, residue: int) -> str:
    """Residue label like ``DG3`` (name without D, 1-based position in its chain)."""
    chains = _residues_by_chain(atoms)
    for chain, residues in chains.items():
        if residue in residues:
            index = list(atoms.info["residue_index"]).index(residue)
            return f"{str(atoms.info['residue_name'][index]).lstrip('D')}{residues.index(residue) + 1}"
    raise ValueError(f"residue {residue} not in a nucleic-acid chain")


def fragments_of_frame(frame: Atoms, kinds: Iterable[str] = FRAGMENT_KINDS, max_per_frame: int = 1,
                       rng: np.random.Generator | None = None, protonate_phosphates: bool = True) -> list[Atoms]:
    """Fragments of one MD frame (duplex or RNA strand); see the module docstring for the kinds.

    ``trimer`` and ``rna_trimer`` take the central window; base-pair dimers are
    drawn (without replacement, ``rng``) from the interior base pairs, the
    terminal ones excluded because they fray. At most ``max_per_frame`` per kind.
    """
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in FRAGMENT_KINDS]
    if unknown:
        raise ValueError(f"unknown fragment kind(s) {unknown}; known kinds: {', '.join(FRAGMENT_KINDS)}")
    rng = rng if rng is not None else np.random.default_rng(0)
    chains = _residues_by_chain(frame)
    parent = structure_id(frame)
    label = frame.info.get("name", frame.get_chemical_formula())
    duplex = len(chains) >= 2
    strand_i = chains[min(chains)]
    n = len(strand_i)
    out: list[Atoms] = []

    def finish(fragment: Atoms, kind: str) -> None:
        fragment.info.update(parent_id=parent, fragment=kind, source=label,
                             form=frame.info.get("form", ""), frame=int(frame.info.get("frame", 0)))
        out.append(fragment)

    centre = max(0, n // 2 - 1)
    if duplex:
        strand_ii = chains[sorted(chains)[1]]
        partner = {strand_i[k]: strand_ii[n - 1 - k] for k in range(n)}
        interior = list(range(1, n - 1)) if n > 2 else list(range(n))
        if "trimer" in kinds and n >= 3:
            kept = _strand_segment(frame, strand_i, centre, 3) + _strand_segment(frame, strand_ii, n - centre - 3, 3)
            name = f"{label} trimer {_label(frame, strand_i[centre])}-{_label(frame, strand_i[centre + 2])}"
            finish(cap_hydrogens(frame, kept, name, protonate_phosphates), "trimer")
        if "wc_pair" in kinds:
            for k in rng.permutation(interior)[:max_per_frame]:
                a, b = strand_i[k], partner[strand_i[k]]
                name = f"{label} WC pair {_label(frame, a)}:{_label(frame, b)}"
                finish(cap_hydrogens(frame, _base_atoms(frame, a) + _base_atoms(frame, b), name), "wc_pair")
        if "stacked_pair" in kinds and n >= 2:
            steps = [(strand, k) for strand in (strand_i, strand_ii) for k in range(1, n - 2)] or \
                [(strand_i, 0)]
            for choice in rng.permutation(len(steps))[:max_per_frame]:
                strand, k = steps[choice]
                a, b = strand[k], strand[k + 1]
                name = f"{label} stacked pair {_label(frame, a)}/{_label(frame, b)}"
                finish(cap_hydrogens(frame, _base_atoms(frame, a) + _base_atoms(frame, b), name), "stacked_pair")
    elif "rna_trimer" in kinds and n >= 3:
        kept = _strand_segment(frame, strand_i, centre, 3)
        name = f"{label} trimer {_label(frame, strand_i[centre])}-{_label(frame, strand_i[centre + 2])}"
        finish(cap_hydrogens(frame, kept, name, protonate_phosphates), "rna_trimer")
    return out


def extract_fragments(frames: Sequence[Atoms], kinds: Iterable[str] = FRAGMENT_KINDS, max_per_frame: int = 1,
                      seed: int = 0, protonate_phosphates: bool = True) -> list[Atoms]:
    """Stage 03: fragments of every frame (duplex frames give trimers and dimers, RNA frames RNA trimers).

    Parameters
    ----------
    frames:
        Stage-02 frames with their topology in ``info``.
    kinds:
        Subset of :data:`FRAGMENT_KINDS`.
    max_per_frame:
        Most base-pair dimers of each kind per frame (trimers: one per frame).
    seed:
        Seeds the choice of dimers; frame k uses ``default_rng([seed, k])``.
    protonate_phosphates:
        Neutral (protonated) phosphates, or anionic ones.

    Returns
    -------
    list of ase.Atoms
        Closed-shell fragments with ``charge``, ``multiplicity``, ``parent_id``
        (structure id of the frame), ``fragment`` (the kind) and ``name``.
    """
    kinds = tuple(kinds)
    fragments = []
    for k, frame in enumerate(frames):
        rng = np.random.default_rng([int(seed), k])
        fragments += fragments_of_frame(frame, kinds, max_per_frame, rng, protonate_phosphates)
    return fragments
