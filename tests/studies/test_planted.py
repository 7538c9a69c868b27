"""cxrbench.studies.planted: reliance on the planted tag, localisation tables on a common set, ranking vs AOPPC."""

from __future__ import annotations

import json

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


