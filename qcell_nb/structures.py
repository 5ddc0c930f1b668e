"""Conventions for structures passed between stages.

Every structure is an :class:`ase.Atoms`. Metadata travels in ``atoms.info``
under these keys (all optional except where a stage says otherwise):

``name``          block name, e.g. ``"beta-D-glucopyranose"``
``subset``        QCell class: ``carbohydrates``, ``nucleic_acids``, ``lipids``,
                  ``ions_water``, ``dimers``
``smiles``        isomeric SMILES of the block (atom order of an RDKit
                  ``AddHs`` molecule built from it equals the atom order here)
``charge``        total charge in e (int)
``multiplicity``  spin multiplicity 2S+1 (int)
``conformer``     conformer index within its block (int)
``parent_id``     structure id of the structure this one was derived from
``frame``         frame index along an optimisation path or an MD trajectory (int)

Class-specific keys: ``block_type``, ``donor``, ``acceptor``, ``linkage``, ``anomer``, ``residue``
(carbohydrates); ``form``, ``sequence``, ``fragment`` (nucleic acids); ``fragment_kind``, ``unit``,
``members`` (lipids); ``ion``, ``n_waters``, ``shell_radius`` (ion clusters); ``n_atoms_a``,
``scan_factor``, ``contact_distance`` (dimers); ``mm_charges`` (ML/MM structures). Structures
that carry an OpenMM topology (MD frames and the fragments carved from them) hold it in
``residue_index``, ``residue_name``, ``residue_id``, ``atom_name``, ``chain_index`` and
``bonds`` (see :mod:`qcell_nb.md`).

A structure's identity is :func:`structure_id`: a hash of atomic numbers,
positions rounded to 1e-4 Å, charge and multiplicity. It keys resume and
de-duplication.
"""

from __future__ import annotations

import hashlib

import numpy as np
from ase import Atoms
from ase.db.core import convert_str_to_int_float_bool_or_str

SUBSETS = ("carbohydrates", "nucleic_acids", "lipids", "ions_water", "dimers")

#: Positions are rounded to this many decimals (Å) before hashing.
POSITION_DECIMALS = 4

#: Å: atoms closer than this are an input error for the electronic-structure engines
#: (a bonded H-H pair is 0.74 Å; PySCF and tblite fail obscurely on overlapping atoms).
OVERLAP_DISTANCE = 0.5


def charge_of(atoms: Atoms) -> int:
    """Total charge in e from ``atoms.info['charge']`` (default 0)."""
    return int(atoms.info.get("charge", 0))


def multiplicity_of(atoms: Atoms) -> int:
    """Spin multiplicity from ``atoms.info['multiplicity']``.

    Defaults to 1 for an even electron count and 2 for an odd one.
    """
    if "multiplicity" in atoms.info:
        return int(atoms.info["multiplicity"])
    n_electrons = int(atoms.get_atomic_numbers().sum()) - charge_of(atoms)
    return 1 if n_electrons % 2 == 0 else 2


def closest_pair(atoms: Atoms) -> tuple[int, int, float]:
    """The two closest atoms ``(i, j, distance in Å)`` with ``i < j``; ``(0, 0, inf)`` below two atoms.

    Periodic structures use the minimum-image distance.
    """
    if len(atoms) < 2:
        return 0, 0, float("inf")
    distances = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
    i, j = np.triu_indices(len(atoms), k=1)
    pair_distances = distances[i, j]
    k = int(np.argmin(pair_distances))
    return int(i[k]), int(j[k]), float(pair_distances[k])


def reads_as_scalar(text: str) -> bool:
    """True if ASE's database would read ``text`` as a number or a bool ("1e5", "0042", "True"):
    it refuses such strings as key-value pairs."""
    return not isinstance(convert_str_to_int_float_bool_or_str(text), str)


def structure_id(atoms: Atoms) -> str:
    """Identity of a structure: 16 hex digits of a SHA-1 hash.

    Hashes atomic numbers, positions rounded to ``POSITION_DECIMALS`` decimals
    in Å, charge and multiplicity. Rounding makes the id stable against
    float noise from a round trip through a file; ``+ 0.0`` folds ``-0.0``.
    About one digest in 600 reads as a number (all digits, or digits ``e``
    digits such as ``8459165549e40316``); ASE's database refuses such a string
    and other tools would turn it into a float, so those ids get an ``x`` in
    front (17 characters). Every other id is unchanged.
    """
    numbers = np.asarray(atoms.get_atomic_numbers(), dtype=np.int64)
    positions = np.round(np.asarray(atoms.get_positions(), dtype=np.float64), POSITION_DECIMALS) + 0.0
    digest = hashlib.sha1()
    digest.update(numbers.tobytes())
    digest.update(positions.tobytes())
    digest.update(f"{charge_of(atoms)}/{multiplicity_of(atoms)}".encode())
    sid = digest.hexdigest()[:16]
    return "x" + sid if reads_as_scalar(sid) else sid
