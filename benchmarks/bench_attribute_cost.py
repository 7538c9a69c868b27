"""Seconds per image per attribution method, at a profile's explain settings, for sizing the explained sample.

The attribute stage's cost grows with the number of explained images (``explain.max_images``); this script
measures what one more image costs per method and backbone at a profile's input size and method settings
(occlusion window and stride, integrated-gradient steps, ...), on a classifier of the profile's architecture
with random (or packaged ImageNet) weights: the cost of an attribution does not depend on what the weights
learnt. It also times the classifier's training step (seconds per training image per epoch) at that size.

    PYTHONPATH=$PWD python3 benchmarks/bench_attribute_cost.py --profile ci [--images 4] [--size 64]
        [--backbones resnet18 efficientnet_lite0] [--train-batches 3] [--threads 1]

Prints a JSON object (per backbone: seconds per image per method, their sum, the training step's seconds
per image, and the machine). Every figure is CPU time of the process (``time.process_time``): with one
thread it is the wall time the work takes on an idle core, whatever else the machine runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import torch


def machine() -> dict:
    from cxrbench.core import runtime
    return {"cpu": runtime.cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "load_1min": round(os.getloadavg()[0], 2), "torch": torch.__version__}


def main(argv: list[str] | None = None) -> dict:
    from cxrbench.classify import models as M
    from cxrbench.core import params as P
    from cxrbench.explain import runner as A
    from cxrbench.ops.profiles import read_profile

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default=None, help="profiles/NAME.yaml over params.yaml")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--size", type=int, default=None, help="input side (default: the profile's train.input_size)")
    ap.add_argument("--backbones", nargs="*", default=None)
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--train-batches", type=int, default=3, help="training steps timed (0: none)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--aoppc", action="store_true", help="also time the aoppc stage's scoring of these maps")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a params override over the profile")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    params = P.load(overrides={**(read_profile(args.profile) if args.profile else {}), **P.parse_overrides(args.set)})
    s = A.validate(params)
    if args.methods:
        s.methods = list(args.methods)
    backbones = args.backbones or P.section(params, "train.backbones")
    pre = P.section(params, "train.pretrained")
    bs = args.batch_size or P.section(params, "train.batch_size")
    import pytorch_grad_cam  # noqa: F401  (the libraries' import is not a method's cost)
    import zennit.attribution  # noqa: F401

    out = {"profile": args.profile, "images": args.images, "machine": machine(), "backbones": {}}
    for bb in backbones:
        size = args.size or (P.section(params, "train.input_size").get(bb)
                             or P.section(params, "train.input_size")["default"])
        weights = pre.get(bb, pre.get("default", "none")) if isinstance(pre, dict) else pre
        torch.manual_seed(0)
        model = M.create_model(bb, 18, 1, weights if weights in ("none", "packaged") else "none", size).eval()
        x = torch.rand(args.images, 1, size, size)
        target = torch.zeros(args.images, dtype=torch.long)
        per, failed, maps = {}, {}, {}
        for m in s.methods:                                   # CPU seconds: with one thread, the wall time on
            t = time.process_time()                           # an idle core, whatever the machine's load
            run = A.attribute_all([m], model, x, target, s, bb, max_batch=s.max_batch or 32, log=lambda msg: None)
            if run.status[m]["ok"]:
                per[m] = round((time.process_time() - t) / args.images, 4)
                maps.update(run.maps)
            else:
                failed[m] = run.status[m]["reason"][:80]
            print(f"  {bb} {size}px {m}: {per.get(m, failed.get(m))}", file=sys.stderr, flush=True)
        row = {"size": size, "s_per_image": per, "s_per_image_all": round(sum(per.values()), 3), "failed": failed}
        if args.aoppc:
            row["aoppc_s_per_image"] = aoppc_seconds(params, bb, model, x, target, maps, args.images)
            row["aoppc_s_per_image_per_map"] = round(row["aoppc_s_per_image"] / (len(maps) + 1), 4)  # + random
        if args.train_batches:
            model.train()
            opt = torch.optim.AdamW(model.parameters(), 1e-4)
            xb, yb = torch.rand(bs, 1, size, size), torch.randint(0, 2, (bs, 18)).float()
            lossf = torch.nn.BCEWithLogitsLoss()
            times = []
            for _ in range(args.train_batches + 1):          # the first step warms up, not timed
                t = time.process_time()
                opt.zero_grad()
                logits = model(xb)                           # CXR-Net: (input's, reconstruction's) logits
                sum(lossf(o, yb) for o in (logits if isinstance(logits, tuple) else (logits,))).backward()
                opt.step()
                times.append(time.process_time() - t)
            row["train_s_per_image"] = round(sorted(times[1:])[len(times[1:]) // 2] / bs, 5)
            row["train_batch_size"] = bs
            model.eval()
            with torch.no_grad():
                t = time.process_time()
                model(xb)
                row["infer_s_per_image"] = round((time.process_time() - t) / bs, 5)
        out["backbones"][bb] = row
        print(json.dumps({bb: row}), flush=True)
    print(json.dumps(out, indent=1))
    return out


class _Npz(dict):
    """A data/attributions npz in memory (``files`` as numpy's NpzFile names them)."""

    @property
    def files(self):
        return list(self)


def aoppc_seconds(params: dict, backbone: str, model, x, target, maps: dict, n: int) -> float:
    """Seconds per image of the aoppc stage's scoring (every perturbation of the profile, the random map, the
    sanity Spearman) of ``maps``: what one more explained image costs that stage."""
    import numpy as np

    from cxrbench.explain import store
    from cxrbench.explain.metrics import scoring as AS
    from cxrbench.explain.metrics import tables as AT

    s = AS.validate(params)
    masks = np.ones((n,) + tuple(x.shape[-2:]), np.uint8)
    z = _Npz(store.arrays(np.arange(n), [f"img{i}" for i in range(n)], target.numpy(), ["t"] * n, masks, maps, {}))
    t = time.process_time()
    AS.score_model(AT.new_scores(), backbone, 0, list(maps), s, x, z, model, np.arange(n))
    return round((time.process_time() - t) / n, 3)


if __name__ == "__main__":
    main()
