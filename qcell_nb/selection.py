"""Representative conformers by k-means clustering on torsion angles (stage 03).

A conformer is described by its ring torsions (pucker) and exocyclic torsions
(CH2OH rotamers, hydroxyl H orientations, amide groups), each mapped to
``(sin, cos)`` so that -179° and 179° are neighbours. Per block (structures
sharing ``info['name']``), k-means picks ``k`` clusters and the member nearest
each centre represents it. For disaccharides, the glycosidic phi/psi (or any
other) torsions can be passed explicitly as atom indices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from ase import Atoms
from rdkit import Chem

__all__ = ["dihedral_features", "dihedral_indices", "plot_dihedral_coverage", "select_representatives"]

#: k-means restarts; fixed so a seed fully determines the selection.
N_INIT = 10

IndexSpec = np.ndarray | Sequence[Sequence[int]]


def _rank(mol: Chem.Mol, atom: Chem.Atom, exclude: int) -> list[int]:
    """Neighbours of ``atom`` except ``exclude`` usable as a torsion end, best first.

    Heavy neighbours first, heavier elements first (so the CH2OH torsion of a
    pyranose is O5-C5-C6-O6, the usual omega), lowest index on ties. A lone H
    counts only if it is the atom's single other neighbour (O-H, S-H): the
    position of one H on a CH3 or NH2 is arbitrary up to symmetry, so such
    rotors carry no conformational information.
    """
    others = [n for n in atom.GetNeighbors() if n.GetIdx() != exclude]
    heavy = sorted((n for n in others if n.GetAtomicNum() > 1), key=lambda n: (-n.GetAtomicNum(), n.GetIdx()))
    if heavy:
        return [n.GetIdx() for n in heavy]
    if len(others) == 1:
        return [others[0].GetIdx()]
    return []


def dihedral_indices(smiles: str) -> np.ndarray:
    """Torsions describing the conformation of the molecule ``smiles``.

    One torsion per ring bond (endocyclic, within the smallest ring holding
    the bond) and per non-ring single bond between heavy atoms whose two ends
    both have another neighbour; for a hydroxyl the far end is its H atom.

    Parameters
    ----------
    smiles:
        SMILES whose ``AddHs`` atom order is that of the structures (the
        ``info['smiles']`` convention of :mod:`qcell_nb.structures`).

    Returns
    -------
    numpy.ndarray, shape (n_dihedrals, 4), int
        Atom indices ``a, b, c, d`` of each torsion about bond ``b-c``, in
        bond order of the molecule.

    Raises
    ------
    ValueError
        If ``smiles`` cannot be parsed.
    """
    parsed = Chem.MolFromSmiles(smiles)
    if parsed is None:
        raise ValueError(f"unparsable SMILES {smiles!r}")
    mol = Chem.AddHs(parsed)
    rings = sorted(mol.GetRingInfo().AtomRings(), key=len)
    torsions: list[tuple[int, int, int, int]] = []
    for bond in mol.GetBonds():
        b, c = bond.GetBeginAtom(), bond.GetEndAtom()
        if b.GetAtomicNum() == 1 or c.GetAtomicNum() == 1:
            continue
        if bond.IsInRing():
            ring = next(r for r in rings if b.GetIdx() in r and c.GetIdx() in r
                        and abs(r.index(b.GetIdx()) - r.index(c.GetIdx())) in (1, len(r) - 1))
            size = len(ring)
            i, j = ring.index(b.GetIdx()), ring.index(c.GetIdx())
            # Walk the ring outwards from the bond: a precedes b, d follows c.
            step = 1 if (j - i) % size == 1 else -1
            a, d = ring[(i - step) % size], ring[(j + step) % size]
            torsions.append((a, b.GetIdx(), c.GetIdx(), d))
            continue
        if bond.GetBondType() != Chem.BondType.SINGLE:
            continue
        ends_b, ends_c = _rank(mol, b, c.GetIdx()), _rank(mol, c, b.GetIdx())
        if ends_b and ends_c:
            torsions.append((ends_b[0], b.GetIdx(), c.GetIdx(), ends_c[0]))
    return np.asarray(torsions, dtype=int).reshape(-1, 4)


def dihedral_features(atoms_list: Sequence[Atoms], indices: IndexSpec | None = None) -> np.ndarray:
    """``(sin, cos)`` of torsion angles for each structure.

    Parameters
    ----------
    atoms_list:
        Structures of one molecule (same atom order).
    indices:
        Torsions as atom indices, shape (n_dihedrals, 4); default
        :func:`dihedral_indices` of the first structure's ``info['smiles']``.

    Returns
    -------
    numpy.ndarray, shape (n_structures, 2 * n_dihedrals)
        Column ``2 i`` is sin, column ``2 i + 1`` cos of torsion ``i``.

    Raises
    ------
    ValueError
        If the list is empty, no indices are given and there is no SMILES, or
        an index is out of range for a structure.
    """
    if len(atoms_list) == 0:
        raise ValueError("dihedral_features needs at least one structure")
    if indices is None:
        smiles = atoms_list[0].info.get("smiles")
        if not smiles:
            raise ValueError(f"structure {atoms_list[0].info.get('name', '?')!r} has no info['smiles']; "
                             "pass the torsion indices explicitly")
        indices = dihedral_indices(smiles)
    table = np.asarray(indices, dtype=int).reshape(-1, 4)
    features = np.empty((len(atoms_list), 2 * len(table)))
    for row, atoms in enumerate(atoms_list):
        if len(table) and (table.min() < 0 or table.max() >= len(atoms)):
            raise ValueError(f"torsion indices out of range for structure {atoms.info.get('name', row)!r} "
                             f"with {len(atoms)} atoms")
        angles = np.radians(atoms.get_dihedrals(table)) if len(table) else np.empty(0)
        features[row, 0::2] = np.sin(angles)
        features[row, 1::2] = np.cos(angles)
    return features


def _energy(atoms: Atoms) -> float:
    return float(atoms.info.get("xtb_energy", 0.0))


def select_representatives(structures: Sequence[Atoms], n_per_block: int, seed: int = 0,
                           indices: IndexSpec | Mapping[str, IndexSpec] | None = None) -> list[Atoms]:
    """Pick up to ``n_per_block`` representative conformers of each block.

    Parameters
    ----------
    structures:
        Conformers with ``info['name']`` (the block) and ``info['smiles']``
        (unless ``indices`` is given); ``info['xtb_energy']`` breaks ties.
    n_per_block:
        Clusters per block; ``k = min(n_per_block, n_block)``.
    seed:
        ``random_state`` of k-means (with a fixed ``n_init``); the same seed
        gives the same selection.
    indices:
        Torsions to cluster on instead of :func:`dihedral_indices`: one array
        (n_dihedrals, 4) for every block, or a mapping from block name to one
        (blocks not in it use the default).

    Returns
    -------
    list of ase.Atoms
        Copies of the chosen structures, block by block in order of first
        appearance, each block lowest energy first. Each carries
        ``cluster`` (0 .. k-1, in the same order) and ``cluster_size``
        (members the representative stands for). Fewer than ``k`` come back
        only when a block has fewer distinct torsion vectors than ``k``.

    Raises
    ------
    ValueError
        If ``n_per_block < 1`` or a structure has no ``info['name']``.
    """
    if n_per_block < 1:
        raise ValueError(f"n_per_block must be at least 1, got {n_per_block}")
    blocks: dict[str, list[int]] = {}
    for position, atoms in enumerate(structures):
        name = atoms.info.get("name")
        if name is None:
            raise ValueError(f"structure {position} ({atoms.get_chemical_formula()}) has no info['name']")
        blocks.setdefault(name, []).append(position)

    selected: list[Atoms] = []
    for name, members in blocks.items():
        group = [structures[i] for i in members]
        block_indices = indices.get(name) if isinstance(indices, Mapping) else indices
        features = dihedral_features(group, block_indices)
        energies = np.array([_energy(atoms) for atoms in group])
        k = min(n_per_block, len(group))
        if k == len(group):
            labels, centres = np.arange(k), features
        else:
            from sklearn.cluster import KMeans

            model = KMeans(n_clusters=k, random_state=seed, n_init=N_INIT).fit(features)
            labels, centres = model.labels_, model.cluster_centers_
        picks = []
        for cluster in range(len(centres)):
            inside = np.flatnonzero(labels == cluster)
            if inside.size == 0:  # k-means leaves a cluster empty only for duplicate points
                continue
            distance = np.linalg.norm(features[inside] - centres[cluster], axis=1)
            # Nearest to the centre; near-ties (1e-8 in sin/cos) go to the lower energy.
            order = sorted(range(inside.size), key=lambda j: (round(float(distance[j]), 8), energies[inside[j]]))
            best = int(inside[order[0]])
            picks.append((energies[best], best, inside.size))
        for rank, (_, best, size) in enumerate(sorted(picks)):
            chosen = group[best].copy()
            chosen.info = dict(group[best].info)
            chosen.info.update(cluster=rank, cluster_size=int(size))
            selected.append(chosen)
    return selected


def plot_dihedral_coverage(candidates: Sequence[Atoms], selected: Sequence[Atoms], path=None):
    """Torsion angles of every candidate (grey) and of the selected representatives (red), per block.

    One panel per block; x is the torsion (index into :func:`dihedral_indices`),
    y its angle in degrees. Saved to ``path`` if given; returns the figure.
    """
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(atoms.info["name"] for atoms in candidates))
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.2 * len(names)), squeeze=False, sharex=True)
    for ax, name in zip(axes[:, 0], names):
        for group, style in (([a for a in candidates if a.info["name"] == name], dict(c="0.6", s=10)),
                             ([a for a in selected if a.info["name"] == name], dict(c="tab:red", s=22))):
            if not group:
                continue
            table = dihedral_indices(group[0].info["smiles"])
            angles = np.array([atoms.get_dihedrals(table) for atoms in group])
            angles = (angles + 180.0) % 360.0 - 180.0
            columns = np.broadcast_to(np.arange(len(table)), angles.shape)
            ax.scatter(columns.ravel(), angles.ravel(), **style)
        ax.set_ylim(-180, 180)
        ax.set_yticks([-180, -90, 0, 90, 180])
        ax.set_ylabel("angle (°)")
        ax.set_title(name, fontsize=9)
    axes[-1, 0].set_xlabel("torsion (index into dihedral_indices; ring torsions sit near ±60°)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
