"""The attribute stage's storage format, ``data/attributions/{backbone}-f{fold}.npz`` (core.paths.attributions).

Arrays: ``rows`` (cache rows), ``paths``, ``target`` (class index per image), ``target_name``, ``masks`` (lung
masks at input resolution, uint8), per method ``{method}`` float32 (N, H, W) maps divided by a per-image
scale ``{method}__scale`` (float32; map = stored * scale: maxima of 1, so maps of any magnitude compare
alike; float32, because float16 storage made 91-99 % of a map's pixels tie with another and underflowed
tiny gradients), and ``rand__{method}`` maps (scaled alike) of a weight-randomised copy of the model for
the first ``explain.sanity_images`` images (the sanity check of the aoppc stage). Written compressed.

A fold without a matching test image holds one array, ``skipped`` (the reason), written uncompressed.
:func:`cxrbench.explain.metrics.perturbation.stored_maps` reads a method's maps back.
"""

from __future__ import annotations

import numpy as np

from cxrbench.core.io import atomic_path
from cxrbench.explain.metrics import perturbation as EM


def scaled(maps: dict, prefix: str = "") -> dict:
    out = {}
    for name, m in maps.items():
        m32 = m.astype(np.float32) if m.dtype != np.float32 else m
        scale = np.abs(m32).reshape(len(m32), -1).max(1)
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        out[f"{prefix}{name}"] = (m32 / scale[:, None, None]).astype(np.float32)
        out[f"{prefix}{name}__scale"] = scale
    return out


def arrays(rows: np.ndarray, paths: list, target: np.ndarray, target_name: list, masks: np.ndarray, maps: dict,
           rand_maps: dict) -> dict:
    """The arrays of one classifier's npz, in the order they are written."""
    return {"rows": rows, "paths": np.array(paths), "target": target,
            "target_name": np.array(target_name), "masks": masks.astype(np.uint8),
            **scaled(maps), **scaled(rand_maps, "rand__")}


def record_map_status(status: dict, arrays: dict, paths: list) -> None:
    """Add ``maps`` and ``degenerate`` (:func:`cxrbench.explain.metrics.perturbation.map_report`) to each method's
    status, from its maps as stored in ``arrays`` (what the aoppc stage scores), and the same under ``sanity``
    for the randomised model's maps (``rand__{method}``, the first images)."""
    for m, st in status.items():
        if st.get("ok") and m in arrays:
            st.update(EM.map_report(EM.stored_maps(arrays, m), paths))
        rnd = st.get("sanity")
        if rnd is not None and rnd.get("ok") and f"rand__{m}" in arrays:
            stored = EM.stored_maps(arrays, f"rand__{m}")
            rnd.update(EM.map_report(stored, paths[:len(stored)]))


def save(path, arrays: dict) -> None:
    """``arrays`` written compressed to ``path`` (atomically)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def save_skipped(path, reason: str) -> None:
    """The npz of a fold without a matching test image: ``skipped`` holds the reason."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, skipped=np.array(reason))
