"""Values handed to DVC (profile YAML, --set) are taken literally or refused: ``dvc exp run -S`` resolves
``${...}`` (OmegaConf interpolation) even inside a quoted string, so an environment variable's value would
land in params.yaml and be committed with the experiment."""

import shutil
from pathlib import Path

import pytest
import yaml

from cxrbench.core.params import ParamError
from cxrbench.ops import profiles

ROOT = Path(__file__).resolve().parents[2]
ATTACKS = ["${oc.env:HOME}", "use: ${oc.env:SECRET,x}", "${model_card.intended_use}", "a\\${x}"]


@pytest.mark.parametrize("value", [*ATTACKS, [1, "${oc.env:HOME}"], {"a": "${oc.env:HOME}"},
                                   {"${oc.env:HOME}": 1}])
def test_exp_command_refuses_an_interpolation(value):
    with pytest.raises(ParamError, match=r"`model_card\.intended_use`.*interpolation"):
        profiles.exp_command("x", {"model_card.intended_use": value}, [], True, None)


@pytest.mark.parametrize("value", ["${oc.env:HOME}", "'${oc.env:HOME}'", "[a, '${oc.env:HOME}']"])
def test_set_with_an_interpolation_is_refused(monkeypatch, capsys, value):
    monkeypatch.chdir(ROOT)
    assert profiles.main(["show", "sample", "--set", f"model_card.intended_use={value}"]) == 2
    err = capsys.readouterr().err
    assert "`model_card.intended_use`" in err and "Traceback" not in err


def test_a_profile_value_with_an_interpolation_is_refused(tmp_path, monkeypatch, capsys):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles/x.yaml").write_text(yaml.safe_dump({"model_card.intended_use": "${oc.env:HOME}"}))
    monkeypatch.chdir(tmp_path)
    assert profiles.main(["show", "x"]) == 2
    assert "`model_card.intended_use`" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["plain text", "costs $5, $HOME stays", "it's", "back\\slash", "end\\", "a\\'b",
                                   "\\\\'", "'quoted'", "x: y", "[1, 2]",
                                   "{a: 1}", "null", 0.25, 3, None, True, ["a", "b"]])
def test_dvc_takes_an_accepted_value_literally(tmp_path, monkeypatch, value):
    """What the refusal leaves through, DVC writes into params.yaml as it is (its own -S code path)."""
    hydra = pytest.importorskip("dvc.utils.hydra")
    monkeypatch.setenv("HOME", "/leaked")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"model_card": {"intended_use": "x"}}))
    (arg,) = [a for a in profiles.exp_command("x", {"model_card.intended_use": value}, [], True, None)
              if a.startswith("model_card.")]
    hydra.apply_overrides(path, [arg])
    assert yaml.safe_load(path.read_text())["model_card"]["intended_use"] == value


def test_dvc_would_resolve_a_quoted_interpolation(tmp_path, monkeypatch):
    """Why the refusal: Hydra's quoting does not stop the interpolation."""
    hydra = pytest.importorskip("dvc.utils.hydra")
    monkeypatch.setenv("CXRBENCH_TEST_SECRET", "leaked")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"model_card": {"intended_use": "x"}}))
    hydra.apply_overrides(path, ["model_card.intended_use=" + profiles.hydra_value("${oc.env:CXRBENCH_TEST_SECRET}")])
    assert yaml.safe_load(path.read_text())["model_card"]["intended_use"] == "leaked"


def test_ci_explains_at_least_30_patients_and_study_cpu_at_least_100():
    """A patient-level interval in CI rests on no fewer than 30 patients (one image each); the study on 100."""
    assert profiles.read_profile("ci", ROOT)["explain.max_images"] >= 30
    assert profiles.read_profile("study-cpu", ROOT)["explain.max_images"] >= 100
