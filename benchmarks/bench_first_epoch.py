"""What a training stage's first epochs cost on this device, with and without cuDNN's autotuning.

    python benchmarks/bench_first_epoch.py                       # on a GPU: densenet161 and resnet18 at 512 px
    python benchmarks/bench_first_epoch.py --size 32 --backbones resnet18 --train 16 --val 8 --batch 4  # CPU check

Each (backbone, CXRBENCH_CUDNN_BENCHMARK) pair runs in a fresh Python, as a DVC stage does: the real training
function (cxrbench.classify.training.train) on --train and --val random uint8 images (the gpu profile's fold:
730 and 183), --epochs epochs, batch --batch, from scratch. Printed and written (--json): the process's start,
the seconds of each epoch (train, validation, checkpoint) and the whole call. The benchmark's throughput figures
(bench_gpu.py) time one batch shape after a warm-up; a stage pays the warm-up, each new batch shape and, with
autotuning on, cuDNN's search for every convolution, in every process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T0 = time.perf_counter()


def one(backbone: str, size: int, n_train: int, n_val: int, batch: int, epochs: int) -> dict:
    import numpy as np
    import torch

    from cxrbench.classify import training
    from cxrbench.core import runtime

    started = time.perf_counter() - T0
    rng = np.random.default_rng(0)
    n = n_train + n_val
    images = rng.integers(0, 256, (n, 1, size, size), dtype=np.uint8)
    targets = (rng.random((n, 18)) < 0.2).astype(np.float32)
    cfg = training.TrainConfig(backbone=backbone, fold=0, labels=[f"l{i}" for i in range(18)], in_chans=1,
                               cache_size=size, input_size=size, epochs=epochs, batch_size=batch, seed=0)
    epoch_s = []
    real = training.check_deadline

    def record(seconds, what):                       # called after every epoch but the last, with its seconds
        epoch_s.append(round(seconds, 2))
        return real(seconds, what)

    training.check_deadline = record
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = training.train(cfg, images, targets, np.arange(n_train), np.arange(n_train, n), Path(tmp),
                             device=runtime.device(), progress=False)
    total = time.perf_counter() - t0
    return {"backbone": backbone, "cudnn_benchmark": os.environ.get("CXRBENCH_CUDNN_BENCHMARK", "0") == "1",
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU", "size": size,
            "train": n_train, "val": n_val, "batch": batch, "epochs": out["epochs_done"],
            "process_start_s": round(started, 2), "epoch_s": epoch_s,
            "last_epoch_s": round(total - sum(epoch_s), 2), "train_call_s": round(total, 2)}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["densenet161", "resnet18"])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--train", type=int, default=730)
    ap.add_argument("--val", type=int, default=183)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.size, args.train, args.val, args.batch, args.epochs)))
        return []
    rows = []
    for backbone in args.backbones:
        for bench in ("1", "0"):
            env = dict(os.environ, CXRBENCH_CUDNN_BENCHMARK=bench)
            cmd = [sys.executable, __file__, "--one", backbone, "--size", str(args.size), "--train", str(args.train),
                   "--val", str(args.val), "--batch", str(args.batch), "--epochs", str(args.epochs)]
            t0 = time.perf_counter()
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                rows.append({"backbone": backbone, "cudnn_benchmark": bench == "1", "error": out.stderr[-1500:]})
                print(f"{backbone} cudnn.benchmark={bench}: FAILED\n{out.stderr[-1500:]}", flush=True)
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["process_s"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
            print(f"{backbone:20s} cudnn.benchmark={bench}: start {row['process_start_s']:.1f} s, epochs "
                  f"{row['epoch_s'] + [row['last_epoch_s']]} s, whole process {row['process_s']:.1f} s", flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
