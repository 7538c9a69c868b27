"""Classifier throughput on this machine: train and inference images/s per backbone,
and the data loader's share of the train step time.

    python benchmarks/bench_classification.py [--backbones resnet18 densenet121] [--size 128]
        [--batch 16] [--steps 6] [--device cpu]

Reads the uint8 cache (data/cache) when present, else synthetic images of --size.
The loader share is the time spent waiting for the next batch (BatchLoader + uint8->float)
over the whole step time, measured in the train loop itself.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrbench.classify import models as M
from cxrbench.data.cache import BatchLoader, to_float


def images_of(size: int, n: int) -> tuple[np.ndarray, int]:
    meta = Path("data/cache/meta.json")
    if meta.is_file():
        cache_meta = json.loads(meta.read_text())
        if cache_meta["size"] == size:
            imgs = np.load("data/cache/images.npy", mmap_mode="r")
            return np.asarray(imgs[:n]), imgs.shape[1]
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 1, size, size), dtype=np.uint8), 1


def bench(name: str, images: np.ndarray, in_chans: int, size: int, batch: int, steps: int, device) -> dict:
    torch.manual_seed(0)
    model = M.create_model(name, 18, in_chans, "none", input_size=size).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    crit = nn.BCEWithLogitsLoss()
    targets = (np.random.default_rng(0).random((len(images), 18)) < 0.3).astype(np.float32)
    rows = np.arange(len(images))
    loader = BatchLoader(images, targets, rows, batch, shuffle=True, seed=0, drop_last=True)
    model.train()
    wait = step = 0.0
    n = 0
    done = -1                                   # the first step is a warm-up, not counted
    while done < steps:
        it = iter(loader)
        while done < steps:
            t0 = time.perf_counter()
            try:
                x, y, _ = next(it)
            except StopIteration:
                break
            x, y = to_float(x, device), y.to(device)
            t1 = time.perf_counter()
            loss = crit(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            if done >= 0:
                wait += t1 - t0
                step += t2 - t0
                n += len(x)
            done += 1
    model.eval()
    t0, m = time.perf_counter(), 0
    with torch.no_grad():
        for i, (x, _, _) in enumerate(BatchLoader(images, targets, rows, batch * 2)):
            model(to_float(x, device))
            m += len(x)
            if i + 1 >= steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_inf = time.perf_counter() - t0
    return {"backbone": name, "size": size, "batch": batch, "train_images_per_s": n / step,
            "loader_share_of_step": wait / step, "infer_images_per_s": m / t_inf,
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["resnet18", "resnet34", "densenet121"])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    images, in_chans = images_of(args.size, max(4 * args.batch, args.batch * (args.steps + 1)))
    print(f"device {device}, torch threads {torch.get_num_threads()}, {len(images)} images {images.shape[1:]}")
    for name in args.backbones:
        r = bench(name, images, in_chans, args.size, args.batch, args.steps, device)
        print(f"{name:22s} {r['params_M']:6.1f} M params  train {r['train_images_per_s']:7.1f} img/s  "
              f"(loader {100 * r['loader_share_of_step']:.1f} % of step)  inference {r['infer_images_per_s']:7.1f} img/s",
              flush=True)


if __name__ == "__main__":
    main()
