"""CXR-Net's own explanation (seed 003) as an attribution method, ``cxrnet_decoder``: the image its decoder
reconstructs from the first encoder's features (:func:`cxrbench.classify.cxrnet.explanation`), its channel
mean at the input's resolution. One forward per chunk, no gradient; the same map whatever class is explained.

Only a CXR-Net classifier (backbone ``cxrnet_<encoder>``) has a decoder: on any other model the method raises
:class:`cxrbench.explain.methods.registry.NotApplicable`, which the attribute stage records as a failure
whose reason says "not applicable", never as a map.
"""

from __future__ import annotations

import torch

from cxrbench.explain.methods.registry import Method, NotApplicable, register


@register("cxrnet_decoder")
class CXRNetDecoderMethod(Method):
    def _one(self, x, target):
        from cxrbench.classify.cxrnet import CXRNet, explanation

        if not isinstance(getattr(self.model, "backbone", None), CXRNet):
            raise NotApplicable(f"not applicable: {self.backbone or type(self.model).__name__} is not a CXR-Net "
                                f"model (backbone cxrnet_<encoder>); only CXR-Net has a decoder")
        with torch.no_grad():
            return explanation(self.model, x)
