"""Copy a finished run's small result files into ``results/NAME/`` so that they can be committed.

A run's outputs live in its workspace (or a DVC experiment); ``results/`` keeps the few files a reader needs
to check a finding without rerunning: every table the stages write (``metrics/*.md``), the headline
metrics (``metrics/headline/*.json``), the detailed explanation and audit JSONs that the README's findings
quote, the main figures, the stage times, and a ``run.json`` with where and on what it ran (commit,
profile, machine, torch). Files over ``--max-kb`` are left out and listed, never truncated.

    python3 scripts/save_results.py RUN_DIR --profile study-cpu --out results/study-cpu

RUN_DIR: the run's repository root (a clone that ran ``cxrbench run PROFILE --workspace``).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from cxrbench.core import runtime

# what is copied, relative to the run's root (glob patterns); every path is named in cxrbench/core/paths.py
PATTERNS = (
    "metrics/*.md",
    "metrics/headline/*.json",
    "metrics/aoppc.json",
    "metrics/shortcut_audit.json",
    "metrics/reliability.json",
    "metrics/severity.json",
    "metrics/external.json",
    "metrics/table2.json",
    "metrics/data.json",
    "plots/aoppc/curves.png",
    "plots/attributions/*.png",
    "plots/shortcut_audit*.png",
    "plots/randomisation/cascade.png",
)


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="the run's repository root")
    ap.add_argument("--profile", required=True, help="the profile the run used (recorded in run.json)")
    ap.add_argument("--out", type=Path, required=True, help="the folder under results/ to write, e.g. results/study-cpu")
    ap.add_argument("--max-kb", type=int, default=600, help="leave out (and list) files larger than this")
    a = ap.parse_args(argv)
    root = a.run.resolve()
    if not (root / "dvc.yaml").is_file() or not (root / "metrics").is_dir():
        print(f"{root}: not a run's root (no dvc.yaml or metrics/): give the clone that ran the profile",
              file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    copied, skipped = [], []
    for pattern in PATTERNS:
        for src in sorted(root.glob(pattern)):
            rel = src.relative_to(root)
            kb = src.stat().st_size / 1024
            if kb > a.max_kb:
                skipped.append(f"{rel} ({kb:.0f} kB > {a.max_kb} kB)")
                continue
            dst = a.out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            copied.append(str(rel))
    times = subprocess.run([sys.executable, "-m", "cxrbench", "times", "--markdown", "--steps", "2",
                            "--dir", str(root / "timing")], capture_output=True, text=True, cwd=root)
    if times.returncode == 0:
        (a.out / "times.md").write_text(times.stdout)
        copied.append("times.md")
    else:
        skipped.append(f"times.md (cxrbench times failed: {times.stderr.strip()[-200:]})")
    import torch
    run = {"profile": a.profile, "commit": _git(root, "rev-parse", "--short", "HEAD"),
           "cpu": runtime.cpu_model(), "cores": __import__("os").cpu_count(), "torch": torch.__version__,
           "python": platform.python_version(), "files": copied, "left_out": skipped}
    (a.out / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    print(f"{len(copied)} files to {a.out}" + (f"; left out: {', '.join(skipped)}" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
