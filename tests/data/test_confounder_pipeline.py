"""The planted tag in the pipeline: the confound stage's plan, stamped into the cache in memory by every
stage that feeds the classifier, and the reliance test's three conditions."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from cxrbench.data import confounder as C
from cxrbench.core import params as P
from cxrbench.ops import deps as D

ROOT = Path(__file__).resolve().parents[2]
SIDE = 64


def _params(enabled=True, **conf) -> dict:
    p = copy.deepcopy(P.load(ROOT / "params.yaml"))
    p["confounder"].update({"enabled": enabled, "fraction_target": 0.8, "fraction_other": 0.1, "size": 0.125,
                            "margin": 0.05, "intensity": 255, "seed": 5, **conf})
    return p


def _run(n=120, seed=0):
    """index.csv / splits.csv-like frames and a uint8 cache (N, 1, SIDE, SIDE) of mid-grey noise."""
    rng = np.random.default_rng(seed)
    paths = [f"covid_chestxray/images/img{i:04d}.png" for i in range(n)]
    covid = rng.random(n) < 0.4
    index = pd.DataFrame({"path": paths, "labels": np.where(covid, "pneumonia|viral|covid19", "healthy")})
    split = np.where(rng.random(n) < 0.4, "test", "dev")
    splits = pd.DataFrame({"path": paths, "split": split, "fold": np.where(split == "test", -1, rng.integers(0, 2, n)),
                           "group": [f"p{i // 2}" for i in range(n)]})
    images = rng.integers(60, 190, (n, 1, SIDE, SIDE), dtype=np.uint8)
    return index, splits.sample(frac=1, random_state=1).reset_index(drop=True), images


def _cache(index, images):
    return SimpleNamespace(images=images.copy(), row={p: i for i, p in enumerate(index["path"])},
                           rows=lambda ps: np.array([{p: i for i, p in enumerate(index["path"])}[p] for p in ps]))


def _write(frame, tmp_path) -> Path:
    path = tmp_path / "plan.csv"
    frame.to_csv(path, index=False)
    return path


def test_disabled_plan_tags_nothing_and_apply_leaves_the_cache_untouched(tmp_path):
    index, splits, images = _run()
    frame = C.plan_for_cache(splits, index, images, _params(enabled=False))
    assert not frame["tagged"].any() and (frame[list(C.BOX_COLUMNS)] == -1).all().all()
    assert (frame["value"] == -1).all()
    cache = _cache(index, images)
    assert C.apply(cache, _write(frame, tmp_path)) == {"tagged": 0, "target_tagged": 0}
    assert np.array_equal(cache.images, images)


def test_enabled_plan_equals_confounder_plan_and_apply_stamps_only_its_boxes(tmp_path):
    index, splits, images = _run()
    params = _params()
    frame = C.plan_for_cache(splits, index, images, params)
    ref = C.plan(splits, index.set_index("path").loc[splits["path"], "labels"].to_numpy(), params, side=SIDE)
    pd.testing.assert_frame_equal(frame.drop(columns="value"), ref)
    assert frame["tagged"].sum() > 0 and (frame.loc[frame["tagged"], "value"] == 255).all()
    cache = _cache(index, images)
    out = C.apply(cache, _write(frame, tmp_path))
    assert out["tagged"] == int(frame["tagged"].sum())
    expect = images.copy()
    for r in frame[frame["tagged"]].itertuples():
        expect[cache.row[r.path], :, r.y0:r.y1, r.x0:r.x1] = 255
    assert np.array_equal(cache.images, expect)
    changed = (cache.images != images).reshape(len(images), -1).any(1)
    tagged_rows = {cache.row[p] for p in frame.loc[frame["tagged"], "path"]}
    assert set(np.flatnonzero(changed)) <= tagged_rows            # nothing outside a planned box changes


def test_contrast_value_is_resolved_once_from_the_untagged_image(tmp_path):
    index, splits, images = _run()
    images[:] = 30                                              # dark everywhere: contrast draws 255
    frame = C.plan_for_cache(splits, index, images, _params(intensity="contrast"))
    assert (frame.loc[frame["tagged"], "value"] == 255).all()


def test_apply_refuses_a_stale_or_mismatched_plan(tmp_path):
    index, splits, images = _run()
    frame = C.plan_for_cache(splits, index, images, _params())
    other = frame.copy()
    other.loc[other.index[other["tagged"]][0], "path"] = "not/in/the/cache.png"
    with pytest.raises(ValueError, match="not in the cache.*dvc repro confound"):
        C.apply(_cache(index, images), _write(other, tmp_path))
    small = _cache(index, images[..., :32, :32].copy())
    with pytest.raises(ValueError, match="another preprocess.size"):
        C.apply(small, _write(frame, tmp_path))
    ro = _cache(index, images)
    ro.images.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        C.apply(ro, _write(frame, tmp_path))
    with pytest.raises(FileNotFoundError, match="dvc repro confound"):
        C.read_plan(tmp_path / "missing.csv")


def test_conditions_as_is_removed_and_moved(tmp_path):
    index, splits, images = _run()
    params = _params()
    frame = C.with_geometry(C.read_plan(_write(C.plan_for_cache(splits, index, images, params), tmp_path)),
                            params, SIDE)
    test = frame[splits.set_index("path").loc[frame["path"], "split"].to_numpy() == "test"].reset_index(drop=True)
    test.attrs.update(frame.attrs)
    rows = np.array([index["path"].tolist().index(p) for p in test["path"]])
    conds = C.conditions(images, rows, test, params)
    as_is, tagged = conds["as_is"]
    removed, none = conds["removed"]
    moved, moved_on = conds["moved"]
    assert np.array_equal(tagged, test["tagged"].to_numpy(bool)) and not none.any()
    target = test["target"].to_numpy(bool)
    assert np.array_equal(moved_on, ~target)                   # on every non-target image, off every target
    for i, r in enumerate(test.itertuples()):
        box = (slice(None), slice(r.y0, r.y1), slice(r.x0, r.x1))
        if r.tagged:
            assert (as_is[i][box] == 255).all()
            assert (removed[i][box] != 255).any()               # the fill comes from around, not from the tag
            assert np.array_equal(removed[i][:, :r.y0], images[rows[i]][:, :r.y0])
        else:
            assert np.array_equal(as_is[i], images[rows[i]])
        if target[i]:
            assert np.array_equal(moved[i], images[rows[i]])    # a target image loses its tag
    assert (moved != np.asarray(images[rows])).reshape(len(rows), -1).any(1)[~target].all()


def test_every_stage_that_feeds_the_classifier_applies_the_plan():
    """train, evaluate, attribute and aoppc run the tag's code and list the plan as a dependency; segment does
    neither (its masks come from untagged images). Read from the import graph, not from the scripts' text."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    scripts = D.stage_scripts(ROOT, {"stages": dvc})
    tag_code = ROOT / "cxrbench" / "data" / "confounder.py"
    for stage in ("train", "evaluate", "audit_train", "audit_evaluate", "attribute", "aoppc"):
        assert "data/confounder/plan.csv" in dvc[stage]["deps"], stage
        assert tag_code in D.closure(ROOT, scripts[stage][0]), stage
    assert tag_code not in D.closure(ROOT, scripts["segment"][0])
    assert "data/confounder/plan.csv" not in dvc["segment"]["deps"]
    assert "data/confounder/plan.csv" in dvc["confound"]["outs"]
