"""Idealised nucleic-acid geometry: base reference frames, nucleotide templates, helices.

Coordinates are generated here, from published standard geometry only (no
structure files are read):

* Bases sit in the standard base reference frame of Olson et al., J. Mol.
  Biol. 313, 229 (2001) ("A standard reference frame for the description of
  nucleic acid base-pair geometry"): the idealised ring atoms and C1' in the
  x-y plane, x towards the major groove, y along the base-pair long axis
  towards strand I's C1'. The complementary base of a Watson-Crick pair is the
  same set of coordinates turned 180 degrees about x.
* One nucleotide (sugar, phosphate, base) per base type, strand and form is a
  template: an RDKit molecule built from SMILES, with the form's canonical
  backbone torsions (alpha..zeta), glycosidic torsion chi and sugar pucker
  (pseudorotation phase P, amplitude 38 degrees) imposed as MMFF94 torsion
  constraints, then superposed onto its standard base frame.
* Base pairs are stacked with the form's base-pair step parameters (shift,
  slide, rise, tilt, roll, twist) for A and B; the Z-DNA steps (a left-handed
  dinucleotide repeat) are fitted to its ZI backbone, see :func:`step_transform`.
  Each template follows its base. The backbone is then nearly but not exactly
  closed (O3'-P gaps up to about 1 A for A/B); a short restrained force-field
  minimisation (see :mod:`.build`) closes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem, rdMolTransforms
from rdkit.Chem import rdForceFieldHelpers as ffh

# --- standard bases (Olson et al. 2001, Table 1), x y z in Angstrom -----------------
STANDARD_BASES: dict[str, dict[str, tuple[float, float, float]]] = {
    "A": {"C1'": (-2.479, 5.346, 0.0), "N9": (-1.291, 4.498, 0.0), "C8": (0.024, 4.897, 0.0),
          "N7": (0.877, 3.902, 0.0), "C5": (0.071, 2.771, 0.0), "C6": (0.369, 1.398, 0.0),
          "N6": (1.611, 0.909, 0.0), "N1": (-0.668, 0.532, 0.0), "C2": (-1.912, 1.023, 0.0),
          "N3": (-2.320, 2.290, 0.0), "C4": (-1.267, 3.124, 0.0)},
    "G": {"C1'": (-2.477, 5.399, 0.0), "N9": (-1.289, 4.551, 0.0), "C8": (0.023, 4.962, 0.0),
          "N7": (0.870, 3.969, 0.0), "C5": (0.071, 2.833, 0.0), "C6": (0.424, 1.460, 0.0),
          "O6": (1.554, 0.955, 0.0), "N1": (-0.700, 0.641, 0.0), "C2": (-1.999, 1.087, 0.0),
          "N2": (-2.949, 0.139, 0.0), "N3": (-2.342, 2.364, 0.0), "C4": (-1.265, 3.177, 0.0)},
    "C": {"C1'": (-2.477, 5.402, 0.0), "N1": (-1.285, 4.542, 0.0), "C2": (-1.472, 3.158, 0.0),
          "O2": (-2.628, 2.709, 0.0), "N3": (-0.391, 2.344, 0.0), "C4": (0.837, 2.868, 0.0),
          "N4": (1.875, 2.027, 0.0), "C5": (1.056, 4.275, 0.0), "C6": (-0.023, 5.068, 0.0)},
    "T": {"C1'": (-2.481, 5.354, 0.0), "N1": (-1.284, 4.500, 0.0), "C2": (-1.462, 3.135, 0.0),
          "O2": (-2.562, 2.608, 0.0), "N3": (-0.298, 2.407, 0.0), "C4": (0.994, 2.897, 0.0),
          "O4": (1.944, 2.119, 0.0), "C5": (1.106, 4.338, 0.0), "C7": (2.466, 4.961, 0.0),
          "C6": (-0.024, 5.057, 0.0)},
    "U": {"C1'": (-2.481, 5.354, 0.0), "N1": (-1.284, 4.500, 0.0), "C2": (-1.462, 3.135, 0.0),
          "O2": (-2.563, 2.608, 0.0), "N3": (-0.302, 2.400, 0.0), "C4": (0.989, 2.894, 0.0),
          "O4": (1.935, 2.094, 0.0), "C5": (1.089, 4.315, 0.0), "C6": (-0.024, 5.057, 0.0)},
}

#: Base SMILES written from the glycosidic nitrogen, with the PDB/Amber names of
#: the heavy atoms in SMILES order.
_BASE_SMILES: dict[str, tuple[str, tuple[str, ...]]] = {
    "A": ("n2cnc3c(N)ncnc32", ("N9", "C8", "N7", "C5", "C6", "N6", "N1", "C2", "N3", "C4")),
    "G": ("n2cnc3c(=O)[nH]c(N)nc32", ("N9", "C8", "N7", "C5", "C6", "O6", "N1", "C2", "N2", "N3", "C4")),
    "C": ("n2c(=O)nc(N)cc2", ("N1", "C2", "O2", "N3", "C4", "N4", "C5", "C6")),
    "T": ("n2c(=O)[nH]c(=O)c(C)c2", ("N1", "C2", "O2", "N3", "C4", "O4", "C5", "C7", "C6")),
    "U": ("n2c(=O)[nH]c(=O)cc2", ("N1", "C2", "O2", "N3", "C4", "O4", "C5", "C6")),
}

#: Watson-Crick partner of each base (DNA; RNA uses U for T).
COMPLEMENT = {"A": "T", "T": "A", "G": "C", "C": "G", "U": "A"}


@dataclass(frozen=True)
class NucleotideConformation:
    """Canonical torsions of one nucleotide, degrees (IUPAC definitions).

    alpha O3'(i-1)-P-O5'-C5', beta P-O5'-C5'-C4', gamma O5'-C5'-C4'-C3',
    delta C5'-C4'-C3'-O3', epsilon C4'-C3'-O3'-P(i+1), zeta C3'-O3'-P(i+1)-O5'(i+1),
    chi O4'-C1'-N9-C4 (purines) / O4'-C1'-N1-C2 (pyrimidines); ``pucker`` is the
    pseudorotation phase angle P of the sugar.
    """

    alpha: float
    beta: float
    gamma: float
    delta: float
    epsilon: float
    zeta: float
    chi: float
    pucker: float


@dataclass(frozen=True)
class Step:
    """Base-pair step parameters (3DNA convention): Angstrom and degrees."""

    shift: float
    slide: float
    rise: float
    tilt: float
    roll: float
    twist: float


# Canonical conformations. A: the A-DNA/A-RNA family (Saenger 1984, Table 9-3; within one
# standard deviation of the crystal means below). B: mean torsions of BI-DNA crystal
# structures (Schneider, Neidle & Berman, Biopolymers 42, 113 (1997); International Tables
# for Crystallography F, Table 23.3.2.1). Sugar puckers C3'-endo (P = 13 deg) and
# C1'-exo/C2'-endo (P = 140 deg, matching delta = 128 deg). Z: ZI-DNA of d(CGCGCG)
# (Wang et al., Nature 282, 680 (1979); Saenger, Principles of Nucleic Acid Structure,
# 1984): C anti / C2'-endo, G syn / C3'-endo.
CONFORMATIONS: dict[str, dict[str, NucleotideConformation]] = {
    "A": {"any": NucleotideConformation(-68.0, 178.0, 54.0, 82.0, -153.0, -71.0, -158.0, 13.0)},
    "B": {"any": NucleotideConformation(-62.0, 176.0, 48.0, 128.0, -176.0, -95.0, -111.0, 140.0)},
    "Z": {"pyrimidine": NucleotideConformation(-137.0, -139.0, 56.0, 138.0, -95.0, 80.0, -159.0, 155.0),
          "purine": NucleotideConformation(47.0, 179.0, -169.0, 99.0, -104.0, -69.0, 68.0, 13.0)},
}

# Step parameters of the right-handed families (Olson et al., PNAS 95, 11163 (1998);
# 3DNA fibre models, Lu & Olson, Nucleic Acids Res. 31, 5108 (2003)). Z-DNA steps are not
# tabulated here: they are fitted to its backbone (see :func:`step_transform`).
STEPS: dict[str, Step] = {
    "A": Step(0.0, -1.5, 3.3, 0.0, 11.0, 31.0),
    "B": Step(0.0, 0.4, 3.36, 0.0, 0.0, 36.0),
}

FORMS = ("A", "B", "Z")
PURINES = ("A", "G")


def conformation(form: str, base: str) -> NucleotideConformation:
    """Canonical torsions of ``base`` in ``form``."""
    table = CONFORMATIONS[form]
    if "any" in table:
        return table["any"]
    return table["purine" if base in PURINES else "pyrimidine"]


# --- rigid-body helpers ------------------------------------------------------------
def rotation(axis: str, degrees: float) -> np.ndarray:
    """3x3 rotation matrix about x, y or z by ``degrees`` (right-handed)."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def kabsch(mobile: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R (3, 3) and translation t (3,) with ``mobile @ R.T + t`` ~ ``target``."""
    mc, tc = mobile.mean(0), target.mean(0)
    h = (mobile - mc).T @ (target - tc)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return r, tc - mc @ r.T


def transform_from_step(s: Step) -> tuple[np.ndarray, np.ndarray]:
    """Rigid transform (R, t) of a base-pair step: frame i+1 in frame i.

    Frame i+1 = frame i turned by half the twist, the roll/tilt hinge and the
    other half twist; the origin moves by (shift, slide, rise) expressed in the
    mid-step frame (the 3DNA construction, roll and tilt as one small rotation).
    """
    hinge = rotation("y", s.roll) @ rotation("x", s.tilt)
    half_hinge = rotation("y", s.roll / 2) @ rotation("x", s.tilt / 2)
    mid = rotation("z", s.twist / 2) @ half_hinge
    rot = rotation("z", s.twist / 2) @ hinge @ rotation("z", s.twist / 2)
    return rot, mid @ np.array([s.shift, s.slide, s.rise])


def compose_frames(transforms: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Base-pair frames (R (3, 3) with the axes as columns, origin (3,)) along a helix.

    Frame 0 is the identity; frame i+1 = frame i followed by ``transforms[i]``.
    """
    frames = [(np.eye(3), np.zeros(3))]
    for rot, shift in transforms:
        r, o = frames[-1]
        frames.append((r @ rot, o + r @ shift))
    return frames


# --- nucleotide templates ----------------------------------------------------------
_BACKBONE_NAMES_5 = ("Cprev", "O3prev", "P", "OP1", "OP2", "O5'", "C5'", "C4'", "O4'", "C1'")
_NEXT_NAMES = ("Pnext", "OPnext1", "OPnext2", "O5next", "C5next")


def _template_smiles(base: str, rna: bool) -> tuple[str, list[str]]:
    """SMILES of CH3-O3'(i-1)-PO2-nucleotide-O3'-PO2-O5'(i+1)-CH3 and its atom names."""
    base_smiles, base_names = _BASE_SMILES[base]
    c2 = "[C@H](O)" if rna else "C"
    smiles = f"COP(=O)([O-])OC[C@H]1O[C@@H]({base_smiles}){c2}[C@@H]1OP(=O)([O-])OC"
    names = list(_BACKBONE_NAMES_5) + list(base_names) + ["C2'"] + (["O2'"] if rna else []) + \
        ["C3'", "O3'"] + list(_NEXT_NAMES)
    return smiles, names


def _pseudorotation_torsions(phase: float, amplitude: float = 38.0) -> list[float]:
    """Ring torsions nu0..nu4 (degrees) of pseudorotation phase ``phase`` (Altona-Sundaralingam)."""
    return [amplitude * np.cos(np.radians(phase + 144.0 * (j - 2))) for j in range(5)]


@lru_cache(maxsize=64)
def nucleotide_template(base: str, form: str, rna: bool, prev_zeta: float, next_alpha: float,
                        ) -> tuple[tuple[str, ...], np.ndarray]:
    """Heavy-atom template of one nucleotide in its standard base frame.

    Returns (names, positions (n, 3) Angstrom) including the neighbour atoms
    ``O3prev`` (O3' of the 5' neighbour), ``Pnext`` and ``O5next`` used to
    check backbone closure. Built with RDKit (ETKDGv3, seed 0) and relaxed
    with MMFF94 under torsion constraints, so it is deterministic.
    """
    conf = conformation(form, base)
    smiles, names = _template_smiles(base, rna)
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    index = {name: i for i, name in enumerate(names)}
    params = AllChem.ETKDGv3()
    params.randomSeed = 0
    if AllChem.EmbedMolecule(mol, params) != 0:
        raise RuntimeError(f"could not embed the {base} nucleotide template")
    props = ffh.MMFFGetMoleculeProperties(mol)
    ffh.MMFFGetMoleculeForceField(mol, props).Minimize(maxIts=2000)
    first = "C4" if base in PURINES else "C2"
    glyco = "N9" if base in PURINES else "N1"
    nu = _pseudorotation_torsions(conf.pucker)
    acyclic = [
        (("Cprev", "O3prev", "P", "O5'"), prev_zeta),
        (("O3prev", "P", "O5'", "C5'"), conf.alpha),
        (("P", "O5'", "C5'", "C4'"), conf.beta),
        (("O5'", "C5'", "C4'", "C3'"), conf.gamma),
        (("C4'", "C3'", "O3'", "Pnext"), conf.epsilon),
        (("C3'", "O3'", "Pnext", "O5next"), conf.zeta),
        (("O3'", "Pnext", "O5next", "C5next"), next_alpha),
        (("O4'", "C1'", glyco, first), conf.chi),
    ]
    ring = [
        (("C5'", "C4'", "C3'", "O3'"), conf.delta),
        (("C4'", "O4'", "C1'", "C2'"), nu[0]),
        (("O4'", "C1'", "C2'", "C3'"), nu[1]),
        (("C1'", "C2'", "C3'", "C4'"), nu[2]),
        (("C2'", "C3'", "C4'", "O4'"), nu[3]),
        (("C3'", "C4'", "O4'", "C1'"), nu[4]),
    ]
    # Acyclic torsions are set exactly first (rigid rotation about the bond); the ring
    # pucker can only be reached by minimisation, with the restraint stiffened in steps
    # so that no bond is stretched on the way.
    conformer = mol.GetConformer()
    for atoms4, value in acyclic:
        rdMolTransforms.SetDihedralDeg(conformer, *(index[a] for a in atoms4), value)
    for force_constant in (10.0, 100.0, 1000.0):
        ff = ffh.MMFFGetMoleculeForceField(mol, props)
        for atoms4, value in acyclic + ring:
            i, j, k, l = (index[a] for a in atoms4)
            ff.MMFFAddTorsionConstraint(i, j, k, l, False, value - 1.0, value + 1.0, force_constant)
        ff.Initialize()
        ff.Minimize(maxIts=5000)
    positions = np.asarray(ff.Positions(), dtype=float).reshape(-1, 3)[: len(names)]
    # superpose the base (and C1') onto its standard frame
    standard = STANDARD_BASES[base]
    keys = list(standard)
    r, t = kabsch(positions[[index[k] for k in keys]], np.array([standard[k] for k in keys]))
    return tuple(names), positions @ r.T + t


#: Strand II bases sit in the base-pair frame turned 180 degrees about x.
FLIP = np.diag([1.0, -1.0, -1.0])

# Backbone atom pairs that must coincide for two stacked nucleotides: atom of the 3'
# neighbour's template (its own frame) -> neighbour atom of the 5' template.
_LINKS = (("P", "Pnext"), ("O5'", "O5next"), ("C5'", "C5next"), ("O3prev", "O3'"), ("Cprev", "C3'"))


def template_for(base: str, form: str, rna: bool, previous: str | None, following: str | None,
                 ) -> dict[str, np.ndarray]:
    """Template of ``base`` (name -> position in its base frame) given its 5'/3' neighbours."""
    prev_zeta = conformation(form, previous or base).zeta
    next_alpha = conformation(form, following or base).alpha
    names, positions = nucleotide_template(base, form, rna, prev_zeta, next_alpha)
    return dict(zip(names, positions))


@lru_cache(maxsize=64)
def fitted_step(form: str, first: str, second: str, rna: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Step transform (R, t) that closes the backbone of both strands best.

    Least-squares superposition (Kabsch) of the phosphodiester atoms of the
    3' nucleotide (P, O5', C5' and the 5' neighbour's O3', C3') onto where the
    5' nucleotide's template puts them, for strand I (``first`` -> ``second``)
    and strand II (complements, running the other way) at once.
    """
    c_first, c_second = COMPLEMENT[first], COMPLEMENT[second]
    lower = template_for(first, form, rna, second, second)
    upper = template_for(second, form, rna, first, first)
    lower_ii = template_for(c_first, form, rna, c_second, c_second)
    upper_ii = template_for(c_second, form, rna, c_first, c_first)
    mobile, target = [], []
    for own, neighbour in _LINKS:
        mobile.append(upper[own])
        target.append(lower[neighbour])
        mobile.append(FLIP @ upper_ii[neighbour])
        target.append(FLIP @ lower_ii[own])
    return kabsch(np.array(mobile), np.array(target))


def step_transform(form: str, first: str, second: str, rna: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Rigid transform from the base pair of ``first`` to that of ``second`` (strand I bases).

    A and B: the canonical step parameters :data:`STEPS`. Z: fitted to the ZI
    backbone torsions by :func:`fitted_step`; for d(CG) this gives twists of
    about -12 deg (CpG) and -53 deg (GpC) and a slide of 5.3 A at CpG, close to
    the crystal values (-9/-51 deg, Wang et al. 1979), and a left-handed helix.
    """
    if form in STEPS:
        return transform_from_step(STEPS[form])
    return fitted_step(form, first, second, rna)
