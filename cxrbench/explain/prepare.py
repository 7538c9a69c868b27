"""Model preparation for the attribution methods: a deep copy that Captum's DeepLift and guided backprop can hook.

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
* ``nn.ReLU6`` becomes :class:`GuidedReLU6` (hookable), and DeepLIFT's own copy
  of the model has its max pools written with ReLUs (:func:`rewrite_max_pools`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

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


def reset_unshared(model: nn.Module) -> None:
    """Every :class:`_Unshared` of ``model`` back to its first copy: before a forward of a submodule, which the
    root model's reset hook does not see (LRP runs the backbone inside the classifier)."""
    for m in model.modules():
        if isinstance(m, _Unshared):
            m.calls = 0
