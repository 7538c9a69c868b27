"""Robustness of attribution maps through Captum: max-sensitivity and infidelity, with two control maps.

* **max-sensitivity** (Yeh et al. 2019; :func:`captum.metrics.sensitivity_max`): the largest relative change
  ``||e(x + d) - e(x)|| / ||e(x)||`` (Frobenius) of the explanation over ``samples`` perturbations ``d`` drawn
  uniformly from the L-infinity ball of ``radius`` (image units). Lower = more robust; 0 for an explanation
  that ignores the input, so a low value is read next to the controls.
* **infidelity** (Yeh et al. 2019; :func:`captum.metrics.infidelity`): the expected squared error between
  ``I . e`` and the output change ``f(x) - f(x - I)`` for Gaussian perturbations ``I`` (standard deviation
  ``noise``), with Captum's ``normalize=True`` (the map rescaled by the least-squares factor, so the stored
  maps' per-image scale does not matter). Lower = the map predicts the model's response better.

The controls are maps that know nothing of the model: :func:`random_map` (uniform noise, a fresh draw per call:
the least robust map there is) and :func:`edge_map` (scikit-image's Sobel magnitude of the input: a map of
image contrast). Each perturbation is seeded (:func:`perturbation`), so a run is repeatable; the same
perturbation cycles feed Quantus' ``MaxSensitivity`` in the cross-check test.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

__all__ = ["edge_map", "random_map", "perturbation", "sensitivity_max", "infidelity", "CAMS"]

# methods whose maps are a feature map upsampled to the input (compared at feature-map resolution)
CAMS = ("gradcam", "gradcam_pp", "scorecam", "layercam", "xgradcam", "eigencam")


def edge_map(x) -> np.ndarray:
    """The Sobel edge magnitude of the channel mean of ``x`` (N, C, H, W): float32 (N, H, W)."""
    from skimage.filters import sobel

    a = x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, np.float64)
    return np.stack([sobel(img.mean(0)) for img in a]).astype(np.float32)


def random_map(shape, seed: int) -> np.ndarray:
    """Uniform [0, 1) noise of ``shape`` (N, H, W), float32, seeded."""
    return np.random.default_rng(seed).random(shape, dtype=np.float64).astype(np.float32)


def perturbation(kind: str, scale: float, seed: int) -> Callable:
    """A seeded perturbation function of Captum's metrics: ``uniform`` (L-infinity ball of radius ``scale``,
    for max-sensitivity: returns the perturbed input) or ``gaussian`` (standard deviation ``scale``, for
    infidelity: returns (noise, input - noise)). Draws come from one generator per function, so each call
    draws new noise, and the sequence is the same in every run."""
    if kind not in ("uniform", "gaussian"):
        raise ValueError(f"perturbation kind {kind!r}: expected 'uniform' or 'gaussian'")
    if not scale > 0:
        raise ValueError(f"perturbation scale {scale!r}: expected a positive number")
    gen = np.random.default_rng(seed)

    def draw(like: torch.Tensor) -> torch.Tensor:
        if kind == "uniform":
            v = gen.uniform(-scale, scale, size=tuple(like.shape))
        else:
            v = gen.normal(0.0, scale, size=tuple(like.shape))
        return torch.as_tensor(v, dtype=like.dtype, device=like.device)

    if kind == "uniform":
        def uniform(inputs, radius=None):
            return inputs + draw(inputs)
        return uniform

    def gaussian(inputs):
        noise = draw(inputs)
        return noise, inputs - noise
    return gaussian


def _with_grad(explain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable:
    """Captum calls the explanation under ``torch.no_grad``; gradient methods need it back on."""
    def fn(inputs, target=None):
        if isinstance(inputs, tuple):                       # Captum passes the unperturbed input as a 1-tuple
            (inputs,) = inputs
        if torch.is_tensor(target) and target.numel() == 1:   # Captum leaves a 1-element target unexpanded
            target = target.reshape(1).expand(len(inputs))
        with torch.enable_grad():
            out = explain(inputs, target)
        out = torch.as_tensor(out).detach().to(inputs.device).float()
        if not torch.isfinite(out).all():
            raise FloatingPointError("the explanation of a perturbed input is not finite")
        return (out,)                                       # Captum iterates over the explanation's tensors

    return fn


def sensitivity_max(explain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                    target: torch.Tensor, radius: float, samples: int, seed: int,
                    max_batch: int | None = None) -> np.ndarray:
    """Per image, Captum's max-sensitivity of ``explain(inputs, target) -> (N, H, W)`` at ``x`` (float64 array)."""
    from captum.metrics import sensitivity_max as captum_sensitivity_max

    v = captum_sensitivity_max(_with_grad(explain), x, perturb_func=perturbation("uniform", radius, seed),
                               perturb_radius=radius, n_perturb_samples=int(samples),
                               max_examples_per_batch=max_batch, target=target)
    out = v.detach().cpu().double().numpy()
    if not np.isfinite(out).all():
        raise FloatingPointError("max-sensitivity is not finite")
    return out


def infidelity(model: torch.nn.Module, x: torch.Tensor, maps, target: torch.Tensor, noise: float, samples: int,
               seed: int, max_batch: int | None = None) -> np.ndarray:
    """Per image, Captum's normalised infidelity of the (N, H, W) ``maps`` for ``model`` at ``x`` (float64 array).

    A map of one channel explains every input channel alike: it is broadcast over the channels."""
    from captum.metrics import infidelity as captum_infidelity

    m = torch.as_tensor(np.asarray(maps, np.float32), device=x.device)
    if m.shape != (x.shape[0],) + tuple(x.shape[-2:]):
        raise ValueError(f"infidelity: maps of shape {tuple(m.shape)} for inputs of shape {tuple(x.shape)}")
    attr = m[:, None].expand_as(x).contiguous()

    from cxrbench.classify.task import probabilities

    def forward(inputs):                             # P(label) (sigmoid), or P(class) of a multiclass model (softmax)
        with torch.no_grad():
            return probabilities(model(inputs), getattr(model, "task", "multilabel"))

    v = captum_infidelity(forward, perturbation("gaussian", noise, seed), x, attr, target=target,
                          n_perturb_samples=int(samples), max_examples_per_batch=max_batch, normalize=True)
    out = v.detach().cpu().double().numpy()
    if not np.isfinite(out).all():
        raise FloatingPointError("infidelity is not finite")
    return out
