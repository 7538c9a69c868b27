"""Attribution maps for the classifiers, one class per method.

Methods (Chatterjee et al., seed 000, section 3.4, all via Captum; the
class-activation maps of seeds 001 and 003 and more through pytorch-grad-cam;
LRP of seed 001 through zennit):

==================  ===========================================================
occlusion           captum.attr.Occlusion, zero baseline, window/stride in params
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
==================  ===========================================================

The pytorch-grad-cam maps are the library's own (its weights, activations,
gradients and final ReLU) stopped before its per-image min-max scaling to
[0, 1] and cv2 resize: they keep their magnitude and are upsampled with
``explain.interpolate`` like Grad-CAM's (:class:`_LayerResolution`). All rows
of a chunk go through one forward/backward with ``ClassifierOutputTarget(t_i)``
per row. LRP acts on the timm backbone inside :class:`cxrbench.classify.models.Classifier`
(its resize and normalisation pass relevance through unchanged in total); a
backbone whose residual additions no canonizer rewrites raises
NotImplementedError, recorded by :func:`run_methods` as the method's status.

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

from cxrbench.core.params import ParamError, check_choice, check_fraction, check_int, section

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


class ReLUMaxPool2d(nn.Module):
    """``nn.MaxPool2d`` written as pairwise maxima, ``max(a, b) = a + relu(b - a)``, for DeepLIFT.

    Captum's DeepLIFT rule for ``nn.MaxPool2d`` (and the gradient rule) break completeness when the
    reference's activations differ from the input's: on our classifiers (normalisation inside the model,
    so the zero baseline is not zero after it) the relative delta of resnet18 was 0.2-1.1. Written with
    ReLUs, every step is linear or a rescale-rule ReLU, for which DeepLIFT's attributions sum exactly to
    f(x) - f(0). The forward values equal the pooling's (to float rounding). Window slots outside the
    image repeat the window's first pixel inside it (``max(a, a) = a``), as ``-inf`` padding would.
    The one ``relu`` module is called k*k - 1 times per forward: :func:`prepare_for_attribution` gives each
    call its own copy, as DeepLIFT needs.
    """

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        from torch.nn.modules.utils import _pair
        if pool.return_indices:
            raise ValueError("a max pooling that returns indices cannot be rewritten")
        self.kernel, self.stride = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size)
        self.padding, self.dilation, self.ceil_mode = _pair(pool.padding), _pair(pool.dilation), pool.ceil_mode
        self.relu = nn.ReLU()
        self._index: dict = {}

    def _gather_index(self, h: int, w: int, device) -> tuple[torch.Tensor, int, int, int]:
        key = (h, w, str(device))
        if key not in self._index:
            oh, ow = F.max_pool2d(torch.zeros(1, 1, h, w), self.kernel, self.stride, self.padding, self.dilation,
                                  self.ceil_mode).shape[-2:]
            (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
            yy = (torch.arange(oh).view(-1, 1, 1, 1) * sh - ph + torch.arange(kh).view(1, 1, -1, 1) * dh)
            xx = (torch.arange(ow).view(1, -1, 1, 1) * sw - pw + torch.arange(kw).view(1, 1, 1, -1) * dw)
            yy, xx = yy.expand(oh, ow, kh, kw), xx.expand(oh, ow, kh, kw)
            valid = ((yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)).reshape(oh, ow, -1)
            flat = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).reshape(oh, ow, -1)
            first = flat.gather(-1, torch.argmax(valid.int(), dim=-1, keepdim=True))
            flat = torch.where(valid, flat, first)
            self._index[key] = (flat.reshape(-1).to(device), oh, ow, kh * kw)
        return self._index[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        idx, oh, ow, k = self._gather_index(h, w, x.device)
        v = x.reshape(b, c, h * w).index_select(2, idx).view(b, c, oh * ow, k)
        m = v[..., 0]
        for j in range(1, k):
            m = m + self.relu(v[..., j] - m)
        return m.view(b, c, oh, ow)


def rewrite_max_pools(model: nn.Module) -> tuple[nn.Module, int]:
    """A deep copy of ``model`` with every ``nn.MaxPool2d`` module replaced by :class:`ReLUMaxPool2d`, and
    how many were replaced (``F.max_pool2d`` calls inside a ``forward`` cannot be; see
    :class:`PrepareReport`'s ``functional_calls``)."""
    model = copy.deepcopy(model)
    names = [n for n, m in model.named_modules() if type(m) is nn.MaxPool2d]
    for name in names:
        _set_submodule(model, name, ReLUMaxPool2d(model.get_submodule(name)))
    return model, len(names)


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
    functional_calls: dict = field(default_factory=dict)  # other non-linear functional calls outside modules

    def as_dict(self) -> dict:
        return {"inplace_relu_replaced": self.inplace_replaced, "unshared_modules": dict(self.unshared),
                "functional_relu_calls": self.functional_relu_calls, "relu6_replaced": self.relu6_replaced,
                "functional_calls": dict(self.functional_calls)}


# Non-linear functional calls that module hooks cannot see, by the name torch dispatches them under, and the
# module class whose own forward makes the same call (those calls are not counted as functional).
_FUNCTIONAL_NONLINEAR = {"max_pool1d": nn.MaxPool1d, "max_pool2d": nn.MaxPool2d, "max_pool3d": nn.MaxPool3d,
                         "hardtanh": nn.Hardtanh, "silu": nn.SiLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid,
                         "tanh": nn.Tanh, "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid, "elu": nn.ELU,
                         "leaky_relu": nn.LeakyReLU, "softmax": nn.Softmax, "mish": nn.Mish}


class _CountRelu(torch.overrides.TorchFunctionMode):
    """Counts ReLU calls (``n``) and the other non-linear calls of :data:`_FUNCTIONAL_NONLINEAR` by name."""

    def __init__(self):
        super().__init__()
        self.n = 0
        self.other: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RELU_FUNCS:
            self.n += 1
        else:
            name = getattr(func, "__name__", "").rstrip("_")
            if name in _FUNCTIONAL_NONLINEAR:
                self.other[name] = self.other.get(name, 0) + 1
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
    by_class: dict[str, int] = {}           # functional name -> calls made by the modules that wrap it
    handles = []
    wrappers = {cls: fn for fn, cls in _FUNCTIONAL_NONLINEAR.items()}
    for name, mod in model.named_modules():
        if isinstance(mod, _NONLINEAR) and not list(mod.parameters()):
            handles.append(mod.register_forward_hook(
                lambda m, i, o, n=name: calls.__setitem__(n, calls.get(n, 0) + 1)))
        fn = next((f for c, f in wrappers.items() if isinstance(mod, c)), None)
        if fn is not None:
            handles.append(mod.register_forward_hook(
                lambda m, i, o, fn=fn: by_class.__setitem__(fn, by_class.get(fn, 0) + 1)))
    counter = _CountRelu()
    try:
        with torch.no_grad(), counter:
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    module_relu_calls = sum(c for n, c in calls.items() if isinstance(model.get_submodule(n), nn.ReLU))
    rep.functional_relu_calls = max(0, counter.n - module_relu_calls)
    rep.functional_calls = {fn: n - by_class.get(fn, 0) for fn, n in sorted(counter.other.items())
                            if n - by_class.get(fn, 0) > 0}

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
            "relative": [round(float(v), 6) for v in rel], "delta": [float(v) for v in conv["delta"]],
            "max_pools_rewritten": int(conv.get("max_pools_rewritten", 0))}


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
        self.net: nn.Module | None = None        # the prepared model with its max pools as ReLUs
        self.max_pools_rewritten = 0

    def _one(self, x, target):
        from captum.attr import DeepLift
        if self.net is None:                     # exact completeness through max pooling (ReLUMaxPool2d)
            rewritten, self.max_pools_rewritten = rewrite_max_pools(self.model)
            self.net = prepare_for_attribution(rewritten, x)[0] if self.max_pools_rewritten else self.model
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]etting forward, backward hooks.*")
            a, delta = DeepLift(self.net).attribute(x, baselines=torch.zeros_like(x), target=target,
                                                    return_convergence_delta=True)
        self.deltas.append(delta.detach().float().cpu())
        self.sums.append(a.detach().float().reshape(len(a), -1).sum(1).cpu())
        return a

    def convergence(self) -> dict:
        """DeepLIFT's completeness check per image of the last ``attribute`` calls: ``delta`` =
        sum(map) - (f(x) - f(0)) (Captum's convergence delta) and ``relative`` = |delta| / |f(x) - f(0)|."""
        if not self.deltas:
            return {"delta": [], "relative": [], "max_pools_rewritten": self.max_pools_rewritten}
        delta = torch.cat(self.deltas).double()
        diff = torch.cat(self.sums).double() - delta                  # f(x) - f(0)
        rel = delta.abs() / diff.abs().clamp_min(1e-12)
        return {"delta": delta.tolist(), "relative": rel.tolist(), "max_pools_rewritten": self.max_pools_rewritten}


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
    tests/test_libraries.py checks that min-max scaling this map and resizing it bilinearly gives the
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


_CAM_CLASSES: dict[str, type] = {}


def _cam_class(library_name: str) -> type:
    """The library's CAM class ``library_name`` with :class:`_LayerResolution` mixed in (made once)."""
    if library_name not in _CAM_CLASSES:
        import pytorch_grad_cam
        base = getattr(pytorch_grad_cam, library_name)
        _CAM_CLASSES[library_name] = type(f"LayerResolution{library_name}", (_LayerResolution, base), {})
    return _CAM_CLASSES[library_name]


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

    def configure(self, cam) -> None:
        """Per-method settings on the library's object (Score-CAM: its batch size)."""

    def _one(self, x, target):
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        cam = _cam_class(self.library_name)(model=self.model, target_layers=[self.layer])
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
    The target is ignored (every class gets the same map), and the sign of a principal component is
    arbitrary: the rectified half may be the background.
    """
    library_name = "EigenCAM"


# --- LRP through zennit (0.5.1) ------------------------------------------------

LRP_COMPOSITES = ("epsilon", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1_flat")

# timm backbones whose every residual addition is rewritten by a canonizer below (or that have none):
# any other backbone raises NotImplementedError (recorded): a skip connection left as a plain `+` passes
# its full relevance down both branches, which counts it twice.
LRP_BACKBONES = {r"resnet(18|26|34|50|101|152)": "resnet", r"efficientnet_lite[0-4]": "efficientnet_lite",
                 r"densenet(121|161|169|201)": "densenet", r"inception_v3": "inception_v3"}


def _lrp_family(backbone: str | None) -> str | None:
    import re
    if backbone is None:
        return None
    for pattern, family in LRP_BACKBONES.items():
        if re.fullmatch(pattern, backbone):
            return family
    raise NotImplementedError(f"lrp: no canonizer for backbone {backbone!r} (its residual additions would "
                              f"count relevance twice); supported: {list(LRP_BACKBONES)}")


def _merge_batch_norm_canonizer():
    """zennit's batch-norm merge for a convolution / dense layer and the batch norm that follows it as the
    next child of the same parent module (timm's ``conv1``, ``bn1``; a ``downsample`` of (conv, bn)), of as
    many channels. timm's BatchNormAct2d (batch norm + activation, a subclass of nn.BatchNorm2d) counts as
    one: merged, its batch norm becomes the identity and its activation stays.

    zennit's own SequentialMergeBatchNorm pairs consecutive *leaves* of the whole tree: it misses
    BatchNormAct2d (its leaves are the activation) and, on a DenseNet, pairs a layer's last convolution
    with the next layer's batch norm, which runs on the concatenation instead (a shape error at best).
    """
    from zennit.canonizers import MergeBatchNorm as ZennitMerge
    from zennit.types import BatchNorm, Linear

    class MergeBatchNorm(ZennitMerge):
        def apply(self, root_module):
            instances = []
            for parent in root_module.modules():
                children = list(parent.children())
                for first, second in zip(children, children[1:]):
                    if (isinstance(first, Linear) and isinstance(second, (BatchNorm, nn.BatchNorm2d))
                            and first.weight.shape[0] == second.num_features):
                        instance = self.copy()
                        instance.register((first,), second)
                        instances.append(instance)
            return instances

    return MergeBatchNorm()


def _residual_sum_canonizer(family: str):
    """The residual addition of timm's blocks through zennit's ``Sum`` module (its rule: Norm, relevance
    shared in proportion to each summand's contribution): ResNet's BasicBlock / Bottleneck (forward
    rewritten as timm's, with the Sum) and EfficientNet's DepthwiseSeparableConv / InvertedResidual
    (their own forward without the skip, then the Sum)."""
    from zennit.canonizers import Canonizer
    from zennit.layer import Sum

    if family == "resnet":
        from timm.models.resnet import BasicBlock, Bottleneck
        types = (BasicBlock, Bottleneck)

        def forward(self, x):
            shortcut = x
            if isinstance(self, BasicBlock):
                out = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
                out = self.bn2(self.conv2(out))
            else:
                out = self.act1(self.bn1(self.conv1(x)))
                out = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(out)))))
                out = self.bn3(self.conv3(out))
            if self.se is not None:
                out = self.se(out)
            if self.drop_path is not None:
                out = self.drop_path(out)
            if self.downsample is not None:
                shortcut = self.downsample(shortcut)
            out = self.canonizer_sum(torch.stack([shortcut, out], dim=-1))
            return (self.act2 if isinstance(self, BasicBlock) else self.act3)(out)
    elif family == "efficientnet_lite":
        from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
        types = (DepthwiseSeparableConv, InvertedResidual)

        def forward(self, x):
            out = type(self).forward(self, x)            # has_skip is False while canonized: the branch alone
            return self.canonizer_sum(torch.stack([x, out], dim=-1))
    else:
        return None

    class ResidualSum(Canonizer):
        def __init__(self):
            self.module = None

        def apply(self, root_module):
            instances = []
            for m in root_module.modules():
                if isinstance(m, types) and getattr(m, "has_skip", True):
                    inst = ResidualSum()
                    inst.register(m)
                    instances.append(inst)
            return instances

        def register(self, module):
            self.module = module
            module.canonizer_sum = Sum()
            module.forward = forward.__get__(module)
            if hasattr(module, "has_skip"):
                module.has_skip = False

        def remove(self):
            del self.module.canonizer_sum
            del self.module.forward                      # back to the class's forward
            if hasattr(self.module, "has_skip"):
                self.module.has_skip = True

    return ResidualSum()


def lrp_canonizers(backbone: str | None) -> list:
    """zennit canonizers for ``backbone`` (a timm name; None: a plain network, batch norms merged only)."""
    family = _lrp_family(backbone)
    out = [_merge_batch_norm_canonizer()]
    residual = _residual_sum_canonizer(family) if family else None
    return out + ([residual] if residual is not None else [])


def lrp_composite(name: str, canonizers: list, low, high):
    """zennit composite ``explain.lrp_composite``: ``epsilon`` (the epsilon rule on every convolution and
    dense layer), ``epsilon_plus_flat``, ``epsilon_gamma_box`` (ZBox on the first layer, bounded by
    ``low``/``high``: the backbone's input range) or ``epsilon_alpha2_beta1_flat`` (zennit's defaults:
    epsilon 1e-6, gamma 0.25). All pass relevance unchanged through activations and unmerged batch norms
    and share it in proportion through sums and average pools (zennit's base layer map)."""
    from zennit import composites as Z
    from zennit.rules import Epsilon
    from zennit.types import Convolution
    check_choice("explain.lrp_composite", name, LRP_COMPOSITES)
    if name == "epsilon":
        return Z.LayerMapComposite(layer_map=Z.layer_map_base() + [(Convolution, Epsilon()), (nn.Linear, Epsilon())],
                                   canonizers=canonizers)
    if name == "epsilon_gamma_box":
        return Z.EpsilonGammaBox(low=low, high=high, canonizers=canonizers)
    cls = {"epsilon_plus_flat": Z.EpsilonPlusFlat, "epsilon_alpha2_beta1_flat": Z.EpsilonAlpha2Beta1Flat}[name]
    return cls(canonizers=canonizers)


def _reset_unshared(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, _Unshared):
            m.calls = 0


@register("lrp")
class LRPMethod(Method):
    """Layer-wise relevance propagation (Bach et al. 2015): zennit's ``Gradient`` attributor under the
    composite ``explain.lrp_composite`` with :func:`lrp_canonizers`; relevance initialised with the target
    logit (one-hot of the target times the output), so that a conserving rule sums to that logit.

    On a :class:`cxrbench.classify.models.Classifier` the composite acts on the timm ``backbone`` with the resized
    and normalised input: the normalisation (an elementwise one-to-one map) passes relevance unchanged, and
    the resize passes it back to the cache pixels through the transpose of the bilinear interpolation,
    whose weights sum to one per output pixel (relevance conserved). The canonized backbone must reproduce
    the logits (a canonizer that changed the function is a bug, raised). Runs on the prepared model
    (no in-place activation under zennit's hooks).
    """
    needs_prepared = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sums: list[torch.Tensor] = []       # per image: sum(map)
        self.logits: list[torch.Tensor] = []     # per image: the target logit

    def _one(self, x, target):
        from zennit.attribution import Gradient
        from cxrbench.classify.models import Classifier
        model = self.model
        canonizers = lrp_canonizers(self.backbone)
        if isinstance(model, Classifier):
            net, c = model.backbone, x.shape[1]
            if model.aux:
                net.aux_logits = False                   # as Classifier.forward in eval mode
            with torch.enable_grad():
                xr = x.detach().requires_grad_(True)
                resized = model.resize(xr)
            xn = model.normalise(resized.detach())
            low = model.normalise(torch.zeros(1, c, 1, 1, device=x.device))
            high = model.normalise(torch.ones(1, c, 1, 1, device=x.device))
        else:
            net, xn, low, high = model, x.detach(), 0.0, 1.0
        with torch.no_grad():
            _reset_unshared(net)
            plain = net(xn)
        composite = lrp_composite(self.settings["lrp_composite"], canonizers, low, high)
        onehot = F.one_hot(target, plain.shape[1]).to(plain.dtype)
        _reset_unshared(net)
        with torch.enable_grad(), Gradient(model=net, composite=composite) as attributor:
            out, rel = attributor(xn.clone(), lambda o: o * onehot)
        tol = 1e-3 * max(1.0, float(plain.abs().max()))
        if not torch.allclose(out.detach(), plain, atol=tol, rtol=0):
            raise RuntimeError(f"lrp: the canonized {self.backbone or 'model'} changed the logits by up to "
                               f"{float((out.detach() - plain).abs().max()):.3g} (a canonizer bug)")
        if isinstance(model, Classifier) and resized.shape != x.shape:
            with torch.enable_grad():
                rel, = torch.autograd.grad(resized, xr, rel)
        self.sums.append(rel.detach().float().reshape(len(rel), -1).sum(1).cpu())
        self.logits.append(plain.gather(1, target.view(-1, 1))[:, 0].float().cpu())
        return rel.detach()

    def conservation(self) -> dict:
        """Per image of the last ``attribute`` calls: sum(map), the target logit and
        |sum - logit| / |logit| (exact only for the epsilon rule without biases)."""
        if not self.sums:
            return {"sum": [], "logit": [], "relative": []}
        s, z = torch.cat(self.sums).double(), torch.cat(self.logits).double()
        return {"sum": s.tolist(), "logit": z.tolist(), "relative": ((s - z).abs() / z.abs().clamp_min(1e-12)).tolist()}


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
    scorecam_batch: int | None    # Score-CAM's masked copies per forward; None: max_batch
    lrp_composite: str            # one of LRP_COMPOSITES

    def method_settings(self) -> dict:
        return {"steps": self.steps, "window": self.window, "stride": self.stride,
                "interpolate": self.interpolate, "scorecam_batch": self.scorecam_batch,
                "lrp_composite": self.lrp_composite}


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
                                   LRP_COMPOSITES))


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
    # cxrbench.classify.models.Classifier wraps the timm network as ``backbone``
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


def load_classifier(backbone: str, fold: int, device, checkpoint_file: str = "best.pt"):
    """The trained classifier of ``backbone`` fold ``fold`` (cxrbench.classify.models); ``checkpoint_file``:
    ``best.pt`` or ``final.pt`` (``evaluate.checkpoint``, :data:`cxrbench.classify.training.CHECKPOINT_FILES`)."""
    from pathlib import Path
    try:
        from cxrbench.classify.models import load_classifier as _load
    except ImportError as err:
        raise RuntimeError(f"cxrbench.classify.models.load_classifier is not available ({err}): "
                           f"the classification stages must run first") from None
    path = Path("models/classifier") / backbone / f"fold{fold}" / checkpoint_file
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the classification stage (dvc repro train)")
    model, meta = _load(path, map_location=device)
    return model.to(device).eval(), meta


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
