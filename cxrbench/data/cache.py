"""Fast reads of the preprocess cache for training and inference.

The whole uint8 cache is read into memory once (512 px, 1 channel: 0.26 MB an
image), a batch is one fancy-indexing copy, and a background thread keeps the
next batches ready (pinned, for an asynchronous copy to the GPU). Images travel
as uint8 and become float on the device, a quarter of the bytes of float32.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch

from cxrbench.core import paths
from cxrbench.core.io import read_json


class CacheMismatchError(RuntimeError):
    pass


class Cache:
    """The preprocess cache of ``cache_dir``, aligned with ``index_csv``."""

    def __init__(self, cache_dir: str | Path = paths.CACHE, index_csv: str | Path = paths.INDEX,
                 in_memory: bool = True):
        cache_dir = Path(cache_dir)
        if not (cache_dir / "meta.json").is_file():
            raise FileNotFoundError(f"{cache_dir}/meta.json not found: run the preprocess stage first "
                                    f"(dvc repro preprocess)")
        self.meta = read_json(cache_dir / "meta.json")
        self.index = pd.read_csv(index_csv, dtype={"mask": str}, keep_default_na=False)
        if len(self.index) != self.meta["n"]:
            raise CacheMismatchError(f"{cache_dir} holds {self.meta['n']} images but {index_csv} lists "
                                     f"{len(self.index)}: rerun the preprocess stage (dvc repro)")
        mode = None if in_memory else "r"
        self.images = np.load(cache_dir / "images.npy", mmap_mode=mode)
        self.masks = np.load(cache_dir / "masks.npy", mmap_mode=mode)
        self.row = {p: i for i, p in enumerate(self.index["path"])}

    def rows(self, paths) -> np.ndarray:
        missing = [p for p in paths if p not in self.row]
        if missing:
            raise CacheMismatchError(f"{len(missing)} image(s) not in the cache, e.g. {missing[0]}: "
                                     f"rerun the preprocess stage (dvc repro)")
        return np.array([self.row[p] for p in paths], dtype=np.int64)


class BatchLoader:
    """Batches of (uint8 images, float targets, row ids) from an in-memory array.

    ``shuffle`` draws a new order each epoch from ``seed`` + epoch, so a resumed
    run sees the same order as an uninterrupted one.
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, rows: np.ndarray, batch_size: int,
                 shuffle: bool = False, seed: int = 0, drop_last: bool = False, prefetch: int = 4,
                 pin_memory: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images, self.targets, self.rows = images, targets, np.asarray(rows)
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.prefetch, self.pin_memory = prefetch, pin_memory
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.rows)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.rows))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))

    def _batch(self, sel: np.ndarray):
        rows = self.rows[sel]
        x = torch.from_numpy(np.ascontiguousarray(self.images[rows]))
        y = torch.from_numpy(np.ascontiguousarray(self.targets[sel]))
        if self.pin_memory:
            x, y = x.pin_memory(), y.pin_memory()
        return x, y, torch.from_numpy(rows)

    def __iter__(self) -> Iterator:
        order = self.order(self.epoch)
        self.epoch += 1
        chunks = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and chunks and len(chunks[-1]) < self.batch_size:
            chunks.pop()
        if self.prefetch <= 0:
            for sel in chunks:
                yield self._batch(sel)
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce():
            try:
                for sel in chunks:
                    if stop.is_set():
                        return
                    q.put(self._batch(sel))
                q.put(None)
            except BaseException as err:  # hand the error to the consumer, never swallow it
                q.put(err)

        worker = threading.Thread(target=produce, daemon=True)
        worker.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while worker.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    worker.join(timeout=0.05)


def to_float(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 (B, C, H, W) on the host -> float32 in [0, 1] on ``device``."""
    return x.to(device, non_blocking=True).float().div_(255.0)
