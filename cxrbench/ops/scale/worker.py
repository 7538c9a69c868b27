"""What one task of ``cxrbench scale`` does, on whichever node Ray puts it: a git worktree of the coordinator's
commit, the coordinator's params.yaml and dvc.lock, the shared DVC cache, then ``dvc repro --single-item STAGE``.
Plain functions (no Ray here): the coordinator wraps :func:`run_task` as a Ray task, and the tests call it too.

Why :func:`adopt` exists. DVC's run-cache restores a stage only when none of its outputs is ``persist: true``
(``dvc/stage/cache.py: _can_hash``), and the training stages keep ``last.pt`` persistent so that a rerun
resumes; nor does DVC save a run-cache entry for a stage with a ``cache: false`` output that is neither a
metric nor a plot (``dvc/stage/__init__.py: Stage.run``), which every stage here has (its timing record,
its detailed JSONs). A result of such a stage travels instead as DVC's own record of it, the worker's ``dvc.lock`` entry
(command, deps and params hashes, output hashes), with the bytes of its ``cache: false`` outputs; its cached
outputs are already in the shared cache. :func:`adopt` writes the entry into the receiving ``dvc.lock``, checks
the outputs out of the cache, and ``dvc status`` must then call the stage up to date there, which it does only
when the receiving workspace has the same deps and params: nothing is merged on trust.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

__all__ = ["Result", "StageFailed", "run_task", "adopt", "collect", "merge_lock", "dvc", "git", "MAX_SHIPPED_BYTES", "PIDFILE"]

MAX_SHIPPED_BYTES = 256 * 2**20       # cache: false outputs travel through Ray's object store; more is a mistake
PIDFILE = ".dvc/tmp/cxrbench-scale.pid"


class StageFailed(RuntimeError):
    """A task's stage failed; the message names the stage and its log."""

    def __init__(self, stage: str, log: str, detail: str):
        super().__init__(f"stage {stage} failed: {detail}; log: {log}")
        self.stage, self.log, self.detail = stage, log, detail

    def __reduce__(self):
        return (StageFailed, (self.stage, self.log, self.detail))


@dataclass
class Result:
    """A finished stage: its ``dvc.lock`` entry, its ``cache: false`` outputs, and where the time went."""
    stage: str
    entry: dict
    files: dict[str, bytes]
    persist: bool
    times: dict[str, float] = field(default_factory=dict)
    node: str = ""
    log: str = ""


def _env(threads: int | None) -> dict:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    if threads is not None:
        for key in ("CXRBENCH_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[key] = str(threads)
    return env


def _check(cmd: list[str], cwd: Path, what: str, env: dict | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env or _env(None))
    if done.returncode != 0:
        raise RuntimeError(f"{what}: `{' '.join(cmd)}` in {cwd} exited with {done.returncode}:\n"
                           f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


def dvc(args: list[str], cwd: Path, env: dict | None = None) -> str:
    """Run ``dvc ARGS`` (this interpreter's DVC) in ``cwd``; an error carries its output."""
    return _check([sys.executable, "-m", "dvc", *args], cwd, "dvc", env)


def git(args: list[str], cwd: Path) -> str:
    return _check(["git", *args], cwd, "git")


# --- results: collect one, adopt some ---------------------------------------------------------------

def collect(repo: Path, stage: str, uncached: list[str], persist: bool) -> Result:
    """The finished ``stage`` of ``repo``: its ``dvc.lock`` entry and the bytes of its ``cache: false`` outputs."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text(encoding="utf-8")) or {}
    entry = (lock.get("stages") or {}).get(stage)
    if entry is None:
        raise RuntimeError(f"{repo / 'dvc.lock'} has no entry for {stage} although its dvc repro succeeded")
    files, total = {}, 0
    for out in uncached:
        path = repo / out
        paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for p in paths:
            if not p.is_file():
                raise RuntimeError(f"{stage}: declared output {out} was not written ({p})")
            data = p.read_bytes()
            total += len(data)
            files[p.relative_to(repo).as_posix()] = data
    if total > MAX_SHIPPED_BYTES:
        raise RuntimeError(f"{stage}: its cache: false outputs {uncached} hold {total / 2**20:.0f} MiB; "
                           f"make the large ones cached outputs (they travel through the shared DVC cache)")
    return Result(stage=stage, entry=entry, files=files, persist=persist)


def _replace_outputs(repo: Path, result: Result) -> None:
    """Write a result's ``cache: false`` outputs into ``repo``; a directory output is replaced whole."""
    tops = {Path(o["path"]) for o in result.entry.get("outs", [])}
    for top in tops:
        target = repo / top
        shipped = {k: v for k, v in result.files.items() if Path(k) == top or top in Path(k).parents}
        if not shipped or (len(shipped) == 1 and Path(next(iter(shipped))) == top):
            continue
        if target.is_dir():                       # a directory output of this stage: its old files go
            old = target.with_name(target.name + ".cxrbench-old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            shutil.rmtree(old)
    for rel, data in result.files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".cxrbench-tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)


def merge_lock(repo: Path, results: list[Result]) -> None:
    """Put the results' entries into ``repo/dvc.lock``, with DVC's own YAML round trip."""
    from dvc.utils.serialize import modify_yaml

    lock = repo / "dvc.lock"
    if not lock.exists():
        lock.write_text("schema: '2.0'\nstages: {}\n", encoding="utf-8")
    with modify_yaml(str(lock)) as data:
        data.setdefault("schema", "2.0")
        if data.get("stages") is None:
            data["stages"] = {}
        for r in results:
            data["stages"][r.stage] = r.entry


def adopt(repo: Path, results: list[Result], verify: bool = True) -> None:
    """Make finished stages of other workspaces finished here: their ``cache: false`` outputs written, their
    ``dvc.lock`` entries merged, their cached outputs checked out of the (shared) cache, and then, with
    ``verify``, ``dvc status`` must report them up to date, i.e. this workspace has the deps and params they ran
    on."""
    if not results:
        return
    for r in results:
        _replace_outputs(repo, r)
    merge_lock(repo, results)
    names = [r.stage for r in results]
    dvc(["checkout", "-q", *names], repo)
    if verify:
        import json

        status = json.loads(dvc(["status", "--json", *names], repo) or "{}")
        stale = {k: v for k, v in status.items() if k in names}
        if stale:
            raise RuntimeError(f"in {repo}, {sorted(stale)} are not up to date after taking the workers' results "
                               f"({stale}): the worker ran on other code, data or params than this workspace")


# --- one task ----------------------------------------------------------------------------------------

def _stop_leftover(worktree: Path) -> None:
    """A killed task's ``dvc repro`` may outlive it (Ray kills the worker, not its children): stop the process
    group that this module started there, recorded in the pidfile, before the retry reuses the worktree."""
    pidfile = worktree / PIDFILE
    if not pidfile.exists():
        return
    try:
        pid = int(pidfile.read_text().strip())
        same = Path(f"/proc/{pid}/cwd").resolve() == worktree.resolve()
    except (ValueError, OSError):
        same = False
    if same:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            for _ in range(50):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
    pidfile.unlink(missing_ok=True)


def _worktree(root: Path, commit: str, path: Path) -> bool:
    """A worktree of ``root`` at ``commit`` at ``path``; True when an earlier attempt's was reused (resume)."""
    if (path / ".git").exists():
        head = git(["rev-parse", "HEAD"], path).strip()
        if head == commit:
            return True
        git(["worktree", "remove", "--force", str(path)], root)
    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):                     # concurrent `git worktree add` can meet a lock; try again
        try:
            git(["worktree", "add", "-q", "--detach", str(path), commit], root)
            return False
        except RuntimeError:
            if attempt == 2:
                raise
            time.sleep(1 + attempt)
    return False


def _share_cache(wt: Path, cache_dir: str) -> None:
    """The worktree's ``.dvc/config.local`` (what ``dvc cache dir --local`` writes, without two DVC starts):
    the coordinator's cache, linked rather than copied where the filesystem allows."""
    (wt / ".dvc").mkdir(exist_ok=True)
    (wt / ".dvc" / "config.local").write_text(f'[cache]\n    dir = {cache_dir}\n'
                                              f'    type = "reflink,hardlink,copy"\n', encoding="utf-8")


def run_task(spec: dict, *needed: Result) -> Result:
    """Run ``spec['stage']`` in its own worktree, after adopting the results it depends on (``needed``).

    ``spec``: root, commit, stage, workdir, cache_dir, params (text), lock (text), upstream, uncached, persist,
    threads, keep (keep the worktree after success)."""
    t0 = time.time()
    root, stage = Path(spec["root"]), spec["stage"]
    from cxrbench.ops.scale.plan import slug

    workdir = Path(spec["workdir"])
    wt = workdir / "worktrees" / slug(stage)
    log = workdir / "logs" / f"{slug(stage)}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    (workdir / "logs" / f"{slug(stage)}.task-pid").write_text(str(os.getpid()))
    _stop_leftover(wt)
    reused = _worktree(root, spec["commit"], wt)
    t1 = time.time()
    (wt / "params.yaml").write_text(spec["params"], encoding="utf-8")
    (wt / "dvc.lock").write_text(spec["lock"], encoding="utf-8")
    _share_cache(wt, spec["cache_dir"])
    for r in needed:
        _replace_outputs(wt, r)
    merge_lock(wt, list(needed))
    targets = [*spec["upstream"], *(r.stage for r in needed)]
    if targets:
        dvc(["checkout", "-q", *targets], wt)
    t2 = time.time()
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n=== {stage} on {socket.gethostname()} in {wt} "
                f"({'resumed worktree' if reused else 'new worktree'}), {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--single-item", stage], cwd=wt,
                                stdout=f, stderr=subprocess.STDOUT, env=_env(spec["threads"]),
                                start_new_session=True)
        (wt / PIDFILE).parent.mkdir(parents=True, exist_ok=True)
        (wt / PIDFILE).write_text(str(proc.pid))
        rc = proc.wait()
    (wt / PIDFILE).unlink(missing_ok=True)
    t3 = time.time()
    if rc != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        raise StageFailed(stage, str(log), f"dvc repro exited with {rc} (worktree kept for a resume: {wt}); "
                                           f"last lines:\n    " + "\n    ".join(tail))
    result = collect(wt, stage, spec["uncached"], spec["persist"])
    if not spec.get("keep"):
        git(["worktree", "remove", "--force", str(wt)], root)
    t4 = time.time()
    result.times = {"worktree": t1 - t0, "checkout": t2 - t1, "run": t3 - t2, "collect": t4 - t3,
                    "start": t0, "end": t4}
    result.node, result.log = socket.gethostname(), str(log)
    return result
