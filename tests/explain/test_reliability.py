"""The reliability stage end to end on the embedded sample, and its summaries on cases derivable by hand."""

import copy
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrbench.core.params import ParamError
from cxrbench.explain import reliability as RL

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
STATS = {"resamples": 200, "seed": 0, "confidence": 0.95}


def test_repeatability_flags_a_method_that_changes_more_between_models_than_under_randomisation():
    """Method `a`: the two models' maps are the same, the randomised model's independent: repeat 1, not flagged.
    Method `b`: the two models' maps are independent noise, the randomised one equals the trained one: flagged."""
    rng = np.random.default_rng(0)
    n = 6
    a1, noise = rng.random((n, 16, 16)), rng.random((n, 16, 16))
    keep = np.ones((n, 16, 16), bool)
    rows = RL.repeatability_rows({"a": a1, "b": a1}, {"a": a1.copy(), "b": noise}, {"a": noise[:4], "b": a1[:4]},
                                 keep, keep, cam_side=None)
    frame = pd.DataFrame(rows)
    frame["group"] = [f"p{i % 3}" for i in frame["image"]]
    out = RL.summarise_repeatability(frame, STATS)
    assert out["a"]["spearman_abs"]["repeat"]["mean"] == pytest.approx(1.0)
    assert out["a"]["spearman_abs"]["flag"] is False
    assert out["b"]["spearman_abs"]["randomised"]["mean"] == pytest.approx(1.0) and out["b"]["spearman_abs"]["flag"]
    assert out["a"]["ssim"]["repeat"]["n"] == n and out["a"]["ssim"]["randomised"]["n"] == 4


def test_the_robustness_intervals_follow_stats_method():
    """Each mean's CI over patients is group_ci's with the stats section's method (what the stage passes); at
    the bootstrap's defaults, what a section without method / min_valid_share gives."""
    from cxrbench.core import bootstrap as B

    rng = np.random.default_rng(2)
    values, groups = rng.exponential(1.0, 30), np.array([f"p{i % 10}" for i in range(30)])
    frame = pd.DataFrame({"method": "a", "metric": "infidelity", "status": "ok", "value": values, "group": groups})
    for method in ("percentile", "expanded_percentile"):
        e = RL.summarise(frame, {**STATS, "method": method})["a"]["infidelity"]
        want = B.group_ci(lambda idx: float(values[idx].mean()), groups, n_boot=200, seed=0, method=method)
        assert (e["low"], e["high"]) == (want["low"], want["high"]), method
    assert RL.summarise(frame, {**STATS, "method": "percentile"}) != RL.summarise(frame, STATS)
    full = {**STATS, "method": B.DEFAULT_METHOD, "min_valid_share": B.DEFAULT_MIN_VALID}
    assert RL.summarise(frame, full) == RL.summarise(frame, STATS)


def test_cams_are_compared_at_the_feature_map_resolution():
    """Two Grad-CAMs that are the same 2 x 2 map upsampled, plus a smooth interpolation difference within each
    cell: at 32 px their Spearman is below 1, at the 2 x 2 grid it is 1."""
    small = np.array([[[1.0, 2.0], [3.0, 4.0]]])
    a = np.kron(small, np.ones((16, 16)))
    b = a + np.linspace(0, 0.5, 32)[None, None, :] * (np.arange(32) % 16 == 3)[None, None, :]
    keep = np.ones((1, 32, 32), bool)
    full = pd.DataFrame(RL.repeatability_rows({"gradcam": a}, {"gradcam": b}, {}, keep, keep, cam_side=None))
    grid = pd.DataFrame(RL.repeatability_rows({"gradcam": a}, {"gradcam": b}, {}, keep, keep, cam_side=2))
    sp = lambda f: f[(f["metric"] == "spearman_abs")]["value"].iloc[0]  # noqa: E731
    assert sp(full) < 0.999 and sp(grid) == pytest.approx(1.0)
    assert grid[grid["metric"] == "ssim"]["status"].iloc[0] == "too_small"


def test_validate_names_the_key(params):
    p = copy.deepcopy(params)
    p["reliability"]["sensitivity_methods"] = ["no_such_method"]
    with pytest.raises(ParamError, match="reliability.sensitivity_methods"):
        RL.validate(p)
    p = copy.deepcopy(params)
    p["reliability"]["agreement_metrics"] = ["aoppc_pixels_morf", "made_up"]
    with pytest.raises(ParamError, match="reliability.agreement_metrics"):
        RL.validate(p)


def _stage(name):
    script = Path(__file__).resolve().parents[2] / f"stages/{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_stage", script)
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    return stage


def test_reliability_stage_on_the_sample(tmp_path, monkeypatch, sample_data, params):
    """stages/reliability.py on two tiny timm classifiers (folds 0 and 1) whose maps the attribute stage's code
    stored for the same 4 images: every output is written, each method and control has both robustness
    metrics on each model's images, the agreement covers the methods with every metric, the repeatability
    compares folds 0 and 1, and the report section includes the table."""
    import yaml

    from cxrbench.classify import identity
    from cxrbench.classify import models as M
    from cxrbench.core import checkpoints
    from cxrbench.data.cache import Cache
    from cxrbench.data.confounder import PLAN_COLUMNS
    from cxrbench.explain import runner as A
    from cxrbench.explain import store

    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    for f in ("index.csv", "splits.csv"):
        shutil.copy(sample_data / f, run / "data" / f)
    shutil.copytree(sample_data / "cache", run / "data" / "cache")
    cache = Cache(sample_data / "cache", sample_data / "index.csv")
    labels = list(params["labels"]["names"])
    side = int(cache.images.shape[-1])
    p = copy.deepcopy(params)
    p["train"].update(backbones=["test_resnet"], folds=[0, 1],
                      known_backbones=p["train"]["known_backbones"] + ["test_resnet"])
    p["explain"]["target_layers"]["test_resnet"] = "layer4"
    methods = ["saliency", "gradcam"]
    p["explain"]["methods"] = methods
    p["reliability"].update(images=3, sensitivity_samples=2, infidelity_samples=4, methods=None,
                            sensitivity_methods=None, resilience_methods=["saliency"])
    p["aoppc"]["region"].update(patch=0.125, steps=4)
    p["aoppc"]["reference"] = {}
    p["stats"]["resamples"] = 200
    plan = pd.DataFrame({c: 0 for c in PLAN_COLUMNS}, index=range(len(cache.index)))
    plan["path"], plan["tagged"], plan["target"], plan["stratum"] = cache.index["path"], False, False, ""
    (run / "data/confounder").mkdir()
    plan.to_csv(run / "data/confounder/plan.csv", index=False)
    (run / "data/attributions").mkdir()
    rows = np.arange(4)
    target = np.array([labels.index("covid19")] * 4)
    settings = A.validate(p)
    for fold in (0, 1):
        torch.manual_seed(fold)
        model = M.create_model("test_resnet", len(labels), cache.images.shape[1], "none", input_size=32).eval()
        meta = M.classifier_meta("test_resnet", labels, cache.images.shape[1], 32, side, "full", fold)
        M.save_classifier(run / f"models/classifier/test_resnet/fold{fold}/best.pt", model, meta)
        checkpoints.mark_finished([run / f"models/classifier/test_resnet/fold{fold}/best.pt"],
                                  identity.expected(p, "test_resnet", fold, root=run))
        x = A.classifier_input(cache.images[rows], meta, "cpu", None)
        got = A.attribute_all(methods, model, x, torch.as_tensor(target), settings, "test_resnet", log=lambda m: None)
        rnd = A.attribute_all(methods, M.create_model("test_resnet", len(labels), cache.images.shape[1], "none",
                                                      input_size=32).eval(), x[:2], torch.as_tensor(target[:2]),
                              settings, "test_resnet", log=lambda m: None)
        paths = cache.index["path"].iloc[rows].tolist()
        store.save(run / f"data/attributions/test_resnet-f{fold}.npz",
                   store.arrays(rows, paths, target, ["covid19"] * 4, np.ones((4, side, side)), got.maps, rnd.maps))
        (run / "metrics/attribute").mkdir(parents=True, exist_ok=True)
        (run / f"metrics/attribute/test_resnet-f{fold}.json").write_text(json.dumps(
            {"methods": {m: {"ok": True} for m in methods}}))
    (run / "metrics/eval").mkdir()
    (run / "metrics/eval/test_resnet-f0.json").write_text(json.dumps({"test": {"auroc": {"covid19": 0.8}}}))
    (run / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    monkeypatch.chdir(run)
    monkeypatch.setenv("CXRBENCH_THREADS", "1")
    _stage("aoppc").main([])                               # the per-image scores the agreement reads
    scored = pd.read_csv("metrics/aoppc_per_image.csv")
    assert set(scored["method"]) == set(methods) | {"random", "edge", "lung_area"}    # lung_area: lung_mass control
    assert set(p["reliability"]["agreement_metrics"][:6]) <= set(scored["metric"])
    _stage("reliability").main([])

    out = json.loads(Path("metrics/reliability.json").read_text())
    assert out["definition"]["ci"].startswith("expanded percentile bootstrap")     # stats.method, named
    per = pd.read_csv("metrics/reliability_per_image.csv")
    for m in methods + ["random", "edge"]:
        for metric in ("sensitivity_max", "infidelity"):
            e = out["robustness"][m][metric]
            cell = per[(per["method"] == m) & (per["metric"] == metric)]
            assert len(cell) == 6, (m, metric)                             # 3 images x 2 folds, scored or not
            assert e["n"] == (cell["status"] == "ok").sum() and e["n"] + sum(e["not_scored"].values()) == 6
            assert (m == "gradcam" or e["n"] == 6) and np.isfinite(e["mean"])
    assert out["robustness"]["random"]["sensitivity_max"]["mean"] > out["robustness"]["edge"]["sensitivity_max"]["mean"]
    # the agreement ranks every explained image (4 x 2 folds, less degenerate maps) by the 6 metrics that cover
    # them all; robustness (3 images per model) is left out there, with its count, and ranked beside it on its
    # own images
    ag, wr = out["agreement"], out["agreement_with_robustness"]
    assert ag["methods"] == methods + ["random", "edge"] and wr["methods"] == ag["methods"]
    assert ag["metrics_on_fewer_items"] == ["sensitivity_max", "infidelity"] and len(ag["tau"]) == 6 * 5 // 2
    assert ag["metrics_not_scored"]["infidelity"].startswith("scored on 6 of the 8 items")
    assert ag["items"] > wr["items"] == \
        per[(per["method"] == "gradcam") & (per["metric"] == "infidelity")]["status"].eq("ok").sum()
    assert len(wr["tau"]) == 8 * 7 // 2
    rep = out["repeatability"]
    assert set(rep) == set(methods)
    assert out["repeatability_models"]["test_resnet f0 vs f1"]["test_auroc"] == [0.8, None]
    assert rep["saliency"]["spearman_abs"]["repeat"]["n"] == 4
    assert rep["saliency"]["spearman_abs"]["randomised"]["n"] == 2
    assert set(per["metric"]) == {"sensitivity_max", "infidelity"}
    assert (per["value"].notna() == (per["status"] == "ok")).all()
    res = out["resilience"]
    assert set(res) == {"infidelity", "aoppc_pixels_morf", "aoppc_region_blur_morf"}
    for metric, e in res.items():
        for test in ("input_noise", "model_noise"):
            assert e[test]["n"] + sum(e[test]["not_counted"].values()) == 6, (metric, test)   # 3 images x 2 folds
    md = Path("metrics/reliability.md").read_text()
    assert "| saliency |" in md and "Kendall" in md and "Repeatability" in md and "MetaQuantus" in md
    assert "with robustness (its images only)" in md
    assert "0.800, not evaluated" in md


def test_resilience_counts_images_by_what_the_prediction_did():
    """A metric that is the map's mean, for a gradient x input map: tolerance 1 counts every image under input
    noise and none under model noise (no change exceeds 1); tolerance 0 the reverse. The weight-perturbed copy is
    seeded and leaves the model untouched."""
    import dataclasses

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Flatten(),
                                torch.nn.Linear(2 * 8 * 8, 3)).eval()
    before = [p.clone() for p in model.parameters()]
    a, b = RL.perturbed_model(model, 0.1, 3), RL.perturbed_model(model, 0.1, 3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    x, t = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])

    def explainer(net, method):
        def f(inp, tg):
            inp = inp.detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(net(inp).gather(1, tg.view(-1, 1)).sum(), inp)
            return (g * inp)[:, 0].detach()
        return f
    fns = {"mean": lambda net, xx, m, tg: m.reshape(len(m), -1).mean(1)}
    base = RL.Settings(images=4, methods=["m"], sensitivity_methods=[], radius=0.02, sensitivity_samples=2, noise=0.1,
                       infidelity_samples=2, seed=0, agreement_metrics=[], resilience_methods=["m"],
                       resilience_metrics=["infidelity"], input_noise=0.01, model_noise=0.5, prob_tolerance=1.0)
    rows = pd.DataFrame(RL.resilience_rows(base, model, x, t, explainer, fns))
    assert (rows[rows["test"] == "input_noise"]["status"] == "ok").all()
    assert (rows[rows["test"] == "model_noise"]["status"] == "prediction_unchanged").all()
    rows = pd.DataFrame(RL.resilience_rows(dataclasses.replace(base, prob_tolerance=0.0), model, x, t, explainer, fns))
    assert (rows[rows["test"] == "input_noise"]["status"] == "prediction_changed").all()
    assert (rows[rows["test"] == "model_noise"]["status"] == "ok").all() and (rows["delta"] > 0).all()
    rows["group"] = rows["image"].astype(str)
    out = RL.summarise_resilience(rows, STATS)
    assert out["mean"]["model_noise"]["n"] == 4
    assert out["mean"]["input_noise"]["not_counted"] == {"prediction_changed": 4}


def test_support_is_where_the_input_is_not_zero_at_the_maps_resolution():
    x = np.zeros((1, 2, 4, 4), np.float32)
    x[0, 1, :, 2:] = 0.3                                   # one channel non-zero on the right half
    x[0, 0, 0, 1] = 0.5                                    # one stray pixel: a minority of its 2 x 2 cell
    assert np.array_equal(RL.support(x, 4)[0], (x[0] != 0).any(0))
    assert np.array_equal(RL.support(x, 2)[0], [[False, True], [False, True]])
