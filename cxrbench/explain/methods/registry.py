"""The registry of attribution methods (``METHODS``, filled by :func:`register` as each family's module is
imported) and their base class :class:`Method`, one class per method.

Methods (Chatterjee et al., seed 000, section 3.4, all via Captum; the
class-activation maps of seeds 001 and 003 and more through pytorch-grad-cam;
LRP of seed 001 through zennit):

==================  ===========================================================
occlusion           captum.attr.Occlusion, baseline explain.occlusion_baseline (black 0 | grey 0.5),
                    window/stride in params
saliency            captum.attr.Saliency (absolute gradient)
input_x_gradient    captum.attr.InputXGradient
guided_backprop     captum.attr.GuidedBackprop
integrated_gradients captum.attr.IntegratedGradients, zero baseline, n_steps
deeplift            captum.attr.DeepLift, zero baseline (Rescale rule)
gradcam             captum.attr.LayerGradCam on the target layer (ReLU), upsampled
                    to the input with LayerAttribution.interpolate
                    (kept over pytorch-grad-cam's GradCAM: 3x faster, same map,
                    benchmarks/bench_explain.py)
gradcam_pp          Grad-CAM++ (Chattopadhay et al. 2018): pytorch_grad_cam.GradCAMPlusPlus
guided_gradcam      captum.attr.GuidedGradCam on the target layer
scorecam            Score-CAM (Wang et al. 2020): pytorch_grad_cam.ScoreCAM, gradient-
                    free, one forward per channel of the layer and image (slow on CPU)
layercam            LayerCAM (Jiang et al. 2021): pytorch_grad_cam.LayerCAM
xgradcam            XGrad-CAM (Fu et al. 2020): pytorch_grad_cam.XGradCAM
eigencam            Eigen-CAM (Muhammad & Yeasin 2020): pytorch_grad_cam.EigenCAM,
                    class-agnostic (the target is ignored), sign of the component arbitrary
lrp                 LRP (Bach et al. 2015): zennit Gradient attributor, composite
                    explain.lrp_composite, canonizers per timm backbone family
lime                LIME (Ribeiro et al. 2016): captum.attr.Lime on scikit-image SLIC
                    superpixels, explain.lime_samples draws (methods/lime.py)
feature_ablation    captum.attr.FeatureAblation on a grid of explain.ablation_patch patches,
                    occlusion's baseline (methods/ablation.py)
shapley_sampling    captum.attr.ShapleyValueSampling on a grid of explain.shapley_patch patches,
                    explain.shapley_samples orders, occlusion's baseline
layer_conductance   captum.attr.LayerConductance on the target layer, zero baseline, explain.ig_steps,
                    summed over channels and upsampled (methods/layer.py)
internal_influence  captum.attr.InternalInfluence, the same way
cxrnet_decoder      CXR-Net's decoder image (seed 003), CXR-Net classifiers only, "not applicable"
                    for the others (methods/cxrnet.py)
==================  ===========================================================

Families, one module each: ``perturbation`` (occlusion), ``gradients`` (saliency, input x gradient, guided
backprop, integrated gradients, DeepLIFT), ``cams`` (Grad-CAM and the pytorch-grad-cam maps), ``lrp``
(zennit), ``guided_gradcam``, ``lime``, ``ablation`` (feature ablation, Shapley sampling), ``layer``
(conductance, internal influence) and ``cxrnet`` (CXR-Net's decoder). Importing :mod:`cxrbench.explain.methods`
registers them all, in the order above.

Every map is returned as a float32 (B, H, W) tensor at input resolution: the
attribution summed over input channels (Captum's own heat-map convention).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _chunks(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


METHODS: dict[str, type["Method"]] = {}


class NotApplicable(NotImplementedError):
    """A method that does not exist for this model (CXR-Net's decoder map on another classifier): recorded as a
    failure whose reason says so (an expected error of the runner), never as a map."""


def register(name: str):
    def deco(cls):
        cls.name = name
        METHODS[name] = cls
        return cls
    return deco


class Method:
    """One attribution method. ``attribute(x, target)`` -> float32 (B, H, W)."""

    name = "?"
    needs_layer = False
    needs_prepared = False

    def __init__(self, model: nn.Module, settings: dict, max_batch: int, layer: nn.Module | None = None,
                 backbone: str | None = None):
        self.model, self.settings, self.max_batch, self.layer = model, settings, max_batch, layer
        self.backbone = backbone

    def _one(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def rows_per_input(self) -> int:
        """Rows one input costs in a forward pass (DeepLIFT stacks input and baseline)."""
        return 1

    def attribute(self, x: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
        if not torch.is_tensor(target):
            target = torch.full((len(x),), int(target), dtype=torch.long, device=x.device)
        size = max(1, self.max_batch // self.rows_per_input())
        out = [self._one(x[s], target[s]).detach() for s in _chunks(len(x), size)]
        a = torch.cat(out)
        if a.dim() == 4:
            a = a.sum(1)                     # channels -> one map
        if a.shape[-2:] != x.shape[-2:]:
            raise RuntimeError(f"{self.name}: map {tuple(a.shape)} is not at input resolution {tuple(x.shape)}")
        return a.float()
