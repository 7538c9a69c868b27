"""The aoppc statistics recomputed from the per-image file equal the stage's own, degenerate maps included."""

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrbench.explain.metrics import rescore
from cxrbench.explain.metrics import tables as AT
from helpers import script as load_script
from tests.explain.test_degenerate_maps import _fold, _toy_curves

STATS = {"resamples": 200, "seed": 0, "confidence": 0.95, "multiplicity": "holm"}
FILLS = ["black", "blur"]
ROOT = Path(__file__).resolve().parents[2]


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


# --- runs of several training seeds, pooled ------------------------------------------------------------------

def _seed_rows(offset: int) -> pd.DataFrame:
    """One seed's run: the same images and patients, other maps (another trained model's), real method names."""
    g = torch.Generator().manual_seed(0)
    x, target = 0.5 + 0.5 * torch.rand(5, 1, 16, 16, generator=g), torch.ones(5, dtype=torch.long)
    scores = AT.new_scores()
    groups = np.array(["p1", "p1", "p2", "p3", "p3"])
    for k, (bb, fold, const) in enumerate((("b1", 0, (1,)), ("b1", 1, ()), ("b2", 0, (4,)))):
        maps, masks, rand = _fold(seed=10 * offset + k, cam_constant=const)
        AT.score_fold(scores, bb, fold, maps, masks, rand, _toy_curves(x, target), groups=groups)
    frame = _csv_round_trip(AT.per_image_rows(scores, {k: np.array([f"{i}.png" for i in range(5)])
                                                       for k in scores["groups"]}))
    return frame.replace({"method": {"good": "saliency", "cam": "gradcam"}})


def test_combined_seeds_are_models_of_their_own():
    frames = {42: _seed_rows(0), 43: _seed_rows(1)}
    scores = rescore.scores_from_rows(rescore.combine(frames))
    out = rescore.statistics(scores, ["saliency", "gradcam"], STATS, FILLS)
    cell = out["gain"]["across_models"]["pooled"]["saliency|aoppc_threshold_morf"]
    assert cell["models"] == 6 and cell["patients"] == 3
    assert sorted(cell["per_model"]) == sorted(f"{b}@seed{s}|f{f}" for s in (42, 43)
                                               for b, f in (("b1", 0), ("b1", 1), ("b2", 0)))
    leaders = out["winners"]["by_metric"]["aoppc_threshold_morf"]["across_models"]["leader_by_model"]
    assert len(leaders) == 6
    with pytest.raises(ValueError, match="at least 2"):
        rescore.combine({42: frames[42]})


def _run_dir(root, seed: int, rows: pd.DataFrame, **change):
    import yaml

    from cxrbench.core import paths
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["seed"] = seed
    params["explain"]["methods"] = ["saliency", "gradcam"]
    for k, v in change.items():
        params["explain"][k] = v
    d = root / f"s{seed}"
    (d / "metrics").mkdir(parents=True)
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rows.to_csv(d / paths.AOPPC_PER_IMAGE, index=False)
    sample = {"rule": "test", "images": 5, "patients": 3, "sources": {"s": 5}}
    (d / paths.AOPPC).write_text(json.dumps({"sample": {"models": {"b1": {"f0": sample}}, "all": {"images": 5, "patients": 3, "sources": {"s": 5}}},
                                             "region": None}))
    return d


def test_the_script_pools_seeds_and_refuses_what_is_not_a_seed(tmp_path, capsys):
    script = load_script("rescore_aoppc")
    a, b = _run_dir(tmp_path, 42, _seed_rows(0)), _run_dir(tmp_path, 43, _seed_rows(1))
    assert script.main([str(a), str(b), "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "aoppc.json").read_text())
    assert result["gain"]["across_models"]["pooled"]["gradcam|aoppc_threshold_morf"]["models"] == 6
    assert result["rescored"]["runs"] == [str(a), str(b)]
    assert "backbone x fold x training seed" in (tmp_path / "out" / "aoppc_table.md").read_text()
    assert (tmp_path / "out" / "gains_by_model.png").stat().st_size > 0
    agreement = json.loads((tmp_path / "out" / "agreement.json").read_text())     # the metrics' agreement, pooled
    assert agreement["methods"][-2:] == ["random", "edge"] and "Agreement across metrics" in \
        (tmp_path / "out" / "agreement.md").read_text()
    # the same seed twice is a rerun; another sample size is another study: both refused, naming the reason
    assert script.main([str(a), str(a), "--out", str(tmp_path / "x")]) == 2
    assert "share a seed" in capsys.readouterr().err
    c = _run_dir(tmp_path, 44, _seed_rows(2), max_images=7)
    assert script.main([str(a), str(c), "--out", str(tmp_path / "x")]) == 2
    assert "['explain']" in capsys.readouterr().err


def test_seed_of_reads_back_the_seed_that_seed_model_wrote():
    from cxrbench.explain.metrics.across_models import seed_model, seed_of
    assert seed_of(f"{seed_model('resnet18', 43)}|f0") == "43"
    assert seed_of(seed_model("efficientnet_lite0", 7)) == "7"
    assert seed_of("resnet18|f0") == ""                                  # an unpooled run's model
