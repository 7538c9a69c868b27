"""Throughput of the lung U-Net for the configured params: training images/s and segment images/s.

    python benchmarks/bench_segmentation.py                       # params.yaml's unet block
    python benchmarks/bench_segmentation.py --set unet.size=128 --set "unet.channels=[8,16,32,64,128]"

Uses random images of the configured size (no cache needed). Training:
forward + backward + Adam step on augmented batches; segment: inference at the
U-Net size, logits resized to ``--cache-size`` and post-processed, as in the
segment stage. A script, not a test; the numbers depend on the machine's load.
"""

import argparse
import time

import numpy as np
import torch

from cxrbench.core import params as P
from cxrbench.core.runtime import workers
from cxrbench.data.cache import to_float
from cxrbench.lungs import segmentation as seg
from cxrbench.lungs import unet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a params.yaml key")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps (after 2 warm-up steps)")
    ap.add_argument("--images", type=int, default=64, help="images segmented")
    ap.add_argument("--cache-size", type=int, default=None, help="cache side (default: preprocess.size)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: $CXRBENCH_WORKERS, else every core)")
    args = ap.parse_args()
    params = unet.with_overrides(P.load(), args.set)
    channels = len(P.section(params, "preprocess.channels"))
    cfg = unet.UNetConfig.from_params(params, in_channels=channels)
    cache_size = args.cache_size or int(P.section(params, "preprocess.size"))
    torch.set_num_threads(args.threads or workers())
    dev = unet.device()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(0)
    model = unet.build_model(cfg).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = unet.make_loss(cfg.loss)
    bs = cfg.batch_size
    x = torch.from_numpy(rng.integers(0, 256, (bs, channels, cfg.size, cfg.size), dtype=np.uint8))
    m = torch.from_numpy((rng.random((bs, 1, cfg.size, cfg.size)) > 0.6).astype(np.float32))
    gen = torch.Generator().manual_seed(0)

    def step():
        xf, mf = unet.augment(to_float(x, dev), m.to(dev), cfg.augment, gen)
        opt.zero_grad(set_to_none=True)
        loss_fn(model(xf), mf).backward()
        opt.step()

    model.train()
    for _ in range(2):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    train_ips = args.steps * bs / (time.perf_counter() - t0)

    images = rng.integers(0, 256, (args.images, channels, cache_size, cache_size), dtype=np.uint8)
    unet.predict_proba(model, images[:bs], cfg.size, cache_size, max(bs, 16), dev)  # warm-up
    t0 = time.perf_counter()
    proba = unet.predict_proba(model, images, cfg.size, cache_size, max(bs, 16), dev)
    t_net = time.perf_counter() - t0
    seg.postprocess_all((proba >= cfg.threshold).astype(np.uint8))
    t_all = time.perf_counter() - t0

    params_n = sum(p.numel() for p in model.parameters())
    print(f"device {dev}, torch threads {torch.get_num_threads()}, U-Net {cfg.size}px channels "
          f"{list(cfg.channels)} res units {cfg.num_res_units} ({params_n / 1e6:.2f} M params), batch {bs}, "
          f"cache {cache_size}px")
    print(f"train_unet: {train_ips:.1f} images/s (forward + backward + Adam, augmented)")
    print(f"segment:    {args.images / t_all:.1f} images/s ({args.images / t_net:.1f} images/s network only)")


if __name__ == "__main__":
    main()
