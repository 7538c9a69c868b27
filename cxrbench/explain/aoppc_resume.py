"""Resume the aoppc stage: each scored model's share of the results is saved as soon as it is done.

At the study's sizes one model's maps take a quarter of an hour of perturbations on 2 CPU cores, and the
stage scores every backbone x fold. Each model's part of the accumulator (its per-image values, map
statuses, randomisation counts, patients, paths and curve rows) is written atomically to
``core.paths.aoppc_partial(backbone, fold)`` (a ``persist`` output of the stage, so ``dvc repro`` keeps it
across an interrupted run; ``dvc exp run`` deletes it, so the stage also keeps it in a slot of
:mod:`cxrbench.core.resume`) with an identity: the digest of everything the part was computed from (the model's
attribution file and checkpoint, the stage's params and the source of the package folders the stage
runs). A rerun takes a part only when that identity matches; any other part is scored again.

No pickle: arrays in an ``.npz`` read with ``allow_pickle=False``, the rest as JSON text inside it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from cxrbench.explain.metrics import tables as AT

# the package folders the aoppc stage runs (its deps in dvc.yaml): a change to their source is a new identity
CODE = ("core", "data", "lungs", "classify", "explain")
ABSENT = "no saved part"


def _file_digest(path: Path, h) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def code_digest(package: Path | None = None) -> str:
    """The digest of every ``.py`` of the package folders in :data:`CODE` (computed once per stage run)."""
    h = hashlib.sha256()
    root = Path(package) if package is not None else Path(__file__).resolve().parents[1]
    for sub in CODE:
        for f in sorted((root / sub).rglob("*.py")):
            h.update(str(f.relative_to(root)).encode())
            _file_digest(f, h)
    return h.hexdigest()


def identity(params: dict, attributions: Path, checkpoint: Path, code: str) -> str:
    """The digest of what one model's part is computed from: ``params`` (the stage's, as a dict), the bytes of
    its attribution file and checkpoint, and ``code`` (:func:`code_digest`)."""
    h = hashlib.sha256()
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    for p in (attributions, checkpoint):
        h.update(str(Path(p).name).encode())
        _file_digest(Path(p), h)
    h.update(code.encode())
    return h.hexdigest()


def part(scores: dict, curves: list[dict], backbone: str, fold: int) -> dict:
    """One model's share of the accumulator and its curve rows, in arrays and JSON-able values."""
    fk = AT.fold_key(fold)
    blocks = [b for b in scores["blocks"] if b[1] == backbone and b[2] == fk]
    arrays = {}
    for k, (_, _, _, _, values, images) in enumerate(blocks):
        arrays[f"values{k}"] = np.asarray(values, dtype=np.float64)
        arrays[f"images{k}"] = np.asarray(images, dtype=np.int64)
    status = {m: st for (m, bb, f), st in scores["status"].items() if bb == backbone and f == fk}
    for k, (m, st) in enumerate(status.items()):
        arrays[f"status{k}"] = np.asarray(st, dtype=str)
    sanity = {m: {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in split.items()}
              for (m, bb, f), split in scores["sanity"].items() if bb == backbone and f == fk}
    if (backbone, fk) in scores["groups"]:
        arrays["groups"] = np.asarray(scores["groups"][(backbone, fk)], dtype=str)
    if (backbone, fk) in scores.get("paths", {}):
        arrays["paths"] = np.asarray(scores["paths"][(backbone, fk)], dtype=str)
    meta = {"blocks": [[m, metric] for m, _, _, metric, _, _ in blocks], "status": list(status),
            "sanity": sanity, "curves": curves}
    return {"arrays": arrays, "meta": meta}


def merge(scores: dict, saved: dict, backbone: str, fold: int) -> list[dict]:
    """Put a saved part back into ``scores`` (as :func:`score_model` would have) and return its curve rows."""
    fk = AT.fold_key(fold)
    a, meta = saved["arrays"], saved["meta"]
    for k, (m, metric) in enumerate(meta["blocks"]):
        scores["blocks"].append((m, backbone, fk, metric, a[f"values{k}"], a[f"images{k}"]))
    for k, m in enumerate(meta["status"]):
        scores["status"][(m, backbone, fk)] = np.asarray(a[f"status{k}"], dtype=object)
    for m, split in meta["sanity"].items():
        scores["sanity"][(m, backbone, fk)] = {k: (np.asarray(v, dtype=np.int64) if k == "compare" else v)
                                              for k, v in split.items()}
    if "groups" in a:
        scores["groups"][(backbone, fk)] = np.asarray(a["groups"], dtype=object)
    if "paths" in a:
        scores.setdefault("paths", {})[(backbone, fk)] = np.asarray(a["paths"], dtype=str)
    return meta["curves"]


def save(path: str | os.PathLike, ident: str, saved: dict) -> None:
    """Write the part atomically (a temporary file beside it, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **saved["arrays"], __meta__=np.asarray(json.dumps(saved["meta"], default=_plain)),
                 __identity__=np.asarray(ident))
    os.replace(tmp, path)


def load(path: str | os.PathLike, ident: str) -> tuple[dict | None, str]:
    """The saved part when it exists and its identity is ``ident``; else None and why."""
    path = Path(path)
    if not path.is_file():
        return None, ABSENT
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["__identity__"]) != ident:
                return None, "saved from other inputs, params or code"
            arrays = {k: z[k] for k in z.files if not k.startswith("__")}
            meta = json.loads(str(z["__meta__"]))
    except (OSError, ValueError, KeyError) as err:
        return None, f"unreadable ({type(err).__name__}: {err})"
    return {"arrays": arrays, "meta": meta}, "resumed"


def _plain(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
