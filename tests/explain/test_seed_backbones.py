"""DeepCOVIDExplainer's other networks (vgg16, vgg19, densenet201): known, with a CAM layer from params and
LRP through zennit; and CheXNet / torchvision DenseNet121 checkpoints loaded under timm's names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from cxrbench.classify import models as M
from cxrbench.classify.weights import MappingError, densenet_timm_names
from cxrbench.explain import attribution as A
from cxrbench.explain.runner import target_layer

from test_libraries import _bias_free, _lrp

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("name,path,channels,side", [("vgg16", "features.29", 512, 4), ("vgg19", "features.35", 512, 4),
                                                     ("densenet201", "features.norm5", 1920, 2)])
def test_seed_001_backbones_are_known_with_their_cam_layer(params, name, path, channels, side):
    """At 64 px: VGG's last ReLU before its 5th pool is 64 / 16 = 4 wide; DenseNet's norm5 is 64 / 32 = 2."""
    assert name in params["train"]["known_backbones"] and params["train"]["weights"][name] == f"{name}.tv_in1k"
    torch.manual_seed(0)
    model = M.create_model(name, 3, 1, "none", input_size=64).eval()
    key, layer = target_layer(model, name, params["explain"]["target_layers"])
    assert key == f"backbone.{path}"
    seen = {}
    h = layer.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    with torch.no_grad():
        model(torch.rand(1, 1, 64, 64))
    h.remove()
    assert seen["out"].shape[1] == channels and seen["out"].shape[-1] == side
    if name.startswith("vgg"):
        pool = dict(model.backbone.features.named_children())[str(int(path.split(".")[1]) + 1)]
        assert isinstance(layer, nn.ReLU) and isinstance(pool, nn.MaxPool2d)   # the last conv's ReLU
    assert A.lrp_canonizers(name)                                              # a supported LRP family


@pytest.mark.slow
def test_lrp_epsilon_conserves_the_logit_on_vgg16():
    """VGG has no residual addition and no batch norm: bias-free, the epsilon rule's map sums to the target
    logit up to its stabiliser (1e-6 per layer). Without normalisation the bias-free ReLU network is
    positively homogeneous, so inputs x 1000 make every activation large beside the stabiliser."""
    torch.manual_seed(0)
    model = _bias_free(M.create_model("vgg16", 3, 1, "none", input_size=32, normalize="none")).eval()
    x = 1000 * torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    a, s, z = _lrp(model, x, torch.tensor([0, 2]), "vgg16")
    assert a.shape == (2, 32, 32)
    np.testing.assert_allclose(s, z, rtol=1e-3)


def _torchvision_names(state):
    """timm's DenseNet state dict under torchvision's pre-0.3 names (``norm.1``) and CheXNet's wrapper."""
    import re

    out = {}
    for k, v in state.items():
        k = re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k)
        k = "classifier.0." + k.split(".", 1)[1] if k.startswith("classifier.") else k
        out["module.densenet121." + k] = v
    return out


def test_chexnet_and_old_torchvision_densenet_names_load_into_timm(tmp_path):
    torch.manual_seed(1)
    ref = M.create_model("densenet121", 14, 3, "none", input_size=32).backbone.state_dict()
    chexnet = _torchvision_names(ref)
    assert "module.densenet121.features.denseblock1.denselayer1.norm.1.weight" in chexnet
    assert "module.densenet121.classifier.0.weight" in chexnet
    mapped = densenet_timm_names(chexnet)
    assert set(mapped) == set(ref)
    assert all(torch.equal(mapped[k], ref[k]) for k in ref)
    torch.save({"state_dict": chexnet}, tmp_path / "chexnet.pth.tar.pth")
    torch.manual_seed(2)
    model = M.create_model("densenet121", 2, 1, str(tmp_path / "chexnet.pth.tar.pth"), input_size=32)
    own = model.backbone.state_dict()
    w = ref["features.denseblock2.denselayer3.conv2.weight"]
    assert torch.equal(own["features.denseblock2.denselayer3.conv2.weight"], w)      # loaded, not fresh
    assert own["features.conv0.weight"].shape[1] == 1                                 # adapted to grey
    assert own["classifier.weight"].shape[0] == 2                                     # 14 CheXNet outputs dropped
    with pytest.raises(MappingError, match="both map to"):
        densenet_timm_names({"features.norm5.weight": w, "module.features.norm5.weight": w})
