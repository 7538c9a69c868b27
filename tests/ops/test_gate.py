"""The CI metric gate fails on a regression and passes within tolerance."""

import json

import pytest
import yaml

from cxrbench.ops import gate
from cxrbench.core.params import ParamError


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


def test_snapshot_onto_a_folder_keeps_the_folder(tmp_path, monkeypatch, capsys):
    _setup(tmp_path, monkeypatch, {"ens": {"f1": 0.5}, "leaks": 0, "folds": [{"iou": 0.7}]}, {})
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert gate.main(["snapshot", "--baseline", str(folder)]) == 2
    assert f"{folder} is an existing folder" in capsys.readouterr().err
    assert [p.name for p in folder.iterdir()] == ["notes.txt"] and (folder / "notes.txt").read_text() == "mine"


def test_gate_params_validation():
    with pytest.raises(ParamError, match=r"gate.checks\[0\].direction"):
        gate.config_from_params({"gate": {"baseline": "b.json", "checks": [
            {"metric": "a.json:x", "tolerance": 0.1, "direction": "up"}]}})
    with pytest.raises(ParamError, match=r"FILE:dotted.key"):
        gate.config_from_params({"gate": {"baseline": "b.json", "checks": [{"metric": "x", "tolerance": 0}]}})


def test_lookup_selects_list_items_by_field():
    table = {"rows": [{"key": "resnet18", "f1": {"mean": 0.6}}, {"key": "ensemble", "f1": {"mean": 0.7}}]}
    assert gate.lookup(table, "rows.key=ensemble.f1.mean") == 0.7
    assert gate.lookup(table, "rows.1.f1.mean") == 0.7
    assert gate.lookup(table, "rows.key=densenet161.f1.mean") is None


# --- tolerances from the measured spread ---------------------------------------

def _spread_setup(tmp_path, monkeypatch, current: float, values: dict | None, factor=2.0):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/m.json").write_text(json.dumps({"auc": current}))
    (tmp_path / "base.json").write_text(json.dumps({"metrics/m.json:auc": 0.80}))
    if values is not None:
        (tmp_path / "spread.json").write_text(json.dumps({"metrics": {"metrics/m.json:auc": {"values": values}}}))
    params = {"gate": {"baseline": "base.json", "spread": "spread.json", "spread_factor": factor, "checks": [
        {"metric": "metrics/m.json:auc", "tolerance": "spread", "direction": "higher", "reason": "test"}]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.mark.parametrize("current,code", [(0.80, 0), (0.75, 0), (0.741, 0), (0.739, 1), (0.5, 1), (0.95, 0)])
def test_spread_tolerance_is_factor_times_range(tmp_path, monkeypatch, capsys, current, code):
    # range 0.03 over the runs, factor 2: the metric may drop by 0.06
    _spread_setup(tmp_path, monkeypatch, current, {"reference": 0.80, "threads1": 0.79, "seed43": 0.82})
    assert gate.main(["check"]) == code
    assert "0.0600" in capsys.readouterr().out


def test_spread_check_without_a_measurement_fails(tmp_path, monkeypatch, capsys):
    _spread_setup(tmp_path, monkeypatch, 0.80, None)
    assert gate.main(["check"]) == 1
    captured = capsys.readouterr()
    assert "no spread" in captured.out and "cxrbench spread measure" in captured.err


def test_spread_params_validation():
    base = {"baseline": "b.json", "checks": [{"metric": "a.json:x", "tolerance": "spread", "direction": "higher"}]}
    with pytest.raises(ParamError, match=r"gate.spread\b"):
        gate.config_from_params({"gate": base})
    with pytest.raises(ParamError, match=r"gate.spread_factor"):
        gate.config_from_params({"gate": {**base, "spread": "s.json", "spread_factor": 0.5}})
    with pytest.raises(ParamError, match=r"gate.checks\[0\].tolerance"):
        gate.config_from_params({"gate": {**base, "spread": "s.json", "checks": [
            {"metric": "a.json:x", "tolerance": "wide"}]}})


def test_leave_one_out_range():
    spread = {"metrics": {"m:x": {"values": {"reference": 0.8, "a": 0.79, "b": 0.90}}}}
    assert gate.spread_range(spread, "m:x") == pytest.approx(0.11)
    assert gate.spread_range(spread, "m:x", exclude="b") == pytest.approx(0.01)
    assert gate.spread_range(spread, "m:y") is None


def test_a_control_adjusted_metric_is_a_difference(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/a.json").write_text(json.dumps({"m": {"occ": 0.30, "rnd": -0.10}}))
    metric = "metrics/a.json:m.occ - metrics/a.json:m.rnd"
    checks = [gate.Check(metric, 0.05, "higher", "gain over the random control")]
    assert gate.current_values(checks, tmp_path)[metric] == pytest.approx(0.40)
    rows = gate.evaluate(checks, {metric: 0.50}, gate.current_values(checks, tmp_path))
    assert rows[0]["status"] == "REGRESSION"
    assert "m.occ - m.rnd" in gate.format_table(rows)
    with pytest.raises(ParamError, match="FILE:a - FILE:b"):
        gate.terms("metrics/a.json:x - y")
