"""Building blocks of the QCell subsets (stage 01)."""

from .carbohydrates import (
    MONOSACCHARIDES,
    build_library,
    build_monosaccharide,
    canonical_smiles,
    mol_with_hydrogens,
    molecule_from_smiles,
)

__all__ = [
    "MONOSACCHARIDES",
    "build_library",
    "build_monosaccharide",
    "canonical_smiles",
    "mol_with_hydrogens",
    "molecule_from_smiles",
]
