"""Agreement across metrics and masked similarity: cases derivable by hand."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from cxrbench.explain.metrics import agreement as AG
from cxrbench.explain.metrics import similarity as SM

STATS = {"resamples": 200, "seed": 0, "confidence": 0.95}


def _frame(values: dict, n_images=6, patients=3):
    """values: (method, metric) -> per-image array (or a scalar for every image)."""
    rows = []
    for (m, me), v in values.items():
        v = np.broadcast_to(np.asarray(v, float), (n_images,))
        for i in range(n_images):
            rows.append({"method": m, "backbone": "b", "fold": 0, "image": i, "group": f"p{i % patients}",
                         "metric": me, "value": v[i]})
    return pd.DataFrame(rows)


def test_ranks_tau_and_aggregate_by_hand():
    """Three methods: AOPPC (higher better) a > b > c; max-sensitivity (lower better) a < b < c, so both rank
    a, b, c and agree (tau +1); infidelity (lower better) ranks c, b, a (tau -1 with the others). Aggregate:
    oriented means per metric aoppc (3, 2, 1), sens (-1, -2, -3), infid (-3, -2, -1): median-MAD standardised
    (+1, 0, -1), (+1, 0, -1), (-1, 0, +1); mean over metrics (1/3, 0, -1/3)."""
    methods, metrics = ["a", "b", "c"], ["aoppc_pixels_morf", "sensitivity_max", "infidelity"]
    vals = {}
    for k, m in enumerate(methods):
        vals[(m, metrics[0])] = 3 - k + np.linspace(0, 0.01, 6)
        vals[(m, metrics[1])] = 1 + k + np.linspace(0, 0.01, 6)
        vals[(m, metrics[2])] = 3 - k + np.linspace(0, 0.01, 6)
    r = AG.agreement(_frame(vals), methods, metrics, STATS)
    assert r["items"] == 6 and r["patients"] == 3
    assert np.array_equal(np.array(r["ranks"]), [[1, 1, 3], [2, 2, 2], [3, 3, 1]])
    assert r["tau"]["aoppc_pixels_morf vs sensitivity_max"]["tau"] == pytest.approx(1.0)
    assert r["tau"]["aoppc_pixels_morf vs infidelity"]["tau"] == pytest.approx(-1.0)
    agg = r["aggregate"]["methods"]
    assert [agg[m]["score"] for m in methods] == pytest.approx([1 / 3, 0, -1 / 3])
    assert [agg[m]["rank"] for m in methods] == [1, 2, 3]
    text = AG.markdown(r)
    assert "| a | 1 | 1 | 3 |" in text and "aggregate" in text


def test_common_set_drops_items_where_a_method_lacks_a_metric():
    vals = {("a", "lung_mass"): np.arange(6.0), ("b", "lung_mass"): np.arange(6.0) * 2}
    f = _frame(vals)
    f = f[~((f["method"] == "b") & (f["image"] == 0))]
    v, groups, scored = AG.matrix(f, ["a", "b"], ["lung_mass"])
    assert v.shape == (5, 2, 1) and scored == 6


def test_a_metric_some_method_lacks_is_left_out_not_the_method():
    """The study-cpu case: no ROAD fill in the run, no max-sensitivity for occlusion. Every method stays in the
    agreement; the two metrics are dropped, each with its reason."""
    vals = {(m, me): k + np.zeros(6) for k, m in enumerate(["occlusion", "saliency", "random"])
            for me in ["aoppc_pixels_morf", "infidelity"]}
    vals |= {(m, "sensitivity_max"): 1.0 + np.zeros(6) for m in ["saliency", "random"]}
    f = _frame(vals)
    metrics = ["aoppc_pixels_morf", "aoppc_region_road_morf", "sensitivity_max", "infidelity"]
    kept, left = AG.select(f, ["occlusion", "saliency", "random"], metrics)
    assert kept == ["aoppc_pixels_morf", "infidelity"]
    assert left == {"aoppc_region_road_morf": "not scored in this run", "sensitivity_max": "no score for occlusion"}
    r = AG.agreement(f, ["occlusion", "saliency", "random"], kept, STATS)
    assert r["items"] == 6 and r["methods"] == ["occlusion", "saliency", "random"]


def test_a_metric_without_spread_is_left_out_of_the_aggregate():
    vals = {(m, "lung_mass"): 0.5 for m in "abc"} | {(m, "infidelity"): k + np.zeros(6) for k, m in enumerate("abc")}
    r = AG.agreement(_frame(vals), list("abc"), ["lung_mass", "infidelity"], STATS)
    assert r["aggregate"]["metrics_left_out"] == ["lung_mass"]
    with pytest.raises(ValueError, match="direction"):
        AG.direction("unknown_metric")


def test_zero_input_pixels_are_excluded_from_the_similarity():
    """Two independent noise maps times an image with a padded border: over all pixels the shared zeros make
    them correlate; over the kept pixels the correlation is that of independent noise (near 0)."""
    rng = np.random.default_rng(0)
    img = np.ones((1, 32, 32))
    img[:, :, :12] = 0                                     # 37.5 % padding
    a, b = rng.random((1, 32, 32)) * img, rng.random((1, 32, 32)) * img
    keep = SM.input_support(img)
    assert spearmanr(a.ravel(), b.ravel()).statistic > 0.3
    s = SM.compare(a, b, keep)
    assert abs(s["spearman_abs"][0]) < 0.1 and s["spearman_abs_status"][0] == "compared"
    same = SM.compare(a, a + (1 - img) * rng.random((1, 32, 32)), keep)     # differ only in the padding
    assert same["spearman_abs"][0] == pytest.approx(1.0) and same["ssim"][0] == pytest.approx(1.0)


def test_cams_at_feature_map_resolution():
    """Block means of a 2 x 2 map upsampled by 16: the map itself back; cells kept by majority; a 2 x 2 map is too
    small for SSIM and Spearman of 4 cells is defined."""
    small = np.array([[[1.0, 2.0], [3.0, 4.0]]])
    up = np.kron(small, np.ones((16, 16)))
    keep = np.ones((1, 32, 32), bool)
    keep[:, :, :10] = False                                 # 10 of 16 columns of the left cells: dropped
    grid, cells = SM.to_grid(up, keep, 2)
    assert np.array_equal(grid, small) and np.array_equal(cells, [[[False, True], [False, True]]])
    s = SM.compare(grid, grid[:, ::-1], np.ones((1, 2, 2), bool))
    assert s["ssim_status"][0] == "too_small" and s["spearman_abs_status"][0] == "compared"
    with pytest.raises(ValueError, match="divide"):
        SM.to_grid(up, keep, 3)


def test_a_tau_without_an_interval_is_a_status_not_a_crash(monkeypatch):
    """When the bootstrap has too few defined resamples it gives ``no_ci`` with None bounds (not NaN): the
    pairwise tau keeps its estimate, has None bounds and says why (the ci run crashed on np.isfinite(None))."""
    from cxrbench.core import bootstrap
    from cxrbench.explain.metrics import agreement as AG
    monkeypatch.setattr(bootstrap, "group_ci", lambda *a, **k: {"estimate": 0.5, "low": None, "high": None,
                                                                 "status": "no_ci", "undefined": 70})
    v = np.random.default_rng(0).random((6, 3, 2))          # images x methods x metrics
    metrics = ["aoppc_pixels_morf", "infidelity"]
    out = AG.pairwise_tau(v, np.array(["a", "a", "b", "b", "c", "c"]), metrics,
                          {"resamples": 50, "seed": 0, "confidence": 0.95})
    e = out["aoppc_pixels_morf vs infidelity"]
    assert e["tau"] is not None and e["low"] is None and e["high"] is None and e["ci_status"] == "no_ci"


def test_the_tau_and_aggregate_intervals_follow_stats_method():
    """stats.method reaches both intervals of the agreement (the reliability stage passes its stats section)."""
    rng = np.random.default_rng(5)
    methods, metrics = list("abcdefgh"), ["aoppc_pixels_morf", "infidelity"]
    vals = {(m, me): 0.1 * k * (1 if me == metrics[0] else -1) + rng.normal(0, 0.5, 24)
            for k, m in enumerate(methods) for me in metrics}
    frame = _frame(vals, n_images=24, patients=12)
    default = AG.agreement(frame, methods, metrics, STATS)
    pct = AG.agreement(frame, methods, metrics, {**STATS, "method": "percentile"})
    d, p = (r["tau"]["aoppc_pixels_morf vs infidelity"] for r in (default, pct))
    assert d["tau"] == p["tau"] and (d["low"], d["high"]) != (p["low"], p["high"])
    d, p = (r["aggregate"]["methods"]["a"] for r in (default, pct))
    assert d["score"] == p["score"] and (d["low"], d["high"]) != (p["low"], p["high"])


def test_the_tables_state_the_confidence_level_of_stats():
    """The agreement tables name stats.confidence, not a fixed 95 %."""
    methods, metrics = list("abc"), ["aoppc_pixels_morf", "lung_mass"]
    rng = np.random.default_rng(0)
    vals = {(m, me): rng.random(6) for m in methods for me in metrics}
    r = AG.agreement(_frame(vals), methods, metrics, {**STATS, "confidence": 0.9})
    text = AG.markdown(r)
    assert "90 % CI" in text and "95 %" not in text


def test_a_robustness_metric_on_fewer_images_is_left_out_not_the_images():
    """Robustness is scored on the first reliability.images images only: taking it would shrink the common set
    to them (2 of 6 images here). It is left out with the count, and every image is ranked by the rest; scored on
    every image, it is kept."""
    methods = ["a", "b"]
    per_image = _frame({("a", "aoppc_pixels_morf"): 2.0 + np.arange(6) * 0.01, ("b", "aoppc_pixels_morf"): 1.0,
                        ("a", "lung_mass"): 0.3, ("b", "lung_mass"): 0.6 + np.arange(6) * 0.01})
    partial = _frame({("a", "infidelity"): 0.1, ("b", "infidelity"): 0.2})
    partial = partial[partial["image"] < 2]
    r = AG.over_covered_items(per_image, partial, methods, ["aoppc_pixels_morf", "lung_mass", "infidelity"], STATS)
    assert r["items"] == 6 and r["metrics"] == ["aoppc_pixels_morf", "lung_mass"]
    assert r["metrics_not_scored"] == {"infidelity": "scored on 2 of the 6 items; the common set would shrink to them"}
    full = _frame({("a", "infidelity"): 0.1, ("b", "infidelity"): 0.2 + np.arange(6) * 0.01})
    r = AG.over_covered_items(per_image, full, methods, ["aoppc_pixels_morf", "lung_mass", "infidelity"], STATS)
    assert r["items"] == 6 and r["metrics"] == ["aoppc_pixels_morf", "lung_mass", "infidelity"]
    assert r["metrics_not_scored"] == {}
    r = AG.over_covered_items(per_image, pd.DataFrame(), methods, ["aoppc_pixels_morf", "infidelity"], STATS)
    assert r["metrics"] == ["aoppc_pixels_morf"] and "infidelity" in r["metrics_not_scored"]
