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


def sugars_and_friends():
    """Conformer paths of pyranoses, furanoses and an acyclic molecule, with their SMILES."""
    from qcell_nb.blocks.carbohydrates import MONOSACCHARIDES

    names = ["alpha-D-glucopyranose", "beta-D-glucopyranose", "beta-D-galactopyranose", "beta-D-ribofuranose"]
    out = []
    for k, name in enumerate(names + ["ethanol"]):
        smiles = MONOSACCHARIDES[name] if name != "ethanol" else "CCO"
        for path in range(4):
            for frame in range(2):
                atoms = molecule("H2O")
                atoms.positions[0, 0] += 0.01 * k + 0.001 * path + 0.0001 * frame
                atoms.info.update(name=name, smiles=smiles, parent_id=f"{name}/{path}",
                                  subset="carbohydrates" if name != "ethanol" else "dimers")
                out.append(atoms)
    return out


def test_nabladft_splits_hold_out_what_they_say():
    from qcell_nb.splits import molecule_key, nabladft_splits, scaffold_key

    structures = sugars_and_friends()
    splits = nabladft_splits(structures, test_fraction=0.3, val_fraction=0.1, seed=0, test_subsets=["dimers"])
    assert set(splits) == {"conformations", "molecules", "scaffolds", "subsets"}

    def keys(kind, part, key):
        return {key(structures[i]) for i in splits[kind][part]}

    # New conformations: every test molecule is also a training molecule, but no path is shared.
    assert keys("conformations", "test", molecule_key) <= keys("conformations", "train", molecule_key)
    assert keys("conformations", "test", lambda a: a.info["parent_id"]).isdisjoint(
        keys("conformations", "train", lambda a: a.info["parent_id"]))
    assert keys("molecules", "test", molecule_key).isdisjoint(keys("molecules", "train", molecule_key))
    assert keys("scaffolds", "test", scaffold_key).isdisjoint(keys("scaffolds", "train", scaffold_key))
    # Pyranoses share the tetrahydropyran scaffold; the furanose and the acyclic ethanol do not.
    assert len({scaffold_key(a) for a in structures}) == 3
    assert {structures[i].info["subset"] for i in splits["subsets"]["test"]} == {"dimers"}
    for split in splits.values():
        assert sorted(sum(split.values(), [])) == list(range(len(structures)))


def test_unknown_test_subset_is_named():
    from qcell_nb.splits import split_subsets

    with pytest.raises(ValueError, match="lipids"):
        split_subsets(sugars_and_friends(), ["lipids"])


def test_an_element_seen_only_in_a_held_out_group_moves_to_training():
    from ase.build import molecule

    structures = frames()
    ammonia = molecule("NH3")
    ammonia.info["parent_id"] = "the only nitrogen"
    structures.append(ammonia)
    for seed in range(6):
        split = split_by_group(structures, test_fraction=0.3, val_fraction=0.2, seed=seed)
        assert len(structures) - 1 in split["train"]
        assert sorted(sum(split.values(), [])) == list(range(len(structures)))
