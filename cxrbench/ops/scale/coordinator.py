"""The coordinator of ``cxrbench scale``: the shared stages in the workspace, the matrix cells as Ray tasks
(the only module of the project that imports Ray), then plain ``dvc repro``, which restores the cells the
workers finished from DVC's run-cache and runs the aggregates (a cell with persistent outputs, which the
run-cache skips, is taken by its ``dvc.lock`` entry as it finishes: :func:`worker.adopt`). Progress is stages done out of total; a failed
task names its stage and log; a rerun resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cxrbench.ops.scale import worker
from cxrbench.ops.scale.plan import Plan, Settings, base_name

__all__ = ["Outcome", "check_clean", "start_ray", "run", "sweep", "RESTORED", "WORKDIR"]

RESTORED = "is cached - skipping run"          # DVC's line for a stage restored from the run-cache
WORKDIR = Path(".dvc/tmp/scale")
# `dvc exp run` in two worktrees of one clone can start at the same moment and meet on the one ref where DVC
# stashes an experiment's changes (refs/exps/stash); the loser stops before running anything, so it is retried
STASH_RACE, STASH_ATTEMPTS = "refs/exps/stash.lock", 5               # worktrees and logs of the tasks (ignored by git and DVC)


@dataclass
class Outcome:
    done: list[str] = field(default_factory=list)             # finished by a task this run
    up_to_date: list[str] = field(default_factory=list)       # already finished before this run
    failed: dict[str, str] = field(default_factory=dict)      # stage -> message naming its log
    skipped: dict[str, str] = field(default_factory=dict)     # stage -> the failed stage it needed
    results: list[worker.Result] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)         # cells the final dvc repro took from the run-cache
    rerun: list[str] = field(default_factory=list)            # cells the final dvc repro ran again (should be none)
    times: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped and not self.rerun


def check_clean(root: Path, outs: list[str]) -> str:
    """HEAD's commit, which every worker checks out; refused while tracked code differs from it (a worker would
    run other code than the coordinator, and DVC would rerun its stage). params.yaml, dvc.lock and the
    pipeline's own outputs may differ: params.yaml and dvc.lock are sent to each task."""
    changed = worker.git(["status", "--porcelain", "--untracked-files=no"], root).splitlines()
    allowed = {"params.yaml", "dvc.lock"}
    bad = []
    for line in changed:
        path = line[3:].split(" -> ")[-1].strip('"')
        if path in allowed or any(path == o or path.startswith(o.rstrip("/") + "/") for o in outs):
            continue
        bad.append(path)
    if bad:
        raise RuntimeError(f"{root}: {len(bad)} tracked file(s) differ from the commit the workers check out "
                           f"({', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}); commit them first")
    return worker.git(["rev-parse", "HEAD"], root).strip()


def start_ray(address: str | None, workers: int | None, gpus: int | None, log: Callable[[str], None]):
    """Connect to a Ray cluster (``address``: ``auto`` or ``ray://host:10001``), or start a local one with
    ``workers`` CPUs (default: all) and ``gpus`` GPUs (default: those Ray finds)."""
    import ray

    t0 = time.time()
    if address:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    else:
        package_root = str(Path(__file__).resolve().parents[3])
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
        kwargs = {"num_cpus": workers} if workers else {}
        if gpus is not None:
            kwargs["num_gpus"] = gpus
        ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path}}, **kwargs)
    res = ray.cluster_resources()
    log(f"ray: {res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU on {len(ray.nodes())} node(s), "
        f"started in {time.time() - t0:.1f} s")
    return ray, time.time() - t0


def _feasible(ray, plan: Plan) -> None:
    res = ray.cluster_resources()
    for t in plan.tasks.values():
        if t.cpus > res.get("CPU", 0) or t.gpus > res.get("GPU", 0):
            key = "scale.gpus" if t.gpus > res.get("GPU", 0) else "scale.cpus"
            raise RuntimeError(f"{t.stage} asks for {t.cpus} CPU and {t.gpus} GPU, but the Ray cluster has "
                               f"{res.get('CPU', 0):g} CPU and {res.get('GPU', 0):g} GPU: lower params.yaml "
                               f"`{key}.{base_name(t.stage)}` (or `.default`), or add nodes")


def _stream(cmd: list[str], cwd: Path, log: Callable[[str], None]) -> tuple[int, str]:
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    lines = []
    for line in proc.stdout:
        lines.append(line)
        log("  | " + line.rstrip())
    return proc.wait(), "".join(lines)


def _stop_tasks(root: Path) -> None:
    """The coordinator stops early (Ctrl-C, an error): Ray's workers go with it, but the ``dvc repro`` each
    started runs in a session of its own; stop those process groups (recorded in each worktree)."""
    for wt in sorted((root / WORKDIR / "worktrees").glob("*")):
        worker._stop_leftover(wt)


def _cause(err: BaseException) -> BaseException:
    return getattr(err, "cause", None) or err


def run(root: Path, conf: Settings, plan: Plan, outs: list[str], *, address: str | None = None,
        workers: int | None = None, gpus: int | None = None, keep: bool = False, final: bool = True,
        log: Callable[[str], None] = print) -> Outcome:
    """Run the pipeline of ``root`` with the plan's cells as Ray tasks (see the module docstring)."""
    root = root.resolve()
    out = Outcome()
    t_start = time.time()
    commit = check_clean(root, outs)
    dvc = [sys.executable, "-m", "dvc"]
    if plan.upstream:
        log(f"shared stages in the workspace: dvc repro {' '.join(plan.upstream)}")
        rc, _ = _stream([*dvc, "repro", *plan.upstream], root, log)
        if rc != 0:
            raise RuntimeError(f"the shared stages failed (dvc repro exited with {rc}); fix them and rerun")
    out.times["upstream"] = time.time() - t_start
    names = list(plan.tasks)
    status = json.loads(worker.dvc(["status", "--json", *names], root) or "{}")
    out.up_to_date = [n for n in names if n not in status]
    todo = [n for n in names if n in status]
    total = len(names)
    log(f"{len(out.up_to_date)}/{total} matrix stages up to date; {len(todo)} to run as Ray tasks")
    if todo:
        cache_dir = worker.dvc(["cache", "dir"], root).strip()
        spec0 = {"root": str(root), "commit": commit, "workdir": str(root / WORKDIR), "cache_dir": cache_dir,
                 "params": (root / "params.yaml").read_text(encoding="utf-8"),
                 "lock": (root / "dvc.lock").read_text(encoding="utf-8") if (root / "dvc.lock").exists() else "",
                 "threads": conf.threads, "keep": keep}
        ray, out.times["ray_start"] = start_ray(address, workers, gpus, log)
        try:
            _fan_out(ray, root, plan, todo, spec0, conf, out, total, log)
        except BaseException:
            _stop_tasks(root)
            raise
        finally:
            ray.shutdown()
        for name in list(out.failed):                  # a cell that failed because a cell it needs failed
            need = next((n for n in plan.tasks[name].needs if n in out.failed), None)
            if need is not None and need != name:
                out.skipped[name] = need
                del out.failed[name]
    out.times["tasks"] = time.time() - t_start - out.times["upstream"]
    if out.failed or out.skipped:
        log(f"{len(out.done) + len(out.up_to_date)}/{total} matrix stages done; failed: {len(out.failed)}, "
            f"not started: {len(out.skipped)}")
        for stage, msg in out.failed.items():
            log(f"FAILED {msg}")
        for stage, need in out.skipped.items():
            log(f"not started: {stage} (needs {need})")
        log("rerun the same command to resume: finished stages are kept, training resumes from its last "
            "checkpoint (the failed task's worktree is kept)")
        return out
    if final:
        t0 = time.time()
        log("dvc repro: finished cells from the run-cache, then the aggregate stages")
        rc, text = _stream([*dvc, "repro"], root, log)
        out.times["final"] = time.time() - t0
        ran = {line.split("'")[1] for line in text.splitlines() if line.startswith("Running stage '")}
        out.restored = [n for n in names if f"Stage '{n}' {RESTORED}" in text]
        out.rerun = sorted(ran & set(names))
        if rc != 0:
            raise RuntimeError(f"the final dvc repro exited with {rc}; its output is above")
        if out.rerun:
            log(f"WARNING: dvc repro ran {out.rerun} again instead of restoring them: their workers ran on "
                f"other code, data or params than the workspace")
    out.times["total"] = time.time() - t_start
    log(f"{total}/{total} matrix stages done ({len(out.done)} by tasks, {len(out.restored)} restored from the "
        f"run-cache) in {out.times['total']:.1f} s")
    return out


def _fan_out(ray, root: Path, plan: Plan, todo: list[str], spec0: dict, conf: Settings, out: Outcome,
             total: int, log: Callable[[str], None]) -> None:
    remote = ray.remote(worker.run_task)
    refs, pending = {}, {}
    for name in todo:                                  # plan order is topological
        task = plan.tasks[name]
        needed = []
        for need in task.needs:
            if need in refs:
                needed.append(refs[need])
            else:                                      # finished earlier: shipped from the workspace
                t = plan.tasks[need]
                needed.append(worker.collect(root, need, t.uncached, t.persist))
        spec = {**spec0, "stage": name, "upstream": task.upstream, "uncached": task.uncached,
                "persist": task.persist}
        ref = remote.options(num_cpus=task.cpus, num_gpus=task.gpus, max_retries=conf.retries,
                             retry_exceptions=False, name=name).remote(spec, *needed)
        refs[name] = ref
        pending[ref] = name
    log(f"submitted {len(pending)} tasks")
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        name = pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except Exception as err:                      # noqa: BLE001 - reported by stage, never swallowed
            cause = _cause(err)
            if isinstance(cause, worker.StageFailed) and cause.stage != name:
                out.skipped[name] = cause.stage
            elif isinstance(cause, worker.StageFailed):
                out.failed[name] = str(cause)
            else:
                log_path = root / WORKDIR / "logs" / f"{name}.log"
                out.failed[name] = f"stage {name}: {type(cause).__name__}: {str(cause)[:2000]}; log: {log_path}"
            log(f"[{len(out.done) + len(out.up_to_date)}/{total}] {name}: "
                f"{'not started, needs ' + out.skipped[name] if name in out.skipped else 'FAILED'}")
            continue
        if result.persist:                             # the run-cache cannot carry it: take DVC's lock entry
            worker.adopt(root, [result])
        out.done.append(name)
        out.results.append(result)
        t = result.times
        log(f"[{len(out.done) + len(out.up_to_date)}/{total}] {name} done on {result.node}: run {t['run']:.1f} s "
            f"(worktree {t['worktree']:.1f} s, checkout {t['checkout']:.1f} s, collect {t['collect']:.1f} s)")


def sweep(root: Path, conf: Settings, experiments: list[tuple[str, list[str]]], uncached: list[str], *,
          address: str | None = None,
          workers: int | None = None, gpus: int | None = None, log: Callable[[str], None] = print) -> dict:
    """One Ray task per experiment: the whole pipeline (``dvc repro``) in its own worktree at HEAD with the
    experiment's values, on the shared cache (so stages another experiment already ran come from the
    run-cache), saved as a DVC experiment (``dvc exp save``; ``uncached``: the pipeline's ``cache: false``
    outputs, included in it). The experiments are refs of the shared clone: ``dvc exp show`` in the workspace
    lists them. Returns name -> error or ''."""
    root = root.resolve()
    commit = check_clean(root, [])
    cache_dir = worker.dvc(["cache", "dir"], root).strip()
    cpus, gpus_per = max(conf.cpus.values()), max(conf.gpus.values())
    ray, _ = start_ray(address, workers, gpus, log)
    status = {}
    try:
        remote = ray.remote(_experiment)
        pending = {remote.options(num_cpus=cpus, num_gpus=gpus_per, max_retries=conf.retries, name=name).remote(
            str(root), commit, cache_dir, name, sets, conf.threads, uncached): name for name, sets in experiments}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(ready[0])
            try:
                ray.get(ready[0])
                status[name] = ""
            except Exception as err:                  # noqa: BLE001 - reported by name
                status[name] = str(_cause(err))
            log(f"[{len(status)}/{len(experiments)}] {name}: {'done' if not status[name] else 'FAILED'}")
    finally:
        ray.shutdown()
    for name, err in status.items():
        if err:
            log(f"FAILED {name}: {err}")
    return status


def _experiment(root: str, commit: str, cache_dir: str, name: str, sets: list[str], threads: int,
                uncached: list[str]) -> None:
    """One experiment of a sweep: ``dvc repro`` in its own worktree with the values written into its
    params.yaml, then ``dvc exp save --name NAME`` (one at a time: DVC keeps an experiment's bookkeeping in
    refs that every worktree of the clone shares, and two ``dvc exp run``/``save`` at once break on them)."""
    import fcntl

    from cxrbench.core.params import parse_overrides
    from cxrbench.ops.scale.cli import apply_overrides
    from cxrbench.ops.scale.plan import slug

    workdir = Path(root) / WORKDIR
    wt = workdir / "worktrees" / f"exp-{slug(name)}"
    log = workdir / "logs" / f"exp-{slug(name)}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    worker._stop_leftover(wt)
    if worker._worktree(Path(root), commit, wt):
        worker.git(["checkout", "--", "params.yaml"], wt)        # a retry starts from the commit's values
    worker._share_cache(wt, cache_dir)
    apply_overrides(wt, parse_overrides(sets))
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n=== experiment {name}: {' '.join(sets)}\n")
        f.flush()
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=wt, stdout=f, stderr=subprocess.STDOUT,
                                env=worker._env(threads), start_new_session=True)
        (wt / worker.PIDFILE).parent.mkdir(parents=True, exist_ok=True)
        (wt / worker.PIDFILE).write_text(str(proc.pid))
        rc = proc.wait()
    (wt / worker.PIDFILE).unlink(missing_ok=True)
    if rc != 0:
        raise worker.StageFailed(f"experiment {name}", str(log), f"dvc repro exited with {rc}")
    include = [arg for p in uncached if (wt / p).exists() for arg in ("-I", p)]
    with open(workdir / "exp-save.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        out = worker.dvc(["exp", "save", "--name", name, *include], wt)
    with open(log, "a", encoding="utf-8") as f:
        f.write(out)
    worker.git(["worktree", "remove", "--force", str(wt)], Path(root))
