"""Ensembles of the backbones of one fold, and the Table-2-style comparison with seed 000.

* ``mean``: the mean of the sigmoid probabilities of every backbone (seed 000),
  thresholded like a single model (cuts chosen on the fold's val rows only);
* ``vote``: majority vote of the backbones' own thresholded predictions (a label
  is on when more than half of the backbones say so).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cxrbench.classify.evaluation import mean_std, positive, prob_columns, true_columns
from cxrbench.classify.models import DISPLAY_NAMES
from cxrbench.core.params import ParamError, check_choice, check_int, section

# Seed 000, Table 2: micro precision, recall, F1 (mean ± std over 5 folds).
PAPER_TABLE2 = {
    "DenseNet161": {"precision": (0.864, 0.012), "recall": (0.845, 0.015), "f1": (0.854, 0.008)},
    "InceptionResNetV2": {"precision": (0.844, 0.023), "recall": (0.787, 0.063), "f1": (0.814, 0.042)},
    "InceptionV3": {"precision": (0.802, 0.065), "recall": (0.792, 0.044), "f1": (0.796, 0.053)},
    "ResNet18": {"precision": (0.824, 0.014), "recall": (0.824, 0.008), "f1": (0.824, 0.007)},
    "ResNet34": {"precision": (0.815, 0.022), "recall": (0.800, 0.025), "f1": (0.807, 0.018)},
    "Ensemble": {"precision": (0.889, 0.010), "recall": (0.851, 0.005), "f1": (0.869, 0.007)},
}
METRICS = ("precision", "recall", "f1")


def validate(params: dict, n_backbones: int) -> dict:
    p = section(params, "ensemble")
    check_int("ensemble.min_backbones", p.get("min_backbones"), minimum=1)
    check_choice("ensemble.vote_tie", p.get("vote_tie"), VOTE_TIES)
    if n_backbones < p["min_backbones"]:
        raise ParamError("train.backbones", f"the ensemble needs at least ensemble.min_backbones="
                                            f"{p['min_backbones']} backbones, train.backbones lists {n_backbones}")
    return p


def align(frames: dict[str, pd.DataFrame], labels) -> pd.DataFrame:
    """The common key columns (path, patient, split, y_*) of the backbones' tables, checked equal."""
    names = list(frames)
    base = frames[names[0]][["path", "patient", "split", *true_columns(labels)]].reset_index(drop=True)
    for name in names[1:]:
        other = frames[name]
        if len(other) != len(base) or not (other["path"].to_numpy() == base["path"].to_numpy()).all() \
                or not (other["split"].to_numpy() == base["split"].to_numpy()).all():
            raise ValueError(f"predictions of {name} and {names[0]} cover other rows: rerun evaluate for both")
    return base


def mean_probs(frames: dict[str, pd.DataFrame], labels) -> pd.DataFrame:
    out = align(frames, labels)
    probs = np.mean([f[prob_columns(labels)].to_numpy(float) for f in frames.values()], axis=0)
    out[prob_columns(labels)] = probs
    return out


VOTE_TIES = ("negative", "positive")


def majority_vote(frames: dict[str, pd.DataFrame], cuts: dict[str, np.ndarray], labels,
                  cut: str = "ge") -> tuple[pd.DataFrame, np.ndarray]:
    """(key frame, votes fraction (N, L)); ``cut`` as in :func:`cxrbench.classify.evaluation.positive`;
    see :func:`vote_decision` for the rule."""
    out = align(frames, labels)
    votes = np.mean([positive(f[prob_columns(labels)].to_numpy(float), cuts[name], cut)
                     for name, f in frames.items()], axis=0)
    return out, votes


def vote_decision(votes: np.ndarray, tie: str) -> np.ndarray:
    """A label is on when more than half the backbones say so; exactly half (a tie) follows ``tie``."""
    check_choice("ensemble.vote_tie", tie, VOTE_TIES)
    half = np.isclose(votes, 0.5)
    return (votes > 0.5) | (half if tie == "positive" else np.zeros_like(half))


def vote_rule_name(n_backbones: int, tie: str) -> str:
    """The vote's honest name: an even number of voters makes ties possible, and 2 voters a unanimity/any rule."""
    if n_backbones % 2:
        return f"majority of {n_backbones} (no ties possible)"
    if n_backbones == 2:
        return "unanimity of 2 (a tie is negative)" if tie == "negative" else "any of 2 (a tie is positive)"
    return f"majority of {n_backbones}, a tie is {tie}"


def paired_difference(y: list[np.ndarray], pred_a: list[np.ndarray], pred_b: list[np.ndarray],
                      groups: list[np.ndarray], paths: list[np.ndarray], stats: dict) -> dict:
    """Test micro F1 of a minus b (mean over folds), with a paired bootstrap CI over test patient groups.

    Lists hold one array per fold (test rows). When every fold is scored on the
    same test set (the rebuilt cohort), one bootstrap resamples its patient
    groups and recomputes the fold mean; otherwise (the authors' per-fold test
    sets) each fold gets its own CI. The fold-to-fold spread is training
    variation, reported as such (``fold_differences``); no p value is given: with
    2-5 folds none is supported (the exact Wilcoxon test cannot go below 0.0625
    with 5 pairs).
    """
    from cxrbench.core.bootstrap import micro_f1, paired_ci

    diffs = [micro_f1(yk, ak) - micro_f1(yk, bk) for yk, ak, bk in zip(y, pred_a, pred_b)]
    out = {"metric": "test micro F1", "difference": float(np.mean(diffs)),
           "fold_differences": [float(d) for d in diffs], "ci": None, "fold_cis": None}
    kw = dict(n_boot=stats["resamples"], seed=stats["seed"], confidence=stats["confidence"])
    if all(np.array_equal(paths[0], p) for p in paths):
        ci = paired_ci(lambda i: float(np.mean([micro_f1(yk[i], ak[i]) for yk, ak in zip(y, pred_a)])),
                       lambda i: float(np.mean([micro_f1(yk[i], bk[i]) for yk, bk in zip(y, pred_b)])),
                       groups[0], **kw)
        out["ci"] = ci
    else:
        out["fold_cis"] = [paired_ci(lambda i, yk=yk, ak=ak: micro_f1(yk[i], ak[i]),
                                     lambda i, yk=yk, bk=bk: micro_f1(yk[i], bk[i]), g, **kw)
                           for yk, ak, bk, g in zip(y, pred_a, pred_b, groups)]
    return out


def _micro(metric: str, y: np.ndarray, pred: np.ndarray):
    from cxrbench.core.bootstrap import weighted_micro_f1, weighted_micro_precision_recall

    if metric == "f1":
        return lambda w: weighted_micro_f1(y, pred, w)
    j = METRICS.index(metric)
    return lambda w: weighted_micro_precision_recall(y, pred, w)[j]


def table2_intervals(test_rows: list[dict], models: list[str], stats: dict, paper_rule: tuple[float, str]) -> dict:
    """Per model: micro P/R/F1 under our scoring and under the paper's (their 14 labels from each image's
    finding, cut by ``paper_rule``, :func:`cxrbench.classify.paper_scoring.rule`), each the mean over folds with a CI
    over test patient groups (:func:`cxrbench.core.bootstrap.fold_mean_ci`), and our micro AUROC. ``test_rows``:
    per fold ``y``, ``groups``, ``pred`` and ``prob`` by model, ``labels`` and ``meta`` (the test images'
    ``finding`` and ``source``)."""
    from cxrbench.classify import paper_scoring as PS
    from cxrbench.core.bootstrap import fold_mean_ci, weighted_micro_auroc

    kw = dict(n_boot=stats["resamples"], seed=stats["seed"], confidence=stats["confidence"])

    def interval(folds) -> dict:
        ci = fold_mean_ci(folds, **kw)
        return {"mean": ci["estimate"], "low": ci["low"], "high": ci["high"]}

    truth = [PS.truth(t["meta"]) for t in test_rows]
    out = {}
    for model in models:
        theirs = [PS.probabilities(t["prob"][model], t["labels"]) for t in test_rows]
        paper_pred = [PS.decide(prob, *paper_rule) for prob, _ in theirs]
        entry = {"ours": {}, "paper_scoring": {}}
        for m in METRICS:
            for key, ys, preds in (("ours", [t["y"] for t in test_rows], [t["pred"][model] for t in test_rows]),
                                   ("paper_scoring", truth, paper_pred)):
                entry[key][m] = interval([[(t["groups"], _micro(m, y, d))] for t, y, d in zip(test_rows, ys, preds)])
        probs = [t["prob"][model][prob_columns(t["labels"])].to_numpy(float) for t in test_rows]
        entry["ours"]["auroc_micro"] = interval([[(t["groups"], lambda w, y=t["y"], p=p: weighted_micro_auroc(y, p, w))]
                                                 for t, p in zip(test_rows, probs)])
        entry["labels_without_output"] = theirs[0][1]
        out[model] = entry
    return out


def table2(per_fold: dict[str, list[dict]], part: str = "test", intervals: dict | None = None) -> list[dict]:
    """Rows: each backbone and the ensemble; measured micro P/R/F1 mean ± std beside the paper's, with
    the CIs and the paper's scoring of :func:`table2_intervals` when given."""
    rows = []
    for model, folds in per_fold.items():
        display = "Ensemble" if model == "ensemble" else DISPLAY_NAMES.get(model, model)
        row = {"model": display, "key": model, "folds": len(folds)}
        for m in METRICS:
            row[m] = dict(zip(("mean", "std"), mean_std(f[part]["micro"][m] for f in folds)))
            if intervals and model in intervals:
                row[m].update(low=intervals[model]["ours"][m]["low"], high=intervals[model]["ours"][m]["high"])
            paper = PAPER_TABLE2.get(display, {}).get(m)
            row[f"paper_{m}"] = {"mean": paper[0], "std": paper[1]} if paper else None
        if intervals and model in intervals:
            row["auroc_micro"] = intervals[model]["ours"]["auroc_micro"]
            row["paper_scoring"] = intervals[model]["paper_scoring"]
            row["labels_without_output"] = intervals[model]["labels_without_output"]
        rows.append(row)
    return rows


def table2_markdown(rows: list[dict], note: str = "", confidence: float = 0.95) -> str:
    def bad(v):
        return v is None or v["mean"] is None or (isinstance(v["mean"], float) and math.isnan(v["mean"]))

    def cell(v):
        if bad(v):
            return "-"
        ci = f" [{v['low']:.3f}, {v['high']:.3f}]" if v.get("low") is not None and not math.isnan(v["low"]) else ""
        return f"{v['mean']:.3f}{ci}" + (f" ± {v['std']:.3f}" if "std" in v else "")
    scored = any("paper_scoring" in r for r in rows)
    head = ("| Model | folds | Precision | Recall | F1 | " + ("micro AUROC | F1, paper's scoring | " if scored else "")
            + "paper Precision | paper Recall | paper F1 |\n" + "|---" * (8 + 2 * scored) + "|\n")
    body = "\n".join(f"| {r['model']} | {r['folds']} | " + " | ".join(cell(r[m]) for m in METRICS) + " | "
                     + (cell(r.get("auroc_micro")) + " | " + cell(r["paper_scoring"]["f1"]) + " | " if scored else "")
                     + " | ".join(cell(r[f"paper_{m}"]) for m in METRICS) + " |" for r in rows)
    return (f"Micro-averaged precision, recall and F1 on the held-out test set: mean over folds "
            f"[{confidence:.0%} CI, bootstrap of test patient groups] ± std (ddof 0) over folds (training variation, "
            f"and test sampling where folds have their own test sets), beside Chatterjee et al. 2020 (Table 2, "
            f"mean ± std over their folds). *F1, paper's scoring*: the same predictions scored their way (their 14 "
            f"labels by their rule from each image's finding, > 0.51), the like-for-like comparison with their "
            f"column. Chance: AUROC 0.5.\n\n" + head + body + "\n" + (f"\n{note}\n" if note else ""))
