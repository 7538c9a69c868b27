"""LIME (captum.attr.Lime on SLIC superpixels) in the attribution registry: where it puts relevance on a
model that reads one region, reproducibility, and a map the metrics score like any other."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from cxrbench.explain import attribution as A
from cxrbench.explain.methods.lime import slic_segments
from cxrbench.explain.metrics import perturbation as PM

from test_libraries import _make

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Quadrant(nn.Module):
    """Logit 0: the sum of the top-left quadrant's pixels; logit 1: minus it. Nothing else is read."""

    def forward(self, x):
        s = x[:, :, :16, :16].sum((1, 2, 3))
        return torch.stack([s, -s], 1)


def _images():
    g = torch.Generator().manual_seed(0)
    x = 0.05 * torch.rand(2, 1, 32, 32, generator=g)
    x[:, :, :16, :16] += 0.9          # four flat quadrants: SLIC's superpixels follow them
    x[:, :, 16:, 16:] += 0.5
    return x


def test_lime_puts_the_relevance_on_the_region_the_model_reads():
    x = _images()
    m = _make("lime", Quadrant(), None, x, lime_samples=100, lime_segments=8)
    a = m.attribute(x, torch.tensor([0, 1]))
    assert a.shape == (2, 32, 32) and a.dtype == torch.float32
    inside = a[:, :16, :16].mean((1, 2))
    outside = a[:, 16:, :].abs().mean((1, 2))
    assert inside[0] > 10 * outside[0] and inside[0] > 0          # target 0: the quadrant raises the logit
    assert inside[1] < 0 and -inside[1] > 10 * outside[1]         # target 1: it lowers it
    seg = slic_segments(x[0], 8, 0.1)
    for k in seg.unique():                                        # one coefficient per superpixel
        vals = a[0][seg == k]
        assert torch.allclose(vals, vals[0].expand_as(vals))


def test_lime_is_reproducible_and_leaves_the_global_rng_alone():
    x = _images()
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    m = _make("lime", Quadrant(), None, x, lime_samples=40, lime_segments=8)
    a1 = m.attribute(x, torch.tensor([0, 0]))
    after = torch.rand(3)
    assert torch.equal(before, after)
    a2 = _make("lime", Quadrant(), None, x, lime_samples=40, lime_segments=8).attribute(x, torch.tensor([0, 0]))
    assert torch.equal(a1, a2)


def test_lime_is_registered_run_like_the_others_and_scored_by_aoppc():
    assert "lime" in A.METHODS
    x = _images()
    model = Quadrant()
    prepared, _ = A.prepare_for_attribution(model, x)
    from test_libraries import _settings

    s = _settings(lime_samples=40, lime_segments=8)
    maps, status = A.run_methods(["lime", "occlusion"], lambda n: A.make(n, model, prepared, s, 8, None), x,
                                 torch.tensor([0, 0]))
    assert status["lime"]["ok"] and maps["lime"].shape == maps["occlusion"].shape == (2, 32, 32)
    curves = PM.perturbation_curves(model, x, maps["lime"], torch.tensor([0, 0]))
    assert np.isfinite(np.asarray(curves["aoppc"])).all()
