"""The runner of the attribution methods: their settings from params (``explain.*``), a method built on a
model (:func:`make`), the classifier and its input, and every method run on one batch with its failures
recorded (:func:`run_methods`, :func:`attribute_all`: the one sequence the attribute, severity, planted and
randomisation stages share).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cxrbench.core import timing
from cxrbench.core.params import ParamError, check_choice, check_float, check_fraction, check_int, section
from cxrbench.explain.memory import estimate_max_batch
from cxrbench.explain.methods.lrp import LRP_COMPOSITES
from cxrbench.explain.methods.perturbation import BASELINES
from cxrbench.explain.methods.registry import METHODS, Method
from cxrbench.explain.prepare import PrepareReport, prepare_for_attribution


@dataclass
class Settings:
    methods: list
    steps: int
    window: float           # occlusion window / stride: fraction of the input side (<= 1) or pixels
    stride: float
    interpolate: str
    target_layers: dict
    max_batch: int | None
    memory_fraction: float
    scorecam_batch: int | None    # Score-CAM's masked copies per forward; None: max_batch
    lrp_composite: str            # one of LRP_COMPOSITES
    lime_samples: int = 200       # LIME: perturbed samples per image
    lime_segments: int = 50       # LIME: SLIC superpixels per image (about)
    lime_compactness: float = 0.1  # LIME: SLIC compactness on the [0, 1] image
    occlusion_baseline: str = "black"   # the fill of occlusion, feature ablation, Shapley sampling: BASELINES
    ablation_patch: float = 0.0625      # feature ablation's patch side: fraction of the input side or pixels
    shapley_patch: float = 0.125        # Shapley sampling's patch side
    shapley_samples: int = 10           # Shapley sampling: random orders of the patches

    def method_settings(self) -> dict:
        return {"steps": self.steps, "window": self.window, "stride": self.stride,
                "interpolate": self.interpolate, "scorecam_batch": self.scorecam_batch,
                "lrp_composite": self.lrp_composite, "lime_samples": self.lime_samples,
                "lime_segments": self.lime_segments, "lime_compactness": self.lime_compactness,
                "occlusion_baseline": self.occlusion_baseline, "ablation_patch": self.ablation_patch,
                "shapley_patch": self.shapley_patch, "shapley_samples": self.shapley_samples}


def validate(params: dict) -> Settings:
    methods = section(params, "explain.methods")
    if not isinstance(methods, list) or not methods:
        raise ParamError("explain.methods", f"expected a non-empty list drawn from {list(METHODS)}")
    for m in methods:
        check_method(m, "explain.methods")
    mb = section(params, "explain.max_batch")
    if mb is not None:
        check_int("explain.max_batch", mb, minimum=1)
    scorecam_batch = section(params, "explain.scorecam_batch")
    if scorecam_batch is not None:
        check_int("explain.scorecam_batch", scorecam_batch, minimum=1)
    ex = section(params, "explain")
    layers = section(params, "explain.target_layers")
    if not isinstance(layers, dict) or not layers:
        raise ParamError("explain.target_layers", "expected a mapping backbone family -> module path")
    return Settings(
        methods=list(methods),
        steps=check_int("explain.ig_steps", section(params, "explain.ig_steps"), minimum=2),
        window=check_fraction("explain.occlusion_window", section(params, "explain.occlusion_window"),
                              open_high=False),
        stride=check_fraction("explain.occlusion_stride", section(params, "explain.occlusion_stride"),
                              open_high=False),
        interpolate=check_choice("explain.interpolate", section(params, "explain.interpolate"),
                                 ["nearest", "bilinear", "bicubic"]),
        target_layers=dict(layers), max_batch=mb,
        memory_fraction=check_fraction("explain.memory_fraction", section(params, "explain.memory_fraction"),
                                       open_high=False),
        scorecam_batch=scorecam_batch,
        lrp_composite=check_choice("explain.lrp_composite", section(params, "explain.lrp_composite"),
                                   LRP_COMPOSITES),
        lime_samples=check_int("explain.lime_samples", ex.get("lime_samples", 200), minimum=10),
        lime_segments=check_int("explain.lime_segments", ex.get("lime_segments", 50), minimum=2),
        lime_compactness=check_float("explain.lime_compactness", ex.get("lime_compactness", 0.1),
                                     minimum=0, open_low=True, what="a positive SLIC compactness"),
        occlusion_baseline=check_choice("explain.occlusion_baseline", ex.get("occlusion_baseline", "black"),
                                        sorted(BASELINES)),
        ablation_patch=check_fraction("explain.ablation_patch", ex.get("ablation_patch", 0.0625), open_high=False),
        shapley_patch=check_fraction("explain.shapley_patch", ex.get("shapley_patch", 0.125), open_high=False),
        shapley_samples=check_int("explain.shapley_samples", ex.get("shapley_samples", 10), minimum=1))


def check_method(name: str, key: str = "explain.methods") -> str:
    if not isinstance(name, str) or name not in METHODS:
        raise ParamError(key, f"unknown attribution method {name!r}; valid methods are {list(METHODS)}")
    return name


def target_layer(model: nn.Module, backbone: str, layers: dict) -> tuple[str, nn.Module]:
    """The Grad-CAM layer of ``backbone``: the longest key of ``layers`` that prefixes its name."""
    keys = sorted((k for k in layers if backbone.startswith(k)), key=len, reverse=True)
    if not keys:
        raise ParamError("explain.target_layers", f"no target layer for backbone {backbone!r}; "
                         f"keys (matched as name prefixes) are {sorted(layers)}")
    path = layers[keys[0]]
    # cxrbench.classify.models.Classifier wraps the timm network as ``backbone``; a two-stage classifier
    # (cxrbench.classify.hierarchy) is explained at its second stage's layer: the stage that separates the group
    # (COVID-19 from other pneumonia), whose target classes the seed profiles explain
    modules = dict(model.named_modules())
    for candidate in (path, f"backbone.{path}", f"second.backbone.{path}"):
        if candidate in modules:
            return candidate, modules[candidate]
    else:
        inner = model.backbone if isinstance(getattr(model, "backbone", None), nn.Module) else model
        top = [n for n, _ in inner.named_children()]
        raise ParamError(f"explain.target_layers.{keys[0]}",
                         f"{backbone} has no module {path!r}; its top-level modules are {top}") from None


def make(name: str, model: nn.Module, prepared: nn.Module, settings: Settings, max_batch: int,
         backbone: str | None = None) -> Method:
    """Method ``name`` on ``model`` (or on ``prepared`` where the method hooks activations)."""
    cls = METHODS[check_method(name)]
    net = prepared if cls.needs_prepared else model
    layer = target_layer(net, backbone, settings.target_layers)[1] if cls.needs_layer else None
    return cls(net, settings.method_settings(), max_batch, layer, backbone)


def classifier_input(images_u8: np.ndarray, meta: dict, device, masks: np.ndarray | None = None) -> torch.Tensor:
    """Cache rows (B, C, S, S) uint8 -> the saved classifier's input: float in [0, 1] at the cache size.

    The classifier of cxrbench.classify.models resizes to its backbone size and
    normalises inside ``forward``, so maps and AOPPC perturbations (zeros =
    black) live in cache coordinates. ``input_mode`` lungs_removed applies the
    classifier's own transform (cxrbench.lungs.segmentation) with ``masks``;
    lung_crop changes the geometry of the image and is not supported here.
    """
    from cxrbench.data.cache import to_float
    mode = meta.get("input_mode", "full")
    if mode == "lung_crop":
        raise ValueError("classifier input_mode 'lung_crop': attribution maps would live in cropped "
                         "coordinates; only 'full' and 'lungs_removed' are supported")
    if mode != "full":
        if masks is None:
            raise ValueError(f"classifier input_mode {mode!r} needs the lung masks")
        from cxrbench.lungs.segmentation import apply_input_mode
        images_u8 = apply_input_mode(images_u8, masks, mode, int(meta.get("mask_dilation", 0)))
    cache_size = meta.get("cache_size")
    if cache_size is not None and int(cache_size) != images_u8.shape[-1]:
        raise ValueError(f"the classifier was trained on a {cache_size}px cache, this cache is "
                         f"{images_u8.shape[-1]}px: rerun preprocess / train")
    x = to_float(torch.from_numpy(np.ascontiguousarray(images_u8)), device)
    c = int(meta.get("in_chans", x.shape[1]))
    if c != x.shape[1]:
        raise ValueError(f"classifier takes {c} channels, the cache holds {x.shape[1]}")
    return x


def resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    t = torch.from_numpy(np.ascontiguousarray(masks)).float().unsqueeze(1)
    return (F.interpolate(t, size=size, mode="nearest").squeeze(1).numpy() > 0).astype(np.uint8)


def load_classifier(params: dict, backbone: str, fold: int, device):
    """The trained classifier of ``backbone`` fold ``fold`` that ``evaluate.checkpoint`` names, refused unless
    its training finished on the current params and data (:func:`cxrbench.classify.identity.load`)."""
    from cxrbench.classify import identity

    model, meta = identity.load(params, backbone, fold, device)
    return model.to(device).eval(), meta


class ModelStage(NamedTuple):
    """What a stage that re-explains every trained model starts from (:func:`model_stage`)."""
    settings: Settings                 # the explain section, validated
    stats: dict                        # the stats section, validated (cxrbench.core.bootstrap.validate)
    backbones: list
    folds: list
    runtime: dict                      # the machine knobs in force (cxrbench.core.runtime.configure)
    device: torch.device
    cache: object                      # the preprocess cache with the planted tag applied, as attribute saw it
    group_of: dict                     # image path -> its patient group (the bootstrap's unit)


def model_stage(params: dict) -> ModelStage:
    """The common start of the randomisation and reliability stages: every section they read validated and the
    checkpoint choice checked before any work, the machine configured, the images as the attribute stage saw
    them (the planted tag applied) and each image's patient group."""
    import pandas as pd

    from cxrbench.classify import training
    from cxrbench.core import bootstrap, paths, runtime
    from cxrbench.core import params as P
    from cxrbench.data import confounder
    from cxrbench.data.cache import Cache

    settings, stats = validate(params), bootstrap.validate(params)
    backbones = P.check_nonempty_list("train.backbones", section(params, "train.backbones"))
    folds = P.check_nonempty_list("train.folds", section(params, "train.folds"))
    training.checkpoint_file(params)                        # evaluate.checkpoint checked before any work
    rt = runtime.configure()
    cache = Cache(paths.CACHE, paths.INDEX)
    confounder.apply(cache)
    splits = pd.read_csv(paths.SPLITS, keep_default_na=False)
    return ModelStage(settings, stats, backbones, folds, rt, runtime.device(), cache,
                      dict(zip(splits["path"], splits["group"].astype(str))))


# Errors a method may raise for a (method, backbone) pair that cannot run; they
# are recorded with their message. Anything else is a bug and propagates.
# (NotImplementedError: e.g. lrp on a backbone without canonizers, LRP_BACKBONES.)
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (torch.OutOfMemoryError, NotImplementedError)


HARMLESS_CAPTUM_NOTES = (r"Input Tensor \d+ did not already require gradients",
                         r"Setting backward hooks on ReLU activations")


def run_methods(methods: list[str], build: Callable[[str], Method], x: torch.Tensor, target: torch.Tensor,
                log: Callable[[str], None] = print) -> tuple[dict, dict]:
    """Maps per method (float32 numpy (B, H, W)) and a status per method.

    Status: {"ok": True, "seconds": s} or {"ok": False, "reason": "..."} for
    the expected errors above (out of memory, unsupported module).
    """
    import time
    maps, status = {}, {}
    for name in methods:
        t = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # Captum's notes on every call that are expected here (inputs are leaf tensors without grad;
                # guided methods hook ReLUs): they filled the CI log, one per method and image batch
                for note in HARMLESS_CAPTUM_NOTES:
                    warnings.filterwarnings("ignore", message=note)
                a = build(name).attribute(x, target)
        except EXPECTED_ERRORS as err:
            status[name] = {"ok": False, "reason": f"{type(err).__name__}: {err}"[:500]}
            log(f"  {name}: FAILED ({status[name]['reason'][:120]})")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        if not torch.isfinite(a).all():
            status[name] = {"ok": False, "reason": "non-finite values in the attribution map"}
            log(f"  {name}: non-finite map")
            continue
        maps[name] = a.cpu().numpy().astype(np.float32)
        status[name] = {"ok": True, "seconds": round(time.perf_counter() - t, 3)}
        timing.add(f"method {name}", time.perf_counter() - t, n=len(x), unit="image")
        log(f"  {name}: {status[name]['seconds']:.1f}s")
    return maps, status


@dataclass
class Attribution:
    """What :func:`attribute_all` returns: the maps and status of :func:`run_methods`, the built methods
    (DeepLIFT's convergence and LRP's conservation are read from them), the rows per forward used and
    the model's :class:`PrepareReport`."""
    maps: dict
    status: dict
    built: dict
    max_batch: int
    prepare: PrepareReport


def attribute_all(methods: list[str], model: nn.Module, x: torch.Tensor, target: torch.Tensor, settings: Settings,
                  backbone: str | None = None, max_batch: int | None = None,
                  log: Callable[[str], None] = print) -> Attribution:
    """Every method of ``methods`` on ``model``: the model prepared once (:func:`prepare_for_attribution`),
    ``max_batch`` rows per forward (given, else ``explain.max_batch``, else :func:`estimate_max_batch` on
    ``x``), then :func:`run_methods`. The one sequence the attribute, severity, planted and randomisation
    stages share."""
    prepared, rep = prepare_for_attribution(model, x)
    max_batch = int(max_batch or settings.max_batch or estimate_max_batch(model, x, settings.memory_fraction))
    built: dict[str, Method] = {}

    def build(name: str) -> Method:
        built[name] = make(name, model, prepared, settings, max_batch, backbone)
        return built[name]

    maps, status = run_methods(methods, build, x, target, log=log)
    return Attribution(maps, status, built, max_batch, rep)
