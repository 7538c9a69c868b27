"""The one-factor ablation ladder: from the authors' code to our rebuilt cohort, one change per row.

``params.yaml: ablation`` lists the rows. Each row's ``set`` adds param
overrides to the row it starts ``from`` (default: the row above), so a row's
full overrides are the profile's, ``ablation.set`` and every ``set`` up its
chain; :func:`ladder` resolves them and ``results/ablation.md`` prints each
row's complete ``dvc exp run -S`` line, which reruns that row in the pipeline.

    cxrbench ablation run              # every row: ~45 min on a 2-core CPU (ci settings)
    cxrbench ablation run --only label_table
    cxrbench ablation table            # results/ablation.{md,json} from the finished rows

``run`` clones the committed HEAD into ``--workdir`` (with ``shared`` beside it,
as in CI) and, row by row, writes that row's params.yaml into the clone and runs
the stage scripts the row needs (the pipeline's own, with nothing added):
download once; index, split and preprocess when their params changed; then
train and evaluate ``ablation.backbone`` on each of ``train.folds``. The train
stage resumes a finished run whose configuration and training data are
identical (:mod:`cxrbench.core.checkpoints`), so a row that only changes how
predictions are scored (checkpoint, threshold rule, leaked test images) re-scores
the same trained models, and a row that changes the training data or recipe
retrains: which one happened is read from the train metrics, not assumed.
Each row's predictions, eval and train metrics and the test images' findings
are kept under ``WORKDIR/rows/NAME``; ``table`` reads only those.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from cxrbench.core import paths
from cxrbench.ops.ablation_table import write_table
from cxrbench.core.io import read_json, write_json
from cxrbench.ops.ladder import ladder, row_params, stage_keys, validate
from cxrbench.core.params import apply_protocol, section

DEFAULT_WORKDIR = Path("/tmp/cxrbench-ablation")


# --- running ----------------------------------------------------------------------------------

def _git(args: list[str], cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def prepare_clone(repo: Path, workdir: Path) -> Path:
    """A clone of ``repo``'s HEAD at ``workdir/main`` with ``shared`` beside it; reused while HEAD is the same."""
    clone = workdir / "main"
    head = _git(["rev-parse", "HEAD"], repo)
    if clone.is_dir() and _git(["rev-parse", "HEAD"], clone) != head:
        print(f"ablation: {clone} is at another commit; cloning HEAD {head[:8]} afresh", flush=True)
        shutil.rmtree(clone)
    if not clone.is_dir():
        workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "--quiet", str(repo), str(clone)], check=True)
    shared, link = repo.resolve().parent / "shared", workdir / "shared"
    if shared.exists() and not link.exists():
        link.symlink_to(shared)
    return clone


def _stage(clone: Path, log, script: str, *args: str) -> None:
    """Run ``stages/NAME.py`` in ``clone`` as dvc.yaml does, as a module: the clone's package is the code."""
    cmd = [sys.executable, "-m", script.removesuffix(".py").replace("/", "."), *args]
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg", "CXRBENCH_PROGRESS": "lines"}
    code = subprocess.call(cmd, cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"ablation: `{' '.join(cmd[1:])}` failed (exit {code}) in {clone}: see {log.name}")


def run_row(clone: Path, workdir: Path, base: dict, profile: dict, ablation: dict, row: dict) -> dict:
    """Run one row in ``clone``; keep its outputs under ``workdir/rows/NAME``."""
    params = row_params(base, profile, ablation, row)
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    state_path = workdir / "state.json"
    state = read_json(state_path) if state_path.is_file() else {}
    keys = stage_keys(params)
    out = workdir / "rows" / row["name"]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    backbone = ablation["backbone"]
    with open(out / "log.txt", "w", encoding="utf-8") as log:
        if not state.get("downloaded"):
            for source in section(params, "download.sources"):
                _stage(clone, log, "stages/download.py", source)
            state["downloaded"] = True
        ran = []
        if state.get("index") != keys["index"]:
            _stage(clone, log, "stages/index.py")
            for stale in ("split", "preprocess"):       # both read the index
                state.pop(stale, None)
            ran.append("index")
        for stage in ("split", "preprocess"):
            if state.get(stage) != keys[stage]:
                _stage(clone, log, f"stages/{stage}.py")
                ran.append(stage)
        state.update(keys)
        write_json(state_path, state)
        for k in ablation["folds"]:
            _stage(clone, log, "stages/train.py", backbone, str(k))
            _stage(clone, log, "stages/evaluate.py", backbone, str(k))
            fold_dir = out / f"f{k}"
            fold_dir.mkdir()
            shutil.copy(clone / paths.run("main", backbone, k).predictions, fold_dir / "predictions.csv")
            shutil.copy(clone / paths.run("main", backbone, k).eval_metrics, fold_dir / "eval.json")
            shutil.copy(clone / paths.run("main", backbone, k).train_metrics, fold_dir / "train.json")
    index = pd.read_csv(clone / paths.INDEX, keep_default_na=False,
                        usecols=["path", "source", "patient", "group", "finding"])
    index.to_csv(out / "images.csv", index=False)
    shutil.copy(clone / paths.DATA_METRICS, out / "data.json")
    audit = read_json(clone / paths.COHORT_AUDIT)
    info = {"name": row["name"], "change": row["change"], "from": row["from"], "set": row["set"],
            "overrides": row["overrides"], "stages_run": ran, "seconds": round(time.perf_counter() - t0, 1),
            "commit": _git(["rev-parse", "HEAD"], clone), "cohort": apply_protocol(params)["cohort"],
            "test_images_removed_as_leaked": audit.get("test_images_removed_as_leaked"),
            "runtime": read_json(out / f"f{ablation['folds'][0]}" / "train.json").get("runtime")}
    write_json(out / "row.json", info)
    return info


def run(repo: Path, workdir: Path, only: list[str] | None = None) -> None:
    from cxrbench.ops.profiles import read_profile, resolve_paths

    base = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    ablation = validate(base)
    rows = ladder(base)
    names = [r["name"] for r in rows]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise SystemExit(f"--only: unknown row(s) {unknown}; rows are {names}")
    dirty = _git(["status", "--porcelain", "--untracked-files=no"], repo)
    if dirty:
        raise SystemExit(f"ablation: commit or stash tracked changes first; the rows run the committed HEAD:\n{dirty}")
    clone = prepare_clone(repo, workdir)
    profile = resolve_paths(read_profile(ablation["profile"], clone), clone)
    for row in rows:
        if only and row["name"] not in only:
            continue
        print(f"ablation: row {row['name']!r}: {row['change']}", flush=True)
        info = run_row(clone, workdir, base, profile, ablation, row)
        print(f"ablation: row {row['name']!r} done in {info['seconds'] / 60:.1f} min "
              f"(stages rerun: {', '.join(info['stages_run']) or 'none'})", flush=True)


# --- command line -----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cxrbench ablation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="action", required=True)
    r = sub.add_parser("run", help="run the ladder's rows in a clone of HEAD")
    r.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    r.add_argument("--only", nargs="+", metavar="ROW", help="run these rows only (in ladder order)")
    t = sub.add_parser("table", help="write results/ablation.{md,json} from the finished rows")
    t.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    t.add_argument("--out", type=Path, default=Path(paths.ABLATION_RESULTS), help="path without suffix")
    args = ap.parse_args(argv)
    if args.action == "run":
        run(Path("."), args.workdir, args.only)
        return 0
    write_table(Path("params.yaml"), args.workdir, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
