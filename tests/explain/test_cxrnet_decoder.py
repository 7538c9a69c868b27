"""CXR-Net's own map (``cxrnet_decoder``) in the attribution registry: the decoder's image on a CXR-Net, the same
for every class explained, scored like any other map, and "not applicable" on every other classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrbench.classify import cxrnet as CX
from cxrbench.classify.models import create_model
from cxrbench.explain import attribution as A
from cxrbench.explain.metrics import perturbation as PM

from test_libraries import _settings

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

LAYERS = {"cxrnet_": "encoder.layer4", "test_resnet": "layer4"}


def _run(model, backbone, x, target, methods):
    prepared, _ = A.prepare_for_attribution(model, x)
    s = _settings(target_layers=LAYERS)
    return A.run_methods(methods, lambda n: A.make(n, model, prepared, s, 2, backbone), x, target)


def test_decoder_map_is_the_reconstruction_and_is_scored_like_gradcam():
    torch.manual_seed(0)
    model = create_model("cxrnet_test_resnet", 4, 1, "none", input_size=32).eval()
    x = torch.rand(3, 1, 40, 40, generator=torch.Generator().manual_seed(2))
    maps, status = _run(model, "cxrnet_test_resnet", x, torch.tensor([0, 1, 3]), ["cxrnet_decoder", "gradcam"])
    assert status["cxrnet_decoder"]["ok"] and status["gradcam"]["ok"]
    with torch.no_grad():
        expected = CX.explanation(model, x).numpy()
    np.testing.assert_allclose(maps["cxrnet_decoder"], expected, rtol=1e-5, atol=1e-6)   # chunks of 2, one batch
    assert maps["cxrnet_decoder"].shape == maps["gradcam"].shape == (3, 40, 40)
    other, _ = _run(model, "cxrnet_test_resnet", x, torch.tensor([2, 2, 2]), ["cxrnet_decoder"])
    np.testing.assert_array_equal(other["cxrnet_decoder"], maps["cxrnet_decoder"])   # class-agnostic
    curves = PM.perturbation_curves(model, x, maps["cxrnet_decoder"], torch.tensor([0, 1, 3]))
    assert np.isfinite(np.asarray(curves["aoppc"])).all()


def test_decoder_map_is_not_applicable_to_other_classifiers():
    torch.manual_seed(0)
    model = create_model("test_resnet", 4, 1, "none", input_size=32).eval()
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    maps, status = _run(model, "test_resnet", x, torch.tensor([0, 1]), ["cxrnet_decoder", "saliency"])
    assert "cxrnet_decoder" not in maps and status["saliency"]["ok"]
    assert not status["cxrnet_decoder"]["ok"]
    assert status["cxrnet_decoder"]["reason"].startswith("NotApplicable: not applicable: test_resnet")


def test_cascading_randomisation_walks_the_decoder_then_the_encoder():
    from cxrbench.explain import randomisation as R
    torch.manual_seed(0)
    model = create_model("cxrnet_test_resnet", 4, 1, "none", input_size=32).eval()
    names = [g.name for g in R.cascade_groups(model)]         # every parameter in one group, else ValueError
    n_stages = len(model.backbone.decoder.stages)
    assert names[:2] == ["decoder.out", "decoder.last"]
    assert names[2:2 + n_stages] == [f"decoder.stages.{i}" for i in reversed(range(n_stages))]
    assert names[2 + n_stages] == "encoder.fc" and names[-1].startswith("encoder.conv1")
    # randomising the decoder's top changes the decoder's map and leaves the classifier's output alone
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    _, first = next(iter(R.cascade(model, 0)))[1:]
    with torch.no_grad():
        assert torch.equal(first(x), model(x))
        assert not torch.allclose(CX.explanation(first, x), CX.explanation(model, x))
