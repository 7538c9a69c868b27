"""Knobs of the machine, not of the study: they are not params.

* ``CXRBENCH_WORKERS``: worker *processes* for decoding and preprocessing. They
  never change a result (each image is computed whole by one process).
* ``CXRBENCH_THREADS``: torch intra-op threads, set in one place
  (:func:`configure`, called by every stage that runs torch). The thread count
  changes how floating-point sums are split, so results are bit-identical only
  on the same CPU *and* the same thread count; every metrics JSON that depends
  on torch records it under ``runtime`` (:func:`info`).
* ``CXRBENCH_PROGRESS``: ``bar`` (tqdm, the default on a terminal), ``lines``
  (one plain line per epoch or per ~10 % of items: the default when stderr is
  not a terminal, e.g. CI or ``dvc exp run --queue``) or ``off``.
* ``CXRBENCH_DEADLINE``: a Unix time (seconds). A resumable training loop
  (classifier, U-Net) that would cross it with its next epoch stops after its
  last checkpoint and the stage exits with :data:`DEADLINE_EXIT`, so a
  time-boxed step (``cxrbench bundle run``) ends cleanly and the next
  step resumes. Unset: no deadline. It never changes a result.
* ``CXRBENCH_RESUME_DIR``: where the resumable stages keep their checkpoints beside their outputs, so
  that ``dvc exp run`` cannot delete them (:mod:`cxrbench.core.resume`); default ``.cxrbench/resume`` in
  the repository. It never changes a result.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator


def _positive_env(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"environment variable {name}={value!r}: expected a positive integer")
    return n


RESUME_ENV = "CXRBENCH_RESUME_DIR"

DEADLINE_EXIT = 75          # EX_TEMPFAIL: the stage stopped at CXRBENCH_DEADLINE; rerun it to resume


class DeadlineReached(RuntimeError):
    """A resumable loop stopped before ``CXRBENCH_DEADLINE``; its checkpoint is complete."""


def deadline() -> float | None:
    """``CXRBENCH_DEADLINE`` as a Unix time, or None when unset."""
    value = os.environ.get("CXRBENCH_DEADLINE")
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"environment variable CXRBENCH_DEADLINE={value!r}: expected a Unix time in seconds "
                         f"(e.g. $(($(date +%s) + 540)))") from None


def check_deadline(next_seconds: float, what: str) -> None:
    """Raise :class:`DeadlineReached` when ``next_seconds`` more (the next epoch) would cross the deadline."""
    end = deadline()
    if end is not None and time.time() + next_seconds > end:
        raise DeadlineReached(f"{what}: the next epoch (~{next_seconds:.0f} s) would cross CXRBENCH_DEADLINE "
                              f"({end - time.time():.0f} s left); stopped after the last checkpoint, rerun to resume")


@contextlib.contextmanager
def exit_on_deadline():
    """In a stage's main: turn :class:`DeadlineReached` into one log line and exit :data:`DEADLINE_EXIT`
    (non-zero, so DVC does not record the stage as done)."""
    try:
        yield
    except DeadlineReached as err:
        print(f"deadline: {err}", flush=True)
        sys.exit(DEADLINE_EXIT)


def cores() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def workers() -> int:
    """Worker processes for decoding and preprocessing: $CXRBENCH_WORKERS, else every core."""
    return _positive_env("CXRBENCH_WORKERS") or cores()


def threads() -> int:
    """Torch intra-op threads: $CXRBENCH_THREADS, else every core (never $CXRBENCH_WORKERS)."""
    return _positive_env("CXRBENCH_THREADS") or cores()


def configure() -> dict:
    """Set torch's intra-op threads to :func:`threads` and return :func:`info`.

    The one place a stage sets threads: call it first in every stage that runs torch.
    """
    import torch

    torch.set_num_threads(threads())
    return info()


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what :mod:`platform` knows."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:              # not Linux: no /proc
        text = ""
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    return names[0] if names else (platform.processor() or platform.machine())


def info() -> dict:
    """What a torch result depends on besides the code and params: record it next to the metrics."""
    import torch

    out: dict[str, Any] = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                           "cpu": cpu_model(), "machine": platform.machine()}
    capability = getattr(torch.backends.cpu, "get_cpu_capability", None)  # older torch has none
    if capability is not None:
        out["cpu_capability"] = capability()
    for var in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"):
        if os.environ.get(var):
            out[var] = os.environ[var]
    if torch.cuda.is_available():
        out["cuda_device"] = torch.cuda.get_device_name(0)
    return out


def git_commit(root: str | Path = ".", short: bool = False) -> str:
    """The commit checked out at ``root`` (the provenance of what it computes), or a sentence saying there is
    none: the report, the model card and the maintenance scripts record it."""
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", *(["--short"] if short else []), "HEAD"], cwd=root,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


@contextlib.contextmanager
def deterministic(device="cpu", seed: int | None = None):
    """Deterministic kernels for a training run, restoring the previous global state after.

    CPU: ``torch.use_deterministic_algorithms`` (warn-only, so an op without a
    deterministic kernel warns instead of failing). CUDA: cuDNN autotuning
    (``cudnn.benchmark``) only with ``CXRBENCH_CUDNN_BENCHMARK=1`` (a machine
    knob): autotuning is paid again in every stage's process, and on an H200 it
    cost densenet161 a 35.9 s first epoch against 4.9 s without it, with no
    faster epoch after (4.1 s against 3.7 s; ``benchmarks/bench_first_epoch.py``,
    results/gpu/). GPU runs are not claimed to be bit-exact.
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
            torch.backends.cudnn.benchmark = os.environ.get("CXRBENCH_CUDNN_BENCHMARK", "0") == "1"
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


# --- progress -----------------------------------------------------------------

PROGRESS_MODES = ("bar", "lines", "off")


def progress_mode(stream=None) -> str:
    """$CXRBENCH_PROGRESS, else ``bar`` on a terminal and ``lines`` otherwise."""
    mode = os.environ.get("CXRBENCH_PROGRESS")
    if mode:
        if mode not in PROGRESS_MODES:
            raise ValueError(f"environment variable CXRBENCH_PROGRESS={mode!r}: expected one of {PROGRESS_MODES}")
        return mode
    stream = sys.stderr if stream is None else stream
    return "bar" if getattr(stream, "isatty", lambda: False)() else "lines"


class LineProgress:
    """A tqdm stand-in for logs: a plain line every ``every`` of the total (and at the end), no carriage returns.

    Supports what the package uses of tqdm: iteration, ``update``, ``set_postfix``,
    ``close`` and use as a context manager.
    """

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, every: float = 0.1, stream=None, lines: bool = True,
                 unit_scale: bool = False, leave: bool = True):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.start_n = initial
        self.stream = stream if stream is not None else sys.stderr
        self.lines = lines
        self.postfix = ""
        self.t0 = time.perf_counter()
        self.step = max(1, int(total * every)) if total else None
        self.next_at = initial + self.step if self.step else None
        self.closed = False
        self.unit_scale = unit_scale

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.total or 0

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.next_at is not None and self.n >= self.next_at and (self.total is None or self.n < self.total):
            self._print()
            while self.next_at <= self.n:
                self.next_at += self.step

    def _print(self) -> None:
        if not self.lines:
            return
        dt = time.perf_counter() - self.t0
        done = self.n - self.start_n
        rate = f"{done / dt:.3g} {self.unit}/s" if dt > 0 and done else "-"
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        if self.unit_scale and self.total:
            count = f"{self.n / 2**20:.1f}/{self.total / 2**20:.1f} MiB"
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {count} {self.unit}, {dt:.1f} s, {rate}{extra}", file=self.stream, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._print()


def progress(iterable: Iterable | None = None, *, desc: str = "", total: int | None = None, unit: str = "it",
             enabled: bool = True, **kwargs):
    """A progress bar on a terminal, plain lines in logs (:func:`progress_mode`), nothing when disabled.

    Takes tqdm's arguments (``initial``, ``leave``, ``unit_scale``, ...) and ``every``: in line mode, the
    share of ``total`` between two lines (0: a line per item, 1: one line at the end).
    """
    mode = progress_mode() if enabled else "off"
    if mode == "bar":
        from tqdm import tqdm

        kwargs.pop("every", None)
        return tqdm(iterable, desc=desc, total=total, unit=unit, **kwargs)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, lines=mode == "lines", **kwargs)
