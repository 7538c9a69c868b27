"""Knobs of the machine, not of the study: they never change a result, so they are not params."""

from __future__ import annotations

import os


def workers() -> int:
    """Worker processes for decoding and preprocessing: $CXRBENCH_WORKERS, else every core."""
    value = os.environ.get("CXRBENCH_WORKERS")
    if value is None:
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"environment variable CXRBENCH_WORKERS={value!r}: expected a positive integer")
    return n
