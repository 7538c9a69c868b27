"""Shortcut audit: the controls' inputs (cxrbench/lungs/controls.py) and their scoring (cxrbench/studies/audit.py)."""

from __future__ import annotations

import copy
from pathlib import Path
import tempfile

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxrbench.core import paths
from cxrbench.studies import audit
from cxrbench.lungs import controls as AI
from cxrbench.classify import models as M
from cxrbench.core import params as P
from cxrbench.classify import training as T

SIZE = 32


def _lungs(n=6, size=SIZE, seed=0):
    """Images with two elliptic 'lungs' of random width; the masks mark them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    imgs = rng.integers(40, 90, (n, 2, size, size)).astype(np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        w, h = rng.uniform(3, 5.5), rng.uniform(8, 10)
        for cx in (size / 2 - 7, size / 2 + 7):
            masks[i][((xx - cx) / w) ** 2 + ((yy - size / 2) / h) ** 2 <= 1] = 1
    return imgs, masks


def test_hull_region_covers_both_lungs_and_the_gap_between_them():
    imgs, masks = _lungs()
    hull = AI.regions(masks, "hull", 0.0)
    assert (hull >= (masks > 0)).all()                                   # every lung pixel hidden
    mid = SIZE // 2
    assert hull[:, mid, mid].all() and not (masks[:, mid, mid] > 0).any()  # the mediastinum too: no lung outline
    wider = AI.regions(masks, "hull", 2 / SIZE)                          # 2 px of dilation
    assert (wider >= hull).all() and wider.sum() > hull.sum()


def test_template_region_is_the_same_for_every_image():
    imgs, masks = _lungs()
    t = AI.regions(masks, "template", 0.0)
    assert all((t[i] == t[0]).all() for i in range(len(t))) and t[0].any()
    with pytest.raises(ValueError, match="every lung mask is empty"):
        AI.template(np.zeros_like(masks))


@pytest.mark.parametrize("fill", AI.FILLS)
def test_outside_only_keeps_the_outside_and_hides_the_region(fill):
    imgs, masks = _lungs()
    out = AI.apply_control(imgs, masks, "outside_only", region="hull", dilation=0.0, fill=fill)
    hide = AI.regions(masks, "hull", 0.0)
    sel = np.broadcast_to(~hide[:, None], imgs.shape)
    assert (out[sel] == imgs[sel]).all()                                 # outside untouched
    if fill == "mean":                                                  # one constant, whatever the image
        inside = out[np.broadcast_to(hide[:, None], imgs.shape)]
        assert len(np.unique(inside.reshape(-1))) <= imgs.shape[1]


def test_a_control_sees_nothing_of_what_it_hides():
    """Two images that differ only inside the region give the same outside_only input; only outside it: the same
    lungs_only input; any two images with the same masks: the same silhouettes."""
    imgs, masks = _lungs(n=4)
    masks[1] = masks[0]
    hide = AI.regions(masks, "hull", 0.0)[0]
    other = imgs.copy()
    other[1] = imgs[0]
    other[1][:, hide] = 255 - imgs[0][:, hide]                           # image 1 = image 0 with other lungs
    out = AI.apply_control(other, masks, "outside_only", region="hull", fill="zero")
    assert (out[0] == out[1]).all()
    other[1] = imgs[0]
    other[1][:, ~hide] = 255 - imgs[0][:, ~hide]                         # ... with another outside
    out = AI.apply_control(other, masks, "lungs_only", region="hull", fill="zero")
    assert (out[0] == out[1]).all()
    for control in ("silhouette_only", "mask_silhouette"):
        out = AI.apply_control(imgs, masks, control, region="hull")
        assert (out[0] == out[1]).all() and set(np.unique(out)) <= {0, 255}


def test_rows_give_exactly_what_the_model_saw():
    imgs, masks = _lungs(n=8)
    for control in AI.CONTROLS:
        for region in AI.REGIONS:
            whole = AI.apply_control(imgs, masks, control, 1, region=region, dilation=0.03, fill="mean")
            part = AI.apply_control(imgs, masks, control, 1, region=region, dilation=0.03, fill="mean",
                                    rows=np.array([2, 5]))
            assert (part == whole[[2, 5]]).all(), (control, region)


def test_lungs_removed_is_the_paper_style_black_hole():
    imgs, masks = _lungs()
    out = AI.apply_control(imgs, masks, "lungs_removed", 0)
    inside = np.broadcast_to(masks[:, None] > 0, imgs.shape)
    assert (out[inside] == 0).all() and (out[~inside] == imgs[~inside]).all()


# --- the silhouette control on a synthetic case ------------------------------------------------------

def _synthetic_study(shape_carries_label: bool, n=160, seed=0):
    """Label 1 either widens the lungs (shape carries the label) or brightens their inside (shape does not)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    y = (np.arange(n) % 2).astype(int)
    rng.shuffle(y)
    imgs = rng.integers(40, 90, (n, 1, SIZE, SIZE)).astype(np.uint8)
    masks = np.zeros((n, SIZE, SIZE), np.uint8)
    for i in range(n):
        w = (5.5 if y[i] else 3.0) if shape_carries_label else rng.uniform(3.0, 5.5)
        h, cy = rng.uniform(8, 10), SIZE / 2 + rng.uniform(-1.5, 1.5)
        for cx in (SIZE / 2 - 7, SIZE / 2 + 7):
            masks[i][((xx - cx) / w) ** 2 + ((yy - cy) / h) ** 2 <= 1] = 1
        lung = masks[i] > 0
        bright = 60 if (y[i] and not shape_carries_label) else 0
        imgs[i, 0][lung] = rng.integers(60, 120, lung.sum()) + bright
    return imgs, masks, y


def _control_auroc(control: str, shape_carries_label: bool) -> float:
    """Train a tiny model the way the train stage does on the control's input; test AUROC on 40 held-out images."""
    imgs, masks, y = _synthetic_study(shape_carries_label)
    x = AI.apply_control(imgs, masks, control, region="hull", dilation=0.06, fill="mean")
    targets = np.stack([y, 1 - y], 1).astype(np.float32)
    cfg = T.TrainConfig(backbone="test_resnet", fold=0, labels=["covid19", "healthy"], in_chans=1, cache_size=SIZE,
                        input_size=SIZE, pretrained="none", epochs=8, batch_size=16, lr=3e-3, seed=0,
                        augment={"enabled": False}, normalize="none")
    with tempfile.TemporaryDirectory() as d:
        T.train(cfg, x, targets, np.arange(100), np.arange(100, 120), d, progress=False, device="cpu")
        model, _ = M.load_classifier(f"{d}/{T.CHECKPOINT_FILES['last']}")
        prob = T.predict(model, x, np.arange(120, 160), torch.device("cpu"))
    return roc_auc_score(y[120:], prob[:, 0])


@pytest.mark.slow
def test_silhouette_control_is_at_chance_unless_the_shape_carries_the_label():
    """The shape-confound audit's control: where the label lies inside the lungs and not in their shape, the
    silhouette alone scores near chance (measured 0.53) and the lungs alone near 1 (1.00); where the label widens
    the lungs, the silhouette alone scores near 1 (1.00)."""
    assert 0.25 < _control_auroc("silhouette_only", shape_carries_label=False) < 0.75
    assert _control_auroc("lungs_only", shape_carries_label=False) > 0.9
    assert _control_auroc("silhouette_only", shape_carries_label=True) > 0.9


# --- scoring ------------------------------------------------------------------------------------------

def _records(n_folds=2, n=120, seed=0, controls=("outside_only", "silhouette_only")):
    """Per fold: covid19 only in source a; 'outside_only' keeps the signal, 'silhouette_only' is noise."""
    rng = np.random.default_rng(seed)
    recs = []
    for k in range(n_folds):
        source = np.where(np.arange(n) < n // 2, "a", "b")
        covid = ((source == "a") & (rng.random(n) < 0.5)).astype(int)
        pneu = ((source == "b") & (rng.random(n) < 0.5)).astype(int)
        signal = covid * 0.5 + rng.random(n) * 0.5
        prob = {"full": {"covid19": signal, "pneumonia": pneu * 0.4 + rng.random(n) * 0.6},
                "outside_only": {"covid19": signal * 0.9 + rng.random(n) * 0.1, "pneumonia": rng.random(n)},
                "silhouette_only": {"covid19": rng.random(n), "pneumonia": rng.random(n)}}
        keep = np.ones(n, bool)
        keep[0] = False
        recs.append({"model": f"m-f{k}", "paths": [f"f{k}/{i}" for i in range(n)],
                     "groups": np.array([f"p{k}-{i // 2}" for i in range(n)]), "source": source, "keep": keep,
                     "y": {"covid19": covid, "pneumonia": pneu}, "prob": {a: prob[a] for a in ("full", *controls)}})
    return recs


SCORES = {"covid19_all": {"score": "covid19", "truth": "covid19", "within": None},
          "covid19_in_a": {"score": "covid19", "truth": "covid19", "within": "a"},
          "source": {"score": "covid19", "truth": "source=a", "within": None},
          "pneumonia_in_a": {"score": "pneumonia", "truth": "pneumonia", "within": "a"}}
STATS = {"resamples": 200, "seed": 0, "confidence": 0.95}


def test_controls_are_scored_paired_with_retained_share_relative_to_chance():
    controls = ["outside_only", "silhouette_only"]
    out = audit.analyse(_records(), SCORES, controls, STATS)
    s = out["covid19_in_a"]
    assert s["status"] == "ok" and s["chance"] == 0.5
    assert s["auroc"]["full"]["low"] > 0.8 and s["auroc"]["outside_only"]["low"] > 0.8
    sil = s["auroc"]["silhouette_only"]
    # a CI that includes 0.5 is not "at chance": only an equivalence test within the margin says so
    assert sil["low"] < 0.5 < sil["high"] and audit.verdict(sil) == "inconclusive"
    assert sil["equivalence"]["bounds"] == [0.45, 0.55] and not sil["equivalence"]["equivalent"]
    assert audit.verdict({**sil, "low": 0.47, "high": 0.53, "equivalence": {"equivalent": True}}) == "chance"
    ret = s["retained"]
    assert 0.7 < ret["outside_only"]["mean"] <= 1.05 and ret["silhouette_only"]["low"] < 0 < ret["silhouette_only"]["high"]
    mean_full = np.mean([f["full"] for f in s["folds"]])
    mean_sil = np.mean([f["silhouette_only"] for f in s["folds"]])
    assert ret["silhouette_only"]["mean"] == pytest.approx((mean_sil - 0.5) / (mean_full - 0.5))
    assert s["difference"]["silhouette_only"]["high"] < 0                  # paired: lost for sure
    # the excluded image (keep False) counts nowhere
    assert sum(f["images"] for f in out["covid19_all"]["folds"]) == 2 * 119
    # a score whose subset has no positives is a status, not a number
    assert out["pneumonia_in_a"]["status"].startswith("undefined") and "auroc" not in out["pneumonia_in_a"]


def test_markdown_shows_every_control_with_its_ci_and_the_exclusions():
    controls = ["outside_only", "silhouette_only"]
    result = {"backbones": ["resnet18"], "folds": [0, 1], "controls": controls, "confidence": 0.95,
              "options": {"region": "hull", "dilation": 0.03, "fill": "mean", "blur_sigma": 0.05},
              "scores": audit.analyse(_records(), SCORES, controls, STATS),
              "excluded": {"count": 1, "of": 240, "by_reason": {"empty": 1}, "images": []},
              "mask_plausibility": {"a": {"area_fraction": {"n": 3, "mean": 0.3, "quantiles": {"q05": 0.2, "q95": 0.4}},
                                          "components": {"0": 0, "1": 1, "2+": 2}, "implausible": 1}}}
    # a score of a label the run's classifier does not output (a multiclass run's classes): a status row
    result["scores"]["pneumonia_x"] = {"spec": {"score": "pneumonia", "truth": "pneumonia", "within": None},
                                       "chance": 0.5, "folds": [],
                                       "status": "not scored: ['pneumonia'] not among the classifier's outputs"}
    md = audit.markdown(result)
    assert "| pneumonia_x | 0/0 | not scored: ['pneumonia']" in md
    for text in ("outside_only", "silhouette_only", "chance 0.5", "undefined", "empty: 1", "0 / 1 / 2",
                 "(control − 0.5) / (full − 0.5)"):
        assert text in md, text
    ci = result["scores"]["covid19_in_a"]["auroc"]["full"]
    assert f"{ci['mean']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]" in md


@pytest.mark.parametrize("key,value,msg", [
    ("controls", ["outside_only", "outside_only"], "without repeats"),
    ("controls", ["lungs_gone"], "audit.controls"),
    ("region", "box", "audit.region"),
    ("dilation", 3, "fraction of the image side"),
    ("fill", "noise", "audit.fill"),
    ("scores", {"x": {"score": "covid19", "truth": "source=elsewhere", "within": None}}, "unknown source"),
    ("scores", {"x": {"score": "covid19", "truth": "covid19", "within": "mars"}}, "unknown source"),
    ("scores", {"x": {"score": "covid", "truth": "covid19", "within": None}}, "unknown label"),
    ("folds", [0, 7], "audit.folds.*drawn from train.folds"),
    ("folds", [], "audit.folds"),
    ("folds", [1, 1], "audit.folds"),
])
def test_audit_params_that_would_mislead_are_refused(params, key, value, msg):
    p = copy.deepcopy(params)
    p["audit"][key] = value
    with pytest.raises(P.ParamError, match=msg):
        audit.validate(p)


def test_audit_paths_keep_controls_apart():
    a, b = paths.run("audit", "resnet18", 0, "outside_only"), paths.run("audit", "resnet18", 0, "lungs_only")
    assert a.model_dir != b.model_dir and a.predictions != b.predictions
    with pytest.raises(ValueError, match="needs a control"):
        paths.run("audit", "resnet18", 0)


def test_a_control_retrains_when_its_region_changes_but_the_main_model_keeps_its_identity():
    base = T.TrainConfig(backbone="resnet18", fold=0, labels=["a"], in_chans=1, cache_size=32, input_size=32)
    assert base.digest() == T.TrainConfig(**{**base.__dict__, "input_options": {}}).digest()
    hull = T.TrainConfig(**{**base.__dict__, "input_mode": "outside_only", "input_options": {"region": "hull"}})
    tmpl = T.TrainConfig(**{**base.__dict__, "input_mode": "outside_only", "input_options": {"region": "template"}})
    assert len({base.digest(), hull.digest(), tmpl.digest()}) == 3


def test_a_constant_model_is_flagged_not_read_as_a_finding():
    recs = _records()
    for r in recs:
        r["prob"]["silhouette_only"]["covid19"] = np.full(len(r["paths"]), 0.3)
    out = audit.analyse(recs, {"covid19_all": SCORES["covid19_all"]}, ["outside_only", "silhouette_only"], STATS)
    s = out["covid19_all"]
    assert s["constant_output"] == ["silhouette_only"] and s["auroc"]["silhouette_only"]["mean"] == 0.5
    result = {"backbones": ["m"], "folds": [0, 1], "controls": ["outside_only", "silhouette_only"], "confidence": 0.95,
              "options": {"region": "template", "dilation": 0.0, "fill": "mean", "blur_sigma": 0.05}, "scores": out,
              "excluded": {"count": 0, "of": 240, "by_reason": {}, "images": []}}
    assert "0.500 [0.500, 0.500] constant output" in audit.markdown(result)


def test_the_audit_trains_on_its_own_folds(params):
    """audit.folds: the audit on fewer folds than the main models (the study-cpu profile audits 2 of 5)."""
    p = copy.deepcopy(params)
    p["train"]["folds"] = [0, 1, 2, 3, 4]
    p["audit"]["folds"] = [0, 1]
    assert audit.validate(p)["folds"] == [0, 1]
    import yaml
    dvc = yaml.safe_load((Path(__file__).resolve().parents[2] / "dvc.yaml").read_text())
    for stage in ("audit_train", "audit_evaluate"):
        assert dvc["stages"][stage]["matrix"]["fold"] == "${audit.folds}"
