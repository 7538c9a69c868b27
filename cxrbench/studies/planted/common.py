"""What the planted-shortcut analyses share: names, JSON cleaning, CIs with an explicit status, input checks.

The analysis of the study is three questions, each answered with a bootstrap over patient groups
(:mod:`cxrbench.core.bootstrap`, the interval ``stats.method``): does the model use the tag
(:mod:`cxrbench.studies.planted.reliance`), which attribution method finds it
(:mod:`cxrbench.studies.planted.localisation`), and does the localisation ranking agree with AOPPC's
(:mod:`cxrbench.studies.planted.ranking`); pure functions on arrays and frames.

Degenerate inputs (no tagged target, fewer than two patient groups, an empty
common set, fewer than three methods) give an explicit ``status`` and ``None``,
never a number that could be read as a result. Every returned dict is
JSON-able (no NaN: undefined values are ``None``).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from cxrbench.explain.metrics import localisation as L
from cxrbench.core.bootstrap import DEFAULT_METHOD, DEFAULT_MIN_VALID, format_ci, group_ci, method_name

CONDITIONS = ("as_is", "removed", "moved")
CONTROL = "random"
POOLED = "pooled"
IGNORED_AOPPC_METHODS = ("lung_area",)        # a region baseline in metrics/aoppc.json, not an attribution method
KEY_COLUMNS = ("backbone", "fold", "path")
FRAME_COLUMNS = ("method", "backbone", "fold", "path", "group", *L.METRICS, "status",
                 *(f"chance_{m}" for m in L.METRICS))
CHANCE = {"auroc": 0.5, "shift": 0.0}


def _clean(v: Any) -> Any:
    """``v`` with every non-finite float replaced by None (JSON has no NaN), numpy scalars as Python ones."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    return v


def _n_groups(groups: np.ndarray) -> int:
    return int(len(np.unique(groups))) if len(groups) else 0


def _ci_or_status(statistic: Callable, groups: np.ndarray, n_boot: int, seed: int, confidence: float,
                  empty: str, method: str = DEFAULT_METHOD, min_valid_share: float = DEFAULT_MIN_VALID) -> dict:
    """group_ci with an explicit status where it cannot be computed (``empty`` when there is no item)."""
    n, g = len(groups), _n_groups(groups)
    if n == 0:
        return {"status": empty, "estimate": None, "low": None, "high": None, "n": 0, "groups": 0}
    if g < 2:
        return {"status": "too_few_groups", "estimate": None, "low": None, "high": None, "n": n, "groups": g}
    out = group_ci(statistic, groups, n_boot=n_boot, seed=seed, confidence=confidence, method=method,
                   min_valid_share=min_valid_share)
    return _clean({"status": "ok", **out, "n": n})


def _weights(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``n`` items is drawn in a resample ``idx`` (an index array with repeats)."""
    return np.bincount(idx, minlength=n).astype(np.float64)


def _ci_low_above_zero(ci: dict) -> bool:
    low = ci.get("low")
    return ci.get("status") == "ok" and low is not None and low > 0


def _vector(name: str, v: Any, n: int | None, kind: str) -> np.ndarray:
    a = np.asarray(v)
    if a.ndim != 1 or (n is not None and len(a) != n):
        raise ValueError(f"{name}: expected a 1-d array of {n if n is not None else 'N'} values (one per test "
                         f"image, in the same order as the probabilities), got shape {a.shape}")
    if kind == "bool":
        if a.dtype != bool and not np.isin(a, (0, 1)).all():
            raise ValueError(f"{name}: expected booleans (or 0/1), got dtype {a.dtype}")
        return a.astype(bool)
    if kind == "prob":
        a = a.astype(np.float64)
        bad = ~np.isfinite(a) | (a < 0) | (a > 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{name}: image {i} has {a[i]!r}, not a probability in [0, 1]")
        return a
    return a


def _ci_text(ci: dict | None, signed: bool = False) -> str:
    if not isinstance(ci, dict):
        return "–"
    if ci.get("status", "ok") != "ok":
        return f"– ({ci['status']})"
    return format_ci(ci, signed=signed)


def _method_of(cis) -> str | None:
    """The interval method of the first CI dict among ``cis`` that has one (None: no CI was computed)."""
    return next((c["method"] for c in cis if isinstance(c, dict) and c.get("method")), None)


def _conf_text(conf: float | None, n_boot: int | None, method: str | None = None) -> str:
    """The note under a table: level, interval (``method``: a CI's ``method`` field or a stats.method key;
    None: no CI in the table, the bootstrap's default is named) and resamples."""
    level = f"{100 * conf:g} %" if conf else "?"
    return f"{level} {method_name(method or DEFAULT_METHOD)} bootstrap over patient groups ({n_boot} resamples)"
