"""Cost of one bootstrap resample's AUROC: cxrbench.core.bootstrap.auroc_statistic vs scikit-learn.

    python benchmarks/bench_bootstrap.py [--n 300] [--calls 2000]

The shortcut audit computes (folds x arms x scores x resamples) AUROCs, e.g.
5 x 6 x 4 x 1000 = 120,000 on the full study; this prints microseconds per call
of both implementations on the same weights, and checks that they agree.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from cxrbench.core import runtime
from cxrbench.core.bootstrap import auroc_statistic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=300, help="test images")
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    y = rng.random(args.n) < 0.3
    score = np.round(rng.random(args.n) + 0.3 * y, 2)          # rounded: ties, as float16 outputs have
    weights = [np.bincount(rng.integers(0, args.n, args.n), minlength=args.n).astype(float) for _ in range(50)]
    fast = auroc_statistic(y, score)
    for w in weights[:5]:
        assert abs(fast(w) - roc_auc_score(y, score, sample_weight=w)) < 1e-12
    timings = {}
    for name, fn in (("cxrbench auroc_statistic", fast),
                     ("sklearn roc_auc_score", lambda w: roc_auc_score(y, score, sample_weight=w))):
        calls = args.calls if "cxrbench" in name else max(args.calls // 10, 10)
        t0 = time.perf_counter()
        for i in range(calls):
            fn(weights[i % len(weights)])
        timings[name] = (time.perf_counter() - t0) / calls * 1e6
    info = runtime.info()
    print(f"# {info.get('cpu')} ({info.get('cpu_capability')}), {args.n} images, torch threads irrelevant (numpy)")
    for name, us in timings.items():
        print(f"{name:28s} {us:9.1f} us per resample")
    print(f"speed-up {timings['sklearn roc_auc_score'] / timings['cxrbench auroc_statistic']:.0f}x")


if __name__ == "__main__":
    main()
