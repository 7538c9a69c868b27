"""Model-parameter randomisation (Adebayo et al. 2018): the cascade, its RNG hygiene, the null reference and
the random-logit check (cxrbench/explain/randomisation.py, cxrbench/explanation_metrics.randomise_weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from cxrbench.explain.metrics import perturbation as EM


def _rng_state():
    return torch.get_rng_state().clone()


def test_randomise_weights_leaves_the_global_rng_alone_and_keeps_its_values():
    """Same values as the old ``torch.manual_seed(seed)`` + resets, but torch's global state is unchanged."""
    torch.manual_seed(11)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 1, 8, 8))
    before = _rng_state()
    rnd = EM.randomise_weights(model, seed=5)
    assert torch.equal(before, _rng_state())
    torch.manual_seed(5)                                 # what randomise_weights did before: a global reseed
    import copy
    ref = copy.deepcopy(model)
    for mod in ref.modules():
        if hasattr(mod, "reset_parameters"):
            mod.reset_parameters()
    for (k, a), b in zip(rnd.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k
    assert not torch.equal(rnd[0].weight, model[0].weight)


# --- toy model: a structured map that the cascade destroys ----------------------------------------------

from cxrbench.explain import randomisation as R  # noqa: E402
from cxrbench.explain import runner  # noqa: E402
from cxrbench.explain.prepare import prepare_for_attribution  # noqa: E402

SIDE = 24


class Toy(nn.Module):
    """conv -> bn -> relu -> conv -> relu -> fc1 (reads the top-left quadrant only) -> relu -> fc2: its gradient
    maps sit in that quadrant. Re-initialising fc2 changes which hidden units count (the map stays in the
    quadrant: partly similar); re-initialising fc1 too spreads it over the whole image."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc1 = nn.Linear(4 * SIDE * SIDE, 8)
        self.fc2 = nn.Linear(8, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            w = torch.zeros(8, 4, SIDE, SIDE)
            w[:, :, : SIDE // 2, : SIDE // 2] = torch.rand(8, 4, SIDE // 2, SIDE // 2, generator=g) + 0.5
            self.fc1.weight.copy_(w.reshape(8, -1))
            self.bn1.running_mean.fill_(0.1)
            self.bn1.running_var.fill_(2.0)

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc2(torch.relu(self.fc1(h.flatten(1))))


def _inputs(n=6):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, SIDE, SIDE, generator=g), torch.zeros(n, dtype=torch.long)


def _attribute(methods=("saliency", "input_x_gradient")):
    s = runner.Settings(methods=list(methods), steps=8, window=0.25, stride=0.25, interpolate="bilinear",
                        target_layers={}, max_batch=16, memory_fraction=0.5, scorecam_batch=None,
                        lrp_composite="epsilon")

    def run(model, x, target, label):
        prepared, _ = prepare_for_attribution(model, x)
        return runner.run_methods(s.methods, lambda m: runner.make(m, model, prepared, s, 16), x, target,
                                  log=lambda msg: None)
    return run


def test_cascade_groups_of_the_toy_model_top_down_with_the_norm_joined_to_its_conv():
    assert [g.name for g in R.cascade_groups(Toy())] == ["fc2", "fc1", "conv2", "conv1+bn1"]


def test_cascading_randomisation_curve_decreases_on_a_toy_model():
    model = Toy().eval()
    x, target = _inputs()
    other = torch.as_tensor(R.other_labels(target.numpy(), 3, 0))
    rows, status = R.run_checks(model, x, target, other, _attribute(), seed=0, log=lambda m: None)
    import pandas as pd
    f = pd.DataFrame(rows)
    assert status["groups"] == ["fc2", "fc1", "conv2", "conv1+bn1"]
    for method in ("saliency", "input_x_gradient"):
        casc = f[(f["method"] == method) & (f["comparison"] == "cascade")]
        assert (casc["status"] == "compared").all()
        curve = casc.groupby("step")["spearman_abs"].mean().to_numpy()
        ssim = casc.groupby("step")["ssim"].mean().to_numpy()
        assert len(curve) == 5
        np.testing.assert_allclose([curve[0], ssim[0]], [1.0, 1.0], atol=1e-6)   # trained vs itself
        # fc2 randomised: the map stays in the quadrant (|map| ranks close, its pattern less so); fc1 too: gone
        assert curve[0] - 0.01 > curve[1] > curve[2] + 0.3 and ssim[0] - 0.1 > ssim[1] > ssim[2] + 0.1
        assert curve[-1] < 0.3 and ssim[-1] < ssim[0] - 0.3
        for k in range(3, len(curve)):                      # at the floor: no step brings the map back
            assert curve[k] < curve[:k].min() + 0.15
        null = f[(f["method"] == method) & (f["comparison"] == "null")]
        assert len(null) == len(x) and null["spearman_abs"].notna().all()


def test_cascade_leaves_the_global_rng_and_the_model_alone_and_ends_at_full_randomisation():
    model = Toy().eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    before = _rng_state()
    groups = R.cascade_groups(model)
    for k, g, rnd in R.cascade(model, seed=4):
        changed = {n for n, p in rnd.named_parameters() if not torch.equal(p, model.get_parameter(n))}
        top = {f"{m}.{p}" for gg in groups[:k] for m in gg.modules
               for p, _ in model.get_submodule(m).named_parameters()}
        assert changed == top                             # exactly the top k groups are random
        last = {n: v.clone() for n, v in rnd.state_dict().items()}
    assert torch.equal(before, _rng_state())
    for n, v in model.state_dict().items():
        assert torch.equal(v, original[n])
    full0 = R.full_randomisation(model, seed=4, replicate=0)
    full1 = R.full_randomisation(model, seed=4, replicate=1)
    assert torch.equal(before, _rng_state())
    assert all(torch.equal(v, last[n]) for n, v in full0.state_dict().items())
    assert not torch.equal(full0.conv1.weight, full1.conv1.weight)   # the null reference: two other draws
    assert not torch.equal(full0.fc2.weight, full1.fc2.weight)
    assert torch.equal(full0.bn1.running_var, torch.ones(4))         # BatchNorm statistics reset too


def test_null_reference_compares_two_independent_randomisations(monkeypatch):
    """run_checks' null pair: replicate 0 (the cascade's last step) against replicate 1 of the same seed."""
    seen = []
    real = R.full_randomisation

    def spy(model, seed, replicate=0, groups=None):
        seen.append((seed, replicate))
        return real(model, seed, replicate, groups)

    monkeypatch.setattr(R, "full_randomisation", spy)
    model = Toy().eval()
    x, target = _inputs(3)
    maps_by_model = []

    def attribute(m, xx, t, label):
        maps, st = _attribute(("saliency",))(m, xx, t, label)
        maps_by_model.append((label, {n: p.clone() for n, p in m.state_dict().items()}, maps["saliency"]))
        return maps, st

    rows, _ = R.run_checks(model, x, target, target.clone() + 1, attribute, seed=7, log=lambda m: None)
    assert seen == [(7, 1)]
    *_, (label_last, w_last, m_last), (label_null, w_null, m_null) = maps_by_model
    assert "replicate 1" in label_null and "top 4/4" in label_last
    assert not torch.equal(w_last["conv1.weight"], w_null["conv1.weight"])
    null = [r for r in rows if r["comparison"] == "null"]
    expected = R.similarities(m_last, m_null)["spearman_abs"]
    np.testing.assert_allclose([r["spearman_abs"] for r in null], expected)
    assert np.all(np.abs(expected) < 0.999)


def test_random_logit_picks_another_label_seeded():
    target = np.array([0, 1, 2, 0, 1, 2] * 50)
    other = R.other_labels(target, 3, seed=0)
    assert np.all(other != target) and set(other.tolist()) == {0, 1, 2}
    for t in range(3):                                    # both other labels are drawn for each target
        assert set(other[target == t].tolist()) == set(range(3)) - {t}
    np.testing.assert_array_equal(other, R.other_labels(target, 3, seed=0))
    assert not np.array_equal(other, R.other_labels(target, 3, seed=1))
    np.testing.assert_array_equal(R.other_labels(np.zeros(4, int), 2, 5), np.ones(4))
    with pytest.raises(ValueError, match="at least 2 labels"):
        R.other_labels([0], 1, 0)


def test_random_logit_rows_use_the_other_labels_map():
    model = Toy().eval()
    x, target = _inputs(4)
    other = torch.tensor([1, 2, 1, 2])
    calls = []

    def attribute(m, xx, t, label):
        calls.append((label, t.tolist()))
        return _attribute(("saliency",))(m, xx, t, label)

    rows, _ = R.run_checks(model, x, target, other, attribute, seed=0, log=lambda m: None)
    assert calls[0] == ("trained", [0, 0, 0, 0]) and calls[1] == ("trained, other label", [1, 2, 1, 2])
    logit = [r for r in rows if r["comparison"] == "random_logit"]
    assert len(logit) == 4 and all(r["status"] == "compared" for r in logit)
    assert max(r["spearman"] for r in logit) < 0.999     # another label's read-out: another map


def test_degenerate_maps_are_a_counted_status_not_a_number():
    rng = np.random.default_rng(0)
    ref = rng.random((5, 16, 16)).astype(np.float32)
    oth = rng.random((5, 16, 16)).astype(np.float32)
    ref[1] = 0.0                                          # the trained model's map is constant: excluded
    oth[2] = 0.0                                          # the randomised one is constant: passes, no number
    oth[3, 0, 0] = np.nan                                 # non-finite
    sim = R.similarities(ref, oth)
    assert sim["status"].tolist() == ["compared", "reference_degenerate", "changed_constant",
                                      "changed_nonfinite", "compared"]
    for m in R.METRICS:
        assert np.isfinite(sim[m][[0, 4]]).all() and np.isnan(sim[m][[1, 2, 3]]).all()
    import pandas as pd
    rows = [{"comparison": "cascade", "step": s, "layer": "" if s == 0 else "fc", "method": "m", "image": i,
             "status": (sim["status"][i] if s else ("reference_degenerate" if i == 1 else "compared")),
             "backbone": "b", "fold": 0, "group": f"g{i}", **{m: float(sim[m][i]) if s else 1.0 for m in R.METRICS}}
            for s in (0, 1) for i in range(5)]
    out = R.summarise(pd.DataFrame(rows), R.METRICS, n_boot=200, seed=0, confidence=0.95)["m"]["b"]
    full = out["cascade"][1]
    assert full["counts"] == {"compared": 2, "changed_constant": 1, "changed_nonfinite": 1,
                              "reference_degenerate": 1}
    assert full["n"] == 2
    np.testing.assert_allclose(full["spearman_abs"]["estimate"], np.nanmean(sim["spearman_abs"]))
    md = R.markdown({"m": {"b": out}}, R.METRICS, ["m"], 5)
    assert "2 (2 pat.), 1 constant, 1 non-finite, 1 excluded" in md


def test_cascade_order_on_a_timm_resnet18_is_top_down():
    from cxrbench.classify.models import create_model

    model = create_model("resnet18", num_classes=3, in_chans=1, pretrained="none", input_size=32).eval()
    groups = R.cascade_groups(model)
    assert [g.name for g in groups] == ["fc", "layer4", "layer3", "layer2", "layer1", "conv1+bn1"]
    assert groups[-1].modules == ("backbone.conv1", "backbone.bn1")
    first_call = []
    handles = [model.get_submodule(m).register_forward_hook(
        lambda *_, name=g.name: first_call.append(name) if name not in first_call else None)
        for g in groups for m in g.modules]
    with torch.no_grad():
        model(torch.zeros(1, 1, 32, 32))
    for h in handles:
        h.remove()
    assert first_call == [g.name for g in reversed(groups)]      # the cascade runs against the forward order
    _, g1, rnd = next(R.cascade(model, seed=0))
    assert g1.name == "fc" and not torch.equal(rnd.backbone.fc.weight, model.backbone.fc.weight)
    assert torch.equal(rnd.backbone.layer4[1].conv2.weight, model.backbone.layer4[1].conv2.weight)


def test_parameters_outside_any_resettable_module_are_an_error():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)
            self.gain = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return self.conv(x) * self.gain

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Scaled()
            self.fc = nn.Linear(4, 2)

    model = Net()
    with pytest.raises(ValueError, match="no reset_parameters"):
        R.randomise_group(model, R.cascade_groups(model)[1], 0)


def test_validate_checks_params_early(params):
    import copy
    from cxrbench.core.params import ParamError

    p = copy.deepcopy(params)
    s = R.validate(p)
    assert s.methods and set(s.metrics) <= set(R.METRICS)
    p["randomisation"]["methods"] = None
    assert R.validate(p).methods == p["explain"]["methods"]
    p["randomisation"]["methods"] = ["saliency", "kernel_shap"]
    with pytest.raises(ParamError, match="randomisation.methods.*kernel_shap"):
        R.validate(p)
    p["randomisation"]["methods"] = ["saliency"]
    p["randomisation"]["metrics"] = ["pearson"]
    with pytest.raises(ParamError, match="randomisation.metrics"):
        R.validate(p)
    p["randomisation"]["metrics"] = ["ssim"]
    p["randomisation"]["images"] = 0
    with pytest.raises(ParamError, match="randomisation.images"):
        R.validate(p)


# --- the stage, end to end on the sample's cache ----------------------------------------------------------

def test_randomisation_stage_on_the_sample(tmp_path, monkeypatch, sample_data, params):
    """stages/randomisation.py on a tiny timm classifier: the attribute stage's images are read from its npz,
    every output is written, the cascade has one entry per layer group plus the trained model, and the
    counts add up to the images."""
    import copy
    import importlib.util
    import json
    import shutil

    import pandas as pd
    import yaml

    from cxrbench.classify import identity
    from cxrbench.classify import models as M
    from cxrbench.core import checkpoints
    from cxrbench.data.cache import Cache
    from cxrbench.data.confounder import PLAN_COLUMNS

    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    for f in ("index.csv", "splits.csv"):
        shutil.copy(sample_data / f, run / "data" / f)
    shutil.copytree(sample_data / "cache", run / "data" / "cache")
    cache = Cache(sample_data / "cache", sample_data / "index.csv")
    labels = list(params["labels"]["names"])
    torch.manual_seed(0)
    model = M.create_model("test_resnet", len(labels), cache.images.shape[1], "none", input_size=32).eval()
    side = int(cache.images.shape[-1])
    M.save_classifier(run / "models/classifier/test_resnet/fold0/best.pt", model,
                      M.classifier_meta("test_resnet", labels, cache.images.shape[1], 32, side, "full", 0))
    plan = pd.DataFrame({c: 0 for c in PLAN_COLUMNS}, index=range(len(cache.index)))
    plan["path"], plan["tagged"], plan["target"], plan["stratum"] = cache.index["path"], False, False, ""
    (run / "data/confounder").mkdir()
    plan.to_csv(run / "data/confounder/plan.csv", index=False)
    rows = np.arange(4)                                   # what the attribute stage would have chosen
    (run / "data/attributions").mkdir()
    np.savez(run / "data/attributions/test_resnet-f0.npz", rows=rows,
             paths=np.array(cache.index["path"].iloc[rows].tolist()), target=np.array([labels.index("covid19")] * 4),
             masks=np.ones((4, side, side), np.uint8))
    p = copy.deepcopy(params)
    p["train"].update(backbones=["test_resnet"], folds=[0],
                      known_backbones=p["train"]["known_backbones"] + ["test_resnet"])
    # the hand-saved model stands for one trained to the end on this run's params and data
    checkpoints.mark_finished([run / "models/classifier/test_resnet/fold0/best.pt"],
                              identity.expected(p, "test_resnet", 0, root=run))
    p["explain"]["target_layers"]["test_resnet"] = "layer4"
    p["randomisation"].update(images=3, methods=["saliency", "gradcam"], metrics=["spearman_abs", "ssim"])
    p["stats"]["resamples"] = 200
    (run / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    monkeypatch.chdir(run)
    monkeypatch.setenv("CXRBENCH_THREADS", "1")
    spec = importlib.util.spec_from_file_location("randomisation_stage",
                                                  Path(__file__).resolve().parents[2] / "stages/randomisation.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    stage.main([])

    out = json.loads(Path("metrics/randomisation.json").read_text())
    assert "CI: expanded percentile bootstrap, one draw" in out["definition"]["estimate"]     # stats.method
    groups = R.cascade_groups(model)
    assert out["models"]["test_resnet-f0"]["groups_top_down"] == [g.name for g in groups]
    assert out["models"]["test_resnet-f0"]["images"] == 3
    m0 = out["models"]["test_resnet-f0"]
    assert isinstance(m0["cam_side"], int) and 1 <= m0["cam_side"] < 32 and 0 <= m0["input_zero_share"] < 1
    assert "masked_out" in out["summary"]["gradcam"]["test_resnet"]["cascade"][0]
    assert "covid19" not in out["models"]["test_resnet-f0"]["other_labels"]
    for m in ("saliency", "gradcam"):
        s = out["summary"][m]["test_resnet"]
        assert [e["step"] for e in s["cascade"]] == list(range(len(groups) + 1))
        for e in s["cascade"] + [s["null"], s["random_logit"]]:
            assert sum(e["counts"].values()) == 3
    sal = out["summary"]["saliency"]["test_resnet"]["cascade"][0]["spearman_abs"]
    assert sal["estimate"] == pytest.approx(1.0)           # the trained model against itself
    curves = pd.read_csv("plots/randomisation/cascade.csv")
    assert set(curves["metric"]) == {"spearman_abs", "ssim"} and set(curves["method"]) == {"saliency", "gradcam"}
    assert Path("plots/randomisation/cascade.png").stat().st_size > 0
    md = Path("metrics/randomisation.md").read_text()
    assert "| test_resnet | saliency |" in md and "null" in md


def test_vectorised_spearman_equals_scipy_with_ties_and_the_reference_is_reused():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((4, 20, 20)).astype(np.float32)
    b = a + rng.standard_normal((4, 20, 20)).astype(np.float32)
    a[:, :10] = 0.0                                       # many ties, like a ReLU'd Grad-CAM
    b[1] = -a[1]                                          # a sign flip: signed -1, |map| +1
    ref = R.Reference(a)
    sim = ref.compare(b)
    np.testing.assert_allclose(sim["spearman"], EM.rank_correlation(a, b, absolute=False), atol=1e-9)
    np.testing.assert_allclose(sim["spearman_abs"], EM.rank_correlation(a, b, absolute=True), atol=1e-9)
    assert sim["spearman"][1] == pytest.approx(-1.0) and sim["spearman_abs"][1] == pytest.approx(1.0)
    again = ref.compare(a)                                # the cached ranks serve a second comparison
    np.testing.assert_allclose(again["spearman"], 1.0)
    np.testing.assert_allclose(again["ssim"], 1.0)


def test_the_two_patient_check_is_per_comparison_not_pooled():
    """The null comparison has 2 maps of ONE patient while the cascade has 6 patients: the null gets no CI
    (the pooled check gave it a zero-width interval, e.g. 0.287 [0.287, 0.287])."""
    import pandas as pd
    rng = np.random.default_rng(0)
    rows = [{"comparison": "cascade", "step": s, "layer": "" if s == 0 else "fc", "method": "m", "image": i,
             "status": "compared", "backbone": "b", "fold": 0, "group": f"g{i}",
             **{m: float(rng.random()) for m in R.METRICS}} for s in (0, 1) for i in range(6)]
    rows += [{"comparison": "null", "step": 0, "layer": "", "method": "m", "image": i, "status": "compared",
              "backbone": "b", "fold": 0, "group": "g0", **{m: 0.287 for m in R.METRICS}} for i in range(2)]
    out = R.summarise(pd.DataFrame(rows), R.METRICS, n_boot=200, seed=0, confidence=0.95)["m"]["b"]
    assert out["null"]["patients"] == 1
    assert out["null"]["spearman"]["low"] is None and out["null"]["spearman"]["status"] == "no_ci"
    assert out["null"]["spearman"]["estimate"] == pytest.approx(0.287)
    assert out["cascade"][1]["spearman"]["low"] is not None


def test_the_similarity_intervals_follow_stats_method():
    """summarise passes the interval method (stats.method, from the stage; ``ci_method``: ``method`` names the
    attribution method there) to the fold bootstrap; the default is the bootstrap's."""
    import pandas as pd
    rng = np.random.default_rng(1)
    rows = pd.DataFrame([{"comparison": "cascade", "step": s, "layer": "" if s == 0 else "fc", "method": "m",
                          "image": i, "status": "compared", "backbone": "b", "fold": f, "group": f"g{i % 8}",
                          **{m: float(rng.random()) for m in R.METRICS}}
                         for f in (0, 1) for s in (0, 1) for i in range(16)])
    default = R.summarise(rows, R.METRICS, n_boot=200, seed=0, confidence=0.95)["m"]["b"]["cascade"][1]["spearman"]
    same = R.summarise(rows, R.METRICS, n_boot=200, seed=0, confidence=0.95, ci_method="expanded_percentile",
                       min_valid_share=0.9)["m"]["b"]["cascade"][1]["spearman"]
    pct = R.summarise(rows, R.METRICS, n_boot=200, seed=0, confidence=0.95,
                      ci_method="percentile")["m"]["b"]["cascade"][1]["spearman"]
    assert same == default and pct["estimate"] == default["estimate"]
    assert (pct["low"], pct["high"]) != (default["low"], default["high"])


def test_masked_comparison_removes_the_zero_input_floor_and_compares_cams_on_their_grid():
    """Two independent white-noise gradients times an image with 30 % zero padding: over every pixel their |map|
    Spearman is far above 0 (the shared zeros); over the kept pixels it is that of independent noise. A CAM
    (2 x 2 upsampled to 32 px) against a copy differing only in bilinear detail is compared on its grid: SSIM is
    undefined there (masked out: NaN), Spearman of the 4 cells is 1."""
    rng = np.random.default_rng(0)
    img = np.ones((4, 32, 32))
    img[:, :, :10] = 0
    a, b = rng.standard_normal((4, 32, 32)) * img, rng.standard_normal((4, 32, 32)) * img
    keep = img != 0
    plain = R.similarities(a.astype(np.float32), b.astype(np.float32), ["spearman_abs"])["spearman_abs"]
    masked = R.masked_compare(a, b, keep, None, ["spearman_abs", "ssim"])
    assert plain.mean() > 0.3 and abs(masked["spearman_abs"].mean()) < 0.1
    assert list(masked["status"]) == ["compared"] * 4
    cam = np.kron(rng.random((4, 2, 2)), np.ones((16, 16)))
    other = cam + 0.01 * np.sin(np.arange(32) / 3)[None, None, :]
    out = R.masked_compare(cam, other, np.ones((4, 32, 32), bool), 2, ["spearman_abs", "ssim"])
    assert np.allclose(out["spearman_abs"], 1.0) and np.isnan(out["ssim"]).all()


def test_the_fc_head_is_the_top_of_the_cascade():
    """train.head: fc (COVID-CXNet) puts the head beside the timm network, whose own classifier is then empty:
    the head is randomised first and every parameter still belongs to one group."""
    from cxrbench.classify.models import create_model

    model = create_model("resnet18", num_classes=2, in_chans=1, pretrained="none", input_size=32,
                         head={"kind": "fc", "width": 10, "dropout": 0.2}).eval()
    groups = R.cascade_groups(model)
    assert [g.name for g in groups] == ["head", "layer4", "layer3", "layer2", "layer1", "conv1+bn1"]
    _, g1, rnd = next(R.cascade(model, seed=0))
    assert g1.modules == ("head",) and not torch.equal(rnd.head.fc.weight, model.head.fc.weight)
    assert torch.equal(rnd.backbone.layer4[1].conv2.weight, model.backbone.layer4[1].conv2.weight)
