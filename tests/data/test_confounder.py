"""The planted tag (cxrbench/data/confounder.py): seeded, recorded, only where the plan says, removable."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrbench.data import confounder as C
from cxrbench.core import params as P

ROOT = Path(__file__).resolve().parents[2]
SIDE = 64


@pytest.fixture(scope="module")
def base_params() -> dict:
    p = P.load(ROOT / "params.yaml")
    p["confounder"].update(enabled=True, fraction_target=0.8, fraction_other=0.1, size=0.125, margin=0.05,
                           intensity=255, seed=3)
    p["preprocess"]["size"] = SIDE
    return p


def _with(p: dict, **conf) -> dict:
    out = copy.deepcopy(p)
    out["confounder"].update(conf)
    return out


def _rows(n=403, seed=0) -> tuple[pd.DataFrame, pd.Series]:
    """splits.csv-like rows: a test set and 3 dev folds; about a third COVID-19 (odd counts on purpose)."""
    rng = np.random.default_rng(seed)
    split = np.where(rng.random(n) < 0.4, "test", "dev")
    fold = np.where(split == "test", -1, rng.integers(0, 3, n))
    covid = rng.random(n) < 0.33
    rows = pd.DataFrame({"path": [f"covid_chestxray/images/img{i:04d}.png" for i in range(n)],
                         "split": split, "fold": fold})
    labels = pd.Series(np.where(covid, "pneumonia|viral|covid19", "healthy"))
    return rows, labels


def test_params_yaml_has_the_section_off_by_default():
    cfg = C.validate(P.load(ROOT / "params.yaml"))
    assert cfg["enabled"] is False and cfg["label"] == "covid19"
    assert 0 <= cfg["fraction_other"] < cfg["fraction_target"] <= 1


@pytest.mark.parametrize("key, value", [
    ("enabled", "yes"), ("label", "covid"), ("fraction_target", 0), ("fraction_target", 1.5),
    ("fraction_other", 0.9), ("fraction_other", -0.1), ("size", 0), ("size", 0.6), ("intensity", 256),
    ("intensity", "bright"), ("intensity", True), ("shape", "circle"), ("margin", 0.5), ("seed", -1),
    ("seed", 1.5), ("remove_context", 0), ("remove_sigma", 0.1)])
def test_bad_params_name_the_key(base_params, key, value):
    with pytest.raises(P.ParamError) as err:
        C.validate(_with(base_params, **{key: value}))
    assert err.value.key == f"confounder.{key}"
    assert f"`confounder.{key}`" in str(err.value)


def test_tag_that_does_not_fit_between_the_margins_names_the_key(base_params):
    with pytest.raises(P.ParamError) as err:
        C.validate(_with(base_params, size=0.5, margin=0.3))
    assert err.value.key == "confounder.margin"
    rows, labels = _rows(20)
    with pytest.raises(P.ParamError) as err:          # fits as fractions, not once rounded to 3 px (2 + 2 x 1)
        C.plan(rows, labels, _with(base_params, size=0.5, margin=0.25), side=3)
    assert err.value.key == "confounder.size"


def test_missing_section_names_it(base_params):
    p = copy.deepcopy(base_params)
    del p["confounder"]
    with pytest.raises(P.ParamError, match="`confounder`"):
        C.validate(p)


def test_plan_is_seeded_and_reproducible(base_params):
    rows, labels = _rows()
    a, b = C.plan(rows, labels, base_params), C.plan(rows, labels, base_params)
    pd.testing.assert_frame_equal(a, b)
    other = C.plan(rows, labels, _with(base_params, seed=4))
    assert not a["tagged"].equals(other["tagged"])
    both = a["tagged"] & other["tagged"]
    assert (a.loc[both, ["x0", "y0"]].to_numpy() != other.loc[both, ["x0", "y0"]].to_numpy()).any()


def test_plan_does_not_depend_on_row_order(base_params):
    rows, labels = _rows()
    perm = np.random.default_rng(1).permutation(len(rows))
    a = C.plan(rows, labels, base_params)
    b = C.plan(rows.iloc[perm].reset_index(drop=True), labels.iloc[perm].reset_index(drop=True), base_params)
    assert b["path"].tolist() == rows["path"].iloc[perm].tolist()        # rows keep the caller's order
    pd.testing.assert_frame_equal(a.set_index("path").sort_index(), b.set_index("path").sort_index())


def test_an_images_box_does_not_move_when_other_images_change(base_params):
    rows, labels = _rows()
    a = C.plan(rows, labels, base_params).set_index("path")
    keep = np.arange(len(rows)) % 3 != 0
    b = C.plan(rows[keep].reset_index(drop=True), labels[keep].reset_index(drop=True), base_params).set_index("path")
    both = a["tagged"].reindex(b.index) & b["tagged"]
    assert both.sum() > 50
    pd.testing.assert_frame_equal(a.loc[both[both].index, list(C.BOX_COLUMNS)],
                                  b.loc[both[both].index, list(C.BOX_COLUMNS)])


def test_exact_fractions_in_every_stratum_and_every_part_of_every_fold(base_params):
    rows, labels = _rows()
    plan = C.plan(rows, labels, base_params)
    assert plan["stratum"].nunique() == 4                                 # test + 3 dev folds
    for (stratum, target), g in plan.groupby(["stratum", "target"]):
        f = 0.8 if target else 0.1
        assert g["tagged"].sum() == int(np.floor(f * len(g) + 0.5)), (stratum, target)
    # train / val of each fold and the test set: one rounding per stratum they are made of
    for k in range(3):
        part = np.where(rows["split"] == "test", "test", np.where(rows["fold"] == k, "val", "train"))
        for name, n_strata in (("train", 2), ("val", 1), ("test", 1)):
            for target, f in ((True, 0.8), (False, 0.1)):
                g = plan[(part == name) & (plan["target"] == target)]
                assert abs(g["tagged"].sum() - f * len(g)) <= 0.5 * n_strata, (k, name, target)
    # the tag predicts the label without being it
    assert plan.loc[~plan["target"], "tagged"].sum() > 0 and (~plan.loc[plan["target"], "tagged"]).sum() > 0


def test_boxes_are_recorded_in_cache_pixels_between_the_margins(base_params):
    rows, labels = _rows()
    plan = C.plan(rows, labels, base_params)
    tag, margin = int(0.125 * SIDE), int(np.floor(0.05 * SIDE + 0.5))
    assert plan.attrs == {"side": SIDE, "tag": tag, "margin": margin}
    on = plan[plan["tagged"]]
    assert ((on["x1"] - on["x0"]) == tag).all() and ((on["y1"] - on["y0"]) == tag).all()
    assert (on[["x0", "y0"]] >= margin).all().all() and (on[["x1", "y1"]] <= SIDE - margin).all().all()
    assert (plan.loc[~plan["tagged"], list(C.BOX_COLUMNS)] == -1).all().all()
    # positions spread over the allowed range, both axes
    assert on["x0"].nunique() > 20 and on["y0"].nunique() > 20
    assert on["x0"].min() <= margin + 3 and on["x1"].max() >= SIDE - margin - 3


def test_multi_hot_labels_give_the_same_plan(base_params):
    rows, labels = _rows()
    names = base_params["labels"]["names"]
    hot = np.array([[int(n in s.split("|")) for n in names] for s in labels])
    pd.testing.assert_frame_equal(C.plan(rows, labels, base_params), C.plan(rows, hot, base_params))


def test_plan_input_errors_are_clear(base_params):
    rows, labels = _rows(20)
    with pytest.raises(ValueError, match="more than once"):
        C.plan(pd.concat([rows, rows.iloc[:1]], ignore_index=True), pd.concat([labels, labels.iloc[:1]]),
               base_params)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['fold'\]"):
        C.plan(rows.drop(columns="fold"), labels, base_params)
    assert C.plan(rows.drop(columns="fold"), labels, base_params, strata=("split",))["stratum"].nunique() == 2
    with pytest.raises(ValueError, match="one entry per row"):
        C.plan(rows, labels.iloc[:-1], base_params)


def _images(n, channels=2, seed=0):
    return np.random.default_rng(seed).integers(0, 201, (n, channels, SIDE, SIDE)).astype(np.uint8)


def test_stamp_draws_only_inside_the_planned_boxes_and_never_in_place(base_params):
    rows, labels = _rows(60)
    plan = C.plan(rows, labels, base_params)
    imgs = _images(len(plan))
    before = imgs.copy()
    out = C.stamp(imgs, plan, 255)
    np.testing.assert_array_equal(imgs, before)                           # input untouched
    assert out is not imgs and out.dtype == np.uint8 and out.shape == imgs.shape
    from cxrbench.explain.metrics.localisation import box_masks
    on = plan["tagged"].to_numpy()
    inside = np.zeros((len(plan), SIDE, SIDE), bool)
    inside[on] = box_masks(plan.loc[on, list(C.BOX_COLUMNS)].to_numpy(), (SIDE, SIDE))
    inside = np.broadcast_to(inside[:, None], imgs.shape)
    assert (out[inside] == 255).all() and (imgs[inside] != 255).all()      # every tag pixel changed
    np.testing.assert_array_equal(out[~inside], imgs[~inside])            # nothing else did
    np.testing.assert_array_equal(out[~on], imgs[~on])                    # untagged images identical


def test_contrast_intensity_is_bright_on_dark_and_dark_on_bright():
    imgs = np.zeros((2, SIDE, SIDE), np.uint8)
    imgs[1] = 230
    boxes = np.array([[4, 4, 12, 12], [4, 4, 12, 12]])
    out = C.stamp(imgs, boxes, "contrast")
    assert (out[0, 4:12, 4:12] == 255).all() and (out[1, 4:12, 4:12] == 0).all()
    np.testing.assert_array_equal(C.tag_values(imgs, boxes, "contrast"), [255, 0])


@pytest.mark.parametrize("how", C.REMOVALS)
def test_remove_restores_an_untagged_looking_patch(base_params, how):
    rows, labels = _rows(60)
    plan = C.plan(rows, labels, base_params)
    imgs = _images(len(plan), seed=2)
    tagged = C.stamp(imgs, plan, 255)
    cfg = C.validate(base_params)
    back = C.remove(tagged, plan, how, context=cfg["remove_context"], sigma=cfg["remove_sigma"])
    on = plan["tagged"].to_numpy()
    for i in np.flatnonzero(on):
        x0, y0, x1, y1 = plan.loc[i, list(C.BOX_COLUMNS)]
        patch = back[i, :, y0:y1, x0:x1]
        assert (patch != 255).all()                                       # nothing at the tag's intensity
        assert 60 < patch.mean() < 140                                    # the surroundings' level (mean 100)
        rest = np.ones(back.shape[1:], bool)
        rest[:, y0:y1, x0:x1] = False
        np.testing.assert_array_equal(back[i][rest], tagged[i][rest])
    np.testing.assert_array_equal(back[~on], tagged[~on])
    assert (tagged[on] == 255).any()                                      # the input keeps its tags


@pytest.mark.parametrize("how", C.REMOVALS)
def test_remove_on_flat_surroundings_gives_them_back_exactly(how):
    imgs = np.full((1, 1, SIDE, SIDE), 100, np.uint8)
    boxes = np.array([[0, 10, 8, 18]])                                    # touching the left border
    back = C.remove(C.stamp(imgs, boxes, 255), boxes, how)
    np.testing.assert_array_equal(back, imgs)


def test_remove_mean_is_the_mean_of_the_band_around_the_box():
    img = np.zeros((1, 16, 16), np.uint8)
    img[0, :, 8:] = 200                                                   # right half bright
    boxes = np.array([[6, 6, 10, 10]])                                    # straddles the edge
    back = C.remove(C.stamp(img, boxes, 255), boxes, "mean", context=1.0)
    band = img[0, 2:14, 2:14].astype(float)
    ring = np.ones((12, 12), bool)
    ring[4:8, 4:8] = False
    assert (back[0, 6:10, 6:10] == int(np.floor(band[ring].mean() + 0.5))).all()


def test_move_puts_the_tag_on_non_target_images_only(base_params):
    rows, labels = _rows()
    plan = C.plan(rows, labels, base_params)
    moved = C.move(plan, base_params)
    assert (moved["tagged"] == ~moved["target"]).all()
    assert (moved.loc[moved["target"], list(C.BOX_COLUMNS)] == -1).all().all()
    kept = plan["tagged"] & ~plan["target"]                               # already tagged non-targets keep their box
    pd.testing.assert_frame_equal(moved.loc[kept, list(C.BOX_COLUMNS)], plan.loc[kept, list(C.BOX_COLUMNS)])
    new = moved["tagged"] & ~plan["tagged"]
    on = moved[new]
    tag, margin = plan.attrs["tag"], plan.attrs["margin"]
    assert ((on["x1"] - on["x0"]) == tag).all()
    assert (on[["x0", "y0"]] >= margin).all().all() and (on[["x1", "y1"]] <= SIDE - margin).all().all()
    pd.testing.assert_frame_equal(moved, C.move(plan, base_params))       # seeded
    assert moved.attrs == plan.attrs and plan["tagged"].sum() < moved["tagged"].sum()
    # a caller-chosen set, e.g. only test images
    onto = (rows["split"] == "test").to_numpy() & ~plan["target"].to_numpy()
    assert (C.move(plan, base_params, onto)["tagged"].to_numpy() == onto).all()
    with pytest.raises(ValueError, match="boolean array"):
        C.move(plan, base_params, onto[:-1])


def test_bad_boxes_and_images_are_refused():
    imgs = np.zeros((2, 1, SIDE, SIDE), np.uint8)
    with pytest.raises(ValueError, match="not a non-empty box"):
        C.stamp(imgs, np.array([[-1, -1, -1, -1], [60, 0, 70, 8]]))
    with pytest.raises(ValueError, match="shape \\(2, 4\\)"):
        C.stamp(imgs, np.array([[0, 0, 8, 8]]))
    with pytest.raises(ValueError, match="uint8"):
        C.stamp(imgs.astype(np.float32), np.array([[0, 0, 8, 8], [0, 0, 8, 8]]))
    with pytest.raises(ValueError, match="how"):
        C.remove(imgs, np.array([[0, 0, 8, 8], [0, 0, 8, 8]]), "inpaint")
    with pytest.raises(ValueError, match="no pixel around"):
        C.remove(imgs, np.array([[0, 0, SIDE, SIDE], [0, 0, 8, 8]]), "mean")
