"""The pipeline's stage scripts, one per DVC stage, each run as ``python -m stages.NAME`` (see dvc.yaml).

``cxrbench`` is imported here, before any stage imports torch, so its OpenMP setting applies."""

import cxrbench  # noqa: F401 (sets OMP_WAIT_POLICY before torch loads)
