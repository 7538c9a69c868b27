"""The figures that size profiles/gpu.yaml, measured on whatever device runs this (labelled with its name).

    python benchmarks/bench_gpu.py                                  # on the GPU: the five paper backbones at 512 px
    python benchmarks/bench_gpu.py --size 64 --backbones resnet18 --steps 2 --attr-images 1 \\
        --methods saliency gradcam                                  # CPU: a quick check that it runs

Per backbone, with the training code's own CUDA path (cxrbench.classify.gpu: bf16 autocast, channels_last, the uint8
rows on the GPU when they fit):
* train and inference images/s (random init, 18 labels, the --batch size, after a warm-up);
* the loader vs synthetic-tensor ratio: train images/s when batches come from the loader the training uses
  (gpu.batches) over images/s on one float tensor already on the device (target >= 0.9);
* per attribution method: seconds per image and peak device memory (CUDA only) at the chosen
  explain.max_batch (estimated from memory, as the attribute stage does).
Prints a table; ``--json FILE`` also writes every figure. Images are synthetic uint8 noise of --size.
The measuring code is cxrbench.ops.bundle.measure, which a budgeted bundle run (docs/gpu.md) also uses.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from cxrbench.classify import models as M
from cxrbench.core import params as P
from cxrbench.ops.bundle import measure as W


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=list(M.PAPER_BACKBONES))
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--attr-images", type=int, default=4, help="images per attribution method (0: skip)")
    ap.add_argument("--methods", nargs="+", default=None, help="default: explain.methods of params.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params override, e.g. "
                    "explain.occlusion_stride=0.0625 (as the gpu profile)")
    ap.add_argument("--seconds", type=float, default=math.inf, help="stop measuring methods after this long")
    ap.add_argument("--no-amp", action="store_true", help="float32 on CUDA too")
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    params = P.load(overrides=P.parse_overrides(args.set))
    methods = [] if args.attr_images <= 0 else (args.methods or list(P.section(params, "explain.methods")))
    result = W.measure(params, args.seconds, args.backbones, methods, args.size, args.batch, args.steps,
                       max(args.attr_images, 1), args.device, not args.no_amp)
    if args.json:
        from cxrbench.core.io import write_json

        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
