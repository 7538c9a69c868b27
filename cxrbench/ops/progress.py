"""Progress of ``cxrbench run PROFILE``: "stage k of N" as DVC reaches each stage, and the time left
estimated from the stage times of the previous run (kept in ``.dvc/tmp``, never committed).

DVC announces every stage it reaches, run or skipped (``Running stage 'NAME':``, ``Stage 'NAME' didn't
change, skipping``); N is the number of stages ``dvc.yaml`` expands to under the run's params (its
``matrix`` and ``foreach`` over lists of params).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from pathlib import Path
from typing import Any

import yaml

from cxrbench.core.io import write_json

TIMES = Path(".dvc/tmp/cxrbench-stage-times.json")
ANNOUNCE = re.compile(r"^(?:Running stage|Stage) '([^']+)'")
_REF = re.compile(r"^\$\{([^}]+)\}$")


def _resolve(value: Any, params: dict) -> list:
    """A matrix axis or foreach value: a list, or ``${dotted.param}`` naming one."""
    if isinstance(value, str) and _REF.match(value):
        obj: Any = params
        for part in _REF.match(value).group(1).split("."):
            obj = obj[part]
        value = obj
    return list(value.keys() if isinstance(value, dict) else value)


def expected_stages(params: dict, dvc_yaml: Path = Path("dvc.yaml")) -> list[str]:
    """Every stage name of the pipeline under ``params`` (``name@a-b`` for matrix cells, as DVC names them)."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    out = []
    for name, st in stages.items():
        if "matrix" in st:
            axes = [_resolve(v, params) for v in st["matrix"].values()]
            out += [f"{name}@{'-'.join(map(str, cell))}" for cell in itertools.product(*axes)]
        elif "foreach" in st:
            out += [f"{name}@{item}" for item in _resolve(st["foreach"], params)]
        else:
            out.append(name)
    return out


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


class Progress:
    """Feed DVC's output lines; :meth:`feed` returns the progress line to print when a stage starts."""

    def __init__(self, expected: list[str], previous: dict[str, float] | None = None, clock=time.monotonic):
        self.expected, self.previous, self.clock = expected, previous or {}, clock
        self.times: dict[str, float] = {}
        self.current: str | None = None
        self.started = 0.0

    def _close(self) -> None:
        if self.current is not None:
            self.times[self.current] = self.clock() - self.started

    def feed(self, line: str) -> str | None:
        m = ANNOUNCE.match(line.strip())
        if not m:
            return None
        self._close()
        self.current, self.started = m.group(1), self.clock()
        seen = len(self.times) + 1
        total = max(len(self.expected), seen)
        return f"[cxrbench] stage {seen} of {total}: {self.current}; {self.time_left()}"

    def time_left(self) -> str:
        remaining = [s for s in self.expected if s not in self.times]        # the current stage included
        known = [self.previous[s] for s in remaining if s in self.previous]
        if not known:
            return "time left unknown (no earlier run timed these stages)"
        untimed = len(remaining) - len(known)
        return (f"about {_minutes(sum(known))} left by the previous run's stage times"
                + (f" (+{untimed} stage(s) never timed)" if untimed else ""))

    def finish(self, path: Path = TIMES) -> None:
        """Keep this run's stage times for the next estimate (stages skipped as unchanged took ~0 s, so
        only stages that took a second or more replace an earlier time)."""
        self._close()
        self.current = None
        merged = {**self.previous, **{s: round(t, 1) for s, t in self.times.items() if t >= 1 or s not in self.previous}}
        if path.parent.is_dir():
            write_json(path, merged)


def previous_times(path: Path = TIMES) -> dict[str, float]:
    try:
        return {k: float(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}
