"""The CI metric gate fails on a regression and passes within tolerance."""

import json

import pytest
import yaml

from cxrbench import gate
from cxrbench.params import ParamError


def _setup(tmp_path, monkeypatch, current: dict, baseline: dict):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/m.json").write_text(json.dumps(current))
    (tmp_path / "base.json").write_text(json.dumps(baseline))
    params = {"gate": {"baseline": "base.json", "checks": [
        {"metric": "metrics/m.json:ens.f1", "tolerance": 0.02, "direction": "higher"},
        {"metric": "metrics/m.json:leaks", "tolerance": 0, "direction": "lower"},
        {"metric": "metrics/m.json:folds.0.iou", "tolerance": 0.02, "direction": "higher"}]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))


BASE = {"metrics/m.json:ens.f1": 0.80, "metrics/m.json:leaks": 0, "metrics/m.json:folds.0.iou": 0.9}


def test_gate_passes_within_tolerance(tmp_path, monkeypatch, capsys):
    _setup(tmp_path, monkeypatch, {"ens": {"f1": 0.785}, "leaks": 0, "folds": [{"iou": 0.95}]}, BASE)
    assert gate.main(["check"]) == 0
    out = capsys.readouterr().out
    assert "ens.f1" in out and "-0.0150" in out and "passed" in out


@pytest.mark.parametrize("current,bad", [
    ({"ens": {"f1": 0.77}, "leaks": 0, "folds": [{"iou": 0.9}]}, "ens.f1"),        # F1 dropped 0.03
    ({"ens": {"f1": 0.80}, "leaks": 1, "folds": [{"iou": 0.9}]}, "leaks"),         # a leak appeared
    ({"ens": {"f1": 0.80}, "leaks": 0, "folds": []}, "folds.0.iou"),               # metric vanished
])
def test_gate_fails_on_regression(tmp_path, monkeypatch, capsys, current, bad):
    _setup(tmp_path, monkeypatch, current, BASE)
    assert gate.main(["check"]) == 1
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if bad in line)
    assert "REGRESSION" in row or "MISSING" in row


def test_snapshot_then_check_roundtrip(tmp_path, monkeypatch):
    _setup(tmp_path, monkeypatch, {"ens": {"f1": 0.5}, "leaks": 0, "folds": [{"iou": 0.7}]}, {})
    assert gate.main(["snapshot"]) == 0
    assert json.loads((tmp_path / "base.json").read_text())["metrics/m.json:ens.f1"] == 0.5
    assert gate.main(["check"]) == 0


def test_gate_params_validation():
    with pytest.raises(ParamError, match=r"gate.checks\[0\].direction"):
        gate.checks_from_params({"gate": {"baseline": "b.json", "checks": [
            {"metric": "a.json:x", "tolerance": 0.1, "direction": "up"}]}})
    with pytest.raises(ParamError, match=r"FILE:dotted.key"):
        gate.checks_from_params({"gate": {"baseline": "b.json", "checks": [{"metric": "x", "tolerance": 0}]}})


def test_lookup_selects_list_items_by_field():
    table = {"rows": [{"key": "resnet18", "f1": {"mean": 0.6}}, {"key": "ensemble", "f1": {"mean": 0.7}}]}
    assert gate.lookup(table, "rows.key=ensemble.f1.mean") == 0.7
    assert gate.lookup(table, "rows.1.f1.mean") == 0.7
    assert gate.lookup(table, "rows.key=densenet161.f1.mean") is None
