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
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrbench.classify import gpu
from cxrbench.classify import models as M
from cxrbench.core import params as P
from cxrbench.core import runtime
from cxrbench.data.cache import to_float
from cxrbench.explain import attribution as A

LABELS = 18


def sync(device) -> None:
    if gpu.on_cuda(device):
        torch.cuda.synchronize(device)


def device_name(device) -> str:
    return torch.cuda.get_device_name(device) if gpu.on_cuda(device) else f"CPU {runtime.cpu_model()}"


def train_rate(model, batches, device, steps: int, amp: bool = True) -> float:
    """Images/s of ``steps`` optimizer steps over ``batches`` (an iterable of (uint8 or float x, y)),
    after one warm-up step."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = gpu.grad_scaler(device, amp)
    crit = nn.BCEWithLogitsLoss()
    model.train()
    n, t0 = 0, None
    for i, (x, y) in enumerate(batches):
        if i == 1:
            sync(device)
            t0 = time.perf_counter()
        x = to_float(x, device) if x.dtype == torch.uint8 else x
        with gpu.autocast(device, amp):
            out = model(x)
        out = out[0] if isinstance(out, (tuple, list)) else out
        loss = crit(out.float(), y.to(device))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if i >= 1:
            n += len(x)
        if i >= steps:
            break
    sync(device)
    return n / (time.perf_counter() - t0)


@torch.no_grad()
def infer_rate(model, x: torch.Tensor, device, steps: int, amp: bool = True) -> float:
    model.eval()
    for i in range(steps + 1):
        if i == 1:
            sync(device)
            t0 = time.perf_counter()
        with gpu.autocast(device, amp):
            model(x)
    sync(device)
    return steps * len(x) / (time.perf_counter() - t0)


def bench_backbone(name: str, size: int, batch: int, steps: int, device, amp: bool) -> dict:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n = batch * (steps + 1)
    images = rng.integers(0, 256, (n, 1, size, size), dtype=np.uint8)
    targets = (rng.random((n, LABELS)) < 0.2).astype(np.float32)
    model = gpu.prepare_model(M.create_model(name, LABELS, 1, "none", input_size=size).to(device), device)
    loader = gpu.batches(images, targets, np.arange(n), batch, device, shuffle=True, seed=0, drop_last=True)
    with_loader = train_rate(model, ((x, y) for x, y, _ in loader), device, steps, amp)
    x = to_float(torch.from_numpy(images[:batch]), device)
    y = torch.from_numpy(targets[:batch]).to(device)
    synthetic = train_rate(model, ((x, y) for _ in range(steps + 1)), device, steps, amp)
    return {"backbone": name, "size": size, "batch": batch, "loader": type(loader).__name__,
            "train_images_per_s": with_loader, "synthetic_train_images_per_s": synthetic,
            "loader_vs_synthetic": with_loader / synthetic, "infer_images_per_s": infer_rate(model, x, device, steps, amp),
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6}


def bench_attribution(name: str, size: int, images: int, methods: list[str], device, params: dict) -> list[dict]:
    settings = A.validate(params)
    torch.manual_seed(0)
    model = M.create_model(name, LABELS, 1, "none", input_size=size).to(device).eval()
    x = torch.rand(images, 1, size, size, device=device)
    target = torch.zeros(images, dtype=torch.long, device=device)
    prepared, _ = A.prepare_for_attribution(model, x)
    max_batch = settings.max_batch or A.estimate_max_batch(model, x, settings.memory_fraction)
    out = []
    for method in methods:
        if gpu.on_cuda(device):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t0 = time.perf_counter()
        row = {"backbone": name, "method": method, "size": size, "images": images, "max_batch": max_batch}
        try:
            with warnings.catch_warnings():                    # Captum's notes, as the attribute stage drops them
                for note in A.HARMLESS_CAPTUM_NOTES:
                    warnings.filterwarnings("ignore", message=note)
                A.make(method, model, prepared, settings, max_batch, name).attribute(x, target)
            sync(device)
            row["seconds_per_image"] = (time.perf_counter() - t0) / images
        except A.EXPECTED_ERRORS as err:
            row["error"] = f"{type(err).__name__}: {err}"[:200]
        if gpu.on_cuda(device):
            row["peak_memory_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
        out.append(row)
    return out


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
    ap.add_argument("--no-amp", action="store_true", help="float32 on CUDA too")
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    rt = runtime.configure()
    device = runtime.device(args.device)
    params = P.load(overrides=P.parse_overrides(args.set))
    methods = args.methods or list(P.section(params, "explain.methods"))
    label = device_name(device)
    print(f"bench_gpu on {label} (torch {torch.__version__}, {rt['torch_threads']} threads), {args.size} px, "
          f"batch {args.batch}, amp {'off' if args.no_amp else gpu.amp_dtype(device) if gpu.on_cuda(device) else 'off (CPU)'}",
          flush=True)
    result = {"device": label, "runtime": rt, "size": args.size, "throughput": [], "attribution": []}
    print(f"{'backbone':22s} {'train img/s':>11s} {'synthetic':>10s} {'ratio':>6s} {'infer img/s':>11s}  loader")
    for name in args.backbones:
        r = bench_backbone(name, args.size, args.batch, args.steps, device, not args.no_amp)
        result["throughput"].append(r)
        print(f"{name:22s} {r['train_images_per_s']:11.1f} {r['synthetic_train_images_per_s']:10.1f} "
              f"{r['loader_vs_synthetic']:6.2f} {r['infer_images_per_s']:11.1f}  {r['loader']}", flush=True)
    if args.attr_images > 0:
        print(f"{'backbone':22s} {'method':22s} {'s/image':>8s} {'peak GiB':>9s} {'max_batch':>9s}")
        for name in args.backbones:
            for r in bench_attribution(name, args.size, args.attr_images, methods, device, params):
                result["attribution"].append(r)
                peak = f"{r['peak_memory_GiB']:9.2f}" if "peak_memory_GiB" in r else f"{'-':>9s}"
                spi = f"{r['seconds_per_image']:8.3f}" if "seconds_per_image" in r else f"{'FAILED':>8s}"
                print(f"{name:22s} {r['method']:22s} {spi} {peak} {r['max_batch']:9d}"
                      + (f"  {r['error']}" if "error" in r else ""), flush=True)
    if args.json:
        from cxrbench.core.io import write_json

        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
