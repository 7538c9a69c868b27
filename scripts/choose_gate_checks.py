"""Which explanation metrics can the CI gate guard image by image? Every method's gain over the random map under
every deletion metric, on one backbone's models, with its range over finished spread runs.

    python3 scripts/choose_gate_checks.py /tmp/cxrbench-spread --runs reference threads1 isa_avx2 [--backbone resnet18]

A check can guard a metric only when its tolerance (``gate.spread_factor`` x the range over the runs) is at most
``gate.paired_max_tolerance``; among those, the rule in docs/ci-and-gate.md takes the largest gain per tolerance
(the tolerance counted as at least ``paired.CHOICE_FLOOR``, 0.005) under the black fill and under a fill-neutral
one (blur or ROAD), and the random-map control where a collapse to 0 would move it farthest beyond its
tolerance. This prints every candidate, ordered by that ratio, then the three picks
(``cxrbench.ops.paired.choose``), so that the choice can be checked and redone after the sample changes.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from cxrbench.core import paths
from cxrbench.core.params import PARAMS_FILE, load, section
from cxrbench.ops import paired
from cxrbench.ops.gate import config_from_params


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir", type=Path, help="the spread work folder (its runs/NAME/metrics)")
    ap.add_argument("--runs", nargs="+", default=["reference", "threads1", "isa_avx2"],
                    help="the finished runs to take the range over; the first gives the gain")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--params", type=Path, default=Path(PARAMS_FILE))
    args = ap.parse_args(argv)
    params = load(args.params)
    cfg = config_from_params(params)
    dirs = [args.workdir / "runs" / r for r in args.runs]
    missing = [str(d / paths.AOPPC_PER_IMAGE) for d in dirs if not (d / paths.AOPPC_PER_IMAGE).is_file()]
    if missing:
        print(f"choose_gate_checks: no per-image AOPPC file at {missing}; run `cxrbench spread measure --only "
              f"{' '.join(args.runs)}` first", file=sys.stderr)
        return 2
    rows = paired.candidates(dirs, args.backbone, list(section(params, "explain.methods")), cfg.spread_factor)
    cap = cfg.paired_max_tolerance
    rows.sort(key=lambda r: (r["control"], -math.copysign(paired.ratio(r), r["values"][0])))
    picks = paired.choose(rows, cap)
    print(f"{len(rows)} checks on {args.backbone}'s models over runs {args.runs}; tolerance = "
          f"{cfg.spread_factor:g} x range, cap {cap:g}; gain / tolerance counts a tolerance as at least "
          f"{paired.CHOICE_FLOOR:g}\n")
    print("| check | images | " + " | ".join(args.runs) + " | range | tolerance | gain / tolerance | within cap |")
    print("|---|---:|" + "---:|" * len(args.runs) + "---:|---:|---:|---|")
    for r in rows:
        ratio = "-" if r["control"] else f"{math.copysign(paired.ratio(r), r['values'][0]):.1f}"
        print(f"| `{r['metric'].partition(':')[2]}` | {r['images']} | " +
              " | ".join(f"{v:+.4f}" for v in r["values"]) +
              f" | {r['range']:.4f} | {r['tolerance']:.4f} | {ratio} | {'yes' if r['tolerance'] <= cap else 'no'} |")
    print("\nThe picks (gate.checks in params.yaml):")
    for kind, r in picks.items():
        print(f"  {kind}: {r['metric']}  (reference {r['values'][0]:+.4f}, tolerance {r['tolerance']:.4f}, "
              f"{r['images']} images)")
    return 0 if len(picks) == 3 else 1


if __name__ == "__main__":
    sys.exit(main())
