"""Robustness metrics: Captum's max-sensitivity against Quantus' MaxSensitivity on the same perturbations,
infidelity against its definition computed by hand, and the two control maps."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from cxrbench.explain import attribution as A
from cxrbench.explain.metrics import robustness as RB

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 12 * 12, 3)).eval()


def _saliency(model):
    def explain(inputs, target):
        x = inputs.detach().clone().requires_grad_(True)
        out = model(x).gather(1, target.view(-1, 1)).sum()
        (g,) = torch.autograd.grad(out, x)
        return g.abs().amax(1)
    return explain


def test_captum_max_sensitivity_agrees_with_quantus_on_the_same_perturbations():
    """Quantus 0.6.0 MaxSensitivity, fed the same seeded uniform perturbations (one image at a time, so both
    libraries draw the samples in the same order), gives Captum's value: the same definition
    max ||e(x+d) - e(x)||_F / ||e(x)||_F. Both run in float32 on the same model: a relative tolerance of 1e-4
    covers float32 rounding of a norm over 144 pixels (~1e-6) with room, and a wrong norm, a missing
    denominator or another perturbation moves the value by far more (checked below)."""
    import quantus

    model = _model()
    explain = _saliency(model)
    x = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 1, 2])
    radius, samples = 0.05, 6
    for i in range(len(x)):
        ours = RB.sensitivity_max(explain, x[i:i + 1], target[i:i + 1], radius, samples, seed=10 + i)
        draw = RB.perturbation("uniform", radius, 10 + i)

        def perturb(arr, indices=None, **kw):
            t = torch.as_tensor(arr, dtype=torch.float32)
            return draw(t).numpy()

        def explain_np(model, inputs, targets, **kw):
            t = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
            return explain(t, torch.as_tensor(np.asarray(targets)).long()).detach().numpy()[:, None]

        a = explain_np(model, x[i:i + 1].numpy(), target[i:i + 1].numpy())
        metric = quantus.MaxSensitivity(nr_samples=samples, perturb_func=perturb, normalise=False, abs=False,
                                        disable_warnings=True, return_nan_when_prediction_changes=False)
        theirs = metric(model=model, x_batch=x[i:i + 1].numpy(), y_batch=target[i:i + 1].numpy(), a_batch=a,
                        explain_func=explain_np, channel_first=True, device="cpu")
        assert ours[0] > 0.01, "a saliency map moves under a 0.05 perturbation"
        assert abs(ours[0] - theirs[0]) <= 1e-4 * abs(theirs[0]), (i, ours, theirs)
        other = RB.sensitivity_max(explain, x[i:i + 1], target[i:i + 1], radius, samples, seed=99)
        assert abs(other[0] - theirs[0]) > 1e-3 * abs(theirs[0]), "other perturbations give another value"


def test_max_sensitivity_of_the_controls():
    """The edge map is a smooth function of the input (small sensitivity, ~ radius / contrast); a fresh random
    map per call is maximally unstable: ||u - v|| / ||u|| for two uniform maps is sqrt(1/6) / sqrt(1/3) =
    0.71 (concentrated: 1024 pixels); the max of 5 draws lies near it. A map that ignores the input scores 0."""
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 0])
    calls = iter(range(1000))
    rnd = RB.sensitivity_max(lambda inp, tg: torch.as_tensor(RB.random_map((len(inp), 32, 32), next(calls))),
                             x, t, 0.02, 5, seed=0)
    edge = RB.sensitivity_max(lambda inp, tg: torch.as_tensor(RB.edge_map(inp)), x, t, 0.02, 5, seed=0)
    const = RB.sensitivity_max(lambda inp, tg: torch.ones(len(inp), 32, 32), x, t, 0.02, 5, seed=0)
    assert (rnd > 0.6).all() and (rnd < 0.85).all()          # 1024 pixels: concentrated near 0.71
    assert (edge < rnd).all() and (const == 0).all()


def test_infidelity_against_its_definition_by_hand():
    """Captum's normalised infidelity equals, for one image, E[(beta I.e - (f(x) - f(x-I)))^2] with beta the
    least-squares scale sum(I.e * d) / sum((I.e)^2) over the samples, computed here in float64 from the same
    seeded noise; the model's output is the sigmoid of the target logit."""
    model = _model(3).double()
    x = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    target = torch.tensor([1])
    maps = np.random.default_rng(0).random((1, 12, 12))
    samples, noise = 20, 0.1
    got = RB.infidelity(model, x, maps, target, noise, samples, seed=5)
    draw = RB.perturbation("gaussian", noise, 5)
    noise_t, _ = draw(x.repeat(samples, 1, 1, 1))
    with torch.no_grad():
        fx = torch.sigmoid(model(x))[0, 1]
        fp = torch.sigmoid(model(x - noise_t))[:, 1]
    ie = (noise_t[:, 0] * torch.as_tensor(maps)).sum((1, 2))
    d = fx - fp
    beta = (ie * d).sum() / (ie * ie).sum()
    want = float(((beta * ie - d) ** 2).mean())
    assert got[0] == pytest.approx(want, rel=1e-9)


def test_infidelity_and_resilience_read_the_softmax_of_a_multiclass_model():
    """A multiclass model's (classify.task) probability of the target is its softmax over the classes, not the
    sigmoid of its logit: infidelity's f and the reliability stage's probabilities follow ``model.task``."""
    from cxrbench.explain import reliability as REL

    model = _model(3).double()
    x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    target = torch.tensor([1, 2])
    maps = np.random.default_rng(0).random((2, 12, 12))
    sig = RB.infidelity(model, x, maps, target, 0.1, 20, seed=5)
    with torch.no_grad():
        logits = model(x)
    np.testing.assert_allclose(REL._prob(model, x, target), torch.sigmoid(logits)[[0, 1], [1, 2]].numpy(), rtol=1e-12)
    model.task = "multiclass"                                  # as load_classifier sets it from the meta
    soft = RB.infidelity(model, x, maps, target, 0.1, 20, seed=5)
    np.testing.assert_allclose(REL._prob(model, x, target), torch.softmax(logits, 1)[[0, 1], [1, 2]].numpy(),
                               rtol=1e-12)
    draw = RB.perturbation("gaussian", 0.1, 5)
    noise_t, _ = draw(x[:1].repeat(20, 1, 1, 1))               # image 0 alone by hand, as in the test above
    with torch.no_grad():
        fx = torch.softmax(model(x[:1]), 1)[0, 1]
        fp = torch.softmax(model(x[:1] - noise_t), 1)[:, 1]
    ie = (noise_t[:, 0] * torch.as_tensor(maps[0])).sum((1, 2))
    d = fx - fp
    beta = (ie * d).sum() / (ie * ie).sum()
    one = RB.infidelity(model, x[:1], maps[:1], target[:1], 0.1, 20, seed=5)
    assert one[0] == pytest.approx(float(((beta * ie - d) ** 2).mean()), rel=1e-9)
    assert not np.allclose(soft, sig)


def test_edge_map_is_the_sobel_magnitude_and_the_perturbation_is_seeded():
    x = torch.zeros(1, 3, 16, 16)
    x[..., 8:] = 1.0                                        # a vertical step: edges only at the step
    e = RB.edge_map(x)
    assert e.shape == (1, 16, 16) and e[0, :, :6].max() == 0 and e[0, :, 7:9].min() > 0
    a = RB.perturbation("uniform", 0.1, 3)(torch.zeros(2, 4))
    b = RB.perturbation("uniform", 0.1, 3)(torch.zeros(2, 4))
    assert torch.equal(a, b) and a.abs().max() <= 0.1
    with pytest.raises(ValueError, match="kind"):
        RB.perturbation("salt", 0.1, 0)


def test_sensitivity_of_a_project_method_runs_under_captums_no_grad():
    """The project's saliency (through its runner) inside Captum's no_grad: the wrapper turns gradients back
    on, and the value is finite and positive."""
    model = _model()
    x = torch.rand(2, 1, 12, 12)
    prepared, _ = A.prepare_for_attribution(model, x)
    settings = A.Settings(methods=["saliency"], steps=4, window=4, stride=4, interpolate="bilinear",
                          target_layers={}, max_batch=64, memory_fraction=0.5, scorecam_batch=None,
                          lrp_composite="epsilon_gamma_box")
    m = A.make("saliency", model, prepared, settings, 64, None)
    v = RB.sensitivity_max(lambda inp, tg: m.attribute(inp, tg), x, torch.tensor([0, 1]), 0.02, 3, seed=0)
    assert np.isfinite(v).all() and (v > 0).all()
