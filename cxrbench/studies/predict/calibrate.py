"""``cxrbench predict --calibrate LABELS.csv``: decisions refitted on a labelled sample of the user's own site.

The validation cuts were chosen on the study's images; at another site the probabilities shift (another
scanner, another population), and a cut that called healthy on most normal study images may call it on 3 in
10 there. With ``--calibrate`` predict first scores the labelled images of the CSV (columns ``path`` and
``y_<label>`` with 0 / 1 / empty for unknown; paths relative to the CSV's folder), then per label either

* ``cut`` (default): the cut of the mean probability with the largest Youden's J on those images, or
* ``platt``: Platt scaling (scikit-learn's ``LogisticRegression`` on the logit of the probability), whose
  calibrated probability ``cal_prob_<label>`` is then cut at 0.5,

and decides ``pred_<label>`` of the predicted images with it. A label with fewer than ``MIN_PER_CLASS``
labelled images of either class keeps the validation decision, with the reason. The fit (cuts, n, how far
each cut moved from the mean of the models' validation cuts) is written beside ``--out`` as
``<out stem>.calibration.json``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.studies.external.stats import youden_cut
from cxrbench.studies.predict.load import PredictError

METHODS = ("cut", "platt")
MIN_PER_CLASS = 5


def read_labels(path: str | Path, labels: list[str]) -> pd.DataFrame:
    """The labelled sample: ``path`` (resolved against the CSV's folder) and one ``y_<label>`` column per label
    of ``labels`` (NaN where a column is absent or a cell empty). Errors name the file, line and cell."""
    path = Path(path)
    if not path.is_file():
        raise PredictError(f"--calibrate {path}: no such file (a CSV with columns path, y_<label>...)")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "path" not in frame.columns:
        raise PredictError(f"--calibrate {path}: no column 'path' (columns: {list(frame.columns)})")
    known = [c for c in frame.columns if c.startswith("y_")]
    unknown = [c for c in known if c[2:] not in labels]
    if unknown:
        raise PredictError(f"--calibrate {path}: column(s) {unknown} name no label of the run {labels}")
    if not known:
        raise PredictError(f"--calibrate {path}: no y_<label> column (labels of the run: {labels})")
    out = pd.DataFrame({"path": [str((path.parent / p).resolve()) if p else "" for p in frame["path"]]})
    for i, p in enumerate(frame["path"]):
        if not p:
            raise PredictError(f"--calibrate {path}, line {i + 2}: empty path")
    for name in labels:
        col = f"y_{name}"
        values = np.full(len(frame), np.nan)
        if col in frame.columns:
            for i, cell in enumerate(frame[col].str.strip()):
                if cell in ("0", "1"):
                    values[i] = float(cell)
                elif cell:
                    raise PredictError(f"--calibrate {path}, line {i + 2}: {col} is {cell!r}; expected 0, 1 or empty")
        out[col] = values
    return out


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def fit(y: np.ndarray, prob: np.ndarray, labels: list[str], method: str = "cut",
        validation_cuts: np.ndarray | None = None) -> dict:
    """Per label, the site's decision rule fitted on labelled images: ``y`` (N, L) 0/1 with NaN for unknown,
    ``prob`` (N, L) the run's mean probability. ``validation_cuts`` (L,): the mean of the models' own cuts,
    for ``shift``."""
    if method not in METHODS:
        raise PredictError(f"--calibrate-method {method!r}: expected one of {list(METHODS)}")
    out = {}
    for j, name in enumerate(labels):
        known = np.isfinite(y[:, j]) & np.isfinite(prob[:, j])
        yy, pp = y[known, j].astype(int), prob[known, j]
        pos, neg = int(yy.sum()), int(len(yy) - yy.sum())
        entry: dict = {"n": int(len(yy)), "positives": pos, "negatives": neg, "method": method}
        if validation_cuts is not None:
            entry["validation_cut"] = float(validation_cuts[j])
        if min(pos, neg) < MIN_PER_CLASS:
            entry.update(status="kept the validation decision",
                         reason=f"{pos} positive and {neg} negative labelled image(s); at least {MIN_PER_CLASS} "
                                f"of each are needed")
            out[name] = entry
            continue
        if method == "cut":
            cut = youden_cut(yy, pp)
            entry.update(status="fitted", cut=cut)
            if validation_cuts is not None:
                entry["shift"] = cut - float(validation_cuts[j])
        else:
            from sklearn.linear_model import LogisticRegression

            lr = LogisticRegression(C=1e6).fit(_logit(pp)[:, None], yy)
            a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
            entry.update(status="fitted", slope=a, intercept=b)
            if a > 0:       # the probability at which the calibrated one is 0.5: the equivalent cut
                entry["cut"] = 1 / (1 + math.exp(b / a))
                if validation_cuts is not None:
                    entry["shift"] = entry["cut"] - float(validation_cuts[j])
        out[name] = entry
    return out


def apply(frame: pd.DataFrame, fitted: dict) -> pd.DataFrame:
    """``pred_<label>`` (and, for Platt, ``cal_prob_<label>``) of the predicted rows by the fitted rules; labels
    not fitted keep the validation decision. Column ``decided_by`` names which labels use the site's rule."""
    frame = frame.copy()
    ok = frame["status"] == "ok"
    site = []
    for name, entry in fitted.items():
        if entry["status"] != "fitted":
            continue
        p = frame.loc[ok, f"prob_{name}"].to_numpy(np.float64)
        if entry["method"] == "platt":
            cal = 1 / (1 + np.exp(-(entry["slope"] * _logit(p) + entry["intercept"])))
            frame[f"cal_prob_{name}"] = np.nan
            frame.loc[ok, f"cal_prob_{name}"] = cal
            decision = cal >= 0.5
        else:
            decision = p >= entry["cut"]
        frame.loc[ok, f"pred_{name}"] = decision.astype(int)
        site.append(name)
    frame["decided_by"] = np.where(ok, f"site calibration: {', '.join(site)}" if site else "validation cuts", "")
    return frame


def report_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".calibration.json")
