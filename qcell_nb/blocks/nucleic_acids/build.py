"""Stage 01 for nucleic acids: DNA duplexes (A, B, Z) and single RNA strands, with counter-ions.

Coordinates come from :mod:`.geometry` (standard bases, canonical torsions and
step parameters; nothing is downloaded). The heavy atoms get PDB/Amber names,
OpenMM adds the hydrogens (``Modeller.addHydrogens``), and a short restrained
minimisation with the force field below (reaction-field electrostatics) closes the
backbone: base atoms are held near their ideal positions, the sugar-phosphate
atoms are free to move the few tenths of an Angstrom the templates leave open.
One Na+ per phosphate then sits 2.8 A out along the OP1/OP2 bisector.

Force field: Amber OL21 for DNA (``amber19/DNA.OL21.xml``; Zgarbova et al.,
J. Chem. Theory Comput. 17, 6292 (2021)) with OL3 for RNA
(``amber14/RNA.OL3.xml``; Zgarbova et al., JCTC 7, 2886 (2011)), both shipped
with OpenMM (the nucleic-acid part of ``amber19-all.xml``). OL21 is the
current refinement of the OL family (bsc0 -> OL15 -> OL21: epsilon/zeta and
alpha/gamma corrections) and reproduces B-DNA helical parameters and the
Z-DNA backbone better than OL15 and bsc1; OL3 is the standard Amber RNA
force field. Water TIP3P (3 sites: cheapest on CPU; OPC, the model OL21 was
tuned with, is one argument away) with its Joung-Cheatham ions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import openmm
from ase import Atoms
from openmm import app, unit

from ...md import add_hydrogens, atoms_from_topology
from . import geometry as geo

__all__ = [
    "DNA_LETTERS",
    "FORCEFIELD_FILES",
    "FORMS",
    "RNA_LETTERS",
    "WATER_FILES",
    "build_duplex",
    "build_duplexes",
    "build_rna_strand",
    "build_rna_strands",
    "check_form",
    "check_sequence",
    "nucleic_acid_forcefield",
]

DNA_LETTERS = "ACGT"
RNA_LETTERS = "ACGU"
FORMS = geo.FORMS
FORCEFIELD_FILES = ("amber19/DNA.OL21.xml", "amber14/RNA.OL3.xml")
WATER_FILES = {"tip3p": "amber19/tip3p.xml", "opc": "amber19/opc.xml", "tip4pew": "amber19/tip4pew.xml"}

#: Heavy-atom positions are rounded to this many decimals (Å) before hydrogens are added.
HEAVY_ATOM_DECIMALS = 6

#: Harmonic restraints of the backbone-closing minimisation, kJ/mol/nm^2.
BASE_RESTRAINT = 1000.0
BACKBONE_RESTRAINT = 100.0
#: Backbone-closing minimisation: L-BFGS tolerance (kJ/mol/nm) and iteration cap.
MINIMISER_TOLERANCE = 5.0
MINIMISER_STEPS = 500
#: Distance of a counter-ion from its phosphorus, Angstrom.
ION_DISTANCE = 2.8


def check_sequence(sequence: str, kind: str = "DNA") -> str:
    """Upper-case ``sequence`` after checking its letters.

    Raises
    ------
    ValueError
        Naming the sequence, the first bad letter and its (1-based) position,
        or an empty sequence.
    """
    letters = DNA_LETTERS if kind == "DNA" else RNA_LETTERS
    if not isinstance(sequence, str) or not sequence:
        raise ValueError(f"{kind} sequence {sequence!r} is empty or not a string")
    upper = sequence.upper()
    for position, letter in enumerate(upper, start=1):
        if letter not in letters:
            raise ValueError(f"{kind} sequence {sequence!r}: letter {sequence[position - 1]!r} at position "
                             f"{position} is not one of {letters}")
    return upper


def check_form(form: str, sequence: str | None = None) -> str:
    """Validate a helix form (``"A"``, ``"B"`` or ``"Z"``).

    Z-DNA is built as the alternating purine-pyrimidine dinucleotide repeat it
    forms in nature, so a Z sequence must alternate.
    """
    if form not in FORMS:
        raise ValueError(f"unknown helix form {form!r}; known forms: {', '.join(FORMS)}")
    if form == "Z" and sequence is not None:
        purine = [letter in geo.PURINES for letter in sequence]
        if any(a == b for a, b in zip(purine, purine[1:])):
            raise ValueError(f"Z-DNA sequence {sequence!r} does not alternate purines and pyrimidines "
                             "(Z-DNA is a dinucleotide repeat such as CGCGCG)")
    return form


def nucleic_acid_forcefield(water_model: str | None = "tip3p", implicit: bool = False) -> app.ForceField:
    """OpenMM Amber force field for DNA (OL21) and RNA (OL3), with water and ions or GBn2."""
    files = list(FORCEFIELD_FILES)
    if water_model is not None:
        if water_model not in WATER_FILES:
            raise ValueError(f"unknown water model {water_model!r}; known: {', '.join(WATER_FILES)}")
        files.append(WATER_FILES[water_model])
    if implicit:
        files.append("implicit/gbn2.xml")
    return app.ForceField(*files)


# --- heavy-atom assembly ------------------------------------------------------------
_DUMMIES = {"Cprev", "O3prev", "Pnext", "OPnext1", "OPnext2", "O5next", "C5next"}
_PHOSPHATE = ("P", "OP1", "OP2")


def _strand(bases: str, frames, flip: bool, form: str, rna: bool) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(base letter, heavy-atom name -> position) for one strand, 5' to 3'.

    ``frames`` are the base-pair frames of the strand's residues in 5'->3'
    order; ``flip`` puts the base in the strand-II orientation.
    """
    residues = []
    for i, base in enumerate(bases):
        template = geo.template_for(base, form, rna, bases[i - 1] if i else None,
                                    bases[i + 1] if i + 1 < len(bases) else None)
        rot, origin = frames[i]
        if flip:
            rot = rot @ geo.FLIP
        atoms = {name: rot @ xyz + origin for name, xyz in template.items() if name not in _DUMMIES}
        if i == 0:  # Amber 5'-terminal residues end in HO5', without a phosphate
            for name in _PHOSPHATE:
                atoms.pop(name)
        residues.append((base, atoms))
    return residues


def _topology(strands: list[list[tuple[str, dict[str, np.ndarray]]]], rna: bool) -> tuple[app.Topology, np.ndarray]:
    """OpenMM topology (heavy atoms, standard bonds) and positions (n, 3) in Angstrom."""
    topology = app.Topology()
    positions = []
    for strand in strands:
        chain = topology.addChain()
        for base, atoms in strand:
            residue = topology.addResidue(base if rna else "D" + base, chain)
            for name, xyz in atoms.items():
                topology.addAtom(name, app.Element.getBySymbol(name[0]), residue)
                positions.append(xyz)
    topology.createStandardBonds()
    return topology, np.asarray(positions)


def _minimise(topology: app.Topology, positions: np.ndarray, forcefield: app.ForceField) -> np.ndarray:
    """Restrained minimisation (reaction-field electrostatics) closing the backbone; positions in and out in Angstrom."""
    # Reaction field beyond 1 nm (solvent dielectric 78.3) screens the phosphates like
    # water would, at a fraction of the cost of GBn2 (which is ~50x slower on CPU here).
    system = forcefield.createSystem(topology, nonbondedMethod=app.CutoffNonPeriodic,
                                     nonbondedCutoff=1.0 * unit.nanometer, constraints=None)
    restraint = openmm.CustomExternalForce("0.5*k*((x-x0)^2+(y-y0)^2+(z-z0)^2)")
    for name in ("k", "x0", "y0", "z0"):
        restraint.addPerParticleParameter(name)
    backbone = {"P", "OP1", "OP2", "O5'", "C5'", "C4'", "O4'", "C3'", "O3'", "C2'", "O2'"}
    for atom in topology.atoms():
        if atom.element.symbol in ("H", "Na"):
            continue
        k = BACKBONE_RESTRAINT if atom.name in backbone else BASE_RESTRAINT
        x0, y0, z0 = positions[atom.index] / 10.0
        restraint.addParticle(atom.index, [k, x0, y0, z0])
    system.addForce(restraint)
    platform = openmm.Platform.getPlatformByName("CPU")
    # Deterministic force summation: without it the long minimisation wanders (B-DNA GCGATCG built
    # in three processes ended up to 1.8 Å apart, so the block's id and everything after it changed).
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), platform,
                             {"Threads": "1", "DeterministicForces": "true"})
    context.setPositions(positions / 10.0)
    openmm.LocalEnergyMinimizer.minimize(context, MINIMISER_TOLERANCE, MINIMISER_STEPS)
    state = context.getState(getPositions=True)
    return np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.angstrom))


def _add_counter_ions(topology: app.Topology, positions: np.ndarray) -> tuple[app.Topology, np.ndarray]:
    """One Na+ per phosphate, ``ION_DISTANCE`` out from P along the OP1/OP2 bisector."""
    modeller = app.Modeller(topology, positions / 10.0 * unit.nanometer)
    ions = app.Topology()
    chain = ions.addChain()
    ion_positions = []
    for residue in topology.residues():
        named = {atom.name: atom.index for atom in residue.atoms()}
        if "P" not in named:
            continue
        p = positions[named["P"]]
        out = (positions[named["OP1"]] + positions[named["OP2"]]) / 2 - p
        ion_positions.append(p + ION_DISTANCE * out / np.linalg.norm(out))
        ion = ions.addResidue("NA", chain)
        ions.addAtom("NA", app.Element.getBySymbol("Na"), ion)
    if ion_positions:
        modeller.add(ions, np.asarray(ion_positions) / 10.0 * unit.nanometer)
    merged = np.asarray(modeller.getPositions().value_in_unit(unit.angstrom))
    return modeller.topology, merged


def _finish(strands, rna: bool, counter_ions: bool, info: dict) -> Atoms:
    """Topology, hydrogens, restrained minimisation, counter-ions -> Atoms with topology in info."""
    topology, positions = _topology(strands, rna)
    # The heavy-atom frames come out of small BLAS products and an SVD whose last bit depends on
    # how the arrays happen to be aligned (importing numpy before openmm moved GCGC by 4e-15 Å);
    # the hydrogen placement and the long minimisation below amplify that to 0.01 Å and a new id.
    # Snapping to 1e-6 Å removes it unless a coordinate sits within 4e-15 of a rounding boundary.
    positions = np.round(positions, HEAVY_ATOM_DECIMALS)
    forcefield = nucleic_acid_forcefield(water_model="tip3p")
    modeller = app.Modeller(topology, positions / 10.0 * unit.nanometer)
    add_hydrogens(modeller, forcefield)
    topology = modeller.topology
    positions = np.asarray(modeller.getPositions().value_in_unit(unit.angstrom))
    # Counter-ions are added after the minimisation: without water around them they would
    # pull the phosphates together (A-DNA P-P shrinks from 6.1 to 5.6 A when they are present).
    positions = _minimise(topology, positions, forcefield)
    n_phosphates = sum(1 for atom in topology.atoms() if atom.name == "P")
    if counter_ions:
        topology, positions = _add_counter_ions(topology, positions)
    info = dict(info, subset="nucleic_acids", multiplicity=1,
                charge=0 if counter_ions else -n_phosphates, n_phosphates=n_phosphates)
    return atoms_from_topology(topology, positions, info)


def build_duplex(sequence: str, form: str = "B", counter_ions: bool = True) -> Atoms:
    """Double-stranded DNA of ``sequence`` (strand I, 5'->3') in A, B or Z form.

    Parameters
    ----------
    sequence:
        Strand I, letters ACGT (case-insensitive); strand II is its Watson-Crick
        complement. Z form needs an alternating purine-pyrimidine sequence.
    form:
        ``"A"``, ``"B"`` or ``"Z"``.
    counter_ions:
        Add one Na+ per phosphate (total charge 0); otherwise the charge is
        minus the number of phosphates.

    Returns
    -------
    ase.Atoms
        All atoms with hydrogens (positions in Angstrom); ``info`` holds name
        (``"B-DNA GCGATCG"``), subset, form, sequence, charge, multiplicity,
        n_phosphates and the OpenMM topology arrays of
        :func:`qcell_nb.md.atoms_from_topology` (chain 0 = strand I, chain 1 =
        strand II, chain 2 = ions). The build is deterministic (no seed).
    """
    sequence = check_sequence(sequence, "DNA")
    check_form(form, sequence)
    n = len(sequence)
    if n < 2:
        raise ValueError(f"DNA sequence {sequence!r}: a duplex needs at least 2 base pairs")
    transforms = [geo.step_transform(form, sequence[i], sequence[i + 1]) for i in range(n - 1)]
    frames = geo.compose_frames(transforms)
    complement = "".join(geo.COMPLEMENT[b] for b in sequence)
    strand_i = _strand(sequence, frames, False, form, rna=False)
    strand_ii = _strand(complement[::-1], frames[::-1], True, form, rna=False)
    return _finish([strand_i, strand_ii], False, counter_ions,
                   {"name": f"{form}-DNA {sequence}", "form": form, "sequence": sequence, "kind": "duplex"})


def build_rna_strand(sequence: str, counter_ions: bool = True) -> Atoms:
    """Single-stranded RNA of ``sequence`` (5'->3', letters ACGU) in A-form helical geometry.

    The strand is strand I of an ideal A-RNA duplex (C3'-endo, canonical
    A-form torsions); the MD of stage 02 lets it leave that geometry. Info as
    in :func:`build_duplex`, with name ``"RNA GCAUC"`` and form ``"A"``.
    """
    sequence = check_sequence(sequence, "RNA")
    transforms = [geo.step_transform("A", sequence[i], sequence[i + 1]) for i in range(len(sequence) - 1)]
    frames = geo.compose_frames(transforms)
    strand = _strand(sequence, frames, False, "A", rna=True)
    return _finish([strand], True, counter_ions,
                   {"name": f"RNA {sequence}", "form": "A", "sequence": sequence, "kind": "rna_strand"})


def build_duplexes(sequences: Sequence[str], forms: Sequence[str] = ("A", "B", "Z")) -> list[Atoms]:
    """Stage 01: every (sequence, form) duplex that the form allows.

    Z is built only for sequences that alternate purines and pyrimidines; the
    others are skipped for Z (they are not Z-forming). Bad letters or forms
    raise before anything is built.
    """
    checked = [check_sequence(s, "DNA") for s in sequences]
    for form in forms:
        check_form(form)
    blocks = []
    for form in forms:
        for sequence in checked:
            try:
                check_form(form, sequence)
            except ValueError:
                continue
            blocks.append(build_duplex(sequence, form))
    return blocks


def build_rna_strands(sequences: Sequence[str]) -> list[Atoms]:
    """Stage 01: one single-stranded RNA per sequence (letters checked before building)."""
    checked = [check_sequence(s, "RNA") for s in sequences]
    return [build_rna_strand(s) for s in checked]
