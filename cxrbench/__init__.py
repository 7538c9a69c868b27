"""cxrbench: a reproducible benchmark for explainable deep learning on chest X-rays.

The package holds the logic; the scripts in ``stages/`` are thin DVC entry points
that read ``params.yaml``, call this package and write the stage outputs.
"""

__version__ = "0.1.0"
