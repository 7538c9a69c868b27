"""Class-activation maps: Grad-CAM through Captum and Grad-CAM++, Score-CAM, LayerCAM, XGrad-CAM and Eigen-CAM
through pytorch-grad-cam.

The pytorch-grad-cam maps are the library's own (its weights, activations,
gradients and final ReLU) stopped before its per-image min-max scaling to
[0, 1] and cv2 resize: they keep their magnitude and are upsampled with
``explain.interpolate`` like Grad-CAM's (:class:`_LayerResolution`). All rows
of a chunk go through one forward/backward with ``ClassifierOutputTarget(t_i)``
per row.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cxrbench.explain.methods.registry import Method, register


@register("gradcam")
class GradCamMethod(Method):
    needs_layer = True

    def _one(self, x, target):
        from captum.attr import LayerAttribution, LayerGradCam
        cam = LayerGradCam(self.model, self.layer).attribute(x, target=target, relu_attributions=True)
        return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode=self.settings["interpolate"])


def _upsample(cam: torch.Tensor, x: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, h, w) or (B, 1, h, w) layer-resolution map -> (B, 1, H, W) at the input's size, ``explain.interpolate``
    (the same call as Captum's ``LayerAttribution.interpolate``, which Grad-CAM uses)."""
    if cam.dim() == 3:
        cam = cam.unsqueeze(1)
    return F.interpolate(cam, size=tuple(x.shape[-2:]), mode=mode)


# --- class-activation maps through pytorch-grad-cam (grad-cam 1.5.7) ------------

class _LayerResolution:
    """Mixed into a pytorch-grad-cam class: the rectified map at the target layer's resolution.

    The library's ``compute_cam_per_layer`` ends each map with ``scale_cam_image``: a per-image min-max
    scaling to [0, 1] and a ``cv2.resize`` (bilinear) to the input size. Here the same map stops before
    that step (``np.maximum(cam, 0)`` of the library's own ``get_cam_image``: its weights, its activations
    and gradients), so that it keeps its magnitude like every other method's map (the attribute stage
    stores a per-image scale) and is upsampled with ``explain.interpolate`` like Grad-CAM's.
    tests/explain/test_libraries.py checks that min-max scaling this map and resizing it bilinearly gives the
    library's own output.
    """

    def compute_cam_per_layer(self, input_tensor, targets, eigen_smooth):
        acts = [a.cpu().data.numpy() for a in self.activations_and_grads.activations]
        grads = [g.cpu().data.numpy() for g in self.activations_and_grads.gradients]
        if len(self.target_layers) != 1 or len(acts) != 1:
            raise RuntimeError(f"expected one target layer called once per forward, got {len(self.target_layers)} "
                               f"layer(s) and {len(acts)} activation(s) (a module reused in the forward?)")
        cam = self.get_cam_image(input_tensor, self.target_layers[0], targets, acts[0],
                                 grads[0] if grads else None, eigen_smooth)
        return [np.maximum(cam, 0)]

    def aggregate_multi_layers(self, cam_per_target_layer):
        return cam_per_target_layer[0]


def orient_by_class_score(projection: np.ndarray, activations: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """(B, h, w) principal-component projections, each multiplied by -1 where it correlates negatively with
    the target's class score per location (``sum_k mean_ij(dS/dA_k) A_k``, the unrectified Grad-CAM):
    a principal component's sign is arbitrary, so the half that the ReLU keeps is made the half that
    raises the class score. A flat projection or score map is kept as it is."""
    weights = grads.mean(axis=(2, 3))
    score = (weights[:, :, None, None] * activations).sum(1)
    out = projection.copy()
    for i in range(len(out)):
        a, b = out[i].ravel() - out[i].mean(), score[i].ravel() - score[i].mean()
        if float(a @ b) < 0:
            out[i] = -out[i]
    return out


class _SignedByClassScore:
    """Mixed into pytorch-grad-cam's EigenCAM: its projection oriented by :func:`orient_by_class_score`
    (the library computes the gradients for it: ``uses_gradients`` is set on the object)."""

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth):
        projection = super().get_cam_image(input_tensor, target_layer, targets, activations, grads, eigen_smooth)
        if grads is None:
            raise RuntimeError("Eigen-CAM's sign needs the class score's gradients: set uses_gradients")
        return orient_by_class_score(projection, activations, grads)


_CAM_CLASSES: dict[tuple, type] = {}


def _cam_class(library_name: str, mixins: tuple = ()) -> type:
    """The library's CAM class ``library_name`` with ``mixins`` and :class:`_LayerResolution` mixed in (made
    once)."""
    key = (library_name, mixins)
    if key not in _CAM_CLASSES:
        import pytorch_grad_cam
        base = getattr(pytorch_grad_cam, library_name)
        _CAM_CLASSES[key] = type(f"LayerResolution{library_name}", (*mixins, _LayerResolution, base), {})
    return _CAM_CLASSES[key]


class LibraryCamMethod(Method):
    """A class-activation map of pytorch-grad-cam on the target layer (``explain.target_layers``).

    All rows of a chunk in one forward/backward: the library sums ``ClassifierOutputTarget(t_i)`` of row i
    (the target logit) over the batch before its backward, so row i's gradients are those of its own
    target. The rectified map at the layer's resolution (:class:`_LayerResolution`) is upsampled with
    ``explain.interpolate``. Runs on the prepared model (no in-place op after the hooked layer).
    """
    needs_layer = True
    needs_prepared = True
    library_name = "?"
    mixins: tuple = ()

    def configure(self, cam) -> None:
        """Per-method settings on the library's object (Score-CAM: its batch size)."""

    def _one(self, x, target):
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        cam = _cam_class(self.library_name, self.mixins)(model=self.model, target_layers=[self.layer])
        self.configure(cam)
        try:
            with torch.enable_grad():
                maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in target])
        finally:
            # the library keeps its hooks, the last outputs (and their retained graph) and the parameters'
            # .grad: all released here (its own `with` form would also swallow an IndexError)
            cam.activations_and_grads.release()
            cam.outputs = None
            self.model.zero_grad(set_to_none=True)
        cam_t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)).to(x.device)
        return _upsample(cam_t, x, self.settings["interpolate"])


@register("gradcam_pp")
class GradCamPPMethod(LibraryCamMethod):
    """Grad-CAM++ (Chattopadhay et al. 2018, eq. 19, exponential closed form): pytorch_grad_cam.GradCAMPlusPlus.

    With A the layer's activations and g = dS/dA: alpha = g^2 / (2 g^2 + sum_ab A g^3 + 1e-6), 0 where
    g = 0; w_k = sum_ij alpha relu(g); map = relu(sum_k w_k A_k).
    """
    library_name = "GradCAMPlusPlus"


@register("scorecam")
class ScoreCamMethod(LibraryCamMethod):
    """Score-CAM (Wang et al. 2020): pytorch_grad_cam.ScoreCAM, gradient-free.

    Each channel's activation, upsampled to the input (the library's own ``UpsamplingBilinear2d``,
    align_corners=True, whatever ``explain.interpolate`` says) and min-max scaled to [0, 1], masks the
    input; w_k = softmax over channels of the target logit on the masked inputs. Costs one forward per
    channel of the layer and image (512 for a ResNet18's layer4), ``explain.scorecam_batch`` masked
    copies per forward.
    """
    library_name = "ScoreCAM"

    def configure(self, cam) -> None:
        cam.batch_size = self.settings["scorecam_batch"] or self.max_batch

    def _one(self, x, target):
        # the library draws a tqdm bar per image and batch; the stage logs one line per method instead
        from unittest import mock
        from types import SimpleNamespace
        import pytorch_grad_cam.score_cam as score_cam
        with mock.patch.object(score_cam, "tqdm", SimpleNamespace(tqdm=lambda it, *a, **k: it)):
            return super()._one(x, target)


@register("layercam")
class LayerCamMethod(LibraryCamMethod):
    """LayerCAM (Jiang et al. 2021): pytorch_grad_cam.LayerCAM, map = relu(sum_k relu(g_k) * A_k) (per location)."""
    library_name = "LayerCAM"


@register("xgradcam")
class XGradCamMethod(LibraryCamMethod):
    """XGrad-CAM (Fu et al. 2020): pytorch_grad_cam.XGradCAM, w_k = sum_ij g A / (sum_ij A + 1e-7)."""
    library_name = "XGradCAM"


@register("eigencam")
class EigenCamMethod(LibraryCamMethod):
    """Eigen-CAM (Muhammad & Yeasin 2020): pytorch_grad_cam.EigenCAM, gradient-free and class-agnostic.

    The projection of the layer's (centred) activations on their first principal component, rectified.
    The projection does not depend on the target, but the sign of a principal component is arbitrary (the
    rectified half could be the background): it is fixed per image by the projection's correlation with
    the target's class score per location (:func:`orient_by_class_score`), so the map kept is the half
    that raises the class score.
    """
    library_name = "EigenCAM"
    mixins = (_SignedByClassScore,)

    def configure(self, cam) -> None:
        cam.uses_gradients = True
