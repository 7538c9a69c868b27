"""Layer attributions through Captum on the target layer (``explain.target_layers``, Grad-CAM's): layer
conductance (Dhamdhere et al. 2018, ``captum.attr.LayerConductance``) and internal influence (Leino et al. 2018,
``captum.attr.InternalInfluence``).

Both integrate along the straight path from the zero (black) baseline to the image in ``explain.ig_steps``
steps, as integrated gradients does, and give one value per unit of the layer (C, h, w):

* conductance: the integrated gradients of the target logit that flow through each unit; over all units of a
  layer every path crosses, they sum to f(x) - f(0) (trapezoid points, which reach both ends of the path);
* internal influence: the gradient of the target logit with respect to each unit, averaged along the path
  (no multiplication by the activation's change).

The map is the sum over the layer's channels (signed, like integrated gradients' sum over input channels),
upsampled to the input with ``explain.interpolate`` like Grad-CAM's.
"""

from __future__ import annotations

import torch

from cxrbench.explain.methods.cams import _upsample
from cxrbench.explain.methods.registry import Method, register


class _LayerPathMethod(Method):
    needs_layer = True
    captum_class = "?"
    path_method = "gausslegendre"       # Captum's default quadrature

    def layer_map(self, x, target) -> torch.Tensor:
        """(B, h, w): the Captum attribution at the target layer, summed over its channels."""
        import captum.attr
        cls = getattr(captum.attr, self.captum_class)
        a = cls(self.model, self.layer).attribute(x, baselines=torch.zeros_like(x), target=target,
                                                  n_steps=self.settings["steps"], method=self.path_method,
                                                  internal_batch_size=max(len(x), self.max_batch))
        if a.dim() != 4:
            raise NotImplementedError(f"{self.name}: the target layer's output is {tuple(a.shape)}, "
                                      f"not a (B, C, h, w) feature map")
        return a.sum(1)

    def _one(self, x, target):
        return _upsample(self.layer_map(x, target), x, self.settings["interpolate"])


@register("layer_conductance")
class LayerConductanceMethod(_LayerPathMethod):
    captum_class = "LayerConductance"
    # conductance sums gradient x the change of the layer between consecutive points of the path: with the
    # trapezoid's points (0, 1/n, ..., 1) the changes add up to the whole path, and the map to f(x) - f(0)
    # for any number of steps; Gauss-Legendre's points stop short of both ends (86 % of the path at 3
    # steps, a test)
    path_method = "riemann_trapezoid"


@register("internal_influence")
class InternalInfluenceMethod(_LayerPathMethod):
    captum_class = "InternalInfluence"
