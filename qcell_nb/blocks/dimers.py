"""Non-covalent dimers: a DES370k-like generator of monomer pairs and distance scans (stages 01-03).

Stage 01 builds the monomers (:func:`build_monomers`) from a named SMILES library
(:data:`MONOMERS`: small neutral molecules covering H, C, N, O, F, P, S, Cl, Br plus the ions
of :mod:`qcell_nb.blocks.ions_water`). Stage 02 places pairs in random rigid orientations at
contact (:func:`dimer_orientations`); stage 03 scans each orientation along the line of the
centres of mass (:func:`distance_scan`). :func:`generate_dimers` chains the three.

Contact distance
----------------
For a fixed relative orientation and a unit direction ``u`` from the centre of mass of A to
that of B, the contact distance ``d_c`` is the smallest centre-of-mass separation beyond which
no atom pair (i in A, j in B) is closer than the sum of their radii ``R_i + R_j``. At ``d_c``
the closest pair (relative to its radii) touches exactly. Neutral atoms use ASE's van der
Waals radii (Bondi's values, e.g. H 1.20, C 1.70, N 1.55, O 1.52 Å); a monatomic ion uses its
Shannon effective ionic radius (6-coordinate; :data:`ION_RADII`), since a neutral-atom radius
(Na 2.27 Å) would put a cation's contact with water 1.4 Å beyond its real first shell.
A scan factor ``f`` places the centres of mass at ``f * d_c``; QCell, like DES370k, scans
0.8 to 2.0. Hydrogen bonds sit below vdW contact (water dimer: O-H...O at about 0.75 of
1.20 + 1.52 Å), so the minima of H-bonded pairs fall near f = 0.8-0.9.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, vdw_radii

from ..figures import finish_figure
from ..structures import structure_id
from .carbohydrates import molecule_from_smiles
from .ions_water import IONS, build_ion

__all__ = [
    "DEFAULT_SCAN_FACTORS",
    "ION_RADII",
    "MONOMERS",
    "build_monomer",
    "build_monomers",
    "contact_distance",
    "contact_radii",
    "dimer_orientations",
    "distance_scan",
    "distance_scans",
    "pair_orientations",
    "generate_dimers",
    "closest_intermolecular_distance",
    "plot_distance_coverage",
    "random_pairs",
]

#: Name -> SMILES of the monomer library. Small neutral molecules of the functional groups in
#: biomolecules (hydroxyl, ether, carbonyl, carboxyl, amine, amide, aromatic rings, thiol,
#: thioether, phosphate, halides) and the ions of the ions-in-water subset. The largest
#: (trimethyl phosphate, 17 atoms) keeps every dimer within 34 atoms.
MONOMERS: dict[str, str] = {
    "water": "O",
    "methanol": "CO",
    "ethanol": "CCO",
    "dimethyl ether": "COC",
    "formaldehyde": "C=O",
    "acetone": "CC(C)=O",
    "acetic acid": "CC(=O)O",
    "methane": "C",
    "ethane": "CC",
    "ethene": "C=C",
    "ethyne": "C#C",
    "benzene": "c1ccccc1",
    "ammonia": "N",
    "methylamine": "CN",
    "dimethylamine": "CNC",
    "formamide": "NC=O",
    "N-methylacetamide": "CNC(C)=O",
    "acetonitrile": "CC#N",
    "pyridine": "c1ccncc1",
    "imidazole": "c1c[nH]cn1",
    "hydrogen fluoride": "F",
    "fluoromethane": "CF",
    "hydrogen chloride": "Cl",
    "chloromethane": "CCl",
    "hydrogen bromide": "Br",
    "bromomethane": "CBr",
    "hydrogen sulfide": "S",
    "methanethiol": "CS",
    "dimethyl sulfide": "CSC",
    "phosphine": "P",
    "trimethylphosphine": "CP(C)C",
    "phosphoric acid": "OP(O)(O)=O",
    "dimethyl hydrogen phosphate": "COP(=O)(O)OC",
    "trimethyl phosphate": "COP(=O)(OC)OC",
    **{name: ion.smiles for name, ion in IONS.items()},
}

#: Å, Shannon effective ionic radii (Acta Cryst. A32, 751 (1976)), coordination number 6.
#: Keyed by (element, formal charge).
ION_RADII: dict[tuple[str, int], float] = {
    ("Na", 1): 1.02,
    ("K", 1): 1.38,
    ("Mg", 2): 0.72,
    ("Ca", 2): 1.00,
    ("Cl", -1): 1.81,
}

#: QCell's (and DES370k's) scan range: 0.8 to 2.0 times the contact distance.
DEFAULT_SCAN_FACTORS: tuple[float, ...] = tuple(np.round(np.linspace(0.8, 2.0, 7), 3))


def build_monomer(name: str, seed: int = 0, library: Mapping[str, str] = MONOMERS) -> Atoms:
    """3D structure of the monomer ``name`` (RDKit ETKDG + MMFF, see ``molecule_from_smiles``).

    Returns:
        :class:`ase.Atoms` with info name, subset ``"dimers"``, smiles, charge, multiplicity.

    Raises:
        ValueError: for a name not in ``library`` or a SMILES RDKit cannot parse (both named).
    """
    if name not in library:
        raise ValueError(f"unknown monomer {name!r}; known monomers: {', '.join(library)}")
    ion_names = {ion.smiles: ion_name for ion_name, ion in IONS.items()}
    if library[name] in ion_names:
        # A bare ion needs no embedding (RDKit's force fields have no types for it).
        ion = build_ion(ion_names[library[name]])
        ion.info.update(name=name, subset="dimers")
        return ion
    return molecule_from_smiles(library[name], name=name, seed=seed, subset="dimers")


def build_monomers(names: Iterable[str] | None = None, seed: int = 0,
                   library: Mapping[str, str] = MONOMERS) -> list[Atoms]:
    """Stage 01: the monomers ``names`` (all of ``library`` by default), in that order.

    Every name is checked before anything is embedded.
    """
    selected = list(library) if names is None else list(names)
    unknown = [name for name in selected if name not in library]
    if unknown:
        raise ValueError(f"unknown monomer(s) {unknown}; known monomers: {', '.join(library)}")
    return [build_monomer(name, seed=seed, library=library) for name in selected]


def contact_radii(monomer: Atoms) -> np.ndarray:
    """(n_atoms,) Å radii that define contact: Shannon ionic radius for a monatomic ion, else vdW."""
    symbols = monomer.get_chemical_symbols()
    charge = int(monomer.info.get("charge", 0))
    if len(monomer) == 1 and charge != 0:
        key = (symbols[0], charge)
        if key not in ION_RADII:
            raise ValueError(f"no ionic radius for {symbols[0]} with charge {charge:+d}; "
                             f"known ions: {sorted(ION_RADII)}")
        return np.array([ION_RADII[key]])
    radii = np.array([vdw_radii[atomic_numbers[symbol]] for symbol in symbols], dtype=float)
    if not np.all(np.isfinite(radii)):
        missing = sorted({s for s, r in zip(symbols, radii) if not np.isfinite(r)})
        raise ValueError(f"no van der Waals radius for element(s) {missing} of {monomer.info.get('name')!r}")
    return radii


def _centred(monomer: Atoms) -> np.ndarray:
    """(n_atoms, 3) positions relative to the centre of mass, Å."""
    return monomer.positions - monomer.get_center_of_mass()


def contact_distance(a: Atoms, b: Atoms, direction: np.ndarray) -> float:
    """Contact distance (Å) of B moved along ``direction`` from A's centre of mass.

    Both monomers are taken in their current orientations. For each atom pair the separation
    ``|v + d u|`` (``v`` = B-atom offset minus A-atom offset from their centres of mass) equals
    ``R_i + R_j`` at ``d = -v.u +/- sqrt((v.u)^2 - |v|^2 + (R_i + R_j)^2)``; the contact distance
    is the largest ``+`` root over all pairs, so every pair is at least at its radius sum for
    any ``d >= d_c`` and the critical pair touches at ``d_c``.
    """
    u = np.asarray(direction, dtype=float)
    u = u / np.linalg.norm(u)
    offsets = _centred(b)[None, :, :] - _centred(a)[:, None, :]
    radius_sum = contact_radii(a)[:, None] + contact_radii(b)[None, :]
    along = offsets @ u
    discriminant = along ** 2 - np.einsum("ijk,ijk->ij", offsets, offsets) + radius_sum ** 2
    roots = np.where(discriminant >= 0, -along + np.sqrt(np.clip(discriminant, 0, None)), -np.inf)
    return float(max(roots.max(), 0.0))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A (3, 3) rotation matrix uniform over SO(3) (normalised Gaussian quaternion)."""
    quaternion = rng.standard_normal(4)
    w, x, y, z = quaternion / np.linalg.norm(quaternion)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def _unit_vector(rng: np.random.Generator) -> np.ndarray:
    vector = rng.standard_normal(3)
    return vector / np.linalg.norm(vector)


def _pair_info(a: Atoms, b: Atoms) -> dict:
    name_a = str(a.info.get("name", a.get_chemical_formula()))
    name_b = str(b.info.get("name", b.get_chemical_formula()))
    multiplicity_a, multiplicity_b = int(a.info.get("multiplicity", 1)), int(b.info.get("multiplicity", 1))
    info = {
        "name": f"{name_a}...{name_b}", "subset": "dimers", "monomer_a": name_a, "monomer_b": name_b,
        "charge": int(a.info.get("charge", 0)) + int(b.info.get("charge", 0)),
        # High-spin coupling of open-shell monomers; every library monomer is a singlet (1 + 1 - 1 = 1).
        "multiplicity": multiplicity_a + multiplicity_b - 1,
        "n_atoms_a": len(a),
    }
    if "smiles" in a.info and "smiles" in b.info:
        info["smiles"] = f"{a.info['smiles']}.{b.info['smiles']}"
    return info


def dimer_orientations(a: Atoms, b: Atoms, n: int, seed: int = 0) -> list[Atoms]:
    """Stage 02: ``n`` random rigid orientations of the pair A, B at contact.

    Each orientation rotates A and B independently (uniform over SO(3)) and draws a direction
    uniform on the sphere; A's centre of mass sits at the origin and B's at
    ``contact_distance * direction``, so no atom pair is closer than its radius sum.

    Returns:
        Dimers (A's atoms first), info: name ``"A...B"``, subset ``"dimers"``, monomer_a,
        monomer_b, smiles ``"A.B"``, charge (sum), multiplicity, n_atoms_a, orientation (index),
        direction ((3,) unit vector), contact_distance (Å), com_distance (Å), scan_factor 1.0.
    """
    if n < 1:
        raise ValueError(f"n={n!r}: need at least one orientation")
    rng = np.random.default_rng(seed)
    dimers = []
    for index in range(n):
        rotated_a = a.copy()
        rotated_a.positions = _centred(a) @ _random_rotation(rng).T
        rotated_b = b.copy()
        rotated_b.positions = _centred(b) @ _random_rotation(rng).T
        direction = _unit_vector(rng)
        distance = contact_distance(rotated_a, rotated_b, direction)
        dimer = Atoms(numbers=np.concatenate([a.numbers, b.numbers]),
                      positions=np.concatenate([rotated_a.positions, rotated_b.positions + distance * direction]))
        dimer.info.update(_pair_info(a, b))
        dimer.info.update(orientation=index, direction=direction, contact_distance=distance,
                          com_distance=distance, scan_factor=1.0)
        dimers.append(dimer)
    return dimers


def distance_scan(dimer: Atoms, factors: Sequence[float] = DEFAULT_SCAN_FACTORS) -> list[Atoms]:
    """Stage 03: the dimer with B moved rigidly along the centre-of-mass line to ``f * d_c``.

    Args:
        dimer: from :func:`dimer_orientations` (needs info ``n_atoms_a`` and ``contact_distance``).
        factors: scan factors (QCell: 0.8 to 2.0).

    Returns:
        One dimer per factor, info as the input plus scan_factor, com_distance (Å) and
        parent_id (the structure id of the input orientation).
    """
    for key in ("n_atoms_a", "contact_distance"):
        if key not in dimer.info:
            raise ValueError(f"dimer {dimer.info.get('name', dimer.get_chemical_formula())!r} lacks info[{key!r}]; "
                             "build it with dimer_orientations")
    factors = [float(f) for f in factors]
    if not factors or min(factors) <= 0:
        raise ValueError(f"scan factors {factors!r}: need positive values")
    n_a = int(dimer.info["n_atoms_a"])
    a, b = dimer[:n_a], dimer[n_a:]
    separation = b.get_center_of_mass() - a.get_center_of_mass()
    direction = separation / np.linalg.norm(separation)
    contact = float(dimer.info["contact_distance"])
    parent = structure_id(dimer)
    scans = []
    for factor in factors:
        moved = dimer.copy()
        shift = factor * contact * direction - separation
        moved.positions[n_a:] += shift
        moved.info = dict(dimer.info)
        moved.info.update(scan_factor=factor, com_distance=factor * contact, parent_id=parent)
        scans.append(moved)
    return scans


def random_pairs(names: Sequence[str], n_pairs: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n_pairs`` distinct unordered monomer pairs (self-pairs included), drawn with ``seed``."""
    names = list(names)
    candidates = [(names[i], names[j]) for i in range(len(names)) for j in range(i, len(names))]
    if n_pairs > len(candidates):
        raise ValueError(f"n_pairs={n_pairs}: only {len(candidates)} pairs of {len(names)} monomers exist")
    chosen = np.random.default_rng(seed).choice(len(candidates), size=n_pairs, replace=False)
    return [candidates[i] for i in sorted(chosen)]


def pair_orientations(monomers: Sequence[Atoms], pairs: Sequence[tuple[str, str]], n_orientations: int = 4,
                      seed: int = 0) -> list[Atoms]:
    """Stage 02 for many pairs: :func:`dimer_orientations` of each pair of stage-01 monomers.

    Monomers are looked up by ``info['name']``; pair ``k`` uses seed ``seed + k``, so adding
    pairs at the end leaves the earlier orientations unchanged.

    Raises:
        ValueError: naming a pair member that is not among ``monomers``.
    """
    by_name = {str(m.info.get("name")): m for m in monomers}
    missing = sorted({name for pair in pairs for name in pair if name not in by_name})
    if missing:
        raise ValueError(f"pairs name monomer(s) {missing} that were not built; built: {', '.join(by_name)}")
    orientations = []
    for k, (name_a, name_b) in enumerate(pairs):
        orientations.extend(dimer_orientations(by_name[name_a], by_name[name_b], n_orientations, seed=seed + k))
    return orientations


def distance_scans(orientations: Sequence[Atoms], factors: Sequence[float] = DEFAULT_SCAN_FACTORS) -> list[Atoms]:
    """Stage 03 for many orientations: :func:`distance_scan` of each, concatenated."""
    return [scan for orientation in orientations for scan in distance_scan(orientation, factors)]


def generate_dimers(pairs: Sequence[tuple[str, str]], n_orientations: int = 4,
                    factors: Sequence[float] = DEFAULT_SCAN_FACTORS, seed: int = 0,
                    library: Mapping[str, str] = MONOMERS) -> list[Atoms]:
    """Monomers, orientations and scans of every pair: stages 01-03 of the class in one call.

    Every monomer is embedded once with ``seed``; orientations as :func:`pair_orientations`.

    Returns:
        ``len(pairs) * n_orientations * len(factors)`` dimers (see :func:`distance_scan`).
    """
    names = sorted({name for pair in pairs for name in pair})
    monomers = build_monomers(names, seed=seed, library=library)
    return distance_scans(pair_orientations(monomers, pairs, n_orientations, seed=seed), factors)


def plot_distance_coverage(dimers: Sequence[Atoms], path=None):
    """Coverage of the scans: histogram of the closest A-B atom distance (Å), and that distance
    against the scan factor (one point per dimer).

    Saves to ``path`` when given; returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    closest = [closest_intermolecular_distance(dimer) for dimer in dimers]
    factors = [float(dimer.info.get("scan_factor", np.nan)) for dimer in dimers]
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.0, 3.0))
    left.hist(closest, bins=30)
    left.set_xlabel("closest A-B atom distance (Å)")
    left.set_ylabel("dimers")
    right.scatter(factors, closest, s=8, alpha=0.6)
    right.set_xlabel("scan factor (x contact distance)")
    right.set_ylabel("closest A-B atom distance (Å)")
    return finish_figure(fig, path)


def closest_intermolecular_distance(dimer: Atoms) -> float:
    """Shortest distance (Å) between an atom of monomer A and one of monomer B."""
    n_a = int(dimer.info["n_atoms_a"])
    offsets = dimer.positions[n_a:][None, :, :] - dimer.positions[:n_a][:, None, :]
    return float(np.linalg.norm(offsets, axis=2).min())
