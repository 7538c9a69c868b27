"""The evaluate and ensemble stages of a ``train.task: multiclass`` run: argmax decisions, no thresholds.

evaluate (:func:`evaluate_run`): the fold's val rows and the test rows inside the task
(:mod:`cxrbench.classify.task`), predicted by the classifier that ``evaluate.checkpoint`` names and by each
snapshot of its schedule's cycles (``train.snapshots``; columns ``prob_s{K}_{class}``), and scored with
:func:`cxrbench.classify.task.multiclass_metrics` (CIs over test patient groups); a two-stage classifier
(``train.hierarchy``) also by the paper's hard rule (``test_sequential``, :mod:`cxrbench.classify.hierarchy`).

ensemble (:func:`ensemble_run`): per fold, the members (each backbone's classifier, and its snapshots with
``ensemble.snapshots``) combined by ``ensemble.combine``: ``mean`` (seed 001's SCPA, softmax class-posterior
averaging) or ``max`` (PM, prediction maximisation: each class's largest probability over the members,
renormalised to sum to 1 so that it stays a distribution; the argmax is the class of the single most
confident member). With one test set for every fold (the rebuilt cohort) the folds' combined test
probabilities are combined once more, the same way (``all_folds``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.classify import task as TK
from cxrbench.classify.evaluation import predict_fold, prob_columns, true_columns
from cxrbench.core.params import check_choice, section

COMBINE = ("mean", "max")


def validate(params: dict) -> dict:
    """``ensemble.combine`` (mean | max) and ``ensemble.snapshots`` (bool); absent keys: mean, false."""
    from cxrbench.core.params import ParamError

    p = section(params, "ensemble")
    combine = check_choice("ensemble.combine", p.get("combine", "mean"), COMBINE)
    snaps = p.get("snapshots", False)
    if not isinstance(snaps, bool):
        raise ParamError("ensemble.snapshots", f"expected true or false, got {snaps!r}")
    return {"combine": combine, "snapshots": snaps}


def snapshot_columns(classes, k: int) -> list[str]:
    return [f"prob_s{k}_{c}" for c in classes]


def snapshots_in(frame: pd.DataFrame) -> list[int]:
    """The snapshot indices whose probability columns a predictions table holds."""
    return sorted({int(m.group(1)) for c in frame.columns if (m := re.match(r"prob_s(\d+)_", c))})


def evaluate_run(model, meta: dict, cache, splits: pd.DataFrame, fold: int, device, batch_size: int,
                 stats: dict, model_dir: str | Path) -> tuple[pd.DataFrame, dict]:
    """(predictions table, metrics) of one multiclass classifier and its snapshots."""
    from cxrbench.classify import schedules
    from cxrbench.classify.models import load_classifier

    classes = list(meta["labels"])
    pred = predict_fold(model, meta, cache, splits, fold, device, batch_size)
    k = 0
    while (Path(model_dir) / schedules.snapshot_file(k)).is_file():
        snap, smeta = load_classifier(Path(model_dir) / schedules.snapshot_file(k), device)
        p = predict_fold(snap, smeta, cache, splits, fold, device, batch_size)
        if not (p["path"].to_numpy() == pred["path"].to_numpy()).all():
            raise RuntimeError(f"snapshot {k} of {model_dir} scored other rows than its classifier")
        pred[snapshot_columns(classes, k)] = p[prob_columns(classes)].to_numpy()
        k += 1
    out = {"task": "multiclass", "classes": meta["classes"], "snapshots": k}
    for part in ("val", "test"):
        sub = pred[pred["split"] == part]
        if len(sub):
            out[part] = TK.multiclass_metrics(sub[true_columns(classes)].to_numpy(), sub[prob_columns(classes)].to_numpy(),
                                              classes, sub["patient"].to_numpy(), stats if part == "test" else None)
    test = pred[pred["split"] == "test"]
    if meta.get("hierarchy") and len(test):     # a two-stage classifier: also the paper's hard rule (classify.hierarchy)
        from cxrbench.classify import hierarchy

        out["test_sequential"] = hierarchy.sequential_metrics(
            test[true_columns(classes)].to_numpy(), test[prob_columns(classes)].to_numpy(), classes,
            meta["hierarchy"], test["patient"].to_numpy(), stats)
    return pred, out


def combine(probs: list[np.ndarray], how: str) -> np.ndarray:
    """Members' (N, C) probabilities combined: their mean, or each class's max renormalised to sum 1."""
    a = np.stack([np.asarray(p, dtype=np.float64) for p in probs])
    if how == "mean":
        return a.mean(0)
    if how == "max":
        m = a.max(0)
        return m / m.sum(1, keepdims=True)
    raise ValueError(f"unknown combine {how!r}; valid: {COMBINE}")


def members(frames: dict[str, pd.DataFrame], classes, snapshots: bool) -> dict[str, np.ndarray]:
    """{member name: (N, C) probabilities}: each backbone's classifier, and its snapshots when asked."""
    out = {}
    for name, f in frames.items():
        if not (f["path"].to_numpy() == next(iter(frames.values()))["path"].to_numpy()).all():
            raise ValueError(f"predictions of {name} cover other rows than the others: rerun evaluate for all")
        out[name] = f[prob_columns(classes)].to_numpy(float)
        if snapshots:
            for k in snapshots_in(f):
                out[f"{name}/s{k}"] = f[snapshot_columns(classes, k)].to_numpy(float)
    return out


def ensemble_run(frames_by_fold: dict[int, dict[str, pd.DataFrame]], classes, how: str, snapshots: bool,
                 stats: dict) -> dict:
    """Per fold: each backbone's test metrics and the ensemble's; over folds (one shared test set): the
    ensemble of the folds' ensembles. Returns metrics and the per-fold ensemble tables."""
    out: dict = {"combine": how, "snapshots": snapshots, "folds": {}, "tables": {}}
    test_probs, test_paths = [], []
    for fold, frames in frames_by_fold.items():
        base = next(iter(frames.values()))
        mem = members(frames, classes, snapshots)
        prob = combine(list(mem.values()), how)
        table = base[["path", "patient", "split", *true_columns(classes)]].copy()
        table[prob_columns(classes)] = prob
        out["tables"][fold] = table
        test = (table["split"] == "test").to_numpy()
        y, g = table.loc[test, true_columns(classes)].to_numpy(), table.loc[test, "patient"].to_numpy()
        rec = {"members": list(mem), "ensemble": TK.multiclass_metrics(y, prob[test], classes, g, stats)}
        for name, f in frames.items():
            rec[name] = TK.multiclass_metrics(y, f.loc[test, prob_columns(classes)].to_numpy(float), classes, g, None)
        out["folds"][fold] = rec
        test_probs.append(prob[test])
        test_paths.append(table.loc[test, "path"].to_numpy())
    if len(test_probs) > 1 and all(np.array_equal(test_paths[0], p) for p in test_paths):
        first = out["tables"][next(iter(out["tables"]))]
        t = first[first["split"] == "test"]
        out["all_folds"] = TK.multiclass_metrics(t[true_columns(classes)].to_numpy(), combine(test_probs, how),
                                                 classes, t["patient"].to_numpy(), stats)
    return out


def headline_block(res: dict) -> dict:
    """The numbers the ensemble stage's headline reads (cxrbench.core.headline.MULTICLASS): the ensemble of all
    folds (the first fold's ensemble when there is one fold), its accuracy beside the majority-class chance,
    macro F1 and the covid19 class's recall, F1 and AUROC, each with its CI and n."""
    which = "all_folds" if "all_folds" in res else f"fold {next(iter(res['folds']))}"
    m = res["all_folds"] if "all_folds" in res else next(iter(res["folds"].values()))["ensemble"]
    ci, n = m.get("ci") or {}, m["n"]

    def value(v, c):
        return {**(c or {}), "estimate": v, "n": n}

    out = {"model": f"ensemble ({which})", "accuracy": value(m["accuracy"], ci.get("accuracy")),
           "accuracy_chance": m["accuracy_chance"], "macro_f1": value(m["macro_f1"], ci.get("macro_f1"))}
    if "covid19" in m["per_class"]:
        pc, pci = m["per_class"]["covid19"], (ci.get("per_class") or {}).get("covid19") or {}
        for key in ("recall", "f1", "auroc"):
            out[f"{key}_covid19"] = value(pc.get(key), pci.get(key))
    return out


def ensemble_markdown(res: dict, classes) -> str:
    from cxrbench.core import bootstrap as B

    how = {"mean": "mean of softmax probabilities (SCPA)", "max": "per-class maximum (PM)"}[res["combine"]]
    interval = next((r["ensemble"]["ci"]["accuracy"]["method"] for r in res["folds"].values()
                     if "ci" in r["ensemble"]), B.DEFAULT_METHOD)          # the one the CIs used (stats.method)
    parts = [f"# Multiclass ensemble\n\nMembers combined by the {how}"
             f"{', snapshots included' if res['snapshots'] else ''}; decisions by argmax; CIs: "
             f"{B.method_name(interval)} bootstrap over test patient groups.\n"]
    if "all_folds" in res:
        parts.append(TK.metrics_markdown(f"ensemble of all {len(res['folds'])} folds (test)", res["all_folds"]))
    for fold, rec in res["folds"].items():
        parts.append(TK.metrics_markdown(f"fold {fold} ensemble of {len(rec['members'])} members (test)",
                                         rec["ensemble"]))
    return "\n".join(parts)
