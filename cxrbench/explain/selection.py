"""The images the attribute stage explains: held-out test images positive for each target class, and the
lung masks they are scored with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.core import params as P
from cxrbench.core import paths
from cxrbench.data import splitting
from cxrbench.data.cache import Cache
from cxrbench.lungs.segmentation import LUNG_MASKS, load_lung_masks


def lung_masks(cache: Cache) -> tuple[np.ndarray, str]:
    """The segmentation stage's masks when present, else the cache's V7 masks."""
    if Path(LUNG_MASKS).is_file():
        return load_lung_masks(len(cache.index), mmap=True), LUNG_MASKS
    return cache.masks, paths.CACHE_MASKS


def select(cache: Cache, targets: list, max_images: int, fold: int) -> pd.DataFrame:
    """Held-out test images of ``fold`` positive for each target class (first ``max_images`` in index order)."""
    splits = pd.read_csv(paths.SPLITS, keep_default_na=False)
    test_paths = splitting.fold_parts(splits, fold)["test"]["path"]
    test = cache.index[cache.index["path"].isin(set(test_paths))]
    parts = []
    for t in targets:
        col = f"y_{t}"
        if col not in test.columns:
            raise P.ParamError("explain.targets", f"{t!r} is not a label column of {paths.INDEX}")
        sub = test[test[col] == 1].head(max_images).copy()
        sub["target_name"] = t
        parts.append(sub)
    return pd.concat(parts) if parts else test.iloc[:0]
