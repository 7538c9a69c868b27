"""Gradient methods through Captum: saliency, input x gradient, guided backprop, integrated gradients and
DeepLIFT (with its completeness check, :func:`convergence_summary`)."""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn as nn

from cxrbench.explain.methods.registry import Method, register
from cxrbench.explain.prepare import prepare_for_attribution, rewrite_max_pools


@register("saliency")
class SaliencyMethod(Method):
    def _one(self, x, target):
        from captum.attr import Saliency
        return Saliency(self.model).attribute(x, target=target, abs=True)


@register("input_x_gradient")
class InputXGradientMethod(Method):
    def _one(self, x, target):
        from captum.attr import InputXGradient
        return InputXGradient(self.model).attribute(x, target=target)


@register("guided_backprop")
class GuidedBackpropMethod(Method):
    needs_prepared = True

    def _one(self, x, target):
        from captum.attr import GuidedBackprop
        return GuidedBackprop(self.model).attribute(x, target=target)


@register("integrated_gradients")
class IntegratedGradientsMethod(Method):
    def _one(self, x, target):
        # Captum evaluates (steps x inputs) rows in forwards of internal_batch_size rows
        from captum.attr import IntegratedGradients
        steps = self.settings["steps"]
        return IntegratedGradients(self.model).attribute(
            x, baselines=torch.zeros_like(x), target=target, n_steps=steps,
            internal_batch_size=max(len(x), self.max_batch))


@register("deeplift")
class DeepLiftMethod(Method):
    needs_prepared = True

    def rows_per_input(self) -> int:
        return 2

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.deltas: list[torch.Tensor] = []     # per image, in call order: sum(map) - (f(x) - f(0))
        self.sums: list[torch.Tensor] = []       # per image: sum(map)
        self.net: nn.Module | None = None        # the prepared model with its max pools as ReLUs
        self.max_pools_rewritten = 0

    def _one(self, x, target):
        from captum.attr import DeepLift
        if self.net is None:                     # exact completeness through max pooling (ReLUMaxPool2d)
            rewritten, self.max_pools_rewritten = rewrite_max_pools(self.model)
            self.net = prepare_for_attribution(rewritten, x)[0] if self.max_pools_rewritten else self.model
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]etting forward, backward hooks.*")
            a, delta = DeepLift(self.net).attribute(x, baselines=torch.zeros_like(x), target=target,
                                                    return_convergence_delta=True)
        self.deltas.append(delta.detach().float().cpu())
        self.sums.append(a.detach().float().reshape(len(a), -1).sum(1).cpu())
        return a

    def convergence(self) -> dict:
        """DeepLIFT's completeness check per image of the last ``attribute`` calls: ``delta`` =
        sum(map) - (f(x) - f(0)) (Captum's convergence delta) and ``relative`` = |delta| / |f(x) - f(0)|."""
        if not self.deltas:
            return {"delta": [], "relative": [], "max_pools_rewritten": self.max_pools_rewritten}
        delta = torch.cat(self.deltas).double()
        diff = torch.cat(self.sums).double() - delta                  # f(x) - f(0)
        rel = delta.abs() / diff.abs().clamp_min(1e-12)
        return {"delta": delta.tolist(), "relative": rel.tolist(), "max_pools_rewritten": self.max_pools_rewritten}


def convergence_summary(conv: dict, tolerance: float, paths: list) -> dict:
    """:meth:`DeepLiftMethod.convergence` per image plus what exceeds ``explain.deeplift_tolerance``
    (relative): median and max, the count and the images above it."""
    rel = np.asarray(conv["relative"], dtype=float)
    if len(rel) != len(paths):
        raise ValueError(f"{len(rel)} convergence deltas for {len(paths)} images")
    above = rel > tolerance
    return {"tolerance": float(tolerance), "relative_median": float(np.median(rel)) if len(rel) else None,
            "relative_max": float(rel.max()) if len(rel) else None, "above_tolerance": int(above.sum()),
            "images": int(len(rel)), "above_paths": [p for p, a in zip(paths, above) if a],
            "relative": [round(float(v), 6) for v in rel], "delta": [float(v) for v in conv["delta"]],
            "max_pools_rewritten": int(conv.get("max_pools_rewritten", 0))}
