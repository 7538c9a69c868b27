"""cxrbench.studies.severity: the radiologists' severity scores, lung share of relevance, Spearman with a group CI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cxrbench.studies import severity as S

SCORES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "covid-chestxray-dataset" / \
    "annotations" / "covid-severity-scores.csv"
N_BOOT = 200


@pytest.mark.skipif(not SCORES.is_file(), reason="no ../shared/data mirror")
def test_read_real_scores():
    d = S.read_scores(SCORES)
    assert len(d) == 94 and list(d.columns) == ["path", "extent", "opacity"]
    assert d["path"].is_unique and d["path"].str.startswith("covid_chestxray/images/").all()
    assert d["extent"].between(0, 8).all() and d["opacity"].between(0, 6).all()
    assert d["extent"].max() == 8.0 and d["opacity"].max() == 6.0
    meta = S.read_scores_meta(SCORES)
    assert meta["license"].startswith("CC BY-SA") and "2005.11856" in meta["citation"]


def _write(tmp_path, body: str) -> Path:
    p = tmp_path / "scores.csv"
    p.write_text("## Title,,\n## License: CC BY-SA,,\n## Citation: X et al.,,\n" + body)
    return p


def test_read_scores_validation(tmp_path):
    ok = S.read_scores(_write(tmp_path, "filename,geographic_extent_mean,opacity_mean\na.png,1.5,2\n"))
    assert ok.to_dict("records") == [{"path": "covid_chestxray/images/a.png", "extent": 1.5, "opacity": 2.0}]
    with pytest.raises(ValueError, match=r"scores\.csv, line 6: extent 9\.0 outside"):
        S.read_scores(_write(tmp_path, "filename,geographic_mean,opacity_mean\na.png,1,2\nb.png,9,2\n"))
    with pytest.raises(ValueError, match="line 6: opacity 'x'"):
        S.read_scores(_write(tmp_path, "filename,geographic_mean,opacity_mean\na.png,1,2\nb.png,1,x\n"))
    with pytest.raises(ValueError, match="already scored on line 5"):
        S.read_scores(_write(tmp_path, "filename,geographic_mean,opacity_mean\na.png,1,2\na.png,1,2\n"))
    with pytest.raises(ValueError, match="line 4: header"):
        S.read_scores(_write(tmp_path, "file,extent,opacity\na.png,1,2\n"))
    bare = tmp_path / "bare.csv"
    bare.write_text("filename,geographic_mean,opacity_mean\na.png,1,2\n")
    with pytest.raises(ValueError, match="License"):
        S.read_scores_meta(bare)


def test_lung_share_hand_made():
    mask = np.zeros((4, 4), bool)
    mask[:, :2] = True                                                 # left half is lung
    maps = np.zeros((8, 4, 4))
    maps[0, :, :2] = 1.0                                               # all positive relevance in the lungs
    maps[1, :, :] = 1.0
    maps[1, 0, 0] = 2.0                                                # 9 of 17 inside
    maps[2, :, :2], maps[2, :, 2:] = -5.0, 1.0                         # negative in lung: ignored (positive mode)
    maps[3] = 0.3                                                      # constant
    maps[4, 0, 0] = np.nan
    maps[5] = -np.arange(16).reshape(4, 4)                             # no positive value
    maps[6, 0, 0] = 1.0                                                # empty mask (below)
    maps[7, 0, 3] = 1.0                                                # all outside
    masks = np.repeat(mask[None], 8, 0)
    masks[6] = False
    v, st = S.lung_share(maps, masks)
    assert list(st) == ["ok", "ok", "ok", "constant", "nonfinite", "no_positive", "empty_mask", "ok"]
    assert v[0] == 1.0 and v[1] == pytest.approx(9 / 17) and v[2] == 0.0 and v[7] == 0.0
    assert np.isnan(v[3:7]).all()
    va, _ = S.lung_share(maps, masks, mode="absolute")
    assert va[2] == pytest.approx(40 / 48)
    assert S.share_counts(st) == {"ok": 4, "constant": 1, "nonfinite": 1, "no_positive": 1, "empty_mask": 1}
    with pytest.raises(ValueError, match="shape"):
        S.lung_share(maps, masks[:, :2])


def test_correlate_monotone_and_degenerate():
    x = np.arange(20, dtype=float)
    groups = np.repeat(np.arange(10), 2)
    up = S.correlate(x, x ** 2, groups, n_boot=N_BOOT, seed=0)
    assert up["status"] == "ok" and up["rho"]["estimate"] == pytest.approx(1.0)
    assert up["rho"]["low"] == pytest.approx(1.0) and up["n"] == 20 and up["groups"] == 10
    down = S.correlate(x, -x, groups, n_boot=N_BOOT, seed=0)
    assert down["rho"]["estimate"] == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    a, b = rng.random(30), rng.random(30)
    noisy = S.correlate(a, b, np.arange(30), n_boot=N_BOOT, seed=0)
    assert noisy["rho"]["estimate"] == pytest.approx(stats.spearmanr(a, b).statistic)
    assert noisy["rho"]["low"] < noisy["rho"]["estimate"] < noisy["rho"]["high"]
    x_nan = x.copy()
    x_nan[:16] = np.nan                                                # 4 pairs left
    few = S.correlate(x_nan, x, groups, n_boot=N_BOOT, seed=0)
    assert few["status"] == "too_few" and few["rho"] is None and few["n"] == 4 and few["dropped"] == 16
    one = S.correlate(x, x, np.zeros(20), n_boot=N_BOOT, seed=0)
    assert one["status"] == "too_few" and one["rho"] is None
    flat = S.correlate(np.ones(20), x, groups, n_boot=N_BOOT, seed=0)
    assert flat["status"] == "constant" and flat["rho"] is None
    json.dumps([up, few, flat], allow_nan=False)
    md = S.severity_table([{"method": "saliency", "score": "extent", **up},
                           {"method": "gradcam", "score": "opacity", **few}], meta={"citation": "C", "license": "L"})
    assert "| saliency | extent | 1.000 [1.000, 1.000] | 20 | 10 |" in md
    assert "| gradcam | opacity | – | 4 |" in md and "too_few" in md and "License: L" in md
    nested = S.severity_table({"resnet18": {"saliency": up, "gradcam": few}})
    assert "| backbone | method |" in nested and "| resnet18 | gradcam | – | 4 |" in nested


def brightness_world(n: int = 60, seed: int = 0):
    """Images whose lung brightness rises with the severity score (opacities are bright), a 'brightness' map
    (the image itself, as a zero-baseline map is) and a map whose lung share follows the score beyond it."""
    rng = np.random.default_rng(seed)
    score = rng.uniform(0, 8, n)
    masks = np.zeros((n, 16, 16), bool)
    masks[:, 4:12, 2:14] = True
    bright = 0.2 + 0.08 * score + rng.normal(0, 0.05, n)          # mean lung intensity
    images = np.full((n, 16, 16), 0.5)
    images[masks] = np.repeat(bright, masks[0].sum())
    images = np.clip(images + rng.normal(0, 0.01, images.shape), 0, 1)
    return score, masks, images


def test_brightness_controls_explain_a_map_that_scales_with_the_image():
    score, masks, images = brightness_world()
    ctrl = S.image_controls(images, masks)
    intensity = S.lung_intensity(images, masks)
    area = masks.reshape(len(masks), -1).mean(1)
    groups = np.arange(len(score))
    raw = S.correlate(ctrl[S.IMAGE], score, groups, n_boot=N_BOOT, seed=0)
    assert raw["rho"]["estimate"] > 0.8                   # the image alone 'localises' severity
    cov = {S.AREA: area, S.INTENSITY: intensity}
    part = S.partial_correlate(ctrl[S.IMAGE], score, cov, groups, n_boot=N_BOOT, seed=0)
    assert part["status"] == "ok" and abs(part["rho"]["estimate"]) < 0.3   # gone once brightness is held fixed
    # here the image map is (up to noise) a function of lung brightness, so its residual is undefined in many
    # resamples: either the CI straddles 0 or there is honestly no CI (fewer valid resamples than
    # stats.min_valid_share), never an interval away from 0
    rho = part["rho"]
    assert (rho["status"] == "no_ci" and rho["low"] is None) or rho["low"] < 0 < rho["high"]
    # a map whose lung share follows the score beyond brightness keeps its partial correlation
    rng = np.random.default_rng(1)
    informative = 0.1 + 0.1 * score + rng.normal(0, 0.05, len(score))
    kept = S.partial_correlate(informative, score, cov, groups, n_boot=N_BOOT, seed=0)
    assert kept["rho"]["estimate"] > 0.5 and kept["rho"]["low"] > 0 and kept["p"] < 1e-3
    assert kept["df"] == len(score) - 2 - 2 and kept["covariates"] == [S.AREA, S.INTENSITY]
    json.dumps([part, kept], allow_nan=False)


def test_partial_spearman_without_covariates_is_spearman_and_degenerate_cases():
    rng = np.random.default_rng(2)
    a, b = rng.random(25), rng.random(25)
    r = S.partial_correlate(a, b, {}, np.arange(25), n_boot=N_BOOT, seed=0)
    assert r["rho"]["estimate"] == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert r["p"] == pytest.approx(stats.spearmanr(a, b).pvalue, rel=1e-9)   # same t-test when k = 0
    # a covariate equal to the values leaves nothing: undefined, not a number
    same = S.partial_correlate(a, b, {"a": a}, np.arange(25), n_boot=N_BOOT, seed=0)
    assert same["status"] == "constant" and same["rho"] is None
    few = S.partial_correlate(a[:5], b[:5], {"c": b[:5]}, np.arange(5), n_boot=N_BOOT, seed=0)
    assert few["status"] == "too_few"


def test_correlations_take_the_interval_method_and_min_valid_share():
    """``method`` and ``min_valid_share`` (stats.*) reach both correlations' intervals; the table names the
    interval its CIs used."""
    from cxrbench.core import bootstrap as B

    rng = np.random.default_rng(4)
    groups = np.repeat(np.arange(10), 3)
    v = rng.normal(size=30)
    s = v + rng.normal(size=30)
    z = {"z": rng.normal(size=30)}
    runs = {}
    for name, fn in (("correlate", lambda **kw: S.correlate(v, s, groups, n_boot=N_BOOT, seed=0, **kw)),
                     ("partial", lambda **kw: S.partial_correlate(v, s, z, groups, n_boot=N_BOOT, seed=0, **kw))):
        default, pct = fn(), fn(method="percentile")
        assert default["rho"]["method"].startswith(B.DEFAULT_METHOD) and pct["rho"]["method"].startswith("percentile")
        assert pct["rho"]["estimate"] == default["rho"]["estimate"], name
        assert (pct["rho"]["low"], pct["rho"]["high"]) != (default["rho"]["low"], default["rho"]["high"]), name
        runs[name] = default, pct
    default, pct = runs["correlate"]
    assert "; expanded percentile, benchmarks" in S.severity_table({"b": {"m": default}})
    assert "; percentile, benchmarks" in S.severity_table({"b": {"m": pct}})
    # scores that vary only among patient 0's images: rho is undefined in the ~35 % of resamples without them
    s0 = np.where(groups == 0, np.arange(30.0), 0.0)
    strict = S.correlate(v, s0, groups, n_boot=N_BOOT, seed=0, min_valid_share=0.9)
    loose = S.correlate(v, s0, groups, n_boot=N_BOOT, seed=0, min_valid_share=0.5)
    assert 0.5 < strict["rho"]["valid_share"] < 0.9
    assert strict["rho"]["status"] == "no_ci" and strict["rho"]["low"] is None
    assert loose["rho"]["status"] == "ok" and loose["rho"]["low"] is not None


def test_holm_step_down():
    # hand-computed: sorted 0.01, 0.02, 0.04 -> 0.03, 0.04, 0.04 (monotone); None stays untested
    adj = S.holm({"a": 0.04, "b": 0.01, "c": 0.02, "d": None})
    assert adj == pytest.approx({"a": 0.04, "b": 0.03, "c": 0.04, "d": None})
    assert S.holm({"a": 0.6, "b": 0.5}) == {"a": 1.0, "b": 1.0}


def test_lung_intensity_and_image_controls_inputs():
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2] = True
    img = np.arange(32, dtype=float).reshape(2, 4, 4) / 32
    li = S.lung_intensity(img, masks)
    assert li[0] == pytest.approx(img[0, :2].mean()) and np.isnan(li[1])
    with pytest.raises(ValueError, match="non-negative"):
        S.image_controls(-img, masks)


def test_severity_stage_end_to_end_on_the_sample(sample_data, params, tmp_path, monkeypatch):
    """The stage on the shipped sample (its scored test images), a tiny untrained resnet18: every method's
    correlation beside the brightness controls, the partial correlations with Holm across the methods."""
    import copy
    import shutil

    import torch

    from cxrbench.classify import models as M
    from cxrbench.core import paths
    from cxrbench.data.cache import Cache

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for f in ("index.csv", "splits.csv"):
        shutil.copy(sample_data / f, tmp_path / "data" / f)
    shutil.copytree(sample_data / "cache", tmp_path / "data" / "cache")
    cache = Cache(paths.CACHE, paths.INDEX)
    # scores for the sample's covid-chestxray test images (the shipped file scores none of them): made-up
    # values, in the file's format; this tests the stage's plumbing, not a finding
    splits = pd.read_csv(paths.SPLITS, keep_default_na=False)
    test = [q for q in splits.loc[splits["split"] == "test", "path"] if q.startswith(S.PREFIX)]
    rng = np.random.default_rng(0)
    scores = tmp_path / "scores.csv"
    scores.write_text("## made-up scores for a test\n## License: CC0\n## Citation: none\n"
                      "filename,geographic_mean,opacity_mean\n"
                      + "".join(f"{q[len(S.PREFIX):]},{rng.uniform(0, 8):.2f},{rng.uniform(0, 6):.2f}\n" for q in test))
    masks = np.zeros((len(cache.index), 64, 64), np.uint8)
    masks[:, 12:52, 8:56] = 1
    Path(paths.LUNG_MASKS).parent.mkdir(parents=True, exist_ok=True)
    np.save(paths.LUNG_MASKS, masks)
    p = copy.deepcopy(params)
    p["train"].update(backbones=["resnet18"], folds=[0])
    p["severity"].update(methods=["saliency", "gradcam"], scores_file=str(scores))
    p["stats"].update(resamples=100, method="percentile")         # the stage's intervals follow stats.method
    labels = list(p["labels"]["names"])
    torch.manual_seed(0)
    net = M.create_model("resnet18", len(labels), 1, "none", 32).eval()
    meta = M.classifier_meta("resnet18", labels, 1, 32, 64, "full", 0, fold=0, epoch=0)
    monkeypatch.setattr(S.A, "load_classifier", lambda params, bb, k, device: (net, meta))
    monkeypatch.setattr(S.training, "checkpoint_file", lambda params: None)
    S.run(p)
    out = json.loads(Path(paths.SEVERITY).read_text())
    assert out["status"] == "ok" and out["scored_test_images"] == len(test) >= 5
    res, part = out["results"]["resnet18"], out["partial"]["resnet18"]
    assert set(res) >= {"saliency", "gradcam", S.AREA, S.IMAGE, S.IMAGE_SQ, S.INTENSITY}
    assert set(part) == {"saliency", "gradcam", S.IMAGE, S.IMAGE_SQ}                # covariates not correlated on themselves
    assert part[S.IMAGE]["family"].startswith("control") and part[S.IMAGE]["p_holm"] is None
    tested = {m: r["p"] for m, r in part.items() if m in ("saliency", "gradcam")}
    assert {m: part[m]["p_holm"] for m in tested} == pytest.approx(S.holm(tested))
    cis = [r["rho"] for per in (res, part) for r in per.values() if r["status"] == "ok"]
    assert cis and all(ci["method"].startswith("percentile,") for ci in cis)
    md = Path(paths.SEVERITY_MD).read_text()
    assert "partial Spearman rho" in md and "Brightness controls" in md and "; percentile, benchmarks" in md
