"""Lipid building blocks, a bilayer patch sampled with OpenMM, and fatty-acid fragments.

Stages 01-03 for the ``lipids`` subset:

1. :func:`build_lipids` - POPC, POPE, POPG, POPS and cholesterol from isomeric SMILES, each atom
   named after the force-field residue template (graph isomorphism), in an extended, membrane-like
   conformation (head up along +z).
2. :func:`assemble_bilayer` (seeded lattice placement of the rigid stage-01 conformers, water and
   Na+ counter-ions) and :func:`sample_bilayer` (OpenMM through :mod:`qcell_nb.md`, NPT with the
   membrane barostat by default) - frames of a small hydrated, neutralised bilayer patch.
3. :func:`select_fragments` - monomers, dimers and trimers of lipid units chosen by geometric
   proximity; a unit is a whole lipid molecule (``unit="lipid"``, the paper's 125-400 atom
   fragments) or one acyl chain cut at its ester oxygen and capped into a fatty acid
   (``unit="acyl"``, optionally truncated to a few carbons for small smoke-test fragments).

Force field: Amber Lipid21 (``amber19/lipid21.xml``) with TIP3P water and its ions
(``amber19/tip3p.xml``), both shipped with OpenMM. Lipid21 is the current Amber lipid force field
(Dickson et al., JCTC 2022), it succeeds Lipid17, runs tensionless NPT bilayers, and OpenMM's
conversion holds each lipid as ONE residue (``POPC``, ``POPE``, ``POPG``, ``POPS``, ``CHL1``), so
a molecule built from SMILES maps onto exactly one template. Amber is also ~14x faster than
CHARMM36 on the CPU platform.

Stereochemistry (checked in ``tests/test_lipids.py`` with RDKit's CIP labeller on the template atom
names): natural sn-3 phospholipids, glycerol C2 = R; oleoyl cis-9 (Z); POPG head glycerol
1'-sn (C2' S; commercial POPG is often racemic there); POPS head L-serine (S); cholesterol
3S,8S,9S,10R,13R,14S,17R,20R. Charges: POPC, POPE 0 (zwitterions), POPG -1, POPS -1,
cholesterol 0.

Atom names (lipid21 / CHARMM convention): the sn-2 chain is ``C21``..``C2n`` (ester oxygen
``O21``), the sn-1 chain ``C31``..``C3n`` (``O31``), glycerol ``C1``-``C2``-``C3``, phosphorus ``P``.
"""

from __future__ import annotations

import functools
import os
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from ase.neighborlist import neighbor_list
from rdkit import Chem
from rdkit.Chem import AllChem

from ..figures import finish_figure
from ..structures import structure_id
from .carbohydrates import mol_with_geometry, molecule_from_smiles

__all__ = [
    "FORCEFIELD_FILES",
    "FRAGMENT_KINDS",
    "LIPIDS",
    "LipidSpec",
    "assemble_bilayer",
    "build_charge",
    "build_lipid",
    "build_lipids",
    "default_composition",
    "lipid_forcefield",
    "lipid_system",
    "plot_radius_of_gyration",
    "radius_of_gyration",
    "sample_bilayer",
    "select_fragments",
    "template_atom_names",
]

#: OpenMM force-field files for the bilayer: Amber Lipid21 plus TIP3P water and ions.
FORCEFIELD_FILES = ("amber19/lipid21.xml", "amber19/tip3p.xml")

#: Fragment kinds: number of lipid units per fragment.
FRAGMENT_KINDS = {"monomer": 1, "dimer": 2, "trimer": 3}


@dataclass(frozen=True)
class LipidSpec:
    """One lipid of the library.

    Attributes:
        smiles: isomeric SMILES with every stereo element specified.
        residue: the Lipid21 residue template the molecule maps onto.
        head: template atom name of the head-group anchor (kept at the water side).
        tails: template atom names of the chain ends (kept at the bilayer centre).
        area: Å^2 per molecule in one leaflet, for sizing the leaflet grid.
    """

    smiles: str
    residue: str
    head: str
    tails: tuple[str, ...]
    area: float


_PALMITOYL_SN1 = "CCCCCCCCCCCCCCCC(=O)OC"
_OLEOYL_SN2 = "OC(=O)CCCCCCC/C=C\\CCCCCCCC"

#: Name -> lipid. Phospholipids: 1-palmitoyl (sn-1), 2-oleoyl (sn-2), sn-glycero-3-phospho-<head>.
LIPIDS: dict[str, LipidSpec] = {
    "POPC": LipidSpec(f"{_PALMITOYL_SN1}[C@H](COP(=O)([O-])OCC[N+](C)(C)C){_OLEOYL_SN2}",
                      "POPC", "P", ("C316", "C218"), 65.0),
    "POPE": LipidSpec(f"{_PALMITOYL_SN1}[C@H](COP(=O)([O-])OCC[NH3+]){_OLEOYL_SN2}",
                      "POPE", "P", ("C316", "C218"), 58.0),
    "POPG": LipidSpec(f"{_PALMITOYL_SN1}[C@H](COP(=O)([O-])OC[C@@H](O)CO){_OLEOYL_SN2}",
                      "POPG", "P", ("C316", "C218"), 65.0),
    "POPS": LipidSpec(f"{_PALMITOYL_SN1}[C@H](COP(=O)([O-])OC[C@H]([NH3+])C(=O)[O-]){_OLEOYL_SN2}",
                      "POPS", "P", ("C316", "C218"), 62.0),
    "cholesterol": LipidSpec("C[C@H](CCCC(C)C)[C@H]1CC[C@@H]2[C@@]1(CC[C@H]3[C@H]2CC=C4[C@@]3"
                             "(CC[C@@H](C4)O)C)C", "CHL1", "O3", ("C26", "C27"), 40.0),
}


def default_composition() -> dict[str, float]:
    """Mole fractions per leaflet of a mixed, mammalian-plasma-membrane-like patch."""
    return {"POPC": 0.4, "POPE": 0.2, "POPG": 0.1, "POPS": 0.1, "cholesterol": 0.2}


# --- force-field templates --------------------------------------------------------------------

@dataclass(frozen=True)
class _Template:
    names: tuple[str, ...]
    elements: tuple[str, ...]
    charges: tuple[float, ...]
    bonds: tuple[tuple[int, int], ...]

    @functools.cached_property
    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    @functools.cached_property
    def neighbours(self) -> tuple[tuple[int, ...], ...]:
        adjacent: list[list[int]] = [[] for _ in self.names]
        for a, b in self.bonds:
            adjacent[a].append(b)
            adjacent[b].append(a)
        return tuple(tuple(sorted(n)) for n in adjacent)


def _forcefield_path(relative: str) -> Path:
    from openmm import app
    return Path(app.__file__).parent / "data" / relative


@functools.lru_cache(maxsize=None)
def _templates() -> dict[str, _Template]:
    """Residue templates of Lipid21 read from OpenMM's ffxml: names, elements, charges, bonds."""
    root = ElementTree.parse(_forcefield_path(FORCEFIELD_FILES[0])).getroot()
    element_of = {t.get("name"): t.get("element") for t in root.find("AtomTypes")}
    templates = {}
    for residue in root.find("Residues"):
        atoms = residue.findall("Atom")
        names = tuple(a.get("name") for a in atoms)
        index = {name: i for i, name in enumerate(names)}
        bonds = tuple((index[b.get("atomName1")], index[b.get("atomName2")]) for b in residue.findall("Bond"))
        templates[residue.get("name")] = _Template(names, tuple(element_of[a.get("type")] for a in atoms),
                                                   tuple(float(a.get("charge")) for a in atoms), bonds)
    return templates


def _template(residue: str) -> _Template:
    templates = _templates()
    if residue not in templates:
        raise ValueError(f"no Lipid21 residue template {residue!r}")
    return templates[residue]


def lipid_forcefield():
    """OpenMM ``ForceField`` of :data:`FORCEFIELD_FILES` (Lipid21 + TIP3P water and ions)."""
    from openmm import app
    return app.ForceField(*FORCEFIELD_FILES)


def _bare_graph(elements: Sequence[str], bonds: Iterable[tuple[int, int]]) -> Chem.Mol:
    """An RDKit graph of elements and single bonds only: what isomorphism should compare."""
    graph = Chem.RWMol()
    for element in elements:
        atom = Chem.Atom(element)
        atom.SetNoImplicit(True)
        graph.AddAtom(atom)
    for a, b in bonds:
        graph.AddBond(int(a), int(b), Chem.BondType.SINGLE)
    graph = graph.GetMol()
    graph.UpdatePropertyCache(strict=False)
    Chem.FastFindRings(graph)
    return graph


def template_atom_names(mol: Chem.Mol, residue: str) -> list[str]:
    """Template atom name of every atom of ``mol`` (an RDKit molecule with explicit hydrogens).

    The molecule's graph (elements and connectivity, bond orders and charges ignored) is matched
    onto the Lipid21 residue template ``residue``; chemically equivalent atoms (methylene
    hydrogens, phosphate oxygens) get one of the equivalent names.

    Raises:
        ValueError: if the atom counts differ or the graphs are not isomorphic.
    """
    template = _template(residue)
    if mol.GetNumAtoms() != len(template.names):
        raise ValueError(f"molecule {Chem.MolToSmiles(Chem.RemoveHs(mol))!r} has {mol.GetNumAtoms()} atoms, "
                         f"Lipid21 residue {residue} has {len(template.names)}")
    query = _bare_graph(template.elements, template.bonds)
    target = _bare_graph([a.GetSymbol() for a in mol.GetAtoms()],
                         [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()])
    match = target.GetSubstructMatch(query)
    if len(match) != len(template.names):
        raise ValueError(f"molecule {Chem.MolToSmiles(Chem.RemoveHs(mol))!r} is not the Lipid21 residue "
                         f"{residue}: their bond graphs differ")
    names = [""] * len(match)
    for template_index, mol_index in enumerate(match):
        names[mol_index] = template.names[template_index]
    return names


# --- stage 01: building blocks ----------------------------------------------------------------

def _lipid_spec(name: str) -> LipidSpec:
    if name not in LIPIDS:
        raise ValueError(f"unknown lipid {name!r}; known lipids: {', '.join(LIPIDS)}")
    return LIPIDS[name]


#: Random staggered settings of the non-chain torsions tried by :func:`_extend`.
_SHAPE_TRIALS = 60
#: Four consecutive acyclic CH2/CH3 carbons: a chain torsion that is anti in an extended chain.
_CHAIN_TORSION = Chem.MolFromSmarts("[CH2,CH3;!R]-[CH2;!R]-[CH2;!R]-[CH2,CH3;!R]")
#: A rotatable acyclic single bond between two non-terminal heavy atoms, with a heavy neighbour each side.
_ROTATABLE = Chem.MolFromSmarts("[!#1]~[!#1;!D1]-&!@[!#1;!D1]~[!#1]")


def _shape_score(positions: np.ndarray, head: int, tails: Sequence[int], heavy: np.ndarray,
                 far_apart: np.ndarray) -> float:
    """Lower is more membrane-like: chain ends together and far from the head, no heavy-atom clash."""
    ends = positions[list(tails)]
    spread = np.linalg.norm(ends - ends.mean(axis=0), axis=1).sum()
    reach = np.linalg.norm(ends.mean(axis=0) - positions[head])
    xyz = positions[heavy]
    distances = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)[far_apart]
    clash = np.clip(3.0 - distances, 0.0, None).sum()
    return spread - reach + 10.0 * clash


def _extend(mol: Chem.Mol, names: list[str], spec: LipidSpec, label: str, seed: int) -> None:
    """Put the conformer of ``mol`` in place into a straight, membrane-like shape.

    Every CH2-CH2 chain torsion is set anti; the remaining rotatable bonds (glycerol, ester and
    head group) are searched over staggered values (60, 180, 300 deg; seeded random trials) for the
    shape with the chain ends together and far from the head anchor and no heavy-atom clash.
    A short MMFF94 relaxation with the chain torsions held anti tidies the result. A slim rigid
    body is what can stand up in a leaflet.
    """
    from rdkit.Chem import rdMolTransforms
    index = {atom_name: i for i, atom_name in enumerate(names)}
    head, tails = index[spec.head], [index[t] for t in spec.tails]
    conformer = mol.GetConformer()
    chain, seen = [], set()
    for torsion in mol.GetSubstructMatches(_CHAIN_TORSION):
        if frozenset(torsion[1:3]) not in seen:
            seen.add(frozenset(torsion[1:3]))
            chain.append(torsion)
            rdMolTransforms.SetDihedralDeg(conformer, *torsion, 180.0)
    search = []
    for torsion in mol.GetSubstructMatches(_ROTATABLE):
        if frozenset(torsion[1:3]) not in seen:
            seen.add(frozenset(torsion[1:3]))
            search.append(torsion)
    heavy = np.array([a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1])
    topological = Chem.GetDistanceMatrix(mol)[np.ix_(heavy, heavy)]
    far_apart = np.triu(topological > 3, k=1)
    rng = np.random.default_rng(seed)
    best = np.asarray(conformer.GetPositions())
    best_score = _shape_score(best, head, tails, heavy, far_apart)
    for _ in range(_SHAPE_TRIALS if search else 0):
        for torsion in search:
            rdMolTransforms.SetDihedralDeg(conformer, *torsion, float(rng.choice((60.0, 180.0, 300.0))))
        trial = np.asarray(conformer.GetPositions())
        score = _shape_score(trial, head, tails, heavy, far_apart)
        if score < best_score:
            best, best_score = trial, score
    for i, xyz in enumerate(best):
        conformer.SetAtomPosition(i, xyz.tolist())
    properties = AllChem.MMFFGetMoleculeProperties(mol)
    if properties is None:
        raise RuntimeError(f"MMFF94 has no parameters for {label}")
    field = AllChem.MMFFGetMoleculeForceField(mol, properties)
    for torsion in chain:
        field.MMFFAddTorsionConstraint(*torsion, False, 170.0, 190.0, 50.0)
    field.Minimize(maxIts=300)


def _orient(positions: np.ndarray, head: int, tails: Sequence[int]) -> np.ndarray:
    """Rotate so the tail-to-head vector points along +z; centre the geometric centre at 0."""
    centred = positions - positions.mean(axis=0)
    axis = centred[head] - centred[list(tails)].mean(axis=0)
    axis /= np.linalg.norm(axis)
    z = np.array([0.0, 0.0, 1.0])
    v = np.cross(axis, z)
    s, c = np.linalg.norm(v), float(axis @ z)
    if s < 1e-8:
        rotation = np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    else:
        k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]]) / s
        rotation = np.eye(3) + s * k + (1 - c) * k @ k
    return centred @ rotation.T


def build_lipid(name: str, seed: int = 0) -> Atoms:
    """3D structure of the lipid ``name`` from :data:`LIPIDS`, with its Lipid21 topology.

    Parameters
    ----------
    name:
        ``"POPC"``, ``"POPE"``, ``"POPG"``, ``"POPS"`` or ``"cholesterol"``.
    seed:
        Seed of the ETKDGv3 embedding; the same seed gives the same structure.

    Returns
    -------
    ase.Atoms
        Extended conformer (Å) with the head anchor on +z and the tails on -z, in the atom order
        of ``Chem.AddHs`` of ``info['smiles']``. Info: name, subset ``"lipids"``, smiles, charge
        (e), multiplicity, residue (Lipid21 template name) and the topology arrays of
        :func:`qcell_nb.md.atoms_from_topology` (``residue_name``, ``atom_name``, ``bonds``, ...).

    Raises
    ------
    ValueError
        If ``name`` is unknown (the message lists the known names) or its SMILES is unparsable.
    """
    spec = _lipid_spec(name)
    atoms = molecule_from_smiles(spec.smiles, name=name, seed=seed, subset="lipids")
    mol = mol_with_geometry(atoms.info["smiles"], atoms.get_positions(), assign_stereo=False)
    names = template_atom_names(mol, spec.residue)
    _extend(mol, names, spec, repr(name), seed)
    index = {atom_name: i for i, atom_name in enumerate(names)}
    positions = _orient(np.asarray(mol.GetConformer().GetPositions()), index[spec.head],
                        [index[t] for t in spec.tails])
    topology = _topology([(spec.residue, names, mol)])
    from ..md import atoms_from_topology
    info = {key: atoms.info[key] for key in ("name", "subset", "smiles", "charge", "multiplicity")}
    info["residue"] = spec.residue
    return atoms_from_topology(topology, positions, info)


def _topology(residues: Sequence[tuple[str, list[str], Chem.Mol]]):
    """OpenMM topology of whole-molecule residues (one chain); bonds from the RDKit molecules."""
    from openmm import app
    topology = app.Topology()
    chain = topology.addChain()
    for residue_name, names, mol in residues:
        residue = topology.addResidue(residue_name, chain)
        created = [topology.addAtom(atom_name, app.Element.getBySymbol(atom.GetSymbol()), residue)
                   for atom_name, atom in zip(names, mol.GetAtoms())]
        for bond in mol.GetBonds():
            topology.addBond(created[bond.GetBeginAtomIdx()], created[bond.GetEndAtomIdx()])
    return topology


def build_lipids(names: Iterable[str] = tuple(LIPIDS), seed: int = 0) -> list[Atoms]:
    """Build several lipids (all of :data:`LIPIDS` by default), in the order given.

    Raises:
        ValueError: naming every unknown lipid, before anything is built.
    """
    selected = list(names)
    unknown = [name for name in selected if name not in LIPIDS]
    if unknown:
        raise ValueError(f"unknown lipid(s) {unknown}; known lipids: {', '.join(LIPIDS)}")
    return [build_lipid(name, seed=seed) for name in selected]


# --- stage 02: bilayer patch ------------------------------------------------------------------

#: Å^3 per water molecule at 300 K, for sizing the water slabs.
_WATER_VOLUME = 30.0
#: Rotations about the membrane normal tried per lipid when placing it.
_PLACEMENT_TRIALS = 24
#: TIP3P water geometry (Å), O first.
_WATER_GEOMETRY = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]])


def _leaflet_counts(n_per_leaflet: int, composition: Mapping[str, float]) -> dict[str, int]:
    """Molecules per leaflet of each lipid: largest-remainder rounding of the mole fractions."""
    if n_per_leaflet < 1:
        raise ValueError(f"n_per_leaflet={n_per_leaflet!r}: need at least one lipid per leaflet")
    for name, fraction in composition.items():
        _lipid_spec(name)
        if not fraction >= 0:
            raise ValueError(f"composition[{name!r}]={fraction!r}: mole fractions must be >= 0")
    total = float(sum(composition.values()))
    if total <= 0:
        raise ValueError(f"composition {dict(composition)!r} has no positive mole fraction")
    exact = {name: n_per_leaflet * fraction / total for name, fraction in composition.items()}
    counts = {name: int(np.floor(value)) for name, value in exact.items()}
    by_remainder = sorted(exact, key=lambda name: (counts[name] - exact[name], list(exact).index(name)))
    for name in by_remainder[: n_per_leaflet - sum(counts.values())]:
        counts[name] += 1
    return {name: count for name, count in counts.items() if count > 0}


def _rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _closest_distance(points: np.ndarray, placed, lateral: np.ndarray) -> float:
    """Shortest distance (Å) from ``points`` to the atoms in the cKDTree ``placed`` (periodic in x, y)."""
    if placed is None:
        return np.inf
    return float(placed.query(np.mod(points, lateral))[0].min())


def assemble_bilayer(lipids: Sequence[Atoms], n_per_leaflet: int, composition: Mapping[str, float] | None = None,
                     water_per_lipid: int = 30, seed: int = 0, area_scale: float = 1.3,
                     min_edge: float = 20.0) -> Atoms:
    """A hydrated, neutralised bilayer patch in an orthorhombic box, z normal to the membrane.

    Each leaflet holds ``n_per_leaflet`` lipids on a square-ish lattice (spacing from the
    tabulated areas per lipid times ``area_scale``), each the rigid stage-01 conformer standing
    with its chain ends 1.5 Å from the bilayer centre, heads outwards; the lattice sites are
    shuffled and each lipid takes the rotation about z (of :data:`_PLACEMENT_TRIALS` seeded random
    ones) farthest from the lipids already placed. Water fills a lattice outside the hydrophobic
    core wherever it is 2.4 Å from every lipid atom; Na+ counter-ions replace random waters.
    Packing is loose on purpose: energy minimisation and the NPT membrane barostat of
    :func:`sample_bilayer` compress it. (packmol did not converge for dense leaflets of these
    rigid conformers within minutes, so placement is done here.)

    Parameters
    ----------
    lipids:
        Stage-01 structures from :func:`build_lipid` (``info['name']`` selects them).
    n_per_leaflet:
        Lipid molecules in each leaflet (both leaflets have the same composition).
    composition:
        Lipid name -> mole fraction (normalised; rounded to whole molecules per leaflet);
        default :func:`default_composition`.
    water_per_lipid:
        Water molecules per lipid molecule (fewer when the lattice has no more free sites).
    seed:
        Seed of the placement; the same inputs give the same patch.
    area_scale:
        Factor on the tabulated areas per lipid for the lattice spacing.
    min_edge:
        Å; the lateral box edges are at least this long (PME with a 9 Å cutoff needs more than
        18 Å), the lattice is stretched for very small patches.

    Returns
    -------
    ase.Atoms
        Periodic cell (Å) with the topology arrays of :func:`qcell_nb.md.atoms_from_topology`
        (residues: Lipid21 templates, ``HOH``, ``NA``), info name, subset ``"lipids"``, charge 0,
        multiplicity 1, lipid_counts, n_water, n_sodium.

    Raises
    ------
    ValueError
        For an unknown lipid name, a lipid missing from ``lipids`` or bad counts.
    """
    from openmm import app
    from ..md import atoms_from_topology, topology_from_atoms
    composition = dict(default_composition() if composition is None else composition)
    counts = _leaflet_counts(int(n_per_leaflet), composition)
    blocks = {atoms.info.get("name"): atoms for atoms in lipids}
    missing = [name for name in counts if name not in blocks]
    if missing:
        raise ValueError(f"lipid(s) {missing} of the composition are not among the built lipids "
                         f"{sorted(str(k) for k in blocks)}")
    if water_per_lipid < 1:
        raise ValueError(f"water_per_lipid={water_per_lipid!r}: need at least one water per lipid")
    rng = np.random.default_rng(seed)
    n_lipids = 2 * sum(counts.values())
    spacing = float(np.sqrt(area_scale * sum(c * LIPIDS[n].area for n, c in counts.items()) / sum(counts.values())))
    nx = int(np.ceil(np.sqrt(n_per_leaflet)))
    ny = int(np.ceil(n_per_leaflet / nx))
    height = {name: float(np.ptp(blocks[name].positions[:, 2])) for name in counts}
    core = max(height.values()) + 1.0  # half thickness of the lipid region
    n_water_target = int(water_per_lipid) * n_lipids
    lateral = np.maximum(np.array([nx, ny]) * spacing, float(min_edge))
    slab = n_water_target * _WATER_VOLUME / float(np.prod(lateral))  # both slabs together
    box = np.array([lateral[0], lateral[1], 2 * core + slab])
    centre = box[2] / 2

    from scipy.spatial import cKDTree
    lateral_period = np.array([box[0], box[1], 1.0e6])  # periodic in x and y only
    placed: list[np.ndarray] = []
    molecules: list[tuple[str, np.ndarray]] = []
    for leaflet in (1, -1):
        names = [name for name, count in counts.items() for _ in range(count)]
        names = [names[i] for i in rng.permutation(len(names))]
        sites = rng.permutation(nx * ny)[: len(names)]
        for name, site in zip(names, sites):
            block, spec = blocks[name], LIPIDS[name]
            atom_names = list(block.info["atom_name"])
            tails = [atom_names.index(t) for t in spec.tails]
            xyz = block.positions - block.positions[tails].mean(axis=0)
            xyz[:, :2] -= xyz[:, :2].mean(axis=0)
            if leaflet < 0:
                xyz = xyz * np.array([1.0, -1.0, -1.0])  # 180 deg about x: heads down
            site_xyz = np.array([(site % nx + 0.5) * box[0] / nx, (site // nx + 0.5) * box[1] / ny,
                                 centre + 1.5 * leaflet])
            best, best_gap = None, -np.inf
            tree = cKDTree(np.mod(np.concatenate(placed), lateral_period), boxsize=lateral_period) \
                if placed else None
            for angle in rng.uniform(0.0, 2 * np.pi, _PLACEMENT_TRIALS):
                trial = xyz @ _rotation_z(angle).T + site_xyz
                gap = _closest_distance(trial, tree, lateral_period)
                if gap > best_gap:
                    best, best_gap = trial, gap
            placed.append(best)
            molecules.append((name, best))

    # Water on a cubic lattice outside the hydrophobic core, away from every lipid atom.
    step = _WATER_VOLUME ** (1.0 / 3.0)
    grid = [np.arange(0.5 * step, edge - 0.5 * step + 1e-9, step) for edge in box]
    sites = np.stack(np.meshgrid(*grid, indexing="ij"), axis=-1).reshape(-1, 3)
    sites = sites[np.abs(sites[:, 2] - centre) > 8.0]
    lipid_xyz = np.mod(np.concatenate(placed), box)
    free = cKDTree(lipid_xyz, boxsize=box).query(np.mod(sites, box))[0] > 2.4
    sites = sites[free]
    order = rng.permutation(len(sites))[: min(n_water_target, len(sites))]
    sites = sites[np.sort(order)]
    charge = sum(int(blocks[name].info["charge"]) for name, _ in molecules)
    if charge > 0:
        raise ValueError(f"composition {composition!r} is net positive; only Na+ counter-ions are added")
    n_sodium = -charge
    if n_sodium >= len(sites):
        raise ValueError(f"water_per_lipid={water_per_lipid!r} leaves no room for {n_sodium} Na+ counter-ions")
    sodium = rng.choice(len(sites), size=n_sodium, replace=False)
    is_sodium = np.zeros(len(sites), dtype=bool)
    is_sodium[sodium] = True

    topology = app.Topology()
    chain = topology.addChain()
    positions = []
    for name, xyz in molecules:
        block_topology, _ = topology_from_atoms(blocks[name])
        residue = topology.addResidue(LIPIDS[name].residue, chain)
        created = [topology.addAtom(a.name, a.element, residue) for a in block_topology.atoms()]
        for bond in block_topology.bonds():
            topology.addBond(created[bond.atom1.index], created[bond.atom2.index])
        positions.append(xyz)
    for site in sites[~is_sodium]:
        residue = topology.addResidue("HOH", chain)
        oxygen = topology.addAtom("O", app.element.oxygen, residue)
        for h_name in ("H1", "H2"):
            topology.addBond(oxygen, topology.addAtom(h_name, app.element.hydrogen, residue))
        rotation = _random_rotation(rng)
        positions.append(_WATER_GEOMETRY @ rotation.T + site)
    for site in sites[is_sodium]:
        topology.addAtom("NA", app.element.sodium, topology.addResidue("NA", chain))
        positions.append(site[None])
    lipid_counts = [[name, 2 * count] for name, count in counts.items()]
    info = {"name": "bilayer " + " ".join(f"{name}:{n}" for name, n in lipid_counts),
            "subset": "lipids", "charge": 0, "multiplicity": 1, "lipid_counts": lipid_counts,
            "n_water": int((~is_sodium).sum()), "n_sodium": int(n_sodium)}
    return atoms_from_topology(topology, np.concatenate(positions), info, cell=np.diag(box))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation matrix (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def lipid_system(topology, cutoff: float = 9.0):
    """OpenMM ``System`` of a periodic lipid topology with :func:`lipid_forcefield`.

    PME electrostatics with a real-space ``cutoff`` (Å), bonds to hydrogen constrained, rigid
    water (a 2 fs time step).
    """
    from openmm import app, unit
    return lipid_forcefield().createSystem(topology, nonbondedMethod=app.PME,
                                           nonbondedCutoff=cutoff / 10.0 * unit.nanometer,
                                           constraints=app.HBonds, rigidWater=True)


def sample_bilayer(lipids: Sequence[Atoms], n_per_leaflet: int, composition: Mapping[str, float] | None = None,
                   water_per_lipid: int = 30, settings=None, seed: int = 0,
                   keep_water: bool = False) -> list[Atoms]:
    """Frames of NPT MD (membrane barostat, 1 bar, zero surface tension) of a bilayer patch.

    The patch is :func:`assemble_bilayer`; the system is :func:`lipid_system`; MD is
    :func:`qcell_nb.md.simulate` with ``settings`` (default: MDSettings with ``pressure=1.0``
    and ``membrane=True``; a settings object without pressure is run as given, NVT). ``seed``
    seeds the placement and, when ``settings`` is None, the MD.

    Returns:
        One periodic Atoms per saved frame (Å): lipids and Na+ counter-ions (water too with
        ``keep_water``); the topology arrays of :func:`qcell_nb.md.frames_to_atoms`, info name,
        subset ``"lipids"``, charge 0 (neutral either way), multiplicity 1, frame, time_ps, mm_energy (eV, whole system).
    """
    from ..md import MDSettings, frames_to_atoms, simulate, topology_from_atoms
    if settings is None:
        settings = MDSettings(pressure=1.0, membrane=True, seed=seed)
    patch = assemble_bilayer(lipids, n_per_leaflet, composition, water_per_lipid, seed)
    topology, positions = topology_from_atoms(patch)
    trajectory = simulate(topology, lipid_system(topology), positions, settings, name=patch.info["name"])
    residue_names = patch.info["residue_name"]
    mask = np.array([keep_water or name != "HOH" for name in residue_names])
    info = {key: patch.info[key] for key in ("name", "subset", "lipid_counts", "n_water", "n_sodium")}
    info.update(charge=0, multiplicity=1, md_steps=int(settings.production_steps))
    return frames_to_atoms(trajectory, info, atoms_mask=mask)



# --- stage 03: fragments ----------------------------------------------------------------------

#: Å, length of the X-H bond that caps a cut bond, by element of the kept atom X.
_CAP_BOND = {"C": 1.09, "O": 0.97, "N": 1.01}
_RESIDUE_TO_LIPID = {spec.residue: name for name, spec in LIPIDS.items()}


@dataclass(frozen=True)
class _UnitTemplate:
    """Template indices of one fragment unit and its cut bonds (kept, removed)."""

    label: str
    atoms: tuple[int, ...]
    cuts: tuple[tuple[int, int], ...]
    charge: int


@functools.lru_cache(maxsize=None)
def _acyl_units(residue: str, max_chain_carbons: int | None) -> tuple[_UnitTemplate, ...]:
    """The acyl chains of a Lipid21 residue as fatty-acid units, found on the template graph.

    A chain starts at an ester carbonyl carbon (bonded to a terminal O and to an O that bonds
    another carbon) and runs along carbons. It is cut at the ester oxygen-glycerol bond (capped:
    a carboxylic acid) and, with ``max_chain_carbons``, after that many carbons (capped: a
    methyl end); a cut never falls inside a C=C double bond (the count grows by one instead), so
    every unit is closed-shell and neutral.
    """
    template = _template(residue)
    elements, neighbours = template.elements, template.neighbours
    units = []
    for carbon in range(len(elements)):
        if elements[carbon] != "C":
            continue
        oxygens = [n for n in neighbours[carbon] if elements[n] == "O"]
        carbonyl = [o for o in oxygens if len(neighbours[o]) == 1]
        ester = [o for o in oxygens if len(neighbours[o]) == 2]
        if len(carbonyl) != 1 or len(ester) != 1:
            continue
        chain = [carbon]
        while True:
            following = [n for n in neighbours[chain[-1]] if elements[n] == "C" and n not in chain]
            if not following:
                break
            chain.append(following[0])
        keep = len(chain) if max_chain_carbons is None else min(len(chain), int(max_chain_carbons))
        while keep < len(chain) and len(neighbours[chain[keep - 1]]) == 3:  # sp2: do not split C=C
            keep += 1
        kept = chain[:keep]
        hydrogens = [n for c in kept for n in neighbours[c] if elements[n] == "H"]
        glycerol = [n for n in neighbours[ester[0]] if n != carbon][0]
        cuts = [(ester[0], glycerol)] + ([(kept[-1], chain[keep])] if keep < len(chain) else [])
        position = "sn-2" if template.names[carbon].startswith("C2") else "sn-1"
        units.append(_UnitTemplate(f"{position} C{keep}", tuple(kept + carbonyl + ester + hydrogens),
                                   tuple(cuts), 0))
    return tuple(units)


@dataclass(frozen=True)
class _Unit:
    label: str
    atoms: np.ndarray            # frame atom indices
    cuts: tuple[tuple[int, int], ...]  # frame atom indices (kept, removed)
    charge: int


def _frame_units(frame: Atoms, unit: str, max_chain_carbons: int | None) -> list[_Unit]:
    """Fragment units of one bilayer frame, in residue order."""
    residue_index = np.asarray(frame.info["residue_index"])
    residue_name = list(frame.info["residue_name"])
    atom_name = list(frame.info["atom_name"])
    units = []
    for residue in np.unique(residue_index):
        members = np.flatnonzero(residue_index == residue)
        name = residue_name[members[0]]
        if name not in _RESIDUE_TO_LIPID:
            continue
        lipid = _RESIDUE_TO_LIPID[name]
        label = f"{lipid}#{int(residue)}"
        if unit == "lipid":
            units.append(_Unit(label, members, (), build_charge(lipid)))
            continue
        by_name = {atom_name[i]: i for i in members}
        template = _template(name)
        for part in _acyl_units(name, max_chain_carbons):
            frame_of = [by_name[template.names[t]] for t in part.atoms]
            cuts = tuple((by_name[template.names[a]], by_name[template.names[b]]) for a, b in part.cuts)
            units.append(_Unit(f"{label} {part.label}", np.array(frame_of), cuts, part.charge))
    return units


def _unit_contacts(frame: Atoms, units: list[_Unit], cutoff: float) -> dict[tuple[int, int], tuple[float, np.ndarray]]:
    """(unit a, unit b) -> (closest heavy-atom distance in Å, lattice shift of b next to a)."""
    owner = np.full(len(frame), -1)
    for u, part in enumerate(units):
        owner[part.atoms] = u
    heavy = np.flatnonzero((owner >= 0) & (frame.numbers > 1))
    sub = Atoms(frame.numbers[heavy], frame.positions[heavy], cell=frame.cell, pbc=frame.pbc)
    i, j, d, shifts = neighbor_list("ijdS", sub, cutoff)
    a, b = owner[heavy[i]], owner[heavy[j]]
    contacts: dict[tuple[int, int], tuple[float, np.ndarray]] = {}
    for k in np.argsort(d, kind="stable"):
        if a[k] != b[k] and (a[k], b[k]) not in contacts:
            contacts[(int(a[k]), int(b[k]))] = (float(d[k]), shifts[k])
    return contacts


def _grow_cluster(start: int, size: int, contacts) -> dict[int, np.ndarray] | None:
    """Greedy proximity cluster: add the unit closest to any member until ``size``; None if none is near."""
    cluster = {start: np.zeros(3, dtype=int)}
    while len(cluster) < size:
        best = None
        for (a, b), (distance, shift) in contacts.items():
            if a in cluster and b not in cluster and (best is None or distance < best[0]):
                best = (distance, b, cluster[a] + shift)
        if best is None:
            return None
        cluster[best[1]] = best[2]
    return cluster


def _fragment(frame: Atoms, units: list[_Unit], cluster: dict[int, np.ndarray], kind: str, unit: str,
              parent: str) -> Atoms:
    numbers, positions, labels, charge = [], [], [], 0
    cell = frame.cell.array
    for u, shift in cluster.items():
        part = units[u]
        offset = shift @ cell
        numbers.extend(frame.numbers[part.atoms])
        positions.extend(frame.positions[part.atoms] + offset)
        for kept, removed in part.cuts:
            bond = frame.positions[removed] - frame.positions[kept]
            length = _CAP_BOND[chemical_symbols[frame.numbers[kept]]]
            numbers.append(1)
            positions.append(frame.positions[kept] + offset + bond / np.linalg.norm(bond) * length)
        labels.append(part.label)
        charge += part.charge
    fragment = Atoms(numbers=numbers, positions=np.asarray(positions))
    fragment.positions -= fragment.positions.mean(axis=0)
    if (int(fragment.numbers.sum()) - charge) % 2:
        raise ValueError(f"{kind} {labels} of frame {parent} has an odd electron count: a cut is not capped")
    fragment.info.update(name=f"{kind} " + " + ".join(labels), subset="lipids", fragment_kind=kind,
                         unit=unit, members=labels, charge=int(charge), multiplicity=1, parent_id=parent,
                         frame=int(frame.info.get("frame", 0)))
    return fragment


def select_fragments(frames: Sequence[Atoms], kinds: Sequence[str] = tuple(FRAGMENT_KINDS), max_per_frame: int = 4,
                     seed: int = 0, unit: str = "lipid", max_chain_carbons: int | None = None,
                     contact_cutoff: float = 5.0) -> list[Atoms]:
    """Monomers, dimers and trimers of lipid units chosen by geometric proximity.

    For each frame and kind, units are visited in a seeded random order; each grows a cluster by
    repeatedly adding the unit whose closest heavy atom (minimum image) is nearest to any member,
    up to the kind's size (1, 2, 3). Clusters already taken are skipped; at most
    ``max_per_frame`` fragments per kind and frame. Periodic images are unwrapped so each
    fragment is contiguous; it is centred at the origin, not periodic.

    Parameters
    ----------
    frames:
        Bilayer frames from :func:`sample_bilayer` (topology arrays in info).
    kinds:
        Any of ``"monomer"``, ``"dimer"``, ``"trimer"``.
    max_per_frame:
        Fragments per kind and frame.
    seed:
        Seeds the visiting order; the same frames and parameters give the same fragments.
    unit:
        ``"lipid"``: whole lipid molecules (the paper's fragments: POPC monomer 134 atoms, trimers
        ~400; charge is the lipids' formal charge). ``"acyl"``: each acyl chain cut at its ester
        oxygen and capped with H, i.e. a fatty acid (neutral); cholesterol has none.
    max_chain_carbons:
        With ``unit="acyl"``, keep this many chain carbons (carbonyl carbon = C1) and cap the rest
        with H: 4 gives butanoic-acid units of 14 atoms. None keeps whole chains.
    contact_cutoff:
        Å; units farther apart than this (closest heavy atoms) are never clustered.

    Returns
    -------
    list of ase.Atoms
        Closed-shell fragments (Å) with info name, subset ``"lipids"``, fragment_kind, unit,
        members (unit labels ``"<lipid>#<residue index>[ sn-1|sn-2 C<n>]"``), charge (integer e),
        multiplicity 1, parent_id (:func:`qcell_nb.structures.structure_id` of the frame), frame.

    Raises
    ------
    ValueError
        For an unknown kind or unit, or frames without topology arrays.
    """
    unknown = [kind for kind in kinds if kind not in FRAGMENT_KINDS]
    if unknown:
        raise ValueError(f"unknown fragment kind(s) {unknown}; known kinds: {', '.join(FRAGMENT_KINDS)}")
    if unit not in ("lipid", "acyl"):
        raise ValueError(f"unknown fragment unit {unit!r}; use 'lipid' or 'acyl'")
    if max_chain_carbons is not None and max_chain_carbons < 2:
        raise ValueError(f"max_chain_carbons={max_chain_carbons!r}: need at least 2 (carbonyl + one CH2)")
    fragments = []
    for frame_number, frame in enumerate(frames):
        if "residue_index" not in frame.info:
            raise ValueError(f"frame {frame_number} ({frame.info.get('name')!r}) has no topology arrays; "
                             "use frames from sample_bilayer")
        units = _frame_units(frame, unit, max_chain_carbons)
        contacts = _unit_contacts(frame, units, contact_cutoff)
        parent = structure_id(frame)
        rng = np.random.default_rng([int(seed), frame_number])
        for kind in kinds:
            taken: set[frozenset[int]] = set()
            for start in rng.permutation(len(units)):
                if len(taken) >= max_per_frame:
                    break
                cluster = _grow_cluster(int(start), FRAGMENT_KINDS[kind], contacts)
                if cluster is None or frozenset(cluster) in taken:
                    continue
                taken.add(frozenset(cluster))
                fragments.append(_fragment(frame, units, cluster, kind, unit, parent))
    return fragments


@functools.lru_cache(maxsize=None)
def build_charge(name: str) -> int:
    """Formal charge (e) of the lipid ``name`` from its SMILES."""
    return int(Chem.GetFormalCharge(Chem.MolFromSmiles(_lipid_spec(name).smiles)))


def radius_of_gyration(atoms: Atoms, mass_weighted: bool = True) -> float:
    """Radius of gyration (Å) about the centre of mass (``mass_weighted``) or the centroid."""
    positions = atoms.get_positions()
    weights = atoms.get_masses() if mass_weighted else np.ones(len(atoms))
    centre = weights @ positions / weights.sum()
    return float(np.sqrt(weights @ ((positions - centre) ** 2).sum(axis=1) / weights.sum()))


def plot_radius_of_gyration(fragments: Sequence[Atoms], path: str | os.PathLike | None = None, bins: int = 20):
    """Histogram of the mass-weighted radius of gyration per fragment kind; saved to ``path`` if given.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib
    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    by_kind: dict[str, list[float]] = {}
    for fragment in fragments:
        by_kind.setdefault(str(fragment.info.get("fragment_kind", "?")), []).append(radius_of_gyration(fragment))
    figure, axis = plt.subplots(figsize=(5, 3.5))
    values = [v for vs in by_kind.values() for v in vs]
    edges = np.histogram_bin_edges(values, bins=bins) if values else bins
    for kind, radii in by_kind.items():
        axis.hist(radii, bins=edges, alpha=0.6, label=f"{kind} (n={len(radii)})")
    axis.set_xlabel("radius of gyration (Å, mass-weighted)")
    axis.set_ylabel("fragments")
    axis.set_title("lipid fragments")
    if by_kind:
        axis.legend()
    return finish_figure(figure, path)
