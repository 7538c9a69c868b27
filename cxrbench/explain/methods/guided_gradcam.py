"""Guided Grad-CAM (captum.attr.GuidedGradCam on the target layer): guided backprop times Grad-CAM."""

from __future__ import annotations

from cxrbench.explain.methods.registry import Method, register


@register("guided_gradcam")
class GuidedGradCamMethod(Method):
    needs_layer = True
    needs_prepared = True

    def _one(self, x, target):
        from captum.attr import GuidedGradCam
        return GuidedGradCam(self.model, self.layer).attribute(x, target=target,
                                                               interpolate_mode=self.settings["interpolate"])
