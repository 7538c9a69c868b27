"""Predicting files with a loaded run: each model's probabilities, their mean and vote, the predictions table."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cxrbench.classify import evaluation as E
from cxrbench.core import runtime
from cxrbench.classify.ensemble import vote_decision
from cxrbench.studies.predict.inputs import OK, max_pixels, prepare_files
from cxrbench.studies.predict.load import Run
from cxrbench.studies.predict import readable as R
from cxrbench.studies.predict.overlays import Overlays


def predict_members(run: Run, images: np.ndarray) -> list[np.ndarray]:
    """Each model's sigmoid probabilities (N, L) float32 of uint8 inputs (N, C, S, S), as evaluate computes them."""
    from cxrbench.classify import training

    rows = np.arange(len(images))
    return [training.predict(m.model, images, rows, run.device, run.batch_size) for m in run.members]


def combine(run: Run, probs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(probability, 0/1 decision) per image and label: the mean probability, and the vote of the models'
    own thresholded decisions (:func:`cxrbench.classify.ensemble.vote_decision`; one model: its own decision)."""
    prob = probs[0] if len(probs) == 1 else np.mean(np.stack(probs), axis=0, dtype=np.float64).astype(np.float32)
    votes = np.mean([E.positive(p, m.cuts, m.cut) for p, m in zip(probs, run.members)], axis=0)
    return prob, vote_decision(votes, run.vote_tie).astype(np.int64)


def predict_files(run: Run, paths: Sequence[str | Path], overlays: str | Path | None = None,
                  workers: int = 1, progress: bool = True, check_copies: bool = True) -> pd.DataFrame:
    """The predictions table of ``paths`` (see :mod:`cxrbench.studies.predict.cli`); bad images get their
    reason as status. ``check_copies``: compare every readable input with the run's training images
    (:func:`cxrbench.studies.predict.readable.study_copies`; the ``training_copy`` column).

    Images are predicted in blocks of a whole number of ``evaluate.batch_size`` batches, so batches hold
    the same images as one call of :func:`cxrbench.classify.training.predict` over every readable image.
    """
    labels = run.labels
    n = len(paths)
    prob = np.full((n, len(labels)), np.nan, dtype=np.float32)
    pred = np.zeros((n, len(labels)), dtype=np.int64)
    status = [OK] * n
    overlay_col = [""] * n
    block = run.batch_size * max(1, 256 // run.batch_size)
    pending: list[tuple[int, np.ndarray]] = []
    painter = Overlays(run, overlays) if overlays is not None else None

    def flush(items):
        if not items:
            return
        idx = np.array([i for i, _ in items])
        images = np.stack([a for _, a in items])
        prob[idx], pred[idx] = combine(run, predict_members(run, images))
        if painter is not None:
            for i, note in zip(idx, painter.draw(images, prob[idx], [str(paths[i]) for i in idx], idx)):
                overlay_col[i] = note

    inputs = prepare_files(paths, run.recipe, workers, max_pixels(run.params))
    bar = runtime.progress(inputs, total=n, desc="predict", unit="img", enabled=progress)
    for i, (_, arr, st) in enumerate(bar):
        status[i] = st
        if arr is not None:
            pending.append((i, arr))
        if len(pending) >= block:
            flush(pending[:block])
            pending = pending[block:]
    flush(pending)

    ok = np.array([s == OK for s in status], dtype=bool)
    frame = pd.DataFrame({"path": [str(p) for p in paths], "status": status,
                          "decision": R.decisions(prob, pred, labels, ok)})
    if check_copies:
        frame["training_copy"], note = R.study_copies(run, paths, ok, workers)
        print(f"predict: training images: {note}", flush=True)
    else:
        frame["training_copy"] = np.where(ok, f"{R.NOT_CHECKED} (--no-copy-check)", "")
    frame[E.prob_columns(labels)] = prob
    decided = pd.DataFrame(pred, columns=[f"pred_{n}" for n in labels]).astype("Int64")
    decided.loc[~ok, :] = pd.NA
    frame = pd.concat([frame, decided], axis=1)
    frame["models"] = np.where(ok, ";".join(m.name for m in run.members), "")
    if painter is not None:
        frame["overlay"] = overlay_col
    return frame
