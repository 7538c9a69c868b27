"""The explanation tables with the trained models as a source of variance (``gain.across_models``,
``winners.*.across_models`` in metrics/aoppc.json).

A profile's fold models (and training seeds, where a profile trains several) are separate training runs that
explain the same test patients. An interval over the patients alone leaves out how much the result moves
from one trained model to the next (it covers 72-91 % in ``benchmarks/bench_coverage_models.py``); these
intervals resample the models, then the patients (:func:`cxrbench.core.inference.two_level_ci`, 97-99 %).

* :func:`interval`: the patient-weighted mean over models and patients, its two-level interval and p, each
  model's own mean and whether their signs agree;
* :func:`lead`: a leader's lead over every other method, so, and the leader each model gives alone;
* :func:`patient_weights`, :func:`per_model`: the patient-weighted means they are built on.
"""

from __future__ import annotations

import numpy as np


SEED_TAG = "@seed"              # resnet18@seed43: a backbone's models of one training seed, when seeds are pooled


def seed_model(backbone: str, seed: int) -> str:
    """The backbone name of one training seed's models when runs of several seeds are pooled."""
    return f"{backbone}{SEED_TAG}{seed}"


def seed_of(model: str) -> str:
    """The training seed in a pooled model's name (``resnet18@seed43|f0`` -> ``"43"``; the inverse of
    :func:`seed_model`); ``""`` for a model of an unpooled run."""
    backbone = model.split("|")[0]
    return backbone.split(SEED_TAG)[-1] if SEED_TAG in backbone else ""


def patient_weights(patients: np.ndarray) -> np.ndarray:
    """1 / (the patient's images): a weighted mean with these weights is the patient-weighted mean."""
    _, inverse, counts = np.unique(patients.astype(str), return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse]


def per_model(values: np.ndarray, patients: np.ndarray, models: np.ndarray) -> dict:
    """Each model's patient-weighted mean of ``values`` (the mean of its patients' means)."""
    from cxrbench.core.bootstrap import patient_means
    return {mk: float(patient_means(values[models == mk], patients[models == mk])[1].mean())
            for mk in dict.fromkeys(models.tolist())}


def interval(values: np.ndarray, patients: np.ndarray, models: np.ndarray, stats: dict) -> dict:
    """The patient-weighted mean gain over models and patients with a two-level bootstrap interval (models,
    then patients: :func:`cxrbench.core.inference.two_level_ci`), its p against 0, each model's own mean and
    whether they all have the pooled mean's sign. ``no_ci`` with fewer than 2 models or 2 patients."""
    from cxrbench.core import bootstrap as B
    from cxrbench.core.inference import two_level_ci
    r = lambda v: None if v is None else round(float(v), 4)  # noqa: E731
    n_models, n_patients = len(set(models.tolist())), len(set(patients.tolist()))
    out = {"n": int(len(values)), "patients": n_patients, "models": n_models}
    if n_models < 2 or n_patients < 2:
        return {**out, "mean": None, "low": None, "high": None, "status": "no_ci",
                "reason": f"{n_models} model(s) and {n_patients} patient(s): the two-level interval needs 2 of each"}
    per = per_model(values, patients, models)
    ci = two_level_ci(values, models, patients, n_boot=int(stats["resamples"]), seed=int(stats["seed"]),
                      confidence=float(stats["confidence"]), unit="models")
    valid = 1 - ci["undefined"] / ci["n_boot"]
    entry = {**out, "mean": r(ci["estimate"]), "per_model": {k: r(v) for k, v in per.items()},
             "sign_agrees": bool(all(np.sign(v) == np.sign(ci["estimate"]) for v in per.values())),
             "variance": ci["variance"], "undefined": ci["undefined"]}
    if valid < float(stats.get("min_valid_share", B.DEFAULT_MIN_VALID)):
        return {**entry, "low": None, "high": None, "status": "no_ci",
                "reason": f"{ci['undefined']} of {ci['n_boot']} resamples undefined"}
    return {**entry, "low": r(ci["low"]), "high": r(ci["high"]), "p": round(float(ci["p"]), 4), "status": "ok",
            "confidence": ci["confidence"]}


def lead(gains: np.ndarray, patients: np.ndarray, models: np.ndarray, methods: list, lead: int,
         stats: dict) -> dict:
    """The pooled leader's lead over every other method with models and patients resampled (two-level,
    adjusted across the comparisons), and the leader each model gives on its own."""
    from cxrbench.core.inference import adjust
    vs = {m: interval(gains[lead] - gains[k], patients, models, stats)
          for k, m in enumerate(methods) if k != lead}
    for v in vs.values():
        v.pop("per_model", None)
    adjust(list(vs.values()), stats.get("multiplicity", "holm"), 1 - float(stats["confidence"]))
    per = {m: per_model(gains[k], patients, models) for k, m in enumerate(methods)}
    keys = list(dict.fromkeys(models.tolist()))
    by_model = {mk: max(methods, key=lambda m: per[m][mk]) for mk in keys}
    tied = [m for m, v in vs.items() if not v.get("significant")]
    return {"models": len(keys), "leader_by_model": by_model,
            "same_leader": all(v == methods[lead] for v in by_model.values()),
            "vs": vs, "clear": not tied, "tied_with": tied}
