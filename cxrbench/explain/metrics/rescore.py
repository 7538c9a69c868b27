"""The aoppc stage's statistics recomputed from its per-image file, without perturbing an image again.

``metrics/aoppc_per_image.csv`` holds every per-image score the aoppc stage computed (method, backbone, fold,
image, patient, metric, value). The gains over the random map, their two-level intervals over models and
patients, the winners and the rank agreement across fills depend on nothing else. So when only the
statistics change (more resamples, another interval), a finished run's tables can be brought up to date in
seconds instead of hours of perturbations: :func:`scores_from_rows` rebuilds the stage's accumulator and
:func:`statistics` reruns the same functions the stage runs (:mod:`cxrbench.explain.metrics.tables`).

Runs of one profile that differ only in the training seed (``train.seed``) explain the same images of the
same patients; :func:`combine` makes them one run whose models are backbone x fold x seed, so that the
intervals over models and patients include the seeds (a ranking another seed overturns shows there).

What the file cannot give back is left out, not guessed: the map statuses beyond "scored or not", the
sanity counts and the curves. A map the stage did not score (degenerate) has no row, so it is "not ok" here
exactly as it was there, and the common set is the same.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrbench.explain.metrics import tables as AT
from cxrbench.explain.metrics.across_models import seed_model

STATISTICS = ("gain", "agreement", "winners")       # the parts of metrics/aoppc.json recomputed here
NOT_SCORED = "constant"                              # the status of a map with no row (any status but ok)


def scores_from_rows(frame: pd.DataFrame) -> dict:
    """The stage's accumulator (:func:`cxrbench.explain.metrics.tables.new_scores`) from the per-image rows:
    the value blocks in file order, the patient of each image per model, and each method's status per model
    (ok where it has a value of the threshold AOPPC, the one metric every scored map has)."""
    missing = set(AT.PER_IMAGE_COLUMNS) - set(frame.columns)
    if missing:
        raise ValueError(f"per-image file: columns {sorted(missing)} missing; expected {AT.PER_IMAGE_COLUMNS} "
                         f"(the aoppc stage's metrics/aoppc_per_image.csv)")
    if not len(frame):
        raise ValueError("per-image file: no rows (the aoppc stage scored no map)")
    values = pd.to_numeric(frame["value"], errors="coerce")
    if not np.isfinite(values.to_numpy(dtype=np.float64)).all():
        raise ValueError("per-image file: a value is empty or non-finite; the stage writes finite values only, so "
                         "the file is damaged: rerun the aoppc stage")
    scores = AT.new_scores()
    keys = ["method", "backbone", "fold", "metric"]
    for (m, bb, fold, metric), block in frame.groupby(keys, sort=False):
        AT.add_values(scores, m, bb, int(fold), metric, block["value"].to_numpy(np.float64),
                      block["image"].to_numpy(np.int64))
    anchor = AT.specs()[0]["metric"]                   # aoppc_threshold_morf
    for (bb, fold), block in frame.groupby(["backbone", "fold"], sort=False):
        fk = AT.fold_key(int(fold))
        n = int(block["image"].max()) + 1
        groups = np.full(n, "", dtype=object)
        groups[block["image"].to_numpy(np.int64)] = block["group"].astype(str).to_numpy()
        scores["groups"][(bb, fk)] = groups
        scored = block[block["metric"] == anchor]
        for m in dict.fromkeys(scored["method"].tolist()):         # not lung_area: it has no map
            rows = scored[scored["method"] == m]["image"].to_numpy(np.int64)
            status = np.full(n, NOT_SCORED, dtype=object)
            status[rows] = "ok"
            AT.add_status(scores, m, bb, int(fold), status)
    return scores


def statistics(scores: dict, methods: list, stats: dict, fills: list) -> dict:
    """``gain``, ``agreement`` and ``winners`` of metrics/aoppc.json, by the stage's own functions."""
    result = AT.summary(scores, methods, stats=stats, fills=fills)
    return {k: result[k] for k in STATISTICS}


def combine(frames: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """The per-image rows of runs that differ only in their training seed (``train.seed`` -> rows), as one run
    whose models are backbone x fold x seed: each backbone is renamed :func:`seed_model`. The images and their
    patients are the same in every run (the split and the explained sample have seeds of their own), so the
    intervals over models and patients resample the seeds' models beside the folds', on shared patients."""
    if len(frames) < 2:
        raise ValueError(f"{len(frames)} run(s): combining needs the runs of at least 2 training seeds")
    parts = []
    for seed, frame in frames.items():
        f = frame.copy()
        f["backbone"] = [seed_model(b, seed) for b in f["backbone"].astype(str)]
        parts.append(f)
    return pd.concat(parts, ignore_index=True)
