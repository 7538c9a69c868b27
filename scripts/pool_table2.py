"""Table 2 over training seeds: several finished runs of one profile that differ only in ``train.seed``,
their fold models pooled as fold x seed models, so that the seeds are a source of variance.

Each run's ensemble stage scores its own fold models; its interval over models resamples those folds only.
This reads every run's predictions and evaluation records (``data/predictions``, ``metrics/eval``), combines
each fold as the ensemble stage does (:func:`cxrbench.classify.ensemble.combine`), pools the runs
(:func:`cxrbench.classify.ensemble.pool_seeds`) and writes Table 2 with two intervals per cell: over the test
patients, and over the fold x seed models and the test patients (two-level bootstrap). Nothing is retrained.

    python3 scripts/pool_table2.py RUN_S42 RUN_S43 RUN_S44 --out results/ci-seeds

RUN_DIR: a run's repository root after its ensemble stage, with the params it ran with in its
``params.yaml`` (a clone that ran ``cxrbench run PROFILE --workspace --set train.seed=43``). Runs that differ
in any other param, or share a seed, are refused. Writes OUT/table2.json and OUT/table2.md.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from cxrbench.classify import ensemble as EN
from cxrbench.classify import evaluation as E
from cxrbench.classify import paper_scoring, training
from cxrbench.classify import task as TK
from cxrbench.core import bootstrap, paths, runtime
from cxrbench.core import params as P
from cxrbench.core.io import write_json, write_text
from cxrbench.data.labels import LabelTable


def _combined(run_dir: Path, params: dict, tp: dict, vote_tie: str, vote_rule: str) -> dict:
    """The run's per-fold ensemble inputs, read from its own folder (the package's paths are relative); ``tp``,
    ``vote_tie``, ``vote_rule``: the validated settings every run shares (they differ in train.seed alone)."""
    with contextlib.chdir(run_dir):
        return EN.combine(LabelTable.from_params(params), tp["backbones"], tp["folds"], E.validate(params),
                          vote_tie, vote_rule)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="a run's repository root")
    ap.add_argument("--out", type=Path, required=True, help="folder for table2.json and table2.md")
    args = ap.parse_args(argv)
    try:
        runs = P.load_seed_runs(args.run_dirs, [paths.INDEX], "ensemble stage",
                                one_run="one run: its own metrics/table2.md is the table; pool two or more seeds")
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    params = runs[0][1]
    if TK.task_of(params) == "multiclass":
        print("train.task is multiclass: Table 2 of seed 000 scores multi-label predictions", file=sys.stderr)
        return 2
    tp, stats = training.validate(params), bootstrap.validate(params)
    ens = EN.validate(params, len(tp["backbones"]))
    vote_rule = EN.vote_rule_name(len(tp["backbones"]), ens["vote_tie"])
    try:
        pooled = EN.pool_seeds({int(p["train"]["seed"]): _combined(d, p, tp, ens["vote_tie"], vote_rule)
                                for d, p in runs})
    except FileNotFoundError as e:
        print(f"{e}: each RUN_DIR must be a run's root after its evaluate stages", file=sys.stderr)
        return 2
    s = EN.compare(pooled["per_fold"], pooled["test_rows"], tp["backbones"], pooled["folds"], stats, vote_rule,
                   paper_scoring.rule(params), unit="fold x seed models")
    seeds = sorted(int(p["train"]["seed"]) for _, p in runs)
    commit = runtime.git_commit(Path(__file__).resolve().parents[1], short=True)
    lead = (f"Pooled over training seeds {', '.join(map(str, seeds))}: each run's folds {tp['folds']} x "
            f"{len(seeds)} seeds = {len(pooled['folds'])} models per row, so *folds* below counts fold x seed "
            f"models and the mean and std are over them. The first interval resamples the test patients (one "
            f"weight per patient, shared by every model that tests them); the second (\"with the trained models\") "
            f"draws the {len(pooled['folds'])} models with replacement, then the patients: it holds the "
            f"training seeds' variance. Recomputed by scripts/pool_table2.py at commit {commit}.\n\n")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "table2.json", {"rows": s["table2"], "paired_test": s["paired"], "models": pooled["folds"],
                                          "seeds": seeds, "runs": [str(d) for d, _ in runs], "commit": commit,
                                          "stats": stats})
    write_text(args.out / "table2.md", lead + EN.table2_markdown(s["table2"], s["note"], stats["confidence"]))
    print(f"wrote {args.out / 'table2.json'} and {args.out / 'table2.md'} ({len(runs)} runs, "
          f"{len(pooled['folds'])} models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
