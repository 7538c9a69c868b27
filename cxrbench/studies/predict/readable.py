"""What predict tells a reader beside the numbers: the decision in words, a warning when the models are weak
on validation, and whether an input is one of the run's own study images or an altered copy of one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.core import paths
from cxrbench.core.io import read_json
from cxrbench.core.params import check_fraction, section
from cxrbench.studies.predict.load import Run

NONE_CALLED = "no label called"
NOT_CHECKED = "not checked"


def decisions(prob: np.ndarray, pred: np.ndarray, labels: Sequence[str], ok: np.ndarray) -> list[str]:
    """Per image, the labels called (``pred_* = 1``) in words, most probable first: ``"pneumonia (p 0.91),
    bacterial (p 0.62)"``; ``"no label called"``; empty for an image that could not be read."""
    out = []
    for p, d, good in zip(prob, pred, ok):
        if not good:
            out.append("")
            continue
        called = sorted(np.flatnonzero(d == 1), key=lambda j: -float(p[j]))
        out.append(", ".join(f"{labels[j]} (p {p[j]:.2f})" for j in called) if called else NONE_CALLED)
    return out


def min_val_f1(params: dict) -> float:
    return check_fraction("predict.min_val_f1", section(params, "predict.min_val_f1"), open_low=False,
                          open_high=False)


def validation_quality(run: Run) -> dict[str, float | None]:
    """Each model's micro F1 on its own validation fold (``metrics/eval``, the numbers the model card's
    thresholds come from); None where the file holds no validation scores."""
    out = {}
    for m in run.members:
        ev = read_json(Path(run.root) / paths.run("main", m.backbone, m.fold).eval_metrics)
        f1 = ((ev.get("val") or {}).get("micro") or {}).get("f1")
        out[m.name] = float(f1) if isinstance(f1, (int, float)) and np.isfinite(f1) else None
    return out


def quality_warning(run: Run) -> str | None:
    """A warning when any model's validation micro F1 is below ``predict.min_val_f1``, or unknown."""
    level = min_val_f1(run.params)
    q = validation_quality(run)
    unknown = [k for k, v in q.items() if v is None]
    if unknown:
        return (f"warning: the validation quality of {', '.join(unknown)} is unknown (no validation scores in "
                f"{paths.EVAL_METRICS}/): the decisions cannot be weighed; rerun the evaluate stage")
    low = {k: v for k, v in q.items() if v < level}
    if not low:
        return None
    listed = ", ".join(f"{k} {v:.2f}" for k, v in q.items())
    return (f"warning: these models are weak: validation micro F1 {listed} (below predict.min_val_f1 = "
            f"{level:.2f}; report/model_card.md). Read the decisions as a demonstration, not a diagnosis.")


def study_copies(run: Run, files: Sequence[str | Path], ok: np.ndarray, workers: int = 1) -> tuple[list[str], str]:
    """Per input, whether it is one of the run's study images the models trained or were validated on (the dev
    split), or an altered copy of one (exact, near, or cropped/marked/mirrored/turned: the index stage's copy
    search, :func:`cxrbench.data.copies.copies_between`); and a note saying what was compared. Without the run's
    index, splits and raw images nothing can be compared: each readable input then says ``not checked``."""
    from cxrbench.data import copies

    root = Path(run.root)
    need = [root / paths.INDEX, root / paths.SPLITS]
    if not all(p.is_file() for p in need):
        why = f"{NOT_CHECKED}: {' and '.join(str(p) for p in need if not p.is_file())} not found in the run folder"
        return [why if good else "" for good in ok], why
    splits = pd.read_csv(root / paths.SPLITS, keep_default_na=False)
    dev = splits.loc[splits["split"] == "dev", "path"].tolist()
    ref = [root / paths.RAW / p for p in dev]
    present = [str(f) for f in ref if f.is_file()]
    if not present:
        why = f"{NOT_CHECKED}: none of the {len(dev)} training images is under {root / paths.RAW}"
        return [why if good else "" for good in ok], why
    query = [i for i, good in enumerate(ok) if good]
    found = copies.copies_between([str(files[i]) for i in query], present, copies.validate(run.params), workers,
                                  desc="predict vs training images")
    out = ["" if not good else "no" for good in ok]
    for c in found:
        i = query[c["query"]]
        rel = Path(present[c["ref"]]).relative_to(root / paths.RAW)
        kind = {"exact": "the same pixels as", "near": "a near duplicate of",
                "altered": "an altered copy (crop, marks, mirror or turn) of"}[c["kind"]]
        out[i] = f"yes: {kind} training image {rel}"
    note = f"compared with {len(present)} of the run's {len(dev)} training and validation images"
    if len(present) < len(dev):
        note += f" ({len(dev) - len(present)} not on disk under {root / paths.RAW})"
    return out, note
