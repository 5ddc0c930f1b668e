"""Export the labelled dataset to the formats other force-field codes read.

Three writers, each with a reader used to check the round trip:

- :func:`export_mace_extxyz`: extended XYZ with MACE's default keys
  (``mace.data.utils.DefaultKeys``): ``REF_energy`` (eV) and ``dipole``
  (e·Å) in the frame's info, ``REF_forces`` (eV/Å) and ``REF_charges`` (e)
  as per-atom arrays, ``total_charge`` (e) and ``total_spin`` (the spin
  multiplicity 2S+1, 1 for a closed shell) in info. Train with the defaults,
  or name the keys explicitly (``--energy_key REF_energy --forces_key
  REF_forces``); the keys are arguments here too.
- :func:`export_so3lr_extxyz`: extended XYZ as SO3LR's (mlff's) loaders read
  it through ASE: energy, forces and dipole as the frame's calculator results
  (``energy=``, ``forces``, ``dipole=`` in the file), total charge in
  ``info['charge']``, ``info['multiplicity']`` and the Hirshfeld volume ratios
  as the per-atom array ``hirsh_ratios``.
- :func:`export_spice_hdf5`: the SPICE layout (Eastman et al., Sci. Data 10,
  11 (2023)): one HDF5 group per molecule holding ``atomic_numbers`` (n,),
  ``conformations`` (m, n, 3) in bohr, ``dft_total_energy`` (m,) in hartree,
  ``dft_total_gradient`` (m, n, 3) in hartree/bohr (the gradient, i.e. minus
  the forces), ``formation_energy`` (m,) in hartree when free-atom energies
  are given, ``scf_dipole`` (m, 3) in e·bohr, ``mbis_charges`` (m, n, 1) in
  e (here Hirshfeld charges under SPICE's name; the ``charge_model``
  attribute says so), ``hirshfeld_volume_ratios`` (m, n), and string
  datasets ``smiles`` and ``subset``. Every numeric dataset has a ``units``
  attribute. Values are stored in float64 (SPICE uses float32).

Inside the package everything is in ASE units (eV, Å, e); conversions to
hartree and bohr happen here, once, with :data:`ase.units.Hartree` and
:data:`ase.units.Bohr`.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.units import Bohr, Hartree

from .store import Dataset
from .structures import charge_of, multiplicity_of

__all__ = [
    "MACE_KEYS",
    "dataset_frames",
    "export_mace_extxyz",
    "export_so3lr_extxyz",
    "export_spice_hdf5",
    "read_mace_extxyz",
    "read_so3lr_extxyz",
    "read_spice_hdf5",
]

#: MACE's default extxyz keys (mace.data.utils.DefaultKeys), by property.
MACE_KEYS: dict[str, str] = {
    "energy": "REF_energy",
    "forces": "REF_forces",
    "dipole": "dipole",
    "charges": "REF_charges",
    "total_charge": "total_charge",
    "total_spin": "total_spin",
}

#: SPICE's unit strings.
SPICE_UNITS: dict[str, str] = {
    "conformations": "bohr",
    "dft_total_energy": "hartree",
    "formation_energy": "hartree",
    "dft_total_gradient": "hartree/bohr",
    "scf_dipole": "elementary_charge*bohr",
    "mbis_charges": "elementary_charge",
    "hirshfeld_volume_ratios": "dimensionless",
    "total_charge": "elementary_charge",
}

# info keys that are never copied as plain metadata: they are written under
# their format's own names, or are per-atom arrays.
_HANDLED_INFO = {"hirsh_ratios", "total_charge", "multiplicity", "charge"}
# ASE's extxyz reader turns info entries with calculator property names into
# calculator results; metadata under these names would masquerade as labels.
_ASE_PROPERTY_NAMES = {"energy", "free_energy", "forces", "stress", "dipole", "charges", "magmom", "magmoms"}


def dataset_frames(dataset_path: str | os.PathLike, **selection: Any) -> list[Atoms]:
    """Labelled structures of a dataset database (rows matching ``selection``).

    Each has a single-point calculator with the stored energy (eV), forces
    (eV/Å), dipole (e·Å) and charges (e), and its metadata in ``info``.

    Raises
    ------
    FileNotFoundError
        If ``dataset_path`` is a file path that does not exist (opening it
        would silently create an empty database).
    ValueError
        If a row lacks an energy or forces.
    """
    if "://" not in str(dataset_path) and not Path(dataset_path).exists():
        raise FileNotFoundError(f"dataset {dataset_path} does not exist; run stage 05 first")
    frames = Dataset(dataset_path).structures(**selection)
    for atoms in frames:
        results = atoms.calc.results if atoms.calc is not None else {}
        for key in ("energy", "forces"):
            if key not in results:
                name = atoms.info.get("name", atoms.get_chemical_formula())
                raise ValueError(f"dataset {dataset_path}: structure {name!r} "
                                 f"(sid {atoms.info.get('sid', '?')}) has no {key}")
    return frames


def _total_charge(atoms: Atoms) -> int:
    return int(atoms.info.get("total_charge", charge_of(atoms)))


def _multiplicity(atoms: Atoms) -> int:
    return int(atoms.info["multiplicity"]) if "multiplicity" in atoms.info else multiplicity_of(atoms)


def _scalar_metadata(info: dict[str, Any], exclude: set[str]) -> dict[str, Any]:
    """Scalars and strings of ``info`` that extxyz can hold (no spaces or quotes in strings)."""
    keep = {}
    for key, value in info.items():
        if key in exclude or key in _HANDLED_INFO or key in _ASE_PROPERTY_NAMES:
            continue
        if isinstance(value, (bool, np.bool_, int, np.integer, float, np.floating)):
            keep[key] = value.item() if isinstance(value, np.generic) else value
        elif isinstance(value, str) and value and not re.search(r'[\s"\'=]', value):
            keep[key] = value
    return keep


def _plain_frame(atoms: Atoms) -> Atoms:
    return Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)


def _write_extxyz(path: str | os.PathLike, frames: list[Atoms]) -> None:
    from ase.io import write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    write(tmp, frames, format="extxyz")
    os.replace(tmp, path)  # a crash leaves the old file or the complete new one


def export_mace_extxyz(dataset_path: str | os.PathLike, out_path: str | os.PathLike, *,
                       keys: dict[str, str] | None = None, head: str | None = None,
                       **selection: Any) -> int:
    """Write the dataset as extended XYZ with MACE's keys; returns the frame count.

    Parameters
    ----------
    dataset_path:
        Dataset database (stage 05's ``dataset.db``).
    out_path:
        Output ``.xyz`` file (replaced if present).
    keys:
        Overrides of :data:`MACE_KEYS` (property -> file key), e.g.
        ``{"energy": "pbe0_mbd_energy"}``; pass the same names to MACE's
        ``--energy_key`` etc.
    head:
        Optional MACE head name written as ``info['head']`` (multi-head fits).
    selection:
        ASE-db selection of rows (e.g. ``subset="carbohydrates"``).

    Other scalar metadata (name, subset, sid, ...) is kept in each frame's
    info. No calculator is attached, so no ``energy=``/``forces`` columns
    appear that MACE could mistake for labels. (ASE's reader files the
    ``dipole`` entry under a calculator on reading, as for any key named like
    a calculator property; :func:`read_mace_extxyz` accepts both places.)
    """
    names = {**MACE_KEYS, **(keys or {})}
    unknown = set(keys or {}) - set(MACE_KEYS)
    if unknown:
        raise ValueError(f"unknown MACE key(s) {sorted(unknown)}; known: {sorted(MACE_KEYS)}")
    out = []
    for atoms in dataset_frames(dataset_path, **selection):
        results = atoms.calc.results
        frame = _plain_frame(atoms)
        frame.info.update(_scalar_metadata(atoms.info, set(names.values())))
        frame.info[names["energy"]] = float(results["energy"])
        frame.arrays[names["forces"]] = np.asarray(results["forces"], dtype=float)
        if "dipole" in results:
            frame.info[names["dipole"]] = np.asarray(results["dipole"], dtype=float)
        if "charges" in results:
            frame.arrays[names["charges"]] = np.asarray(results["charges"], dtype=float)
        frame.info[names["total_charge"]] = _total_charge(atoms)
        frame.info[names["total_spin"]] = _multiplicity(atoms)
        if head is not None:
            frame.info["head"] = head
        out.append(frame)
    _write_extxyz(out_path, out)
    return len(out)


def read_mace_extxyz(path: str | os.PathLike, keys: dict[str, str] | None = None) -> list[Atoms]:
    """Read a file written by :func:`export_mace_extxyz` back into labelled Atoms.

    Each frame gets a single-point calculator with ``energy``, ``forces`` and,
    when present, ``dipole`` and ``charges``; ``info['total_charge']`` and
    ``info['multiplicity']`` hold the electronic state.
    """
    from ase.io import read

    names = {**MACE_KEYS, **(keys or {})}
    frames = []
    for frame in read(path, index=":", format="extxyz"):
        results = {"energy": float(frame.info.pop(names["energy"])),
                   "forces": np.asarray(frame.arrays.pop(names["forces"]))}
        if names["dipole"] in frame.info:
            results["dipole"] = np.asarray(frame.info.pop(names["dipole"]), dtype=float)
        elif frame.calc is not None and names["dipole"] in frame.calc.results:
            # ASE's reader moves info keys named like calculator properties
            # (MACE's default "dipole" is one) into a calculator.
            results["dipole"] = np.asarray(frame.calc.results[names["dipole"]], dtype=float)
        if names["charges"] in frame.arrays:
            results["charges"] = np.asarray(frame.arrays.pop(names["charges"]))
        frame.info["total_charge"] = int(frame.info.pop(names["total_charge"]))
        frame.info["multiplicity"] = int(frame.info.pop(names["total_spin"]))
        frame.calc = SinglePointCalculator(frame, **results)
        frames.append(frame)
    return frames


def export_so3lr_extxyz(dataset_path: str | os.PathLike, out_path: str | os.PathLike, **selection: Any) -> int:
    """Write the dataset as extended XYZ for SO3LR's loaders; returns the frame count.

    Energy (eV), forces (eV/Å), dipole (e·Å) and Hirshfeld charges (e) are
    the frame's calculator results; ``info['charge']`` is the total charge,
    ``info['multiplicity']`` the spin multiplicity, and the per-atom array
    ``hirsh_ratios`` the Hirshfeld volume ratios (rows without them are
    written without the array).
    """
    out = []
    for atoms in dataset_frames(dataset_path, **selection):
        frame = _plain_frame(atoms)
        frame.info.update(_scalar_metadata(atoms.info, set()))
        frame.info["charge"] = _total_charge(atoms)
        frame.info["multiplicity"] = _multiplicity(atoms)
        ratios = atoms.info.get("hirsh_ratios")
        if ratios is not None:
            ratios = np.asarray(ratios, dtype=float)
            if ratios.shape != (len(atoms),):
                raise ValueError(f"{atoms.info.get('name', 'structure')}: hirsh_ratios has shape {ratios.shape}, "
                                 f"expected ({len(atoms)},)")
            frame.arrays["hirsh_ratios"] = ratios
        results = {k: v for k, v in atoms.calc.results.items() if k in ("energy", "forces", "dipole", "charges")}
        frame.calc = SinglePointCalculator(frame, **results)
        out.append(frame)
    _write_extxyz(out_path, out)
    return len(out)


def read_so3lr_extxyz(path: str | os.PathLike) -> list[Atoms]:
    """Read a file written by :func:`export_so3lr_extxyz` (ASE's own extxyz reader)."""
    from ase.io import read

    return list(read(path, index=":", format="extxyz"))


def _group_name(atoms: Atoms) -> str:
    """SPICE group of a structure: its name, else SMILES, else formula, with charge."""
    label = str(atoms.info.get("name") or atoms.info.get("smiles") or atoms.get_chemical_formula())
    charge = _total_charge(atoms)
    if charge:
        label += f" charge={charge:+d}"
    return label.replace("/", "_")  # '/' would make nested HDF5 groups


def export_spice_hdf5(dataset_path: str | os.PathLike, out_path: str | os.PathLike, *,
                      atom_energies: dict[int, float] | None = None, **selection: Any) -> int:
    """Write the dataset in SPICE's HDF5 layout; returns the number of conformations.

    Structures are grouped into molecules by ``info['name']`` (else SMILES,
    else formula) and total charge; conformations of one group must have the
    same atoms in the same order, and a structure that differs starts a new
    group with a ``#2``, ``#3`` ... suffix.

    Parameters
    ----------
    atom_energies:
        Optional isolated-atom energies in eV by atomic number, at the same
        level of theory; when given, ``formation_energy`` = total energy minus
        the sum of atom energies is written (as SPICE does).
    """
    import h5py

    frames = dataset_frames(dataset_path, **selection)
    groups: OrderedDict[str, list[Atoms]] = OrderedDict()
    for atoms in frames:
        base = _group_name(atoms)
        name, suffix = base, 1
        while name in groups and not (
            np.array_equal(groups[name][0].numbers, atoms.numbers)
            and _multiplicity(groups[name][0]) == _multiplicity(atoms)
        ):
            suffix += 1
            name = f"{base} #{suffix}"
        groups.setdefault(name, []).append(atoms)

    if atom_energies is not None:
        missing = sorted({int(z) for a in frames for z in a.numbers} - set(atom_energies))
        if missing:
            raise ValueError(f"atom_energies lacks atomic number(s) {missing}")

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    metadata = Dataset(dataset_path).metadata  # dataset_frames checked that it exists
    with h5py.File(tmp, "w") as handle:
        level = metadata.get("level_of_theory")
        if level:
            handle.attrs["level_of_theory"] = str(level)
        handle.attrs["source"] = "qcell-nb"
        for name, members in groups.items():
            first = members[0]
            group = handle.create_group(name)
            string = h5py.string_dtype()
            group.create_dataset("smiles", data=[str(first.info.get("smiles", ""))], dtype=string)
            group.create_dataset("subset", data=[str(first.info.get("subset", ""))], dtype=string)
            group.create_dataset("atomic_numbers", data=first.numbers.astype(np.int16))
            group.attrs["total_charge"] = _total_charge(first)
            group.attrs["multiplicity"] = _multiplicity(first)

            def put(key: str, values: np.ndarray, **attrs: str) -> None:
                ds = group.create_dataset(key, data=np.asarray(values, dtype=np.float64))
                ds.attrs["units"] = SPICE_UNITS[key]
                for attr, text in attrs.items():
                    ds.attrs[attr] = text

            energies = np.array([m.calc.results["energy"] for m in members])
            put("conformations", np.array([m.positions for m in members]) / Bohr)
            put("dft_total_energy", energies / Hartree)
            put("dft_total_gradient", -np.array([m.calc.results["forces"] for m in members]) / (Hartree / Bohr))
            if atom_energies is not None:
                reference = sum(atom_energies[int(z)] for z in first.numbers)
                put("formation_energy", (energies - reference) / Hartree)
            if all("dipole" in m.calc.results for m in members):
                put("scf_dipole", np.array([m.calc.results["dipole"] for m in members]) / Bohr)
            if all("charges" in m.calc.results for m in members):
                put("mbis_charges", np.array([m.calc.results["charges"] for m in members])[:, :, None],
                    charge_model="Hirshfeld (stored under SPICE's dataset name)")
            if all(m.info.get("hirsh_ratios") is not None for m in members):
                put("hirshfeld_volume_ratios", np.array([m.info["hirsh_ratios"] for m in members]))
    os.replace(tmp, out_path)
    return len(frames)


def read_spice_hdf5(path: str | os.PathLike) -> list[Atoms]:
    """Read a SPICE-layout HDF5 file into labelled Atoms in ASE units.

    Converts from each dataset's ``units`` attribute (bohr, hartree,
    hartree/bohr, elementary_charge*bohr); forces are minus the gradient.
    ``info`` gets ``name`` (the group), ``smiles``, ``subset``, and
    ``total_charge``/``multiplicity`` where the group records them.

    Raises
    ------
    ValueError
        If a dataset has a unit this reader does not know.
    """
    import h5py

    to_ase = {"bohr": Bohr, "angstrom": 1.0, "hartree": Hartree, "ev": 1.0, "hartree/bohr": Hartree / Bohr,
              "ev/angstrom": 1.0, "elementary_charge": 1.0, "elementary_charge*bohr": Bohr,
              "dimensionless": 1.0}

    def values(group, key: str) -> np.ndarray:
        ds = group[key]
        unit = str(ds.attrs.get("units", "dimensionless"))
        if unit.lower() not in to_ase:
            raise ValueError(f"{path}: dataset {group.name}/{key} has unit {unit!r}; known: {sorted(to_ase)}")
        return np.asarray(ds[()], dtype=float) * to_ase[unit.lower()]

    frames = []
    with h5py.File(path, "r") as handle:
        for name, group in handle.items():
            numbers = np.asarray(group["atomic_numbers"][()], dtype=int)
            positions = values(group, "conformations")
            energies = values(group, "dft_total_energy")
            forces = -values(group, "dft_total_gradient")
            dipoles = values(group, "scf_dipole") if "scf_dipole" in group else None
            charges = values(group, "mbis_charges") if "mbis_charges" in group else None
            ratios = values(group, "hirshfeld_volume_ratios") if "hirshfeld_volume_ratios" in group else None
            info = {"name": name}
            for key in ("smiles", "subset"):
                if key in group:
                    info[key] = group[key].asstr()[0]
            for key in ("total_charge", "multiplicity"):
                if key in group.attrs:
                    info[key] = int(group.attrs[key])
            for index in range(len(positions)):
                atoms = Atoms(numbers, positions[index])
                atoms.info.update(info)
                if ratios is not None:
                    atoms.info["hirsh_ratios"] = ratios[index]
                results = {"energy": float(energies[index]), "forces": forces[index]}
                if dipoles is not None:
                    results["dipole"] = dipoles[index]
                if charges is not None:
                    results["charges"] = charges[index].reshape(-1)
                atoms.calc = SinglePointCalculator(atoms, **results)
                frames.append(atoms)
    return frames
