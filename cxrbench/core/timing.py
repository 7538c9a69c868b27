"""Where a stage's time goes: its wall time, its process start-up (imports) and its hottest steps.

A stage run by DVC (which names it in ``$DVC_STAGE``) writes ``timing/STAGE.json`` when it ends
(:func:`write`, called by :func:`cxrbench.core.params.run_stage`). That file is a DVC output with
``cache: false``, never a metric, so it stays out of ``dvc exp show`` and ``dvc metrics``; an output
restored from DVC's run-cache keeps the timing of the run that computed it. ``cxrbench times`` prints the
table (stage, seconds, share, hottest step).

Library code records steps with :func:`step` (a ``with`` block) or :func:`add` (seconds measured
elsewhere), e.g. ``timing.add("epoch", dt, unit="epoch")`` or ``timing.add("method occlusion", s,
n=images, unit="image")``: the file gives each step's total seconds, its count and seconds per unit.
Recording is a dictionary update, so it is always on; nothing is written outside a stage.

Besides seconds the file records CPU seconds (user + system, this process and its finished children)
and the load average when the stage started: CPU seconds well below wall seconds times the threads
used, or a load above the core count, say the machine was busy and the figure is not an idle one.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

_steps: dict[str, dict] = {}
_t0 = time.perf_counter()
_load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def add(name: str, seconds: float, n: int = 1, unit: str | None = None) -> None:
    """Add ``seconds`` spent on ``n`` units of step ``name`` (summed over calls)."""
    rec = _steps.setdefault(name, {"seconds": 0.0, "n": 0, "unit": unit})
    rec["seconds"] += float(seconds)
    rec["n"] += int(n)
    if unit is not None:
        rec["unit"] = unit


@contextlib.contextmanager
def step(name: str, n: int = 1, unit: str | None = None) -> Iterator[None]:
    """Time the ``with`` block as ``n`` units of step ``name`` (recorded also when the block raises)."""
    t = time.perf_counter()
    try:
        yield
    finally:
        add(name, time.perf_counter() - t, n, unit)


def steps() -> dict[str, dict]:
    """The steps recorded so far, slowest first, each with ``seconds``, ``n``, ``unit`` and ``per_unit``."""
    out = {}
    for name, rec in sorted(_steps.items(), key=lambda kv: -kv[1]["seconds"]):
        out[name] = {"seconds": round(rec["seconds"], 3), "n": rec["n"], "unit": rec["unit"],
                     "per_unit": round(rec["seconds"] / rec["n"], 4) if rec["n"] else None}
    return out


def reset() -> None:
    """Forget the steps and restart the clock (tests; a process that runs several stages)."""
    global _t0, _start, _main, _load0
    _steps.clear()
    _t0 = _start = time.perf_counter()
    _main = None
    _load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _process_age() -> float | None:
    """Seconds since this process started, from Linux's /proc (10 ms resolution); None elsewhere."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))   # field 22 of stat: start after boot


_age = _process_age()
_start = _t0 - (_age or 0.0)         # the process start on the perf_counter clock (this import, outside Linux)
_main: float | None = None


def main_started() -> None:
    """Mark the start of the stage's own work: the time before it is start-up (interpreter and imports)."""
    global _main
    _main = time.perf_counter()


def stage_name() -> str | None:
    """The DVC stage running this process (``$DVC_STAGE`` without a dvc.yaml path), or None outside DVC."""
    name = os.environ.get("DVC_STAGE")
    if not name:
        return None
    return name.rsplit(":", 1)[-1]


def summary(stage: str | None = None) -> dict:
    """The timing record of this process so far."""
    from cxrbench.core import runtime

    t = os.times()
    now = time.perf_counter()
    return {"stage": stage or stage_name(), "wall_s": round(now - _start, 3),
            "startup_s": None if _main is None else round(_main - _start, 3),
            "cpu_s": round(t.user + t.system + t.children_user + t.children_system, 3),
            "load_at_start": None if _load0 is None else round(_load0, 2),
            "cores": runtime.cores(), "cpu": runtime.cpu_model(), "steps": steps()}


def write() -> str | None:
    """Write ``timing/STAGE.json`` for the DVC stage running this process; outside DVC, nothing (returns None)."""
    from cxrbench.core import io, paths

    stage = stage_name()
    if stage is None:
        return None
    path = paths.timing_file(stage)
    io.write_json(path, summary(stage))
    return path
