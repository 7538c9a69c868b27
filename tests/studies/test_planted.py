"""cxrbench.studies.planted: reliance on the planted tag, localisation tables on a common set, ranking vs AOPPC."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxrbench.studies.planted import localisation as PLL
from cxrbench.studies.planted import ranking as PLK
from cxrbench.studies.planted import reliance as PLR

N_BOOT = 200


# --- reliance ------------------------------------------------------------------------------------------------

def _study(drop: float, rise: float, seed: int = 0, n: int = 240):
    """Synthetic test set: half target images, 80 % of them tagged, 10 % of the others; 4 images per patient."""
    rng = np.random.default_rng(seed)
    target = np.arange(n) % 2 == 0
    u = rng.random(n)
    tagged = np.where(target, u < 0.8, u < 0.1)
    moved = ~target
    groups = np.repeat(np.arange(n // 4), 4)
    base = np.where(target, 0.45, 0.3) + rng.normal(0, 0.1, n)
    as_is = base + np.where(tagged, drop, 0.0)                  # the tag adds `drop` where it is
    removed = base + rng.normal(0, 0.02, n)                      # no tag anywhere
    moved_p = base + np.where(moved, rise, 0.0) + rng.normal(0, 0.02, n)
    probs = {k: np.clip(v, 0, 1) for k, v in (("as_is", as_is), ("removed", removed), ("moved", moved_p))}
    return probs, target, tagged, moved, groups


def _reliance(probs, target, tagged, moved, groups):
    return PLR.reliance(probs, target=target, tagged=tagged, moved=moved, groups=groups, n_boot=N_BOOT, seed=1)


def test_reliance_recovers_planted_shifts():
    probs, target, tagged, moved, groups = _study(0.3, 0.2)
    r = _reliance(probs, target, tagged, moved, groups)
    json.dumps(r, allow_nan=False)                                  # JSON-able, no NaN
    d, o = r["target_drop"], r["other_rise"]
    assert d["estimate"] == pytest.approx(0.3, abs=0.02) and d["low"] > 0.25
    assert o["estimate"] == pytest.approx(0.2, abs=0.02) and o["low"] > 0.15
    assert d["n"] == int((target & tagged).sum()) and o["n"] == int((~target & ~tagged & moved).sum())
    assert r["reliance_shown"] is True and r["status"] == "ok"
    assert r["auroc"]["as_is"]["estimate"] == pytest.approx(roc_auc_score(target, probs["as_is"]))
    assert r["auroc"]["removed"]["estimate"] == pytest.approx(roc_auc_score(target, probs["removed"]))
    assert r["auroc_change"]["removed"]["estimate"] < 0 and r["auroc_change"]["removed"]["high"] < 0
    assert r["auroc_change"]["moved"]["high"] < 0                  # the tag on the others misleads the model
    assert r["chance"] == {"auroc": 0.5, "shift": 0.0}


def test_reliance_no_shift_not_shown():
    probs, target, tagged, moved, groups = _study(0.0, 0.0)
    r = _reliance(probs, target, tagged, moved, groups)
    for part in ("target_drop", "other_rise"):
        assert r[part]["low"] < 0 < r[part]["high"]
    assert r["reliance_shown"] is False and r["status"] == "ok"


def test_reliance_degenerate_inputs_give_status():
    probs, target, tagged, moved, groups = _study(0.3, 0.2)
    r = _reliance(probs, target, tagged & ~target, moved, groups)   # no tagged target
    assert r["target_drop"]["status"] == "no_tagged_targets" and r["target_drop"]["estimate"] is None
    assert r["reliance_shown"] is False and "no_tagged_targets" in r["status"]
    json.dumps(r, allow_nan=False)
    one = _reliance(probs, target, tagged, moved, np.zeros(len(target)))
    assert one["target_drop"]["status"] == "too_few_groups" and one["auroc"]["as_is"]["estimate"] is None
    assert one["reliance_shown"] is False and "too_few_groups" in one["status"]
    cls = _reliance(probs, np.zeros(len(target), bool), tagged, moved, groups)
    assert cls["auroc"]["as_is"]["status"] == "one_class"
    with pytest.raises(ValueError, match="probabilit"):
        _reliance({**probs, "removed": probs["removed"] + 2}, target, tagged, moved, groups)
    with pytest.raises(ValueError, match="keys"):
        _reliance({"as_is": probs["as_is"]}, target, tagged, moved, groups)
    md = PLR.reliance_table({"resnet18": _reliance(*_study(0.3, 0.2)), "resnet18-f0": r})
    assert "| resnet18 |" in md and "no_tagged_targets" in md and "Chance" in md


def test_the_intervals_follow_stats_method_and_min_valid_share_and_the_notes_name_the_method():
    probs, target, tagged, moved, groups = _study(0.3, 0.2)
    kw = {"target": target, "tagged": tagged, "moved": moved, "groups": groups, "n_boot": N_BOOT, "seed": 1}
    default, pct = PLR.reliance(probs, **kw), PLR.reliance(probs, **kw, method="percentile")
    for part in (("target_drop",), ("auroc", "as_is"), ("auroc_change", "removed")):
        d, p = default, pct
        for k in part:
            d, p = d[k], p[k]
        assert d["estimate"] == p["estimate"] and (d["low"], d["high"]) != (p["low"], p["high"]), part
        assert d["method"].startswith("expanded_percentile,") and p["method"].startswith("percentile,")
    assert "CI: 95 % expanded percentile bootstrap over patient groups (200 resamples)" in PLR.reliance_table(
        {"m": default})
    assert "CI: 95 % percentile bootstrap over patient groups" in PLR.reliance_table({"m": pct})
    dc = PLC.decision_change(probs["as_is"], probs["removed"], 0.5, target=target, tagged=tagged, groups=groups,
                             margin=0.0, n_boot=N_BOOT, seed=1, method="percentile")
    assert dc["status"] == "ok" and dc["method"].startswith("percentile,")
    t = PLL.localisation_table(_frame(), n_boot=N_BOOT, seed=0, method="percentile")
    assert t["scopes"]["bb"]["metrics"]["rank"]["methods"]["oracle"]["gain"]["method"].startswith("percentile,")
    assert "CI: 95 % percentile bootstrap" in PLL.localisation_markdown(t, "rank")
    assert "CI: 95 % expanded percentile bootstrap" in PLL.localisation_markdown(
        PLL.localisation_table(_frame(), n_boot=N_BOOT, seed=0), "rank")
    # the label on one patient of 10: its AUROC is undefined in the ~35 % of resamples without that patient
    g = np.repeat(np.arange(10), 4)
    one = {**kw, "target": g == 0, "tagged": g == 0, "moved": g != 0, "groups": g}
    first = {c: v[:40] for c, v in probs.items()}
    strict = PLR.reliance(first, **one, min_valid_share=0.9)
    loose = PLR.reliance(first, **one, min_valid_share=0.5)
    assert 0.5 < strict["auroc"]["as_is"]["valid_share"] < 0.9 and strict["auroc"]["as_is"]["low"] is None
    assert loose["auroc"]["as_is"]["status"] == "ok" and loose["auroc"]["as_is"]["low"] is not None


# --- localisation ----------------------------------------------------------------------------------------------

SIDE = 16


def _boxes(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x0, y0 = rng.integers(0, SIDE - 4, n), rng.integers(0, SIDE - 4, n)
    return np.stack([x0, y0, x0 + 4, y0 + 4], 1).astype(np.int64)


def _masks(boxes: np.ndarray) -> np.ndarray:
    m = np.zeros((len(boxes), SIDE, SIDE))
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        m[i, y0:y1, x0:x1] = 1.0
    return m


def _frame(backbones=("bb",), n: int = 12, flaky_constant: tuple[int, ...] = (0,)) -> pd.DataFrame:
    boxes = _boxes(n)
    paths = np.array([f"img{i}.png" for i in range(n)])
    groups = np.repeat(np.arange(n // 2), 2).astype(str)
    oracle = _masks(boxes)
    flaky = oracle.copy()
    flaky[list(flaky_constant)] = 0.5                                  # constant maps: no location
    frames = []
    for bb in backbones:
        for name, maps in (("oracle", oracle), ("anti", 1.0 - oracle), ("flaky", flaky)):
            frames.append(PLL.localisation_frame(maps, boxes, method=name, backbone=bb, fold=0, paths=paths,
                                                groups=groups, rng=np.random.default_rng(0)))
        frames.append(PLL.random_frame(boxes, (SIDE, SIDE), backbone=bb, fold=0, paths=paths, groups=groups, seed=3))
    return pd.concat(frames, ignore_index=True)


def test_localisation_table_known_answers_and_common_set():
    frame = _frame(backbones=("bb", "bb2"))
    assert list(frame.columns[:10]) == ["method", "backbone", "fold", "path", "group", "pointing", "mass", "rank",
                                        "auroc", "status"]
    t = PLL.localisation_table(frame, n_boot=N_BOOT, seed=0)
    json.dumps(t, allow_nan=False)
    assert set(t["scopes"]) == {"bb", "bb2", "pooled"}
    s = t["scopes"]["bb"]
    assert s["common"]["n"] == 11 and s["common"]["groups"] == 6        # image 0 left out for every method
    assert t["scopes"]["pooled"]["common"]["n"] == 22
    assert s["status"]["flaky"]["constant"] == 1 and s["status"]["flaky"]["ok"] == 11
    assert s["status"]["oracle"]["ok"] == 12 and s["rows"]["oracle"] == 12
    p = 16 / SIDE ** 2
    for metric in ("pointing", "mass", "rank", "auroc"):
        e = s["metrics"][metric]
        assert e["methods"]["oracle"]["mean"]["estimate"] == pytest.approx(1.0)
        assert e["methods"]["anti"]["mean"]["estimate"] == pytest.approx(0.0)
        rnd = e["methods"]["random"]["mean"]["estimate"]
        assert e["methods"]["oracle"]["gain"]["estimate"] == pytest.approx(1.0 - rnd)
        assert e["methods"]["random"]["gain"] is None
        assert e["chance"] == pytest.approx(0.5 if metric == "auroc" else p)
    assert s["metrics"]["rank"]["methods"]["oracle"]["gain"]["low"] > 0.8
    md = PLL.localisation_markdown(t, "rank")
    assert "11 ok, 1 constant" in md and "| chance |" in md and "common set 11 images, 6 patient groups" in md
    bb_part = md.split("**bb**")[1].split("**bb2**")[0]
    pos = {m: bb_part.index(f"| {m} |") for m in ("oracle", "flaky", "anti", "random")}
    assert max(pos["oracle"], pos["flaky"]) < pos["anti"] < pos["random"]      # sorted by the metric, control last


def test_localisation_table_empty_common_set_and_validation():
    t = PLL.localisation_table(_frame(flaky_constant=tuple(range(12))), n_boot=N_BOOT, seed=0)
    s = t["scopes"]["bb"]
    assert s["common"] == {**s["common"], "n": 0, "status": "empty_common_set"}
    assert s["metrics"]["rank"]["methods"]["oracle"]["mean"]["estimate"] is None
    assert s["metrics"]["rank"]["chance"] is None
    assert "empty_common_set" in PLL.localisation_markdown(t, "rank")
    frame = _frame()
    with pytest.raises(ValueError, match="random"):
        PLL.localisation_table(frame[frame["method"] != "random"], n_boot=N_BOOT, seed=0)
    with pytest.raises(ValueError, match="two rows"):
        PLL.localisation_table(pd.concat([frame, frame.iloc[:1]]), n_boot=N_BOOT, seed=0)
    boxes = _boxes(3)
    boxes[1] = -1
    with pytest.raises(ValueError, match="untagged"):
        PLL.localisation_frame(np.zeros((3, SIDE, SIDE)), boxes, method="m", backbone="bb", fold=0,
                              paths=["a", "b", "c"], groups=["1", "2", "3"], rng=0)


def test_random_frame_near_chance_and_order_independent():
    boxes = _boxes(300, seed=5)
    paths, groups = [f"p{i}" for i in range(300)], [str(i) for i in range(300)]
    kw = dict(paths=paths, groups=groups, seed=7)
    a = PLL.random_frame(boxes, (SIDE, SIDE), backbone="bb", fold=1, **kw)
    PLL.random_frame(boxes, (SIDE, SIDE), backbone="bb", fold=0, **kw)       # another call in between
    b = PLL.random_frame(boxes, (SIDE, SIDE), backbone="bb", fold=1, **kw)
    c = PLL.random_frame(boxes, (SIDE, SIDE), backbone="bb", fold=2, **kw)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["rank"], c["rank"])
    assert (a["method"] == "random").all() and (a["status"] == "ok").all()
    for metric in ("pointing", "mass", "rank", "auroc"):
        assert a[metric].mean() == pytest.approx(a[f"chance_{metric}"].mean(), abs=0.03)


# --- ranking against AOPPC -------------------------------------------------------------------------------------

def _loc_table(gains: dict[str, float | None], scope: str = "pooled") -> dict:
    methods = {m: {"mean": {"estimate": 0.5}, "gain": None if g is None else
                   {"status": "ok", "estimate": g, "low": g - 0.1, "high": g + 0.1}} for m, g in gains.items()}
    methods["random"] = {"mean": {"estimate": 0.1}, "gain": None}
    return {"metrics": ["rank"], "scopes": {scope: {"metrics": {"rank": {"methods": methods}}}}}


def test_ranking_agreement_reversal_and_ties(tmp_path):
    loc = _loc_table({"a": 0.5, "b": 0.4, "c": 0.3, "d": 0.2, "e": 0.1})
    same = PLK.ranking(loc, {"pooled": {"a": 0.9, "b": 0.5, "c": 0.2, "d": 0.1, "e": -0.3}})["scopes"]["pooled"]
    assert same["kendall_tau"] == pytest.approx(1.0) and same["spearman_rho"] == pytest.approx(1.0)
    assert same["n"] == 5 and same["top_localisation"] == ["a"] == same["top_aoppc"]
    assert "random" not in [row["method"] for row in same["methods"]]
    rev = PLK.ranking(loc, {"pooled": {"a": -0.3, "b": 0.1, "c": 0.2, "d": 0.5, "e": 0.9}})
    s = rev["scopes"]["pooled"]
    assert s["kendall_tau"] == pytest.approx(-1.0) and s["spearman_rho"] == pytest.approx(-1.0)
    assert s["top_aoppc"] == ["e"] and {r["method"]: r["aoppc_rank"] for r in s["methods"]}["e"] == 1
    tie = PLK.ranking(loc, {"pooled": {"a": 0.9, "b": 0.5, "c": 0.5, "d": 0.1, "e": -0.3}})["scopes"]["pooled"]
    ranks = {r["method"]: r["aoppc_rank"] for r in tie["methods"]}
    assert ranks["b"] == ranks["c"] == 2.5 and tie["kendall_tau"] < 1
    few = PLK.ranking(_loc_table({"a": 0.5, "b": 0.4, "c": None}), {"pooled": {"a": 1.0, "b": 0.0, "c": 0.5}})
    f = few["scopes"]["pooled"]
    assert f["status"] == "too_few_methods" and f["kendall_tau"] is None and f["missing_localisation"] == ["c"]
    md = PLK.ranking_markdown(rev)
    assert "Kendall tau = -1.000" in md and "| e |" in md
    assert "too_few_methods" in PLK.ranking_markdown(few)
    PLK.ranking_plot(rev, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000


def _cell(mean, n, key="aoppc_pixels_morf"):
    return {key: {"mean": mean, "std": 0.1, "n": n}, "lung_mass": {"mean": 0.3, "std": 0.1, "n": n}}


def test_aoppc_gain_weighted_means():
    j = {"by_method": {
        "m1": {"A": {"f0": _cell(0.4, 10), "f1": _cell(0.1, 30)}, "B": {"f0": _cell(0.2, 20)}},
        "m2": {"A": {"f0": _cell(0.5, 10)}},
        "random": {"A": {"f0": _cell(0.0, 10), "f1": _cell(0.2, 30)}, "B": {"f0": _cell(-0.1, 20)}},
        "lung_area": {"A": {"f0": {"lung_mass": {"mean": 0.3, "std": 0.1, "n": 10}}}},
    }}
    g = PLK.aoppc_gain(j)
    assert g["A"]["m1"] == pytest.approx((0.4 * 10 + 0.1 * 30) / 40 - (0.0 * 10 + 0.2 * 30) / 40)
    assert g["B"]["m1"] == pytest.approx(0.3)
    assert g["pooled"]["m1"] == pytest.approx((4 + 3 + 4) / 60 - (0 + 6 - 2) / 60)
    assert g["A"]["m2"] == pytest.approx(0.5) and g["pooled"]["m2"] == pytest.approx(0.5)   # random on A f0 only
    assert "m2" not in g["B"] and all("lung_area" not in v and "random" not in v for v in g.values())
    with pytest.raises(ValueError, match="random"):
        PLK.aoppc_gain({"by_method": {"m1": j["by_method"]["m1"]}})
    with pytest.raises(ValueError, match="MoRF"):
        PLK.aoppc_gain(j, key="aoppc_pixels_lerf")




# --- controls: a strong cue, AOPPC on the same images, a randomised control per ranked model -------------

from cxrbench.studies.planted import controls as PLC  # noqa: E402


def test_decision_change_tells_a_strong_cue_from_a_weak_one():
    rng = np.random.default_rng(0)
    n = 120
    groups = np.repeat(np.arange(60), 2)
    target = np.arange(n) % 3 != 0
    tagged = target.copy()
    as_is = np.clip(0.8 + rng.normal(0, 0.05, n), 0, 1)
    weak = np.clip(as_is - 0.011, 0, 1)                   # the drop reported on main: no decision changes
    strong = np.clip(as_is - 0.5, 0, 1)                   # the tag carries the decision
    w = PLC.decision_change(as_is, weak, 0.5, target=target, tagged=tagged, groups=groups, margin=0.2,
                            n_boot=200, seed=0)
    s = PLC.decision_change(as_is, strong, 0.5, target=target, tagged=tagged, groups=groups, margin=0.2,
                            n_boot=200, seed=0)
    assert w["estimate"] == 0 and not w["strong_cue"]
    assert s["estimate"] == 1 and s["strong_cue"] and s["positive_as_is"] == 1 and s["positive_removed"] == 0
    assert s["n"] == int((target & tagged).sum()) and s["groups"] > 1
    none = PLC.decision_change(as_is, strong, 0.5, target=target, tagged=np.zeros(n, bool), groups=groups,
                               margin=0.2, n_boot=200, seed=0)
    assert none["status"] == "no_tagged_targets" and not none["strong_cue"]
    json.dumps([w, s, none], allow_nan=False)


def test_aoppc_gain_on_the_same_images_patient_weighted():
    # two images of patient a, one of b; method m beats random by 0.3 on a's images and 0.0 on b's
    rows = []
    for method, vals in {"m": [0.5, 0.5, 0.2], "random": [0.2, 0.2, 0.2], "bad": [np.nan, 0.1, 0.1]}.items():
        for (path, group), v in zip([("p1", "a"), ("p2", "a"), ("p3", "b")], vals):
            rows.append({"method": method, "backbone": "r18", "fold": 0, "path": path, "group": group, "aoppc": v})
    frame = pd.DataFrame(rows)
    g = PLC.aoppc_gain_same(frame, ["m"])
    assert g["r18"]["m"] == pytest.approx((0.3 + 0.0) / 2)        # per patient, not per image (0.2)
    assert g["pooled"]["_n"] == {"images": 3, "groups": 2, "unscored": []}
    both = PLC.aoppc_gain_same(frame, ["m", "bad"])               # p1 dropped: bad's map is degenerate there
    assert both["pooled"]["_n"] == {"images": 2, "groups": 2, "unscored": []}
    dead = frame.assign(aoppc=np.where(frame["method"] == "bad", np.nan, frame["aoppc"]))
    assert PLC.aoppc_gain_same(dead, ["m", "bad"])["pooled"]["_n"]["unscored"] == ["bad"]   # not the whole set
    assert both["pooled"]["m"] == pytest.approx((0.3 + 0.0) / 2) and both["pooled"]["bad"] == pytest.approx(-0.1)
    # aoppc_per_image: degenerate maps are NaN, never scored
    maps = {"m": np.zeros((3, 4, 4)), "random": np.ones((3, 4, 4))}
    status = {"m": np.array(["ok", "constant", "ok"]), "random": np.array(["ok"] * 3)}
    calls = []
    per = PLC.aoppc_per_image(lambda rows, a: calls.append(list(rows)) or {"aoppc": np.full(len(a), 0.4)}, maps, status,
                              {"backbone": "r18", "fold": 0, "paths": ["p1", "p2", "p3"], "groups": ["a", "a", "b"]})
    assert calls == [[0, 2], [0, 1, 2]] and np.isnan(per.loc[(per["method"] == "m") & (per["path"] == "p2"), "aoppc"]).all()


def test_a_model_without_a_randomised_control_leaves_the_ranking():
    rows = []
    for bb, status in (("resnet18", "ok"), ("efficientnet_lite0", "constant")):
        for m in ("saliency", "gradcam"):
            for i in range(3):
                rows.append({"method": m, "backbone": bb, "fold": 0, "status": status if m == "gradcam" or bb ==
                             "efficientnet_lite0" else "ok"})
        rows.append({"method": "random", "backbone": bb, "fold": 0, "status": "ok"})
    kept, left = PLC.ranked_models(pd.DataFrame(rows), [("resnet18", 0), ("efficientnet_lite0", 0), ("resnet18", 1)])
    assert kept == [("resnet18", 0)]
    assert "every map of its weight-randomised copy is degenerate for gradcam (3 maps), saliency (3 maps)" in \
        left["efficientnet_lite0-f0"]
    assert "no randomised-model map" in left["resnet18-f1"]


def test_planted_stage_end_to_end_on_the_sample(sample_data, params, tmp_path, monkeypatch):
    """The stage on the shipped sample's 64 px cache, a tiny untrained resnet18 per fold and its stored maps:
    the decision change per model, AOPPC on the same tagged images, and a model whose randomised copy gives
    only constant maps left out of the ranking with the reason."""
    import copy
    import shutil

    import torch

    from cxrbench.classify import models as M
    from cxrbench.core import paths
    from cxrbench.core.io import write_csv
    from cxrbench.data import confounder as C
    from cxrbench.data.cache import Cache
    from cxrbench.explain import store
    from cxrbench.studies.planted import run as PR

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for f in ("index.csv", "splits.csv"):
        shutil.copy(sample_data / f, tmp_path / "data" / f)
    shutil.copytree(sample_data / "cache", tmp_path / "data" / "cache")
    p = copy.deepcopy(params)
    p["confounder"].update(enabled=True, size=0.125)
    p["train"].update(backbones=["resnet18", "efficientnet_lite0"], folds=[0])
    p["explain"]["methods"] = ["saliency", "gradcam"]
    p["stats"]["resamples"] = 100
    p["aoppc"]["region"].update(patch=0.125, steps=4)
    cache = Cache(paths.CACHE, paths.INDEX)
    splits = pd.read_csv(paths.SPLITS, keep_default_na=False)
    write_csv(f"{C.PLAN_DIR}/{C.PLAN_FILE}", C.plan_for_cache(splits, cache.index, cache.images, p))
    labels = list(p["labels"]["names"])
    torch.manual_seed(0)
    nets = {}
    for bb in ("resnet18", "efficientnet_lite0"):
        net = M.create_model(bb, len(labels), 1, "none", 32).eval()
        nets[bb] = (net, M.classifier_meta(bb, labels, 1, 32, 64, "full", 0, fold=0, epoch=0))
        ev = Path(paths.run("main", bb, 0).eval_metrics)
        ev.parent.mkdir(parents=True, exist_ok=True)
        ev.write_text(json.dumps({"cut": "ge", "thresholds": {n: {"cut": 0.5} for n in labels}}))
        test = splits[splits["split"] == "test"]
        covid = cache.index.set_index("path").loc[test["path"], "y_covid19"].to_numpy() == 1
        sel = test["path"].to_numpy()[covid][:12]
        rows = cache.rows(sel)
        rng = np.random.default_rng(1)
        maps = {m: rng.random((len(rows), 64, 64)).astype(np.float32) for m in ("saliency", "gradcam")}
        out = Path(paths.attributions(bb, 0))
        out.parent.mkdir(parents=True, exist_ok=True)
        store.save(out, store.arrays(rows, list(sel), np.full(len(rows), labels.index("covid19")),
                                     ["covid19"] * len(rows), np.ones((len(rows), 64, 64), np.uint8), maps, {}))
    monkeypatch.setattr(PR.identity, "load", lambda params, bb, k, device: nets[bb])
    monkeypatch.setattr(PR.training, "checkpoint_file", lambda params: None)
    real = PR.randomised_maps

    def randomised(params, model, meta, name, *a, **k):        # efficientnet's randomised copy: constant maps
        maps = real(params, model, meta, name, *a, **k)
        return {m: np.zeros_like(v) for m, v in maps.items()} if name.startswith("efficientnet") else maps

    monkeypatch.setattr(PR, "randomised_maps", randomised)
    PR.run(p)
    out = json.loads(Path(paths.PLANTED).read_text())
    d = out["decision_change"]
    assert set(d) == {"resnet18-f0", "efficientnet_lite0-f0", "resnet18", "efficientnet_lite0"}
    assert d["resnet18-f0"]["cut"] == 0.5 and d["resnet18-f0"]["margin"] == p["confounder"]["strong_cue"]
    r = out["ranking"]
    assert r["models"] == ["resnet18-f0"]
    assert "every map of its weight-randomised copy is degenerate" in r["left_out"]["efficientnet_lite0-f0"]
    assert set(r["scopes"]) == {"resnet18", "pooled"}
    assert 0 < r["aoppc_n"]["pooled"]["images"] <= 12          # the tagged ones of the 12 attributed images
    assert r["aoppc_n"]["pooled"]["groups"] <= r["aoppc_n"]["pooled"]["images"]
    md = Path(paths.PLANTED_MD).read_text()
    assert "decision change [CI]" in md and "Left out: efficientnet_lite0-f0" in md
