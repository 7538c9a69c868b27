"""Score any model's predictions the way the authors scored theirs: their 14 labels, their label rule, ``> 0.51``.

Chatterjee et al. (soumickmj/diagnoPP @ 26fc886) label each image by substring
matches of its finding (:func:`cxrbench.cohort.paper_labels`) and call a label
positive when its sigmoid is ``> 0.51``. To put our numbers beside their
published column like for like, a model trained on our 18-label table is scored
on their 14 labels too: their label ``P`` reads our output ``PAPER_TO_OURS[P]``;
a label the model has no output for (MERS, absent from our table) is never
predicted, and counted as such (``labels_without_output``).

The truth comes from each test image's upstream finding (``index.csv``:
``finding``, ``source``); a Kermany image of the rebuilt cohort carries its
class from the file name, which :data:`KERMANY_FINDING` turns into the finding
their metadata gives such files.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .cohort import KERMANY_FINDING, paper_labels
from .indexing import KERMANY
from .paper_labels import PAPER_PATHOLOGIES, PAPER_TO_OURS

THRESHOLD = 0.51        # their `confidence` in train_classifier.py; a fact of their code, like their labels


def findings_as_theirs(frame: pd.DataFrame) -> pd.Series:
    """The finding their metadata would give each row (``finding``, ``source`` columns)."""
    out = frame["finding"].astype(str).copy()
    kermany = (frame["source"] == KERMANY).to_numpy() & out.isin(list(KERMANY_FINDING)).to_numpy()
    out[kermany] = out[kermany].map(KERMANY_FINDING)
    return out


def truth(frame: pd.DataFrame) -> np.ndarray:
    """(N, 14) uint8: their labels of each row, in :data:`PAPER_PATHOLOGIES` order."""
    return paper_labels(findings_as_theirs(frame).reset_index(drop=True))


def probabilities(pred: pd.DataFrame, labels) -> tuple[np.ndarray, list[str]]:
    """(N, 14) probabilities of their labels from a predictions table with ``prob_<label>`` columns of
    ``labels`` (our ids); a label without an output is 0 (never predicted). Also returns those labels."""
    labels = list(labels)
    out = np.zeros((len(pred), len(PAPER_PATHOLOGIES)))
    missing = []
    for j, theirs in enumerate(PAPER_PATHOLOGIES):
        ours = PAPER_TO_OURS[theirs]
        if ours in labels:
            out[:, j] = pred[f"prob_{ours}"].to_numpy(float)
        else:
            missing.append(theirs)
    return out, missing


def shared_columns(labels) -> list[int]:
    """Columns of their 14 labels that the model has an output for (threshold-free metrics use these)."""
    labels = set(labels)
    return [j for j, theirs in enumerate(PAPER_PATHOLOGIES) if PAPER_TO_OURS[theirs] in labels]


def decide(prob: np.ndarray) -> np.ndarray:
    """Their decision: ``prob > 0.51``."""
    return np.asarray(prob, float) > THRESHOLD
