"""The CI metric gate: compare this run's metrics with a committed baseline.

``params.yaml: gate.checks`` lists the metrics to guard, each as
``file:dotted.key`` with a direction, a reason and a tolerance. A metric
regresses when it moves the wrong way by more than its tolerance (``higher`` is
better: it may drop by at most the tolerance; ``lower``: it may rise by at
most; ``equal``: it must stay within the tolerance either way). A metric
missing from the current run is a failure too: a stage that silently stopped
writing it must not pass.

The tolerance is a number (0 for counts that must be exact), or ``spread``:
``gate.spread_factor`` times the range (max - min) of the metric over the
perturbed runs of the reference profile recorded in ``gate.spread``
(``cxrbench spread measure`` writes it: other thread counts, another
seed, another instruction set). So a metric fails only when it moves further
than ``spread_factor`` times what those perturbations moved it.

    cxrbench gate check      # print the table, exit 1 on a regression
    cxrbench gate snapshot   # write the baseline from the current metrics
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrbench.core.io import BadJSONError, read_json, write_json
from cxrbench.core.params import ParamError, check_choice, check_float, load, section

DIRECTIONS = ("higher", "lower", "equal")
SPREAD = "spread"


@dataclass(frozen=True)
class Check:
    metric: str                  # "metrics/unet.json:test.iou.mean"
    tolerance: float | str       # a number, or "spread" (from the measured spread)
    direction: str
    reason: str = ""
    paired: bool = False         # a per-image metric compared image by image (cxrbench.ops.paired)
    spread_runs: tuple | None = None   # the spread runs its tolerance is measured over (None: all)


@dataclass(frozen=True)
class GateConfig:
    baseline: Path
    spread: Path | None
    spread_factor: float
    checks: list[Check]
    per_image_baseline: Path | None = None
    paired_min_share: float = 0.9
    paired_max_tolerance: float | None = None


def config_from_params(params: dict) -> GateConfig:
    """Validate ``gate`` of params.yaml; every error names the key and what to write instead."""
    g = section(params, "gate")
    baseline = g.get("baseline")
    if not isinstance(baseline, str) or not baseline:
        raise ParamError("gate.baseline", "expected the path of the committed baseline JSON")
    raw = g.get("checks")
    if not isinstance(raw, list) or not raw:
        raise ParamError("gate.checks", "expected a non-empty list of {metric, tolerance, direction, reason}")
    out = []
    for i, c in enumerate(raw):
        key = f"gate.checks[{i}]"
        if not isinstance(c, dict) or ":" not in str(c.get("metric", "")):
            raise ParamError(key, f"`metric` must read FILE:dotted.key, got {c!r}")
        is_paired = c.get("paired", False)
        if not isinstance(is_paired, bool):
            raise ParamError(f"{key}.paired", f"expected true or false, got {is_paired!r}")
        if is_paired:
            from cxrbench.ops import paired
            paired.parse(str(c["metric"]))
        else:
            terms(str(c["metric"]))
        tol = c.get("tolerance")
        if tol != SPREAD:
            tol = check_float(f"{key}.tolerance", tol, minimum=0, what=f"{SPREAD!r} or a number")
        runs = c.get("spread_runs")
        if runs is not None and (not isinstance(runs, list) or len(runs) < 2
                                 or not all(isinstance(r, str) for r in runs)):
            raise ParamError(f"{key}.spread_runs", f"expected a list of at least 2 run names of gate.perturbations, "
                                                   f"got {runs!r}")
        out.append(Check(c["metric"], tol,
                         check_choice(f"{key}.direction", c.get("direction", "higher"), DIRECTIONS),
                         str(c.get("reason", "")), is_paired, None if runs is None else tuple(runs)))
    spread = g.get("spread")
    needs_spread = any(c.tolerance == SPREAD for c in out)
    if needs_spread and (not isinstance(spread, str) or not spread):
        raise ParamError("gate.spread", f"checks with tolerance: {SPREAD} need the path of the spread JSON")
    factor = check_float("gate.spread_factor", g.get("spread_factor", 1.0), minimum=1,
                         what="the margin over the measured spread, a number")
    per_image, share, cap = g.get("per_image_baseline"), g.get("paired_min_share", 0.9), g.get("paired_max_tolerance")
    if any(c.paired for c in out):
        if not isinstance(per_image, str) or not per_image:
            raise ParamError("gate.per_image_baseline", "paired checks need the path of the per-image baseline CSV")
        share = check_float("gate.paired_min_share", share, minimum=0, what="a share of the baseline's images")
        if cap is not None:
            cap = check_float("gate.paired_max_tolerance", cap, minimum=0, what="the largest tolerance allowed")
            for i, c in enumerate(out):
                if c.paired and c.tolerance != SPREAD and c.tolerance > cap:
                    raise ParamError(f"gate.checks[{i}].tolerance", f"{c.tolerance} exceeds gate.paired_max_tolerance "
                                                                    f"{cap}")
    return GateConfig(Path(baseline), Path(spread) if spread else None, factor, out,
                      Path(per_image) if isinstance(per_image, str) and per_image else None, float(share),
                      None if cap is None else float(cap))


def spread_range(spread: dict, metric: str, exclude: str | None = None, runs: tuple | None = None) -> float | None:
    """max - min of ``metric`` over the runs of a spread JSON (``exclude``: leave one run out); None when fewer
    than two runs have it. NaN when a run's value is not a finite number: a NaN or infinite measurement gives no
    tolerance, so the check fails (:func:`evaluate`) instead of passing everything."""
    values = [v for run, v in (spread.get("metrics", {}).get(metric, {}).get("values") or {}).items()
              if run != exclude and v is not None and (runs is None or run in runs)]
    if not all(_finite(v) for v in values):
        return math.nan
    if len(values) < 2:
        return None
    return float(max(values) - min(values))


def _finite(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def tolerances(checks: list[Check], spread: dict | None, factor: float,
               exclude: str | None = None) -> dict[str, float | None]:
    """The tolerance of each check: its number, or ``factor`` x the measured range (None: not measured)."""
    out = {}
    for c in checks:
        if c.tolerance != SPREAD:
            out[c.metric] = float(c.tolerance)
        else:
            r = spread_range(spread or {}, c.metric, exclude, c.spread_runs)
            out[c.metric] = None if r is None else factor * r
    return out


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
    """Each check's value under ``root``; a metric ``A - B`` (two FILE:key terms) is their difference."""
    cache: dict[str, Any] = {}

    def one(term: str) -> float | None:
        file, key = term.split(":", 1)
        if file not in cache:
            path = root / file
            cache[file] = read_json(path) if path.is_file() else None
        return lookup(cache[file], key) if cache[file] is not None else None

    out = {}
    for c in checks:
        if c.paired:
            from cxrbench.ops import paired
            out[c.metric] = paired.value(c.metric, root)
            continue
        values = [one(t) for t in terms(c.metric)]
        out[c.metric] = None if any(v is None for v in values) else (
            values[0] if len(values) == 1 else values[0] - values[1])
    return out


def terms(metric: str) -> list[str]:
    """``FILE:key`` -> [it]; ``FILE:a - FILE:b`` (a control-adjusted metric) -> [both]."""
    parts = [t.strip() for t in metric.split(" - ")]
    if len(parts) > 2 or any(":" not in t for t in parts):
        raise ParamError("gate.checks", f"metric {metric!r}: expected FILE:dotted.key or FILE:a - FILE:b")
    return parts


def label(metric: str) -> tuple[str, str]:
    """(files, keys) of a metric for tables: ``a.json``, ``x.y``; a difference joins each side with `` - ``."""
    if metric.split(":", 1)[0].endswith(".csv"):                        # a paired per-image metric
        file, _, key = metric.partition(":")
        return file, key + " (paired)"
    parts = terms(metric)
    return (" - ".join(dict.fromkeys(t.split(":", 1)[0] for t in parts)),
            " - ".join(t.split(":", 1)[1] for t in parts))


def evaluate(checks: list[Check], baseline: dict[str, float], current: dict[str, float | None],
             tol: dict[str, float | None] | None = None) -> list[dict]:
    """One row per check: baseline, current, change, tolerance and status.

    ``tol`` maps a metric to its tolerance (see :func:`tolerances`); by default each
    check's own number. A ``spread`` check with no measured spread has status
    ``no spread``, which fails: measure it (``cxrbench spread measure``). A value
    that is not a finite number (NaN, infinity; in the baseline, this run or the
    spread) fails as ``NOT FINITE (which)``: every comparison with NaN is False,
    and an infinite tolerance or baseline would let any value pass.
    """
    tol = tol if tol is not None else {c.metric: (None if c.tolerance == SPREAD else c.tolerance) for c in checks}
    rows = []
    for c in checks:
        base, cur, t = baseline.get(c.metric), current.get(c.metric), tol.get(c.metric)
        change = None
        source = "spread" if c.tolerance == SPREAD else "tolerance"
        bad = [name for name, v in (("baseline", base), ("current", cur), (source, t))
               if v is not None and not _finite(v)]
        if bad:
            status = f"NOT FINITE ({', '.join(bad)})"
        elif base is None:
            status = "no baseline"
        elif cur is None:
            status = "MISSING"
        elif t is None:
            status, change = "no spread", cur - base
        else:
            change = cur - base
            worse = {"higher": -change, "lower": change, "equal": abs(change)}[c.direction]
            status = "REGRESSION" if worse > t + 1e-12 else "ok"
        rows.append(dict(metric=c.metric, baseline=base, current=cur, change=change, tolerance=t,
                         rule="spread" if c.tolerance == SPREAD else "fixed", direction=c.direction, status=status))
    return rows


def format_table(rows: list[dict]) -> str:
    def f(v):
        return "-" if v is None else f"{v:.4f}" if isinstance(v, (int, float)) else repr(v)
    head = ["Path", "Metric", "Baseline", "Current", "Change", "Tolerance", "Rule", "Better", "Status"]
    body = [[*label(r["metric"]), f(r["baseline"]), f(r["current"]),
             "-" if r["change"] is None else f"{r['change']:+.4f}", f(r["tolerance"]), r.get("rule", "fixed"),
             r["direction"], r["status"] + _paired_note(r.get("paired"))] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head)] + [line(b) for b in body])


def _paired_note(p: dict | None) -> str:
    if not p or p.get("change") is None:
        return ""
    ci = f", CI [{p['low']:+.4f}, {p['high']:+.4f}]" if p.get("low") is not None and math.isfinite(p["low"]) else ""
    return f" ({p['paired']} images paired{ci})"


def failed(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["status"] != "ok"]


def check(cfg: GateConfig, root: Path = Path("."), baseline_path: Path | None = None) -> tuple[int, list[dict]]:
    """Run the gate on the metrics under ``root``: (exit code, rows)."""
    baseline_path = baseline_path or cfg.baseline
    if not baseline_path.is_file():
        print(f"{baseline_path} not found: create it with `cxrbench gate snapshot` "
              f"after a run of the reference profile", file=sys.stderr)
        return 1, []
    spread = None
    baseline = read_json(baseline_path)
    if not isinstance(baseline, dict):
        raise BadJSONError(f"{baseline_path}: expected a JSON object of metric -> value; recreate it with "
                           f"`cxrbench gate snapshot`")
    if cfg.spread is not None:
        if cfg.spread.is_file():
            spread = read_json(cfg.spread)
        else:
            print(f"{cfg.spread} (gate.spread) not found: measure it with `cxrbench spread measure`",
                  file=sys.stderr)
    rows = evaluate(cfg.checks, baseline, current_values(cfg.checks, root),
                    tolerances(cfg.checks, spread, cfg.spread_factor))
    if any(c.paired for c in cfg.checks):
        rows = paired_rows(cfg, rows, root)
    return (1 if failed(rows) else 0), rows


def paired_rows(cfg: GateConfig, rows: list[dict], root: Path) -> list[dict]:
    """The paired checks' rows recomputed image by image against ``cfg.per_image_baseline``
    (:func:`cxrbench.ops.paired.compare`): ``change`` is the mean per-image change (with its CI over patients),
    ``current`` the baseline plus it. A tolerance above ``gate.paired_max_tolerance`` fails (``SPREAD > MAX``):
    the measured spread is then too wide for the check to see a regression."""
    import pandas as pd

    from cxrbench.ops import paired
    by_metric = {c.metric: c for c in cfg.checks}
    path = cfg.per_image_baseline
    base = pd.read_csv(path, keep_default_na=False, dtype={"path": str, "backbone": str, "group": str}) \
        if path is not None and path.is_file() else None
    out = []
    for r in rows:
        c = by_metric[r["metric"]]
        if not c.paired or r["status"].startswith("NOT FINITE"):
            out.append(r)
            continue
        if base is None:
            out.append({**r, "status": f"no per-image baseline ({path})"})
            continue
        p = paired.compare(c.metric, base, root, cfg.paired_min_share)
        r = {**r, "paired": p}
        if p["status"] != "paired":
            out.append({**r, "status": p["status"]})
            continue
        r["change"] = p["change"]
        r["current"] = None if r["baseline"] is None else r["baseline"] + p["change"]
        t = r["tolerance"]
        if t is None or r["baseline"] is None:
            out.append(r)
            continue
        worse = {"higher": -p["change"], "lower": p["change"], "equal": abs(p["change"])}[c.direction]
        cap = cfg.paired_max_tolerance
        r["status"] = ("SPREAD > MAX" if cap is not None and t > cap + 1e-12 else
                       "REGRESSION" if worse > t + 1e-12 else "ok")
        out.append(r)
    return out


def write_per_image_baseline(cfg: GateConfig, root: Path, keep_others: bool = False) -> None:
    """The per-image values of every paired check of ``cfg`` under ``root``, written to
    ``cfg.per_image_baseline``; ``keep_others``: the file's rows of other checks stay (a snapshot of some checks)."""
    import pandas as pd

    from cxrbench.core.io import write_csv
    from cxrbench.ops import paired
    frame = pd.concat([paired.baseline_rows(c.metric, root) for c in cfg.checks if c.paired], ignore_index=True)
    if keep_others and Path(cfg.per_image_baseline).is_file():
        kept = pd.read_csv(cfg.per_image_baseline, keep_default_na=False, dtype={"path": str, "group": str})
        frame = pd.concat([kept[~kept["metric"].isin(set(frame["metric"]))], frame], ignore_index=True)
    write_csv(cfg.per_image_baseline, frame)
    print(f"wrote {cfg.per_image_baseline} ({len(frame)} per-image values)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cxrbench gate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["check", "snapshot"])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--baseline", help="override gate.baseline")
    ap.add_argument("--root", default=".", help="folder whose metrics/ are checked or snapshot (default: here)")
    args = ap.parse_args(argv)
    try:
        return _run(args)
    except (ParamError, BadJSONError) as err:      # a bad param or a corrupt JSON: its one message, no traceback
        print(f"cxrbench gate: {err}", file=sys.stderr)
        return 2


def _run(args) -> int:
    cfg = config_from_params(load(args.params))
    baseline_path = Path(args.baseline) if args.baseline else cfg.baseline
    if args.action == "snapshot":
        current = current_values(cfg.checks, Path(args.root))
        missing = [m for m, v in current.items() if v is None]
        if missing:
            print(f"cannot snapshot: metrics missing from this run: {missing}", file=sys.stderr)
            return 1
        not_finite = {m: v for m, v in current.items() if not _finite(v)}
        if not_finite:
            print(f"cannot snapshot: metrics of this run are not finite numbers (a baseline must be): "
                  f"{not_finite}", file=sys.stderr)
            return 1
        try:
            write_json(baseline_path, current)       # never over a folder (cxrbench.core.io.atomic_path)
            if any(c.paired for c in cfg.checks):
                write_per_image_baseline(cfg, Path(args.root))
        except OSError as err:
            print(f"cannot snapshot: --baseline {baseline_path}: {err}", file=sys.stderr)
            return 2
        print(f"wrote {baseline_path} ({len(current)} metrics)")
        return 0
    code, rows = check(cfg, Path(args.root), baseline_path)
    if not rows:
        return code
    print(format_table(rows))
    bad = failed(rows)
    if bad:
        print(f"\nmetric gate FAILED: {len(bad)} of {len(rows)} metrics regressed, are missing or have no "
              f"measured spread: " + ", ".join(f"{r['metric']} ({r['status']})" for r in bad), file=sys.stderr)
        return 1
    print(f"\nmetric gate passed: {len(rows)} metrics within tolerance "
          f"(spread rule: {cfg.spread_factor:g} x the range over the runs of {cfg.spread})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
