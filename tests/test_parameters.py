import pytest

from qcell_nb.pipeline import PROFILES, ParameterError, get_stage, parse_overrides, resolve_parameters
from qcell_nb.pipeline.cli import main
from qcell_nb.pipeline.runner import default_notebooks_dir

NOTEBOOKS = default_notebooks_dir()


def test_every_profile_validates_against_the_notebooks():
    for profile in PROFILES:
        resolved = resolve_parameters(profile, {}, NOTEBOOKS)
        assert "05_reference" in resolved


def test_unknown_parameter_is_named():
    with pytest.raises(ParameterError, match="'bogus'"):
        resolve_parameters("smoke", parse_overrides(["bogus=1"]), NOTEBOOKS)
    with pytest.raises(ParameterError, match="05_reference has no parameter 'epochs'"):
        resolve_parameters("smoke", parse_overrides(["05.epochs=3"]), NOTEBOOKS)


def test_wrong_type_is_named():
    with pytest.raises(ParameterError, match="'epochs' of stage 06_training must be int"):
        resolve_parameters("smoke", parse_overrides(["06_training.epochs=many"]), NOTEBOOKS)
    with pytest.raises(ParameterError, match="'basis'"):
        resolve_parameters("smoke", parse_overrides(["05.basis=3"]), NOTEBOOKS)


def test_overrides_apply_to_the_stages_that_declare_them():
    resolved = resolve_parameters("smoke", parse_overrides(["05.basis=def2-svp", "learning_rate=1e-3"]),
                                  NOTEBOOKS)
    assert resolved["05_reference"]["basis"] == "def2-svp"
    assert resolved["06_training"]["learning_rate"] == 1e-3
    assert "learning_rate" not in resolved["05_reference"]


def test_stage_names_resolve_and_unknown_ones_are_named():
    assert get_stage("5").name == get_stage("05").name == get_stage("reference").name == "05_reference"
    with pytest.raises(ValueError, match="'99'"):
        get_stage("99")


def test_cli_fails_at_once_naming_a_bogus_parameter(tmp_path, capsys):
    assert main(["run", "--profile", "smoke", "--runs-dir", str(tmp_path), "--set", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing ran, nothing was created
