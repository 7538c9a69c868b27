"""Recompute a finished run's explanation statistics with this checkout's code, from its per-image scores.

The aoppc stage spends hours perturbing images and seconds on statistics. When only the statistics change
(for example the number of resamples a Holm-adjusted table needs), this brings a run's gains over the random
map, their intervals over models and patients, the winners and the agreement across fills up to date from
``metrics/aoppc_per_image.csv``, without perturbing an image again (:mod:`cxrbench.explain.metrics.rescore`).
Everything else in ``metrics/aoppc.json`` is the run's own; the written JSON records the commit that
recomputed it under ``rescored``.

    python3 scripts/rescore_aoppc.py RUN_DIR --out results/study-cpu/metrics

RUN_DIR: the run's repository root, with the params it ran with in its ``params.yaml`` (a clone that ran
``cxrbench run PROFILE --workspace``). Writes OUT/aoppc.json and OUT/aoppc_table.md (the stage's table text).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

from cxrbench.core import params as P
from cxrbench.core import paths
from cxrbench.core.io import read_json, write_json, write_text
from cxrbench.explain import aoppc_run
from cxrbench.explain import runner as A
from cxrbench.explain.metrics import rescore
from cxrbench.explain.metrics import scoring as AS
from cxrbench.explain.metrics import tables_text as ATT

MD = Path(paths.AOPPC_MD).name                       # the stage's table text, under the same name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("run_dir", type=Path, help="the run's repository root")
    ap.add_argument("--out", type=Path, required=True, help="folder for aoppc.json and aoppc_table.md")
    args = ap.parse_args(argv)
    files = {name: args.run_dir / rel for name, rel in
             (("params", P.PARAMS_FILE), ("per_image", paths.AOPPC_PER_IMAGE), ("aoppc", paths.AOPPC))}
    for name, f in files.items():
        if not f.is_file():
            print(f"{f}: not found; RUN_DIR must be a run's root after its aoppc stage finished", file=sys.stderr)
            return 2
    params = P.load(files["params"])
    methods, s = A.validate(params).methods, AS.validate(params)
    scores = rescore.scores_from_rows(pd.read_csv(files["per_image"], keep_default_na=False))
    result = read_json(files["aoppc"])
    result.update(rescore.statistics(scores, methods, s.stats, s.fills))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    result["rescored"] = {"parts": list(rescore.STATISTICS), "commit": commit,
                          "from": str(paths.AOPPC_PER_IMAGE), "stats": s.stats}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "aoppc.json", result)
    region = _region(s, result.get("region"))
    text = aoppc_run.sample_sentence(result["sample"]) + ATT.markdown(result, methods, s.reference, region)
    write_text(args.out / MD, text)
    print(f"wrote {args.out / 'aoppc.json'} and {args.out / MD} (statistics of commit {commit})")
    return 0


def _region(s, settings: dict | None) -> str:
    """The stage's sentence on region perturbation, for the input side its recorded patch implies."""
    if not settings:
        return ""
    side = int(round(settings["patch"] / s.patch))
    return AS.region_sentence(s, side) if AS.perturbation_settings(s, side)["patch"] == settings["patch"] else ""


if __name__ == "__main__":
    sys.exit(main())
