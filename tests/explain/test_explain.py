"""Tests of cxrbench.explain.attribution and cxrbench.explain.metrics.perturbation."""


import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from cxrbench.core.params import ParamError
from cxrbench.explain import attribution as A
from cxrbench.explain.metrics import perturbation as EM

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SIZE = 32
REGION = (slice(8, 16), slice(12, 24))      # the pixels the toy model looks at


class RegionModel(nn.Module):
    """Logit of class 1 = 8 * (mean of REGION in channel 0) - 4; class 0 is its negative."""

    def forward(self, x):
        r = x[:, 0, REGION[0], REGION[1]].mean((1, 2))
        z = 8 * r - 4
        return torch.stack([-z, z], 1)


def region_map(b):
    m = np.zeros((b, SIZE, SIZE), np.float32)
    m[:, REGION[0], REGION[1]] = 1.0
    return m


@pytest.fixture(scope="module")
def toy_input():
    g = torch.Generator().manual_seed(0)
    return 0.7 + 0.3 * torch.rand(6, 1, SIZE, SIZE, generator=g)


@pytest.mark.parametrize("scheme", EM.SCHEMES)
def test_aoppc_orders_true_random_inverted(toy_input, scheme):
    model, x = RegionModel(), toy_input
    true = region_map(len(x))
    score = {}
    for name, m in [("true", true), ("random", EM.random_maps(true.shape, 1)), ("inverted", 1 - true)]:
        score[name] = EM.perturbation_curves(model, x, m, 1, scheme=scheme)["aoppc"].mean()
    assert score["true"] > score["random"] > score["inverted"]
    if scheme == "threshold":       # every level removes exactly the non-region pixels
        assert score["inverted"] == pytest.approx(0.0, abs=1e-6)
    # LeRF on the true map equals MoRF on the inverted map
    lerf = EM.perturbation_curves(model, x, true, 1, scheme=scheme, order="lerf")["aoppc"].mean()
    assert lerf == pytest.approx(score["inverted"], abs=1e-6)


def test_fraction_levels_remove_exact_counts():
    m = torch.rand(3, 20, 30)
    rm = EM.removal_masks(EM.normalise(m), "pixels")
    counts = rm.sum((2, 3))
    expected = torch.as_tensor(np.round(np.arange(1, 11) / 10 * 600).astype(np.int64))
    assert (counts == expected).all()
    # the removed pixels are the top-ranked ones: level 1 holds the 60 largest values
    top = torch.topk(m.reshape(3, -1), 60).indices
    assert rm[:, 0].reshape(3, -1).gather(1, top).all()
    # levels are nested
    assert (rm[:, 1:] >= rm[:, :-1]).all()


def test_threshold_levels_remove_pixels_above_threshold():
    ramp = torch.arange(100, dtype=torch.float32).view(1, 10, 10) / 99.0     # values 0, 1/99, ..., 1
    rm = EM.removal_masks(EM.normalise(ramp), "threshold")
    for lvl, t in enumerate(EM.levels("threshold")):
        assert int(rm[0, lvl].sum()) == int((ramp >= t - 1e-6).sum())
    assert int(rm[0, 0].sum()) == 1          # t = 1.0: only the maximum
    assert int(rm[0, -1].sum()) == 90        # t = 0.1: 90 of 100 ramp values are >= 0.1


def test_batched_equals_sequential(toy_input):
    model, x = RegionModel(), toy_input
    m = EM.random_maps((len(x), SIZE, SIZE), 3)
    a = EM.perturbation_curves(model, x, m, 1, images_per_batch=4)
    b = EM.perturbation_curves(model, x, m, 1, sequential=True)
    np.testing.assert_allclose(a["p"], b["p"], atol=1e-6)


def _resnet18(seed=0):
    timm = pytest.importorskip("timm")
    torch.manual_seed(seed)
    return timm.create_model("resnet18", num_classes=18, in_chans=1, pretrained=False).eval()


class SmallNet(nn.Module):
    """A tiny CNN with a ``layer4`` (Grad-CAM layer) and in-place ReLUs, for the fast tests."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(2))
        self.layer4 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.layer4(self.stem(x)).mean((2, 3)))


def _settings(**kw):
    base = dict(methods=list(A.METHODS), steps=8, window=8, stride=8, interpolate="bilinear",
                target_layers={"resnet": "layer4", "densenet": "features.norm5"}, max_batch=64,
                memory_fraction=0.5, scorecam_batch=None, lrp_composite="epsilon_gamma_box")
    base.update(kw)
    return A.Settings(**base)


def test_deeplift_and_guided_backprop_on_prepared_timm_resnet18():
    model = _resnet18()
    x = torch.rand(2, 1, 32, 32)
    prepared, rep = A.prepare_for_attribution(model, x)
    assert rep.inplace_replaced > 0
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in prepared.modules())
    assert any(isinstance(m, nn.ReLU) and m.inplace for m in model.modules())      # original untouched
    from captum.attr import DeepLift, GuidedBackprop
    attr, delta = DeepLift(prepared).attribute(x, baselines=torch.zeros_like(x), target=5,
                                               return_convergence_delta=True)
    assert torch.isfinite(attr).all() and attr.abs().sum() > 0
    assert delta.abs().max() < 1e-3                      # completeness: sum(attr) = f(x) - f(0)
    gb = GuidedBackprop(prepared).attribute(x, target=5)
    assert torch.isfinite(gb).all() and gb.abs().sum() > 0
    # Verified, not assumed: with Captum 0.9, timm's ResNet (one module per
    # activation, in-place ReLU) runs DeepLIFT unprepared and gives the same maps.
    plain = DeepLift(model).attribute(x, baselines=torch.zeros_like(x), target=5)
    torch.testing.assert_close(plain, attr, rtol=1e-4, atol=1e-6)


def test_deeplift_fails_on_reused_relu_and_prepare_fixes_it():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(num_classes=18).eval()      # BasicBlock calls self.relu twice
    x = torch.rand(2, 3, 32, 32)
    from captum.attr import DeepLift
    with pytest.raises(RuntimeError, match="used more than once"):
        DeepLift(model).attribute(x, baselines=torch.zeros_like(x), target=5)
    prepared, rep = A.prepare_for_attribution(model, x)
    assert rep.unshared and all(n == 2 for n in rep.unshared.values())
    attr, delta = DeepLift(prepared).attribute(x, baselines=torch.zeros_like(x), target=5,
                                               return_convergence_delta=True)
    assert delta.abs().max() < 1e-3
    with torch.no_grad():
        torch.testing.assert_close(prepared(x), model(x))   # same function


def test_relu6_is_guided_and_rescaled_after_prepare():
    """EfficientNet-Lite's nn.ReLU6 is invisible to Captum's hooks: unprepared, guided backprop equals
    saliency and DeepLIFT equals input x gradient, and DeepLIFT's completeness fails; prepared, neither.
    In float64, so that the completeness bound does not depend on the CPU's float32 kernels (prepared:
    relative delta 5e-7 in float32, 5e-15 in float64; unprepared: 0.85)."""
    from cxrbench.classify.models import create_model
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", 4, 1, "packaged", 64).eval().double()     # ImageNet features
    x = torch.rand(2, 1, 64, 64, dtype=torch.float64)
    from captum.attr import DeepLift, GuidedBackprop, InputXGradient, Saliency
    zero = torch.zeros_like(x)
    plain_dl, plain_delta = DeepLift(model).attribute(x, baselines=zero, target=1, return_convergence_delta=True)
    torch.testing.assert_close(plain_dl, InputXGradient(model).attribute(x, target=1))
    torch.testing.assert_close(GuidedBackprop(model).attribute(x, target=1),
                               Saliency(model).attribute(x, target=1, abs=False))
    prepared, rep = A.prepare_for_attribution(model, x)
    assert rep.relu6_replaced == sum(isinstance(m, nn.ReLU6) for m in model.modules()) > 0
    assert rep.functional_relu_calls == 0
    with torch.no_grad():
        torch.testing.assert_close(prepared(x), model(x))   # same function
    attr, delta = DeepLift(prepared).attribute(x, baselines=zero, target=1, return_convergence_delta=True)
    with torch.no_grad():
        gap = (prepared(x) - prepared(zero))[:, 1]
    assert (delta.abs() / gap.abs()).max() < 1e-9
    assert (plain_delta.abs() / gap.abs()).max() > 0.1
    gb = GuidedBackprop(prepared).attribute(x, target=1)
    assert not torch.allclose(gb, Saliency(prepared).attribute(x, target=1, abs=False))


def test_functional_relu_is_counted():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.act = nn.ReLU()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = self.act(self.conv(x))
            x = F.relu(x - 0.1)
            return self.fc(x.mean((2, 3)))

    _, rep = A.prepare_for_attribution(Functional(), torch.rand(1, 1, 8, 8))
    assert rep.functional_relu_calls == 1


def test_every_method_maps_at_input_resolution():
    model = _resnet18()
    x = torch.rand(2, 1, 32, 32)
    prepared, _ = A.prepare_for_attribution(model, x)
    s = _settings(steps=4)
    maps, status = A.run_methods(s.methods, lambda n: A.make(n, model, prepared, s, 64, "resnet18"),
                                 x, torch.tensor([5, 7]), log=lambda m: None)
    # every method maps a resnet18 but CXR-Net's decoder map, which exists only for CXR-Net models
    assert all(v["ok"] for k, v in status.items() if k != "cxrnet_decoder"), status
    assert status["cxrnet_decoder"]["reason"].startswith("NotApplicable: not applicable")
    assert len(maps) == len(A.METHODS) - 1
    for name, m in maps.items():
        assert m.shape == (2, 32, 32) and m.dtype == np.float32, name
        assert np.isfinite(m).all(), name


@pytest.mark.parametrize("method", ["occlusion", "saliency", "integrated_gradients", "deeplift",
                                    "gradcam", "gradcam_pp", "guided_gradcam"])
def test_chunking_gives_same_attributions(method):
    # float64 model and inputs: in float32 a batch of 2 and one of 5 may use different kernels (different
    # rounding, CPU-dependent); in float64 they agree to ~1e-16, and the float32 maps attribute() returns
    # to within one rounding (eps32 = 1.2e-7 relative)
    model = SmallNet().eval().double()
    x = torch.rand(5, 1, 32, 32, dtype=torch.float64)
    target = torch.tensor([1, 5, 5, 2, 9])
    prepared, _ = A.prepare_for_attribution(model, x)
    s = _settings(target_layers={"small": "layer4"})
    one = A.make(method, model, prepared, s, 1000, "smallnet").attribute(x, target)
    small = A.make(method, model, prepared, s, 2, "smallnet").attribute(x, target)
    torch.testing.assert_close(small, one, rtol=2.4e-7, atol=1e-12)


def test_unknown_method_and_layer_raise_param_error():
    with pytest.raises(ParamError, match="valid methods are"):
        A.check_method("smoothgrad")
    params = {"explain": {"methods": ["saliency", "smoothgrad"], "max_batch": None, "target_layers": {"resnet": "layer4"},
                          "ig_steps": 8, "occlusion_window": 8, "occlusion_stride": 8,
                          "interpolate": "bilinear", "memory_fraction": 0.5}}
    with pytest.raises(ParamError, match="saliency"):
        A.validate(params)
    model = _resnet18()
    with pytest.raises(ParamError, match="layer4"):
        A.target_layer(model, "resnet18", {"resnet": "layer9"})
    with pytest.raises(ParamError, match="keys"):
        A.target_layer(model, "vit_small", {"resnet": "layer4"})


def test_gradcam_pp_matches_gradcam_for_single_location_layer():
    # With a 1x1 target layer alpha = 1 / 2 + ..., weights are relu(g) scaled; the
    # map's shape then equals Grad-CAM's up to a positive factor where both are > 0.
    model = _resnet18()
    x = torch.rand(1, 1, 32, 32)              # layer4 output is 1x1 at 32 px
    prepared, _ = A.prepare_for_attribution(model, x)
    s = _settings(interpolate="nearest")
    pp = A.make("gradcam_pp", model, prepared, s, 8, "resnet18").attribute(x, 3)
    assert pp.shape == (1, 32, 32) and torch.isfinite(pp).all()
    assert float(pp.max()) == float(pp.min()) > 0     # one location upsampled: a constant map


def test_lung_mass_and_sanity_helpers():
    maps = region_map(2)
    masks = np.zeros((2, SIZE, SIZE), np.uint8)
    masks[:, :16, :] = 1
    np.testing.assert_allclose(EM.lung_mass_fraction(maps, masks), [1.0, 1.0])
    np.testing.assert_allclose(EM.area_fraction(masks), [0.5, 0.5])
    r = EM.random_maps((2, SIZE, SIZE), 0)
    np.testing.assert_allclose(EM.rank_correlation(r, r), [1.0, 1.0])
    assert abs(EM.rank_correlation(r, EM.random_maps((2, SIZE, SIZE), 1))).max() < 0.1
    model = _resnet18()
    rnd = EM.randomise_weights(model)
    assert not torch.equal(rnd.conv1.weight, model.conv1.weight)


# --- device safety of the aoppc stage: every tensor stays on the model's device ----
# The meta device stands in for a GPU on a CPU-only machine: a tensor made on
# the CPU and combined with a meta tensor raises "Tensor on device cpu is not on
# the expected device meta", as it does with a CUDA tensor.

META = torch.device("meta")
B, S = 3, 16                      # 3 images with images_per_batch=2: a full and a partial batch


def _meta_net():
    """SmallNet's layers on the meta device (shapes only, no data)."""
    return SmallNet().eval().to(META)


def _maps_on_every_kind():
    """The maps as the stage loads them (float32 numpy) and as tensors on the meta device and the CPU."""
    a = np.random.default_rng(0).standard_normal((B, S, S)).astype(np.float32)
    return {"numpy": a, "meta": torch.from_numpy(a).to(META), "cpu": torch.from_numpy(a)}


@pytest.mark.parametrize("order", EM.ORDERS)
@pytest.mark.parametrize("scheme", EM.SCHEMES)
@pytest.mark.parametrize("mode", ["signed", "abs"])
def test_removal_masks_stay_on_the_maps_device(scheme, order, mode):
    """Every tensor the AOPPC masks need is made on the map's device (a CUDA run crashed on CPU-made
    levels, counts and ranks)."""
    imp = EM.importance(torch.rand(2, 8, 8, device=META), mode)
    norm = EM.normalise(imp)
    out = EM.removal_masks(norm, scheme, order, patch=1)
    assert imp.device == norm.device == out.device == META
    assert out.dtype == torch.bool and tuple(out.shape) == (2, EM.N_LEVELS, 8, 8)


@pytest.mark.parametrize("target", [1, torch.tensor(1), torch.tensor([0, 1, 1]), np.array([1, 0, 1]),
                                    torch.tensor([0, 1, 1], device=META)],
                         ids=["int", "0-d cpu", "cpu", "numpy", "meta"])
def test_target_indices_on_the_requested_device(target):
    t = EM.target_indices(target, B, META)
    assert t.device == META and t.dtype == torch.long and tuple(t.shape) == (B,)


@pytest.mark.parametrize("order", EM.ORDERS)
@pytest.mark.parametrize("scheme", EM.SCHEMES)
def test_perturbation_tensors_stay_on_the_inputs_device(scheme, order):
    """The whole AOPPC computation (maps from the host or any device, targets in every accepted form,
    batched and sequential) runs on the input's device and leaves its results there."""
    model, x = _meta_net(), torch.rand(B, 1, S, S, device=META)
    targets = [1, torch.tensor(1), torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1], device=META)]
    for name, maps in _maps_on_every_kind().items():
        for target in targets:
            for sequential in (False, True):
                r = EM.perturbation_tensors(model, x, maps, target, scheme=scheme, order=order, mode="abs",
                                            images_per_batch=2, sequential=sequential, patch=1)
                shapes = {k: tuple(v.shape) for k, v in r.items()}
                assert {v.device for v in r.values()} == {META}, name
                assert shapes == {"p0": (B,), "p": (B, EM.N_LEVELS), "drop": (B, EM.N_LEVELS), "aoppc": (B,),
                                  "removed": (B, EM.N_LEVELS)}


@pytest.mark.parametrize("scheme", EM.SCHEMES)
def test_perturbation_curves_reach_the_host_copy_on_meta(scheme):
    """``perturbation_curves`` (what the stage calls) gets as far as copying its results to the host,
    which a meta tensor cannot do: no device mismatch before that point."""
    model, x = _meta_net(), torch.rand(B, 1, S, S, device=META)
    target = torch.tensor([0, 1, 1], device=META)
    with pytest.raises(NotImplementedError, match="Cannot copy out of meta tensor"):
        EM.perturbation_curves(model, x, _maps_on_every_kind()["numpy"], target, scheme=scheme,
                               images_per_batch=2)


@pytest.mark.parametrize("input_mode", ["full", "lungs_removed"])
def test_aoppc_stage_chain_on_meta(tmp_path, monkeypatch, input_mode):
    """The stage's own sequence on the meta device: a saved classifier loaded onto it, the cache rows
    made its input, the targets and the (stored and random) maps scored in every scheme and order."""
    from cxrbench.classify import identity
    from cxrbench.classify import models as M
    from cxrbench.core import checkpoints

    torch.manual_seed(0)
    model = M.create_model("test_resnet", 2, 1, "none", input_size=32).eval()      # resized inside: 48 -> 32
    path = tmp_path / "models/classifier/test_resnet/fold0/best.pt"
    M.save_classifier(path, model, M.classifier_meta("test_resnet", ["a", "covid19"], 1, 32, 48, input_mode, 0))
    # no cache here: the identity check (tests/classify/test_identity.py) sees a finished model of these params
    checkpoints.mark_finished([path], {"config": "c"})
    monkeypatch.setattr(identity, "expected", lambda *a, **k: {"config": "c"})
    monkeypatch.chdir(tmp_path)
    model, meta = A.load_classifier({"evaluate": {"checkpoint": "best"}}, "test_resnet", 0, META)
    assert {t.device for t in list(model.parameters()) + list(model.buffers())} == {META}

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (B, 1, 48, 48), dtype=np.uint8)
    masks = np.zeros((B, 48, 48), np.uint8)
    masks[:, 10:30, 8:40] = 1
    x = A.classifier_input(images, meta, META, masks)
    assert x.device == META and x.dtype == torch.float32 and tuple(x.shape) == (B, 1, 48, 48)
    target = torch.as_tensor(np.array([1, 1, 1]), device=META)
    named = {"stored": rng.standard_normal((B, 48, 48)).astype(np.float16).astype(np.float32),
             "random": EM.random_maps((B, 48, 48), 0)}
    for maps in named.values():
        for scheme in EM.SCHEMES:
            for order in EM.ORDERS:
                r = EM.perturbation_tensors(model, x, maps, target, scheme=scheme, order=order, mode="abs",
                                            images_per_batch=2)
                assert {v.device for v in r.values()} == {META}
    # a degenerate map's image left out: the stage selects the other rows of x and target on their device
    rows = np.array([0, 2])
    xs, ts = EM.take(x, rows), EM.take(target, rows)
    assert xs.device == ts.device == META and tuple(xs.shape) == (2, 1, 48, 48) and tuple(ts.shape) == (2,)
    for scheme in EM.SCHEMES:
        r = EM.perturbation_tensors(model, xs, named["stored"][rows], ts, scheme=scheme, mode="abs",
                                    images_per_batch=2)
        assert {v.device for v in r.values()} == {META}


@pytest.mark.parametrize("rows", [[0, 2], [1], [0, 1, 2]], ids=["subset", "one", "all"])
def test_take_stays_on_the_tensors_device(rows):
    """``EM.take`` (rows of a degenerate map's method left out) selects on the tensor's device; every row in
    order returns the tensor itself (nothing copied: the scores are those of the full batch)."""
    x = torch.rand(B, 1, S, S, device=META)
    t = torch.tensor([0, 1, 1], device=META)
    for v in (x, t):
        out = EM.take(v, np.array(rows))
        assert out.device == META and out.shape[0] == len(rows)
        assert (out is v) == (rows == [0, 1, 2])
    cpu = torch.arange(6.0).view(B, 2)
    torch.testing.assert_close(EM.take(cpu, np.array([2, 0])), cpu[[2, 0]])


# What the aoppc stage calls from the package, and how each is covered here.
DEVICE_TESTED = {
    "AS.score_model": "test_score_model_runs_on_the_models_device (its curves call EM.perturbation_curves "
                      "and EM.take: test_perturbation_tensors_stay_on_the_inputs_device, "
                      "test_perturbation_curves_reach_the_host_copy_on_meta, test_take_stays_on_the_tensors_device)",
    "A.load_classifier": "test_aoppc_stage_chain_on_meta",
    "A.classifier_input": "test_aoppc_stage_chain_on_meta",
}
# AT.score_fold is host-only given a host ``curves``: the stage's device work is the closure of
# AS.score_model, classified above.
HOST_ONLY = {"A.validate", "AS.validate", "AS.load_fold", "AS.perturbation_settings", "AS.region_sentence",
             "AT.new_scores", "AT.fold_status", "AT.summary", "ATT.markdown", "AP.attribution_panels",
             "AP.curves_figure", "AT.per_image_rows", "RB.edge_map"}


class _NoTorch(TorchFunctionMode):
    """Fails on any torch call: a host-only function that made a tensor could make it on the wrong device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        raise AssertionError(f"a host-only function called torch ({getattr(func, '__name__', func)})")


def _stage_calls() -> set[str]:
    """``EM.f``, ``A.f``, ``AT.f``, ``AS.f`` and ``AP.f`` (cxrbench.explain.metrics.perturbation, runner,
    metrics.tables, metrics.tables_text, metrics.scoring, plots) called in the aoppc stage's run, cxrbench/explain/aoppc_run.py."""
    import ast

    import inspect

    from cxrbench.explain import aoppc_run

    tree = ast.parse(inspect.getsource(aoppc_run))
    return {f"{n.func.value.id}.{n.func.attr}" for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and isinstance(n.func.value, ast.Name) and n.func.value.id in ("EM", "A", "AT", "ATT", "AS", "AP", "RB")}


def test_score_model_reports_progress_in_a_log(params, tmp_path, monkeypatch, capsys):
    """A long aoppc stage says how far it is: in a log (not a terminal), plain lines per tenth of one model's
    maps x perturbations, and a last line with the total."""
    from cxrbench.explain.metrics import scoring as AS
    from cxrbench.explain.metrics import tables as AT

    monkeypatch.setenv("CXRBENCH_PROGRESS", "lines")
    s = AS.validate(params)
    rng = np.random.default_rng(0)
    z = {"target": np.array([1, 1, 0]), "masks": np.ones((B, S, S), np.uint8),
         "m": rng.standard_normal((B, S, S)).astype(np.float32), "m__scale": np.ones(B, np.float32)}
    np.savez(tmp_path / "z.npz", **z)
    AS.score_model(AT.new_scores(), "b", 0, ["m"], s, torch.rand(B, 1, S, S), np.load(tmp_path / "z.npz"),
                   SmallNet().eval())
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("aoppc b fold 0:")]
    total = 2 * len(s.perturbations())                     # the stored map and the random map
    assert len(lines) >= 2 and lines[-1].split(":")[1].split()[0] == f"{total}/{total}"


def test_score_model_runs_on_the_models_device(params, tmp_path):
    """The stage's per-model scoring (every perturbation and fill) on the meta device gets as far as the
    host copy of the first curve: no tensor met on the wrong device before that."""
    from cxrbench.explain.metrics import scoring as AS
    from cxrbench.explain.metrics import tables as AT

    s = AS.validate(params)
    rng = np.random.default_rng(0)
    z = {"target": np.array([1, 1, 0]), "masks": np.ones((B, S, S), np.uint8),
         "m": rng.standard_normal((B, S, S)).astype(np.float32), "m__scale": np.ones(B, np.float32)}
    np.savez(tmp_path / "z.npz", **z)
    stored = np.load(tmp_path / "z.npz")
    with pytest.raises(NotImplementedError, match="Cannot copy out of meta tensor"):
        AS.score_model(AT.new_scores(), "b", 0, ["m"], s, torch.rand(B, 1, S, S, device=META), stored,
                       _meta_net())


def test_every_function_the_aoppc_stage_calls_is_device_tested(params, tmp_path, monkeypatch):
    """Each package function the stage calls is either run on the meta device above or is host-only:
    it takes and returns numpy and calls no torch function at all (checked here on the stage's inputs).
    A new call in the stage must be added to one of the two sets, with its test."""
    calls = _stage_calls()
    assert calls == set(DEVICE_TESTED) | HOST_ONLY, f"classify: {sorted(calls ^ (set(DEVICE_TESTED) | HOST_ONLY))}"
    import pandas as pd

    from cxrbench.explain import plots as AP
    from cxrbench.explain.metrics import scoring as AS
    from cxrbench.explain.metrics import robustness as RB
    from cxrbench.explain.metrics import tables as AT
    from cxrbench.explain.metrics import tables_text as ATT

    maps = EM.random_maps((2, S, S), 0)
    masks = np.zeros((2, S, S), np.uint8)
    masks[:, :8] = 1
    stored = {"m": maps, "m__scale": np.ones(2, np.float32), "rand__m": np.zeros((2, S, S), np.float32),
              "rand__m__scale": np.ones(2, np.float32), "masks": masks, "target": np.array([1, 1])}
    (tmp_path / "data/attributions").mkdir(parents=True)
    (tmp_path / "metrics/attribute").mkdir(parents=True)
    np.savez(tmp_path / "data/attributions/b-f0.npz", **stored)
    (tmp_path / "metrics/attribute/b-f0.json").write_text('{"methods": {"m": {"ok": true}}}')
    monkeypatch.chdir(tmp_path)

    def host_curves(rows, m, spec):        # the stage's closure, minus the device
        n = 6 if spec["scheme"] == "region" else EM.N_LEVELS
        return {"aoppc": m.mean((1, 2)), "drop": np.zeros((len(rows), n)), "removed": np.zeros((len(rows), n))}

    import quantus  # noqa: F401  (imported by the properties metrics: its import builds a torch.device)

    with _NoTorch():
        s = AS.validate(params)
        z, att = AS.load_fold("b", 0)
        scores = AT.new_scores()
        named = {"m": EM.stored_maps(z, "m"), "random": EM.random_maps((2, S, S), 1)}
        rows = AT.score_fold(scores, "b", 0, named, masks, {"m": EM.stored_maps(z, "rand__m")}, host_curves,
                             perturbations=s.perturbations(), groups=np.array(["p1", "p2"]))
        result = AT.summary(scores, ["m"], rows=rows, stats=s.stats, fills=s.fills)
        text = ATT.markdown(result, ["m"], {}, AS.region_sentence(s, 64))
        per_image = AT.per_image_rows(scores, {("b", "f0"): np.array(["x.png", "y.png"])})
        edge = RB.edge_map(maps[:, None])
        out = [EM.levels("threshold"), maps, rows, result, AT.fold_status(att["methods"], scores, "b", 0), per_image,
               edge,
               text, A.validate(params).methods, AS.perturbation_settings(s, 64)]
        AP.attribution_panels("b", 0, maps[:, None], z, ["m"], tmp_path / "panels.png")
        AP.curves_figure(pd.DataFrame(rows), tmp_path / "curves.png")
    assert not any(torch.is_tensor(v) for v in out)
    assert result["sanity"]["by_method"]["m"]["randomised_constant_passed"] == 2
    assert {r["path"] for r in per_image} == {"x.png", "y.png"} and len(per_image) == sum(
        len(b[4]) for b in scores["blocks"])
    assert edge.shape == maps.shape and edge.dtype == np.float32
    assert (tmp_path / "panels.png").is_file() and (tmp_path / "curves.png").is_file()


def test_deeplift_records_its_convergence_delta_per_image():
    """The method keeps Captum's convergence delta per image across chunks; the relative delta is
    |sum(map) - (f(x) - f(0))| / |f(x) - f(0)|, checked here against a direct computation; the summary
    flags the images above the tolerance."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=1, padding=1),
                          nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    x = torch.rand(5, 1, 12, 12)
    target = torch.tensor([0, 1, 2, 0, 1])
    m = A.make("deeplift", model, A.prepare_for_attribution(model, x)[0], _settings(max_batch=4), 4)
    maps = m.attribute(x, target)                          # 2 rows per input: chunks of 2, 2 and 1 images
    conv = m.convergence()
    assert len(conv["delta"]) == len(conv["relative"]) == 5
    with torch.no_grad():
        diff = (model(x) - model(torch.zeros_like(x))).gather(1, target[:, None])[:, 0].double()
    delta = maps.double().reshape(5, -1).sum(1) - diff
    torch.testing.assert_close(torch.tensor(conv["delta"], dtype=torch.float64), delta, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.tensor(conv["relative"], dtype=torch.float64), delta.abs() / diff.abs(),
                               rtol=1e-4, atol=1e-6)
    paths = [f"img{i}.png" for i in range(5)]
    rel = np.asarray(conv["relative"])
    tol = float(np.median(rel))
    summary = A.convergence_summary(conv, tol, paths)
    assert summary["above_tolerance"] == int((rel > tol).sum()) == len(summary["above_paths"])
    assert summary["relative_max"] == pytest.approx(rel.max())
    assert A.convergence_summary(conv, 1e9, paths)["above_tolerance"] == 0
    with pytest.raises(ValueError, match="5 convergence deltas for 4 images"):
        A.convergence_summary(conv, tol, paths[:4])


def test_attribute_stage_records_deeplift_completeness():
    """The attribute stage's checks write DeepLIFT's completeness per image into its status, and only for a
    method that ran."""
    from cxrbench.explain.attribute_run import record_checks

    class Built:
        def convergence(self):
            return {"delta": [1e-6, 0.5], "gap": [1.0, 1.0], "relative": [1e-6, 0.5]}

    status = {"deeplift": {"ok": True}, "lrp": {"ok": False}}
    record_checks(status, {"deeplift": Built()}, 1e-3, ["a.png", "b.png"], "epsilon")
    conv = status["deeplift"]["convergence"]
    assert conv["images"] == 2 and conv["above_tolerance"] == 1 and "conservation" not in status["lrp"]
    status = {"deeplift": {"ok": False}}
    record_checks(status, {}, 1e-3, ["a.png"], "epsilon")
    assert "convergence" not in status["deeplift"]


@pytest.mark.parametrize("pool", [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2, stride=2),
                                  dict(kernel_size=3, stride=1, padding=1),
                                  dict(kernel_size=3, stride=2, dilation=2, ceil_mode=True)],
                         ids=["timm-stem", "2x2", "stride1", "dilated-ceil"])
def test_relu_max_pool_equals_max_pool(pool):
    x = torch.randn(2, 3, 17, 16) - 3.0                  # all negative near the border: padding must not win
    ref = nn.MaxPool2d(**pool)
    torch.testing.assert_close(A.ReLUMaxPool2d(ref)(x), ref(x), atol=1e-6, rtol=0)


def test_deeplift_is_complete_through_max_pooling_and_normalisation():
    """The classifiers normalise inside the model, so DeepLIFT's zero baseline is not zero after the
    normalisation; Captum's max-pool rule then broke completeness (relative delta 0.78-31 on this random
    resnet18 at 64 px, 0.18-1.08 on the trained ones). With the pools rewritten as ReLUs the attributions
    sum to f(x) - f(0) within float error.

    Computed in float64: in float32 the relative delta is rounding error over a small gap (f(x) - f(0) is
    3e-4 for one image) and depends on the CPU's kernels (1.3e-4 on one Intel Xeon, 3e-5 with AVX2 only);
    in float64 it is below 1e-13, so a bound of 1e-9 is both robust and tight."""
    from captum.attr import DeepLift

    from cxrbench.classify import models as M

    torch.manual_seed(0)
    model = M.create_model("resnet18", 3, 1, "none", input_size=64, normalize="imagenet").eval().double()
    x, target = torch.rand(3, 1, 64, 64, dtype=torch.float64), torch.tensor([0, 1, 2])
    prepared, rep = A.prepare_for_attribution(model, x)
    with torch.no_grad():
        diff = (model(x) - model(torch.zeros_like(x))).gather(1, target[:, None])[:, 0]
    _, captum_delta = DeepLift(prepared).attribute(x, baselines=torch.zeros_like(x), target=target,
                                                   return_convergence_delta=True)
    assert (captum_delta.abs() / diff.abs()).median() > 0.1            # the max-pool rule's failure, kept visible
    m = A.make("deeplift", model, prepared, _settings(max_batch=4), 4)
    maps = m.attribute(x, target)
    conv = m.convergence()
    assert conv["max_pools_rewritten"] == 1
    assert max(conv["relative"]) < 1e-9
    # attribute() returns float32 maps: rounding each entry moves the sum by at most eps32 / 2 * sum|map|
    eps32 = torch.finfo(torch.float32).eps
    err = (maps.double().reshape(3, -1).sum(1) - diff).abs()
    assert (err <= eps32 * maps.double().abs().reshape(3, -1).sum(1) + 1e-12).all()


def test_prepare_report_counts_functional_non_linear_calls():
    """Calls made inside a forward (not by a module) are invisible to Captum's hooks: counted by name;
    the same calls made by modules are not."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.act = nn.SiLU()

        def forward(self, x):
            x = self.pool(self.act(self.conv(x)))            # module calls: not counted
            x = F.max_pool2d(F.silu(x), 2)                   # functional: counted
            return torch.sigmoid(x).mean((2, 3))

    _, rep = A.prepare_for_attribution(Net().eval(), torch.rand(2, 1, 16, 16))
    assert rep.functional_calls == {"max_pool2d": 1, "silu": 1, "sigmoid": 1}
    assert rep.as_dict()["functional_calls"] == rep.functional_calls
