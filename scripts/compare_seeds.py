"""The headline of several runs that differ only in ``train.seed``, side by side: which one-run interval
does another training seed overturn?

Each run's headline (``metrics/headline/STAGE.json``: what ``cxrbench show`` prints, each value with its
interval over the test patients where the stage has one) becomes one row per value and a column per seed,
with the spread over the seeds and a flag where two seeds' intervals do not overlap
(:func:`cxrbench.ops.show.across_runs`). A one-run interval covers the test patients only; a value
flagged here moves more with the training seed than that interval allows. The pooled intervals, with the
seeds' models resampled, come from ``pool_table2.py`` and ``rescore_aoppc.py``.

    python3 scripts/compare_seeds.py RUN_S42 RUN_S43 RUN_S44 --out results/study-cpu-seeds

RUN_DIR: a run's repository root after its pipeline (``cxrbench run PROFILE --workspace --set
train.seed=43``). Runs that differ in any other param, or share a seed, are refused. Only the headline files
the run's own ``dvc.lock`` records are read: a stage it has not run shows "not run". Writes
OUT/headline_seeds.json and OUT/headline_seeds.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxrbench.core import headline as H
from cxrbench.core import params as P
from cxrbench.core import paths
from cxrbench.core.io import write_json, write_text
from cxrbench.ops import show
from cxrbench.ops._dvc import LOCK_NAME

INTRO = ("Each run's headline values (`cxrbench show`), one column per training seed; `[low, high]`: the run's own "
         "95 % interval over its test patients. **apart**: two seeds' intervals do not overlap, so one run's "
         "interval does not hold the other seed's result; blank where a run has no interval for the value.")


def markdown(rows: list[dict], seeds: list[int]) -> str:
    head = "| value | " + " | ".join(f"seed {s}" for s in seeds) + " | spread | apart |"
    lines = [head, "|---" * (len(seeds) + 3) + "|"]
    for r in rows:
        spread = "" if r["spread"] is None else f"{r['spread']:.3f}"
        apart = {True: "**apart**", False: "", None: ""}[r["apart"]]
        lines.append(f"| {r['key']} | " + " | ".join(H.cell(v, "") for v in r["runs"].values())
                     + f" | {spread} | {apart} |")
    n_ci = sum(r["apart"] is not None for r in rows)
    n_apart = sum(bool(r["apart"]) for r in rows)
    return (f"{INTRO}\n\n{n_apart} of the {n_ci} values with an interval in every run are apart.\n\n"
            + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="a run's repository root")
    ap.add_argument("--out", type=Path, required=True, help="folder for headline_seeds.{json,md}")
    args = ap.parse_args(argv)
    try:
        runs = P.load_seed_runs(args.run_dirs, [paths.HEADLINE, LOCK_NAME], "pipeline", one_run=(
            "one run: cxrbench show prints its headline; give two or more seeds"))
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    seeds = [int(p["train"]["seed"]) for _, p in runs]
    got = {s: show.load_workspace(d) for s, (d, _) in zip(seeds, runs)}
    for s, (_, stale) in got.items():
        if stale:
            print(f"seed {s}: {', '.join(stale)}: headline not written by this run (not in its {LOCK_NAME}); "
                  f"shown as {show.NOT_RUN!r}", file=sys.stderr)
    rows = show.across_runs({f"seed {s}": H.flatten(heads) for s, (heads, _) in got.items()})
    write_json(args.out / "headline_seeds.json",
               {"seeds": seeds, "runs": [str(d.resolve()) for d, _ in runs], "rows": rows})
    write_text(args.out / "headline_seeds.md", markdown(rows, seeds))
    print(f"{args.out}/headline_seeds.md: {sum(bool(r['apart']) for r in rows)} of "
          f"{sum(r['apart'] is not None for r in rows)} values apart across seeds {seeds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
