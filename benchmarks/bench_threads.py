"""Torch's intra-op threads under contention: a resnet18 forward (44 images of 64 px, the aoppc stage's
batch in the ci profile) timed with 1 and 2 threads, with OpenMP's waiting threads spinning (ACTIVE) or
sleeping (PASSIVE, what importing cxrbench sets).

    python3 benchmarks/bench_threads.py [--repeats 15] [--busy 0]

Each setting runs in a fresh process (OpenMP reads OMP_WAIT_POLICY once, when torch loads). ``--busy N``
starts N CPU-bound processes (a Python loop each) for the duration, to measure on a busy machine; the load
average is printed with each figure. Prints wall and CPU seconds per setting.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys

CHILD = r"""
import os, sys, time, json, torch, timm
torch.set_num_threads(int(sys.argv[1]))
m = timm.create_model("resnet18", num_classes=3, pretrained=False).eval()
x = torch.rand(44, 3, 64, 64)
with torch.no_grad():
    m(x)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(int(sys.argv[2])):
        m(x)
    print(json.dumps({"wall_s": round(time.perf_counter() - t, 2), "cpu_s": round(time.process_time() - c, 2),
                      "load": round(os.getloadavg()[0], 1)}))
"""


def _spin() -> None:
    while True:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--busy", type=int, default=0, help="CPU-bound processes to run beside (default: 0)")
    args = ap.parse_args()
    busy = [mp.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for p in busy:
        p.start()
    rows = []
    try:
        for threads, policy in ((1, "PASSIVE"), (2, "ACTIVE"), (2, "PASSIVE")):
            env = {**os.environ, "OMP_WAIT_POLICY": policy}
            out = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(args.repeats)], env=env,
                                 capture_output=True, text=True, check=True).stdout
            rows.append({"threads": threads, "OMP_WAIT_POLICY": policy, **json.loads(out.strip().splitlines()[-1])})
    finally:
        for p in busy:
            p.terminate()
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    print(json.dumps({"cpu": cpu, "cores": os.cpu_count(), "busy_processes": args.busy, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
