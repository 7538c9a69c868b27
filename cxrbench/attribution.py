"""Attribution maps for the classifiers, one class per method.

Methods (Chatterjee et al., seed 000, section 3.4, all via Captum; plus the
class-activation maps of seeds 001 and 003):

==================  ===========================================================
occlusion           captum.attr.Occlusion, zero baseline, window/stride in params
saliency            captum.attr.Saliency (absolute gradient)
input_x_gradient    captum.attr.InputXGradient
guided_backprop     captum.attr.GuidedBackprop
integrated_gradients captum.attr.IntegratedGradients, zero baseline, n_steps
deeplift            captum.attr.DeepLift, zero baseline (Rescale rule)
gradcam             captum.attr.LayerGradCam on the target layer (ReLU), upsampled
                    to the input with LayerAttribution.interpolate
gradcam_pp          Grad-CAM++ (Chattopadhay et al. 2018), own implementation below
guided_gradcam      captum.attr.GuidedGradCam on the target layer
==================  ===========================================================

Every map is returned as a float32 (B, H, W) tensor at input resolution: the
attribution summed over input channels (Captum's own heat-map convention).

Two failures of the seed paper are handled here:

* DeepLIFT on ResNets (torchvision ResNets call one ``self.relu`` module twice
  per block; Captum's DeepLift keeps per-module state and refuses a module
  called more than once). :func:`prepare_for_attribution` deep-copies the
  model, replaces each ``nn.ReLU(inplace=True)`` with a fresh non-inplace
  ``nn.ReLU`` and gives every parameter-free non-linear module that a forward
  pass calls more than once one private copy per call (:class:`_Unshared`).
  Activations written as ``torch.nn.functional.relu`` inside a ``forward`` are
  invisible to module hooks: DeepLIFT then treats them as linear (plain
  gradient) and guided backprop does not guide them. They cannot be rewritten
  without tracing the model; :func:`prepare_for_attribution` counts them
  during a probe forward and reports the count so that a run records it.
* Memory (DenseNet161 ran out of GPU memory): every method works on chunks of
  at most ``max_batch`` rows per forward/backward (IG: ``internal_batch_size``;
  occlusion: ``perturbations_per_eval``; DeepLIFT: half a chunk, as it stacks
  inputs and baselines; the others split the input batch). ``max_batch`` comes
  from params or, when null, from :func:`estimate_max_batch`.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .params import ParamError, check_choice, check_fraction, check_int, section

# --- model preparation -------------------------------------------------------

# Parameter-free non-linear modules that Captum's DeepLift / GuidedBackprop hook.
_NONLINEAR = (nn.ReLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Softmax,
              nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_RELU_FUNCS = {F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}


class GuidedReLU6(nn.ReLU):
    """ReLU6 (``min(max(x, 0), 6)``; EfficientNet-Lite's activation) as a subclass of ``nn.ReLU``.

    Captum hooks ``nn.ReLU`` modules only: with ``nn.ReLU6`` left as it is, guided backprop does not guide
    it (it equals saliency on efficientnet_lite0) and DeepLIFT treats it as linear (it equals input x
    gradient). As an ``nn.ReLU`` it is guided (the positive part of the gradient, which autograd already
    masks to 0 < x < 6), and :func:`prepare_for_attribution` registers it with DeepLIFT's rescale rule
    ((out - out_ref) / (in - in_ref), exact for any elementwise monotone function).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).clamp(max=6.0)


def _register_with_deeplift() -> None:
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR, nonlinear

    SUPPORTED_NON_LINEAR.setdefault(GuidedReLU6, nonlinear)


class _Unshared(nn.Module):
    """Stands in for a module that a forward pass calls ``n`` times: call ``i``
    of a forward goes to private copy ``i``, so hooks see each copy once.

    The call counter is reset by a forward pre-hook on the root model.
    """

    def __init__(self, module: nn.Module, n: int):
        super().__init__()
        self.copies = nn.ModuleList(copy.deepcopy(module) for _ in range(n))
        self.calls = 0

    def forward(self, *args, **kwargs):
        if self.calls >= len(self.copies):
            raise RuntimeError(f"_Unshared: called {self.calls + 1} times in one forward pass, "
                               f"expected at most {len(self.copies)} (data-dependent control flow?)")
        out = self.copies[self.calls](*args, **kwargs)
        self.calls += 1
        return out


@dataclass
class PrepareReport:
    inplace_replaced: int = 0
    unshared: dict = field(default_factory=dict)        # module name -> calls per forward
    functional_relu_calls: int = 0                       # F.relu etc. outside nn.ReLU modules
    relu6_replaced: int = 0                              # nn.ReLU6 -> GuidedReLU6 (hookable)

    def as_dict(self) -> dict:
        return {"inplace_relu_replaced": self.inplace_replaced, "unshared_modules": dict(self.unshared),
                "functional_relu_calls": self.functional_relu_calls, "relu6_replaced": self.relu6_replaced}


class _CountRelu(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RELU_FUNCS:
            self.n += 1
        return func(*args, **(kwargs or {}))


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def prepare_for_attribution(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, PrepareReport]:
    """A deep copy of ``model`` (eval mode) that DeepLift and guided backprop can hook.

    ``example``: one input batch (a single row is enough) for the probe forward
    that counts module calls. The original model is left untouched.
    """
    model = copy.deepcopy(model).eval()
    rep = PrepareReport()
    _register_with_deeplift()
    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.ReLU6):
            _set_submodule(model, name, GuidedReLU6(inplace=False))
            rep.relu6_replaced += 1
        elif isinstance(mod, nn.ReLU) and mod.inplace:
            _set_submodule(model, name, nn.ReLU(inplace=False))
            rep.inplace_replaced += 1
        elif hasattr(mod, "inplace") and getattr(mod, "inplace") is True and isinstance(mod, _NONLINEAR):
            mod.inplace = False
            rep.inplace_replaced += 1

    calls: dict[str, int] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, _NONLINEAR) and not list(mod.parameters()):
            handles.append(mod.register_forward_hook(
                lambda m, i, o, n=name: calls.__setitem__(n, calls.get(n, 0) + 1)))
    counter = _CountRelu()
    try:
        with torch.no_grad(), counter:
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    module_relu_calls = sum(c for n, c in calls.items() if isinstance(model.get_submodule(n), nn.ReLU))
    rep.functional_relu_calls = max(0, counter.n - module_relu_calls)

    shared = {n: c for n, c in calls.items() if c > 1}
    for name, n in shared.items():
        _set_submodule(model, name, _Unshared(model.get_submodule(name), n))
        rep.unshared[name] = n
    if shared:
        unshared = [m for m in model.modules() if isinstance(m, _Unshared)]

        def reset(_m, _inp):
            for u in unshared:
                u.calls = 0
        model.register_forward_pre_hook(reset)
    return model, rep


def convergence_summary(conv: dict, tolerance: float, paths: list) -> dict:
    """:meth:`DeepLiftMethod.convergence` per image plus what exceeds ``explain.deeplift_tolerance``
    (relative): median and max, the count and the images above it."""
    rel = np.asarray(conv["relative"], dtype=float)
    if len(rel) != len(paths):
        raise ValueError(f"{len(rel)} convergence deltas for {len(paths)} images")
    above = rel > tolerance
    return {"tolerance": float(tolerance), "relative_median": float(np.median(rel)) if len(rel) else None,
            "relative_max": float(rel.max()) if len(rel) else None, "above_tolerance": int(above.sum()),
            "images": int(len(rel)), "above_paths": [p for p, a in zip(paths, above) if a],
            "relative": [round(float(v), 6) for v in rel], "delta": [float(v) for v in conv["delta"]]}


# --- memory ------------------------------------------------------------------

def available_memory(device: torch.device | str) -> int:
    """Free bytes on ``device`` (GPU: cudaMemGetInfo; CPU: MemAvailable)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil
    return int(psutil.virtual_memory().available)


def estimate_max_batch(model: nn.Module, example: torch.Tensor, fraction: float = 0.5,
                       overhead: float = 3.0, cap: int = 256) -> int:
    """Rows per forward+backward that fit in ``fraction`` of free memory.

    Per row: the bytes of every leaf module's output in one forward (probe with
    one row) times ``overhead`` (gradients, Captum's copies of hooked tensors).
    A coarse, safe-side estimate; set ``explain.max_batch`` to override it. On
    CUDA the per-row bytes are measured instead (:func:`measured_row_bytes`).
    """
    if example.device.type == "cuda":
        per_row = measured_row_bytes(model, example) * overhead
        return int(max(1, min(cap, available_memory(example.device) * fraction // max(1, per_row))))
    total = [0]

    def hook(_m, _i, out):
        if torch.is_tensor(out):
            total[0] += out.numel() * out.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    per_row = max(1, int(total[0] * overhead) + example[:1].numel() * example.element_size())
    return int(max(1, min(cap, available_memory(example.device) * fraction // per_row)))


def measured_row_bytes(model: nn.Module, example: torch.Tensor) -> int:
    """Peak CUDA bytes one more row adds to a forward + input-gradient backward (the work of the gradient
    methods): the peak with 2 rows minus the peak with 1, so the model's own weights and their gradients
    cancel. CUDA only (``torch.cuda.max_memory_allocated``)."""
    dev = example.device
    if dev.type != "cuda":
        raise ValueError(f"measured_row_bytes needs a CUDA tensor, got one on {dev}")
    peaks = []
    for rows in (1, 2):
        x = example[:1].detach().repeat(rows, *([1] * (example.dim() - 1))).requires_grad_(True)
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        out = model(x)
        out = out[0] if isinstance(out, (tuple, list)) else out
        out[:, 0].sum().backward()
        torch.cuda.synchronize(dev)
        peaks.append(torch.cuda.max_memory_allocated(dev) - base)
        del x, out
        model.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    return int(max(peaks[1] - peaks[0], peaks[1] // 2, 1))


def _chunks(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def _pixels(v, side: int) -> int:
    """A window/stride in pixels: a float <= 1 is a fraction of the image side."""
    if isinstance(v, float) and v <= 1:
        return max(1, int(round(v * side)))
    return int(v)


# --- the registry ------------------------------------------------------------

METHODS: dict[str, type["Method"]] = {}


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

    def __init__(self, model: nn.Module, settings: dict, max_batch: int, layer: nn.Module | None = None):
        self.model, self.settings, self.max_batch, self.layer = model, settings, max_batch, layer

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


@register("saliency")
class SaliencyMethod(Method):
    def _one(self, x, target):
        from captum.attr import Saliency
        return Saliency(self.model).attribute(x, target=target, abs=True)


@register("input_x_gradient")
class InputXGradientMethod(Method):
    def _one(self, x, target):
        from captum.attr import InputXGradient
        return InputXGradient(self.model).attribute(x, target=target)


@register("guided_backprop")
class GuidedBackpropMethod(Method):
    needs_prepared = True

    def _one(self, x, target):
        from captum.attr import GuidedBackprop
        return GuidedBackprop(self.model).attribute(x, target=target)


@register("integrated_gradients")
class IntegratedGradientsMethod(Method):
    def _one(self, x, target):
        # Captum evaluates (steps x inputs) rows in forwards of internal_batch_size rows
        from captum.attr import IntegratedGradients
        steps = self.settings["steps"]
        return IntegratedGradients(self.model).attribute(
            x, baselines=torch.zeros_like(x), target=target, n_steps=steps,
            internal_batch_size=max(len(x), self.max_batch))


@register("deeplift")
class DeepLiftMethod(Method):
    needs_prepared = True

    def rows_per_input(self) -> int:
        return 2

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.deltas: list[torch.Tensor] = []     # per image, in call order: sum(map) - (f(x) - f(0))
        self.sums: list[torch.Tensor] = []       # per image: sum(map)

    def _one(self, x, target):
        from captum.attr import DeepLift
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]etting forward, backward hooks.*")
            a, delta = DeepLift(self.model).attribute(x, baselines=torch.zeros_like(x), target=target,
                                                      return_convergence_delta=True)
        self.deltas.append(delta.detach().float().cpu())
        self.sums.append(a.detach().float().reshape(len(a), -1).sum(1).cpu())
        return a

    def convergence(self) -> dict:
        """DeepLIFT's completeness check per image of the last ``attribute`` calls: ``delta`` =
        sum(map) - (f(x) - f(0)) (Captum's convergence delta) and ``relative`` = |delta| / |f(x) - f(0)|."""
        if not self.deltas:
            return {"delta": [], "relative": []}
        delta = torch.cat(self.deltas).double()
        diff = torch.cat(self.sums).double() - delta                  # f(x) - f(0)
        rel = delta.abs() / diff.abs().clamp_min(1e-12)
        return {"delta": delta.tolist(), "relative": rel.tolist()}


@register("gradcam")
class GradCamMethod(Method):
    needs_layer = True

    def _one(self, x, target):
        from captum.attr import LayerAttribution, LayerGradCam
        cam = LayerGradCam(self.model, self.layer).attribute(x, target=target, relu_attributions=True)
        return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode=self.settings["interpolate"])


@register("gradcam_pp")
class GradCamPPMethod(Method):
    """Grad-CAM++ (Chattopadhay et al. 2018, eq. 19 with the exponential closed form).

    With A the target layer's activations and g = dS/dA the gradient of the
    class logit S, taking Y = exp(S) makes the higher derivatives closed-form
    (dY/dA = Y g, d2Y/dA2 = Y g^2, d3Y/dA3 = Y g^3), so

        alpha_k(ij) = g^2 / (2 g^2 + sum_ab A_k(ab) g^3)    (0 where the denominator is 0)
        w_k        = sum_ij alpha_k(ij) relu(g_k(ij))       (Y > 0 only scales all w_k)
        map        = relu(sum_k w_k A_k), upsampled to the input.

    Activations come from a forward hook on the target layer, gradients from
    autograd.grad on them (runs on the prepared model: no in-place op may
    overwrite the hooked activation).
    """
    needs_layer = True
    needs_prepared = True

    def _one(self, x, target):
        store = {}

        def fwd(_m, _i, out):
            store["a"] = out[0] if isinstance(out, (tuple, list)) else out

        h = self.layer.register_forward_hook(fwd)
        try:
            with torch.enable_grad():
                xi = x.detach().requires_grad_(True)
                logits = self.model(xi)
                score = logits.gather(1, target.view(-1, 1)).sum()
                a = store["a"]
                g, = torch.autograd.grad(score, a)
        finally:
            h.remove()
        a = a.detach()
        g2, g3 = g.pow(2), g.pow(3)
        denom = 2 * g2 + (a.sum(dim=(2, 3), keepdim=True) * g3)
        alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)),
                            torch.zeros_like(denom))
        w = (alpha * F.relu(g)).sum(dim=(2, 3), keepdim=True)
        cam = F.relu((w * a).sum(1, keepdim=True))
        return F.interpolate(cam, size=tuple(x.shape[-2:]), mode=self.settings["interpolate"],
                             **({} if self.settings["interpolate"] == "nearest" else {"align_corners": False}))


@register("guided_gradcam")
class GuidedGradCamMethod(Method):
    needs_layer = True
    needs_prepared = True

    def _one(self, x, target):
        from captum.attr import GuidedGradCam
        return GuidedGradCam(self.model, self.layer).attribute(x, target=target,
                                                               interpolate_mode=self.settings["interpolate"])


# --- settings from params ----------------------------------------------------

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

    def method_settings(self) -> dict:
        return {"steps": self.steps, "window": self.window, "stride": self.stride,
                "interpolate": self.interpolate}


def validate(params: dict) -> Settings:
    methods = section(params, "explain.methods")
    if not isinstance(methods, list) or not methods:
        raise ParamError("explain.methods", f"expected a non-empty list drawn from {list(METHODS)}")
    for m in methods:
        check_method(m, "explain.methods")
    mb = section(params, "explain.max_batch")
    if mb is not None:
        check_int("explain.max_batch", mb, minimum=1)
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
                                       open_high=False))


def check_method(name: str, key: str = "explain.methods") -> str:
    if name not in METHODS:
        raise ParamError(key, f"unknown attribution method {name!r}; valid methods are {list(METHODS)}")
    return name


def target_layer(model: nn.Module, backbone: str, layers: dict) -> tuple[str, nn.Module]:
    """The Grad-CAM layer of ``backbone``: the longest key of ``layers`` that prefixes its name."""
    keys = sorted((k for k in layers if backbone.startswith(k)), key=len, reverse=True)
    if not keys:
        raise ParamError("explain.target_layers", f"no target layer for backbone {backbone!r}; "
                         f"keys (matched as name prefixes) are {sorted(layers)}")
    path = layers[keys[0]]
    # cxrbench.models.Classifier wraps the timm network as ``backbone``
    for candidate in (path, f"backbone.{path}"):
        try:
            return candidate, model.get_submodule(candidate)
        except AttributeError:
            pass
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
    return cls(net, settings.method_settings(), max_batch, layer)


def classifier_input(images_u8: np.ndarray, meta: dict, device, masks: np.ndarray | None = None) -> torch.Tensor:
    """Cache rows (B, C, S, S) uint8 -> the saved classifier's input: float in [0, 1] at the cache size.

    The classifier of cxrbench.models resizes to its backbone size and
    normalises inside ``forward``, so maps and AOPPC perturbations (zeros =
    black) live in cache coordinates. ``input_mode`` lungs_removed applies the
    classifier's own transform (cxrbench.segmentation) with ``masks``;
    lung_crop changes the geometry of the image and is not supported here.
    """
    from .cache import to_float
    mode = meta.get("input_mode", "full")
    if mode == "lung_crop":
        raise ValueError("classifier input_mode 'lung_crop': attribution maps would live in cropped "
                         "coordinates; only 'full' and 'lungs_removed' are supported")
    if mode != "full":
        if masks is None:
            raise ValueError(f"classifier input_mode {mode!r} needs the lung masks")
        from .segmentation import apply_input_mode
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


def load_classifier(backbone: str, fold: int, device, checkpoint_file: str = "best.pt"):
    """The trained classifier of ``backbone`` fold ``fold`` (cxrbench.models); ``checkpoint_file``:
    ``best.pt`` or ``final.pt`` (``evaluate.checkpoint``, :data:`cxrbench.training.CHECKPOINT_FILES`)."""
    from pathlib import Path
    try:
        from .models import load_classifier as _load
    except ImportError as err:
        raise RuntimeError(f"cxrbench.models.load_classifier is not available ({err}): "
                           f"the classification stages must run first") from None
    path = Path("models/classifier") / backbone / f"fold{fold}" / checkpoint_file
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the classification stage (dvc repro train)")
    model, meta = _load(path, map_location=device)
    return model.to(device).eval(), meta


# Errors a method may raise for a (method, backbone) pair that cannot run; they
# are recorded with their message. Anything else is a bug and propagates.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (torch.OutOfMemoryError, NotImplementedError)


HARMLESS_CAPTUM_NOTES = (r"Input Tensor \d+ did not already require gradients",
                         r"Setting backward hooks on ReLU activations")


def run_methods(methods: list[str], build: Callable[[str], Method], x: torch.Tensor, target: torch.Tensor,
                log: Callable[[str], None] = print) -> tuple[dict, dict]:
    """Maps per method (float16 numpy (B, H, W)) and a status per method.

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
        maps[name] = a.cpu().numpy().astype(np.float16)
        status[name] = {"ok": True, "seconds": round(time.perf_counter() - t, 3)}
        log(f"  {name}: {status[name]['seconds']:.1f}s")
    return maps, status
