"""The gate fails closed: a value that is not a finite number (baseline, this run, the spread) fails and names
its key; snapshot refuses to write one; a corrupt JSON is an error naming the file, not a traceback."""

import json
import math

import pytest
import yaml

from cxrbench.core.params import ParamError
from cxrbench.ops import gate

KEY = "metrics/m.json:auc"
NAN, INF = math.nan, math.inf


def _setup(tmp_path, monkeypatch, current, baseline, spread=None, direction="higher"):
    """One check of ``auc``: a fixed tolerance 0.02, or ``spread`` (factor 2) when ``spread`` values are given."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/m.json").write_text(json.dumps({"auc": current}))   # json writes NaN / Infinity
    (tmp_path / "base.json").write_text(json.dumps({KEY: baseline}))
    check = {"metric": KEY, "tolerance": 0.02 if spread is None else "spread", "direction": direction}
    g = {"baseline": "base.json", "checks": [check]}
    if spread is not None:
        (tmp_path / "spread.json").write_text(json.dumps({"metrics": {KEY: {"values": spread}}}))
        g.update(spread="spread.json", spread_factor=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"gate": g}))


@pytest.mark.parametrize("current,baseline,spread,direction,which", [
    (0.01, NAN, None, "higher", "baseline"),         # change NaN: NaN > tol is False
    (0.01, INF, None, "lower", "baseline"),
    (0.01, -INF, None, "higher", "baseline"),
    (INF, 0.80, None, "higher", "current"),          # "better" by infinity
    (-INF, 0.80, None, "lower", "current"),
    (NAN, 0.80, None, "equal", "current"),
    (0.10, 0.80, {"reference": 0.80, "threads1": INF}, "higher", "spread"),   # F1 0.8 -> 0.1 under an inf spread
    (0.10, 0.80, {"reference": 0.80, "threads1": NAN, "seed43": 0.79}, "higher", "spread"),
    (0.10, 0.80, {"reference": 0.80, "threads1": -INF}, "higher", "spread"),
])
def test_gate_fails_on_a_non_finite_value(tmp_path, monkeypatch, capsys, current, baseline, spread, direction,
                                          which):
    _setup(tmp_path, monkeypatch, current, baseline, spread, direction)
    assert gate.main(["check"]) == 1
    captured = capsys.readouterr()
    row = next(line for line in captured.out.splitlines() if "auc" in line)
    assert f"NOT FINITE ({which})" in row
    assert f"{KEY} (NOT FINITE ({which}))" in captured.err


def test_evaluate_non_finite_tolerance_fails():
    checks = [gate.Check(KEY, 0.02, "higher")]
    for tol in (NAN, INF):
        assert gate.evaluate(checks, {KEY: 0.8}, {KEY: 0.1}, {KEY: tol})[0]["status"] == "NOT FINITE (tolerance)"
    assert gate.evaluate(checks, {KEY: 0.8}, {KEY: 0.79}, {KEY: 0.02})[0]["status"] == "ok"


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_snapshot_refuses_a_non_finite_value(tmp_path, monkeypatch, capsys, bad):
    _setup(tmp_path, monkeypatch, bad, 0.8)
    (tmp_path / "base.json").unlink()
    assert gate.main(["snapshot"]) == 1
    assert KEY in capsys.readouterr().err
    assert not (tmp_path / "base.json").exists()


@pytest.mark.parametrize("field,bad", [("tolerance", NAN), ("tolerance", INF), ("tolerance", [0.1]),
                                       ("spread_factor", NAN), ("spread_factor", INF), ("spread_factor", {"a": 2})])
def test_gate_params_must_be_finite_numbers(field, bad):
    check = {"metric": "a.json:x", "tolerance": 0.1, "direction": "higher"}
    g = {"baseline": "b.json", "spread": "s.json", "checks": [check]}
    if field == "tolerance":
        check["tolerance"] = bad
        key = r"gate.checks\[0\].tolerance"
    else:
        g["spread_factor"] = bad
        key = r"gate.spread_factor"
    with pytest.raises(ParamError, match=key):
        gate.config_from_params({"gate": g})


@pytest.mark.parametrize("corrupt", ["base.json", "spread.json", "metrics/m.json"])
def test_a_corrupt_json_names_the_file(tmp_path, monkeypatch, capsys, corrupt):
    _setup(tmp_path, monkeypatch, 0.8, 0.8, {"reference": 0.8, "threads1": 0.79})
    (tmp_path / corrupt).write_text('{"auc": 0.8')                 # truncated
    assert gate.main(["check"]) == 2
    err = capsys.readouterr().err
    assert corrupt in err and "not valid JSON" in err and "Traceback" not in err


def test_collect_keeps_a_non_finite_run_out_of_the_range_and_the_gate_fails_it(tmp_path):
    """A perturbed run that gave infinity: the spread's range stays finite (over the finite runs), and the
    gate reading that spread fails the check instead of taking an infinite tolerance."""
    from cxrbench.ops import spread

    cfg = gate.GateConfig(tmp_path / "b.json", tmp_path / "s.json", 2.0, [gate.Check(KEY, "spread", "higher")])
    for name, auc in (("reference", 0.80), ("a", 0.79), ("b", INF)):
        d = tmp_path / "runs" / name
        (d / "metrics").mkdir(parents=True)
        (d / "metrics/m.json").write_text(json.dumps({"auc": auc}))
        (d / "run.json").write_text(json.dumps({"name": name}))
    out = spread.collect(tmp_path, cfg, ["reference", "a", "b"])
    assert out["metrics"][KEY]["range"] == pytest.approx(0.01)
    tol = gate.tolerances(cfg.checks, out, cfg.spread_factor)
    assert gate.evaluate(cfg.checks, {KEY: 0.8}, {KEY: 0.1}, tol)[0]["status"] == "NOT FINITE (spread)"
