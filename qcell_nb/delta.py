"""Delta-learning (Boselt, Thürlemann and Riniker, JCTC 2021): learn PBE0+MBD minus GFN2-xTB.

The tight-binding baseline carries most of the covalent physics at a fraction of the DFT cost, so
a model trained on the difference needs less data for the same error. Training targets are
``E_ref - E_GFN2`` and ``F_ref - F_GFN2``; at inference :class:`DeltaCalculator` adds the
baseline back, so the result is again a PBE0+MBD-level prediction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes, all_properties
from ase.calculators.singlepoint import SinglePointCalculator

from .calculators.tightbinding import single_point

BASELINE = "GFN2-xTB (tblite)"


def baseline_energy_forces(atoms: Atoms, threads: int = 1) -> tuple[float, np.ndarray]:
    """GFN2-xTB energy (eV) and forces (eV/Å, (n_atoms, 3)) of ``atoms`` (not modified).

    ``threads`` caps tblite's OpenMP threads: beside JAX in one process they otherwise fight it
    (measured ~50x slower); stages parallelise over structures instead.

    Raises:
        TightBindingError: naming the structure when the calculation fails or is non-finite.
    """
    return single_point(atoms, threads=threads)


def delta_structures(structures: Sequence[Atoms], threads: int = 1) -> list[Atoms]:
    """Copies of labelled ``structures`` whose energy and forces are reference minus baseline.

    Only energy and forces change; other labels (dipole, charges, Hirshfeld ratios) are kept, since
    the baseline does not model them at the reference level. ``info["delta_baseline"]`` names it.
    """
    out = []
    for atoms in structures:
        if atoms.calc is None or "energy" not in atoms.calc.results:
            raise ValueError(f"structure {atoms.info.get('name', atoms.get_chemical_formula())!r} has no "
                             "reference energy to take a delta from")
        energy, forces = baseline_energy_forces(atoms, threads)
        copy = atoms.copy()
        results = {key: value for key, value in atoms.calc.results.items() if key in all_properties}
        results["energy"] = float(atoms.get_potential_energy()) - energy
        if "forces" in results:
            results["forces"] = np.asarray(atoms.get_forces()) - forces
        results.pop("free_energy", None)
        copy.calc = SinglePointCalculator(copy, **results)
        copy.info["delta_baseline"] = BASELINE
        out.append(copy)
    return out


class DeltaCalculator(Calculator):
    """A learned correction on top of GFN2-xTB: energy and forces are the sum of both.

    Args:
        correction: ASE calculator of the delta model (e.g. :class:`qcell_nb.model.MLCalculator`).
        threads: OpenMP threads for the tight-binding part.
    """

    implemented_properties = ["energy", "forces"]

    def __init__(self, correction: Calculator, threads: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.correction = correction
        self.threads = threads

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        energy, forces = baseline_energy_forces(self.atoms, self.threads)
        work = self.atoms.copy()
        work.calc = self.correction
        self.results = {"energy": energy + float(work.get_potential_energy()),
                        "forces": forces + np.asarray(work.get_forces())}
