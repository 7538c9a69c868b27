"""The benchmark's headline: how much of the published score survives a leak-free protocol.

    python -m cxrbench.compare --paper-protocol A/table2.json --corrected B/table2.json \\
        --rebuilt C/table2.json --label "CPU, ci profile" --out results/cohort_table.md

Each input is the ``metrics/table2.json`` of one run (``dvc exp show`` names
the runs; ``git show <exp-ref>:metrics/table2.json`` or ``dvc exp apply`` gets
the file). Rows: every backbone of the runs and the ensemble; columns: seed
000's Table 2 (micro F1), then the three runs (micro F1 mean ± std over folds).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .io import read_json, write_text

COLUMNS = (("paper_protocol", "authors' cohort + their protocol"),
           ("corrected", "authors' cohort + corrected protocol"),
           ("rebuilt", "rebuilt cohort (leak-free)"))


def _cell(row: dict | None, metric: str = "f1") -> str:
    if row is None:
        return "–"
    m = row[metric]
    return f"{m['mean']:.3f} ± {m['std']:.3f}"


def table(runs: dict[str, dict], label: str) -> str:
    by_run = {name: {r["key"]: r for r in t["rows"]} for name, t in runs.items()}
    keys: list[str] = []
    for rows in by_run.values():
        for key in rows:
            if key not in keys:
                keys.append(key)
    keys = [k for k in keys if k != "ensemble"] + (["ensemble"] if any("ensemble" in r for r in by_run.values()) else [])
    head = ["model", "paper (Table 2)"] + [title for name, title in COLUMNS if name in runs]
    lines = [f"Micro F1 on each run's test split, mean ± std over folds ({label}).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        any_row = next(rows[key] for rows in by_run.values() if key in rows)
        paper = _cell({"f1": any_row["paper_f1"]}) if any_row.get("paper_f1") else "–"
        cells = [_cell(by_run[name].get(key)) for name, _ in COLUMNS if name in runs]
        lines.append("| " + " | ".join([any_row["model"], paper, *cells]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cxrbench.compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, title in COLUMNS:
        ap.add_argument(f"--{name.replace('_', '-')}", type=Path, help=f"table2.json of the run: {title}")
    ap.add_argument("--label", required=True, help="hardware and profile of the runs, printed with the table")
    ap.add_argument("--out", type=Path, help="write the Markdown table here (default: print)")
    args = ap.parse_args(argv)
    runs = {name: read_json(getattr(args, name)) for name, _ in COLUMNS if getattr(args, name)}
    if not runs:
        ap.error("give at least one of --paper-protocol, --corrected, --rebuilt")
    text = table(runs, args.label)
    if args.out:
        write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
