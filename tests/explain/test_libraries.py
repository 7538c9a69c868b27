"""The attribution methods that come from the field's libraries: pytorch-grad-cam (Grad-CAM++, Score-CAM,
LayerCAM, XGrad-CAM, Eigen-CAM) and zennit (LRP), as cxrbench.explain.attribution wraps them."""


import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cxrbench.classify.models import create_model
from cxrbench.core.params import ParamError
from cxrbench.explain import attribution as A

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CAMS = ["gradcam_pp", "scorecam", "layercam", "xgradcam", "eigencam"]
NEW = CAMS[1:] + ["lrp"]
LAYERS = {"resnet": "layer4", "efficientnet": "bn2", "toy": "layer4"}


def _settings(**kw):
    base = dict(methods=[], steps=4, window=8, stride=8, interpolate="bilinear", target_layers=LAYERS,
                max_batch=64, memory_fraction=0.5, scorecam_batch=None, lrp_composite="epsilon_gamma_box")
    base.update(kw)
    return A.Settings(**base)


def _make(name, model, backbone, x, max_batch=64, **kw):
    prepared, _ = A.prepare_for_attribution(model, x)
    return A.make(name, model, prepared, _settings(**kw), max_batch, backbone)


class Toy(nn.Module):
    """conv -> ReLU -> conv ``layer4`` (8 x 8, ReLU) -> a dense head on the flattened map: the gradient at
    the layer varies over locations and between classes (unlike a head after global pooling)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.layer4 = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(self.layer4(self.stem(x)).flatten(1))


# --- shapes on the real backbones ----------------------------------------------------------------


@pytest.fixture(scope="module", params=[("resnet18", "none"), ("efficientnet_lite0", "packaged")], ids=lambda p: p[0])
def classifier(request):
    name, pretrained = request.param
    torch.manual_seed(0)
    return name, create_model(name, 4, 1, pretrained, input_size=64).eval()    # resized inside: 48 -> 64


@pytest.mark.parametrize("method", CAMS + ["lrp"])
def test_library_methods_map_float32_at_input_resolution(classifier, method):
    backbone, model = classifier
    x = torch.rand(2, 1, 48, 48, generator=torch.Generator().manual_seed(1))
    # Score-CAM costs a forward per channel of the layer (512, 1280 at the last one): an early layer here
    layers = {"resnet": "layer1", "efficientnet": "blocks.1"} if method == "scorecam" else LAYERS
    m = _make(method, model, backbone, x, max_batch=1, target_layers=layers, scorecam_batch=64)      # two chunks
    a = m.attribute(x, torch.tensor([1, 3]))
    assert a.shape == (2, 48, 48) and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    if method != "lrp":
        assert (a >= 0).all()                                    # rectified CAMs
    if method in ("eigencam", "lrp"):          # a gradient-weighted CAM may be all zero on a random head
        assert a.abs().sum() > 0, "an all-zero map where the backbone gives one"


# --- Grad-CAM++ against an independent reference -------------------------------------------------


def _gradcam_pp_reference(model, x, target):
    """Chattopadhay et al. eq. 19 with the exponential closed form, as the library writes it
    (eps 1e-6 in the denominator, alpha 0 where the gradient is 0), then upsampled bilinearly."""
    acts = {}
    h = model.layer4.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    xi = x.clone().requires_grad_(True)
    score = model(xi).gather(1, target.view(-1, 1)).sum()
    h.remove()
    a = acts["a"]
    g, = torch.autograd.grad(score, a)
    a, g = a.detach().double(), g.double()
    alpha = g ** 2 / (2 * g ** 2 + a.sum((2, 3), keepdim=True) * g ** 3 + 1e-6)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    w = (alpha * F.relu(g)).sum((2, 3), keepdim=True)
    cam = F.relu((w * a).sum(1, keepdim=True)).float()
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear")[:, 0]


def test_gradcam_pp_matches_closed_form_reference():
    model = Toy().eval()
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1, 2, 3])
    got = _make("gradcam_pp", model, "toy", x).attribute(x, target)
    ref = _gradcam_pp_reference(model, x, target)
    assert ref.abs().max() > 0
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)


def test_layer_resolution_map_is_the_library_output_before_its_scaling():
    """The library's own call min-max scales each map and resizes it with cv2 (bilinear): the same
    operations on our layer-resolution map give exactly its output (nothing else is changed)."""
    from pytorch_grad_cam import GradCAMPlusPlus, LayerCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    model = Toy().eval()
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([1, 0, 3])
    for name, lib in [("gradcam_pp", GradCAMPlusPlus), ("layercam", LayerCAM)]:
        ours = _make(name, model, "toy", x).attribute(x, target)
        cam = lib(model=model, target_layers=[model.layer4])
        theirs = torch.from_numpy(cam(x, [ClassifierOutputTarget(int(t)) for t in target]))
        cam.activations_and_grads.release()
        lo, hi = ours.amin((1, 2), keepdim=True), ours.amax((1, 2), keepdim=True)
        torch.testing.assert_close((ours - lo) / (hi - lo + 1e-7), theirs, rtol=1e-4, atol=1e-5)


# --- batched targets ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", CAMS + ["lrp"])
def test_row_i_uses_target_i(method):
    """One image twice with two targets: swapping the targets swaps the maps, and each row equals the
    image attributed alone with its target (Eigen-CAM: one projection, oriented per target). In float64:
    a batch of 1 and one of 2 may take float32 kernels that round differently, depending on the CPU; the
    float32 maps attribute() returns then agree to within one rounding (eps32 = 1.2e-7 relative)."""
    model = Toy().eval().double()
    img = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = img.repeat(2, 1, 1, 1)
    m = _make(method, model, None if method == "lrp" else "toy", x)
    a = m.attribute(x, torch.tensor([0, 2]))
    b = m.attribute(x, torch.tensor([2, 0]))
    torch.testing.assert_close(b, a.flip(0), rtol=2.4e-7, atol=1e-12)
    alone = m.attribute(img, torch.tensor([2]))
    torch.testing.assert_close(alone[0], a[1], rtol=2.4e-7, atol=1e-12)
    if method == "eigencam":    # one projection; its sign follows each target's class score: same map or its other half
        assert torch.allclose(a[0], a[1]) or (a[0] * a[1]).abs().max() == 0
    else:
        assert (a[0] - a[1]).abs().max() > 1e-3 * a.abs().max(), "targets 0 and 2 gave the same map"


@pytest.mark.parametrize("method", NEW)
def test_chunking_and_scorecam_batch_do_not_change_the_maps(method):
    # float64 model and inputs: chunks of 2 and a batch of 5 may use float32 kernels that round
    # differently (CPU-dependent); in float64 the float32 maps agree to within one rounding
    model = Toy().eval().double()
    x = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3, 1])
    backbone = None if method == "lrp" else "toy"
    one = _make(method, model, backbone, x, max_batch=1000).attribute(x, target)
    small = _make(method, model, backbone, x, max_batch=2, scorecam_batch=3).attribute(x, target)
    torch.testing.assert_close(small, one, rtol=2.4e-7, atol=1e-12)


# --- LRP: conservation, canonizers, the Classifier wrapper -----------------------------------------


def _bias_free(model: nn.Module) -> nn.Module:
    """Random positive batch-norm scales, no bias anywhere (merged biases are 0): the epsilon rule then
    conserves relevance exactly, up to its stabiliser."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = 0.5 + torch.rand(m.weight.shape, generator=g)
            m.running_var.data = 0.5 + torch.rand(m.running_var.shape, generator=g)
            m.bias.data.zero_()
            m.running_mean.data.zero_()
        elif isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
            m.bias.data.zero_()
    return model


def _lrp(model, x, target, backbone, composite="epsilon"):
    m = _make("lrp", model, backbone, x, lrp_composite=composite)
    a = m.attribute(x, target)
    c = m.conservation()
    return a, np.asarray(c["sum"]), np.asarray(c["logit"])


@pytest.mark.parametrize("wrapped", [False, True], ids=["timm", "Classifier"])
def test_lrp_epsilon_conserves_the_logit_with_the_resnet_canonizer(wrapped):
    """Bias-free ResNet18 (ReLU, BN, residual sums), epsilon rule: sum(map) = target logit within 1e-3
    relative. Through the Classifier (48 px cache image resized to 32, normalised) as well: the wrapper's
    resize and normalisation keep it. Without the residual canonizer (merging batch norms only) the skip
    connections count relevance twice: far from the logit."""
    import timm
    torch.manual_seed(0)
    if wrapped:
        model = _bias_free(create_model("resnet18", 3, 1, "none", input_size=32)).eval()
    else:
        model = _bias_free(timm.create_model("resnet18", num_classes=3, in_chans=1, pretrained=False)).eval()
    x = torch.rand(3, 1, 48, 48, generator=torch.Generator().manual_seed(5))
    target = torch.tensor([0, 1, 2])
    a, s, z = _lrp(model, x, target, "resnet18")
    assert a.shape == (3, 48, 48)
    with torch.no_grad():
        logits = model(x).gather(1, target.view(-1, 1))[:, 0].numpy()
    np.testing.assert_allclose(z, logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.double().sum((1, 2)).numpy(), s, rtol=1e-5)
    np.testing.assert_allclose(s, z, rtol=1e-3)
    _, s_plain, _ = _lrp(model, x, target, None)             # batch norms merged, no Sum in the blocks
    assert (np.abs(s_plain - z) / np.abs(z)).min() > 0.1


def test_lrp_canonizers_keep_the_logits_and_are_removed():
    """The canonized backbones compute the same logits (merged batch norms, the Sum in the residual
    blocks), and removing the canonizers restores the modules (the prepared model is reused)."""
    for name, pretrained in [("resnet18", "none"), ("efficientnet_lite0", "packaged"), ("densenet121", "none")]:
        torch.manual_seed(0)
        model = create_model(name, 3, 1, pretrained, input_size=32).eval()
        net = model.backbone
        x = torch.randn(2, 1, 32, 32)
        state = {k: v.clone() for k, v in net.state_dict().items()}
        with torch.no_grad():
            before = net(x)
            applied = [i for c in A.lrp_canonizers(name) for i in c.apply(net)]
            assert applied, name
            during = net(x)
            for i in applied:
                i.remove()
            after = net(x)
        torch.testing.assert_close(during, before, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(after, before)
        assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items()), name
        assert not any(hasattr(m, "canonizer_sum") for m in net.modules()), name


def test_lrp_unsupported_backbone_is_a_recorded_status():
    model = Toy().eval()
    x = torch.rand(2, 1, 16, 16)
    s = _settings(target_layers={"inception_resnet_v2": "layer4"})       # the toy's layer under that name
    prepared, _ = A.prepare_for_attribution(model, x)
    maps, status = A.run_methods(["lrp", "layercam"], lambda n: A.make(n, model, prepared, s, 8, "inception_resnet_v2"),
                                 x, torch.tensor([0, 1]), log=lambda m: None)
    assert status["lrp"]["ok"] is False and "NotImplementedError" in status["lrp"]["reason"]
    assert "inception_resnet_v2" in status["lrp"]["reason"]
    assert "lrp" not in maps and status["layercam"]["ok"] and maps["layercam"].shape == (2, 16, 16)


def test_new_params_are_validated(params):
    for key, bad, match in [("lrp_composite", "epsilon_typo", "valid values"), ("scorecam_batch", 0, ">= 1")]:
        p = {**params, "explain": {**params["explain"], key: bad}}
        with pytest.raises(ParamError, match=rf"explain\.{key}.*{match}|{match}"):
            A.validate(p)
    s = A.validate(params)
    assert s.lrp_composite in A.LRP_COMPOSITES
    assert set(NEW + ["gradcam_pp"]) <= set(s.methods)


def test_eigencam_sign_follows_the_class_score():
    """A principal component's sign is arbitrary: the projection is flipped where it anti-correlates with the
    class score per location, so the ReLU keeps the half that raises the score."""
    from cxrbench.explain.methods.cams import orient_by_class_score
    rng = np.random.default_rng(0)
    acts = rng.random((2, 4, 3, 3))
    grads = np.ones((2, 4, 3, 3))                      # score per location = sum over channels of A
    score = acts.sum(1)
    proj = np.stack([-(score[0] - score[0].mean()), score[1] - score[1].mean()])
    out = orient_by_class_score(proj, acts, grads)
    np.testing.assert_allclose(out[0], -proj[0])      # was anti-correlated: flipped
    np.testing.assert_allclose(out[1], proj[1])       # already aligned: kept


def test_eigencam_map_lies_where_the_class_score_rises():
    model = Toy().eval().double()
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3])
    eig = _make("eigencam", model, "toy", x).attribute(x, target)
    cam = _make("gradcam", model, "toy", x)
    from captum.attr import LayerGradCam, LayerAttribution
    for i in range(4):
        raw = LayerGradCam(model, model.layer4).attribute(x[i:i + 1], target=int(target[i]), relu_attributions=False)
        up = LayerAttribution.interpolate(raw, (16, 16), interpolate_mode=cam.settings["interpolate"])[0, 0]
        e = eig[i].double().ravel()
        if e.abs().max() > 0:
            assert float(((e - e.mean()) * (up.ravel() - up.mean())).sum()) >= 0
