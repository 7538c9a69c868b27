"""Adam's step on a classifier's parameters: the for-loop, foreach and fused implementations of torch.

    python3 benchmarks/bench_optimizer.py [--backbone resnet18] [--steps 20] [--threads 1]

Prints CPU milliseconds per step (``time.process_time``: with one thread, the time on an idle core) and the
largest difference of the parameters from the for-loop's after ``--steps`` steps on the same random
gradients, so a faster kernel that changed the update would show.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import timm
import torch

from cxrbench.core import runtime

KINDS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = timm.create_model(args.backbone, num_classes=3)
    out, ref = {}, None
    for kind, kw in KINDS.items():
        model = copy.deepcopy(base)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4, **kw)
        gen, spent = torch.Generator().manual_seed(1), 0.0
        for _ in range(args.steps):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=gen) * 1e-2
            t = time.process_time()
            opt.step()
            spent += time.process_time() - t
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        ref = flat if ref is None else ref
        out[kind] = {"ms_per_step": round(1000 * spent / args.steps, 1),
                     "max_abs_difference_from_for_loop": float((flat - ref).abs().max())}
    print(json.dumps({"cpu": runtime.cpu_model(), "threads": args.threads, "torch": torch.__version__,
                      "backbone": args.backbone, "steps": args.steps, "optimizers": out}, indent=2))


if __name__ == "__main__":
    main()
