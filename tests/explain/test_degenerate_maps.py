"""Degenerate attribution maps are a status, not a score; common-set tables."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from cxrbench.explain import store
from cxrbench.explain.metrics import localisation as L
from cxrbench.explain.metrics import perturbation as EM
from cxrbench.explain.metrics import properties as MP
from cxrbench.explain.metrics import tables as AT
from cxrbench.explain.metrics import tables_text as ATT

N, S = 5, 16
AOPPC = AT.AOPPC_METRICS


class Toy(nn.Module):
    """Logit of class 1 grows with the mean of the top-left quarter of channel 0."""

    def forward(self, x):
        z = 8 * x[:, 0, : S // 2, : S // 2].mean((1, 2)) - 4
        return torch.stack([-z, z], 1)


def _fold(seed=0, cam_constant=(1, 3)):
    """Maps of one (backbone, fold): ``good`` (noise), ``cam`` (constant on ``cam_constant``), the random
    control; lung masks (image 4 has none); the randomised model's maps of the first 3 images."""
    rng = np.random.default_rng(seed)
    cam = rng.random((N, S, S)).astype(np.float32)
    for i in cam_constant:
        cam[i] = 0.0 if i % 2 else 0.5           # the all-zero Grad-CAM and a constant non-zero map
    maps = {"good": rng.standard_normal((N, S, S)).astype(np.float32), "cam": cam,
            AT.RANDOM: EM.random_maps((N, S, S), seed + 7)}
    masks = np.zeros((N, S, S), np.uint8)
    masks[:4, 2:10, 3:12] = 1
    rand = {"good": rng.random((3, S, S)).astype(np.float32), "cam": rng.random((3, S, S)).astype(np.float32)}
    return maps, masks, rand


def _toy_curves(x, target, seen=None):
    """The stage's closure on a CPU toy model (records which rows each call scored)."""
    model = Toy()

    def curves(rows, maps, spec):
        if seen is not None:
            seen.append((np.asarray(rows).copy(), maps.copy()))
        return EM.perturbation_curves(model, EM.take(x, rows), maps, EM.take(target, rows), scheme=spec["scheme"],
                                      order=spec["order"], fill=spec["fill"], images_per_batch=2, patch=2, steps=6,
                                      blur_sigma=1.0)
    return curves


@pytest.fixture(scope="module")
def toy():
    g = torch.Generator().manual_seed(0)
    return 0.5 + 0.5 * torch.rand(N, 1, S, S, generator=g), torch.ones(N, dtype=torch.long)


# --- status ---------------------------------------------------------------------------------------------

def test_map_status_is_the_localisation_rule_and_report_lists_paths():
    maps = np.random.default_rng(0).random((4, S, S)).astype(np.float32)
    maps[1] = 0.0
    maps[2] = 0.25
    maps[3, 5, 5] = np.nan
    st = EM.map_status(maps)
    assert st.tolist() == ["ok", "constant", "constant", "nonfinite"]
    assert st.tolist() == L.map_status(maps).tolist()
    rep = EM.map_report(maps, ["a.png", "b.png", "c.png", "d.png"])
    assert rep == {"maps": {"ok": 1, "constant": 2, "nonfinite": 1}, "degenerate": ["b.png", "c.png", "d.png"]}
    assert EM.map_report(maps[:1], ["a.png"])["degenerate"] == []
    with pytest.raises(ValueError, match="4 maps but 3 image paths"):
        EM.map_report(maps, ["a", "b", "c"])


def test_attribute_stage_records_degenerate_maps_and_never_calls_them_ok():
    """The attribute stage's status of stored maps (cxrbench.explain.store)."""
    rng = np.random.default_rng(1)
    paths = [f"img{i}.png" for i in range(4)]
    gradcam = rng.random((4, S, S)).astype(np.float16)
    gradcam[[0, 2]] = 0                                                   # ReLU of a negative sum: all zero
    maps = {"gradcam": gradcam, "guided_gradcam": np.zeros((4, S, S), np.float16),
            "saliency": rng.standard_normal((4, S, S)).astype(np.float16)}
    rand = {"gradcam": np.zeros((2, S, S), np.float16), "saliency": rng.random((2, S, S)).astype(np.float16)}
    status = {m: {"ok": True, "seconds": 0.1, "sanity": {"ok": True, "seconds": 0.1}} for m in maps}
    del status["guided_gradcam"]["sanity"]
    status["deeplift"] = {"ok": False, "reason": "RuntimeError: x"}
    arrays = {**store.scaled(maps), **store.scaled(rand, "rand__")}
    store.record_map_status(status, arrays, paths)
    assert status["gradcam"]["maps"] == {"ok": 2, "constant": 2, "nonfinite": 0}
    assert status["gradcam"]["degenerate"] == ["img0.png", "img2.png"]
    assert status["saliency"]["maps"] == {"ok": 4, "constant": 0, "nonfinite": 0}
    assert status["saliency"]["degenerate"] == []
    assert status["guided_gradcam"]["maps"]["constant"] == 4
    assert status["gradcam"]["sanity"]["maps"] == {"ok": 0, "constant": 2, "nonfinite": 0}
    assert status["gradcam"]["sanity"]["degenerate"] == ["img0.png", "img1.png"]
    assert status["saliency"]["sanity"]["degenerate"] == []
    assert "maps" not in status["deeplift"]
    line = EM.degenerate_summary(status)
    assert line.startswith("degenerate maps: gradcam 2/4 constant, guided_gradcam 4/4 constant (no usable map)")
    assert "randomised model: gradcam 2/2 constant" in line and "saliency" not in line
    assert EM.degenerate_summary({"saliency": status["saliency"]}) == "degenerate maps: none"


def test_stored_maps_keep_float32_precision_so_storage_creates_no_ties():
    """Maps are stored as float32 (divided by their maximum): a smooth map keeps all its distinct values and a
    tiny gradient keeps its shape. The float16 storage it replaces tied most pixels with another (91-99 % on
    the sample demo) and flushed gradients below 6e-8 to zero."""
    yy, xx = np.mgrid[0:64, 0:64]
    smooth = (np.exp(-((yy - 30.0) ** 2 + (xx - 20.0) ** 2) / 800.0) + 1e-3 * xx + 3.7e-5 * yy).astype(np.float32)[None]
    tiny = smooth * 1e-9
    arrays = store.scaled({"smooth": smooth, "tiny": tiny})
    assert arrays["smooth"].dtype == np.float32
    for name, m in (("smooth", smooth), ("tiny", tiny)):
        back = EM.stored_maps(arrays, name)
        assert len(np.unique(back)) == len(np.unique(m)) == 64 * 64
        np.testing.assert_allclose(back, m, rtol=1e-6)
    as_half = (smooth / smooth.max()).astype(np.float16)
    assert len(np.unique(as_half)) < 0.6 * smooth.size              # what float16 did: 2254 values for 4096 pixels


# --- exclusion from every metric -----------------------------------------------------------------------

def test_constant_maps_are_excluded_from_every_metric_of_their_method(toy):
    x, target = toy
    maps, masks, rand = _fold()
    seen = []
    scores = AT.new_scores()
    rows = AT.score_fold(scores, "bb", 0, maps, masks, rand, _toy_curves(x, target, seen))
    cell = AT.by_method(scores)["cam"]["bb"]["f0"]
    ok = np.array([0, 2, 4])
    assert cell["maps"] == {"ok": 3, "constant": 2, "nonfinite": 0} and cell["excluded_degenerate"] == 2
    for metric in AOPPC:
        assert cell[metric]["n"] == 3, metric
    assert cell["lung_mass"]["n"] == 2                       # ok and with a lung mask: images 0 and 2
    np.testing.assert_allclose(cell["lung_mass"]["mean"],
                               round(float(EM.lung_mass_fraction(maps["cam"][[0, 2]], masks[[0, 2]]).mean()), 4))
    assert cell["sanity_spearman"]["n"] == 2                 # of the first 3, image 1 is excluded
    assert cell["sanity"] == {"images": 3, "compared": 2, "randomised_constant_passed": 0,
                              "randomised_nonfinite": 0, "excluded_degenerate": 1}
    # the constant maps never reached the perturbation curves, and the kept maps went unchanged
    cam_calls = [(r, m) for r, m in seen if m.shape[0] == 3 and np.array_equal(m, maps["cam"][ok])]
    assert len(cam_calls) == len(AOPPC) and all(np.array_equal(r, ok) for r, _ in cam_calls)
    assert not any(np.array_equal(r, np.arange(N)) and np.array_equal(m, maps["cam"]) for r, m in seen)
    # its AOPPC values are those of the three ok images scored alone
    alone = EM.perturbation_curves(Toy(), x[ok], maps["cam"][ok], target[ok], scheme="pixels")["aoppc"]
    assert cell["aoppc_pixels_morf"]["mean"] == EM.mean_std(alone)["mean"]
    # the other methods keep every map
    good = AT.by_method(scores)["good"]["bb"]["f0"]
    assert good["excluded_degenerate"] == 0 and all(good[m]["n"] == N for m in AOPPC)
    assert {r["method"] for r in rows} == {"good", "cam", AT.RANDOM}
    assert AT.status_label(scores, "cam", "bb", 0) == "degenerate maps: 2/5 constant"
    assert AT.fold_status({"cam": {"ok": True}, "good": {"ok": True}, "lrp": {"ok": False, "reason": "r"}},
                          scores, "bb", 0) == {"cam": "degenerate maps: 2/5 constant", "good": "ok",
                                               "lrp": {"ok": False, "reason": "r"}}


def test_all_maps_degenerate_gives_n_zero_not_a_score(toy):
    x, target = toy
    maps, masks, rand = _fold(cam_constant=range(N))
    maps["cam"][2, 0, 0] = np.inf
    scores = AT.new_scores()
    AT.score_fold(scores, "bb", 0, maps, masks, rand, _toy_curves(x, target))
    res = AT.summary(scores, ["good", "cam"])
    cell = res["by_method"]["cam"]["bb"]["f0"]
    assert cell["maps"] == {"ok": 0, "constant": 4, "nonfinite": 1} and cell["excluded_degenerate"] == 5
    for metric in AOPPC + ("lung_mass", "sanity_spearman"):
        assert cell[metric] == {"mean": None, "std": None, "n": 0}, metric
        assert res["pooled"][f"cam|{metric}"]["n"] == 0
    assert res["common"]["images"]["pooled"] == 0
    table = ATT.markdown(res, ["good", "cam"], {})
    assert "| cam | - | - | - | - | 0 / 5 |" in table


def test_constant_randomised_map_passes_the_sanity_check(toy):
    x, target = toy
    maps, masks, rand = _fold(cam_constant=(1,))
    rand["cam"][0] = 0.0                 # the randomised model's map changed completely: passes
    rand["cam"][1] = 0.0                 # but the trained model's map of image 1 is constant itself: excluded
    rand["cam"][2, 3, 3] = np.nan        # non-finite: not compared, not passing
    scores = AT.new_scores()
    AT.score_fold(scores, "bb", 0, maps, masks, rand, _toy_curves(x, target))
    res = AT.summary(scores, ["good", "cam"])
    assert res["by_method"]["cam"]["bb"]["f0"]["sanity"] == {
        "images": 3, "compared": 0, "randomised_constant_passed": 1, "randomised_nonfinite": 1,
        "excluded_degenerate": 1}
    assert res["sanity"]["by_method"]["cam"]["randomised_constant_passed"] == 1
    assert res["pooled"]["cam|sanity_spearman"]["n"] == 0
    assert res["sanity"]["by_method"]["good"] == {"images": 3, "compared": 3, "randomised_constant_passed": 0,
                                                  "randomised_nonfinite": 0, "excluded_degenerate": 0}
    assert "| cam | - | 1 | 1 | 1 | 3 |" in ATT.markdown(res, ["good", "cam"], {})
    assert AT.sanity_split(["ok", "ok"], ["constant", "ok"])["randomised_constant_passed"] == 1


# --- common set --------------------------------------------------------------------------------------------

def test_common_set_drops_the_image_for_every_method(toy):
    x, target = toy
    scores = AT.new_scores()
    for bb, const in (("b1", (1, 3)), ("b2", ())):
        maps, masks, rand = _fold(cam_constant=const)
        AT.score_fold(scores, bb, 0, maps, masks, rand, _toy_curves(x, target))
    maps, masks, rand = _fold(seed=3, cam_constant=())
    del maps["cam"]                                          # cam failed to run on b2 fold 1: no maps there
    AT.score_fold(scores, "b2", 1, maps, masks, {}, _toy_curves(x, target))
    res = AT.summary(scores, ["good", "cam"])
    com = res["common"]
    assert com["images"] == {"scored": 15, "pooled": 8, "by_backbone": {"b1": 3, "b2": 5},
                             "by_fold": {"b1": {"f0": 3}, "b2": {"f0": 5, "f1": 0}}}
    assert com["missing"] == [{"method": "cam", "backbone": "b2", "fold": "f1"}]
    assert com["degenerate_by_method"] == {"good": 0, "cam": 2, AT.RANDOM: 0}
    for m in ("good", "cam", AT.RANDOM):
        for metric in AOPPC:
            assert com["pooled"][f"{m}|{metric}"]["n"] == 8, (m, metric)
            assert com["by_backbone"]["b1"][f"{m}|{metric}"]["n"] == 3
            assert com["by_backbone"]["b2"][f"{m}|{metric}"]["n"] == 5
        assert com["pooled"][f"{m}|lung_mass"]["n"] == 2 + 4         # image 4 has no lung mask
        assert f"{m}|sanity_spearman" not in com["pooled"]
    assert com["pooled"]["lung_area|lung_mass"]["n"] == 6
    # per method (not common), good keeps all 15 images and cam its 3 + 5 ok ones
    assert res["pooled"]["good|aoppc_pixels_morf"]["n"] == 15
    assert res["pooled"]["cam|aoppc_pixels_morf"]["n"] == 8
    # the common value of `good` is its mean over exactly the common images
    blocks = [b for b in scores["blocks"] if b[0] == "good" and b[3] == "aoppc_threshold_morf"]
    common_vals = np.concatenate([blocks[0][4][[0, 2, 4]], blocks[1][4]])
    cell = com["pooled"]["good|aoppc_threshold_morf"]
    assert {k: cell[k] for k in ("mean", "std", "n")} == EM.mean_std(common_vals)
    assert res["maps"]["by_method"]["cam"] == {"ok": 8, "constant": 2, "nonfinite": 0, "excluded_degenerate": 2}
    table = ATT.markdown(res, ["good", "cam"], {"cam": 0.8})
    assert "| maps: ok / degenerate |" in table and "| 0.8 | 8 / 2 |" in table
    assert "Common set: 8 of 15" in table and "Common set within b1: 3 images." in table
    assert "No maps (their folds add no image): cam b2 f1." in table


# --- no degenerate map: the former keys give the former values ----------------------------------------------

def _former_aggregation(folds, curves_of):
    """stages/aoppc.py's aggregation before degenerate maps were excluded (b69c458..28a31ad), verbatim on the same inputs."""
    results, per_image, curves = {}, {}, []

    def add(method, backbone, key, metric, values):
        results.setdefault(method, {}).setdefault(backbone, {}).setdefault(key, {})[metric] = EM.mean_std(values)
        per_image.setdefault((method, metric), []).append(np.asarray(values, dtype=np.float64))

    for backbone, fold, named, masks, rand in folds:
        key = f"f{fold}"
        has_mask = masks.reshape(len(masks), -1).any(1)
        run = curves_of(backbone, fold)
        for m, maps in named.items():
            for scheme in AT.PIXEL_SCHEMES:           # the schemes it had ("fraction" is now "pixels")
                for order in EM.ORDERS:
                    r = run(np.arange(len(maps)), maps, {"scheme": scheme, "order": order, "fill": "black"})
                    add(m, backbone, key, f"aoppc_{scheme}_{order}", r["aoppc"])
                    for lvl, x_lvl in enumerate(EM.levels(scheme)):
                        curves.append({"method": m, "backbone": backbone, "fold": fold, "scheme": scheme,
                                       "order": order, "level": float(x_lvl),
                                       "p_drop": float(r["drop"][:, lvl].mean()),
                                       "removed": float(r["removed"][:, lvl].mean())})
            if has_mask.any():
                add(m, backbone, key, "lung_mass", EM.lung_mass_fraction(maps[has_mask], masks[has_mask]))
            if m in rand:
                k = len(rand[m])
                add(m, backbone, key, "sanity_spearman", EM.rank_correlation(maps[:k], rand[m]))
        if has_mask.any():
            add("lung_area", backbone, key, "lung_mass", EM.area_fraction(masks[has_mask]))
    pooled = {f"{m}|{metric}": EM.mean_std(np.concatenate(v)) for (m, metric), v in per_image.items()}
    return pooled, results, curves, {k: np.concatenate(v) for k, v in per_image.items()}


def test_without_degenerate_maps_the_former_keys_are_bit_identical(toy):
    x, target = toy
    gen = torch.Generator().manual_seed(5)
    inputs = {("b1", 0): (x, target), ("b1", 1): (torch.rand(N, 1, S, S, generator=gen), target),
              ("b2", 0): (0.3 + torch.rand(N, 1, S, S, generator=gen), target)}
    folds = []
    for i, (bb, fold) in enumerate(inputs):
        maps, masks, rand = _fold(seed=10 + i, cam_constant=())
        if i == 1:
            masks[:] = 0                                      # a fold without any lung mask
        folds.append((bb, fold, maps, masks, rand))

    def curves_of(bb, fold):
        return _toy_curves(*inputs[(bb, fold)])

    old_pooled, old_by_method, old_curves, old_values = _former_aggregation(folds, curves_of)
    scores, new_curves = AT.new_scores(), []
    for bb, fold, maps, masks, rand in folds:
        new_curves += AT.score_fold(scores, bb, fold, maps, masks, rand, curves_of(bb, fold),
                                    perturbations=AT.specs(fills=[]))
    res = AT.summary(scores, ["good", "cam"])
    new_curves = [{k: v for k, v in r.items() if k not in ("fill", "images")} for r in new_curves]
    # the per-image values themselves, bit for bit and in the same order (mean_std's rounding hides nothing)
    new_values = {}
    added = set(MP.PROPERTIES)                       # Quantus' map properties: metrics the former code lacked
    for m, _, _, metric, v, _ in scores["blocks"]:
        if metric not in added:
            new_values.setdefault((m, metric), []).append(v)
    assert list(new_values) == list(old_values)
    for k, v in new_values.items():
        assert np.concatenate(v).tobytes() == old_values[k].tobytes(), k
    # the image-weighted mean, std and n (the gate's keys) are unchanged; patient_mean and patients are added
    former = lambda d: {k: {f: v[f] for f in ("mean", "std", "n")} for k, v in d.items()  # noqa: E731
                        if k.split("|")[1] not in added}
    assert list(former(res["pooled"])) == list(old_pooled) and former(res["pooled"]) == old_pooled
    assert all("patient_mean" in c and "patients" in c for c in res["pooled"].values())
    assert old_pooled["good|aoppc_pixels_morf"]["n"] == 15 and old_pooled["good|lung_mass"]["n"] == 8
    assert res["pooled"]["good|sparseness"]["n"] == 15
    new_keys = {"maps", "excluded_degenerate", "sanity"} | added
    former_keys_only = {m: {bb: {f: {k: v for k, v in cell.items() if k not in new_keys} for f, cell in fs.items()}
                            for bb, fs in bbs.items()} for m, bbs in res["by_method"].items()}
    assert former_keys_only == old_by_method
    assert all(cell["excluded_degenerate"] == 0 for m, bbs in res["by_method"].items() if m != "lung_area"
               for fs in bbs.values() for cell in fs.values())
    assert new_curves == old_curves
    # and the common set is then every image: its tables equal the per-method ones (sanity aside)
    assert res["common"]["images"]["pooled"] == 15
    assert former(res["common"]["pooled"]) == {k: v for k, v in old_pooled.items() if not k.endswith("|sanity_spearman")}
