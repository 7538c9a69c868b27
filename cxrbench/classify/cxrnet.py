"""CXR-Net (seed 003): an encoder-decoder-encoder classifier whose decoder draws its own explanation.

A backbone name ``cxrnet_<encoder>`` (``cxrnet_resnet34``) is this model on the timm encoder ``<encoder>``:

* the first encoder is the timm classifier itself (its global average pooling and fully connected head: the
  paper's classifier). Its feature maps at every stride are read with timm's ``forward_intermediates``, the
  features of ``features_only`` without a second copy of the weights (timm 1.0.31 refuses ``features_only``
  for inception_v3);
* the decoder is U-Net-like (paper eq. 3, Fig. 5): from the deepest feature map, per stage a sub-pixel
  upsampling by 2 (MONAI's ``SubpixelUpsample``: a 3x3 convolution with ICNR initialisation, then
  PixelShuffle), concatenated with the encoder's feature map of that stride (resized when an encoder's
  valid convolutions make the sizes differ by a pixel), a LeakyReLU(0.1), and two blocks of 3x3 convolution,
  batch norm and LeakyReLU(0.1); a last stage up to the input's size is concatenated with the input; a 1x1
  convolution and a sigmoid give an image in [0, 1] of the input's channels (the reconstruction);
* the second encoder is the first one (shared weights) applied to the reconstruction, normalised as the
  input is;
* the loss is the sum of the two encoders' classification losses (paper eq. 5): in training mode the model
  returns ``(logits of the input, logits of the reconstruction)`` and training adds the two with weight 1.

Choices where the paper is silent (docs/cxrnet.md): in eval mode the model's output is the first encoder's
logits on the input (the classifier every post-hoc method explains, so that they and the decoder's map
explain the same function); the decoder's widths are the encoder's channels at each stride (32 for the
last stage); the reconstruction's sigmoid; the explanation map is the reconstruction's channel mean at the
cache size (:meth:`CXRNet.reconstruct`), the same whatever class is explained (like Eigen-CAM's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PREFIX = "cxrnet_"
LEAKY_SLOPE = 0.1          # paper eq. 4
LAST_WIDTH = 32            # the decoder's channels at the input's resolution


def is_cxrnet(name) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX) and len(name) > len(PREFIX)


def encoder_of(name: str) -> str:
    """The timm encoder of a backbone name: ``cxrnet_resnet34`` -> ``resnet34``; any other name as it is."""
    return name[len(PREFIX):] if is_cxrnet(name) else name


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.LeakyReLU(LEAKY_SLOPE))


class DecoderStage(nn.Module):
    """Paper eq. 3: F(U(decoder) ++ encoder), U sub-pixel (ICNR) by 2, F a LeakyReLU and two conv blocks."""

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        from monai.networks.blocks import SubpixelUpsample

        up = max(cout, 8)
        # no bias: a random bias per sub-pixel channel would undo ICNR (the 2 x 2 sub-pixels equal at init)
        self.up = SubpixelUpsample(2, cin, up, scale_factor=2, apply_pad_pool=False, bias=False)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)
        self.convs = nn.Sequential(_conv_block(up + cskip, cout), _conv_block(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.convs(self.act(torch.cat([x, skip], 1)))


class Decoder(nn.Module):
    """The encoder's feature maps (shallow to deep) and its input -> a reconstruction in [0, 1]."""

    def __init__(self, channels: list[int], in_chans: int):
        super().__init__()
        rev = channels[::-1]                       # deep to shallow
        self.stages = nn.ModuleList(DecoderStage(rev[i], rev[i + 1], rev[i + 1]) for i in range(len(rev) - 1))
        self.last = DecoderStage(rev[-1], in_chans, LAST_WIDTH)
        self.out = nn.Conv2d(LAST_WIDTH, in_chans, 1)

    def forward(self, feats: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        d = feats[-1]
        for stage, skip in zip(self.stages, feats[-2::-1]):
            d = stage(d, skip)
        return torch.sigmoid(self.out(self.last(d, x)))


class CXRNet(nn.Module):
    """The encoder (a timm classifier), the decoder, and the encoder again on the decoder's reconstruction.

    ``forward(x, normalise)`` takes the normalised input and the function that normalises a [0, 1] image;
    training: ``(logits1, logits2)``; eval: the first encoder's logits."""

    def __init__(self, encoder: nn.Module, in_chans: int):
        super().__init__()
        self.encoder = encoder
        info = getattr(encoder, "feature_info", None)
        if not info or not hasattr(encoder, "forward_intermediates"):
            raise ValueError(f"{type(encoder).__name__}: timm gives no intermediate feature maps of it; "
                             f"CXR-Net needs a CNN encoder with feature_info (resnet, densenet, vgg, inception)")
        self.channels = [int(f["num_chs"]) for f in info]
        self.decoder = Decoder(self.channels, in_chans)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        final, inter = self.encoder.forward_intermediates(x)
        return final, list(inter)

    def reconstruction(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's image (B, C, h, w) in [0, 1] of a normalised input at the encoder's size."""
        _, feats = self.features(x)
        return self.decoder(feats, x)

    def forward(self, x: torch.Tensor, normalise=None):
        if not self.training:
            return self.encoder(x)
        final, feats = self.features(x)
        logits1 = self.encoder.forward_head(final)
        r = self.decoder(feats, x)
        logits2 = self.encoder(normalise(r) if normalise is not None else r)
        return logits1, logits2


def build(name: str, timm_encoder: nn.Module, in_chans: int) -> CXRNet:
    if not is_cxrnet(name):
        raise ValueError(f"{name!r} is not a CXR-Net backbone name ({PREFIX}<timm encoder>)")
    return CXRNet(timm_encoder, in_chans)


def explanation(classifier: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CXR-Net's own map: (B, H, W) float32, the reconstruction's channel mean at the cache size of ``x``
    (a :class:`cxrbench.classify.models.Classifier` wrapping a :class:`CXRNet`, in eval mode)."""
    net = getattr(classifier, "backbone", None)
    if not isinstance(net, CXRNet):
        raise NotImplementedError("the decoder's map exists only for CXR-Net models (backbone cxrnet_<encoder>); "
                                  f"this classifier's backbone is {type(net).__name__}")
    r = net.reconstruction(classifier.normalise(classifier.resize(x)))
    if r.shape[-2:] != x.shape[-2:]:
        r = F.interpolate(r, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return r.mean(1).float()
