"""External validation (cxrbench/studies/external/) and the model card (cxrbench/report/model_card.py).

The Kermany files of the embedded sample stand in for a source: the study's patients are excluded by the
patient id in the file name (every image of such a child, including those the study did not index), a
declared source that shares patients or pixels with the study is refused, and the statistics agree with
scikit-learn. The model card renders whatever inputs are missing.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrbench.core import bootstrap as B
from cxrbench.studies.external import images as XI
from cxrbench.studies.external import overlap as XO
from cxrbench.studies.external import run as XR
from cxrbench.studies.external import sources as XS
from cxrbench.studies.external import stats as XT
from cxrbench.studies.external import tables as XM
from cxrbench.report import model_card
from cxrbench.report import document as reporting
from cxrbench.data.images import load_grey
from cxrbench.core.params import ParamError
from cxrbench.data.preprocess import Recipe, prepare

SAMPLE_KERMANY = Path(__file__).resolve().parents[2] / "data" / "sample" / "chest_xray"
STATS = {"resamples": 200, "seed": 0, "confidence": 0.95}


def _params(params, **entry):
    p = copy.deepcopy(params)
    p["external"]["sources"] = ["kermany_unused"]
    p["external"]["catalog"]["kermany_unused"].update(entry)
    return p


def _source(params, **entry):
    return XS.validate(_params(params, **entry)).sources[0]


def test_unused_kermany_set_drops_every_image_of_a_study_child(params, table, raw, index_frame):
    """A study that indexed one of person266's two images still excludes both: the patient is the unit."""
    km = index_frame[index_frame["source"] == "kermany"]
    study = km[km["patient"].isin(["km:person1068", "km:person59", "km:IM-0129"])
               | km["path"].str.endswith("person266_bacteria_1238.jpeg")]
    assert len(study) == 4
    src = _source(params)
    root, prefix = XS.source_root(src, raw=raw)
    frame, unparsed = XS.list_images(src, root, prefix, table)
    assert len(frame) == len(km) == 60 and unparsed == []
    assert set(frame["path"]) == set(km["path"])                 # named as data/index.csv names them
    assert (frame.set_index("path")["patient"] == km.set_index("path")["patient"]).all()   # as indexing derives them
    kept, excluded = XO.separate_from_study(frame, study, src)
    assert excluded == {"patients": 4, "images": 5}
    assert "kermany/train/PNEUMONIA/person266_bacteria_1242.jpeg" not in set(kept["path"])
    assert not set(kept["patient"]) & set(study["patient"]) and len(kept) == 55
    virus = kept[kept["finding"] == "virus"].iloc[0]
    assert virus["y_viral"] == virus["y_pneumonia"] == 1 and virus["y_bacterial"] == virus["y_healthy"] == 0
    capped = XO.cap_per_class(kept, 5, seed=0)
    assert capped["finding"].value_counts().to_dict() == {"NORMAL": 5, "bacteria": 5, "virus": 5}
    pd.testing.assert_frame_equal(capped, XO.cap_per_class(kept, 5, seed=0))        # seeded


def test_a_source_that_overlaps_the_study_is_refused(params, table, index_frame, tmp_path, monkeypatch):
    """A declared source holding the study's patients is an error naming them, at the stage, before any model."""
    mirror = str(SAMPLE_KERMANY)
    p = _params(params, source=None, mirror=mirror, exclude_study_patients=False)
    src = XS.validate(p).sources[0]
    frame, _ = XS.list_images(src, *XS.source_root(src), table)
    with pytest.raises(XS.OverlapError, match=r"shares 59 patient\(s\) with the study.*km:IM-0129.*"
                                             r"exclude_study_patients: true"):
        XO.separate_from_study(frame, index_frame, src)
    # the stage itself: data/index.csv of the study, no models needed to refuse
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    index_frame.to_csv(tmp_path / "data" / "index.csv", index=False)
    with pytest.raises(XS.OverlapError, match=r"km:IM-0129, .* and 39 more"):
        XR.run_stage(p, device="cpu", show=False)
    # excluding them leaves nothing external here: an error too, not an empty score
    with pytest.raises(XS.ExternalError, match="no image left"):
        XR.run_stage(_params(params, source=None, mirror=mirror), device="cpu", show=False)


def test_a_pixel_identical_copy_of_a_study_image_is_refused(params, index_frame):
    src = _source(params)
    row = index_frame.iloc[0]
    frame = pd.DataFrame({"path": ["other/copy.png", "other/fresh.png"]})
    state = pd.DataFrame({"status": ["ok", "ok"], "exact_hash": [row["exact_hash"], "0" * 40]})
    with pytest.raises(XS.OverlapError, match=rf"pixel-identical.*other/copy.png = {row['path']}"):
        XO.refuse_identical(frame, state, index_frame, src)


@pytest.mark.parametrize("entry, key", [
    ({"colour": "red"}, "external.catalog.kermany_unused"),
    ({"mirror": "somewhere"}, "external.catalog.kermany_unused"),          # source and mirror both
    ({"source": "nope"}, "external.catalog.kermany_unused.source"),
    ({"labels": "folders"}, "external.catalog.kermany_unused.labels"),
    ({"folders": ["../up"]}, "external.catalog.kermany_unused.folders"),
    ({"findings": "nope"}, "external.catalog.kermany_unused.findings"),
    ({"exclude_study_patients": "yes"}, "external.catalog.kermany_unused.exclude_study_patients"),
    ({"source": None, "mirror": "m", "sha256": "abc"}, "external.catalog.kermany_unused.sha256"),
])
def test_bad_declarations_name_the_key(params, entry, key):
    with pytest.raises(ParamError) as err:
        XS.validate(_params(params, **entry))
    assert err.value.key == key


def test_bad_sources_and_models_name_the_key(params):
    p = _params(params)
    p["external"]["sources"] = ["elsewhere"]
    with pytest.raises(ParamError, match="not declared under external.catalog"):
        XS.validate(p)
    p = _params(params)
    p["external"]["models"] = ["ensemble", "resnet18:9"]
    with pytest.raises(ParamError, match=r"external.models.*resnet18:9.*does not train"):
        XS.validate(p)
    p["external"]["models"] = ["each_backbone"]
    assert XS.validate(p).models == params["train"]["backbones"]


def _synthetic(n, seed, shift=1.0, groups_per=2):
    rng = np.random.default_rng(seed)
    y = np.zeros((n, 2), int)
    y[:, 0] = rng.random(n) < 0.4
    prob = np.clip(0.5 + 0.25 * (2 * y - 1) * shift + rng.normal(0, 0.2, (n, 2)), 0, 1)
    prob[:5, 0] = 0.5                                           # ties
    pred = (prob >= 0.5).astype(int)
    groups = np.array([f"p{i // groups_per}" for i in range(n)])
    return XT.Scored(y, prob, pred, groups)


def test_metrics_agree_with_scikit_learn():
    internal, external = _synthetic(120, 0), _synthetic(90, 1, shift=0.5)
    out = XT.score_label({XT.INTERNAL: internal, XT.EXTERNAL: external}, 0, STATS, 10, [(XT.EXTERNAL, XT.INTERNAL)])
    for name, s in ((XT.INTERNAL, internal), (XT.EXTERNAL, external)):
        r = out["sets"][name]
        y, p, d = s.y[:, 0], s.prob[:, 0], s.pred[:, 0]
        assert r["auroc"]["estimate"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert r["ap"]["estimate"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
        assert r["sensitivity"]["estimate"] == pytest.approx(d[y == 1].mean())
        assert r["specificity"]["estimate"] == pytest.approx(1 - d[y == 0].mean())
        assert r["ap_chance"] == pytest.approx(y.mean()) and r["auroc_chance"] == 0.5
        for m in XT.METRICS:
            assert r[m]["low"] <= r[m]["estimate"] <= r[m]["high"]
        assert r["groups"] == len(set(s.groups))
    diff = out["auroc_differences"][f"{XT.EXTERNAL}-{XT.INTERNAL}"]
    assert diff["estimate"] == pytest.approx(out["sets"][XT.EXTERNAL]["auroc"]["estimate"]
                                             - out["sets"][XT.INTERNAL]["auroc"]["estimate"])
    assert diff["high"] < 0                                     # the weaker external scores are seen as weaker
    # label 1 has no positive: listed with the reason, nothing computed
    skipped = XT.score_label({XT.INTERNAL: internal, XT.EXTERNAL: external}, 1, STATS, 10, [])
    assert skipped["sets"] == {} and skipped["not_scorable"][XT.EXTERNAL] == "no positive image (0 of 90)"


def test_weighted_statistics_agree_with_scikit_learn():
    rng = np.random.default_rng(3)
    y = rng.random(200) < 0.3
    score = np.round(rng.random(200) + 0.4 * y, 2)               # many ties
    for w in (rng.integers(0, 4, 200), rng.random(200)):
        assert B.ap_statistic(y, score)(w) == pytest.approx(average_precision_score(y, score, sample_weight=w),
                                                            abs=1e-12)
    findings = np.array(["a"] * 50 + ["b"] * 150)
    w = XT.mix_weights(findings, np.array(["a"] * 30 + ["b"] * 30))
    assert w[0] == pytest.approx(0.5 / 0.25) and w[-1] == pytest.approx(0.5 / 0.75)
    assert XT.mix_weights(findings, np.array(["a", "c"])) is None
    rel = XT.reliability(y, np.clip(score, 0, 1), 5)
    assert sum(pt["n"] for pt in rel["points"]) == 200 and 0 <= rel["ece"] <= 1


def test_preprocessing_is_cached_by_file_content_and_recipe(tmp_path):
    files = sorted((SAMPLE_KERMANY / "train" / "NORMAL").glob("*.jpeg"))[:4]
    frame = pd.DataFrame({"path": [f.name for f in files], "file": [str(f) for f in files]})
    recipe = Recipe(size=32, percentiles=(1.0, 95.0), channels=("raw",))
    images, state, reused = XI.prepare_images(frame, recipe, tmp_path / "cache", show=False)
    assert reused == 0 and (state["status"] == "ok").all()
    np.testing.assert_array_equal(images[2], prepare(load_grey(files[2]), recipe))        # predict's input
    again, state2, reused = XI.prepare_images(frame.iloc[::-1].reset_index(drop=True), recipe, tmp_path / "cache",
                                             show=False)
    assert reused == 4
    np.testing.assert_array_equal(again[::-1], images)
    _, _, reused = XI.prepare_images(frame, Recipe(size=48, percentiles=(1.0, 95.0), channels=("raw",)),
                                    tmp_path / "cache", show=False)
    assert reused == 0                                          # another recipe: computed again


def test_off_by_default_writes_off_outputs(params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert params["external"]["sources"] == []
    result = XR.run_stage(params, show=False)
    assert result["status"] == "off"
    assert json.loads((tmp_path / XR.METRICS_JSON).read_text())["status"] == "off"
    assert "Off:" in (tmp_path / XR.METRICS_MD).read_text()
    assert (tmp_path / XM.PLOT).is_file() and (tmp_path / XS.OUT_DIR).is_dir()


def test_model_card_renders_with_missing_inputs(params, tmp_path):
    card = model_card.build(params, tmp_path)
    for text in ("## Intended use", "Research only", "not found: run `dvc repro split`",
                 "not found: run `dvc repro evaluate`", "not found: run `dvc repro external`",
                 "not found: run `dvc repro audit`", "## Known failure modes", "Source confound",
                 "not found: run `dvc repro index`", "torchxrayvision"):
        assert text in card, text
    # some inputs present: an external stage that was off, a shortcut audit with its table
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "external.json").write_text(json.dumps({"status": "off", "reason": "none listed"}))
    (tmp_path / "metrics" / "shortcut_audit.md").write_text("### Audit title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nmore\n")
    card = model_card.build(params, tmp_path)
    assert "No external evaluation in this run (none listed)" in card
    assert "**Audit title**\n\n| a | b |\n|---|---|\n| 1 | 2 |" in card
    # the report stage puts it beside README.md, in the same atomic write
    report = reporting.build(params, tmp_path)
    report.files[model_card.CARD] = card
    report.write(tmp_path / "report")
    assert (tmp_path / "report" / model_card.CARD).read_text() == card
    assert "[model_card.md](model_card.md)" in (tmp_path / "report" / "README.md").read_text()


@pytest.mark.parametrize("compare_with", [None, "kermany"])
def test_markdown_shows_chance_cis_and_the_reason_a_label_is_not_scored(compare_with):
    internal, external = _synthetic(120, 0), _synthetic(90, 1, shift=0.5)
    sets = {XT.INTERNAL: internal, XT.EXTERNAL: external}
    diffs = [(XT.EXTERNAL, XT.INTERNAL)]
    if compare_with:
        sets[XT.SAME] = internal
        sets[XT.MIX] = XT.Scored(external.y, external.prob, external.pred, external.groups, np.full(90, 2.0))
        diffs = [(XT.EXTERNAL, XT.SAME), (XT.MIX, XT.SAME)]
    labels = {n: XT.score_label(sets, j, STATS, 10, diffs) for j, n in enumerate(["covid19", "healthy"])}
    source = {"note": "same hospital", "compare_with": compare_with, "max_images_per_class": None,
              "excluded": {"patients": 2, "images": 3}, "unparsed": [], "unreadable": [],
              "images": {"listed": 95, "scored": 90, "patients": 45, "capped": 0, "by_finding": "a 90"},
              "disjoint": {"shared_patients": 0, "shared_files": 0, "pixel_identical": 0},
              "compare_mix": "a 120", "mix_weights": {"a": 2.0} if compare_with else None,
              "models": {"ensemble": {"labels": labels}}}
    result = {"status": "on", "models": {"ensemble": ["m-f0", "m-f1"]}, "confidence": 0.95, "resamples": 200,
              "calibration_bins": 10, "sources": {"toy": source}, "seconds": 1.0, "runtime": {"cpu": "x"}}
    text = XM.markdown(result)
    est = labels["covid19"]["sets"][XT.EXTERNAL]["auroc"]
    assert f"{est['estimate']:.3f} [{est['low']:.3f}, {est['high']:.3f}]" in text
    assert "AUROC 0.5" in text and "same hospital" in text
    assert "healthy: no positive image (0 of 90)" in text
    assert ("internal test, kermany part" in text) == bool(compare_with)


def _source_with_copies(tmp_path, raw, index_frame) -> tuple[Path, dict]:
    """A Kermany-style source of three new patient ids: a JPEG re-encoded copy of a study image, a mirrored
    and re-encoded copy of another, and a film of no study image (synthetic)."""
    from PIL import Image

    folder = tmp_path / "source" / "train" / "NORMAL"
    folder.mkdir(parents=True)
    covid = index_frame[index_frame["source"] != "kermany"]["path"].tolist()
    Image.open(raw / covid[3]).convert("L").save(folder / "IM-9001-0001.jpeg", quality=75)
    Image.open(raw / covid[7]).convert("L").transpose(Image.FLIP_LEFT_RIGHT).save(folder / "IM-9002-0001.jpeg",
                                                                                 quality=80)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:300, 0:260]
    fresh = 120 + 60 * np.sin(xx / 17.0) * np.cos(yy / 23.0) + rng.normal(0, 25, xx.shape)
    Image.fromarray(np.clip(fresh, 0, 255).astype(np.uint8)).save(folder / "IM-9003-0001.jpeg")
    return tmp_path / "source", {"IM-9001-0001.jpeg": covid[3], "IM-9002-0001.jpeg": covid[7]}


def test_a_reencoded_or_mirrored_copy_of_a_study_image_is_not_external(params, table, raw, index_frame, tmp_path,
                                                                       monkeypatch):
    """JPEG re-encoded (and mirrored) copies of study images under new patient ids: the stage refuses them
    before any model loads, or (exclude_study_patients) drops them and counts them; only the fresh film stays."""
    from cxrbench.data import copies, dedupe

    mirror, originals = _source_with_copies(tmp_path, raw, index_frame)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw").symlink_to(raw)
    index_frame.to_csv(tmp_path / "data" / "index.csv", index=False)
    with pytest.raises(XS.OverlapError, match=r"2 image\(s\) are copies of study images.*IM-9001-0001.jpeg ~ "
                                             rf"{originals['IM-9001-0001.jpeg']}"):
        XR.run_stage(_params(params, source=None, mirror=str(mirror), exclude_study_patients=False),
                     device="cpu", show=False)

    src = _source(params, source=None, mirror=str(mirror))
    frame, _ = XS.list_images(src, *XS.source_root(src), table)
    p = {**dedupe.validate(params), **copies.validate(params)}
    kept, found = XO.separate_copies(frame, index_frame, raw, src, p)
    assert [Path(f).name for f in kept["file"]] == ["IM-9003-0001.jpeg"]
    assert found["copies"] == found["images"] == found["patients"] == 2
    assert {Path(c["path"]).name: c["study_path"] for c in found["pairs"]} == originals


def shifted(n: int, seed: int, offset: float):
    """A label whose probabilities separate the classes around 0.5 + ``offset`` (a site whose images all
    score ``offset`` higher: the validation cut 0.5 then calls nearly everyone positive)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(int)
    prob = np.clip(0.5 + offset + 0.15 * (2 * y - 1) + rng.normal(0, 0.07, n), 0, 1)
    return y, prob, np.array([f"p{i // 2}" for i in range(n)])


def test_youden_cut_is_the_best_cut_by_brute_force():
    y, prob, _ = shifted(80, 4, 0.0)
    cut = XT.youden_cut(y, prob)
    j = lambda c: (prob[y == 1] >= c).mean() + (prob[y == 0] < c).mean() - 1     # noqa: E731
    assert j(cut) == pytest.approx(max(j(c) for c in np.unique(prob)), abs=1e-12)
    assert XT.youden_cut(np.ones(5), np.linspace(0, 1, 5)) is None


def test_youden_cut_equals_scikit_learns_roc_curve_to_the_bit():
    """The cut from scikit-learn's own ROC points (what this function computed before it took them apart),
    on scores with many ties, a perfect separation and an inverted one."""
    from sklearn.metrics import roc_curve

    def sklearn_cut(y, prob):
        fpr, tpr, thr = roc_curve(y, prob, drop_intermediate=False)
        j = tpr - fpr
        return float(min(1.0, thr[np.flatnonzero(j == j.max())[0]]))
    rng = np.random.default_rng(3)
    cases = [(np.r_[0, 0, 1, 1], np.r_[0.1, 0.2, 0.8, 0.9]), (np.r_[1, 1, 0, 0], np.r_[0.1, 0.2, 0.8, 0.9])]
    for _ in range(200):
        n = int(rng.integers(3, 60))
        y = (rng.random(n) < 0.4).astype(int)
        y[0], y[1] = 0, 1
        cases.append((y, np.round(rng.random(n), int(rng.integers(1, 4)))))
    for y, prob in cases:
        assert XT.youden_cut(y, prob) == sklearn_cut(y, prob)
    with pytest.raises(ValueError, match="finite"):
        XT.youden_cut(np.r_[0, 1], np.r_[0.2, np.nan])


def test_own_cut_recovers_the_decisions_a_shift_broke():
    y, prob, groups = shifted(200, 5, 0.25)            # known shift: +0.25 on every image
    at_validation = (prob >= 0.5)
    spec_validation = 1 - at_validation[y == 0].mean()
    assert spec_validation < 0.3                        # the validation cut calls most negatives positive
    out = XT.own_cut(y, prob, (0.5, "the model's validation cut"), groups, STATS)
    assert out["status"] == "ok"
    assert out["shift"] == pytest.approx(out["cut"] - 0.5) and 0.15 < out["shift"] < 0.35   # moved by ~ +0.25
    assert out["specificity"]["estimate"] > 0.85 and out["sensitivity"]["estimate"] > 0.85
    for m in ("sensitivity", "specificity"):
        assert out[m]["low"] <= out[m]["estimate"] <= out[m]["high"]
    assert XT.validation_cut([np.array([0.4, 0.2]), np.array([0.6, 0.3])], 0)[0] == pytest.approx(0.5)
    assert XT.validation_cut([np.array([0.4, 0.2])], 1) == (0.2, "the model's validation cut")


def test_own_cut_intervals_follow_stats_method():
    """The own cut's sensitivity and specificity CIs use stats.method like every other interval of the stage;
    at the bootstrap's defaults they are what a section without method / min_valid_share gives."""
    rng = np.random.default_rng(7)
    y = rng.random(120) < 0.5
    prob = np.clip(0.5 + 0.1 * (2 * y - 1) + rng.normal(0, 0.2, 120), 0, 1)      # overlapping: rates near 0.7
    groups = np.array([f"p{i // 2}" for i in range(120)])
    cut = (0.5, "the model's validation cut")
    default = XT.own_cut(y, prob, cut, groups, STATS)
    assert XT.own_cut(y, prob, cut, groups, {**STATS, "method": B.DEFAULT_METHOD,
                                             "min_valid_share": B.DEFAULT_MIN_VALID}) == default
    pct = XT.own_cut(y, prob, cut, groups, {**STATS, "method": "percentile"})
    for m in ("sensitivity", "specificity"):
        assert pct[m]["estimate"] == default[m]["estimate"]
        assert (pct[m]["low"], pct[m]["high"]) != (default[m]["low"], default[m]["high"]), m


def test_markdown_reports_decisions_at_both_cuts():
    internal, external = _synthetic(120, 0), _synthetic(90, 1, shift=0.5)
    labels = {n: XT.score_label({XT.INTERNAL: internal, XT.EXTERNAL: external}, j, STATS, 10,
                                [(XT.EXTERNAL, XT.INTERNAL)]) for j, n in enumerate(["covid19", "healthy"])}
    labels["covid19"]["sets"][XT.EXTERNAL]["own_cut"] = XT.own_cut(
        external.y[:, 0], external.prob[:, 0], (0.5, "the model's validation cut"), external.groups, STATS)
    source = {"note": "", "compare_with": None, "max_images_per_class": None,
              "excluded": {"patients": 0, "images": 0}, "unparsed": [], "unreadable": [],
              "images": {"listed": 90, "scored": 90, "patients": 45, "capped": 0, "by_finding": "a 90"},
              "disjoint": {"shared_patients": 0, "shared_files": 0, "pixel_identical": 0},
              "compare_mix": None, "mix_weights": None, "models": {"resnet18:0": {"labels": labels}}}
    result = {"status": "on", "models": {"resnet18:0": ["resnet18-f0"]}, "confidence": 0.95, "resamples": 200,
              "calibration_bins": 10, "sources": {"toy": source}, "seconds": 1.0, "runtime": {"cpu": "x"}}
    text = XM.markdown(result)
    own = labels["covid19"]["sets"][XT.EXTERNAL]["own_cut"]
    assert "95% CI, expanded percentile bootstrap," in text                 # no method recorded: the default
    assert "95% CI, BCa bootstrap," in XM.markdown({**result, "method": "bca"})     # the run's stats.method
    assert "external Youden cut" in text and f"{own['cut']:.3f}" in text and f"{own['shift']:+.3f}" in text
    assert B.format_ci(own["specificity"]) in text


def test_model_card_says_how_far_the_cuts_moved():
    y, prob, groups = shifted(120, 6, 0.25)
    own = XT.own_cut(y, prob, (0.5, "the model's validation cut"), groups, STATS)
    ext = {"sensitivity": {"estimate": 1.0, "low": 1.0, "high": 1.0},
           "specificity": {"estimate": 0.1, "low": 0.05, "high": 0.2}, "own_cut": own}
    src = {"models": {"resnet18:0": {"labels": {"healthy": {"sets": {"external": ext}},
                                                "covid19": {"sets": {}}}}}}
    lines = "\n".join(model_card.cut_shift_lines(src))
    assert f"moved by up to {own['shift']:+.3f} (healthy, `resnet18:0`)" in lines
    assert "0.100 [0.050, 0.200] → " + B.format_ci(own["specificity"]) in lines
    assert model_card.cut_shift_lines({"models": {}}) == []


def test_a_multiclass_run_is_refused_naming_the_params_before_any_source_is_read(params, tmp_path, monkeypatch):
    """External validation scores labels at validation cuts; a multiclass run has neither: an error naming
    external.sources and train.task, raised before the index, a source or a model is read."""
    monkeypatch.chdir(tmp_path)                                 # no data/index.csv, no models here
    p = _params(params)
    p["train"].update(task="multiclass", classes="three_class", pos_weight=False)
    with pytest.raises(XS.ExternalError, match=r"external.sources.*train.task is multiclass.*external.sources: \[\]"):
        XR.run_stage(p, device="cpu", show=False)
    p["external"]["sources"] = []
    assert XR.run_stage(p, show=False)["status"] == "off"        # off stays off
