"""What one device does per second, measured where it runs: the figures that size a budgeted run.

Per backbone, with the training code's own device path (cxrbench.classify.gpu: bf16 autocast and channels_last
on CUDA, the uint8 rows on the GPU when they fit; the CPU path as it is):

* train and inference images/s (random init, :data:`LABELS` labels, after a warm-up step), and the seconds
  the first step took (model build, cuDNN's autotuning: what every stage that builds the model pays once);
* the loader vs synthetic-tensor ratio: train images/s when batches come from the loader the training uses
  (``gpu.batches``) over images/s on one float tensor already on the device (target >= 0.9);
* per attribution method: seconds per image and peak device memory (CUDA only), with ``explain.max_batch``
  estimated from memory as the attribute stage does;
* :func:`stage_start`: the seconds a stage's Python needs before its own work (torch, the package, the device).

:func:`measure` runs these inside a time limit: every backbone's throughput first, then every method on the
first backbone, then the other backbones' methods while time is left; what it skips is listed, never guessed.
``benchmarks/bench_gpu.py`` prints the same figures as a table.
"""

from __future__ import annotations

import subprocess
import sys
import time
import warnings

import numpy as np
import torch
from torch import nn

from cxrbench.classify import gpu
from cxrbench.classify import models as M
from cxrbench.core import runtime
from cxrbench.data.cache import to_float
from cxrbench.explain import attribution as A

LABELS = 18
# what a training and an attribution stage import before their own work, then one tensor on the device (run in
# the checkout, where `stages` imports)
STAGE_START = ("import torch, stages.train, stages.attribute; "
               "d = 'cuda' if torch.cuda.is_available() else 'cpu'; torch.zeros(1, device=d).sum().item()")


def sync(device) -> None:
    if gpu.on_cuda(device):
        torch.cuda.synchronize(device)


def device_name(device) -> str:
    return torch.cuda.get_device_name(device) if gpu.on_cuda(device) else f"CPU {runtime.cpu_model()}"


def train_rate(model, batches, device, steps: int, amp: bool = True) -> tuple[float, float]:
    """(images/s of ``steps`` optimizer steps over ``batches``, seconds of the warm-up step before them);
    ``batches`` is an iterable of (uint8 or float x, y)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = gpu.grad_scaler(device, amp)
    crit = nn.BCEWithLogitsLoss()
    model.train()
    n, t0, first = 0, None, time.perf_counter()
    for i, (x, y) in enumerate(batches):
        if i == 1:
            sync(device)
            t0 = time.perf_counter()
            first = t0 - first
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
    return n / (time.perf_counter() - t0), first


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
    t_build = time.perf_counter()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n = batch * (steps + 1)
    images = rng.integers(0, 256, (n, 1, size, size), dtype=np.uint8)
    targets = (rng.random((n, LABELS)) < 0.2).astype(np.float32)
    model = gpu.prepare_model(M.create_model(name, LABELS, 1, "none", input_size=size).to(device), device)
    build = time.perf_counter() - t_build
    loader = gpu.batches(images, targets, np.arange(n), batch, device, shuffle=True, seed=0, drop_last=True)
    with_loader, first = train_rate(model, ((x, y) for x, y, _ in loader), device, steps, amp)
    x = to_float(torch.from_numpy(images[:batch]), device)
    y = torch.from_numpy(targets[:batch]).to(device)
    synthetic, _ = train_rate(model, ((x, y) for _ in range(steps + 1)), device, steps, amp)
    return {"backbone": name, "size": size, "batch": batch, "loader": type(loader).__name__,
            "train_images_per_s": with_loader, "synthetic_train_images_per_s": synthetic,
            "loader_vs_synthetic": with_loader / synthetic, "infer_images_per_s": infer_rate(model, x, device, steps, amp),
            "first_step_s": build + first, "params_M": sum(p.numel() for p in model.parameters()) / 1e6}


def bench_attribution(name: str, size: int, images: int, methods: list[str], device, params: dict,
                      until: float | None = None) -> list[dict]:
    """Seconds per image and peak memory of each method on ``images`` random images of ``size``; methods
    not started before ``until`` (a time.time()) are left out."""
    settings = A.validate(params)
    torch.manual_seed(0)
    model = M.create_model(name, LABELS, 1, "none", input_size=size).to(device).eval()
    x = torch.rand(images, 1, size, size, device=device)
    target = torch.zeros(images, dtype=torch.long, device=device)
    prepared, _ = A.prepare_for_attribution(model, x)
    max_batch = settings.max_batch or A.estimate_max_batch(model, x, settings.memory_fraction)
    out = []
    for method in methods:
        if until is not None and time.time() > until:
            break
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
        except A.EXPECTED_ERRORS as err:            # the method does not support this backbone (as in the stage)
            row["error"] = f"{type(err).__name__}: {err}"[:200]
            row["unsupported"] = True
        except Exception as err:                     # noqa: BLE001 - a failure is a figure here: shown, never planned
            row["error"] = f"FAILED {type(err).__name__}: {err}"[:300]
        if gpu.on_cuda(device):
            row["peak_memory_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
        out.append(row)
    return out


def stage_start(repeats: int = 2) -> float:
    """Seconds a fresh Python takes to import what a torch stage imports and touch the device (the fastest of
    ``repeats``: the first one also fills the file cache)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", STAGE_START], check=True)
        best = min(best, time.perf_counter() - t0)
    return best


def measure(params: dict, seconds: float, backbones: list[str], methods: list[str], size: int, batch: int = 32,
            steps: int = 10, attr_images: int = 4, device=None, amp: bool = True, echo=print) -> dict:
    """Every figure above, within about ``seconds`` (the backbones' throughput is always measured: a plan
    needs it; the attribution methods stop when the time is up and are listed under ``skipped``)."""
    t0 = time.time()
    until = t0 + seconds
    rt = runtime.configure()
    device = runtime.device(device)
    out = {"device": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
           "runtime": rt, "size": size, "batch": batch, "steps": steps, "amp": str(gpu.amp_dtype(device))
           if amp and gpu.on_cuda(device) else "off", "stage_start_s": stage_start(),
           "throughput": [], "attribution": [], "skipped": []}
    echo(f"measure: {out['device']}, torch {out['torch']}, {size} px, batch {batch}, amp {out['amp']}, "
         f"a stage starts in {out['stage_start_s']:.1f} s")
    for name in backbones:
        r = bench_backbone(name, size, batch, steps, device, amp)
        out["throughput"].append(r)
        echo(f"measure: {name:20s} train {r['train_images_per_s']:8.1f} img/s (loader/synthetic "
             f"{r['loader_vs_synthetic']:.2f}), inference {r['infer_images_per_s']:8.1f} img/s, first step "
             f"{r['first_step_s']:.1f} s")
    for name in backbones:
        if time.time() > until:
            out["skipped"].append(f"attribution on {name}: the measuring time ({seconds:.0f} s) was up")
            continue
        rows = bench_attribution(name, size, attr_images, methods, device, params, until)
        out["attribution"] += rows
        done = {r["method"] for r in rows}
        out["skipped"] += [f"{m} on {name}: the measuring time was up" for m in methods if m not in done]
        for r in rows:
            spi = f"{r['seconds_per_image']:.3f} s/image" if "seconds_per_image" in r else r["error"]
            mem = f", peak {r['peak_memory_GiB']:.2f} GiB" if "peak_memory_GiB" in r else ""
            echo(f"measure: {name:20s} {r['method']:22s} {spi}{mem}")
    out["seconds"] = round(time.time() - t0, 1)
    return out
