"""ROAD's noisy linear imputation: the direct sparse solve against conjugate gradients, per batch of the
aoppc stage's shape (images x steps removed-patch masks, 3 channels), at the sizes of the profiles.

    PYTHONPATH=$PWD python3 benchmarks/bench_road.py [--sizes 64 128] [--threads 1] [--repeats 3]

For each size prints the CPU seconds of one batch for each solver (``time.process_time``: with one
thread, the time on an idle core whatever else the machine runs), the speed-up, the largest difference
between the two solutions and the direct solve's relative residual. The masks are the region scheme's
(patch 1/8 of the side and 10 steps below 512 px; 1/16 and 50 steps at 512, as the full study).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from cxrbench.core import runtime
from cxrbench.explain.metrics import perturbation as EM


def one(size: int, repeats: int, images: int = 4, channels: int = 3) -> dict:
    patch, steps = (size // 8, 10) if size < 512 else (size // 16, 50)
    torch.manual_seed(0)
    x = torch.rand(images, channels, size, size)
    rm = EM.removal_masks(EM.normalise(torch.rand(images, size, size)), "region", "morf", 0, patch, steps)
    rep = x.unsqueeze(1).expand(images, steps, channels, size, size).reshape(images * steps, channels, size, size)
    removed = rm.reshape(images * steps, size, size)
    out = {"size": size, "patch": patch, "steps": steps, "image_steps_per_batch": images * steps}
    sol = {}
    for solver in EM.ROAD_SOLVERS:
        t = time.process_time()
        for _ in range(repeats):
            sol[solver], res = EM.noisy_linear_imputation(rep, removed, 0.0, solver=solver)
        out[f"{solver}_s"] = round((time.process_time() - t) / repeats, 4)
        out[f"{solver}_max_residual"] = float(res.max())
    out["speedup"] = round(out["cg_s"] / out["direct_s"], 1)
    out["max_abs_difference"] = float((sol["cg"] - sol["direct"]).abs().max())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [one(s, args.repeats if s < 512 else 1) for s in args.sizes]
    print(json.dumps({"machine": {"cpu": runtime.cpu_model(), "threads": args.threads, "torch": torch.__version__},
                      "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
