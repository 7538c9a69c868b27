"""Perturbation methods: occlusion (captum.attr.Occlusion, a sliding window), and the fill and patch grid it
shares with feature ablation and Shapley sampling (:mod:`cxrbench.explain.methods.ablation`).

All three remove part of the image by setting it to ``explain.occlusion_baseline``: ``black`` (0, the default)
or ``grey`` (0.5: seed 000 section 3.4.1 describes occlusion with a grey square, after Zeiler & Fergus), in the
[0, 1] cache units the classifier reads.

* occlusion: window and stride from ``explain.occlusion_window`` / ``explain.occlusion_stride``; a pixel gets
  the mean drop of the target logit over the windows that cover it.
"""

from __future__ import annotations

import torch

from cxrbench.explain.methods.registry import Method, register

# the value a removed region takes, per explain.occlusion_baseline (the classifier's input is in [0, 1])
BASELINES = {"black": 0.0, "grey": 0.5}


def _pixels(v, side: int) -> int:
    """A window/stride in pixels: a float <= 1 is a fraction of the image side."""
    if isinstance(v, float) and v <= 1:
        return max(1, int(round(v * side)))
    return int(v)


def baseline_value(settings: dict) -> float:
    """The fill of a removed region: ``explain.occlusion_baseline`` (black when a caller's settings omit it)."""
    name = settings.get("occlusion_baseline", "black")
    if name not in BASELINES:
        raise ValueError(f"explain.occlusion_baseline {name!r}: expected one of {sorted(BASELINES)}")
    return BASELINES[name]


def patch_mask(height: int, width: int, patch: int, device=None) -> torch.Tensor:
    """(H, W) long labels 0..K-1 of a grid of ``patch`` x ``patch`` squares, row-major (the last row and
    column of patches are cut short where the side is not a multiple of ``patch``)."""
    cols = -(-width // patch)
    r = torch.arange(height, device=device) // patch
    c = torch.arange(width, device=device) // patch
    return r[:, None] * cols + c[None, :]


@register("occlusion")
class OcclusionMethod(Method):
    def _one(self, x, target):
        # a chunk of inputs, and as many perturbations per forward as keep
        # rows (inputs x perturbations) <= max_batch
        from captum.attr import Occlusion
        w, s = _pixels(self.settings["window"], x.shape[-1]), _pixels(self.settings["stride"], x.shape[-1])
        c = x.shape[1]
        per_eval = max(1, self.max_batch // len(x))
        return Occlusion(self.model).attribute(x, sliding_window_shapes=(c, w, w), strides=(c, s, s),
                                               baselines=baseline_value(self.settings), target=target,
                                               perturbations_per_eval=per_eval)
