"""Where a run's time went: one row per stage (seconds, share of the run, process start-up, hottest steps).

    cxrbench times                    # the table of this workspace's timing/ records
    cxrbench times --markdown         # the same as a Markdown table (benchmarks/README.md)
    cxrbench times --steps 3          # the three hottest steps of each stage

Each stage DVC runs writes ``timing/STAGE.json`` (:mod:`cxrbench.core.timing`). ``cxrbench run`` prints
this table when a profile ends, with the seconds it saw each stage take (DVC's own hashing and
bookkeeping included); the ``startup`` column is the stage process's interpreter start and imports.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cxrbench.core import paths


def load(folder: str | Path = paths.TIMING, newer_than: float | None = None) -> dict[str, dict]:
    """The timing records in ``folder`` by stage name (those written after ``newer_than``, a Unix time, if
    given). A record that does not parse is reported, not skipped silently."""
    out: dict[str, dict] = {}
    folder = Path(folder)
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        if newer_than is not None and path.stat().st_mtime < newer_than:
            continue
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            print(f"times: {path} is not a timing record ({err}); rerun its stage to rewrite it", file=sys.stderr)
            continue
        out[str(rec.get("stage") or path.stem)] = rec
    return out


def _step_text(rec: dict, top: int) -> str:
    parts = []
    for name, s in list((rec.get("steps") or {}).items())[:top]:
        per = s.get("per_unit")
        unit = s.get("unit")
        each = f", {per:.3g} s/{unit}" if per is not None and unit and s.get("n", 0) > 1 else ""
        parts.append(f"{name} {s['seconds']:.1f} s ({s['n']}{' ' + unit if unit else ''}{each})")
    return "; ".join(parts)


def rows(records: dict[str, dict], seen: dict[str, float] | None = None, top: int = 1) -> list[dict]:
    """One row per stage, in the order ``seen`` (DVC's order, with the seconds the run saw) or the records',
    with its share of the total."""
    order = list(seen) if seen else list(records)
    order += [s for s in records if s not in order]
    out = []
    for stage in order:
        rec = records.get(stage, {})
        seconds = seen.get(stage) if seen and stage in seen else rec.get("wall_s")
        if seconds is None:
            continue
        out.append({"stage": stage, "seconds": float(seconds), "startup_s": rec.get("startup_s"),
                    "steps": _step_text(rec, top) if rec else "(no timing record)"})
    total = sum(r["seconds"] for r in out)
    for r in out:
        r["share"] = r["seconds"] / total if total > 0 else 0.0
    return out


def render(table: list[dict], markdown: bool = False) -> str:
    total = sum(r["seconds"] for r in table)
    if markdown:
        lines = ["| stage | seconds | share | start-up s | hottest steps |", "|---|---:|---:|---:|---|"]
        lines += [f"| {r['stage']} | {r['seconds']:.1f} | {100 * r['share']:.1f} % | "
                  f"{'' if r['startup_s'] is None else format(r['startup_s'], '.1f')} | {r['steps']} |" for r in table]
        lines.append(f"| **total** | **{total:.1f}** | 100 % | | |")
        return "\n".join(lines)
    width = max([len(r["stage"]) for r in table] + [5])
    lines = [f"{'stage':<{width}}  {'seconds':>8}  {'share':>6}  {'start-up':>8}  hottest steps"]
    for r in table:
        start = "" if r["startup_s"] is None else f"{r['startup_s']:.1f}"
        lines.append(f"{r['stage']:<{width}}  {r['seconds']:>8.1f}  {100 * r['share']:>5.1f}%  {start:>8}  {r['steps']}")
    lines.append(f"{'total':<{width}}  {total:>8.1f}  {100.0 if total else 0.0:>5.1f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cxrbench times", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--dir", default=paths.TIMING, help="the folder of timing records (default: %(default)s)")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    ap.add_argument("--steps", type=int, default=1, help="hottest steps shown per stage (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.steps < 0:
        ap.error("--steps: expected 0 or more")
    records = load(args.dir)
    if not records:
        print(f"times: no timing records in {args.dir}/: run the pipeline (cxrbench run PROFILE --workspace, or "
              f"dvc repro) first", file=sys.stderr)
        return 1
    print(render(rows(records, top=args.steps), markdown=args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
