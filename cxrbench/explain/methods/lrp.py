"""Layer-wise relevance propagation through zennit (0.5.1): the composites of ``explain.lrp_composite`` and the
canonizers per timm backbone family.

LRP acts on the timm backbone inside :class:`cxrbench.classify.models.Classifier`
(its resize and normalisation pass relevance through unchanged in total); a
backbone whose residual additions no canonizer rewrites raises
NotImplementedError, recorded by :func:`cxrbench.explain.runner.run_methods` as the method's status.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cxrbench.core.params import check_choice
from cxrbench.explain.methods.registry import Method, register
from cxrbench.explain.prepare import reset_unshared


LRP_COMPOSITES = ("epsilon", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1_flat")

# timm backbones whose every residual addition is rewritten by a canonizer below (or that have none):
# any other backbone raises NotImplementedError (recorded): a skip connection left as a plain `+` passes
# its full relevance down both branches, which counts it twice.
LRP_BACKBONES = {r"resnet(18|26|34|50|101|152)": "resnet", r"efficientnet_lite[0-4]": "efficientnet_lite",
                 r"densenet(121|161|169|201)": "densenet", r"inception_v3": "inception_v3",
                 r"vgg(11|13|16|19)(_bn)?": "vgg"}     # VGG: no residual addition, so no canonizer beyond batch norm


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
        from cxrbench.classify.hierarchy import HierarchicalClassifier
        from cxrbench.classify.models import Classifier
        model = self.model
        if isinstance(model, HierarchicalClassifier):      # recorded as the method's status, not a crash
            raise NotImplementedError("lrp: a two-stage classifier (train.hierarchy) is two networks chained by "
                                      "a log-softmax; LRP's rules are defined for one network")
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
            reset_unshared(net)
            plain = net(xn)
        composite = lrp_composite(self.settings["lrp_composite"], canonizers, low, high)
        onehot = F.one_hot(target, plain.shape[1]).to(plain.dtype)
        reset_unshared(net)
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
