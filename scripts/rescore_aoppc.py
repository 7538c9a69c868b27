"""Recompute explanation statistics from per-image scores: one finished run with this checkout's code, or
several runs that differ only in their training seed, pooled so that the seeds are a source of variance.

The aoppc stage spends hours perturbing images and seconds on statistics. From ``metrics/aoppc_per_image.csv``
this recomputes the gains over the random map, their intervals over models and patients, the winners and the
agreement across fills (:mod:`cxrbench.explain.metrics.rescore`), without perturbing an image again.

One run: when only the statistics changed since it ran. Everything else in ``metrics/aoppc.json`` stays the
run's own; the written JSON records the commit that recomputed it under ``rescored``.

Several runs: the same profile run with other ``train.seed`` values (their params must be equal in every
other key, so they explain the same images of the same patients). Their models are pooled as backbone x fold
x seed (``resnet18@seed43``): the two-level intervals then resample the seeds' models with the folds', and
``leader_by_model`` shows whether another seed overturns a winner. The JSON holds the pooled tables (no
randomisation counts: per run, in each run's own files).

    python3 scripts/rescore_aoppc.py RUN_DIR --out results/study-cpu/metrics
    python3 scripts/rescore_aoppc.py RUN_S42 RUN_S43 RUN_S44 --out results/ci-seeds

RUN_DIR: a run's repository root, with the params it ran with in its ``params.yaml`` (a clone that ran
``cxrbench run PROFILE --workspace``; for seeds, ``--set train.seed=43``). Writes OUT/aoppc.json and
OUT/aoppc_table.md (the stage's table text), OUT/gains_by_model.png (each trained model's gain over the random
map beside the interval over models and patients; with two or more models), and OUT/agreement.{json,md}: the
reliability stage's agreement of the metrics on the methods' ranking, over the same models and every explained
image (a robustness score is taken only where it covers every image).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from cxrbench.core import params as P
from cxrbench.core import paths, runtime
from cxrbench.core.io import read_json, write_json, write_text
from cxrbench.explain import aoppc_run
from cxrbench.explain import plots as EP
from cxrbench.explain import runner as A
from cxrbench.explain import reliability as RL
from cxrbench.explain.metrics import agreement as AG
from cxrbench.explain.metrics import rescore
from cxrbench.explain.metrics.across_models import seed_model
from cxrbench.explain.metrics import scoring as AS
from cxrbench.explain.metrics import tables as AT
from cxrbench.explain.metrics import tables_text as ATT

MD = Path(paths.AOPPC_MD).name                       # the stage's table text, under the same name
FIGURE = "gains_by_model.png"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="a run's repository root")
    ap.add_argument("--out", type=Path, required=True, help="folder for aoppc.json and aoppc_table.md")
    args = ap.parse_args(argv)
    try:
        loaded = P.load_seed_runs(args.run_dirs, [paths.AOPPC_PER_IMAGE, paths.AOPPC], "aoppc stage")
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    runs = [{"dir": d, "params": p, "aoppc": read_json(d / paths.AOPPC),
             "rows": pd.read_csv(d / paths.AOPPC_PER_IMAGE, keep_default_na=False)} for d, p in loaded]
    params = runs[0]["params"]
    methods, s = A.validate(params).methods, AS.validate(params)
    commit = runtime.git_commit(Path(__file__).resolve().parents[1], short=True)
    if len(runs) == 1:
        scores = rescore.scores_from_rows(runs[0]["rows"])
        result = runs[0]["aoppc"]
        result.update(rescore.statistics(scores, methods, s.stats, s.fills))
        source = str(args.run_dirs[0])
    else:
        rows = rescore.combine({int(r["params"]["train"]["seed"]): r["rows"] for r in runs})
        result = AT.summary(rescore.scores_from_rows(rows), methods, stats=s.stats, fills=s.fills)
        result["sanity"] = {"by_method": {}}            # the randomisation counts stay in each run's files
        result["maps"]["by_method"] = {m: {k: c[k] for k in ("ok", "excluded_degenerate")}   # not by kind
                                       for m, c in result["maps"]["by_method"].items()}
        result["sample"] = _seed_samples(runs)
        result["region"] = runs[0]["aoppc"].get("region")
        source = [str(d) for d in args.run_dirs]
    result["rescored"] = {"parts": list(rescore.STATISTICS), "commit": commit, "from": paths.AOPPC_PER_IMAGE,
                          "runs": source, "stats": s.stats}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "aoppc.json", result)
    text = (aoppc_run.sample_sentence(result["sample"])
            + ATT.markdown(result, methods, s.reference, _region(s, result.get("region"))))
    write_text(args.out / MD, text)
    across = (result.get("gain") or {}).get("across_models", {}).get("pooled")
    if across:
        EP.gains_by_model_figure(across, methods, ATT.gain_columns(result), args.out / FIGURE)
    agreement = _agreement(runs, params, s.stats)
    agreement["rescored"] = result["rescored"]
    write_json(args.out / "agreement.json", agreement)
    write_text(args.out / "agreement.md", _agreement_text(agreement))
    print(f"wrote {args.out / 'aoppc.json'}, {args.out / MD} and {args.out / 'agreement.md'} (statistics of commit "
          f"{commit}, {len(runs)} run(s))")
    return 0


def _agreement(runs: list[dict], params: dict, stats: dict) -> dict:
    """The agreement of the metrics on the methods' ranking (the reliability stage's, over the same models as the
    tables above): every metric of ``reliability.agreement_metrics`` that covers every explained image; the
    robustness scores (each run's metrics/reliability_per_image.csv, where present) only if they do."""
    rl = RL.validate(params)
    methods = list(dict.fromkeys([*rl.methods, *RL.CONTROLS]))
    robust = []
    for r in runs:
        f = Path(r["dir"]) / paths.RELIABILITY_PER_IMAGE
        robust.append(pd.read_csv(f, keep_default_na=False) if f.is_file() else pd.DataFrame())
    robust = [f[f["status"] == "ok"].drop(columns="status") if len(f) else f for f in robust]
    if len(runs) == 1:
        rows, extra = runs[0]["rows"], robust[0]
    else:
        seeds = [int(r["params"]["train"]["seed"]) for r in runs]
        rows = rescore.combine(dict(zip(seeds, (r["rows"] for r in runs))))
        extra = rescore.combine(dict(zip(seeds, robust))) if all(len(f) for f in robust) else pd.DataFrame()
    rows = rows.assign(value=pd.to_numeric(rows["value"], errors="coerce"))
    extra = extra.assign(value=pd.to_numeric(extra["value"], errors="coerce")) if len(extra) else extra
    return AG.over_covered_items(rows, extra, methods, rl.agreement_metrics, stats)


def _agreement_text(agreement: dict) -> str:
    left = agreement.get("metrics_not_scored") or {}
    return (AG.markdown(agreement) + ("\nMetrics left out of the agreement: " + "; ".join(
        f"`{m}` ({why})" for m, why in left.items()) + ".\n" if left else ""))


def _seed_samples(runs: list[dict]) -> dict:
    """The runs' explained samples with each backbone named by its seed (the n sentence of the table)."""
    out = {"models": {}, "all": runs[0]["aoppc"].get("sample", {}).get("all", {})}
    for r in runs:
        seed = int(r["params"]["train"]["seed"])
        for bb, folds in (r["aoppc"].get("sample") or {}).get("models", {}).items():
            out["models"][seed_model(bb, seed)] = folds
    return out


def _region(s, settings: dict | None) -> str:
    """The stage's sentence on region perturbation, for the input side its recorded patch implies."""
    if not settings:
        return ""
    side = int(round(settings["patch"] / s.patch))
    return AS.region_sentence(s, side) if AS.perturbation_settings(s, side)["patch"] == settings["patch"] else ""


if __name__ == "__main__":
    sys.exit(main())
