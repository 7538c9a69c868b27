"""``cxrbench scale``: the pipeline's matrix stages as Ray tasks on one machine or a cluster (docs/scale.md).

    cxrbench scale plan                               # what runs where, and each task's resources
    cxrbench scale run --workers 2                    # a local Ray with 2 CPUs
    cxrbench scale run --profile sample --workers 2   # a profile's values written into params.yaml first
    cxrbench scale run --address auto                 # a running Ray cluster (ray start / KubeRay / SLURM)
    cxrbench scale sweep --set train.seed=1 --set train.seed=2 --set train.lr=0.001 --set train.lr=0.01
    cxrbench scale check --workers 2                  # the fan-out on a toy project, compared with serial DVC

``run`` and ``sweep`` need Ray: ``pip install -e .[scale]``. A run's resources per task are
``params.yaml: scale``. ``--profile``/``--set`` rewrite params.yaml (its comments are lost, as with
``cxrbench run --workspace``), so they are refused while params.yaml has uncommitted changes:
``git checkout params.yaml`` brings the committed one back.
"""

from __future__ import annotations

import argparse
import filecmp
import itertools
import sys
import tempfile
from pathlib import Path

import yaml

from cxrbench.core.params import ParamError, load, parse_overrides, with_overrides
from cxrbench.ops.scale import plan as planning

__all__ = ["main", "apply_overrides", "grid", "compare_trees"]


def apply_overrides(root: Path, overrides: dict) -> None:
    """Write ``overrides`` (dotted keys) into ``root/params.yaml``; refused while it has uncommitted changes."""
    if not overrides:
        return
    from cxrbench.ops.scale.worker import git

    if git(["status", "--porcelain", "--", "params.yaml"], root).strip():
        raise ParamError("params.yaml", "has uncommitted changes, which --profile/--set would overwrite; "
                                        "commit them, or `git checkout params.yaml`, first")
    raw = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    new = with_overrides(raw, overrides)
    tmp = root / "params.yaml.cxrbench-tmp"
    tmp.write_text(yaml.safe_dump(new, sort_keys=False, allow_unicode=True), encoding="utf-8")
    tmp.replace(root / "params.yaml")


def grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """``--set`` items of a sweep: the values given for one key are its alternatives, and the experiments are
    every combination over the keys. Returns (name, ["key=value", ...]) per experiment."""
    values: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        parse_overrides([item])                      # a bad item is refused here, naming it
        values.setdefault(key.strip(), []).append(value)
    exps = []
    for combo in itertools.product(*values.values()):
        sets = [f"{k}={v}" for k, v in zip(values, combo)]
        name = "-".join(f"{k.split('.')[-1]}{''.join(c for c in v if c.isalnum() or c in '._')}"
                        for k, v in zip(values, combo))
        exps.append((name[:60], sets))
    return exps


def compare_trees(a: Path, b: Path, paths: list[str]) -> list[str]:
    """The files under ``paths`` whose bytes differ between trees ``a`` and ``b`` (or exist in one only)."""
    diffs = []
    for top in paths:
        files = set()
        for base in (a, b):
            p = base / top
            if p.is_file():
                files.add(top)
            elif p.is_dir():
                files |= {q.relative_to(base).as_posix() for q in p.rglob("*") if q.is_file()
                          and not q.name.startswith(".") and q.name != ".gitignore"}
        for f in sorted(files):
            if not ((a / f).is_file() and (b / f).is_file() and filecmp.cmp(a / f, b / f, shallow=False)):
                diffs.append(f)
    return diffs


def _plan(root: Path, overrides: dict) -> planning.Plan:
    """The plan under ``overrides`` (the matrix cells follow the params, e.g. ``train.backbones``), read in a
    throwaway worktree of HEAD so that the workspace's params.yaml is not touched."""
    if not overrides:
        return planning.make_plan(root, planning.settings(load(root / "params.yaml")))
    from cxrbench.ops.scale.worker import git

    with tempfile.TemporaryDirectory(prefix="cxrbench-scale-plan-") as tmp:
        wt = Path(tmp) / "plan"
        git(["worktree", "add", "-q", "--detach", str(wt), "HEAD"], root)
        try:
            (wt / "params.yaml").write_bytes((root / "params.yaml").read_bytes())
            raw = yaml.safe_load((wt / "params.yaml").read_text(encoding="utf-8"))
            (wt / "params.yaml").write_text(yaml.safe_dump(with_overrides(raw, overrides), sort_keys=False),
                                            encoding="utf-8")
            return planning.make_plan(wt, planning.settings(load(wt / "params.yaml")))
        finally:
            git(["worktree", "remove", "--force", str(wt)], root)


def _check(args) -> int:
    """The toy project run by ``scale run`` and by serial ``dvc repro``; outputs compared byte for byte."""
    from cxrbench.ops.scale import coordinator, toy, worker

    with tempfile.TemporaryDirectory(prefix="cxrbench-scale-check-") as tmp:
        fanned, serial = toy.make(Path(tmp) / "fanned"), toy.make(Path(tmp) / "serial")
        worker.dvc(["repro", "-q"], serial)
        conf = planning.settings(load(fanned / "params.yaml"))
        plan = planning.make_plan(fanned, conf)
        outcome = coordinator.run(fanned, conf, plan, plan.outs, address=args.address, workers=args.workers)
        diffs = compare_trees(fanned, serial, plan.outs)
        print(f"{len(plan.outs)} outputs compared with serial dvc repro: "
              f"{'byte-identical' if not diffs else 'DIFFERENT: ' + ', '.join(diffs)}")
        return 0 if outcome.ok and not diffs else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cxrbench scale", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    cluster = argparse.ArgumentParser(add_help=False)
    cluster.add_argument("--address", help="a running Ray cluster: auto, or ray://HEAD:10001 (default: start "
                                           "a local Ray)")
    cluster.add_argument("--workers", type=int, help="local Ray only: CPUs it offers (default: all)")
    cluster.add_argument("--gpus", type=int, help="local Ray only: GPUs it offers (default: those it finds)")
    settings = argparse.ArgumentParser(add_help=False)
    settings.add_argument("--profile", help="write profiles/NAME.yaml's values into params.yaml first")
    settings.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="write a params value into params.yaml first (repeatable)")
    sub.add_parser("plan", parents=[settings], help="show the shared stages, the tasks and the aggregates")
    run = sub.add_parser("run", parents=[cluster, settings], help="run the pipeline with its matrix stages as tasks")
    run.add_argument("--keep-worktrees", action="store_true", help="keep each task's worktree after it succeeds")
    run.add_argument("--no-final", action="store_true",
                     help="stop after the tasks (the run-cache restores and the aggregates are left to dvc repro)")
    sw = sub.add_parser("sweep", parents=[cluster], help="one experiment per combination of --set values")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", required=True,
                    help="a value of a sweep axis; repeat a key for its alternatives")
    sub.add_parser("check", parents=[cluster], help="the fan-out on a toy project, compared with serial DVC")
    args = ap.parse_args(argv)
    root = Path(".").resolve()
    try:
        if args.cmd == "check":
            return _check(args)
        from cxrbench.ops.scale import coordinator

        if args.cmd == "sweep":
            conf = planning.settings(load(root / "params.yaml"))
            exps = grid(args.set)
            print(f"{len(exps)} experiment(s): " + "; ".join(f"{n} ({' '.join(s)})" for n, s in exps))
            uncached = sorted({u for t in planning.make_plan(root, conf).tasks.values() for u in t.uncached})
            status = coordinator.sweep(root, conf, exps, uncached, address=args.address, workers=args.workers,
                                       gpus=args.gpus)
            print("dvc exp show lists them")
            return 0 if not any(status.values()) else 1
        overrides = {}
        if args.profile:
            from cxrbench.ops.profiles import read_profile, resolve_paths

            overrides.update(resolve_paths(read_profile(args.profile, root), root))
        overrides.update(parse_overrides(args.set))
        if args.cmd == "plan":
            print(_plan(root, overrides).describe())
            return 0
        apply_overrides(root, overrides)
        conf = planning.settings(load(root / "params.yaml"))
        plan = planning.make_plan(root, conf)
        outcome = coordinator.run(root, conf, plan, plan.outs, address=args.address, workers=args.workers,
                                  gpus=args.gpus, keep=args.keep_worktrees, final=not args.no_final)
        return 0 if outcome.ok else 1
    except (ParamError, RuntimeError, FileNotFoundError) as err:
        print(f"cxrbench scale: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        if err.name == "ray":
            print("cxrbench scale: Ray is not installed: pip install -e .[scale] (or ray==2.60.0)", file=sys.stderr)
            return 2
        raise
