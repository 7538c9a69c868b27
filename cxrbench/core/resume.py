"""Keep an interrupted stage's checkpoints where ``dvc exp run`` cannot delete them.

``dvc repro`` leaves a ``persist`` output in place when it reruns a stage, so the resumable stages (the
classifiers' and the U-Net's training, the aoppc stage's per-model parts) continue from their own
checkpoints. ``dvc exp run``, and so ``cxrbench profiles run``, first checks the whole workspace out with
``force=True`` (``dvc.repo.experiments.executor.base``); the output of a stage that never finished has no
hash in ``dvc.lock``, so that checkout deletes it, checkpoints included, and a rerun started from
epoch 1. ``tests/core/test_resume.py`` shows it on a real ``dvc exp run``.

So each resumable file is also kept in a *slot* of a store outside every DVC output, as a hard link (no
second copy of the bytes while the output exists; a copy where the store is on another file system):

* the store is ``.cxrbench/resume/`` in the repository (:data:`cxrbench.core.paths.RESUME`); a stage run by
  ``dvc exp run --temp`` or ``--queue`` (in ``.dvc/tmp/exps/`` of the repository) uses its repository's, so a
  rerun resumes there too; ``$CXRBENCH_RESUME_DIR`` puts it elsewhere;
* a slot is named by the output and the identity of the run (the digest of the identity the stage checks
  before it resumes: config, data, code), so two experiments never share one;
* :func:`restore` copies back only the files that are missing from the workspace; the stage's own identity
  check then decides, as before, whether they are resumed;
* :func:`forget` deletes the slot once the stage has finished.

Deleting ``.cxrbench/resume`` at any time loses nothing but the ability to resume an interrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from cxrbench.core import paths
from cxrbench.core.runtime import RESUME_ENV

__all__ = ["store", "slot", "keep", "files_under", "restore", "forget"]

MANIFEST = "MANIFEST.json"
DVC_TEMP = (".dvc", "tmp", "exps")          # where dvc exp run --temp / --queue runs a copy of the repository


def store(cwd: str | os.PathLike | None = None) -> Path:
    """The store's folder: ``$CXRBENCH_RESUME_DIR``, else the repository's ``.cxrbench/resume`` (that of the
    repository holding a DVC temporary copy when ``cwd`` lies in one)."""
    env = os.environ.get(RESUME_ENV)
    if env:
        return Path(env).resolve()
    here = Path(cwd if cwd is not None else os.getcwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - len(DVC_TEMP)):
        if parts[i:i + len(DVC_TEMP)] == DVC_TEMP:
            return Path(*parts[:i]) / paths.RESUME
    return here / paths.RESUME


def _target(path: Path, cwd: Path) -> str:
    """``path`` relative to the working directory (the repository root of a stage), else absolute (a test's
    temporary folder): what the slot's manifest records and :func:`restore` writes back to."""
    path = Path(os.path.abspath(path))
    try:
        return path.relative_to(cwd).as_posix()
    except ValueError:
        return path.as_posix()


def slot(name: str | os.PathLike, identity) -> Path:
    """The slot of output ``name`` (a path; its files are kept under their paths) for a run of ``identity``
    (anything JSON can write: its digest names the slot)."""
    cwd = Path(os.getcwd()).resolve()
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    label = _target(Path(name), cwd).strip("/").replace("/", "--")
    return store() / f"{label}@{digest}"


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:                       # another file system, or links not allowed: a copy
        shutil.copy2(src, dst)


def keep(slot_dir: Path, files: Iterable[str | os.PathLike]) -> None:
    """Make ``slot_dir`` hold exactly ``files`` (hard links, listed in its ``MANIFEST`` with the path each goes
    back to), replacing what it held; a missing file or a temporary (a name starting with ".") is skipped.
    The new slot is built beside the old one and renamed onto it: an interruption leaves the old slot or
    the new one, never a half."""
    cwd = Path(os.getcwd()).resolve()
    slot_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{slot_dir.name}.", dir=slot_dir.parent))
    try:
        manifest = {}
        for f in files:
            f = Path(f)
            if not f.is_file() or f.name.startswith("."):
                continue
            name = f"{len(manifest)}-{f.name}"
            _link_or_copy(f, tmp / name)
            manifest[name] = _target(f, cwd)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        old = slot_dir.with_name(f".{slot_dir.name}.old.{os.getpid()}")
        if slot_dir.exists():
            os.replace(slot_dir, old)
        os.replace(tmp, slot_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def files_under(*folders: str | os.PathLike | None) -> list[Path]:
    """Every file inside ``folders`` (None and missing folders skipped)."""
    out: list[Path] = []
    for d in folders:
        if d is not None and Path(d).is_dir():
            out += sorted(p for p in Path(d).rglob("*") if p.is_file())
    return out


def restore(slot_dir: Path) -> list[Path]:
    """Copy back the slot's files that are missing in the workspace (copies: a restored file can then be
    appended to without touching the slot); return the paths written."""
    manifest_path = Path(slot_dir) / MANIFEST
    if not manifest_path.is_file():
        return []
    back = []
    for name, where in json.loads(manifest_path.read_text(encoding="utf-8")).items():
        target, kept = Path(where), Path(slot_dir) / name
        if target.exists() or not kept.is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.restore")
        shutil.copy2(kept, tmp)
        os.replace(tmp, target)
        back.append(target)
    return back


def forget(slot_dir: Path) -> None:
    """Delete the slot (the run it kept has finished). Only a folder inside the store is ever deleted."""
    slot_dir = Path(slot_dir)
    if slot_dir.resolve().parent != store():
        raise ValueError(f"{slot_dir} is not a slot of the resume store {store()}: not deleting it")
    shutil.rmtree(slot_dir, ignore_errors=True)
