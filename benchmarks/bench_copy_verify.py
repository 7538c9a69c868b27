"""CPU time per candidate pair of the altered-copy search, every count exact or only those that can decide.

The copy search (cxrbench/data/copies.py) verifies each candidate pair with ORB matches and RANSAC (500
trials). A pair with fewer matches than ``dedupe.copy_min_inliers`` cannot be a copy, so the search skips
its RANSAC (``need``). This draws ``--images`` images of a run's data/index.csv, builds their candidate
pairs as the index stage does, and times both ways in this process (``time.process_time``: CPU time, so the
figure holds on a busy machine), checking that both decide every pair alike.

    python3 benchmarks/bench_copy_verify.py RUN_DIR [--images 200] [--candidates 5] [--need 40]

RUN_DIR: a run's repository root after its index stage (data/index.csv, data/raw/).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.core import paths
from cxrbench.data import copies as C


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--candidates", type=int, default=5, help="dedupe.copy_candidates")
    ap.add_argument("--need", type=int, default=40, help="dedupe.copy_min_inliers")
    args = ap.parse_args()
    index = pd.read_csv(args.run_dir / paths.INDEX, keep_default_na=False)
    rows = np.sort(np.random.default_rng(0).choice(len(index), min(args.images, len(index)), replace=False))
    sel = index.iloc[rows]
    feats = [C._features(str(args.run_dir / paths.RAW / p)) for p in sel["path"]]
    pairs = [(i, j) for i, j, _ in C.all_candidates(np.stack([f[0] for f in feats]), sel["group"].to_numpy(),
                                                    args.candidates)]
    out = {}
    for need in (0, args.need):
        C._init(feats, need)
        t = time.process_time()
        out[need] = (C._verify(pairs), time.process_time() - t)
    same = [max(v) >= args.need for v in out[0][0]] == [max(v) >= args.need for v in out[args.need][0]]
    print(f"{len(pairs)} candidate pairs of {len(sel)} images ({platform.processor() or platform.machine()}): "
          f"{1000 * out[0][1] / len(pairs):.1f} ms CPU a pair with every count exact, "
          f"{1000 * out[args.need][1] / len(pairs):.1f} ms with RANSAC only where {args.need} inliers are "
          f"possible; the same decisions: {same}")


if __name__ == "__main__":
    main()
