"""Atomic file writes: a crash never leaves a half-written output behind.

A write never deletes a folder that cxrbench did not write (:func:`atomic_path`), and a command checks that its
output can be written before it starts (:func:`check_writable`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

# Written into every folder that atomic_path publishes: the proof that a later write may replace it.
# .gitignore and .dvcignore list it, so it changes neither git's view nor DVC's hash of an output folder.
OUTPUT_MARKER = ".cxrbench-output"
DVC_YAML = "dvc.yaml"


class OutputPathError(OSError):
    """An output path that cannot or must not be written (a user's folder, a file where a folder is, ...)."""


def _real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The body writes a file or a folder at the yielded path; on an exception the temporary is removed and
    ``path`` keeps its previous content.

    The rule for an existing folder at ``path``: it is replaced only by a folder, and only when it is an
    output this package wrote (:func:`owned_output`: it holds :data:`OUTPUT_MARKER`, which every folder
    published here gets, or it is, or lies inside, an output that the project's ``dvc.yaml`` declares).
    Any other existing folder is an :class:`OutputPathError` naming it, raised before the body runs; a
    file is never written over a folder (error after the body, the folder untouched). A user's folder is
    never removed. The replaced folder is first renamed into the temporary, so that ``path`` is never
    missing, and deleted with it.
    """
    path = Path(path)
    if path.is_dir() and not owned_output(path):     # a link to a folder too
        raise OutputPathError(
            f"{path} is an existing folder that cxrbench did not write (no {OUTPUT_MARKER} in it, not an output "
            f"in {DVC_YAML}): refusing to replace it. Give the path of a new file or folder, or move {path} "
            f"away yourself")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if _real_dir(target):
            (target / OUTPUT_MARKER).write_text("written by cxrbench; the next run may replace this folder\n",
                                                encoding="utf-8")
            if _real_dir(path):
                if not owned_output(path):        # checked again: it may have changed while the body ran
                    raise OutputPathError(f"{path} is now a folder that cxrbench did not write: not replacing it")
                previous = tmp / f"{path.name}.previous"
                os.replace(path, previous)
                try:
                    os.replace(target, path)
                except OSError:
                    os.replace(previous, path)
                    raise
                return
            if path.exists() or path.is_symlink():
                raise OutputPathError(f"{path} is a file or link, not a folder: move it away, then rerun")
        elif path.is_dir():
            raise OutputPathError(f"{path} is a folder: a file cannot be written over it; give the path of a "
                                  f"file (the folder is left as it was)")
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def owned_output(path: str | os.PathLike) -> bool:
    """Whether the folder ``path`` is a cxrbench output that :func:`atomic_path` may replace: it holds
    :data:`OUTPUT_MARKER`, or it is (or lies inside) an ``outs``/``metrics``/``plots`` path of a stage of the
    nearest ``dvc.yaml`` above it (a folder DVC itself deletes before rerunning that stage)."""
    path = Path(path)
    return (path / OUTPUT_MARKER).is_file() or declared_output(path)


def declared_output(path: str | os.PathLike) -> bool:
    """Whether ``path`` is, or lies inside, an output of a stage of the nearest DVC project (a folder with
    ``dvc.yaml`` and ``.dvc/``) above it. ``${...}`` in a declared path (foreach, matrix) matches one
    path component."""
    import yaml

    path = Path(path).resolve()
    root = next((d for d in path.parents if (d / DVC_YAML).is_file() and (d / ".dvc").is_dir()), None)
    if root is None:
        return False
    try:
        stages = (yaml.safe_load((root / DVC_YAML).read_text(encoding="utf-8")) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError):
        return False                   # an unreadable dvc.yaml declares nothing: the folder stays
    rel = path.relative_to(root).as_posix()
    for stage in stages.values():
        if not isinstance(stage, dict):
            continue
        body = stage.get("do", stage) if isinstance(stage.get("do"), dict) else stage
        wdir = str(body.get("wdir", "."))
        for kind in ("outs", "metrics", "plots"):
            for entry in body.get(kind) or []:
                name = next(iter(entry), None) if isinstance(entry, dict) else entry
                if not isinstance(name, str):
                    continue
                out = os.path.normpath(os.path.join(wdir, name)).replace(os.sep, "/")
                if out in (".", "") or out.startswith("../") or os.path.isabs(out):
                    continue
                pattern = "".join("[^/]+" if part.startswith("${") else re.escape(part)
                                  for part in re.split(r"(\$\{[^}]*\})", out))
                if re.fullmatch(f"{pattern}(/.+)?", rel):
                    return True
    return False


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Check, before any work, that the file ``path`` can be written: it is not a folder, its nearest existing
    ancestor is a folder, and a temporary file can be created (and is removed) there. Raises
    :class:`OutputPathError` naming ``path``; returns it as a Path."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is a folder: give the path of a file (e.g. {path / 'out.csv'})")
    where = next((d for d in path.parents if d.exists() or d.is_symlink()), Path("."))
    if not where.is_dir():
        raise OutputPathError(f"{what} {path}: {where} is not a folder, so nothing can be written under it")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.probe.", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputPathError(f"{what} {path}: cannot write in {where} ({err.strerror or err}): choose a "
                              f"writable folder") from err
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # another user's live process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries ``.NAME.PID.XXXX`` of ``path`` left by writers that were killed (PID gone).

    A killed stage otherwise leaves them forever, some inside another stage's dependency folder.
    """
    path = Path(path)
    prefix = f".{path.name}."
    removed = []
    if not path.parent.is_dir():
        return removed
    for old in path.parent.iterdir():
        if not old.name.startswith(prefix):
            continue
        pid = old.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
            removed.append(old)
    return removed


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


class BadJSONError(ValueError):
    """A JSON file that does not parse (truncated, corrupt, not text); the message names the file."""


def read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadJSONError(f"{path}: not valid JSON ({err}); the file is corrupt or truncated: "
                           f"rerun the stage that writes it, or restore it (git checkout / dvc checkout)") from err


def write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame atomically, without its index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
