"""Feature ablation, Shapley value sampling, layer conductance and internal influence (Captum) in the
attribution registry, and the occlusion baseline (black | grey): each against values worked out by hand on
models whose answer is known, in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from cxrbench.core.params import ParamError
from cxrbench.explain import attribution as A
from cxrbench.explain.metrics import perturbation as PM

from test_libraries import _make, _settings

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

NEW = ["feature_ablation", "shapley_sampling", "layer_conductance", "internal_influence"]


class Linear(nn.Module):
    """Logit k: sum(w_k * x), w_k fixed random weights over the image: additive, so every method's exact
    value is known."""

    def __init__(self, side=16, classes=2):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(classes, 1, side, side, generator=g, dtype=torch.float64))

    def forward(self, x):
        return (x.unsqueeze(1) * self.w.unsqueeze(0)).sum((2, 3, 4))


def _images(n=2, side=16):
    return torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _patch_sums(v, p):
    """(B, H, W) -> every pixel holds the sum of ``v`` over its p x p patch."""
    b, h, w = v.shape
    s = v.reshape(b, h // p, p, w // p, p).sum((2, 4))
    return s.repeat_interleave(p, 1).repeat_interleave(p, 2)


@pytest.mark.parametrize("fill,value", [("black", 0.0), ("grey", 0.5)])
@pytest.mark.parametrize("method", ["feature_ablation", "shapley_sampling"])
def test_patch_methods_give_each_patch_its_exact_contribution(method, fill, value):
    # additive model: removing a patch (ablation) and its Shapley value are both sum_patch w (x - baseline)
    model, x = Linear(), _images()
    target = torch.tensor([0, 1])
    m = _make(method, model, None, x, max_batch=3, occlusion_baseline=fill, ablation_patch=4, shapley_patch=4,
              shapley_samples=3)
    a = m.attribute(x, target)
    w = model.w[target, 0]
    expected = _patch_sums(w * (x[:, 0] - value), 4).float()
    assert a.shape == (2, 16, 16) and a.dtype == torch.float32
    assert torch.allclose(a, expected, rtol=1e-6, atol=1e-6)        # float32 rounding of float64 values


def test_shapley_sampling_is_reproducible_chunk_free_and_leaves_the_global_rng_alone():
    class Interacting(nn.Module):                                    # not additive: the orders matter
        def forward(self, x):
            s = x[:, 0, :8, :8].sum((1, 2)) * x[:, 0, 8:, 8:].sum((1, 2))
            return torch.stack([s, -s], 1)

    x = _images(3)
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    a1 = _make("shapley_sampling", Interacting(), None, x, max_batch=1, shapley_patch=8,
               shapley_samples=2).attribute(x, 0)
    assert torch.equal(before, torch.rand(3))
    a2 = _make("shapley_sampling", Interacting(), None, x, max_batch=64, shapley_patch=8,
               shapley_samples=2).attribute(x, 0)
    assert torch.allclose(a1, a2, rtol=1e-6, atol=1e-6)              # the same orders: one chunk per image or one
    # efficiency: Shapley values sum to f(x) - f(baseline) whatever the orders (each patch of 8 x 8: 64 px)
    f = Interacting()(x)[:, 0] - Interacting()(torch.zeros_like(x))[:, 0]
    assert torch.allclose(a1.double().sum((1, 2)) / 64, f, rtol=1e-5)


def test_occlusion_grey_baseline_leaves_a_grey_image_unchanged_and_black_does_not():
    model = Linear()
    grey = torch.full((1, 1, 16, 16), 0.5, dtype=torch.float64)
    for fill, zero in (("grey", True), ("black", False)):
        a = _make("occlusion", model, None, grey, occlusion_baseline=fill, window=4, stride=4).attribute(grey, 0)
        assert bool((a == 0).all()) is zero, fill
    # a grey patch over the image: the drop is sum_patch w (x - 0.5)
    x = _images(1)
    a = _make("occlusion", model, None, x, occlusion_baseline="grey", window=4, stride=4).attribute(x, 0)
    assert torch.allclose(a, _patch_sums(model.w[[0], 0] * (x[:, 0] - 0.5), 4).float(), rtol=1e-6, atol=1e-6)


class LinearLayer(nn.Module):
    """conv ``layer4`` (no activation, stride 2: 16 -> 8) -> a dense head: linear, so the path integrals of the
    layer methods are exact with any number of steps."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer4 = nn.Conv2d(1, 3, 2, stride=2, bias=False).double()
        self.fc = nn.Linear(3 * 8 * 8, 2).double()

    def forward(self, x):
        return self.fc(self.layer4(x).flatten(1))


def test_layer_conductance_and_internal_influence_equal_their_closed_forms():
    model, x = LinearLayer(), _images()
    target = torch.tensor([1, 0])
    acts = model.layer4(x).detach()                                  # (B, 3, 8, 8); baseline 0 -> acts 0
    w = model.fc.weight.detach()[target].reshape(2, 3, 8, 8)        # d logit / d unit: constant
    # conductance: exact in float64; internal influence: Captum holds its quadrature weights in float32
    # (their sum is 1 within a few float32 ulps, 3e-8 measured), hence 1e-6
    for method, per_unit, tol in (("layer_conductance", w * acts, 1e-10), ("internal_influence", w, 1e-6)):
        m = _make(method, model, "toy", x, steps=3, interpolate="nearest")
        layer = m.layer_map(x, target)
        assert torch.allclose(layer, per_unit.sum(1), rtol=tol, atol=tol * per_unit.abs().max()), method
        a = m.attribute(x, target)                                   # nearest: each unit covers 2 x 2 pixels
        assert a.shape == (2, 16, 16)
        assert torch.allclose(a, layer.repeat_interleave(2, 1).repeat_interleave(2, 2).float()), method
    # conductance is complete: its units sum to f(x) - f(0)
    cond = _make("layer_conductance", model, "toy", x, steps=3).layer_map(x, target)
    f = model(x).gather(1, target[:, None])[:, 0] - model(torch.zeros_like(x)).gather(1, target[:, None])[:, 0]
    assert torch.allclose(cond.sum((1, 2)), f, rtol=1e-10)


def test_the_new_methods_run_on_a_real_backbone_and_are_scored_like_the_others():
    from cxrbench.classify.models import create_model
    torch.manual_seed(0)
    model = create_model("resnet18", 4, 1, "none", input_size=64).eval()
    x = torch.rand(2, 1, 48, 48, generator=torch.Generator().manual_seed(1))
    prepared, _ = A.prepare_for_attribution(model, x)
    s = _settings(ablation_patch=12, shapley_patch=16, shapley_samples=1)
    maps, status = A.run_methods(NEW, lambda n: A.make(n, model, prepared, s, 8, "resnet18"), x,
                                 torch.tensor([1, 3]))
    for name in NEW:
        assert status[name]["ok"], status[name]
        assert maps[name].shape == (2, 48, 48) and np.isfinite(maps[name]).all()
        assert np.abs(maps[name]).sum() > 0, name
        curves = PM.perturbation_curves(model, x, maps[name], torch.tensor([1, 3]))
        assert np.isfinite(np.asarray(curves["aoppc"])).all()


def test_settings_name_the_bad_key():
    import yaml
    from pathlib import Path
    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    s = A.validate(params)
    assert (s.occlusion_baseline, s.shapley_samples) == ("black", 10)       # black: the default run unchanged
    assert set(NEW) <= set(A.METHODS)
    for key, bad in (("occlusion_baseline", "white"), ("shapley_samples", 0), ("ablation_patch", 2.0),
                     ("shapley_patch", 0)):
        p = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
        p["explain"][key] = bad
        with pytest.raises(ParamError, match=f"explain.{key}"):
            A.validate(p)
