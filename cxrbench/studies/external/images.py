"""A source's images decoded and preprocessed with the run's cache recipe, cached by file content and recipe."""

from __future__ import annotations

import hashlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap

from cxrbench.data.images import DECODE_ERRORS
from cxrbench.data.indexing import exact_hash
from cxrbench.core.io import atomic_path, read_json, write_csv, write_json
from cxrbench.data.preprocess import Recipe, prepare
from cxrbench.core.runtime import progress
from cxrbench.studies.predict import inputs as PI


def file_sha1(path: str | Path) -> str:
    """SHA-1 of a file's bytes; '' when it cannot be read (then it is never taken from the cache)."""
    h = hashlib.sha1()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return ""
    return h.hexdigest()


def _prepare_job(job: tuple[str, Recipe]) -> tuple[np.ndarray | None, str, str]:
    """(the (C, S, S) uint8 input or None, the index's exact hash or '', status) of one file."""
    path, recipe = job
    dicom = Path(path).suffix.lower() in PI.DICOM_SUFFIXES
    expected = PI._dicom_errors() if dicom else DECODE_ERRORS
    try:
        grey = PI.load_image(path)
    except expected as err:
        return None, "", f"{type(err).__name__}: {err}".replace("\n", " ").strip()
    return prepare(grey, recipe), exact_hash(grey), PI.OK


def prepare_images(frame: pd.DataFrame, recipe: Recipe, cache_dir: Path, workers: int = 1,
                   show: bool = True) -> tuple[np.ndarray, pd.DataFrame, int]:
    """The preprocessed images (memory-mapped, in frame order), a table of ``status`` and ``exact_hash`` per
    image, and how many came from the cache (same file bytes, same recipe)."""
    n, c, s = len(frame), len(recipe.channels), recipe.size
    digests = [file_sha1(f) for f in frame["file"]]
    recipe_meta = recipe.record()
    old_images, old_rows = None, {}
    if all((cache_dir / f).is_file() for f in ("meta.json", "images.npy", "rows.csv")):
        meta = read_json(cache_dir / "meta.json")
        if meta.get("recipe") == _as_json(recipe_meta):
            old = pd.read_csv(cache_dir / "rows.csv", dtype=str, keep_default_na=False)
            old_images = np.load(cache_dir / "images.npy", mmap_mode="r")
            old_rows = {d: i for i, d in enumerate(old["file_sha1"]) if d}
            old_state = old[["status", "exact_hash"]].to_numpy()
    status, hashes = [""] * n, [""] * n
    todo = [i for i, d in enumerate(digests) if d not in old_rows]
    with atomic_path(cache_dir) as tmp:
        tmp.mkdir()
        images = open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, c, s, s))
        for i, d in enumerate(digests):
            if d in old_rows:
                images[i] = old_images[old_rows[d]]
                status[i], hashes[i] = old_state[old_rows[d]]
        jobs = [(frame["file"].iloc[i], recipe) for i in todo]
        if workers > 1 and len(jobs) >= 2 * workers:
            pool = ProcessPoolExecutor(max_workers=workers)
            results = pool.map(_prepare_job, jobs, chunksize=8)
        else:
            pool, results = None, map(_prepare_job, jobs)
        try:
            for i, (arr, h, st) in zip(todo, progress(results, total=len(jobs), desc=f"external {s}px",
                                                      unit="img", enabled=show)):
                if arr is not None:
                    images[i] = arr
                status[i], hashes[i] = st, h
        finally:
            if pool is not None:
                pool.shutdown()
        images.flush()
        del images, old_images
        write_csv(tmp / "rows.csv", pd.DataFrame({"path": frame["path"], "file_sha1": digests, "status": status,
                                                  "exact_hash": hashes}))
        write_json(tmp / "meta.json", {"n": n, "recipe": recipe_meta})
    state = pd.DataFrame({"status": status, "exact_hash": hashes})
    return np.load(cache_dir / "images.npy", mmap_mode="r"), state, n - len(todo)


def _as_json(recipe_meta: dict) -> dict:
    """A recipe as it reads back from meta.json (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in recipe_meta.items()}
