"""The offline bundle's runner on the GPU host: unpack it, run the profile in time-boxed steps, collect.

    # exit 0 = the profile is complete, 75 = the step ended at its time limit (run it again), else a failure
    # --work: a new folder, or one an earlier run made (it holds .bundle-work): any other is refused
    python3 .bundle/bundle.py run --bundle .bundle --work /tmp/cxr [--step-seconds 600] [--state-out $OUT]

    # metrics, report and plots (never models) as at most 8 files
    python3 .bundle/bundle.py collect --work /tmp/cxr --out $OUT

``cxrbench bundle pack`` (:mod:`cxrbench.ops.bundle.pack`) copies this file into the bundle as
``bundle.py``; ``cxrbench bundle run|collect`` runs the same code here. On the host cxrbench is not
installed and the source is not yet unpacked, so this file imports only the standard library at module
level and the package nowhere but in :func:`write_params`, which runs in a separate Python whose path
holds the unpacked tree (``tests/ops/test_bundle.py`` runs this file alone with ``python3 -I -S``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

MIB = 1 << 20
STEP_SECONDS = 600             # one device command
STEP_RESERVE_SECONDS = 60      # kept back from a step: a stopped stage's exit, DVC's lock, the state archive
BUDGET_RESERVE_SECONDS = 40    # the same for --budget, whose call has no state archive to write
INTERRUPT_GRACE_SECONDS = 20   # SIGINT to DVC, then SIGKILL
COLLECT_MAX_FILES = 8          # what comes back from a device call's $OUT
COLLECT_FILE_MAX_MIB = 16
COLLECT_MAX_MIB = 64
DEADLINE_EXIT = 75             # = cxrbench.core.runtime.DEADLINE_EXIT (this file runs before the package is unpacked)
# Pipeline paths spelled here, not read from cxrbench.core.paths: this file cannot import the package.
STATE_SKIP = ("data/cache", "data/raw", "data/downloads", "models/classifier", "models/audit", ".dvc/tmp",
              ".dvc/cache", ".site", ".wheels", ".mirror")
RESULT_PARTS = {"metrics.tar.gz": ("metrics", "timing", "dvc.lock", "params.yaml"), "report.tar.gz": ("report",),
                "plots.tar.gz": ("plots",)}
# A budgeted run (--budget): the device's figures, then the plan sized from them (cxrbench.ops.bundle.sizing),
# both collected as they are. DATA_STAGES (and what they depend on) run before the plan: their sizes never change.
BENCH, SIZING, STAGE_WALL = "bench.json", "sizing.json", ".data-stage-wall.json"
DATA_STAGES = ("segment", "confound")
SIZING_CLI = ("-m", "cxrbench.ops.bundle.sizing")
RUN_STATE = ".bundle-run.json"
# Written first into every folder this runner creates (WORK and WORK.unpacking): the only folders it ever
# deletes or reuses. Any other existing --work is refused: it may be the checkout, a home, a user's data.
WORK_MARKER = ".bundle-work"
RUN_LOG = "bundle-run.log"
STAGE_LINE = re.compile(r"^Running stage '([^']+)'")
WRITE_PARAMS = ("import json, sys; from pathlib import Path; from cxrbench.ops.bundle.host import write_params; "
                "write_params(Path(sys.argv[1]), json.loads(sys.argv[2]))")


class BundleError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"bundle: {msg}", flush=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def check_sizes(files: dict[str, int], max_total_mib: float, what: str, max_files: int | None = None,
                max_file_mib: float | None = None) -> None:
    """Fail with the sizes when ``files`` (name -> bytes) break a limit."""
    total = sum(files.values())
    listing = ", ".join(f"{n} {b / MIB:.1f} MiB" for n, b in sorted(files.items(), key=lambda kv: -kv[1]))
    if max_files is not None and len(files) > max_files:
        raise BundleError(f"{what}: {len(files)} files, more than {max_files}: {listing}")
    if max_file_mib is not None:
        big = [n for n, b in files.items() if b > max_file_mib * MIB]
        if big:
            raise BundleError(f"{what}: {big} over {max_file_mib} MiB each ({listing})")
    if total > max_total_mib * MIB:
        raise BundleError(f"{what}: {total / MIB:.1f} MiB, over the {max_total_mib} MiB limit ({listing}). "
                          f"Lower preprocess.size (--set preprocess.size=...), --jpeg-quality, or the "
                          f"Kermany subset (index.kermany_subset)")


def read_manifest(bundle: Path) -> dict:
    path = bundle / "manifest.json"
    if not path.is_file():
        raise BundleError(f"{path} not found: --bundle must be a folder written by `cxrbench bundle pack`")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    for name, info in manifest["files"].items():
        f = bundle / name
        if not f.is_file() or f.stat().st_size != info["bytes"]:
            raise BundleError(f"{f} is missing or has another size than the manifest says: copy the bundle again")
    return manifest


def verify(bundle: Path, manifest: dict) -> None:
    for name, info in manifest["files"].items():
        if sha256(bundle / name) != info["sha256"]:
            raise BundleError(f"{bundle / name} does not match its SHA-256 in the manifest: copy the bundle again")


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract regular files and folders only, refusing absolute paths, '..' and links."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            parts = Path(m.name).parts
            if Path(m.name).is_absolute() or ".." in parts or not (m.isfile() or m.isdir()):
                raise BundleError(f"{archive}: refusing member {m.name!r} (absolute, '..' or not a plain file)")
        for m in tar.getmembers():
            target = dest / m.name
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def host_missing(wheels: list[str]) -> list[str]:
    """The bundled wheels whose distribution the host's Python does not have."""
    import importlib.metadata as md

    missing = []
    for w in wheels:
        name = w.split("-", 1)[0]
        try:
            md.distribution(name)
        except md.PackageNotFoundError:
            missing.append(w)
    return missing


def host_params(tree: Path, overrides: dict, work: Path) -> None:
    """Write the profile's overrides into TREE/params.yaml (a throwaway copy: comments are lost), the study
    mirror's ``@mirror/NAME`` as WORK/.mirror/NAME (TREE becomes WORK once unpacked). The package that
    applies them is the unpacked tree's, which this runner does not import: a Python started in TREE with
    TREE on its PYTHONPATH (:func:`env_for`) runs :func:`write_params`."""
    resolved = {k: (str(work / ".mirror" / v.split("/", 1)[1]) if isinstance(v, str) and v.startswith("@mirror/")
                    else v) for k, v in overrides.items()}
    cmd = [sys.executable, "-c", WRITE_PARAMS, str(tree), json.dumps(resolved)]
    if subprocess.call(cmd, cwd=tree, env=env_for(tree)) != 0:
        raise BundleError(f"could not write the profile's overrides into {tree / 'params.yaml'} (see above)")


def write_params(tree: Path, resolved: dict) -> None:
    """TREE/params.yaml with the ``resolved`` overrides applied; runs in :func:`host_params`'s Python, where
    the unpacked tree's package and PyYAML import."""
    from cxrbench.core import params as P
    import yaml

    raw = yaml.safe_load((tree / "params.yaml").read_text(encoding="utf-8"))
    text = yaml.safe_dump(P.with_overrides(raw, resolved), sort_keys=False, allow_unicode=True, width=120)
    atomic_write(tree / "params.yaml", text.encode())


def env_for(work: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(work / ".site"), str(work)] + ([env["PYTHONPATH"]] if env.get(
        "PYTHONPATH") else []))
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("CXRBENCH_PROGRESS", "lines")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def made_here(folder: Path) -> bool:
    """Whether ``folder`` is a folder this runner created (it holds :data:`WORK_MARKER`)."""
    return folder.is_dir() and not folder.is_symlink() and (folder / WORK_MARKER).is_file()


def check_work(work: Path) -> None:
    """Refuse a ``--work`` that this runner did not create: a file, a link, or a folder with anything in it but
    no :data:`WORK_MARKER` (an empty folder is taken: nothing in it can be lost). Same for WORK.unpacking."""
    if not work.name:
        raise BundleError(f"--work {work}: give the path of a new folder, not a file system root")
    for path, what in ((work, "--work"), (work.with_name(work.name + ".unpacking"), "the unpacking folder")):
        if not (path.exists() or path.is_symlink()) or made_here(path):
            continue
        if path.is_symlink() or not path.is_dir():
            raise BundleError(f"{what} {path} exists and is not a folder: give the path of a new folder "
                              f"(the runner creates it)")
        if any(path.iterdir()):
            raise BundleError(f"{what} {path} is a folder that bundle.py did not create (no {WORK_MARKER} in "
                              f"it): the runner would replace it. Give the path of a new folder, e.g. /tmp/cxr; "
                              f"nothing was changed")


def unpack(bundle: Path, work: Path, manifest: dict, resume_from: Path | None) -> None:
    """Unpack the bundle into WORK.unpacking, then move it to WORK; both are folders this runner created
    (:func:`check_work`, before anything is written)."""
    check_work(work)
    verify(bundle, manifest)
    tmp = work.with_name(work.name + ".unpacking")
    if made_here(tmp):
        shutil.rmtree(tmp)              # left by an unpack that was stopped
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / WORK_MARKER).write_text("created by bundle.py run: the runner may replace this folder\n",
                                   encoding="utf-8")
    safe_extract(bundle / "source.tar.gz", tmp)
    safe_extract(bundle / "mirror.tar", tmp / ".mirror")
    safe_extract(bundle / "wheels.tar", tmp / ".wheels")
    missing = host_missing(manifest["wheels"])
    log(f"installing {len(missing)} of {len(manifest['wheels'])} bundled wheels (the host has the others)")
    if missing:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--target", str(tmp / ".site")] + [str(tmp / ".wheels" / w) for w in missing]
        if subprocess.call(cmd) != 0:
            raise BundleError("pip could not install the bundled wheels (see above)")
    check = subprocess.run([sys.executable, "-c", "import dvc, dvclive, captum, monai, imagehash, timm, torch; "
                            "print(torch.__version__)"], env=env_for(tmp), capture_output=True, text=True)
    if check.returncode != 0:
        raise BundleError(f"the host's Python cannot import what the profile needs:\n{check.stderr[-2000:]}")
    log(f"host torch {check.stdout.strip()}")
    with open(tmp / ".dvc" / "config", "a", encoding="utf-8") as f:   # no git here: DVC without SCM
        f.write("[core]\n    no_scm = True\n    analytics = false\n")
    if resume_from is not None:
        safe_extract(resume_from, tmp)
        log(f"restored the state of {resume_from}")
    host_params(tmp, manifest["overrides"], work)
    check_work(work)                    # again: it may have changed while unpacking
    if made_here(work):
        shutil.rmtree(work)
    os.replace(tmp, work)               # onto nothing, or onto an empty folder


def plan_deadlines(start: float, step_seconds: float, reserve: float = STEP_RESERVE_SECONDS,
                   grace: float = INTERRUPT_GRACE_SECONDS) -> dict:
    """When a step stops DVC (``hard``) and when training loops stop themselves (``soft``: before ``hard``
    by the interrupt grace, so that a loop's last epoch and DVC's exit fit)."""
    if step_seconds <= reserve + grace:
        raise BundleError(f"--step-seconds/--budget {step_seconds}: must exceed the reserve {reserve} s + grace {grace} s")
    hard = start + step_seconds - reserve
    return {"hard": hard, "soft": hard - grace, "end": start + step_seconds}


def stage_seconds(lines: list[tuple[float, str]], end: float) -> dict[str, float]:
    """Wall seconds per stage from DVC's timestamped output ("Running stage 'NAME':" starts one)."""
    out: dict[str, float] = {}
    current, since = None, 0.0
    for t, line in lines:
        m = STAGE_LINE.match(line)
        if m:
            if current is not None:
                out[current] = out.get(current, 0.0) + t - since
            current, since = m.group(1), t
    if current is not None:
        out[current] = out.get(current, 0.0) + end - since
    return out


def run_step(work: Path, deadlines: dict, extra: list[str]) -> tuple[str, dict]:
    """One ``dvc repro`` until it ends or the hard deadline; returns (outcome, seconds per stage)."""
    env = env_for(work)
    env["CXRBENCH_DEADLINE"] = f"{deadlines['soft']:.0f}"
    rwlock = work / ".dvc" / "tmp" / "rwlock"
    if rwlock.exists():          # left by a DVC killed in an earlier step; no DVC runs in WORK now
        rwlock.unlink()
    cmd = [sys.executable, "-m", "dvc", "repro"] + extra
    log(f"{' '.join(cmd[1:])} until {time.strftime('%H:%M:%S', time.localtime(deadlines['hard']))}")
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, bufsize=1)
    lines: list[tuple[float, str]] = []
    interrupted = False
    with open(work / RUN_LOG, "a", encoding="utf-8") as logf:
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            if not interrupted and time.time() > deadlines["hard"]:
                log("hard deadline: interrupting DVC (the running stage reruns in the next step)")
                os.killpg(proc.pid, signal.SIGINT)
                interrupted = True
            if interrupted and time.time() > deadlines["hard"] + INTERRUPT_GRACE_SECONDS and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            if sel.select(timeout=1.0):
                line = proc.stdout.readline()
                if line == "":
                    if proc.poll() is not None:
                        break
                    continue
                now = time.time()
                lines.append((now, line.rstrip("\n")))
                logf.write(f"{time.strftime('%H:%M:%S', time.localtime(now))} {line}")
                print(line, end="", flush=True)
            elif proc.poll() is not None:
                break
    rc = proc.wait()
    seconds = stage_seconds(lines, time.time())
    text = "\n".join(line for _, line in lines)
    if rc == 0:
        return "complete", seconds
    if interrupted or "deadline: " in text:
        return "deadline", seconds
    return f"failed (dvc exit {rc})", seconds


def state_archive(work: Path, out: Path, max_mib: float = COLLECT_FILE_MAX_MIB) -> dict:
    """``out`` = tar.gz of WORK but :data:`STATE_SKIP`; the largest files are left out while it is over
    ``max_mib`` (listed in the return value and the log)."""
    files = []
    for path in sorted(work.rglob("*")):
        rel = path.relative_to(work).as_posix()
        if path.is_file() and not path.is_symlink() and not any(rel == s or rel.startswith(s + "/") for s in STATE_SKIP):
            files.append((rel, path.stat().st_size))
    left_out = []
    budget = max_mib * MIB * 2           # before compression; checked again after
    while sum(b for _, b in files) > budget:
        files.sort(key=lambda f: f[1])
        left_out.append(files.pop())
    with tarfile.open(out, "w:gz", compresslevel=6) as tar:
        for rel, _ in files:
            tar.add(work / rel, arcname=rel, recursive=False)
    if out.stat().st_size > max_mib * MIB:
        raise BundleError(f"state archive {out} is {out.stat().st_size / MIB:.1f} MiB, over {max_mib} MiB")
    return {"files": len(files), "bytes": out.stat().st_size, "left_out": [r for r, _ in left_out]}


def sized(work: Path, deadlines: dict) -> tuple[str, dict]:
    """The budget's first phases (once per WORK): measure the device, run :data:`DATA_STAGES`, size the rest of
    the profile to the time left before the hard deadline (WORK/sizing.json, its overrides into params.yaml).
    Returns (outcome of the data stages, their seconds per stage); a failed measurement or plan is logged and
    leaves the profile's own sizes (sizing.json says why)."""
    env = env_for(work)
    left = deadlines["hard"] - time.time()
    log(f"measuring the device (at most {left:.0f} s)")
    t0 = time.time()
    try:
        rc = subprocess.call([sys.executable, *SIZING_CLI, "measure", "--out", BENCH], cwd=work, env=env,
                             timeout=max(1.0, left))
    except subprocess.TimeoutExpired:
        rc = "timeout"
    measure_s = round(time.time() - t0, 1)
    outcome, seconds = run_step(work, deadlines, list(DATA_STAGES))
    write_json(work / STAGE_WALL, seconds)
    if outcome != "complete":
        return outcome, seconds
    left = deadlines["hard"] - time.time()
    if rc != 0:
        write_json(work / SIZING, {"error": f"measuring failed ({rc}): the profile's own sizes run", "measure_s": measure_s})
        log(f"measuring failed ({rc}): the profile runs at its own sizes until the deadline")
        return outcome, seconds
    plan = subprocess.call([sys.executable, *SIZING_CLI, "plan", "--bench", BENCH, "--seconds-left", f"{left:.0f}",
                            "--stage-wall", STAGE_WALL, "--out", SIZING, "--apply"], cwd=work, env=env)
    if plan != 0:
        write_json(work / SIZING, {"error": f"planning failed ({plan}): the profile's own sizes run", "measure_s": measure_s})
        log("planning failed (see above): the profile runs at its own sizes until the deadline")
    else:
        info = json.loads((work / SIZING).read_text(encoding="utf-8"))
        info["measure_s"] = measure_s
        write_json(work / SIZING, info)
    return outcome, seconds


def run(bundle: Path, work: Path, step_seconds: float, state_out: Path | None, resume_from: Path | None,
        extra: list[str], budget: float | None = None) -> int:
    start = time.time()
    deadlines = (plan_deadlines(start, budget, BUDGET_RESERVE_SECONDS) if budget is not None
                 else plan_deadlines(start, step_seconds))
    check_work(work)
    manifest = read_manifest(bundle)
    state_path = work / RUN_STATE
    if not state_path.is_file():
        log(f"unpacking {bundle} into {work}")
        unpack(bundle, work, manifest, resume_from)
        steps = json.loads(state_path.read_text(encoding="utf-8"))["steps"] if state_path.is_file() else []
        write_json(state_path, {"bundle": manifest["files"]["source.tar.gz"]["sha256"], "profile": manifest.get("profile"),
                                "source": manifest.get("source"), "steps": steps})
    state = json.loads(state_path.read_text(encoding="utf-8"))
    if state["bundle"] != manifest["files"]["source.tar.gz"]["sha256"]:
        raise BundleError(f"{work} was unpacked from another bundle: use a new --work folder")
    seconds: dict[str, float] = {}
    outcome = "complete"
    if budget is not None and not (work / SIZING).is_file():
        outcome, seconds = sized(work, deadlines)
    if outcome == "complete":
        outcome, more = run_step(work, deadlines, extra)
        for k, v in more.items():
            seconds[k] = seconds.get(k, 0.0) + v
    state["steps"].append({"step": len(state["steps"]) + 1, "started": start, "seconds": round(time.time() - start, 1),
                           "budget": budget, "outcome": outcome, "stages": {k: round(v, 1) for k, v in seconds.items()}})
    write_json(state_path, state)
    if state_out is not None:
        state_out.mkdir(parents=True, exist_ok=True)
        info = state_archive(work, state_out / "state.tar.gz")
        log(f"state: {state_out / 'state.tar.gz'} {info['bytes'] / MIB:.1f} MiB, {info['files']} files"
            + (f"; left out {info['left_out']}" if info["left_out"] else ""))
    log(f"step {len(state['steps'])}: {outcome} after {time.time() - start:.0f} s")
    if outcome == "complete":
        return 0
    if outcome == "deadline":
        log("run the same command again to resume")
        return DEADLINE_EXIT
    return 1


# --- collect -------------------------------------------------------------------------

def timings(work: Path) -> dict:
    """Wall seconds per stage (summed over steps) and per step, from WORK's run state."""
    state = json.loads((work / RUN_STATE).read_text(encoding="utf-8"))
    stages: dict[str, float] = {}
    for step in state["steps"]:
        for k, v in step["stages"].items():
            stages[k] = round(stages.get(k, 0.0) + v, 1)
    return {"profile": state.get("profile"), "source": state.get("source"), "steps": state["steps"], "stages": stages,
            "total_seconds": round(sum(s["seconds"] for s in state["steps"]), 1),
            "complete": bool(state["steps"]) and state["steps"][-1]["outcome"] == "complete"}


def collect(work: Path, out: Path) -> dict[str, int]:
    """Metrics, report and plots of WORK (never models) as at most :data:`COLLECT_MAX_FILES` files in ``out``."""
    if not (work / RUN_STATE).is_file():
        raise BundleError(f"{work} holds no bundle run ({RUN_STATE} missing): run `bundle.py run` first")
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, parts in RESULT_PARTS.items():
        with tarfile.open(out / name, "w:gz", compresslevel=9) as tar:
            for part in parts:
                if (work / part).exists():
                    tar.add(work / part, arcname=part)
        written[name] = (out / name).stat().st_size
    write_json(out / "timings.json", timings(work))
    written["timings.json"] = (out / "timings.json").stat().st_size
    for name in (BENCH, SIZING):
        if (work / name).is_file():
            shutil.copyfile(work / name, out / name)
            written[name] = (out / name).stat().st_size
    if (work / RUN_LOG).is_file():
        shutil.copyfile(work / RUN_LOG, out / RUN_LOG)
        written[RUN_LOG] = (out / RUN_LOG).stat().st_size
    check_sizes(written, COLLECT_MAX_MIB, f"collect {out}", COLLECT_MAX_FILES, COLLECT_FILE_MAX_MIB)
    log(f"collected {len(written)} files, {sum(written.values()) / MIB:.1f} MiB in {out}")
    return written


# --- command line (run, collect; ``cxrbench bundle`` adds pack) -------------------------------------

def add_parsers(sub) -> None:
    """The ``run`` and ``collect`` subcommands on ``sub`` (an argparse subparsers object)."""
    r = sub.add_parser("run", help="on the host: unpack (once) and run one time-boxed step")
    r.add_argument("--bundle", type=Path, required=True)
    r.add_argument("--work", type=Path, required=True,
                   help="the run folder, kept between steps: a new (or empty) folder, or one an earlier run made "
                        "(it resumes); any other existing folder is refused, never replaced")
    r.add_argument("--step-seconds", type=float, default=STEP_SECONDS)
    r.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="instead of --step-seconds: measure the device, run the data stages, size the rest of the "
                        "profile to the time left (sizing.json; params.yaml's budget section), run until the budget "
                        "is up; a later run in the same WORK keeps the sizes and resumes")
    r.add_argument("--state-out", type=Path, default=None, help="also write state.tar.gz here after the step")
    r.add_argument("--resume-from", type=Path, default=None, help="a state.tar.gz of an earlier host")
    r.add_argument("dvc_args", nargs="*", help="after --: more arguments of dvc repro (e.g. a stage)")
    c = sub.add_parser("collect", help="metrics, report, plots and timings into at most 8 files")
    c.add_argument("--work", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)


def dispatch(args: argparse.Namespace) -> int:
    """Run the ``run`` or ``collect`` that ``args`` (from :func:`add_parsers`) asks for."""
    if args.action == "run":
        return run(args.bundle, args.work.resolve(), args.step_seconds, args.state_out, args.resume_from,
                   args.dvc_args, args.budget)
    collect(args.work, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="action", required=True)
    add_parsers(sub)
    args = ap.parse_args(argv)
    try:
        return dispatch(args)
    except BundleError as err:
        print(f"bundle: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
