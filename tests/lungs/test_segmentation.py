"""Tests of the lung segmentation: loss, metrics, post-processing, input modes, split, training."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrbench.core import params as P
from cxrbench.lungs import segmentation as seg
from cxrbench.lungs import unet
from helpers import real_lungs as _real
from helpers import tiny_unet as _tiny

ROOT = Path(__file__).resolve().parents[2]


# --- loss -------------------------------------------------------------------

def _square(size=32, top=8, left=8, side=12):
    m = torch.zeros(1, 1, size, size)
    m[..., top:top + side, left:left + side] = 1
    return m


def test_ce_logdice_matches_formula_at_half_probability():
    t = _square()
    logits = torch.zeros_like(t)  # p = 0.5 everywhere
    n, s = t.numel(), float(t.sum())
    expected = math.log(2) - math.log((2 * 0.5 * s + 1) / (0.5 * n + s + 1))
    assert float(unet.CELogDiceLoss()(logits, t)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", unet.LOSSES)
def test_loss_minimal_for_perfect_prediction_and_decreasing_with_overlap(name):
    loss = unet.make_loss(name)
    t = _square()
    perfect = float(loss(20 * (2 * t - 1), t))
    values = []
    for shift in (12, 9, 6, 3, 0):  # overlap grows as the predicted square slides onto the truth
        pred = _square(left=8 + shift)
        values.append(float(loss(8 * (2 * pred - 1), t)))
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert perfect < values[-1]
    if name == "ce_logdice":
        assert perfect == pytest.approx(0.0, abs=1e-3)
        # a confident "no lung" prediction is worse than any partial overlap
        assert float(loss(torch.full_like(t, -20.0), t)) > values[1]


def test_make_loss_rejects_unknown_name():
    with pytest.raises(P.ParamError, match="ce_logdice"):
        unet.make_loss("focal")


# --- metrics ----------------------------------------------------------------

def test_iou_and_dice_by_hand():
    true = np.zeros((4, 4), np.uint8)
    true[0:2, 0:2] = 1            # 4 px
    pred = np.zeros((4, 4), np.uint8)
    pred[0:2, 1:3] = 1            # 4 px, 2 shared
    assert seg.iou(pred, true)[0] == pytest.approx(2 / 6)
    assert seg.dice(pred, true)[0] == pytest.approx(2 * 2 / 8)
    assert seg.iou(true, true)[0] == 1.0
    empty = np.zeros_like(true)
    assert seg.iou(empty, empty)[0] == 1.0 and seg.dice(empty, empty)[0] == 1.0
    assert seg.iou(empty, true)[0] == 0.0 and seg.dice(true, empty)[0] == 0.0
    batch = np.stack([pred, true])
    np.testing.assert_allclose(seg.dice(batch, np.stack([true, true])), [0.5, 1.0])
    with pytest.raises(ValueError):
        seg.iou(pred, true[:3])


# --- post-processing --------------------------------------------------------

def test_postprocess_keeps_two_largest_components_and_fills_holes():
    m = np.zeros((30, 30), np.uint8)
    m[2:12, 2:10] = 1    # 80 px, left lung, with a hole
    m[5:7, 5:7] = 0      # hole of 4 px
    m[2:12, 18:25] = 1   # 70 px, right lung
    m[25:27, 25:27] = 1  # 4 px speck
    out = seg.postprocess(m, components=2, fill_holes=True)
    assert out.dtype == np.uint8
    assert out[25:27, 25:27].sum() == 0          # speck gone
    assert out[5:7, 5:7].all()                   # hole filled
    assert out[2:12, 18:25].all() and out[2:12, 2:10].all()
    assert out.sum() == 80 + 70
    assert seg.n_components(out) == 2
    kept_all = seg.postprocess(m, components=0, fill_holes=False)
    np.testing.assert_array_equal(kept_all, m)


def test_implausible_reasons():
    m = np.zeros((10, 10), np.uint8)
    assert seg.implausible(m) == ["empty"]
    m[1:4, 1:4] = 1
    assert seg.implausible(m) == ["one_component"]
    m[1:4, 6:9] = 1
    assert seg.implausible(m) == []
    full = np.ones((10, 10), np.uint8)
    full[:, 5] = 0
    assert seg.implausible(full, max_area=0.8) == ["area_over_0.8"]


# --- classifier input modes -------------------------------------------------

def _images():
    img = np.full((2, 2, 8, 8), 7, np.uint8)
    img[:, :, 2:6, 3:7] = 200
    mask = np.zeros((2, 8, 8), np.uint8)
    mask[0, 2:6, 3:7] = 1       # image 0: lung box; image 1: empty mask
    return img, mask


def test_input_mode_full_is_unchanged_copy():
    img, mask = _images()
    out = seg.apply_input_mode(img, mask, "full", 0)
    np.testing.assert_array_equal(out, img)
    assert out is not img and out.dtype == np.uint8


def test_input_mode_lungs_removed_uses_dilated_mask():
    img, mask = _images()
    out = seg.apply_input_mode(img, mask, "lungs_removed", 0)
    assert (out[0][:, 2:6, 3:7] == 0).all()
    assert out[0][:, 1, 4] .tolist() == [7, 7]           # just outside: kept
    np.testing.assert_array_equal(out[1], img[1])       # empty mask: unchanged
    out1 = seg.apply_input_mode(img, mask, "lungs_removed", 1)
    assert (out1[0][:, 1, 4] == 0).all()                 # dilated by 1 px: removed
    assert (out1[0][:, 1, 2] == 7).all()                 # diagonal corner is sqrt(2) px away: kept
    assert (out1[0][:, 0, 4] == 7).all()                 # 2 px away: kept


def test_input_mode_lung_crop_crops_to_bounding_box():
    img, mask = _images()
    out = seg.apply_input_mode(img, mask, "lung_crop", 0)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (out[0] == 200).all()                         # the box is uniform 200
    np.testing.assert_array_equal(out[1], img[1])        # empty mask: unchanged
    out1 = seg.apply_input_mode(img, mask, "lung_crop", 1)
    assert (out1[0] == 7).any() and (out1[0] == 200).any()  # the 1-px ring of background is kept
    # a gradient image: the crop of rows 2..5, cols 3..6 resized back is monotone like the source
    grad = np.tile(np.arange(0, 256, 32, dtype=np.uint8), (1, 1, 8, 1))
    g = seg.apply_input_mode(grad, mask[:1], "lung_crop", 0)[0, 0]
    assert g.min() >= 96 and g.max() <= 224 and (np.diff(g[0].astype(int)) >= 0).all()


def test_input_mode_errors():
    img, mask = _images()
    with pytest.raises(ValueError, match=r"mask size 4x4.*image size 8x8"):
        seg.apply_input_mode(img, mask[:, :4, :4], "full", 0)
    with pytest.raises(P.ParamError) as err:
        seg.apply_input_mode(img, mask, "lungs_only", 0)
    for mode in seg.INPUT_MODES:
        assert mode in str(err.value)
    with pytest.raises(ValueError):
        seg.apply_input_mode(img, mask, "full", -1)


# --- split ------------------------------------------------------------------

def _frames():
    rows = []
    # patient, group, split, fold, has mask
    spec = [("a", "g1", "test", -1, True), ("a", "g1", "test", -1, False), ("b", "g2", "test", -1, True),
            ("c", "g3", "dev", 0, True), ("d", "g4", "dev", 1, True), ("d", "g4", "dev", 1, True),
            ("e", "g5", "dev", 2, False), ("f", "g6", "dev", 2, True), ("k", "g7", "dev", 0, False)]
    for i, (pat, grp, split, fold, has) in enumerate(spec):
        rows.append({"path": f"img{i}.png", "patient": pat, "group": grp, "split": split, "fold": fold,
                     "mask": f"m{i}.png" if has else ""})
    frame = pd.DataFrame(rows)
    return frame[["path", "patient", "mask"]], frame[["path", "patient", "group", "split", "fold"]]


def test_unet_split_never_holds_a_test_patient():
    index, splits = _frames()
    for k in (0, 1, 2):
        parts = unet.unet_split(index, splits, k)
        test_patients = set(splits.loc[splits["split"] == "test", "patient"])
        for name in ("train", "val"):
            assert not set(index["patient"].iloc[parts[name]]) & test_patients
            assert (index["mask"].iloc[parts[name]] != "").all()
        assert set(splits["fold"].iloc[parts["val"]]) <= {k}
        assert k not in set(splits["fold"].iloc[parts["train"]])
        np.testing.assert_array_equal(parts["test"], [0, 2])
    parts = unet.unet_split(index, splits, 1)
    np.testing.assert_array_equal(parts["train"], [3, 7])
    np.testing.assert_array_equal(parts["val"], [4, 5])


def test_unet_split_rejects_leaks_and_unknown_folds():
    index, splits = _frames()
    with pytest.raises(P.ParamError, match="val_fold"):
        unet.unet_split(index, splits, 7)
    bad = splits.copy()
    bad.loc[3, "patient"] = "a"            # a test patient shows up in the dev split
    with pytest.raises(RuntimeError, match="test-split patient"):
        unet.unet_split(index.assign(patient=bad["patient"]), bad, 1)


def test_unet_split_on_the_sample(sample_data):
    index = pd.read_csv(sample_data / "index.csv", dtype={"mask": str}, keep_default_na=False)
    splits = pd.read_csv(sample_data / "splits.csv", keep_default_na=False)
    parts = unet.unet_split(index, splits, 0)
    test_patients = set(splits.loc[splits["split"] == "test", "patient"])
    assert len(parts["train"]) and len(parts["val"])
    assert not set(index["patient"].iloc[np.concatenate([parts["train"], parts["val"]])]) & test_patients


# --- params -----------------------------------------------------------------

def test_params_block_validates_and_rejects_bad_values():
    params = P.load(ROOT / "params.yaml")
    cfg = unet.UNetConfig.from_params(params, in_channels=1)
    assert unet.UNetConfig.from_dict(cfg.to_dict()) == cfg
    bad = copy.deepcopy(params)
    bad["unet"]["loss"] = "focal"
    with pytest.raises(P.ParamError, match="unet.loss"):
        unet.UNetConfig.from_params(bad, 1)
    bad = P.with_overrides(params, ["unet.strides=[2, 2]"])
    with pytest.raises(P.ParamError, match="unet.strides"):
        unet.UNetConfig.from_params(bad, 1)
    bad = P.with_overrides(params, ["unet.lr=1e-3"])  # YAML 1.1 reads this as a string
    with pytest.raises(P.ParamError, match="unet.lr"):
        unet.UNetConfig.from_params(bad, 1)


# --- training ---------------------------------------------------------------

@pytest.mark.slow
def test_tiny_unet_loss_drops_on_real_images(tmp_path, sample_data):
    images, masks = _real(sample_data, 6)
    cfg = _tiny(epochs=12, augment=unet.Augment(0.0, 0.0, False))
    parts = {"train": np.arange(6), "val": np.arange(6)}
    x, m = unet.resize_images(images, cfg.size), unet.resize_masks(masks, cfg.size).astype(np.float32)
    torch.manual_seed(cfg.seed)
    before_model = unet.build_model(cfg)
    before, _ = unet.evaluate(before_model, unet.make_loss(cfg.loss), x, m, cfg, torch.device("cpu"))
    result = unet.train(cfg, images, masks, parts, tmp_path / "model.pt", progress=False,
                        dev=torch.device("cpu"))
    hist = result["history"]
    assert len(hist) == 12
    assert hist[-1]["train_loss"] < 0.8 * hist[0]["train_loss"]
    assert result["best"]["val_loss"] < 0.8 * before
    model, loaded = unet.load_model(tmp_path / "model.pt", torch.device("cpu"))
    assert loaded == cfg
    proba = unet.predict_proba(model, images, cfg.size, images.shape[-1], 4)
    assert proba.shape == masks.shape and 0 <= proba.min() and proba.max() <= 1


@pytest.mark.slow
def test_resume_repeats_an_uninterrupted_run(tmp_path, sample_data):
    images, masks = _real(sample_data, 6)
    parts = {"train": np.arange(4), "val": np.arange(4, 6)}
    dev = torch.device("cpu")
    full = unet.train(_tiny(epochs=2), images, masks, parts, tmp_path / "a.pt", progress=False, dev=dev)
    unet.train(_tiny(epochs=1), images, masks, parts, tmp_path / "b.pt", progress=False, dev=dev)
    resumed = unet.train(_tiny(epochs=2), images, masks, parts, tmp_path / "b.pt", progress=False, dev=dev)
    assert [h["train_loss"] for h in resumed["history"]] == pytest.approx([h["train_loss"] for h in full["history"]])
    a, b = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    for k in a["last"]["state_dict"]:
        torch.testing.assert_close(a["last"]["state_dict"][k], b["last"]["state_dict"][k])
    # no wall-clock figure in the model file: two identical runs write the same bytes
    assert all("train_images_per_s" not in h for h in a["last"]["history"])
    assert a["last"]["history"] == b["last"]["history"]
    # other data: the checkpoint is not resumed
    other = unet.train(_tiny(epochs=2), images, masks, parts, tmp_path / "b.pt", progress=False, dev=dev,
                       fingerprint="other")
    assert len(other["history"]) == 2 and other["history"][0]["epoch"] == 0


def test_augment_is_seeded_and_keeps_masks_binary():
    x = torch.rand(3, 1, 16, 16)
    m = (torch.rand(3, 1, 16, 16) > 0.5).float()
    aug = unet.Augment(10.0, 0.1, True)
    a = unet.augment(x, m, aug, torch.Generator().manual_seed(1))
    b = unet.augment(x, m, aug, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a[0], b[0])
    assert set(torch.unique(a[1]).tolist()) <= {0.0, 1.0}
    assert 0 <= float(a[0].min()) and float(a[0].max()) <= 1
