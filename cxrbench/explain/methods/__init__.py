"""Attribution methods, one module per family; importing this package registers every method in ``registry.METHODS``."""

# the registration order (that of METHODS, and of the plots' styles): occlusion, the gradient methods, the CAMs,
# LRP, Guided Grad-CAM, LIME, feature ablation and Shapley sampling, the layer methods, CXR-Net's decoder
from cxrbench.explain.methods import (registry, perturbation, gradients, cams, lrp, guided_gradcam, lime,  # noqa: F401
                                      ablation, layer, cxrnet)

__all__ = ['ablation', 'cams', 'cxrnet', 'gradients', 'guided_gradcam', 'layer', 'lime', 'lrp', 'perturbation',
           'registry']
