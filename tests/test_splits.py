import pytest
from ase.build import molecule

from qcell_nb.splits import split_by_group


def frames(n_paths=10, per_path=3):
    out = []
    for path in range(n_paths):
        for frame in range(per_path):
            atoms = molecule("H2O")
            atoms.positions[0, 0] += 0.01 * path + 0.001 * frame
            atoms.info["parent_id"] = f"path{path}"
            out.append(atoms)
    return out


def test_frames_of_one_path_stay_together_and_split_is_deterministic():
    structures = frames()
    split = split_by_group(structures, test_fraction=0.2, val_fraction=0.1, seed=3)
    assert sorted(sum(split.values(), [])) == list(range(len(structures)))
    for part, indices in split.items():
        groups = {structures[i].info["parent_id"] for i in indices}
        for other, other_indices in split.items():
            if other != part:
                assert groups.isdisjoint({structures[i].info["parent_id"] for i in other_indices})
    assert len(split["test"]) == 6 and len(split["val"]) == 3
    assert split == split_by_group(structures, test_fraction=0.2, val_fraction=0.1, seed=3)
    assert split != split_by_group(structures, test_fraction=0.2, val_fraction=0.1, seed=4)


def test_bad_fractions_are_named():
    with pytest.raises(ValueError, match="test_fraction"):
        split_by_group(frames(), test_fraction=1.5)
