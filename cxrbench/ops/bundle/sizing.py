"""Sizing a budgeted bundle run (``bundle.py run --budget SECONDS``): what fits the time left on this device.

The runner measures the device first (:mod:`cxrbench.ops.bundle.measure`, ``budget.measure_seconds``), runs
the data stages (their sizes are never changed), then calls :func:`plan` with the seconds left. The plan keeps,
in this order of priority (``budget`` in params.yaml holds every number named here):

1. every backbone of ``train.backbones`` at ``preprocess.size`` (never reduced: the study's first claim);
2. ``train.folds``: as many of the profile's folds as fit, at the minimum of everything below;
3. ``train.epochs``: up to the profile's;
4. ``audit.controls``: the profile's controls in order, on the first fold (``audit.folds``);
5. ``explain.methods``: ``budget.core_methods`` always, then the profile's others in order while they fit;
6. ``explain.max_images`` (and the reliability and randomisation images): from ``budget.min_images`` up.

A configuration fits when its estimate times ``budget.safety`` is within the seconds left. The estimate adds,
per stage that DVC will run, the measured start of a stage's Python and DVC's own time per stage (read off the
data stages just run), the first step of the backbone, and the work: epochs x images / measured images/s,
images x measured seconds per image per method, and the forward passes of the perturbation metrics. When even
the minimum does not fit, the minimum is planned with ``fits: false``, and the run stops at its deadline. The
plan, the figures behind it and the estimate per stage are written to ``sizing.json`` and collected.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import pandas as pd

from cxrbench.core import params as P
from cxrbench.core import paths
from cxrbench.data.splitting import fold_parts
from cxrbench.explain.metrics.perturbation import N_LEVELS
from cxrbench.ops.bundle import host
from cxrbench.studies.severity import read_scores

DVC_STAGE_SECONDS = 2.0      # DVC's own time per stage when no data stage ran to measure it (dry runs: 1-3 s)
SMALL_STAGE_SECONDS = 5.0    # the work of ensemble, audit, planted, report (tables and plots)
EVAL_PASSES = 4              # test passes of evaluate: the input modes it scores (full, lungs, outside, silhouette)
AOPPC_CONTROLS = 2           # the random and Sobel edge maps that aoppc scores beside the methods
RANDOMISATION_PASSES = {"resnet": 9, "default": 20}   # 2 + layer groups + 1 model passes (resnet18: 9; inception_v3: 20)
RESILIENCE_PASSES = 2        # a noisy input and a weight-perturbed model


def rates(bench: dict) -> dict[str, dict]:
    """Per backbone: train and inference images/s and the first step's seconds."""
    return {r["backbone"]: {"train": r["train_images_per_s"], "infer": r["infer_images_per_s"],
                            "first": r["first_step_s"]} for r in bench["throughput"]}


def method_costs(bench: dict, backbones: list[str], methods: list[str]) -> dict[tuple[str, str], float]:
    """Seconds per image of each (backbone, method): measured, else scaled from the backbone where it was
    measured by the train images/s ratio (a backward pass per image, like training), ``inf`` when nowhere or
    when it failed (never planned); 0 where the method does not support the backbone (the stage records it and
    moves on)."""
    r = rates(bench)
    measured = {(a["backbone"], a["method"]): a for a in bench["attribution"]}
    out = {}
    for m in methods:
        ref = next((a for a in bench["attribution"] if a["method"] == m and "seconds_per_image" in a), None)
        for b in backbones:
            a = measured.get((b, m))
            if a is not None and "seconds_per_image" in a:
                out[b, m] = a["seconds_per_image"]
            elif a is not None and a.get("unsupported"):
                out[b, m] = 0.0
            elif a is not None:                     # it failed here: never planned
                out[b, m] = math.inf
            elif ref is not None:
                out[b, m] = ref["seconds_per_image"] * r[ref["backbone"]]["train"] / r[b]["train"]
            else:
                out[b, m] = math.inf
    return out


def aoppc_forwards(params: dict) -> int:
    """Forward passes per image and map of the aoppc stage: threshold and pixel levels in both orders, and the
    region scheme's steps for each fill and order."""
    region = P.section(params, "aoppc.region")
    return 2 * 2 * (N_LEVELS + 1) + len(region["fills"]) * len(region["orders"]) * (region["steps"] + 1)


def estimate(cfg: dict, bench: dict, cohort: dict, params: dict, dvc_stage_s: float) -> dict[str, float]:
    """Seconds per stage group of the configuration ``cfg`` (folds, epochs, controls, methods, images)."""
    r = rates(bench)
    backbones = list(P.section(params, "train.backbones"))
    audit_bb = [b for b in P.section(params, "audit.backbones") if b in r]
    folds = range(cfg["folds"])
    cost = method_costs(bench, backbones + audit_bb, cfg["methods"])
    start = bench["stage_start_s"] + dvc_stage_s
    n_tr, n_va, n_te = cohort["train"], cohort["val"], cohort["test"]
    E, I, M = cfg["epochs"], cfg["images"], cfg["methods"]

    def train(b, f):
        return start + r[b]["first"] + E * (n_tr[f] / r[b]["train"] + n_va[f] / r[b]["infer"])

    def evaluate(b):
        return start + r[b]["first"] + EVAL_PASSES * n_te / r[b]["infer"]

    def spi(b, ms):
        return sum(cost[b, m] for m in ms if m in M)

    sanity = P.section(params, "explain.sanity_images")
    rel = P.section(params, "reliability")
    sens = rel["sensitivity_methods"] if rel["sensitivity_methods"] is not None else M
    rand = P.section(params, "randomisation.methods") or M
    sev = P.section(params, "severity.methods")
    k = aoppc_forwards(params)
    models = [(b, f) for b in backbones for f in folds]
    out = {
        "train": sum(train(b, f) for b, f in models),
        "evaluate": sum(evaluate(b) for b, _ in models),
        "audit_train": sum(cfg["controls"] * train(b, 0) for b in audit_bb),
        "audit_evaluate": sum(cfg["controls"] * evaluate(b) for b in audit_bb),
        "attribute": sum(start + r[b]["first"] + (I + sanity) * spi(b, M) for b, _ in models),
        "aoppc": start + sum(I * (len(M) + AOPPC_CONTROLS) * k / r[b]["infer"] for b, _ in models),
        "reliability": start + sum(I * (rel["sensitivity_samples"] * spi(b, sens) + (len(M) + AOPPC_CONTROLS)
                                        * rel["infidelity_samples"] / r[b]["infer"]
                                        + RESILIENCE_PASSES * spi(b, rel["resilience_methods"])) for b, _ in models),
        "randomisation": start + sum(RANDOMISATION_PASSES["resnet" if b.startswith("resnet") else "default"]
                                     * I * spi(b, rand) for b, _ in models),
        "severity": start + sum(cohort["severity"] * spi(b, sev) for b, _ in models) if sev else 0.0,
        "other": 4 * (start + SMALL_STAGE_SECONDS),          # ensemble, audit, planted, report
    }
    return {k_: round(v, 1) for k_, v in out.items()}


def overrides(cfg: dict, params: dict) -> dict:
    """The params a configuration sets (on top of the profile's)."""
    folds = list(P.section(params, "train.folds"))[:cfg["folds"]]
    M = cfg["methods"]
    rel = P.section(params, "reliability")
    out = {"train.folds": folds, "audit.folds": folds[:1], "train.epochs": cfg["epochs"],
           "audit.controls": list(P.section(params, "audit.controls"))[:cfg["controls"]],
           "explain.methods": M, "explain.max_images": cfg["images"],
           "reliability.images": min(rel["images"], cfg["images"]),
           "randomisation.images": min(P.section(params, "randomisation.images"), cfg["images"]),
           "severity.methods": [m for m in P.section(params, "severity.methods") if m in M],
           "randomisation.methods": [m for m in (P.section(params, "randomisation.methods") or M) if m in M],
           "reliability.resilience_methods": [m for m in rel["resilience_methods"] if m in M]}
    if rel["sensitivity_methods"] is not None:
        out["reliability.sensitivity_methods"] = [m for m in rel["sensitivity_methods"] if m in M]
    if rel["methods"] is not None:
        out["reliability.methods"] = [m for m in rel["methods"] if m in M]
    return out


def plan(bench: dict, cohort: dict, seconds: float, params: dict, dvc_stage_s: float = DVC_STAGE_SECONDS) -> dict:
    """The largest configuration, knob by knob in the order of the module docstring, whose estimate times
    ``budget.safety`` fits ``seconds``."""
    b = P.section(params, "budget")
    folds = len(P.section(params, "train.folds"))
    epochs = P.section(params, "train.epochs")
    controls = len(P.section(params, "audit.controls"))
    methods = list(P.section(params, "explain.methods"))
    core = [m for m in methods if m in b["core_methods"]]
    images = P.section(params, "explain.max_images")
    cfg = {"folds": 1, "epochs": min(b["min_epochs"], epochs), "controls": min(1, controls), "methods": core,
           "images": min(b["min_images"], images)}

    def total(c):
        return sum(estimate(c, bench, cohort, params, dvc_stage_s).values())

    def fits(c):
        return total(c) * b["safety"] <= seconds

    log = []
    fits_min = fits(cfg)
    if fits_min:
        for knob, hi in (("folds", folds), ("epochs", epochs), ("controls", controls)):
            while cfg[knob] < hi and fits({**cfg, knob: cfg[knob] + 1}):
                cfg[knob] += 1
            log.append(f"{knob}: {cfg[knob]} of {hi}")
        for m in methods:
            if m not in cfg["methods"] and fits({**cfg, "methods": [x for x in methods if x in cfg["methods"] + [m]]}):
                cfg["methods"] = [x for x in methods if x in cfg["methods"] + [m]]
        log.append(f"methods: {len(cfg['methods'])} of {len(methods)}")
        while cfg["images"] < images and fits({**cfg, "images": cfg["images"] + 1}):
            cfg["images"] += 1
        log.append(f"images: {cfg['images']} of {images}")
    stages = estimate(cfg, bench, cohort, params, dvc_stage_s)
    return {"fits": fits_min, "seconds_left": round(seconds, 1), "estimate_s": round(sum(stages.values()), 1),
            "safety": b["safety"], "dvc_stage_s": round(dvc_stage_s, 2), "stage_start_s": bench["stage_start_s"],
            "chosen": cfg, "of": {"folds": folds, "epochs": epochs, "controls": controls, "methods": methods,
                                  "images": images},
            "dropped_methods": [m for m in methods if m not in cfg["methods"]], "log": log,
            "estimate_per_stage_s": stages, "cohort": cohort, "overrides": overrides(cfg, params)}


def cohort_sizes(params: dict, root: Path = Path(".")) -> dict:
    """Images per part of each profile fold (data/splits.csv) and the test images the severity stage scores."""
    splits = pd.read_csv(root / paths.SPLITS)
    folds = list(P.section(params, "train.folds"))
    parts = [fold_parts(splits, f) for f in folds]
    test = parts[0]["test"]
    scores = root / P.section(params, "severity.scores_file")
    n_sev = int(test["path"].isin(set(read_scores(scores)["path"])).sum()) if scores.is_file() else 0
    return {"train": [len(p["train"]) for p in parts], "val": [len(p["val"]) for p in parts],
            "test": len(test), "severity": n_sev}


def dvc_stage_seconds(stage_wall: dict[str, float], root: Path = Path(".")) -> float:
    """DVC's own seconds per stage: the median over the stages that ran of DVC's wall time for the stage less
    the stage process's own (``timing/STAGE.json``); :data:`DVC_STAGE_SECONDS` when none can be compared."""
    gaps = []
    for stage, wall in stage_wall.items():
        f = root / paths.timing_file(stage)
        if f.is_file():
            gaps.append(wall - json.loads(f.read_text(encoding="utf-8"))["wall_s"])
    return max(0.0, statistics.median(gaps)) if gaps else DVC_STAGE_SECONDS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cxrbench.ops.bundle.sizing", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="action", required=True)
    m = sub.add_parser("measure", help="the device's figures (measure.py) into --out")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--seconds", type=float, default=None, help="default: budget.measure_seconds")
    p = sub.add_parser("plan", help="size the run to --seconds-left; write --out and (with --apply) params.yaml")
    p.add_argument("--bench", type=Path, required=True)
    p.add_argument("--seconds-left", type=float, required=True)
    p.add_argument("--stage-wall", type=Path, default=None, help="JSON {stage: DVC wall seconds} of the data stages")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--apply", action="store_true", help="write the plan's overrides into ./params.yaml")
    args = ap.parse_args(argv)
    params = P.load()
    if args.action == "measure":
        from cxrbench.ops.bundle import measure as W

        b = P.section(params, "budget")
        seconds = b["measure_seconds"] if args.seconds is None else args.seconds
        methods = list(P.section(params, "explain.methods"))
        core = [m for m in methods if m in b["core_methods"]]          # measured first: every plan has them
        out = W.measure(params, seconds, list(P.section(params, "train.backbones")),
                        core + [m for m in methods if m not in core], P.section(params, "preprocess.size"),
                        b["measure_batch"], b["measure_steps"], b["measure_images"])
        host.write_json(args.out, out)
        return 0
    bench = json.loads(args.bench.read_text(encoding="utf-8"))
    walls = json.loads(args.stage_wall.read_text(encoding="utf-8")) if args.stage_wall else {}
    result = plan(bench, cohort_sizes(params), args.seconds_left, params, dvc_stage_seconds(walls))
    result["planned_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    host.write_json(args.out, result)
    c = result["chosen"]
    print(f"sizing: {'fits' if result['fits'] else 'DOES NOT FIT even at the minimum'}: {len(P.section(params, 'train.backbones'))} "
          f"backbones, {c['folds']} fold(s), {c['epochs']} epochs, {c['controls']} audit control(s), "
          f"{len(c['methods'])} methods, {c['images']} images; estimate {result['estimate_s']:.0f} s x "
          f"{result['safety']} for {args.seconds_left:.0f} s left", flush=True)
    if args.apply:
        host.write_params(Path("."), result["overrides"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
