"""Representative conformers by k-means clustering on torsion angles (stage 03).

A conformer is described by torsion angles, each mapped to ``(sin, cos)`` so
that -179° and 179° are neighbours. Per block (structures sharing
``info['name']``), k-means picks ``k`` clusters and the member nearest each
centre represents it. Which torsions depends on the block:

- a monosaccharide (no glycosidic bond): its ring torsions (pucker) and
  exocyclic torsions (CH2OH rotamers, hydroxyl H orientations, amide groups),
  :func:`dihedral_indices`;
- a disaccharide or glycopeptide: the glycosidic torsions of
  :func:`glycosidic_dihedral_indices` (phi, psi, omega for 1-6 links; for a
  glycopeptide also the residue's chi1, chi2 and backbone phi/psi), which set
  the relative placement of the two parts.

Explicit atom indices override both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from ase import Atoms
from rdkit import Chem

from .blocks.carbohydrates import sugar_residues
from .figures import finish_figure

__all__ = ["block_dihedral_indices", "dihedral_features", "dihedral_indices", "glycosidic_dihedral_indices",
           "limit_fragments", "plot_dihedral_coverage", "plot_glycosidic_coverage", "select_representatives"]

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


def _parse_with_h(structure: Atoms | str) -> Chem.Mol:
    smiles = structure if isinstance(structure, str) else structure.info.get("smiles")
    if not smiles:
        raise ValueError(f"structure {structure.info.get('name', '?')!r} has no info['smiles']")
    parsed = Chem.MolFromSmiles(smiles)
    if parsed is None:
        raise ValueError(f"unparsable SMILES {smiles!r}")
    return Chem.AddHs(parsed)


#: Capped amino-acid backbone C(=O)-N-CA(H)-C(=O)-N: Ace C, O, N, CA, C, O, N.
_BACKBONE = Chem.MolFromSmarts("[CX3](=O)[NX3][CX4H1][CX3](=O)[NX3]")


def _residue_torsions(mol: Chem.Mol, linked: int) -> dict[str, tuple[int, int, int, int]]:
    """chi1, chi2 (Asn) and backbone phi/psi of the residue whose side chain holds atom ``linked``."""
    torsions: dict[str, tuple[int, int, int, int]] = {}
    for c_prev, _, n, ca, c, _, n_next in mol.GetSubstructMatches(_BACKBONE):
        beta = [a for a in mol.GetAtomWithIdx(ca).GetNeighbors() if a.GetIdx() not in (n, c) and a.GetAtomicNum() > 1]
        if not beta:
            continue
        cb = beta[0]
        gammas = sorted((a for a in cb.GetNeighbors() if a.GetIdx() != ca and a.GetAtomicNum() > 1),
                        key=lambda a: (a.GetIdx() != linked, -a.GetAtomicNum(), a.GetIdx()))
        if not gammas:
            continue
        gamma = gammas[0]
        if gamma.GetIdx() != linked and not mol.GetBondBetweenAtoms(gamma.GetIdx(), linked):
            continue  # the sugar is not on this residue
        torsions["chi1"] = (n, ca, cb.GetIdx(), gamma.GetIdx())
        if gamma.GetIdx() != linked:
            torsions["chi2"] = (ca, cb.GetIdx(), gamma.GetIdx(), linked)
        torsions["phi_bb"] = (c_prev, n, ca, c)
        torsions["psi_bb"] = (n, ca, c, n_next)
        break
    return torsions


def glycosidic_dihedral_indices(structure: Atoms | str) -> dict[str, tuple[int, int, int, int]]:
    """Glycosidic torsions of a disaccharide or glycopeptide, by name.

    Definitions (IUPAC-IUBMB style, heavy atoms only; donor atoms unprimed,
    acceptor atoms primed, X the glycosidic O or N, x the acceptor position):

    - ``phi = O5-C1-X-C'x`` (``O6-C2-X-C'x`` for a ketose or sialic-acid donor:
      the donor's ring O and anomeric carbon);
    - ``psi = C1-X-C'x-C'(x-1)``; for x = 1 (a 1-1 link) ``C'(x-1)`` is the
      acceptor's ring O, for a ketose acceptor at C2 (sucrose) its C1;
    - ``omega = O5'-C5'-C6'-O6'`` for a link to an exocyclic CH2 (1-6);
    - glycopeptides: ``phi = O5-C1-ND2-CG`` / ``O5-C1-OG-CB``,
      ``psi = C1-ND2-CG-CB`` / ``C1-OG-CB-CA``, plus the residue's
      ``chi1 = N-CA-CB-XG``, ``chi2 = CA-CB-CG-ND2`` (Asn) and backbone
      ``phi_bb = C-N-CA-C``, ``psi_bb = N-CA-C-N``.

    When both ends of the link are anomeric (trehalose, sucrose) the donor is
    the aldose end (its anomeric carbon has an H), else the lower atom index.
    With several links the names get suffixes ``_1``, ``_2``, ... in order of
    the donor's anomeric carbon.

    Parameters
    ----------
    structure:
        Atoms with ``info['smiles']`` (the atom-order contract of
        :mod:`qcell_nb.structures`) or a SMILES string.

    Returns
    -------
    dict
        Name -> atom indices ``(a, b, c, d)`` into the ``AddHs`` atom order;
        empty for a molecule without a glycosidic bond.

    Raises
    ------
    ValueError
        If there is no SMILES or it cannot be parsed.
    """
    mol = _parse_with_h(structure)
    residues = sugar_residues(mol)
    position = {atom: (r, number) for r, numbering in enumerate(residues) for number, atom in numbering.items()}
    ring_atoms = {atom for atom in range(mol.GetNumAtoms()) if mol.GetAtomWithIdx(atom).IsInRing()}
    links: dict[int, list[tuple[bool, int, int, int]]] = {}
    for r, numbering in enumerate(residues):
        anomeric = numbering[1] if mol.GetBondBetweenAtoms(numbering[0], numbering[1]) else numbering[2]
        for linker in mol.GetAtomWithIdx(anomeric).GetNeighbors():
            heavy = [a.GetIdx() for a in linker.GetNeighbors() if a.GetAtomicNum() > 1 and a.GetIdx() != anomeric]
            if linker.GetSymbol() in ("O", "N") and linker.GetIdx() not in ring_atoms and len(heavy) == 1:
                is_ketose = mol.GetAtomWithIdx(anomeric).GetTotalNumHs(includeNeighbors=True) == 0
                links.setdefault(linker.GetIdx(), []).append((is_ketose, anomeric, r, heavy[0]))
    chosen = sorted(min(candidates) for candidates in links.values())
    chosen.sort(key=lambda link: link[1])
    torsions: dict[str, tuple[int, int, int, int]] = {}
    for k, (_, anomeric, r, far) in enumerate(chosen):
        linker = next(x for x, candidates in links.items() if any(c[1] == anomeric for c in candidates))
        suffix = "" if len(chosen) == 1 else f"_{k + 1}"
        torsions["phi" + suffix] = (residues[r][0], anomeric, linker, far)
        if far in position:
            r_acceptor, number = position[far]
            numbering = residues[r_acceptor]
            torsions["psi" + suffix] = (anomeric, linker, far, numbering[number - 1])
            previous = numbering[number - 1]
            if far not in ring_atoms and mol.GetBondBetweenAtoms(previous, numbering[0]):
                torsions["omega" + suffix] = (numbering[0], previous, far, linker)
        else:
            neighbours = sorted((a for a in mol.GetAtomWithIdx(far).GetNeighbors()
                                 if a.GetAtomicNum() > 1 and a.GetIdx() != linker),
                                key=lambda a: (-sum(n.GetAtomicNum() > 1 for n in a.GetNeighbors()), a.GetIdx()))
            if neighbours:  # a methyl aglycone has no psi
                torsions["psi" + suffix] = (anomeric, linker, far, neighbours[0].GetIdx())
            torsions.update({name + suffix: value for name, value in _residue_torsions(mol, linker).items()})
    return torsions


def block_dihedral_indices(structure: Atoms | str, torsions: str = "auto") -> np.ndarray:
    """Torsions used to cluster one block's conformers.

    Parameters
    ----------
    structure:
        Atoms with ``info['smiles']`` or a SMILES string.
    torsions:
        ``"auto"``: glycosidic torsions when the molecule has a glycosidic
        bond, else :func:`dihedral_indices`; ``"all"``: always
        :func:`dihedral_indices`; ``"glycosidic"``: always the glycosidic ones.

    Returns
    -------
    numpy.ndarray, shape (n_dihedrals, 4), int

    Raises
    ------
    ValueError
        Unknown ``torsions`` mode, missing SMILES, or ``"glycosidic"`` for a
        molecule without a glycosidic bond.
    """
    if torsions not in ("auto", "all", "glycosidic"):
        raise ValueError(f"torsions must be 'auto', 'all' or 'glycosidic', got {torsions!r}")
    smiles = structure if isinstance(structure, str) else structure.info.get("smiles")
    if not smiles:
        raise ValueError(f"structure {structure.info.get('name', '?')!r} has no info['smiles']; "
                         "pass the torsion indices explicitly")
    glycosidic = {} if torsions == "all" else glycosidic_dihedral_indices(smiles)
    if torsions == "glycosidic" and not glycosidic:
        raise ValueError(f"SMILES {smiles!r} has no glycosidic bond")
    if glycosidic:
        return np.asarray(list(glycosidic.values()), dtype=int).reshape(-1, 4)
    return dihedral_indices(smiles)


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
                           indices: IndexSpec | Mapping[str, IndexSpec] | None = None,
                           torsions: str = "auto") -> list[Atoms]:
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
        Torsions to cluster on instead of the default: one array
        (n_dihedrals, 4) for every block, or a mapping from block name to one
        (blocks not in it use the default).
    torsions:
        Default torsions per block, see :func:`block_dihedral_indices`:
        ``"auto"`` (glycosidic torsions for disaccharides and glycopeptides,
        ring and exocyclic torsions otherwise), ``"all"`` or ``"glycosidic"``.

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
    if torsions not in ("auto", "all", "glycosidic"):
        raise ValueError(f"torsions must be 'auto', 'all' or 'glycosidic', got {torsions!r}")
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
        if block_indices is None:
            block_indices = block_dihedral_indices(group[0], torsions)
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

    One panel per block (one column up to four blocks, three columns beyond);
    x is the torsion (index into :func:`dihedral_indices`: ring, exocyclic and
    glycosidic torsions alike), y its angle in degrees. Saved to ``path`` if
    given; returns the figure.
    """
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(atoms.info["name"] for atoms in candidates))
    columns = 1 if len(names) <= 4 else 3
    rows = max(1, -(-len(names) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(7 * columns, 2.2 * rows), squeeze=False)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.ravel(), names):
        for group, style in (([a for a in candidates if a.info["name"] == name], dict(c="0.6", s=10)),
                             ([a for a in selected if a.info["name"] == name], dict(c="tab:red", s=22))):
            if not group:
                continue
            table = dihedral_indices(group[0].info["smiles"])
            angles = np.array([atoms.get_dihedrals(table) for atoms in group]).reshape(len(group), len(table))
            angles = (angles + 180.0) % 360.0 - 180.0
            columns_index = np.broadcast_to(np.arange(len(table)), angles.shape)
            ax.scatter(columns_index.ravel(), angles.ravel(), **style)
        ax.set_ylim(-180, 180)
        ax.set_yticks([-180, -90, 0, 90, 180])
        ax.set_ylabel("angle (°)")
        ax.set_title(name, fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("torsion (index into dihedral_indices; ring torsions sit near ±60°)")
    return finish_figure(fig, path, dpi=120 if len(names) <= 12 else 72)


def plot_glycosidic_coverage(candidates: Sequence[Atoms], selected: Sequence[Atoms], path=None):
    """phi/psi map per disaccharide or glycopeptide: candidates (grey), selected (red).

    One panel per block that has a glycosidic bond (:func:`glycosidic_dihedral_indices`;
    the first link's phi and psi), angles in degrees in [-180, 180). Blocks
    without one are skipped; with none at all the figure says so. Saved to
    ``path`` if given; returns the figure.
    """
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(atoms.info["name"] for atoms in candidates))
    tables = {}
    for name in names:
        first = next(atoms for atoms in candidates if atoms.info["name"] == name)
        torsions = glycosidic_dihedral_indices(first)
        if torsions:
            keys = [key for key in torsions if key.startswith(("phi", "psi")) and not key.endswith("_bb")][:2]
            tables[name] = (keys, np.asarray([torsions[key] for key in keys]))
    columns = min(3, max(1, len(tables)))
    rows = max(1, -(-len(tables) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.ravel()[len(tables):]:
        ax.axis("off")
    if not tables:
        axes[0, 0].text(0.5, 0.5, "no disaccharides or glycopeptides", ha="center", va="center")
    for ax, (name, (keys, table)) in zip(axes.ravel(), tables.items()):
        for group, style in (([a for a in candidates if a.info["name"] == name], dict(c="0.6", s=12)),
                             ([a for a in selected if a.info["name"] == name], dict(c="tab:red", s=30))):
            if group:
                angles = (np.array([atoms.get_dihedrals(table) for atoms in group]) + 180.0) % 360.0 - 180.0
                ax.scatter(angles[:, 0], angles[:, 1], **style)
        ax.set_xlim(-180, 180)
        ax.set_ylim(-180, 180)
        ax.set_xticks([-180, -90, 0, 90, 180])
        ax.set_yticks([-180, -90, 0, 90, 180])
        ax.set_xlabel(f"{keys[0]} (°)")
        ax.set_ylabel(f"{keys[1]} (°)")
        ax.set_title(name, fontsize=8)
    return finish_figure(fig, path)


def limit_fragments(fragments: Sequence[Atoms], max_atoms: int | None = None, max_per_subset: int | None = None,
                    seed: int = 0, subset_caps: dict[str, int] | None = None) -> list[Atoms]:
    """The fragments that go on to the quantum-chemistry stages.

    Keeps fragments of at most ``max_atoms`` atoms, then at most ``max_per_subset`` of each QCell
    subset (``subset_caps`` overrides it per subset), chosen at random under ``seed`` (``None``:
    no limit). The input order is kept, so the result is deterministic and reads like the input.
    """
    for name, value in (("max_atoms", max_atoms), ("max_per_subset", max_per_subset)):
        if value is not None and value < 1:
            raise ValueError(f"{name}={value!r}: must be a positive integer or None")
    small = [i for i, atoms in enumerate(fragments) if max_atoms is None or len(atoms) <= max_atoms]
    if max_per_subset is None and not subset_caps:
        return [fragments[i] for i in small]
    rng = np.random.default_rng(seed)
    by_subset: dict[str, list[int]] = {}
    for i in small:
        by_subset.setdefault(str(fragments[i].info.get("subset", "")), []).append(i)
    kept = set()
    for subset in sorted(by_subset):
        members = by_subset[subset]
        cap = (subset_caps or {}).get(subset, max_per_subset)
        chosen = members if cap is None or len(members) <= cap else rng.choice(members, cap, replace=False)
        kept.update(int(i) for i in chosen)
    return [fragments[i] for i in sorted(kept)]
