"""Perturbation methods: occlusion (captum.attr.Occlusion, zero baseline, window and stride from params)."""

from __future__ import annotations

from cxrbench.explain.methods.registry import Method, register


def _pixels(v, side: int) -> int:
    """A window/stride in pixels: a float <= 1 is a fraction of the image side."""
    if isinstance(v, float) and v <= 1:
        return max(1, int(round(v * side)))
    return int(v)


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
                                               baselines=0.0, target=target, perturbations_per_eval=per_eval)
