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

from cxrbench.classify.evaluation import (evaluate_frame, mean_std, micro_roc, multilabel_metrics, positive,
                                          prob_columns, thresholds_from_frame, true_columns)
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
    kw = dict(n_boot=stats["resamples"], seed=stats["seed"], confidence=stats["confidence"],
              **{k: stats[k] for k in ("method", "min_valid_share") if k in stats})
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
    over test patient groups (:func:`cxrbench.core.bootstrap.fold_mean_ci`) and, with 2 or more folds, a second
    interval (``models``) that resamples the fold models too (training variance inside it), and our micro
    AUROC. ``test_rows``:
    per fold ``y``, ``groups``, ``pred`` and ``prob`` by model, ``labels`` and ``meta`` (the test images'
    ``finding`` and ``source``)."""
    from cxrbench.classify import paper_scoring as PS
    from cxrbench.core.bootstrap import fold_mean_ci, weighted_micro_auroc

    kw = dict(n_boot=stats["resamples"], seed=stats["seed"], confidence=stats["confidence"],
              **{k: stats[k] for k in ("method", "min_valid_share") if k in stats})

    # over models and patients: the fold models resampled too (two-level; BCa has no jackknife there)
    kw_models = {**kw, "method": kw.get("method", "expanded_percentile").replace("bca", "percentile")}

    def interval(folds) -> dict:
        ci = fold_mean_ci(folds, **kw)
        out = {"mean": ci["estimate"], "low": ci["low"], "high": ci["high"]}
        if len(folds) >= 2:
            two = fold_mean_ci(folds, models=True, **kw_models)
            out["models"] = {"low": two["low"], "high": two["high"], "status": two["status"],
                             "variance": two["variance"]}
        return out

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
                iv = intervals[model]["ours"][m]
                row[m].update(low=iv["low"], high=iv["high"], **({"models": iv["models"]} if "models" in iv else {}))
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
    body += _models_lines(rows, confidence)
    return (f"Micro-averaged precision, recall and F1 on the held-out test set: mean over folds "
            f"[{confidence:.0%} CI, bootstrap of test patient groups] ± std (ddof 0) over folds (training variation, "
            f"and test sampling where folds have their own test sets), beside Chatterjee et al. 2020 (Table 2, "
            f"mean ± std over their folds). *F1, paper's scoring*: the same predictions scored their way (their 14 "
            f"labels by their rule from each image's finding, > 0.51), the like-for-like comparison with their "
            f"column. Chance: AUROC 0.5.\n\n" + head + body + "\n" + (f"\n{note}\n" if note else ""))


def _models_lines(rows: list[dict], confidence: float) -> str:
    """The sentence under Table 2 with each model's F1 and AUROC intervals over models and patients."""
    def ci(v) -> str | None:
        two = (v or {}).get("models")
        if not two:
            return None
        if two.get("low") is None:
            return f"{v['mean']:.3f} [no CI]"
        return f"{v['mean']:.3f} [{two['low']:.3f}, {two['high']:.3f}]"
    parts = []
    for r in rows:
        f1, auc = ci(r.get("f1")), ci(r.get("auroc_micro"))
        if f1 or auc:
            parts.append(f"{r['model']}: F1 {f1 or '-'}, micro AUROC {auc or '-'}")
    if not parts:
        return ""
    variance = next((r[m]["models"]["variance"] for r in rows for m in ("f1", "auroc_micro")
                     if isinstance(r.get(m), dict) and r[m].get("models")), "models and test patients")
    return (f"\n\nWith the trained models as a source of variance too ({confidence:.0%} CI, two-level bootstrap: "
            f"the fold models drawn with replacement, then the test patients; variance: {variance}): "
            + "; ".join(parts) + ".")


def combine(table, backbones: list[str], folds: list[int], ev: dict, vote_tie: str, vote_rule: str) -> dict:
    """Per fold, the backbones' mean probability (thresholds chosen on validation) and their majority vote,
    read from each run's predictions and eval metrics. Returns ``per_fold`` (model -> per-fold metrics),
    ``fold_records`` (metrics/ensemble.json), ``rocs``, ``means`` (fold -> mean probabilities) and
    ``test_rows`` (per fold: the test labels, patients and every model's decisions, for the paired CIs)."""

    from cxrbench.core import paths
    from cxrbench.core.io import read_json

    labels = list(table.names)
    per_fold: dict[str, list[dict]] = {b: [] for b in backbones}
    per_fold["ensemble"], per_fold["vote"] = [], []
    fold_records, rocs, means = [], [], {}
    index = pd.read_csv(paths.INDEX, usecols=["path", "group", "finding", "source"], dtype=str,
                        keep_default_na=False).set_index("path")
    group_of = index["group"].to_dict()
    test_rows: list[dict] = []      # per fold: y, paths, groups and every model's thresholded test predictions
    for k in folds:
        frames, cuts = {}, {}
        for b in backbones:
            frames[b] = pd.read_csv(paths.run("main", b, k).predictions, keep_default_na=False)
            m = read_json(paths.run("main", b, k).eval_metrics)
            per_fold[b].append(m)
            cuts[b] = np.array([m["thresholds"][n]["cut"] for n in labels])
        mean = mean_probs(frames, labels)
        mcuts, how = thresholds_from_frame(mean, labels, ev["threshold"], ev["fixed_threshold"],
                                           ev["min_val_positives"])
        m_mean = evaluate_frame(mean, labels, mcuts, table, ev["cut"])
        keys, votes = majority_vote(frames, cuts, labels, ev["cut"])
        m_vote = {}
        for part in ("val", "test"):
            sel = (keys["split"] == part).to_numpy()
            m_vote[part] = multilabel_metrics(keys.loc[sel, true_columns(labels)].to_numpy(int),
                                              vote_decision(votes[sel], vote_tie), votes[sel], labels, table)
        per_fold["ensemble"].append(m_mean)
        per_fold["vote"].append(m_vote)
        sel = (mean["split"] == "test").to_numpy()
        test_rows.append({
            "y": mean.loc[sel, true_columns(labels)].to_numpy(int), "paths": mean.loc[sel, "path"].to_numpy(),
            "groups": np.array([group_of[x] for x in mean.loc[sel, "path"]]), "labels": labels,
            "meta": index.loc[mean.loc[sel, "path"], ["finding", "source"]].reset_index(drop=True),
            "prob": {"ensemble": mean.loc[sel].reset_index(drop=True),
                     **{b: frames[b].loc[sel].reset_index(drop=True) for b in backbones}},
            "pred": {"ensemble": positive(mean.loc[sel, prob_columns(labels)], mcuts, ev["cut"]),
                     **{b: positive(frames[b].loc[sel, prob_columns(labels)], cuts[b], ev["cut"])
                        for b in backbones}}})
        means[k] = mean
        test = mean[mean["split"] == "test"]
        roc = micro_roc(test[true_columns(labels)].to_numpy(), test[prob_columns(labels)].to_numpy())
        roc.insert(0, "model", f"ensemble-f{k}")
        rocs.append(roc)
        fold_records.append({
            "fold": k, "backbones": backbones, "threshold_method": ev["threshold"],
            "thresholds": {n: {"cut": float(c), "how": h} for n, c, h in zip(labels, mcuts, how)},
            "mean": m_mean, "vote": m_vote, "vote_rule": vote_rule})
    return {"per_fold": per_fold, "fold_records": fold_records, "rocs": rocs, "means": means, "test_rows": test_rows}


def compare(per_fold: dict, test_rows: list[dict], backbones: list[str], folds: list, stats: dict,
            vote_rule: str, paper_rule, unit: str = "folds") -> dict:
    """Every model summarised over folds (test and val), the ensemble against the best single backbone
    (chosen on validation micro F1, never on test) with a paired CI, and the Table-2-style rows and note."""
    from cxrbench.classify.evaluation import summary_rows

    rows = summary_rows(per_fold, "test")
    val_rows = summary_rows(per_fold, "val")
    # the best single backbone is chosen on validation micro F1, never on test
    best = max(backbones, key=lambda b: np.mean([f["val"]["micro"]["f1"] for f in per_fold[b]]))
    paired = {"ensemble": "ensemble (mean probability)", "best_single": best,
              "best_single_chosen_by": "mean validation micro F1"}
    if len(backbones) < 2:     # the ensemble of one backbone is that backbone: a difference of 0 by construction
        paired.update(status="one_backbone", difference=None, fold_differences=[], ci=None, fold_cis=None)
    else:
        paired.update(status="ok", **paired_difference(
            [t["y"] for t in test_rows], [t["pred"]["ensemble"] for t in test_rows],
            [t["pred"][best] for t in test_rows], [t["groups"] for t in test_rows],
            [t["paths"] for t in test_rows], stats))
    for r in rows + val_rows:
        if r["model"] == "vote":
            r["rule"] = vote_rule
    models = [*backbones, "ensemble"]
    t2 = table2({m: per_fold[m] for m in models}, "test", table2_intervals(test_rows, models, stats, paper_rule))
    if paired["status"] == "one_backbone":
        compared = (f"Ensemble vs best single backbone: not compared (one backbone, {best}: the ensemble is its "
                    f"probability, so their difference is 0 by construction). ")
    else:
        compared = (f"Ensemble vs best single backbone ({best}, chosen on validation micro F1), test micro F1, "
                    f"mean over {len(folds)} {unit}: difference {paired['difference']:+.3f}" + (
                        f", {stats['confidence']:.0%} CI [{paired['ci']['low']:+.3f}, {paired['ci']['high']:+.3f}] "
                        f"(paired bootstrap over {paired['ci']['groups']} test patient groups, {stats['resamples']} "
                        f"resamples)" if paired["ci"] else ", per-fold CIs in metrics/table2.json (each fold has its "
                                                           "own test set)") +
                    f"; per fold {', '.join(f'{d:+.3f}' for d in paired['fold_differences'])} (training "
                    f"variation). No p value: the folds' differences are few and share test patients. ")
    note = compared + f"Majority vote: {vote_rule}."
    return {"rows": rows, "val_rows": val_rows, "paired": paired, "table2": t2, "note": note}


def pool_seeds(combined: dict[int, dict]) -> dict:
    """Several runs' :func:`combine` outputs (training seed -> output) that differ in the seed alone, as one
    run whose models are fold x seed: ``per_fold`` (model -> one entry per fold and seed), ``test_rows`` in the
    same order, and ``folds`` naming each (``f0@seed42``). :func:`compare` on it gives Table 2 with the seeds'
    models as a source of variance: its second interval resamples the fold x seed models, then the test
    patients, one weight per patient shared by every model that tests them (the seeds test the same
    patients)."""
    if len(combined) < 2:
        raise ValueError(f"{len(combined)} run(s): pooling training seeds needs at least 2")
    models = {tuple(c["per_fold"]) for c in combined.values()}
    if len(models) != 1:
        raise ValueError(f"the runs have other models ({sorted(models)}); pool runs of one profile")
    per_fold: dict[str, list[dict]] = {m: [] for m in next(iter(models))}
    test_rows, folds = [], []
    for seed, c in sorted(combined.items()):
        for m, entries in c["per_fold"].items():
            per_fold[m].extend(entries)
        test_rows.extend(c["test_rows"])
        folds.extend(f"f{r['fold']}@seed{seed}" for r in c["fold_records"])
    return {"per_fold": per_fold, "test_rows": test_rows, "folds": folds}
