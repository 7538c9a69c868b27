"""Shared fixtures: the embedded real sample (data/sample) fetched, indexed and split once."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pandas as pd
import pytest

from cxrbench.data import dedupe
from cxrbench.data import indexing
from cxrbench.core import params as P
from cxrbench.data import splitting
from cxrbench.data.labels import LabelTable
from cxrbench.data.sources import SourceSpec, fetch

ROOT = Path(__file__).resolve().parents[1]

# pytest -n auto (pytest-xdist, the README's test command): each worker process gets its share of the cores
# for torch (CXRBENCH_THREADS, read by cxrbench.core.runtime.configure), so N workers do not run N x cores threads
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ.setdefault("CXRBENCH_THREADS", str(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))
    import torch

    torch.set_num_threads(int(os.environ["CXRBENCH_THREADS"]))
# the resumable stages keep their checkpoints in a store (cxrbench.core.resume), by default in the working
# directory: the tests keep theirs in a temporary folder of their own, never in the checkout
if not os.environ.get("CXRBENCH_RESUME_DIR"):
    import atexit
    import shutil
    import tempfile

    os.environ["CXRBENCH_RESUME_DIR"] = tempfile.mkdtemp(prefix="cxrbench-resume-")
    atexit.register(shutil.rmtree, os.environ["CXRBENCH_RESUME_DIR"], ignore_errors=True)
# fixtures that train a model: every test that uses one is marked slow (pytest -m "not slow" skips them)
TRAINING_FIXTURES = {"trained", "uninterrupted"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
SAMPLE = ROOT / "data" / "sample"
SAMPLE_MIRRORS = {"covid_chestxray": SAMPLE / "covid-chestxray-dataset", "kermany": SAMPLE / "chest_xray",
                  "v7_masks": SAMPLE / "semantic_masks_v7labs_lungs"}


@pytest.fixture(scope="session")
def params() -> dict:
    """params.yaml with the sample profile's index settings."""
    p = copy.deepcopy(P.load(ROOT / "params.yaml"))
    p["index"]["kermany_subset"] = {"NORMAL": None, "virus": None, "bacteria": None}
    p["split"]["folds"] = 2
    return p


@pytest.fixture(scope="session")
def table(params) -> LabelTable:
    return LabelTable.from_params(params)


@pytest.fixture(scope="session")
def raw(tmp_path_factory, params) -> Path:
    """data/raw as the download stage makes it, from the sample mirror."""
    raw = tmp_path_factory.mktemp("raw")
    for name, mirror in SAMPLE_MIRRORS.items():
        spec = SourceSpec.from_params(name, {**params["sources"][name], "mirror": str(mirror)})
        fetch(spec, raw / name, None)          # a mirror: copied, not extracted
    return raw


@pytest.fixture(scope="session")
def index_frame(raw, params, table) -> pd.DataFrame:
    report = indexing.IndexReport()
    p = indexing.validate(params)
    rows = indexing.covid_rows(raw, p, table, report) + indexing.kermany_rows(raw, p, table, report)
    rows = indexing.describe_images(raw, rows, 1, report, hash_size=params["dedupe"]["phash_size"])
    frame = indexing.attach_masks(raw, indexing.to_frame(rows, table))
    frame, _ = dedupe.dedupe(frame, params["dedupe"]["phash_max_distance"], params["dedupe"]["near_action"])
    frame.attrs["report"] = report
    return frame


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory, raw, index_frame, table) -> Path:
    """A folder with index.csv, splits.csv (2 folds) and a 64 px cache/ of the embedded sample.

    Tests that need real preprocessed X-rays use this, never the workspace's
    data/, so they run (and do not skip) in a clean clone.
    """
    from cxrbench.data import preprocess

    root = tmp_path_factory.mktemp("sample_data")
    index_frame.to_csv(root / "index.csv", index=False)
    splitting.split(index_frame, table, 0.4, 2, 0).to_csv(root / "splits.csv", index=False)
    recipe = preprocess.Recipe(size=64, percentiles=(1.0, 95.0), channels=("raw",))
    preprocess.build_cache(index_frame, raw, root / "cache", recipe, 1, "sample")
    return root
