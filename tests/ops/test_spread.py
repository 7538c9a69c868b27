"""The spread measurement: perturbations validated, runs collected, leave-one-out check."""

import json

import pytest

from cxrbench.ops import gate
from cxrbench.ops import spread
from cxrbench.core.params import ParamError

CHECKS = [{"metric": "metrics/m.json:auc", "tolerance": "spread", "direction": "higher", "reason": "r"},
          {"metric": "metrics/m.json:leaks", "tolerance": 0, "direction": "lower", "reason": "r"}]


def _params(perturbations):
    return {"train": {"seed": 42}, "gate": {"profile": "ci", "baseline": "b.json", "spread": "s.json",
                                            "spread_factor": 2, "perturbations": perturbations, "checks": CHECKS}}


def test_perturbations_validated():
    ok = spread.perturbations(_params({"reference": {}, "t1": {"env": {"CXRBENCH_THREADS": 1}},
                                       "s": {"set": {"train.seed": 43}}}))
    assert ok["t1"]["env"] == {"CXRBENCH_THREADS": "1"} and ok["s"]["set"] == {"train.seed": 43}
    with pytest.raises(ParamError, match="reference"):
        spread.perturbations(_params({"t1": {"env": {"CXRBENCH_THREADS": 1}}}))
    with pytest.raises(ParamError, match="gate.perturbations.reference"):
        spread.perturbations(_params({"reference": {"env": {"X": 1}}}))
    with pytest.raises(ParamError, match="train.sed"):
        spread.perturbations(_params({"reference": {}, "s": {"set": {"train.sed": 43}}}))
    with pytest.raises(ParamError, match="gate.perturbations.s"):
        spread.perturbations(_params({"reference": {}, "s": {"seed": 43}}))


def _run(workdir, name, auc, leaks=0):
    d = workdir / "runs" / name
    (d / "metrics").mkdir(parents=True)
    (d / "metrics/m.json").write_text(json.dumps({"auc": auc, "leaks": leaks}))
    (d / "run.json").write_text(json.dumps({"name": name}))


def test_collect_ranges_and_leave_one_out(tmp_path):
    cfg = gate.config_from_params(_params({"reference": {}}))
    _run(tmp_path, "reference", 0.80)
    _run(tmp_path, "a", 0.79)
    _run(tmp_path, "b", 0.70)          # an outlier: tolerances from the others (0.02 range x 2) do not cover it
    out = spread.collect(tmp_path, cfg, ["reference", "a", "b"])
    m = out["metrics"]["metrics/m.json:auc"]
    assert m["range"] == pytest.approx(0.10) and m["values"]["b"] == 0.70
    assert out["leave_one_out"]["a"]["passes"] is True
    assert out["leave_one_out"]["b"]["passes"] is False
    assert out["leave_one_out"]["b"]["failing"] == ["metrics/m.json:auc (REGRESSION)"]


def test_collect_names_a_missing_run(tmp_path):
    cfg = gate.config_from_params(_params({"reference": {}}))
    _run(tmp_path, "reference", 0.8)
    with pytest.raises(FileNotFoundError, match="--only a"):
        spread.collect(tmp_path, cfg, ["reference", "a"])


def test_markdown_table_of_the_spread(tmp_path):
    cfg = gate.config_from_params(_params({"reference": {}}))
    _run(tmp_path, "reference", 0.80)
    _run(tmp_path, "a", 0.79)
    _run(tmp_path, "b", 0.805)
    out = spread.collect(tmp_path, cfg, ["reference", "a", "b"])
    md = spread.markdown(out, cfg)
    assert "| `auc` (higher) | 0.8000 | 0.7900 | 0.8050 | 0.0150 | 0.0300 |" in md
    assert "`leaks` (lower)" in md and "a passes" in md and "b passes" in md
