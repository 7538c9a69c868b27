"""Measure how far the gate's metrics move when nothing but the machine changes.

Training on a CPU is deterministic on one machine with one thread count, but
not across them: another thread count splits floating-point sums differently,
another CPU picks other kernels (oneDNN, AVX2 vs AVX-512), and a few epochs of
training amplify a 1e-7 difference into a different model. The gate must
tolerate that and nothing more, so its tolerances come from this measurement.

``params.yaml: gate.perturbations`` names runs of the reference profile
(``gate.profile``): environment variables (``env``: e.g. ``CXRBENCH_THREADS``,
or ``ONEDNN_MAX_CPU_ISA`` / ``ATEN_CPU_CAPABILITY`` to take the kernels of a
CPU without AVX-512) and param overrides (``set``: e.g. another training seed,
the largest change a CPU can bring). The run named ``reference`` has neither
and becomes the baseline.

    cxrbench spread measure            # every perturbation, then collect (about 15 min a run on 2 cores)
    cxrbench spread measure --only threads1 seed43
    cxrbench spread collect WORKDIR    # rewrite the spread JSON from finished runs
    cxrbench spread table              # the committed spread as a markdown table (docs/ci-and-gate.md)

``measure`` clones the committed HEAD once per run into ``--workdir`` (with the
``shared`` folder beside it, as in CI), runs ``cxrbench profiles run
PROFILE --workspace`` there, keeps each run's ``metrics/`` and log, then
``collect`` writes ``gate.spread`` (values per run, range, and a leave-one-out
check: would each run pass a gate whose tolerances came from the others?) and,
with ``--snapshot``, the baseline from the ``reference`` run.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cxrbench.ops.gate import (SPREAD, GateConfig, config_from_params, current_values, evaluate, failed, label,
                               tolerances, write_per_image_baseline)
from cxrbench.core import paths
from cxrbench.core.io import read_json, write_json
from cxrbench.core.params import ParamError, load, section

REFERENCE = "reference"


def perturbations(params: dict) -> dict[str, dict]:
    """``gate.perturbations``, validated: {name: {"env": {VAR: str}, "set": {key: value}}}."""
    raw = section(params, "gate.perturbations")
    if not isinstance(raw, dict) or REFERENCE not in raw:
        raise ParamError("gate.perturbations", f"expected a mapping of run names to {{env, set}} that includes "
                                               f"{REFERENCE!r} (the unperturbed run, which becomes the baseline)")
    out = {}
    for name, spec in raw.items():
        spec = spec or {}
        if not isinstance(spec, dict) or set(spec) - {"env", "set"}:
            raise ParamError(f"gate.perturbations.{name}", f"expected {{env: {{VAR: value}}, set: {{key: value}}}}, "
                                                          f"got {spec!r}")
        env = {str(k): str(v) for k, v in (spec.get("env") or {}).items()}
        sets = dict(spec.get("set") or {})
        if name == REFERENCE and (env or sets):
            raise ParamError(f"gate.perturbations.{REFERENCE}", "the reference run must change nothing")
        for key in sets:
            section(params, key)  # a misspelt key fails here, naming it
        out[str(name)] = {"env": env, "set": sets}
    return out


def profile_name(params: dict) -> str:
    name = section(params, "gate").get("profile")
    if not isinstance(name, str) or not name:
        raise ParamError("gate.profile", "expected the name of the profile whose runs the baseline comes from")
    return name


def _git(args: list[str], cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def run_one(repo: Path, workdir: Path, name: str, spec: dict, profile: str) -> dict:
    """Clone HEAD into ``workdir/name``, run the profile under ``spec``; keep metrics/ and the log."""
    clone = workdir / "clones" / name
    if clone.exists():
        shutil.rmtree(clone)
    clone.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "--quiet", str(repo), str(clone)], check=True)
    shared = repo.resolve().parent / "shared"
    link = clone.parent / "shared"           # the clone's ../shared, as beside a CI clone
    if shared.exists() and not link.exists():
        link.symlink_to(shared)
    for key, value in (("user.email", "spread@localhost"), ("user.name", "cxrbench spread")):
        subprocess.run(["git", "config", key, value], cwd=clone, check=True)
    cmd = [sys.executable, "-m", "cxrbench.ops.profiles", "run", profile, "--workspace", "--name", f"spread-{name}"]
    for key, value in spec["set"].items():
        cmd += ["--set", f"{key}={_yaml_value(value)}"]
    env = {**os.environ, **spec["env"], "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    out = workdir / "runs" / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    print(f"spread: run {name!r}: {' '.join(cmd)} (env {spec['env'] or '-'}); log {out / 'log.txt'}", flush=True)
    t0 = time.perf_counter()
    with open(out / "log.txt", "w", encoding="utf-8") as log:
        code = subprocess.call(cmd, cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"spread run {name!r} failed (exit {code}): see {out / 'log.txt'}")
    shutil.copytree(clone / paths.METRICS, out / "metrics")
    info = {"name": name, "env": spec["env"], "set": spec["set"], "seconds": round(seconds, 1),
            "commit": _git(["rev-parse", "HEAD"], clone),
            "runtime": read_json(clone / paths.UNET_METRICS).get("runtime")}
    write_json(out / "run.json", info)
    shutil.rmtree(clone)
    print(f"spread: run {name!r} done in {seconds / 60:.1f} min", flush=True)
    return info


def _yaml_value(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def collect(workdir: Path, cfg: GateConfig, names: list[str]) -> dict:
    """The spread JSON from finished runs under ``workdir/runs``."""
    runs, values = {}, {}
    for name in names:
        run_dir = workdir / "runs" / name
        if not (run_dir / "run.json").is_file():
            raise FileNotFoundError(f"{run_dir / 'run.json'} not found: run `cxrbench spread measure "
                                    f"--only {name}` first")
        runs[name] = read_json(run_dir / "run.json")
        values[name] = current_values(cfg.checks, run_dir)
    metrics = {}
    for c in cfg.checks:
        vals = {n: values[n][c.metric] for n in names}
        finite = [v for v in vals.values() if v is not None and math.isfinite(v)]
        metrics[c.metric] = {
            "values": vals, "direction": c.direction, "reason": c.reason,
            "min": min(finite) if finite else None, "max": max(finite) if finite else None,
            "range": (max(finite) - min(finite)) if finite else None,
            "mean": sum(finite) / len(finite) if finite else None,
            "sd": (math.sqrt(sum((v - sum(finite) / len(finite)) ** 2 for v in finite) / (len(finite) - 1))
                   if len(finite) > 1 else None)}
    spread = {"profile": None, "spread_factor": cfg.spread_factor, "runs": runs, "metrics": metrics}
    # Leave-one-out: tolerances from the other runs only; does the left-out run pass against the reference?
    loo = {}
    if REFERENCE in names:
        for name in names:
            if name == REFERENCE:
                continue
            tol = tolerances(cfg.checks, spread, cfg.spread_factor, exclude=name)
            rows = evaluate(cfg.checks, values[REFERENCE], values[name], tol)
            loo[name] = {"passes": not failed(rows),
                         "failing": [f"{r['metric']} ({r['status']})" for r in failed(rows)]}
    spread["leave_one_out"] = loo
    return spread


def markdown(spread: dict, cfg: GateConfig) -> str:
    """The spread JSON as a table: each guarded metric's value per run, its range and the tolerance."""
    names = list(spread["runs"])
    tol = tolerances(cfg.checks, spread, cfg.spread_factor)
    head = ("| metric | " + " | ".join(names) + " | range | tolerance |\n|---|" + "---|" * (len(names) + 2))
    lines = []
    for c in cfg.checks:
        d = spread["metrics"].get(c.metric, {})
        vals = d.get("values", {})
        cells = ["-" if vals.get(n) is None else f"{vals[n]:.4f}" for n in names]
        key = label(c.metric)[1]
        t = tol.get(c.metric)
        lines.append(f"| `{key}` ({c.direction}) | " + " | ".join(cells) +
                     f" | {d.get('range', 0) or 0:.4f} | {'-' if t is None else f'{t:.4f}'} |")
    runs = "; ".join(f"{n}: {r.get('seconds', 0) / 60:.1f} min" for n, r in spread["runs"].items())
    cpu = next(iter(spread["runs"].values())).get("runtime") or {}
    loo = spread.get("leave_one_out", {})
    loo_text = "; ".join(f"{n} {'passes' if r['passes'] else 'fails: ' + ', '.join(r['failing'])}"
                         for n, r in loo.items())
    return (head + "\n" + "\n".join(lines) + f"\n\nRuns of the `{spread.get('profile')}` profile on "
            f"{cpu.get('cpu', '?')} ({cpu.get('cpu_capability', '?')}, torch {cpu.get('torch', '?')}), 2 cores; "
            f"wall time per run (other jobs shared the cores): {runs}. Leave-one-out (tolerances from the other "
            f"runs only): {loo_text or 'not computed'}.\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cxrbench spread", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["measure", "collect", "table"])
    ap.add_argument("workdir", nargs="?", default="/tmp/cxrbench-spread",
                    help="where clones and finished runs go (default /tmp/cxrbench-spread)")
    ap.add_argument("--only", nargs="+", help="run only these perturbations (collect still reads all)")
    ap.add_argument("--snapshot", action="store_true", help="also write gate.baseline from the reference run")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    params = load(args.params)
    cfg = config_from_params(params)
    runs = perturbations(params)
    profile = profile_name(params)
    workdir = Path(args.workdir)
    if args.action == "table":
        print(markdown(read_json(cfg.spread), cfg))
        return 0
    if args.action == "measure":
        repo = Path(".").resolve()
        dirty = _git(["status", "--porcelain", "--untracked-files=no"], repo)
        if dirty:
            print("spread: uncommitted changes to tracked files are not measured (each run clones HEAD):\n"
                  + dirty, file=sys.stderr)
            return 1
        unknown = sorted(set(args.only or []) - set(runs))
        if unknown:
            raise ParamError("gate.perturbations", f"--only names {unknown}, not among {sorted(runs)}")
        for name in args.only or runs:
            run_one(repo, workdir, name, runs[name], profile)
    if cfg.spread is None:
        raise ParamError("gate.spread", "expected the path the spread JSON is written to")
    present = [n for n in runs if (workdir / "runs" / n / "run.json").is_file()]
    if set(present) != set(runs):
        return _collect_part(workdir, cfg, runs, present, args.snapshot)
    spread = collect(workdir, cfg, list(runs))
    spread["profile"] = profile
    write_json(cfg.spread, spread)
    print(f"wrote {cfg.spread}: {len(spread['runs'])} runs")
    for m, d in spread["metrics"].items():
        print(f"  {m}: range {d['range']}, values {d['values']}")
    for name, r in spread["leave_one_out"].items():
        print(f"  leave-one-out {name}: {'passes' if r['passes'] else 'FAILS ' + ', '.join(r['failing'])}")
    if args.snapshot:
        write_json(cfg.baseline, current_values(cfg.checks, workdir / "runs" / REFERENCE))
        print(f"wrote {cfg.baseline} from the {REFERENCE!r} run")
    untested = [c.metric for c in cfg.checks if c.tolerance == SPREAD and spread["metrics"][c.metric]["range"] is None]
    not_finite = {c.metric: d["values"] for c in cfg.checks for d in [spread["metrics"][c.metric]]
                  if any(v is not None and not math.isfinite(v) for v in d["values"].values())}
    if not_finite:                                 # the gate fails these checks (NOT FINITE (spread))
        print(f"runs gave values that are not finite numbers: {not_finite}", file=sys.stderr)
        return 1
    if untested:
        print(f"no spread measured for {untested}", file=sys.stderr)
        return 1
    return 0


def merge(old: dict, part: dict, checks: list) -> dict:
    """``old`` (the committed spread JSON) with the entries of ``checks`` replaced by ``part`` (:func:`collect`
    over the runs of their ``spread_runs``): each such entry carries the runs it was measured over (``runs``:
    commit, machine, seconds), while the top-level ``runs`` and every other check stay the measurement they came
    from. Leave-one-out of the new runs is added under ``leave_one_out`` with the runs named."""
    metrics = {**old.get("metrics", {}), **{c.metric: {**part["metrics"][c.metric], "runs": part["runs"]}
                                            for c in checks}}
    loo = {**old.get("leave_one_out", {}), **{f"{k} (over {', '.join(sorted(part['runs']))})": v
                                               for k, v in part["leave_one_out"].items()}}
    return {**old, "metrics": metrics, "leave_one_out": loo}


def _collect_part(workdir: Path, cfg: GateConfig, runs: dict, present: list[str], snapshot: bool) -> int:
    """Some perturbations have finished runs, not all: refresh only the checks whose ``spread_runs`` are all
    among them (e.g. paired checks over the machine runs), keep the rest of the committed spread, and say so.
    ``snapshot``: their baseline values (and per-image baseline) from this ``reference`` run; every other
    check keeps its baseline, the reference run of its own spread."""
    own = [c for c in cfg.checks if c.tolerance == SPREAD and c.spread_runs and set(c.spread_runs) <= set(present)]
    missing = sorted(set(runs) - set(present))
    if not own:
        print(f"spread: no run of {missing} under {workdir / 'runs'}; run `cxrbench spread measure --only "
              f"{' '.join(missing)}`, or give a check spread_runs among {present}", file=sys.stderr)
        return 1
    names = sorted({n for c in own for n in c.spread_runs}, key=list(runs).index)
    part_cfg = GateConfig(cfg.baseline, cfg.spread, cfg.spread_factor, own, cfg.per_image_baseline,
                          cfg.paired_min_share, cfg.paired_max_tolerance)
    part = collect(workdir, part_cfg, names)
    old = read_json(cfg.spread) if cfg.spread.is_file() else {"metrics": {}, "runs": {}}
    write_json(cfg.spread, merge(old, part, own))
    print(f"wrote {cfg.spread}: {len(own)} check(s) measured over {names} (their spread_runs); the other checks "
          f"keep the committed spread (runs {missing} not here)")
    tol = tolerances(own, part, cfg.spread_factor)
    for c in own:
        d = part["metrics"][c.metric]
        print(f"  {c.metric}: range {d['range']}, tolerance {tol[c.metric]}, values {d['values']}")
    if snapshot:
        if REFERENCE not in names:
            print(f"spread: --snapshot needs the {REFERENCE!r} run among {names}", file=sys.stderr)
            return 1
        ref = workdir / "runs" / REFERENCE
        base = read_json(cfg.baseline) if cfg.baseline.is_file() else {}
        write_json(cfg.baseline, {**base, **current_values(own, ref)})
        print(f"wrote {cfg.baseline}: the baseline of those {len(own)} check(s) from the {REFERENCE!r} run")
        if any(c.paired for c in own):
            write_per_image_baseline(part_cfg, ref, keep_others=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
