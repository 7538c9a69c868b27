"""The budget's plan (cxrbench/ops/bundle/sizing.py): what fits, in the stated order of priority."""

from __future__ import annotations

import json

import pytest

from cxrbench.core import params as P
from cxrbench.ops.bundle import sizing as S

BACKBONES = list(P.section(P.load(), "train.backbones"))


def _bench(train=500.0, infer=2000.0, spi=0.05, first=3.0, start=4.0, methods=None) -> dict:
    params = P.load()
    methods = methods or list(P.section(params, "explain.methods"))
    return {"stage_start_s": start,
            "throughput": [{"backbone": b, "train_images_per_s": train, "infer_images_per_s": infer,
                            "first_step_s": first} for b in BACKBONES],
            "attribution": [{"backbone": "resnet18", "method": m, "seconds_per_image": spi} for m in methods]}


COHORT = {"train": [730] * 5, "val": [180] * 5, "test": 250, "severity": 60}


def _plan(seconds, bench=None, params=None):
    return S.plan(bench or _bench(), COHORT, seconds, params or P.load(), dvc_stage_s=2.0)


def test_estimate_grows_with_every_knob_and_the_plan_fits_its_seconds():
    params = P.load()
    base = {"folds": 1, "epochs": 2, "controls": 1, "methods": ["saliency", "gradcam"], "images": 4}
    total = sum(S.estimate(base, _bench(), COHORT, params, 2.0).values())
    for knob, more in (("folds", 2), ("epochs", 3), ("controls", 2), ("methods", ["saliency", "gradcam", "lrp"]),
                       ("images", 5)):
        assert sum(S.estimate({**base, knob: more}, _bench(), COHORT, params, 2.0).values()) > total, knob
    for seconds in (600, 900, 3000, 20000):
        p = _plan(seconds)
        assert p["fits"] and p["estimate_s"] * p["safety"] <= seconds
        assert set(p["estimate_per_stage_s"]) >= {"train", "evaluate", "audit_train", "attribute", "aoppc"}


def test_priority_folds_then_epochs_then_controls_then_methods_then_images():
    small, mid, large = _plan(700), _plan(2500), _plan(1e6)
    c = large["chosen"]
    params = P.load()
    assert c["folds"] == len(P.section(params, "train.folds")) and c["epochs"] == P.section(params, "train.epochs")
    assert c["methods"] == list(P.section(params, "explain.methods")) and large["dropped_methods"] == []
    assert c["images"] == P.section(params, "explain.max_images")
    # a knob that stopped below its maximum could not grow by one even with every later knob at its minimum
    b = P.section(params, "budget")
    for p, seconds in ((small, 700), (mid, 2500)):
        ch, of = p["chosen"], p["of"]
        for i, knob in enumerate(["folds", "epochs", "controls"]):
            if ch[knob] < of[knob]:
                lower = {"folds": 1, "epochs": b["min_epochs"], "controls": 1, "methods": b["core_methods"],
                         "images": b["min_images"], **{k: ch[k] for k in ["folds", "epochs", "controls"][:i]}}
                more = sum(S.estimate({**lower, knob: ch[knob] + 1}, _bench(), COHORT, params, 2.0).values())
                assert more * p["safety"] > seconds, (knob, ch)
    # more seconds never plan less, in the order of priority (a later knob may shrink when an earlier one grows)
    key = [tuple(p["chosen"][k] for k in ("folds", "epochs", "controls")) for p in (small, mid, large)]
    assert key == sorted(key)


def test_the_minimum_is_planned_and_flagged_when_nothing_fits():
    p = _plan(30)
    assert not p["fits"]
    params = P.load()
    b = P.section(params, "budget")
    assert p["chosen"] == {"folds": 1, "epochs": b["min_epochs"], "controls": 1, "methods": b["core_methods"],
                           "images": b["min_images"]}
    o = p["overrides"]
    assert o["train.folds"] == [0] and o["audit.folds"] == [0] and o["explain.methods"] == b["core_methods"]
    assert o["severity.methods"] == [m for m in P.section(params, "severity.methods") if m in b["core_methods"]]
    assert set(o["randomisation.methods"]) <= set(b["core_methods"])
    assert o["audit.controls"] == list(P.section(params, "audit.controls"))[:1]


def test_a_slow_method_is_dropped_and_the_later_ones_still_fit():
    params = P.load()
    bench = _bench()
    bench["attribution"] = [dict(a, seconds_per_image=30.0) if a["method"] == "occlusion" else a
                            for a in bench["attribution"]]
    methods = list(P.section(params, "explain.methods"))
    assert methods[0] == "occlusion"
    full = {"folds": len(P.section(params, "train.folds")), "epochs": P.section(params, "train.epochs"),
            "controls": len(P.section(params, "audit.controls")), "methods": methods[1:],
            "images": P.section(params, "explain.max_images")}
    seconds = sum(S.estimate(full, bench, COHORT, params, 2.0).values()) * P.section(params, "budget.safety") + 1
    p = _plan(seconds, bench)
    assert p["dropped_methods"] == ["occlusion"] and p["chosen"] == full


def test_method_costs_scale_by_the_backbones_train_rate_and_unsupported_costs_nothing():
    bench = _bench()
    bench["throughput"][0]["train_images_per_s"] = 250.0           # BACKBONES[0] is half as fast as resnet18
    bench["attribution"].append({"backbone": BACKBONES[0], "method": "lrp", "error": "not supported",
                                 "unsupported": True})
    bench["attribution"].append({"backbone": BACKBONES[0], "method": "gradcam", "error": "FAILED RuntimeError: x"})
    cost = S.method_costs(bench, BACKBONES, ["saliency", "lrp", "gradcam", "nothing_measured"])
    assert cost[BACKBONES[0], "saliency"] == pytest.approx(0.1) and cost["resnet18", "saliency"] == 0.05
    assert cost[BACKBONES[0], "lrp"] == 0.0 and cost["resnet18", "nothing_measured"] == float("inf")
    assert cost[BACKBONES[0], "gradcam"] == float("inf")          # failed on that backbone: never planned


def test_overrides_are_valid_params():
    params = P.load()
    for seconds in (30, 2500, 1e6):
        P.load(overrides=_plan(seconds)["overrides"])       # the params loader's checks accept every plan
    assert _plan(1e6)["overrides"]["train.folds"] == list(P.section(params, "train.folds"))


def test_dvc_stage_seconds_from_the_data_stages(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "timing").mkdir()
    for stage, wall in (("index", 10.0), ("split", 1.0), ("preprocess", 5.0)):
        (tmp_path / "timing" / f"{stage}.json").write_text(json.dumps({"wall_s": wall}))
    assert S.dvc_stage_seconds({"index": 12.0, "split": 2.5, "preprocess": 6.0, "gone": 9.0}) == 1.5
    assert S.dvc_stage_seconds({}) == S.DVC_STAGE_SECONDS
