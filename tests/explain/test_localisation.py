"""Localisation metrics (cxrbench/explain/metrics/localisation.py) on hand-made maps with known answers, and against Quantus."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrbench.explain.metrics import localisation as L

H = W = 16
BOX = np.array([[4, 2, 8, 6]])              # x0, y0, x1, y1: 4 x 4 = 16 pixels, rows 2-5, columns 4-7


def _indicator(boxes, shape=(H, W)):
    return L.box_masks(boxes, shape).astype(float)


def test_box_masks_are_half_open_columns_x_rows_y():
    m = L.box_masks(BOX, (H, W))[0]
    assert m.sum() == 16 and m[2:6, 4:8].all()
    assert not m[6, 4] and not m[2, 8] and not m[1, 4] and not m[2, 3]


def test_the_box_indicator_is_perfect_on_every_metric():
    boxes = np.array([[4, 2, 8, 6], [0, 0, 3, 16], [10, 11, 16, 16]])
    out = L.localise(_indicator(boxes), boxes, rng=0)
    assert (out[["pointing", "mass", "rank", "auroc"]].to_numpy() == 1.0).all()
    assert (out["status"] == "ok").all()


def test_a_map_peaked_outside_the_box_misses():
    a = np.zeros((1, H, W))
    a[0, 12, 12] = 5.0
    a[0, 3, 5] = 4.0                                                    # second best is inside
    out = L.localise(a, BOX, rng=0).iloc[0]
    assert out["pointing"] == 0.0 and out["mass"] == pytest.approx(4 / 9)


def test_degenerate_maps_get_a_status_not_a_number():
    a = np.random.default_rng(0).normal(size=(4, H, W))
    a[1] = 0.7                                                          # constant
    a[2, 3, 3] = np.nan
    a[3, 0, 0] = np.inf
    out = L.localise(a, np.repeat(BOX, 4, 0), rng=0)
    assert out["status"].tolist() == ["ok", "constant", "nonfinite", "nonfinite"]
    assert out.loc[1:, ["pointing", "mass", "rank", "auroc"]].isna().all().all()
    assert out.loc[0, ["pointing", "mass", "rank", "auroc"]].notna().all()
    assert L.counts(out["status"]) == {"ok": 1, "no_positive": 0, "constant": 1, "nonfinite": 2}
    for fn in (L.relevance_rank, L.auroc, L.relevance_mass):
        values, status = fn(a, np.repeat(BOX, 4, 0))
        assert np.isnan(values[1:]).all() and list(status[1:]) == ["constant", "nonfinite", "nonfinite"]


def test_half_of_the_top_k_inside_gives_rank_accuracy_one_half():
    a = np.zeros((1, H, W))
    a[0, 2:4, 4:8] = 1.0                                                # 8 of the box's 16 pixels
    a[0, 10:12, 0:4] = 1.0                                              # 8 pixels outside
    values, status = L.relevance_rank(a, BOX)
    assert values[0] == 0.5 and status[0] == "ok"
    assert L.relevance_mass(a, BOX)[0][0] == 0.5
    # AUROC by hand: positives 8 at 1, 8 at 0; negatives 8 at 1, 232 at 0 (ties count 1/2)
    wins = 8 * 232 + 0.5 * (8 * 8 + 8 * 232)
    assert L.auroc(a, BOX)[0][0] == pytest.approx(wins / (16 * 240))


def test_rank_ties_at_the_cut_count_their_expected_share():
    a = np.zeros((1, H, W))
    a[0, 2, 4:8] = 1.0                                                  # 4 box pixels on top, then 252 zeros
    expected = (4 + 12 * 12 / 252) / 16                                 # 12 slots among 252 tied zeros, 12 of them inside
    assert L.relevance_rank(a, BOX)[0][0] == pytest.approx(expected, rel=1e-12)
    # the same number is the mean of the metric over random tie-breaks
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(2000):
        order = np.lexsort((rng.random(H * W), -a[0].ravel()))[:16]
        draws.append(L.box_masks(BOX, (H, W))[0].ravel()[order].mean())
    assert np.mean(draws) == pytest.approx(expected, abs=0.01)


def test_pointing_ties_are_broken_at_random_with_the_seed():
    a = np.zeros((400, H, W))
    a[:, 3, 5] = a[:, 12, 12] = 1.0                                     # one maximum inside, one outside
    boxes = np.repeat(BOX, 400, 0)
    hits, _ = L.pointing_game(a, boxes, rng=7)
    assert set(np.unique(hits)) == {0.0, 1.0} and abs(hits.mean() - 0.5) < 0.1
    np.testing.assert_array_equal(hits, L.pointing_game(a, boxes, rng=7)[0])
    np.testing.assert_array_equal(hits, L.pointing_game(a, boxes, rng=np.random.default_rng(7))[0])
    assert not np.array_equal(hits, L.pointing_game(a, boxes, rng=8)[0])
    assert (L.pointing_game(a, boxes, rng=7, ties="any")[0] == 1.0).all()
    with pytest.raises(ValueError, match="ties"):
        L.pointing_game(a, boxes, rng=7, ties="first")


def test_negative_relevance_is_left_out_of_the_mass():
    a = np.full((2, H, W), -5.0)
    a[0, 2:6, 4:8] = 1.0                                                # positive only in the box
    a[1] = -np.arange(H * W).reshape(H, W)                              # no positive value, not constant
    values, status = L.relevance_mass(a, np.repeat(BOX, 2, 0))
    assert values[0] == 1.0 and np.isnan(values[1]) and list(status) == ["ok", "no_positive"]
    out = L.localise(a, np.repeat(BOX, 2, 0), rng=0)
    assert out["status"].tolist() == ["ok", "no_positive"]
    assert out.loc[1, ["pointing", "rank", "auroc"]].notna().all()      # still located: the maximum is (0, 0)
    assert out.loc[1, "pointing"] == 0.0


def test_masks_and_boxes_give_the_same_answers():
    a = np.random.default_rng(1).normal(size=(3, H, W))
    boxes = np.array([[4, 2, 8, 6], [0, 0, 3, 16], [10, 11, 16, 16]])
    pd_boxes = L.localise(a, boxes, rng=0)
    pd_masks = L.localise(a, L.box_masks(boxes, (H, W)), rng=0)
    assert pd_boxes.equals(pd_masks)
    # and a non-rectangular mask works too
    mask = np.zeros((1, H, W), bool)
    mask[0, [1, 5, 9], [2, 7, 3]] = True
    b = np.zeros((1, H, W))
    b[0][mask[0]] = 1.0
    assert (L.localise(b, mask, rng=0)[["pointing", "mass", "rank", "auroc"]].to_numpy() == 1.0).all()


def test_auroc_matches_scikit_learn():
    rng = np.random.default_rng(2)
    a = np.round(rng.normal(size=(5, H, W)), 1)                         # many ties
    boxes = np.array([[4, 2, 8, 6], [0, 0, 3, 16], [10, 11, 16, 16], [1, 1, 2, 2], [0, 0, 15, 16]])
    ours, _ = L.auroc(a, boxes)
    masks = L.box_masks(boxes, (H, W))
    ref = [roc_auc_score(m.ravel(), x.ravel()) for m, x in zip(masks, a)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_random_maps_score_at_chance():
    boxes = np.array([[0, 0, 8, 4], [2, 2, 14, 14]])                    # p = 32/256 and 144/256
    ctrl = L.random_control(boxes, (H, W), seed=0, draws=300)
    assert len(ctrl) == 600 and (ctrl["status"] == "ok").all()
    expected = L.chance(boxes, (H, W))
    assert expected["pointing"].tolist() == [0.125, 0.5625] and (expected["auroc"] == 0.5).all()
    means = ctrl.groupby("image")[["pointing", "mass", "rank", "auroc"]].mean()
    for i in range(2):
        p = expected.loc[i, "pointing"]
        assert abs(means.loc[i, "pointing"] - p) < 4 * np.sqrt(p * (1 - p) / 300)
        for col in ("mass", "rank", "auroc"):
            assert means.loc[i, col] == pytest.approx(expected.loc[i, col], abs=0.02), (i, col)
    again = L.random_control(boxes, (H, W), seed=0, draws=300)
    assert ctrl.equals(again)
    maps = L.random_maps(3, (H, W), seed=5)
    assert maps.shape == (3, H, W) and 0 <= maps.min() and maps.max() < 1
    np.testing.assert_array_equal(maps, L.random_maps(3, (H, W), seed=5))


def test_bad_inputs_are_refused():
    a = np.zeros((2, H, W))
    a[:, 0, 0] = 1
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        L.localise(a[:, None], np.repeat(BOX, 2, 0), rng=0)
    with pytest.raises(ValueError, match="whole map"):
        L.localise(a, np.array([[4, 2, 8, 6], [0, 0, W, H]]), rng=0)
    with pytest.raises(ValueError, match="empty"):
        L.localise(a, np.zeros((2, H, W), bool), rng=0)
    with pytest.raises(ValueError, match="select the tagged rows"):
        L.localise(a, np.array([[4, 2, 8, 6], [-1, -1, -1, -1]]), rng=0)
    with pytest.raises(ValueError, match="region"):
        L.localise(a, BOX, rng=0)                                       # one box for two maps
    with pytest.raises(ValueError, match="real array"):
        L.localise(a > 0, np.repeat(BOX, 2, 0), rng=0)
    with pytest.raises(ValueError, match="unknown"):
        L.counts(["ok", "bad"])


@pytest.fixture(scope="module")
def quantus():
    import quantus                                                     # pinned in requirements.txt
    return quantus


def _quantus(quantus, metric, a, masks):
    """A Quantus 0.6 localisation metric on precomputed maps: no model, no normalisation, no abs."""
    m = metric(normalise=False, abs=False, disable_warnings=True, display_progressbar=False)
    x = np.zeros((len(a), 1, *a.shape[1:]), np.float32)
    return np.asarray(m(model=None, x_batch=x, y_batch=np.zeros(len(a), int), a_batch=a[:, None],
                        s_batch=masks[:, None].astype(float), channel_first=True), dtype=float)


def test_quantus_cross_check(quantus):
    rng = np.random.default_rng(3)
    n, h, w = 12, 24, 20
    a = rng.normal(size=(n, h, w))                                      # continuous: no ties
    x0, y0 = rng.integers(0, w - 6, n), rng.integers(0, h - 6, n)
    boxes = np.stack([x0, y0, x0 + rng.integers(2, 7, n), y0 + rng.integers(2, 7, n)], 1)
    a[: n // 2] += 1.5 * L.box_masks(boxes[: n // 2], (h, w))           # half the maps lean on their box
    masks = L.box_masks(boxes, (h, w))
    ours = L.localise(a, boxes, rng=0)
    assert (ours["status"] == "ok").all()
    pointing = _quantus(quantus, quantus.PointingGame, a, masks)
    np.testing.assert_array_equal(ours["pointing"], pointing)
    assert 0 < pointing.sum() < n                                       # both outcomes occur
    np.testing.assert_allclose(ours["rank"], _quantus(quantus, quantus.RelevanceRankAccuracy, a, masks), rtol=1e-12)
    np.testing.assert_allclose(ours["auroc"], _quantus(quantus, quantus.AUC, a, masks), rtol=1e-12)
    # mass: ours keeps positive relevance only; Quantus on the positive part agrees ...
    np.testing.assert_allclose(ours["mass"],
                               _quantus(quantus, quantus.RelevanceMassAccuracy, np.maximum(a, 0), masks), rtol=1e-12)
    # ... while Quantus on the signed map divides signed sums (can leave [0, 1]): a documented difference
    signed = _quantus(quantus, quantus.RelevanceMassAccuracy, a, masks)
    np.testing.assert_allclose(signed, (a * masks).sum((1, 2)) / a.sum((1, 2)), rtol=1e-12)
    assert not np.allclose(signed, ours["mass"])


def test_quantus_cross_check_with_ties(quantus):
    a = np.zeros((3, H, W))
    a[:, 3, 5] = a[:, 12, 12] = 1.0                                     # tied maximum, one inside the box
    a[2, 3, 5] = 0.5                                                    # map 2: the only maximum is outside
    boxes = np.repeat(BOX, 3, 0)
    masks = L.box_masks(boxes, (H, W))
    np.testing.assert_array_equal(L.pointing_game(a, boxes, rng=0, ties="any")[0],
                                  _quantus(quantus, quantus.PointingGame, a, masks))
    # Quantus ranks tied pixels in argsort's order; ours is that rank's expectation over random tie-breaks
    b = np.zeros((1, H, W))
    b[0, 2, 4:8] = 1.0
    ours = L.relevance_rank(b, BOX)[0][0]
    theirs = _quantus(quantus, quantus.RelevanceRankAccuracy, b, masks[:1])[0]
    assert ours == pytest.approx((4 + 12 * 12 / 252) / 16) and theirs in {k / 16 for k in range(4, 17)}
