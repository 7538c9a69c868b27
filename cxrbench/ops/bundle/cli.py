"""Run a profile on a GPU host without internet: pack here, run there in time-boxed steps, collect.

    # here (the source mirror and PyPI reachable): one folder of at most --max-mib (64 MiB)
    cxrbench bundle pack gpu --out .bundle [--set KEY=VALUE ...] [--wheels .whl] [--host-has @FILE]

    # on the GPU host: unpack (first call), run until the step's time is up, keep the state in WORK;
    # exit 0 = the profile is complete, 75 = the step ended at its time limit (run it again), else a failure
    python .bundle/bundle.py run --bundle .bundle --work /tmp/cxr [--step-seconds 600] [--state-out $OUT]
    # or one call sized to the time it has: measure the device, size the profile, run until the budget is up
    python .bundle/bundle.py run --bundle .bundle --work /tmp/cxr --budget 420

    # metrics, report and plots (never models) as at most 8 files
    python .bundle/bundle.py collect --work /tmp/cxr --out $OUT

    # here again: a page of the device's figures, the plan, the wall times and the run's tables
    cxrbench bundle report OUT --out results/gpu

What a bundle holds (``manifest.json`` lists each file with its size and SHA-256):

* ``source.tar.gz``: the repository's tracked files as they are in the working tree
  (the manifest records the commit and whether the tree was dirty);
* ``mirror.tar``: a *study mirror*: each source in its upstream layout, reduced to
  what the profile's index stage reads (the frontal covid-chestxray X-rays, the
  drawn Kermany subset, the V7 masks of those images, the metadata and fold files).
  Images whose longer side exceeds ``preprocess.size`` are resized to exactly the
  geometry the preprocess stage would give them (its own bicubic resize, so the
  stage's resize is then the identity) and saved in their own format: PNG
  losslessly, JPEG at ``--jpeg-quality``; masks with the preprocess rule, which is
  exact. So the cache differs from a mirror run's only by the 8-bit rounding of the
  resized image and the JPEG re-encoding; the cohort can differ where a
  near-duplicate decision sat on its threshold (compare metrics/data.json);
* ``wheels.tar``: the wheels of the packages a GPU host usually lacks
  (:data:`LACKING`) and of everything they need that the rest of requirements.txt
  does not bring (the torch stack is the host's own), for ``--python``;
* ``bundle.py``: the runner, :mod:`cxrbench.ops.bundle.host`, which runs with the
  standard library and the host's Python alone until the source is unpacked.

How DVC runs there: the unpacked source has no git repository, so DVC runs with
``core.no_scm`` (no experiments): the profile's overrides are written into that
copy's params.yaml and each step is one ``dvc repro`` (dvc.lock records every
finished stage and DVC's cache holds its outputs, so the next step skips it;
``--no-commit`` would skip the copies but makes DVC rerun every stage whose
outputs are not in its cache, tried). A step ends cleanly before its limit: training loops stop after
a checkpoint when the next epoch would cross ``CXRBENCH_DEADLINE`` (the stage
exits 75, DVC stops, the next step resumes from ``last.pt``); any other stage
still running at the hard deadline is interrupted (SIGINT, then SIGKILL) and
reruns in the next step, so each stage must fit in one step. State stays in WORK
(a warm machine or the node's disk); ``--state-out`` also writes
``state.tar.gz`` there, everything in WORK but the cache, the raw data and the
models, so finished results survive a lost machine; ``run --resume-from`` restores
them on a new host, but DVC then reruns every stage (the restored outputs are not
in its cache; measured in docs/gpu.md), so it saves results, not compute.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxrbench.core.params import ParamError
from cxrbench.ops.bundle import host
from cxrbench.ops.bundle.host import BundleError
from cxrbench.ops.bundle.pack import BUNDLE_MAX_MIB, HOST_PYTHON, pack


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cxrbench bundle", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="action", required=True)
    p = sub.add_parser("pack", help="write a bundle folder for a profile")
    p.add_argument("profile")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="one more override (repeatable)")
    p.add_argument("--wheels", type=Path, default=Path(".whl"), help="wheel folder (reused; missing ones downloaded)")
    p.add_argument("--python", default=HOST_PYTHON, help=f"the host's Python (default {HOST_PYTHON})")
    p.add_argument("--jpeg-quality", type=int, default=95, help="re-encoding of resized JPEG images (default 95)")
    p.add_argument("--max-mib", type=float, default=BUNDLE_MAX_MIB)
    p.add_argument("--host-has", default=None, metavar="NAMES|@FILE",
                   help="distributions the GPU host already has (comma-separated, or @FILE one per line, e.g. "
                        "@profiles/gpu-host-packages.txt): their wheels stay out of the bundle; the runner still "
                        "checks on the host that everything imports")
    host.add_parsers(sub)
    r = sub.add_parser("report", help="here: README.md and the tables of a collected run (cxrbench.ops.bundle.summary)")
    r.add_argument("results", type=Path, help="the folder bundle.py collect wrote")
    r.add_argument("--out", type=Path, required=True, help="e.g. results/gpu")
    args = ap.parse_args(argv)
    try:
        if args.action == "pack":
            if not 1 <= args.jpeg_quality <= 100:
                raise BundleError(f"--jpeg-quality {args.jpeg_quality}: expected 1..100")
            try:
                pack(args.profile, args.out, args.set, args.wheels, args.python, args.jpeg_quality, args.max_mib,
                     args.host_has)
            except (ParamError, FileNotFoundError) as err:
                raise BundleError(str(err)) from err
            return 0
        if args.action == "report":
            from cxrbench.ops.bundle import summary

            print(summary.report(args.results, args.out))
            return 0
        return host.dispatch(args)
    except BundleError as err:
        print(f"bundle: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
