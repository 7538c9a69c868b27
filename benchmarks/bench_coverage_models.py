"""Coverage of the two-level interval over trained models and patients (cxrbench.core.inference.two_level_ci).

Simulates the explanation tables' gains when several trained models (a profile's fold models, or training
seeds) explain the same test patients: a value per (model, patient) = a model effect (sd ``--model-sd``, the
variance between training runs) + a skewed patient effect (exponential, centred, sd ``--patient-sd``) + a
model x patient interaction (sd ``--interaction-sd``) + image noise, with a known truth of 0: the mean over the
population of models and patients. For each simulated data set the two-level interval (models, then patients)
and, beside it, the patient-only interval of the pooled values (``patient_mean_ci``, what the gain table
reports) are checked for the truth. The coverage is the share of data sets whose interval contains it; its
Monte-Carlo standard error is printed beside it.

    PYTHONPATH=$PWD python3 benchmarks/bench_coverage_models.py --sims 400 --models 3 5 --patients 16 100

The figures in benchmarks/README.md ("Intervals over models and patients") come from this command.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from cxrbench.core.bootstrap import patient_mean_ci
from cxrbench.core.inference import two_level_ci


def simulate(rng, n_models: int, n_patients: int, model_sd: float, patient_sd: float, interaction_sd: float,
             noise_sd: float = 0.5, p_size: float = 0.5):
    """(values, models, patients): every model scores the same patients, each with Geometric(p_size) images."""
    sizes = rng.geometric(p_size, n_patients)
    patient = rng.exponential(patient_sd, n_patients) - patient_sd
    model = rng.normal(0, model_sd, n_models)
    pat = np.repeat(np.arange(n_patients), sizes)
    values, models, patients = [], [], []
    for m in range(n_models):
        inter = rng.normal(0, interaction_sd, n_patients)
        values.append(model[m] + patient[pat] + inter[pat] + rng.normal(0, noise_sd, len(pat)))
        models.append(np.full(len(pat), m))
        patients.append(pat)
    return np.concatenate(values), np.concatenate(models), np.concatenate(patients)


def coverage(n_models: int, n_patients: int, sims: int, n_boot: int, seed: int, **sds) -> dict:
    rng = np.random.default_rng(seed)
    hits = {"two_level": 0, "patients_only": 0}
    widths = {"two_level": [], "patients_only": []}
    for t in range(sims):
        v, m, g = simulate(rng, n_models, n_patients, **sds)
        two = two_level_ci(v, m, g, n_boot=n_boot, seed=t, unit="models")
        one = patient_mean_ci(v, g, n_boot=n_boot, seed=t)
        for name, ci in (("two_level", two), ("patients_only", one)):
            if ci.get("low") is not None:
                hits[name] += ci["low"] <= 0 <= ci["high"]
                widths[name].append(ci["high"] - ci["low"])
    out = {}
    for name, h in hits.items():
        c = h / sims
        out[name] = {"coverage": round(c, 4), "mc_se": round(float(np.sqrt(c * (1 - c) / sims)), 4),
                     "median_width": round(float(np.median(widths[name])), 4) if widths[name] else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sims", type=int, default=400, help="simulated data sets per cell")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples per interval")
    ap.add_argument("--models", type=int, nargs="+", default=[3, 5], help="trained models per data set")
    ap.add_argument("--patients", type=int, nargs="+", default=[16, 100], help="test patients per data set")
    ap.add_argument("--model-sd", type=float, default=0.3, help="sd of the model effect (between training runs)")
    ap.add_argument("--patient-sd", type=float, default=1.0, help="sd of the skewed patient effect")
    ap.add_argument("--interaction-sd", type=float, default=0.3, help="sd of the model x patient interaction")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    a = ap.parse_args()
    sds = {"model_sd": a.model_sd, "patient_sd": a.patient_sd, "interaction_sd": a.interaction_sd}
    print(f"# {platform.processor() or platform.machine()}, {a.sims} data sets x {a.boot} resamples, "
          f"nominal 95 %, {sds}")
    print("| models | patients | two-level coverage (MC se) | width | patients-only coverage (MC se) | width |")
    print("|---|---|---|---|---|---|")
    rows = []
    for nm in a.models:
        for ng in a.patients:
            t0 = time.perf_counter()
            c = coverage(nm, ng, a.sims, a.boot, a.seed, **sds)
            rows.append({"models": nm, "patients": ng, **c, "seconds": round(time.perf_counter() - t0, 1)})
            two, one = c["two_level"], c["patients_only"]
            print(f"| {nm} | {ng} | {two['coverage']:.3f} ({two['mc_se']:.3f}) | {two['median_width']} | "
                  f"{one['coverage']:.3f} ({one['mc_se']:.3f}) | {one['median_width']} |", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"settings": {**vars(a)}, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
