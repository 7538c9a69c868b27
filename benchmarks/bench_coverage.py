"""Coverage of the patient-group bootstrap intervals (cxrbench.core.bootstrap) at a nominal 95 %.

Simulates the explanation tables' situation: G patients with skewed numbers of images each (a
geometric count, so a few patients hold many of the images), a skewed patient effect (exponential,
centred) shared by a patient's images plus image noise, and a known truth of 0. For each simulated
data set, one set of resamples (the project's own ``group_distribution``) gives every interval method
(``interval``), for two statistics: the image-weighted mean (each image counts once) and the
patient-weighted mean (each patient counts once), the latter also with ``patient_mean_ci`` (the cluster
bootstrap-t of the explanation tables' gains). The coverage is the share of data sets whose
interval contains the truth; its Monte-Carlo standard error is printed beside it.

    PYTHONPATH=$PWD python3 benchmarks/bench_coverage.py --sims 1000 --groups 9 30 60 100

The figures of benchmarks/README.md come from this command: ``patient_mean_ci`` for means over
patients, and ``stats.method`` (params.yaml) for every other statistic (AUROC, Kendall's W, ...): the
generic method with the highest coverage.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from cxrbench.core.bootstrap import METHODS, group_distribution, interval, patient_mean_ci


def simulate(rng, n_groups: int, p_size: float = 0.5, between: float = 1.0, within: float = 0.5,
             shape: float = 1.0):
    """(values, groups): ``n_groups`` patients with Geometric(p_size) images each, a Gamma(shape) patient
    effect (skewness 2 / sqrt(shape); 1 = exponential) of sd ``between``, centred; truth 0."""
    sizes = rng.geometric(p_size, n_groups)
    scale = between / np.sqrt(shape)
    effect = rng.gamma(shape, scale, n_groups) - shape * scale
    groups = np.repeat(np.arange(n_groups), sizes)
    values = effect[groups] + rng.normal(0, within, len(groups))
    return values, groups


def patient_mean(values: np.ndarray, groups: np.ndarray):
    """statistic(idx): the mean over the drawn patients of each patient's mean, a patient drawn k times
    counting k times (its images are all drawn together, so k = its drawn images / its images)."""
    sizes = np.bincount(groups)
    means = np.bincount(groups, weights=values) / sizes

    def statistic(idx: np.ndarray) -> float:
        k = np.bincount(groups[idx], minlength=len(sizes)) / sizes
        return float((k * means).sum() / k.sum())
    return statistic


def coverage(n_groups: int, sims: int, n_boot: int, seed: int, methods=METHODS, shape: float = 1.0) -> dict:
    rng = np.random.default_rng(seed)
    hits = {s: {m: 0 for m in methods} for s in ("image_mean", "patient_mean")}
    hits["patient_mean"]["cluster_bootstrap_t"] = 0
    for t in range(sims):
        v, g = simulate(rng, n_groups, shape=shape)
        stats_of = {"image_mean": lambda i, v=v: float(v[i].mean()), "patient_mean": patient_mean(v, g)}
        for name, stat in stats_of.items():
            est, dist, jack, units = group_distribution(stat, g, n_boot, seed=t)
            for m in methods:
                ci = interval(est, dist, jack, units, 0.95, m, 0.9)
                hits[name][m] += ci["low"] is not None and ci["low"] <= 0.0 <= ci["high"]
        ci = patient_mean_ci(v, g, n_boot, seed=t)
        hits["patient_mean"]["cluster_bootstrap_t"] += ci["low"] is not None and ci["low"] <= 0.0 <= ci["high"]
    return {name: {m: round(h / sims, 4) for m, h in per.items()} for name, per in hits.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sims", type=int, default=1000, help="simulated data sets per cluster count")
    ap.add_argument("--groups", type=int, nargs="+", default=[9, 30, 60, 100], help="patients (clusters)")
    ap.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples per interval")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shape", type=float, default=1.0, help="gamma shape of the patient effect (1: exponential, "
                                                            "skewness 2; 4: skewness 1)")
    ap.add_argument("--json", help="also write the coverages to this file")
    args = ap.parse_args(argv)
    out = {}
    for g in args.groups:
        t0 = time.perf_counter()
        out[g] = coverage(g, args.sims, args.resamples, args.seed + g, shape=args.shape)
        se = np.sqrt(0.95 * 0.05 / args.sims)
        for name, per in out[g].items():
            print(f"G={g:4d} {name:13s} " + "  ".join(f"{m} {c:.3f}" for m, c in per.items())
                  + f"  (MC se {se:.3f}; {time.perf_counter() - t0:.0f} s)", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"sims": args.sims, "resamples": args.resamples, "shape": args.shape, "coverage": out}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
