"""Feature ablation (captum.attr.FeatureAblation) and Shapley value sampling (captum.attr.ShapleyValueSampling)
on a grid of square patches, a removed patch set to ``explain.occlusion_baseline`` (black 0 | grey 0.5) as in
occlusion (:mod:`cxrbench.explain.methods.perturbation`).

* feature_ablation: the image cut into non-overlapping patches of ``explain.ablation_patch``; each patch is
  removed alone and every pixel of it gets the drop of the target logit (one forward per patch).
* shapley_sampling: patches of ``explain.shapley_patch``; ``explain.shapley_samples`` random orders of the
  patches, each patch credited with the change of the target logit when it joins (Strumbelj & Kononenko
  2010; one forward per patch and order). The orders are drawn with seed 0 at the start of every chunk of
  images, inside a forked RNG: every image gets the same orders whatever the chunking, reruns give the same
  map, and the global RNG is left as it was.

Registered after LIME so that the methods registered before them keep their place (and their plot styles).
"""

from __future__ import annotations

import torch

from cxrbench.explain.methods.perturbation import _pixels, baseline_value, patch_mask
from cxrbench.explain.methods.registry import Method, register


class _PatchMethod(Method):
    """A Captum feature-mask method on a grid of patches (one mask for every image and channel)."""

    patch_key = "?"

    def _mask(self, x):
        p = _pixels(self.settings[self.patch_key], x.shape[-1])
        return patch_mask(x.shape[-2], x.shape[-1], p, x.device)[None, None].expand(1, x.shape[1], -1, -1)


@register("feature_ablation")
class FeatureAblationMethod(_PatchMethod):
    patch_key = "ablation_patch"

    def _one(self, x, target):
        from captum.attr import FeatureAblation
        per_eval = max(1, self.max_batch // len(x))
        return FeatureAblation(self.model).attribute(x, baselines=baseline_value(self.settings), target=target,
                                                     feature_mask=self._mask(x), perturbations_per_eval=per_eval)


@register("shapley_sampling")
class ShapleySamplingMethod(_PatchMethod):
    patch_key = "shapley_patch"

    def _one(self, x, target):
        from captum.attr import ShapleyValueSampling
        per_eval = max(1, self.max_batch // len(x))
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(0)
            return ShapleyValueSampling(self.model).attribute(
                x, baselines=baseline_value(self.settings), target=target, feature_mask=self._mask(x),
                n_samples=int(self.settings["shapley_samples"]), perturbations_per_eval=per_eval)
