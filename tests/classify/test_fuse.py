"""Batch norm folded into the convolutions: the same function (to float64 rounding), only where it is sound."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from cxrbench.classify import fuse
from cxrbench.classify import models as M


def _random_stats(model: nn.Module) -> nn.Module:
    """Batch-norm statistics and affine parameters away from the identity, so a wrong fold shows."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
def test_folded_classifier_is_the_same_function(backbone):
    torch.manual_seed(0)
    model = _random_stats(M.create_model(backbone, 5, 1, "none", 32)).double()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded, n, note = fuse.fold_batchnorm(copy.deepcopy(model))
    assert n == n_bn and f"{n} of {n_bn}" in note
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(3, 1, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        a, b = model(x), folded(x)
    # float64: the fold's own rounding is ~1e-16 relative per layer; a wrong scale, bias or activation is O(1)
    assert (a - b).abs().max().item() <= 1e-10 * max(1.0, a.abs().max().item())


def test_channels_last_weights_stay_channels_last():
    model = _random_stats(M.create_model("resnet18", 5, 1, "none", 32)).to(memory_format=torch.channels_last)
    folded, n, _ = fuse.fold_batchnorm(model)
    assert n > 0
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)


def test_training_mode_is_refused():
    model = M.create_model("resnet18", 5, 1, "none", 32).train()
    with pytest.raises(ValueError, match="training mode"):
        fuse.fold_batchnorm(model)


class _ConvBN(nn.Module):
    """A convolution and its batch norm in one of two forwards that must not be folded: ``shared``, the
    convolution's output also feeds a skip (folding would change the skip); ``branching``, the forward
    branches on the input's values, which torch.fx cannot trace."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        if self.kind == "shared":
            y = self.conv(x)
            return self.bn(y) + y
        return self.bn(self.conv(x)) if x.sum() > 0 else x


def test_a_convolution_with_another_consumer_is_not_folded():
    model = _random_stats(_ConvBN("shared")).double()
    x = torch.rand(2, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
        folded, n, _ = fuse.fold_batchnorm(model)
        assert n == 0
        assert torch.equal(folded(x), before)


def test_an_untraceable_network_is_left_as_it_is_and_says_why():
    model = _random_stats(_ConvBN("branching"))
    x = torch.rand(2, 2, 8, 8)
    with torch.no_grad():
        before = model(x)
        folded, n, note = fuse.fold_batchnorm(model)
        assert n == 0 and "cannot be traced" in note
        assert torch.equal(folded(x), before)
        assert isinstance(folded.bn, nn.BatchNorm2d)
