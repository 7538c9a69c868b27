"""Batch norm folded into the convolutions (cxrbench.classify.fuse) against the loaded model, on the CPU.

    python3 benchmarks/bench_fold_batchnorm.py [--backbones resnet18 efficientnet_lite0] [--size 64 192]
                                               [--batch 22 44] [--threads 1] [--seconds 2]

For each backbone (the project's classifier, 1 channel, 18 labels, the packaged ImageNet weights where it
has them, with batch-norm statistics drawn at random so the fold is not a near-identity) in channels-last
order, as :func:`cxrbench.classify.models.load_classifier` loads it: inference images per second before and
after folding, at the aoppc stage's batches (``aoppc.images_per_batch`` x 11 perturbed copies: 2 x 11 = 22,
4 x 11 = 44). Prints the largest |logit| error of each float32 model against the unfolded model in float64,
so a fold that changed the function (not only the float rounding) would show.
"""

from __future__ import annotations

import argparse
import copy

import torch

from cxrbench.classify import fuse
from cxrbench.classify import models as M
from cxrbench.core import runtime

from bench_channels_last import _rate          # images/s over a few seconds (run from the repository root)


def _model(name: str, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    weights = "packaged" if name == "efficientnet_lite0" else "none"
    m = M.create_model(name, 18, 1, weights, size).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbones", nargs="+", default=["resnet18", "efficientnet_lite0"])
    ap.add_argument("--size", nargs="+", type=int, default=[64, 192])
    ap.add_argument("--batch", nargs="+", type=int, default=[22, 44])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{runtime.cpu_model()}, torch {torch.__version__}, {args.threads} thread(s)")
    for name in args.backbones:
        for size in args.size:
            base = _model(name, size)
            plain = copy.deepcopy(base).to(memory_format=torch.channels_last)
            folded, n, note = fuse.fold_batchnorm(copy.deepcopy(base).to(memory_format=torch.channels_last))
            x = torch.rand(max(args.batch), 1, size, size)
            with torch.inference_mode():
                ref = copy.deepcopy(base).double()(x.double())
                err = [(m(x).double() - ref).abs().max().item() for m in (plain, folded)]
                for bs in args.batch:
                    a = _rate(lambda: plain(x[:bs]), bs, args.seconds)
                    b = _rate(lambda: folded(x[:bs]), bs, args.seconds)
                    print(f"{name} {size} px, batch {bs}: {a:.1f} -> {b:.1f} images/s ({b / a:.2f}x)")
            print(f"{name} {size} px: {note}; largest |logit error| vs float64: {err[0]:.2e} unfolded, "
                  f"{err[1]:.2e} folded (|logit| up to {ref.abs().max().item():.2f})")


if __name__ == "__main__":
    main()
