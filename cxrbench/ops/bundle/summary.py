"""The page of a collected bundle run (``cxrbench bundle report RESULTS --out DIR``): what the device measured,
what the plan chose and why, the wall time per stage beside the plan's estimate, and the run's tables.

RESULTS is the folder ``bundle.py collect`` wrote (bench.json, sizing.json, timings.json, metrics.tar.gz, ...).
DIR gets README.md, the three JSON files as they came back and the run's markdown tables (``metrics/*.md``),
so that every figure on the page can be traced to a file beside it.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from cxrbench.core.io import write_text
from cxrbench.ops.bundle.host import BENCH, SIZING, BundleError, write_json

DATA = ("download", "index", "split", "preprocess", "train_unet", "segment", "confound")
OTHER = ("ensemble", "audit", "planted", "external", "report")
TABLES = ("table2.md", "shortcut_audit.md", "aoppc_table.md", "summary.md", "reliability.md", "randomisation.md",
          "severity.md", "cohort_audit.md")


def group(stage: str) -> str:
    """The sizing's stage group of a DVC stage name (``train@resnet18-0`` -> ``train``)."""
    name = stage.split("@", 1)[0]
    return "data" if name in DATA else "other" if name in OTHER else name


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def page(bench: dict | None, sizing: dict | None, timings: dict) -> str:
    lines = []
    if bench:
        lines += [f"Device **{bench['device']}**, torch {bench['torch']} (CUDA {bench.get('cuda')}), "
                  f"host CPU {bench['runtime'].get('cpu')}; {bench['size']} px, batch {bench['batch']}, "
                  f"autocast {bench['amp']}; a stage's Python starts in {bench['stage_start_s']:.1f} s.", "",
                  "| backbone | train img/s (loader) | train img/s (tensor on device) | loader / tensor | inference img/s "
                  "| first step s | params M |", "|---|---:|---:|---:|---:|---:|---:|"]
        for t in bench["throughput"]:
            lines.append(f"| {t['backbone']} | {t['train_images_per_s']:.0f} | {t['synthetic_train_images_per_s']:.0f} | "
                         f"{t['loader_vs_synthetic']:.2f} | {t['infer_images_per_s']:.0f} | {t['first_step_s']:.1f} | "
                         f"{t['params_M']:.1f} |")
        lines += ["", f"Attribution on {bench['attribution'][0]['images'] if bench['attribution'] else 0} random "
                  f"images per method (measured in {bench['seconds']:.0f} s of measuring):", "",
                  "| backbone | method | s/image | peak GiB | rows per pass |", "|---|---|---:|---:|---:|"]
        for a in bench["attribution"]:
            spi = f"{a['seconds_per_image']:.3f}" if "seconds_per_image" in a else a.get("error", "")
            peak = f"{a['peak_memory_GiB']:.2f}" if "peak_memory_GiB" in a else "-"
            lines.append(f"| {a['backbone']} | {a['method']} | {spi} | {peak} | {a['max_batch']} |")
        if bench.get("skipped"):
            lines += ["", f"Not measured ({len(bench['skipped'])}): " + "; ".join(bench["skipped"][:12])
                      + (" ..." if len(bench["skipped"]) > 12 else "")]
    actual: dict[str, float] = {}
    for stage, s in timings["stages"].items():
        actual[group(stage)] = actual.get(group(stage), 0.0) + s
    if sizing and "chosen" in sizing:
        c, of = sizing["chosen"], sizing["of"]
        lines += ["", f"**Plan** ({'fits' if sizing['fits'] else 'did NOT fit even at its minimum'}; "
                  f"{sizing['seconds_left']:.0f} s left after measuring and the data stages; estimate "
                  f"{sizing['estimate_s']:.0f} s x safety {sizing['safety']}): {c['folds']} of {of['folds']} folds, "
                  f"{c['epochs']} of {of['epochs']} epochs, {c['controls']} of {of['controls']} audit controls, "
                  f"{len(c['methods'])} of {len(of['methods'])} methods ({', '.join(c['methods'])}), {c['images']} of "
                  f"{of['images']} images explained. Cohort per fold: {sizing['cohort']}.", "",
                  "| stage group | estimate s | wall s |", "|---|---:|---:|",
                  f"| data (before the plan; measuring took {sizing.get('measure_s', 0):.0f} s) | - | "
                  f"{actual.get('data', 0.0):.0f} |"]
        for g, est in sizing["estimate_per_stage_s"].items():
            lines.append(f"| {g} | {est:.0f} | {actual.get(g, 0.0):.0f} |")
    elif sizing:
        lines += ["", f"**No plan**: {sizing.get('error')}"]
    steps = timings["steps"]
    lines += ["", f"**Wall time**: {timings['total_seconds']:.0f} s in {len(steps)} call(s); "
              f"{'complete' if timings['complete'] else 'stopped: ' + steps[-1]['outcome'] if steps else 'no step'}. "
              f"Per stage (DVC's output, summed over calls):", "", "| stage | s |", "|---|---:|"]
    for stage, s in timings["stages"].items():
        lines.append(f"| {stage} | {s:.1f} |")
    return "\n".join(lines) + "\n"


def report(results: Path, out: Path) -> Path:
    timings = _read(results / "timings.json")
    if timings is None:
        raise BundleError(f"{results / 'timings.json'} not found: RESULTS must be a folder `bundle.py collect` wrote")
    bench, sizing = _read(results / BENCH), _read(results / SIZING)
    out.mkdir(parents=True, exist_ok=True)
    for name, obj in (("timings.json", timings), (BENCH, bench), (SIZING, sizing)):
        if obj is not None:
            write_json(out / name, obj)
    tables = []
    if (results / "metrics.tar.gz").is_file():
        with tarfile.open(results / "metrics.tar.gz") as tar:
            for m in tar.getmembers():
                name = Path(m.name).name
                if m.isfile() and Path(m.name).parent.as_posix() == "metrics" and name in TABLES:
                    (out / name).write_bytes(tar.extractfile(m).read())
                    tables.append(name)
    src = timings.get("source") or {}
    head = [f"# A budgeted run of the `{timings.get('profile', '?')}` profile",
            "", f"Source commit {src.get('commit', '?')}{' (dirty)' if src.get('dirty') else ''}; written by "
            f"`cxrbench bundle report` from what `bundle.py collect` returned.", "", ""]
    body = page(bench, sizing, timings)
    links = ("The run's tables: " + ", ".join(f"[{t}]({t})" for t in sorted(tables)) if tables
             else "No table came back (the run stopped before the stages that write them).")
    path = out / "README.md"
    write_text(path, "\n".join(head) + body + "\n" + links + "\n")
    return path
