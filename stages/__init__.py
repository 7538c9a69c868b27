"""The pipeline's stage scripts, one per DVC stage, each run as ``python -m stages.NAME`` (see dvc.yaml)."""
