"""cxrbench: a reproducible benchmark for explainable deep learning on chest X-rays.

The package holds the logic; the scripts in ``stages/`` are thin DVC entry points
that read ``params.yaml``, call this package and write the stage outputs.

Importing it sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it: torch's OpenMP threads
that wait for work then sleep instead of spinning. On a busy machine a spinning thread holds the core
that the thread it waits for needs; measured on 2 cores under load 9 (benchmarks/bench_threads.py),
a resnet18 forward with 2 threads took 45-70 s spinning and 8-10 s passive. It must be set before
torch is imported (OpenMP reads it once), so the stage scripts import this package first; it never
changes a result (the work each thread does is the same).
"""

import os as _os

_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
