"""Convolutions in channels-last (NHWC) order against the default (NCHW) on the CPU: what a loaded model gains.

    python3 benchmarks/bench_channels_last.py [--backbones resnet18 efficientnet_lite0] [--size 64]
                                              [--threads 2] [--seconds 2]

For each backbone (random weights, 4 classes, as the ``ci`` profile's models): inference images per second
at batch 20 and 200 (the aoppc stage's batches), integrated gradients (50 steps, 4 images: a backward
method) in seconds, and a training step's images per second at batch 32. Prints the largest difference of
the outputs between the two orders, so a faster path that changed the results would show. The models the
pipeline loads (:func:`cxrbench.classify.models.load_classifier`) use channels-last on the CPU; training
keeps the default order (a faster training step would change the trained weights beyond float rounding).
"""

from __future__ import annotations

import argparse
import time

import timm
import torch

from cxrbench.core import runtime


def _rate(fn, n: int, seconds: float) -> float:
    fn()
    t, done = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        fn()
        done += n
    return done / (time.perf_counter() - t)


def _models(name: str, size: int):
    torch.manual_seed(0)
    m = timm.create_model(name, num_classes=4).eval()
    nhwc = timm.create_model(name, num_classes=4).eval()
    nhwc.load_state_dict(m.state_dict())
    return m, nhwc.to(memory_format=torch.channels_last)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbones", nargs="+", default=["resnet18", "efficientnet_lite0"])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from captum.attr import IntegratedGradients

    print(f"{runtime.cpu_model()}, torch {torch.__version__}, {args.threads} threads, "
          f"{args.size} px")
    for name in args.backbones:
        nchw, nhwc = _models(name, args.size)
        x = torch.rand(200, 3, args.size, args.size)
        with torch.inference_mode():
            diff = (nchw(x) - nhwc(x)).abs().max().item()
            for bs in (20, 200):
                a = _rate(lambda: nchw(x[:bs]), bs, args.seconds)
                b = _rate(lambda: nhwc(x[:bs]), bs, args.seconds)
                print(f"{name} inference, batch {bs}: {a:.0f} -> {b:.0f} images/s ({b / a:.2f}x)")
        ig = []
        for m in (nchw, nhwc):
            IntegratedGradients(m).attribute(x[:4], target=0, n_steps=5)
            t = time.perf_counter()
            IntegratedGradients(m).attribute(x[:4], target=0, n_steps=50, internal_batch_size=200)
            ig.append(time.perf_counter() - t)
        print(f"{name} integrated gradients, 4 images x 50 steps: {ig[0]:.2f} -> {ig[1]:.2f} s "
              f"({ig[0] / ig[1]:.2f}x)")
        rates = []
        for k, m in enumerate(_models(name, args.size)):
            m.train()
            opt = torch.optim.Adam(m.parameters())
            xb = x[:32].contiguous(memory_format=torch.channels_last) if k else x[:32]
            yb = torch.randint(0, 4, (32,))

            def step():
                opt.zero_grad()
                torch.nn.functional.cross_entropy(m(xb), yb).backward()
                opt.step()
            rates.append(_rate(step, 32, args.seconds))
        print(f"{name} training step, batch 32: {rates[0]:.0f} -> {rates[1]:.0f} images/s "
              f"({rates[1] / rates[0]:.2f}x; not used: it would change the trained weights)")
        print(f"{name} largest |logit difference| between the orders: {diff:.2e}")


if __name__ == "__main__":
    main()
