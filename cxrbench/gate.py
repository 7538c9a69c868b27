"""The CI metric gate: compare this run's metrics with a committed baseline.

``params.yaml: gate.checks`` lists the metrics to guard, each as
``file:dotted.key`` with a tolerance and a direction. A metric regresses when it
moves the wrong way by more than its tolerance (``higher`` is better: it may
drop by at most ``tolerance``; ``lower``: it may rise by at most ``tolerance``;
``equal``: it must stay within ``tolerance`` either way). A metric missing from
the current run is a failure too: a stage that silently stopped writing it must
not pass.

    python -m cxrbench.gate check      # print the table, exit 1 on a regression
    python -m cxrbench.gate snapshot   # write the baseline from the current metrics
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .io import read_json, write_json
from .params import ParamError, check_choice, load, section

DIRECTIONS = ("higher", "lower", "equal")


@dataclass(frozen=True)
class Check:
    metric: str          # "metrics/unet.json:test.iou_mean"
    tolerance: float
    direction: str

    @property
    def file(self) -> str:
        return self.metric.split(":", 1)[0]

    @property
    def key(self) -> str:
        return self.metric.split(":", 1)[1]


def checks_from_params(params: dict) -> tuple[Path, list[Check]]:
    g = section(params, "gate")
    baseline = g.get("baseline")
    if not isinstance(baseline, str) or not baseline:
        raise ParamError("gate.baseline", "expected the path of the committed baseline JSON")
    raw = g.get("checks")
    if not isinstance(raw, list) or not raw:
        raise ParamError("gate.checks", "expected a non-empty list of {metric, tolerance, direction}")
    out = []
    for i, c in enumerate(raw):
        key = f"gate.checks[{i}]"
        if not isinstance(c, dict) or ":" not in str(c.get("metric", "")):
            raise ParamError(key, f"`metric` must read FILE:dotted.key, got {c!r}")
        tol = c.get("tolerance")
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or tol < 0:
            raise ParamError(f"{key}.tolerance", f"expected a number >= 0, got {tol!r}")
        out.append(Check(c["metric"], float(tol), check_choice(f"{key}.direction", c.get("direction", "higher"),
                                                               DIRECTIONS)))
    return Path(baseline), out


def lookup(obj: Any, key: str) -> float | None:
    """The number at dotted ``key``; a part ``field=value`` picks the list item whose field is value."""
    for part in key.split("."):
        if isinstance(obj, dict) and part in obj:
            obj = obj[part]
        elif isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        elif isinstance(obj, list) and "=" in part:
            field, value = part.split("=", 1)
            obj = next((o for o in obj if isinstance(o, dict) and str(o.get(field)) == value), None)
            if obj is None:
                return None
        else:
            return None
    if isinstance(obj, bool) or not isinstance(obj, (int, float)):
        return None
    return float(obj)


def current_values(checks: list[Check], root: Path = Path(".")) -> dict[str, float | None]:
    cache: dict[str, Any] = {}
    out = {}
    for c in checks:
        if c.file not in cache:
            path = root / c.file
            cache[c.file] = read_json(path) if path.is_file() else None
        out[c.metric] = lookup(cache[c.file], c.key) if cache[c.file] is not None else None
    return out


def evaluate(checks: list[Check], baseline: dict[str, float], current: dict[str, float | None]) -> list[dict]:
    rows = []
    for c in checks:
        base, cur = baseline.get(c.metric), current.get(c.metric)
        if base is None:
            status, change = "no baseline", None
        elif cur is None or (isinstance(cur, float) and math.isnan(cur)):
            status, change = "MISSING", None
        else:
            change = cur - base
            worse = {"higher": -change, "lower": change, "equal": abs(change)}[c.direction]
            status = "REGRESSION" if worse > c.tolerance + 1e-12 else "ok"
        rows.append(dict(metric=c.metric, baseline=base, current=cur, change=change, tolerance=c.tolerance,
                         direction=c.direction, status=status))
    return rows


def format_table(rows: list[dict]) -> str:
    def f(v):
        return "-" if v is None else f"{v:.4f}"
    head = ["Path", "Metric", "Baseline", "Current", "Change", "Tolerance", "Better", "Status"]
    body = [[r["metric"].split(":")[0], r["metric"].split(":", 1)[1], f(r["baseline"]), f(r["current"]),
             "-" if r["change"] is None else f"{r['change']:+.4f}", f"{r['tolerance']:.4f}", r["direction"],
             r["status"]] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head)] + [line(b) for b in body])


def failed(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["status"] in ("REGRESSION", "MISSING", "no baseline")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cxrbench.gate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["check", "snapshot"])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--baseline", help="override gate.baseline")
    args = ap.parse_args(argv)
    baseline_path, checks = checks_from_params(load(args.params))
    baseline_path = Path(args.baseline) if args.baseline else baseline_path
    current = current_values(checks)
    if args.action == "snapshot":
        missing = [m for m, v in current.items() if v is None]
        if missing:
            print(f"cannot snapshot: metrics missing from this run: {missing}", file=sys.stderr)
            return 1
        write_json(baseline_path, current)
        print(f"wrote {baseline_path} ({len(current)} metrics)")
        return 0
    if not baseline_path.is_file():
        print(f"{baseline_path} not found: create it with `python -m cxrbench.gate snapshot` "
              f"after a run of the reference profile", file=sys.stderr)
        return 1
    rows = evaluate(checks, read_json(baseline_path), current)
    print(format_table(rows))
    bad = failed(rows)
    if bad:
        print(f"\nmetric gate FAILED: {len(bad)} of {len(rows)} metrics regressed or are missing", file=sys.stderr)
        return 1
    print(f"\nmetric gate passed: {len(rows)} metrics within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
