"""The seed papers' recipes as profiles: every param they set passes the checks of the stages that read it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrbench.classify import ensemble as EN
from cxrbench.classify import hierarchy as H
from cxrbench.classify import evaluation as E
from cxrbench.classify import multiclass as MC
from cxrbench.classify import schedules as S
from cxrbench.classify import task as TK
from cxrbench.classify import training as T
from cxrbench.core import params as P
from cxrbench.data.preprocess import Recipe
from cxrbench.explain import randomisation as R
from cxrbench.explain import runner
from cxrbench.explain.metrics import scoring
from cxrbench.ops import profiles
from cxrbench.studies import audit

ROOT = Path(__file__).resolve().parents[2]
SEED_PROFILES = ["deepcovidexplainer", "deepcovidexplainer-cpu", "covidcxnet", "covidcxnet-cpu",
                 "covidcxnet-hierarchy", "covidcxnet-hierarchy-cpu", "cxrnet", "cxrnet-cpu"]


@pytest.mark.parametrize("name", SEED_PROFILES)
def test_seed_profiles_pass_every_stage_check(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    over = profiles.read_profile(name)
    base = P.load(ROOT / "params.yaml")
    profiles.check_keys(over, base, name)
    over = {k: v for k, v in over.items() if not k.endswith(".mirror")}   # the mirror is not on every machine
    p = P.with_overrides(base, over)
    tp = T.validate(p)
    t = TK.validate(p)
    assert t["task"] == "multiclass" and set(t["classes"]) <= set(p["labels"]["names"])   # explainable by name
    assert set(p["explain"]["targets"]) <= set(t["classes"])
    Recipe.from_params(p)
    runner.validate(p)
    E.validate(p)
    EN.validate(p, len(tp["backbones"]))
    MC.validate(p)
    S.validate(tp)
    R.validate(p)
    scoring.validate(p)
    audit.validate(p)
    for b in tp["backbones"]:
        assert any(b.startswith(k) for k in p["explain"]["target_layers"]), b  # a CAM layer for each network
    if name.startswith("deepcovidexplainer"):
        assert p["preprocess"]["channels"] == [["histeq", "unsharp"]] and tp["snapshots"]
        assert tp["schedule"]["name"] == "cosine_restarts"
    elif name.startswith("cxrnet"):
        # seed 003: CLAHE, lungs only, the 4 classes of Table I, Adam 1e-4 -> 1e-6, 80/20 by patient, its own map
        assert p["preprocess"]["channels"] == ["clahe"] and tp["input_mode"] == "lungs_segmented"
        assert list(t["classes"]) == ["covid19", "viral", "bacterial", "healthy"]
        assert (tp["lr"], S.validate(tp)["schedule"]) == (0.0001, {"name": "cosine", "min_lr": 1e-6})
        assert p["split"]["test_fraction"] == 0.2 and all(b.startswith("cxrnet_") for b in tp["backbones"])
        assert {"saliency", "gradcam", "cxrnet_decoder"} <= set(p["explain"]["methods"])
    else:
        assert p["preprocess"]["channels"] == ["raw", "beasf", "clahe"] and tp["head"]["kind"] == "fc"
        assert "lime" in p["explain"]["methods"]
        # the explain stages read whole images: a lung-cropped model's maps would live in cropped coordinates
        assert p["train"]["input_mode"] == "full"
    if "hierarchy" in name:                                  # Table 5: normal vs pneumonia, then CP vs CAP
        assert H.validate(p, t["classes"]) == ["covid19", "pneumonia"] and list(t["classes"])[2] == "healthy"
        assert "lrp" not in p["explain"]["methods"]          # LRP needs one network


def test_the_cpu_variants_keep_the_recipe_of_their_full_profile():
    for name in ("deepcovidexplainer", "covidcxnet", "covidcxnet-hierarchy", "cxrnet"):
        full, cpu = profiles.read_profile(name, ROOT), profiles.read_profile(f"{name}-cpu", ROOT)
        for key in ("preprocess.channels", "train.task", "train.classes", "train.optimizer", "train.snapshots",
                    "train.head.kind", "train.head.width", "train.head.dropout", "train.label_smoothing",
                    "train.input_mode", "ensemble.combine", "ensemble.snapshots", "preprocess.beasf_gamma",
                    "train.hierarchy"):
            assert full.get(key) == cpu.get(key), (name, key)
    full, cpu = profiles.read_profile("cxrnet", ROOT), profiles.read_profile("cxrnet-cpu", ROOT)
    for key in ("train.lr", "train.optimizer", "train.schedule", "split.test_fraction", "explain.occlusion_baseline",
                "train.pretrained"):
        assert full.get(key) == cpu.get(key), key


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deepcovidexplainer-cpu", "covidcxnet-cpu", "covidcxnet-hierarchy-cpu", "cxrnet-cpu"])
def test_seed_cpu_profiles_train_on_real_images(name, raw, index_frame, tmp_path):
    """Each CPU profile's recipe, unchanged but for size: its preprocessing on real X-rays of the embedded
    sample, its task, classes, optimiser, schedule, snapshots and head, each backbone for one epoch of a few
    batches (full input instead of the lung crop, whose masks come from the segment stage)."""
    import numpy as np

    from cxrbench.data.images import load_grey
    from cxrbench.data.indexing import label_matrix
    from cxrbench.data.preprocess import prepare

    over = {k: v for k, v in profiles.read_profile(name, ROOT).items() if not k.endswith(".mirror")}
    p = P.with_overrides(P.load(ROOT / "params.yaml"), over)
    p["train"].update(epochs=2, batch_size=4, input_mode="full")
    if p["train"]["schedule"]["name"] == "cosine_restarts":
        p["train"]["schedule"]["cycles"] = 2
    p["preprocess"]["size"] = 64
    names = p["labels"]["names"]
    t = TK.validate(p)
    onehot, member = TK.class_targets(label_matrix(index_frame, names), names, t["classes"])
    rows = []
    for c in range(onehot.shape[1]):                          # 6 images of each class
        rows += list(np.flatnonzero(member & (onehot[:, c] == 1))[:6])
    recipe = Recipe.from_params(p)
    images = np.stack([prepare(load_grey(raw / index_frame["path"].iloc[i]), recipe) for i in rows])
    assert images.shape[1] == len(recipe.channels) and images.std() > 0
    y = onehot[rows]
    train_rows, val_rows = np.arange(0, len(rows), 2), np.arange(1, len(rows), 2)
    for backbone in p["train"]["backbones"]:
        cfg = T.config_for(p, backbone, p["train"]["folds"][0], {"channels": list(recipe.channels), "size": 64})
        s = T.train(cfg, images, y, train_rows, val_rows, tmp_path / backbone, progress=False, device="cpu")
        assert s["complete"] and np.isfinite(s["best_val_loss"]), (name, backbone)
        if cfg.snapshots:
            assert (tmp_path / backbone / S.snapshot_file(1)).is_file()
