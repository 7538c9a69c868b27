"""Score any model's predictions the way the authors scored theirs: their 14 labels, their label rule, ``> 0.51``.

Chatterjee et al. (soumickmj/diagnoPP @ 26fc886) label each image by substring
matches of its finding (:func:`cxrbench.data.cohort.paper_labels`) and call a label
positive when its sigmoid is ``> 0.51``: the cut and inequality of
``params.yaml: paper_protocol.paper.evaluate`` (:func:`rule`). To put our numbers beside their
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

from cxrbench.data.cohort import KERMANY_FINDING, paper_labels
from cxrbench.classify.evaluation import CUTS, positive
from cxrbench.data.indexing import KERMANY
from cxrbench.data.paper_labels import PAPER_PATHOLOGIES, PAPER_TO_OURS

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


def rule(params: dict) -> tuple[float, str]:
    """Their cut and inequality, as ``params.yaml`` (not merged with a protocol) states them:
    ``paper_protocol.paper.evaluate.fixed_threshold`` and ``.cut`` (0.51, ``gt``)."""
    from cxrbench.core.params import check_choice, check_fraction, section

    ev = section(params, "paper_protocol.paper.evaluate")
    return (check_fraction("paper_protocol.paper.evaluate.fixed_threshold", ev.get("fixed_threshold")),
            check_choice("paper_protocol.paper.evaluate.cut", ev.get("cut"), CUTS))


def decide(prob: np.ndarray, threshold: float, cut: str) -> np.ndarray:
    """Their decision on (N, 14) probabilities, e.g. ``prob > 0.51`` (:func:`rule`)."""
    return positive(prob, threshold, cut)
