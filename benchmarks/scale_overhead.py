"""The fan-out's overhead per task, next to the stage times, so that the speed-up on N workers can be predicted.

    python benchmarks/scale_overhead.py [--items 3] [--sleep 2] [--workers 1 2] [--json FILE]

On the toy project of cxrbench.ops.scale.toy (items x 2 folds: a train cell of 2 epochs of --sleep seconds,
then an evaluate cell, then an aggregate), it times a serial ``dvc repro`` and ``cxrbench scale run`` with each
--workers count on a local Ray, and prints per task: the worktree (``git worktree add`` + removal), the
checkout (params, dvc.lock, shared-cache config, ``dvc checkout`` of its inputs), the stage itself
(``dvc repro --single-item``: DVC's start and hashing plus the command), and collecting the result; with Ray's
start and the final ``dvc repro`` (run-cache restores and the aggregate). Labelled with the CPU and the load.

Predicting N GPUs: wall ~ upstream + ray_start + ceil(cells / N) * (stage + overhead per task) + final.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


from cxrbench.core import runtime
from cxrbench.core.params import load 
from cxrbench.ops.scale import coordinator, toy, worker 
from cxrbench.ops.scale import plan as planning 
from cxrbench.ops.scale.cli import compare_trees 


def hardware() -> str:
    return f"{runtime.cpu_model()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=3, help="toy backbones (cells = 2 stages x items x 2 folds)")
    ap.add_argument("--sleep", type=float, default=2.0, help="seconds per toy training epoch (2 epochs)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", help="also write every figure to this file")
    args = ap.parse_args(argv)
    os.environ.update({"DVC_NO_ANALYTICS": "1", "TOY_SLEEP": str(args.sleep), "CXRBENCH_THREADS": "1"})
    items = [chr(ord("a") + i) for i in range(args.items)]
    figures = {"hardware": hardware(), "items": args.items, "sleep": args.sleep, "runs": {}}
    print(figures["hardware"])
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        serial = toy.make(Path(tmp) / "serial", items=items)
        t0 = time.time()
        worker.dvc(["repro", "-q"], serial)
        figures["serial_s"] = time.time() - t0
        print(f"serial dvc repro: {figures['serial_s']:.1f} s ({args.items * 4} cells + prep + aggregate)")
        for n in args.workers:
            repo = toy.make(Path(tmp) / f"w{n}", items=items)
            conf = planning.settings(load(repo / "params.yaml"))
            plan = planning.make_plan(repo, conf)
            out = coordinator.run(repo, conf, plan, plan.outs, workers=n, log=lambda _: None)
            assert out.ok and compare_trees(repo, serial, plan.outs) == [], "outputs differ from serial"
            per = {k: [r.times[k] for r in out.results] for k in ("worktree", "checkout", "run", "collect")}
            runs = {kind: [r.times["run"] for r in out.results if planning.base_name(r.stage) == kind]
                    for kind in ("train", "evaluate")}
            row = {"wall_s": out.times["total"], "upstream_s": out.times["upstream"],
                   "ray_start_s": out.times.get("ray_start", 0.0), "tasks_s": out.times["tasks"],
                   "final_s": out.times.get("final", 0.0), "cells": len(out.results),
                   **{f"{k}_mean_s": statistics.mean(v) for k, v in per.items()},
                   **{f"run_{k}_mean_s": statistics.mean(v) for k, v in runs.items()},
                   "byte_identical": True}
            figures["runs"][n] = row
            print(f"{n} worker(s): wall {row['wall_s']:.1f} s = upstream {row['upstream_s']:.1f} + tasks "
                  f"{row['tasks_s']:.1f} (Ray start {row['ray_start_s']:.1f}) + final dvc repro {row['final_s']:.1f};"
                  f" per task (n={row['cells']}): worktree {row['worktree_mean_s']:.2f}, checkout "
                  f"{row['checkout_mean_s']:.2f}, dvc repro --single-item of a train cell {row['run_train_mean_s']:.2f} "
                  f"(its command sleeps {args.sleep * 2:.1f} s) and of an evaluate cell {row['run_evaluate_mean_s']:.2f},"
                  f" collect and worktree removal {row['collect_mean_s']:.2f}; "
                  f"byte-identical to serial")
        if len(args.workers) > 1:
            a, b = figures["runs"][args.workers[0]], figures["runs"][args.workers[-1]]
            figures["ratio"] = a["wall_s"] / b["wall_s"]
            print(f"wall {args.workers[0]} worker(s) / {args.workers[-1]} workers: {figures['ratio']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
