"""The committed gate (params.yaml: gate, baselines/): its tolerances cover the measured spread, and it still
fails on real regressions (a leak, a label-shuffled model, a broken attribution)."""

from pathlib import Path

import pytest

from cxrbench.ops import gate

# --- the committed gate: covers its own spread, still catches real regressions ----

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def committed():
    from cxrbench.core.io import read_json
    from cxrbench.core.params import load

    cfg = gate.config_from_params(load(ROOT / "params.yaml"))
    spread = read_json(ROOT / cfg.spread)
    baseline = read_json(ROOT / cfg.baseline)
    return cfg, spread, baseline, gate.tolerances(cfg.checks, spread, cfg.spread_factor)


def _runs_of(c, spread) -> set:
    """The runs a check's spread is measured over: its spread_runs, else every run of the spread."""
    return set(c.spread_runs) if c.spread_runs else set(spread["runs"])


def test_committed_spread_measures_every_spread_check(committed):
    cfg, spread, baseline, tol = committed
    for c in cfg.checks:
        assert c.reason, f"{c.metric}: every guarded metric states why it is guarded"
        assert tol[c.metric] is not None, f"{c.metric}: no spread measured"
        assert set(spread["metrics"][c.metric]["values"]) == _runs_of(c, spread)
        assert c.metric in baseline
        if c.spread_runs:                       # measured apart from the rest: its entry names its own runs
            assert set(spread["metrics"][c.metric]["runs"]) == set(c.spread_runs)
    assert set(baseline) == {c.metric for c in cfg.checks}, "a baseline value without a check, or the reverse"


def test_committed_tolerances_cover_every_measured_run(committed):
    cfg, spread, baseline, tol = committed
    runs = {r for c in cfg.checks for r in _runs_of(c, spread)}
    for run in runs:
        checks = [c for c in cfg.checks if run in _runs_of(c, spread)]
        current = {c.metric: spread["metrics"][c.metric]["values"][run] for c in checks}
        rows = gate.evaluate(checks, baseline, current, tol)
        assert not gate.failed(rows), (run, gate.failed(rows))
    assert spread["metrics"], "empty spread"
    # the baseline is the reference run of the spread
    for m, v in baseline.items():
        assert spread["metrics"][m]["values"]["reference"] == pytest.approx(v)


def test_committed_explanation_checks_are_paired_within_the_cap(committed):
    """Every guarded explanation metric is compared image by image with the baseline run, with a tolerance of at
    most gate.paired_max_tolerance (0.05), under the black fill and a fill-neutral one, beside the random-map
    control; the per-image baseline holds every image of each."""
    import pandas as pd

    cfg, spread, baseline, tol = committed
    explain = [c for c in cfg.checks if "aoppc" in c.metric]
    assert explain and all(c.paired for c in explain)
    assert all(tol[c.metric] <= cfg.paired_max_tolerance <= 0.05 for c in explain)
    assert any("_black_" in c.metric for c in explain) and any("_blur_" in c.metric or "_road_" in c.metric
                                                                for c in explain)
    assert any(c.metric.split(":")[1].split("|")[0].endswith("/random") for c in explain)
    rows = pd.read_csv(ROOT / cfg.per_image_baseline, keep_default_na=False)
    for c in explain:
        mine = rows[rows["metric"] == c.metric]
        assert len(mine) >= 30 and mine["value"].astype(float).mean() == pytest.approx(baseline[c.metric])


def _one_changed(baseline, metric, value):
    return {**baseline, metric: value}


def test_committed_gate_catches_a_leak(committed):
    cfg, _, baseline, tol = committed
    rows = gate.evaluate(cfg.checks, baseline, _one_changed(baseline, "metrics/data.json:leaked_patients", 1.0), tol)
    assert [r["metric"] for r in gate.failed(rows)] == ["metrics/data.json:leaked_patients"]


def test_committed_gate_catches_a_label_shuffled_model(committed):
    """A model whose scores are unrelated to the labels: AUROC of shuffled labels on the test set's counts."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    cfg, _, baseline, tol = committed
    rng = np.random.default_rng(0)
    auroc_checks = [c for c in cfg.checks if ".auroc_mean." in c.metric]
    assert auroc_checks, "the gate guards threshold-free AUROC"
    y = np.r_[np.ones(177), np.zeros(154)]                        # COVID-19 positives / negatives of the CI test set
    shuffled = max(roc_auc_score(rng.permutation(y), rng.random(len(y))) for _ in range(200))  # luckiest of 200
    for c in auroc_checks:
        rows = gate.evaluate(cfg.checks, baseline, _one_changed(baseline, c.metric, shuffled), tol)
        assert c.metric in [r["metric"] for r in gate.failed(rows)], (c.metric, shuffled, tol[c.metric])


def test_committed_gate_catches_a_broken_attribution(committed):
    """A method whose maps are noise scores what the random-map control scores: its gain over it falls to 0, and
    so does half of it. (The paired check, image by image, with its planted regression: test_gate_paired.py.)"""
    cfg, spread, baseline, tol = committed
    guarded = [c.metric for c in cfg.checks if "aoppc" in c.metric and " - random" in c.metric]
    assert guarded
    for metric in guarded:
        for broken in (0.0, baseline[metric] / 2):
            rows = gate.evaluate(cfg.checks, baseline, _one_changed(baseline, metric, broken), tol)
            assert metric in [r["metric"] for r in gate.failed(rows)], (metric, broken, tol[metric])


def test_committed_spread_has_a_run_per_perturbation(committed):
    """A perturbation added to params.yaml without measuring it would leave the tolerances under-measured."""
    from cxrbench.ops import spread as S
    from cxrbench.core.params import load

    _, spread, _, _ = committed
    assert set(spread["runs"]) == set(S.perturbations(load(ROOT / "params.yaml")))
    assert spread["runs"]["reference"]["env"] == {} and spread["runs"]["reference"]["set"] == {}
