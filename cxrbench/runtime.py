"""Knobs of the machine, not of the study: they never change a result, so they are not params."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def deterministic(device="cpu", seed: int | None = None):
    """Deterministic kernels for a training run, restoring the previous global state after.

    CPU: ``torch.use_deterministic_algorithms`` (warn-only, so an op without a
    deterministic kernel warns instead of failing). CUDA: cuDNN autotuning
    (``cudnn.benchmark``) for speed; GPU runs are not claimed to be bit-exact.
    Restoring matters: attribution methods in the same process (Captum's
    DeepLIFT uses max-unpooling) have no deterministic kernel.
    """
    import torch

    device = torch.device(device)
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if seed is not None:
        torch.manual_seed(seed)
    try:
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        else:
            torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]


def device(name: str | None = None):
    """``torch.device(name)``, or CUDA when available and CPU otherwise."""
    import torch

    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
