"""Attribution methods, one module per family; importing this package registers every method in ``registry.METHODS``."""

# the registration order (that of METHODS): occlusion, the gradient methods, the CAMs, LRP, Guided Grad-CAM, LIME
from cxrbench.explain.methods import registry, perturbation, gradients, cams, lrp, guided_gradcam, lime  # noqa: F401

__all__ = ['cams', 'gradients', 'guided_gradcam', 'lime', 'lrp', 'perturbation', 'registry']
