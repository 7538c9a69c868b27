"""Forward-only speed-up: each batch normalisation folded into the convolution that feeds it.

In eval mode a ``BatchNorm2d`` is a fixed affine map per channel, so a ``Conv2d`` whose only consumer is that
batch norm computes the same function with rescaled weights and a bias
(:func:`torch.nn.utils.fusion.fuse_conv_bn_weights`); the batch norm then reduces to what follows it (timm's
``BatchNormAct2d``: its dropout and activation; a plain ``BatchNorm2d``: nothing). On the CPU the separate
batch-norm pass was about a third of EfficientNet-Lite0's forward time: folding made its inference 1.5x faster
(``benchmarks/bench_fold_batchnorm.py``). In float64 the folded model equals the original to about 1e-11;
in float32 the outputs move by float rounding only (tests/classify/test_fuse.py).

For stages that only run the model forward (the aoppc stage's perturbed images, evaluation, prediction): not
for training, and not for attribution, whose methods may look for the batch-norm layers themselves (zennit's
canonizers) or hook a layer the fold replaces.
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights


class _Tracer(torch.fx.Tracer):
    """Keeps convolutions and batch norms as single nodes (timm's ``BatchNormAct2d`` is a ``BatchNorm2d``)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) or super().is_leaf_module(m, qualname)


def _after_fold(bn: nn.BatchNorm2d) -> nn.Module | None:
    """What replaces a folded batch norm, or None for a kind whose forward is not known here."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    from timm.layers.norm_act import BatchNormAct2d

    if type(bn) is BatchNormAct2d:
        return nn.Sequential(bn.drop, bn.act)
    return None


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _pairs(net: nn.Module) -> list[tuple[str, str]]:
    """(conv, batch norm) module names where the batch norm's input is that convolution's output alone, each
    module called once in the traced graph."""
    graph = _Tracer().trace(net)
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    mods = dict(net.named_modules())
    out = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(mods[node.target], nn.BatchNorm2d) or not node.args:
            continue
        src = node.args[0]
        if (isinstance(src, torch.fx.Node) and src.op == "call_module" and isinstance(mods[src.target], nn.Conv2d)
                and len(src.users) == 1 and calls[src.target] == 1 and calls[node.target] == 1):
            out.append((src.target, node.target))
    return out


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int, str]:
    """Fold every batch norm of ``model`` (in eval mode; changed in place) that directly follows a convolution
    into it. Returns the model, the number of batch norms folded, and a one-line account for the log.

    The network traced is ``model.backbone`` when there is one (the classifier's resizing and normalisation
    branch on the input's shape, which tracing cannot follow), else ``model``. A network that torch.fx cannot
    trace is left as it is: the count is 0 and the account says why (the results are the same, only slower).
    """
    if model.training:
        raise ValueError("fold_batchnorm: the model is in training mode, where batch norm uses the batch's "
                         "statistics; call model.eval() first (folding is for forward-only inference)")
    net = getattr(model, "backbone", model)
    try:
        pairs = _pairs(net)
    except (torch.fx.proxy.TraceError, TypeError, NotImplementedError) as e:
        return model, 0, f"batch norm not folded ({type(net).__name__} cannot be traced: {type(e).__name__}: {e})"
    n = 0
    for conv_name, bn_name in pairs:
        conv, bn = net.get_submodule(conv_name), net.get_submodule(bn_name)
        after = _after_fold(bn)
        if after is None or bn.running_mean is None or bn.running_var is None:
            continue
        fmt = (torch.channels_last if conv.weight.is_contiguous(memory_format=torch.channels_last)
               and not conv.weight.is_contiguous() else torch.contiguous_format)
        with torch.no_grad():
            w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                        bn.weight, bn.bias)
        conv.weight = nn.Parameter(w.detach().contiguous(memory_format=fmt), requires_grad=False)
        conv.bias = nn.Parameter(b.detach(), requires_grad=False)
        _set(net, bn_name, after)
        n += 1
    total = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) + n
    return model, n, f"batch norm folded into the convolutions: {n} of {total}"
