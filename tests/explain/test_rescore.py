"""The aoppc statistics recomputed from the per-image file equal the stage's own, degenerate maps included."""

import io

import numpy as np
import pandas as pd
import pytest
import torch

from cxrbench.explain.metrics import rescore
from cxrbench.explain.metrics import tables as AT
from tests.explain.test_degenerate_maps import _fold, _toy_curves

STATS = {"resamples": 200, "seed": 0, "confidence": 0.95, "multiplicity": "holm"}
FILLS = ["black", "blur"]


def _run():
    """Three models (two backbones, two folds of one) of 5 images from 3 patients; the CAM is constant on some
    images of some models and missing on one: the common set differs per model."""
    g = torch.Generator().manual_seed(0)
    x, target = 0.5 + 0.5 * torch.rand(5, 1, 16, 16, generator=g), torch.ones(5, dtype=torch.long)
    scores = AT.new_scores()
    groups = np.array(["p1", "p1", "p2", "p3", "p3"])
    for seed, (bb, fold, const) in enumerate((("b1", 0, (1, 3)), ("b1", 1, ()), ("b2", 0, (4,)))):
        maps, masks, rand = _fold(seed=seed, cam_constant=const)
        AT.score_fold(scores, bb, fold, maps, masks, rand, _toy_curves(x, target), groups=groups)
    paths = {k: np.array([f"{k[0]}/{k[1]}/{i}.png" for i in range(5)]) for k in scores["groups"]}
    return scores, paths


def _csv_round_trip(rows):
    buf = io.StringIO()
    pd.DataFrame(rows, columns=AT.PER_IMAGE_COLUMNS).to_csv(buf, index=False)
    buf.seek(0)
    return pd.read_csv(buf, keep_default_na=False)


def test_statistics_from_the_per_image_file_equal_the_stage():
    scores, paths = _run()
    stage = AT.summary(scores, ["good", "cam"], stats=STATS, fills=FILLS)
    frame = _csv_round_trip(AT.per_image_rows(scores, paths))
    again = rescore.statistics(rescore.scores_from_rows(frame), ["good", "cam"], STATS, FILLS)
    for k in rescore.STATISTICS:
        assert again[k] == stage[k], k
    # the common set really differs per model (so the reconstruction of "scored or not" is exercised)
    assert stage["gain"]["pooled"]["cam|aoppc_threshold_morf"]["n"] == 12


def test_a_lost_row_changes_the_result():
    """The recomputation reads the rows: dropping one scored value changes the common set and the gain."""
    scores, paths = _run()
    stage = AT.summary(scores, ["good", "cam"], stats=STATS, fills=FILLS)
    frame = _csv_round_trip(AT.per_image_rows(scores, paths))
    lost = frame[~((frame["method"] == "good") & (frame["image"] == 0) & (frame["backbone"] == "b2"))]
    again = rescore.statistics(rescore.scores_from_rows(lost), ["good", "cam"], STATS, FILLS)
    assert again["gain"]["pooled"]["cam|aoppc_threshold_morf"]["n"] == 11
    assert again["gain"] != stage["gain"]


def test_damaged_files_are_refused():
    scores, paths = _run()
    frame = _csv_round_trip(AT.per_image_rows(scores, paths))
    with pytest.raises(ValueError, match="columns"):
        rescore.scores_from_rows(frame.drop(columns="group"))
    bad = frame.copy()
    bad.loc[3, "value"] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        rescore.scores_from_rows(bad)
    with pytest.raises(ValueError, match="no rows"):
        rescore.scores_from_rows(frame.iloc[:0])
