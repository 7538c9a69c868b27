"""CXR-Net (seed 003): the encoder-decoder-encoder on a timm encoder, its fusion loss, its decoder's pieces
(ICNR sub-pixel upsampling, LeakyReLU 0.1), training that resumes, saving and loading, the lungs-only input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from cxrbench.classify import cxrnet as CX
from cxrbench.classify import models as M
from cxrbench.classify import training as T
from cxrbench.core.params import ParamError

from helpers import TINY
from helpers import synthetic_cache as _data
from helpers import train_config as _cfg

NAME = f"cxrnet_{TINY}"


def _model(seed=0, input_size=32):
    torch.manual_seed(seed)
    return M.create_model(NAME, 4, 1, "none", input_size=input_size)


def test_names_and_shapes():
    assert CX.is_cxrnet(NAME) and CX.encoder_of(NAME) == TINY and CX.encoder_of("resnet18") == "resnet18"
    assert not CX.is_cxrnet("cxrnet_") and not CX.is_cxrnet(None)
    model = _model()
    assert isinstance(model.backbone, CX.CXRNet)
    x = torch.rand(3, 1, 48, 48, generator=torch.Generator().manual_seed(0))   # cache 48 px -> encoder 32 px
    model.eval()
    with torch.no_grad():
        out = model(x)
        assert out.shape == (3, 4)
        assert torch.equal(out, model.backbone.encoder(model.normalise(model.resize(x))))   # eval: encoder 1
        e = CX.explanation(model, x)
    assert e.shape == (3, 48, 48) and e.dtype == torch.float32 and (e >= 0).all() and (e <= 1).all()
    model.train()
    o1, o2 = model(x)
    assert o1.shape == o2.shape == (3, 4)
    with pytest.raises(NotImplementedError, match="only for CXR-Net"):
        CX.explanation(M.create_model(TINY, 4, 1, "none", input_size=32), x)


def test_the_second_encoder_is_the_first_reading_the_reconstruction():
    model = _model().double().train()
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    enc_params = {id(p) for p in model.backbone.encoder.parameters()}
    dec_params = {id(p) for p in model.backbone.decoder.parameters()}
    assert {id(p) for p in model.parameters()} == enc_params | dec_params      # no second copy of the encoder
    # the second output is the encoder (its batch norms in eval, to compare two calls) on the reconstruction
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    _, o2 = model(x)
    xn = model.normalise(x)
    r = model.backbone.reconstruction(xn)
    assert torch.allclose(o2, model.backbone.encoder(model.normalise(r)), rtol=1e-12, atol=1e-12)
    # the fusion loss: CE1 trains no decoder weight; CE2 trains both the decoder and the shared encoder
    y = torch.tensor([0, 3])
    o1, o2 = model(x)
    nn.functional.cross_entropy(o1, y).backward(retain_graph=True)
    assert all(p.grad is None or not p.grad.any() for p in model.backbone.decoder.parameters())
    model.zero_grad()
    nn.functional.cross_entropy(o2, y).backward()
    assert any(p.grad is not None and p.grad.any() for p in model.backbone.decoder.parameters())
    assert all(p.grad is not None for p in model.backbone.encoder.parameters() if p.requires_grad)


def test_loss_is_the_sum_of_the_two_encoders_losses():
    g = torch.Generator().manual_seed(0)
    o1, o2 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)       # training's float32
    y = torch.tensor([0, 1, 2, 1])
    ce = nn.CrossEntropyLoss()
    assert T.loss_of((o1, o2), y, ce, 0.0, 1.0, "multiclass") == ce(o1, y) + ce(o2, y)


def test_decoder_upsamples_with_icnr_pixel_shuffle_and_leaky_relu():
    dec = _model().backbone.decoder
    stage = dec.stages[0]
    from monai.networks.blocks import SubpixelUpsample
    assert isinstance(stage.up, SubpixelUpsample)
    x = torch.randn(1, stage.up.conv_block.in_channels, 4, 4, dtype=torch.float64)
    u = stage.up.double()(x)                           # ICNR at init: each 2 x 2 block is one value (no checkerboard)
    for di, dj in ((0, 1), (1, 0), (1, 1)):
        assert torch.allclose(u[..., di::2, dj::2], u[..., 0::2, 0::2], rtol=1e-12, atol=1e-12)
    acts = [m for m in dec.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))]
    assert acts and all(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.1 for m in acts)


def test_cxrnet_trains_resumes_saves_and_loads(tmp_path):
    imgs, y = _data()
    cfg = dict(backbone=NAME, aux_weight=1.0, epochs=2, augment={"enabled": False}, label_smoothing=0.0)
    full = T.train(_cfg(**cfg), imgs, y, np.arange(16), np.arange(16, 24), tmp_path / "full", progress=False,
                   device="cpu")
    assert full["complete"] and np.isfinite(full["best_val_loss"])
    part = T.train(_cfg(**cfg), imgs, y, np.arange(16), np.arange(16, 24), tmp_path / "part", progress=False,
                   device="cpu", stop_after_epochs=1)
    assert not part["complete"]
    again = T.train(_cfg(**cfg), imgs, y, np.arange(16), np.arange(16, 24), tmp_path / "part", progress=False,
                    device="cpu")
    assert again["resumed"] and again["complete"]
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and any(k.startswith("backbone.decoder.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    model, meta = M.load_classifier(tmp_path / "full" / T.FINAL)
    assert meta["backbone"] == NAME and isinstance(model.backbone, CX.CXRNet)
    x = torch.from_numpy(imgs[:2]).float() / 255
    with torch.no_grad():
        assert CX.explanation(model, x).shape == (2, 32, 32)


def test_config_for_a_cxrnet_backbone(params):
    p = {**params, "train": {**params["train"], "backbones": ["cxrnet_resnet34"], "folds": [0], "pretrained": "none"}}
    cfg = T.config_for(p, "cxrnet_resnet34", 0, {"channels": ["raw"], "size": 64})
    assert cfg.aux_weight == 1.0 and cfg.weights is None   # eq. 5: the second encoder's loss added with weight 1
    p["train"]["pretrained"] = "imagenet"
    cfg = T.config_for(p, "cxrnet_resnet34", 0, {"channels": ["raw"], "size": 64})
    assert cfg.weights == "resnet34.tv_in1k"         # the encoder's pinned torchvision weights
    with pytest.raises(ParamError, match="train.head"):
        M.create_model(NAME, 4, 1, "none", input_size=32, head={"kind": "fc", "width": 10, "dropout": 0.2})
    with pytest.raises(ParamError, match="not a model of the installed timm"):
        M.check_backbone("cxrnet_nonsense", ["cxrnet_nonsense"])


def test_lungs_segmented_input_keeps_only_the_lungs():
    from cxrbench.lungs.segmentation import apply_input_mode
    imgs = np.full((2, 1, 8, 8), 200, np.uint8)
    masks = np.zeros((2, 8, 8), np.uint8)
    masks[0, 2:6, 1:4] = 1
    out = apply_input_mode(imgs, masks, "lungs_segmented")
    assert (out[0, 0][masks[0] > 0] == 200).all() and (out[0, 0][masks[0] == 0] == 0).all()
    assert (out[1] == 0).all()                        # an empty mask: a black image
    removed = apply_input_mode(imgs, masks, "lungs_removed")
    assert (out.astype(int) + removed == 200).all()  # the two modes split the image


def test_the_packaged_imagenet_encoder(params):
    """``cxrnet_efficientnet_lite0`` with ``train.pretrained: packaged``: the encoder starts from the packaged
    ImageNet weights (the offline backbone), its run identity names them, and Grad-CAM finds its layer."""
    from cxrbench.classify.weights import timm_state
    from cxrbench.explain.runner import target_layer
    name = "cxrnet_efficientnet_lite0"
    assert name in params["train"]["known_backbones"]
    model = M.create_model(name, 4, 1, M.PACKAGED, input_size=64)
    ref = timm_state("efficientnet_lite0")
    enc = model.backbone.encoder.state_dict()
    assert torch.equal(enc["conv_head.weight"], ref["conv_head.weight"])
    assert torch.equal(enc["blocks.3.0.conv_pw.weight"], ref["blocks.3.0.conv_pw.weight"])
    assert enc["classifier.weight"].shape == (4, ref["classifier.weight"].shape[1])   # a new 4-class head
    assert ":sha256:" in T.weights_identity(name, M.PACKAGED)       # another checkpoint file is another run
    assert target_layer(model, name, params["explain"]["target_layers"])[0] == "backbone.encoder.bn2"
