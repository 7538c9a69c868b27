"""Data-path figures: preprocess throughput and the cached loader against an in-memory tensor.

    python benchmarks/bench_data.py [--n 200] [--size 512] [--batch 16] [--steps 10]

Needs data/index.csv and data/raw (run the download and index stages first).
1. preprocess: images/s of cxrbench.data.preprocess over --n indexed images, with
   CXRBENCH_WORKERS (default: every core) worker processes;
2. loader: batches/s of BatchLoader alone, and of a resnet18 train step fed by
   (a) BatchLoader from the uint8 cache, (b) one synthetic float tensor already
   in memory. The ratio (a)/(b) is the share of the model's speed the loader
   keeps (target >= 0.9).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch

from cxrbench.core.runtime import workers
from cxrbench.data.cache import BatchLoader, Cache, to_float
from cxrbench.data.preprocess import Recipe, build_cache


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.manual_seed(0)
    index = pd.read_csv("data/index.csv", dtype={"mask": str}, keep_default_na=False)
    sub = index.sample(n=min(args.n, len(index)), random_state=0).reset_index(drop=True)
    recipe = Recipe(size=args.size, percentiles=(1.0, 95.0), channels=("raw",))
    with tempfile.TemporaryDirectory(dir="data") as tmp:
        sub.to_csv(Path(tmp) / "index.csv", index=False)
        t0 = time.perf_counter()
        build_cache(sub, Path("data/raw"), Path(tmp) / "cache", recipe, workers(), "bench")
        dt = time.perf_counter() - t0
        print(f"preprocess: {len(sub)} images at {args.size}px, {workers()} workers: "
              f"{len(sub) / dt:.1f} images/s ({dt:.1f} s)")
        cache = Cache(Path(tmp) / "cache", Path(tmp) / "index.csv")
        images = np.asarray(cache.images)
        targets = np.zeros((len(sub), 18), dtype=np.float32)
        rows = np.arange(len(sub))

        loader = BatchLoader(images, targets, rows, args.batch, shuffle=True, seed=0, drop_last=True)
        t0, n = time.perf_counter(), 0
        for _ in range(3):
            for x, y, _ in loader:
                to_float(x, "cpu")
                n += 1
        dt = time.perf_counter() - t0
        print(f"loader alone: {n / dt:.1f} batches/s ({n / dt * args.batch:.0f} images/s) at batch {args.batch}")

        model = timm.create_model("resnet18", num_classes=18, in_chans=1, pretrained=False)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        loss_fn = torch.nn.BCEWithLogitsLoss()

        def step(x, y):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()

        synthetic = torch.rand(args.batch, 1, args.size, args.size)
        ysyn = torch.zeros(args.batch, 18)
        step(synthetic, ysyn)  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(synthetic, ysyn)
        syn = args.steps / (time.perf_counter() - t0)

        it = iter(BatchLoader(images, targets, rows, args.batch, shuffle=True, seed=1, drop_last=True))
        t0, done = time.perf_counter(), 0
        while done < args.steps:
            try:
                x, y, _ = next(it)
            except StopIteration:
                it = iter(BatchLoader(images, targets, rows, args.batch, shuffle=True, seed=done, drop_last=True))
                continue
            step(to_float(x, "cpu"), y)
            done += 1
        real = args.steps / (time.perf_counter() - t0)
        print(f"resnet18 train step at batch {args.batch}, {args.size}px: synthetic tensor {syn:.2f} batches/s, "
              f"cached loader {real:.2f} batches/s, ratio {real / syn:.2f}")


if __name__ == "__main__":
    main()
