"""The attribution API in one namespace, for callers that import ``cxrbench.explain.attribution as A``.

Every name is re-exported from the module that holds it:

* :mod:`cxrbench.explain.methods`: the registry (``registry``: ``METHODS``, ``register``, ``Method``) and one
  module per method family (``perturbation``, ``gradients``, ``cams``, ``lrp``, ``guided_gradcam``, ``lime``,
  ``ablation``, ``layer``, ``cxrnet``);
* :mod:`cxrbench.explain.prepare`: the model copy that DeepLIFT and guided backprop can hook;
* :mod:`cxrbench.explain.memory`: rows per forward that fit in memory;
* :mod:`cxrbench.explain.runner`: the settings from params, building and running the methods, the
  classifier and its input.
"""

from cxrbench.explain.memory import available_memory, estimate_max_batch, measured_row_bytes
from cxrbench.explain.methods.cams import (EigenCamMethod, GradCamMethod, GradCamPPMethod, LayerCamMethod,
                                           LibraryCamMethod, ScoreCamMethod, XGradCamMethod)
from cxrbench.explain.methods.gradients import (DeepLiftMethod, GuidedBackpropMethod, InputXGradientMethod,
                                                IntegratedGradientsMethod, SaliencyMethod, convergence_summary)
from cxrbench.explain.methods.guided_gradcam import GuidedGradCamMethod
from cxrbench.explain.methods.lrp import LRP_BACKBONES, LRP_COMPOSITES, LRPMethod, lrp_canonizers, lrp_composite
from cxrbench.explain.methods.cxrnet import CXRNetDecoderMethod
from cxrbench.explain.methods.layer import InternalInfluenceMethod, LayerConductanceMethod
from cxrbench.explain.methods.ablation import FeatureAblationMethod, ShapleySamplingMethod
from cxrbench.explain.methods.perturbation import BASELINES, OcclusionMethod, patch_mask
from cxrbench.explain.methods.registry import METHODS, Method, NotApplicable, register
from cxrbench.explain.prepare import (GuidedReLU6, PrepareReport, ReLUMaxPool2d, prepare_for_attribution,
                                      rewrite_max_pools)
from cxrbench.explain.runner import (EXPECTED_ERRORS, HARMLESS_CAPTUM_NOTES, Attribution, Settings,
                                     attribute_all, check_method, classifier_input, load_classifier, make,
                                     resize_masks, run_methods, target_layer, validate)

__all__ = [
    # registry and methods
    "METHODS", "Method", "register", "OcclusionMethod", "BASELINES", "FeatureAblationMethod", "ShapleySamplingMethod",
    "patch_mask", "LayerConductanceMethod", "InternalInfluenceMethod", "CXRNetDecoderMethod", "NotApplicable",
    "SaliencyMethod", "InputXGradientMethod",
    "GuidedBackpropMethod", "IntegratedGradientsMethod", "DeepLiftMethod", "convergence_summary", "GradCamMethod",
    "LibraryCamMethod", "GradCamPPMethod", "ScoreCamMethod", "LayerCamMethod", "XGradCamMethod", "EigenCamMethod",
    "LRP_COMPOSITES", "LRP_BACKBONES", "lrp_canonizers", "lrp_composite", "LRPMethod", "GuidedGradCamMethod",
    # model preparation and memory
    "GuidedReLU6", "ReLUMaxPool2d", "rewrite_max_pools", "PrepareReport", "prepare_for_attribution",
    "available_memory", "estimate_max_batch", "measured_row_bytes",
    # the runner
    "Settings", "validate", "check_method", "target_layer", "make", "classifier_input", "resize_masks",
    "load_classifier", "EXPECTED_ERRORS", "HARMLESS_CAPTUM_NOTES", "run_methods", "Attribution", "attribute_all",
]
