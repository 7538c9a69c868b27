"""Checkpoints that are resumed only for the same run, and never execute code.

One mechanism for the U-Net and the classifiers:

* :func:`data_fingerprint` hashes what a model is trained from, as the model
  sees it: the pixels of its training and validation rows (so every
  preprocessing param, the cache recipe and, for the lung-hiding input modes,
  the lung masks are covered without listing them), their targets and paths.
  A model trained before ``split.seed``, the Kermany subset, dedupe, a
  preprocessing param or the lung masks changed is never reused.
* :func:`save` writes ``NAME.pt`` (tensors and plain containers only) and a
  sidecar ``NAME.json`` holding its identity (config digest + data
  fingerprint). :func:`load` reads the sidecar first and unpickles nothing when
  it is missing or does not match; a match is then loaded with
  ``torch.load(weights_only=True)``, so a planted checkpoint cannot run code.
* :func:`mark_finished` writes the sidecar of a finished run's saved models (its identity and
  ``finished: true``) and :func:`clear_finished` deletes it when a run starts changing them; the readers
  compare it with the current identity (:mod:`cxrbench.classify.identity`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from cxrbench.core.io import atomic_path, read_json, write_json

CHUNK = 1 << 24  # rows are hashed in slices of about this many bytes


def _update_rows(h, a: np.ndarray, rows: np.ndarray | None = None) -> None:
    """Hash ``a[rows]`` (all of ``a`` when rows is None) with its dtype and shape, slice by slice, so the
    selected rows are never copied whole (the training part of a 512 px cache is hundreds of MB)."""
    if rows is None:
        a = np.asarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        if a.ndim == 0 or a.size == 0:
            h.update(np.ascontiguousarray(a).tobytes())
            return
        rows = np.arange(len(a))
    else:
        h.update(f"{a.dtype.str}{(len(rows),) + tuple(a.shape[1:])}".encode())
        if len(rows) == 0:
            return
    per_row = max(1, CHUNK // max(1, a[0].nbytes))
    for i in range(0, len(rows), per_row):
        h.update(np.ascontiguousarray(a[rows[i:i + per_row]]).tobytes())


def data_fingerprint(arrays: Mapping[str, np.ndarray | tuple[np.ndarray, np.ndarray]],
                     meta: Mapping[str, Any] | None = None) -> str:
    """SHA-256 of named arrays (e.g. ``train_images``, ``train_targets``) and JSON-able ``meta``.

    A value is an array, or ``(array, rows)`` for the rows of an array. Arrays are
    hashed with their dtype and shape, in name order; paths go in ``meta`` (lists
    of strings).
    """
    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(name.encode())
        value = arrays[name]
        _update_rows(h, *value) if isinstance(value, tuple) else _update_rows(h, value)
    h.update(json.dumps(meta or {}, sort_keys=True, default=str).encode())
    return h.hexdigest()


def rows_fingerprint(images: np.ndarray, targets: np.ndarray | None, rows: Mapping[str, np.ndarray],
                     paths: Mapping[str, list[str]], meta: Mapping[str, Any] | None = None) -> str:
    """:func:`data_fingerprint` of the given cache rows per part (``train``, ``val``): pixels, targets, paths."""
    arrays = {}
    for part, r in rows.items():
        r = np.asarray(r, dtype=np.int64)
        arrays[f"{part}_images"] = (images, r)
        if targets is not None:
            arrays[f"{part}_targets"] = (targets, r)
    return data_fingerprint(arrays, {"paths": {k: list(v) for k, v in paths.items()}, **(meta or {})})


def sidecar(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def save(path: str | Path, state: dict, identity: dict) -> None:
    """Write ``state`` to ``path`` (atomic) and ``identity`` to its sidecar JSON.

    The old sidecar goes first: a crash in between leaves no sidecar, so the
    checkpoint is not resumed rather than resumed under the wrong identity.
    """
    import torch

    path = Path(path)
    sidecar(path).unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    write_json(sidecar(path), identity)


def load(path: str | Path, identity: dict) -> tuple[dict | None, str]:
    """``(state, "resumed")`` when ``path``'s sidecar matches ``identity``; else ``(None, why)``.

    Nothing is unpickled unless the sidecar matches, and then only tensors and
    plain containers (``weights_only=True``).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        return None, "none yet"
    side = sidecar(path)
    if not side.is_file():
        return None, f"{path} has no identity file {side.name} (older format or interrupted write): not loaded"
    try:
        found = read_json(side)
    except (OSError, ValueError) as err:
        return None, f"{side} is unreadable ({err}): not loaded"
    if found != identity:
        diff = sorted(k for k in set(found) | set(identity) if found.get(k) != identity.get(k))
        return None, f"{path} was trained with other {', '.join(diff)}: not reused"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure: refuse the file, name it, start afresh
        return None, (f"{path} matches its identity but does not load as plain weights ({type(err).__name__}: "
                      f"{str(err).splitlines()[0] if str(err) else ''}); delete it to silence this")
    return state, "resumed"


def clear_finished(model_paths) -> None:
    """Delete the finished-records (sidecars) of saved models that a training run is about to rewrite."""
    for p in model_paths:
        sidecar(p).unlink(missing_ok=True)


def mark_finished(model_paths, identity: dict) -> None:
    """Write ``identity`` with ``finished: true`` as the sidecar of each saved model that exists: only a run
    whose last epoch is done calls this, so a model without it is from an unfinished (or older) run."""
    for p in model_paths:
        if Path(p).is_file():
            write_json(sidecar(p), {**identity, "finished": True})


def load_weights(path: str | Path, what: str = "model") -> dict:
    """A finished model file, loaded as plain weights only (no code runs); a clear error otherwise."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found: run the stage that trains it first")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise RuntimeError(f"{what} {path} does not load as plain weights ({type(err).__name__}); it was not "
                           f"written by this version or was tampered with: delete it and rerun its stage") from err
