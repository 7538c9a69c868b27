"""Thresholds, metrics and summaries of multi-label predictions.

* Thresholds are chosen per label on the fold's validation rows only
  (:func:`thresholds_from_frame` drops every other row before it looks), or
  fixed. A label without positives (or negatives) in val keeps the fixed cut.
* Metrics (seed 000, section 4): micro and macro precision, recall and F1
  (scikit-learn), per-label AUROC (labels with one class present are skipped
  and listed), and a per-leaf confusion summary (true most-specific label ->
  predicted most-specific label).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score, roc_curve

from cxrbench.data.labels import LabelTable
from cxrbench.core import timing
from cxrbench.core.params import check_choice, check_fraction, check_int, section

THRESHOLD_METHODS = ("val_f1", "fixed")
CUTS = ("ge", "gt")
CHECKPOINTS = ("best", "last")


def validate(params: dict) -> dict:
    p = section(params, "evaluate")
    check_choice("evaluate.threshold", p.get("threshold"), THRESHOLD_METHODS)
    check_choice("evaluate.cut", p.get("cut"), CUTS)
    check_choice("evaluate.checkpoint", p.get("checkpoint"), CHECKPOINTS)
    check_fraction("evaluate.fixed_threshold", p.get("fixed_threshold"))
    check_int("evaluate.min_val_positives", p.get("min_val_positives"), minimum=1)
    check_int("evaluate.batch_size", p.get("batch_size"), minimum=1)
    return p


def prob_columns(labels) -> list[str]:
    return [f"prob_{n}" for n in labels]


def true_columns(labels) -> list[str]:
    return [f"y_{n}" for n in labels]


# --- thresholds ---------------------------------------------------------------

def positive(prob: np.ndarray, cuts, cut: str = "ge") -> np.ndarray:
    """Binary predictions: ``prob >= cuts`` (``ge``) or ``prob > cuts`` (``gt``, the authors' ``> 0.51``)."""
    prob = np.asarray(prob, dtype=float)
    if cut == "ge":
        return prob >= cuts
    if cut == "gt":
        return prob > cuts
    raise ValueError(f"unknown cut {cut!r}; valid: {CUTS}")


def f1_best_threshold(y: np.ndarray, p: np.ndarray, fallback: float) -> tuple[float, str]:
    """The cut of one label that maximises F1 on (y, p); midpoints between sorted scores."""
    y = np.asarray(y, dtype=bool)
    p = np.asarray(p, dtype=np.float64)
    if not np.isfinite(p).all():
        raise ValueError("non-finite validation probabilities")
    if y.all() or not y.any():
        return fallback, "one_class_in_val"
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    tp = np.cumsum(ys)
    fp = np.cumsum(~ys)
    f1 = 2 * tp / (tp + fp + ys.sum())
    # a cut is only possible between distinct scores: take the last index of each run of ties
    last = np.r_[ps[1:] != ps[:-1], True]
    f1 = np.where(last, f1, -1)
    i = int(np.argmax(f1))
    cut = (ps[i] + ps[i + 1]) / 2 if i + 1 < len(ps) else ps[i] / 2
    return float(cut), "val_f1"


def select_thresholds(y_val: np.ndarray, p_val: np.ndarray, method: str, fixed: float = 0.5,
                      min_positives: int = 1) -> tuple[np.ndarray, list[str]]:
    """Per-label cuts from validation arrays (N_val, L) only.

    ``val_f1``: the F1-best cut of each label, except for a label with fewer than
    ``min_positives`` positives in val, which keeps ``fixed`` (how: ``too_few_val_positives``):
    a cut fitted to one or two positives lands just under them and, on flat scores,
    flags every image. ``fixed``: ``fixed`` for every label.
    """
    n_labels = p_val.shape[1]
    if method == "fixed":
        return np.full(n_labels, fixed), ["fixed"] * n_labels
    if method != "val_f1":
        raise ValueError(f"unknown threshold method {method!r}; valid: {THRESHOLD_METHODS}")
    cuts, how = np.empty(n_labels), []
    for j in range(n_labels):
        pos = int(np.asarray(y_val[:, j], bool).sum())
        if 0 < pos < min_positives:
            cuts[j], h = fixed, "too_few_val_positives"
        else:
            cuts[j], h = f1_best_threshold(y_val[:, j], p_val[:, j], fixed)
        how.append(h)
    return cuts, how


def thresholds_from_frame(pred: pd.DataFrame, labels, method: str, fixed: float = 0.5, min_positives: int = 1):
    """Thresholds from the ``split == 'val'`` rows of a predictions table; other rows are never read."""
    val = pred.loc[pred["split"] == "val"]
    if val.empty:
        raise ValueError("no validation rows in the predictions table: thresholds need the fold's val part")
    return select_thresholds(val[true_columns(labels)].to_numpy(float), val[prob_columns(labels)].to_numpy(float),
                             method, fixed, min_positives)


# --- metrics ------------------------------------------------------------------

def multilabel_metrics(y_true: np.ndarray, y_pred: np.ndarray, y_prob: np.ndarray | None, labels,
                       table: LabelTable | None = None) -> dict:
    """Micro / macro P, R, F1; per-label AUROC; per-leaf confusion. Arrays are (N, L)."""
    y_true = np.asarray(y_true).astype(int)
    y_pred = np.asarray(y_pred).astype(int)
    labels = list(labels)
    present = [j for j in range(len(labels)) if y_true[:, j].any()]
    out: dict = {"n": int(len(y_true))}
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="micro", zero_division=0)
    out["micro"] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    # macro over the labels with at least one positive in this set (absent labels listed)
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=present, average="macro", zero_division=0)
    out["macro"] = {"precision": float(p), "recall": float(r), "f1": float(f),
                    "labels": [labels[j] for j in present]}
    out["labels_absent"] = [labels[j] for j in range(len(labels)) if j not in present]
    pl, rl, fl, sl = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0,
                                                     labels=list(range(len(labels))))
    out["per_label"] = {labels[j]: {"precision": float(pl[j]), "recall": float(rl[j]), "f1": float(fl[j]),
                                    "support": int(sl[j]), "predicted": int(y_pred[:, j].sum())}
                        for j in range(len(labels))}
    if y_prob is not None:
        # threshold-free: per-label AUROC and average precision (AP), their macro means over the
        # labels scorable here (both classes present; the others are listed, never silently averaged
        # in), and micro AUROC / AP over every (image, label) pair. Chance: AUROC 0.5, AP = prevalence.
        auc, ap, prevalence, skipped = {}, {}, {}, []
        for j, name in enumerate(labels):
            col = y_true[:, j]
            if col.min() == col.max():
                skipped.append(name)
                continue
            auc[name] = float(roc_auc_score(col, y_prob[:, j]))
            ap[name] = float(average_precision_score(col, y_prob[:, j]))
            prevalence[name] = float(col.mean())
        out["auroc"] = auc
        out["average_precision"] = ap
        out["auroc_skipped_one_class"] = skipped
        out["not_scorable"] = skipped
        out["auroc_macro"] = float(np.mean(list(auc.values()))) if auc else None
        out["ap_macro"] = float(np.mean(list(ap.values()))) if ap else None
        out["ap_macro_chance"] = float(np.mean(list(prevalence.values()))) if prevalence else None
        flat_y, flat_p = y_true.ravel(), np.asarray(y_prob, float).ravel()
        both = 0 < flat_y.sum() < len(flat_y)
        out["auroc_micro"] = float(roc_auc_score(flat_y, flat_p)) if both else None
        out["ap_micro"] = float(average_precision_score(flat_y, flat_p)) if both else None
        out["ap_micro_chance"] = float(flat_y.mean()) if len(flat_y) else None
    if table is not None:
        out["leaf_confusion"] = leaf_confusion(y_true, y_pred, labels, table)
    out["exact_match"] = float((y_true == y_pred).all(1).mean()) if len(y_true) else None
    return out


def leaf_of_row(row: np.ndarray, labels, table: LabelTable) -> str:
    on = [labels[j] for j in np.flatnonzero(row)]
    return table.leaf(on) if on else "none"


def leaf_confusion(y_true, y_pred, labels, table: LabelTable) -> dict:
    """{true leaf: {'n', 'correct', 'predicted': {predicted leaf: count}}}."""
    out: dict = {}
    for t, p in zip(y_true, y_pred):
        lt, lp = leaf_of_row(t, labels, table), leaf_of_row(p, labels, table)
        d = out.setdefault(lt, {"n": 0, "correct": 0, "predicted": {}})
        d["n"] += 1
        d["correct"] += int(lt == lp)
        d["predicted"][lp] = d["predicted"].get(lp, 0) + 1
    return dict(sorted(out.items()))


def evaluate_frame(pred: pd.DataFrame, labels, thresholds: np.ndarray, table: LabelTable | None = None,
                   cut: str = "ge") -> dict:
    """Metrics of the val and test rows of a predictions table under fixed ``thresholds``."""
    out = {}
    for part in ("val", "test"):
        sub = pred.loc[pred["split"] == part]
        if sub.empty:
            continue
        prob = sub[prob_columns(labels)].to_numpy(float)
        out[part] = multilabel_metrics(sub[true_columns(labels)].to_numpy(int), positive(prob, thresholds, cut),
                                       prob, labels, table)
    return out


def micro_roc(y_true: np.ndarray, y_prob: np.ndarray, points: int = 101) -> pd.DataFrame:
    """Micro-averaged ROC (every label's pairs pooled), on a fixed FPR grid for DVC plots."""
    fpr, tpr, _ = roc_curve(np.asarray(y_true).ravel(), np.asarray(y_prob).ravel())
    grid = np.linspace(0, 1, points)
    return pd.DataFrame({"fpr": grid, "tpr": np.interp(grid, fpr, tpr)})


# --- summaries over folds -----------------------------------------------------

def mean_std(values) -> tuple[float, float]:
    """Mean and population std (ddof 0) over folds."""
    a = np.asarray([v for v in values if v is not None], dtype=float)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std())


def summary_rows(per_fold: dict[str, list[dict]], part: str = "test") -> list[dict]:
    """One row per model: mean and std over folds of micro/macro P, R, F1 and macro AUROC."""
    rows = []
    for model, folds in per_fold.items():
        row = {"model": model, "folds": len(folds)}
        for avg in ("micro", "macro"):
            for m in ("precision", "recall", "f1"):
                row[f"{avg}_{m}_mean"], row[f"{avg}_{m}_std"] = mean_std(f[part][avg][m] for f in folds)
        row["auroc_macro_mean"], row["auroc_macro_std"] = mean_std(f[part].get("auroc_macro") for f in folds)
        for key in ("auroc_micro", "ap_micro", "ap_macro", "ap_macro_chance", "ap_micro_chance"):
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(f[part].get(key) for f in folds)
        # per-label AUROC, mean over folds, for labels scorable (both classes present) in every fold:
        # threshold-free, so steadier than F1 at a tuned cut (the CI gate guards these)
        scored = [f[part].get("auroc") or {} for f in folds]
        common = [n for n in scored[0] if all(n in a for a in scored)] if scored else []
        row["auroc_mean"] = {n: mean_std(a[n] for a in scored)[0] for n in common}
        rows.append(row)
    return rows


def summary_markdown(rows: list[dict], part: str = "test") -> str:
    head = (f"| model | folds | micro P | micro R | micro F1 | macro P | macro R | macro F1 | AUROC (macro) "
            f"| AUROC (micro) | AP (macro) | AP (micro) |\n"
            f"|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        cells = [f"{r[f'{a}_{m}_mean']:.3f} ± {r[f'{a}_{m}_std']:.3f}" for a in ("micro", "macro")
                 for m in ("precision", "recall", "f1")]
        free = [f"{r.get(f'{k}_mean', float('nan')):.3f} ± {r.get(f'{k}_std', float('nan')):.3f}"
                for k in ("auroc_macro", "auroc_micro", "ap_macro", "ap_micro")]
        lines.append(f"| {r['model']} | {r['folds']} | " + " | ".join(cells + free) + " |")
    chance = ""
    with_chance = [r for r in rows if np.isfinite(r.get("ap_macro_chance_mean", np.nan))]
    if with_chance:
        r0 = with_chance[0]
        chance = (f" Chance level: AUROC 0.5; AP = prevalence (macro {r0['ap_macro_chance_mean']:.3f}, "
                  f"micro {r0['ap_micro_chance_mean']:.3f}). Macro means cover the labels with both "
                  f"classes in this set; the others are listed as not scorable in metrics/eval/*.json.")
    return (f"Metrics on the {part} set, mean ± std (ddof 0) over folds: the fold-to-fold spread (training "
            f"variation and, where folds differ in their {part} rows, their sampling), not a confidence "
            f"interval.{chance}\n\n" + head + "\n".join(lines) + "\n")


def predict_fold(model, meta: dict, cache, splits: pd.DataFrame, fold: int, device, batch_size: int) -> pd.DataFrame:
    """The fold's val and the test set predicted by ``model`` (its ``meta`` from the checkpoint) on the cache:
    path, patient, split, prob_* and y_* columns."""
    from cxrbench.classify import training
    from cxrbench.data import splitting

    labels = meta["labels"]
    if meta["in_chans"] != cache.images.shape[1] or meta["cache_size"] != cache.images.shape[-1]:
        raise RuntimeError(f"classifier of {meta['in_chans']} channel(s) at {meta['cache_size']} px does not "
                           f"match the cache {cache.images.shape[1:]}: rerun the train stage")
    images = training.apply_input_mode(cache.images, meta["input_mode"], meta.get("mask_dilation", 0),
                                       options=meta.get("input_options") or {})
    parts = splitting.fold_parts(splits, fold)
    task = meta.get("task", "multilabel")
    targets = None
    if task == "multiclass":            # one-hot classes by the first-listed-class rule; rows outside dropped
        from cxrbench.classify import task as TK

        names = [lab for labs in meta["classes"].values() for lab in labs]
        targets, member = TK.class_targets(cache.index[true_columns(names)].to_numpy(), names, meta["classes"])
    frames = []
    for part in ("val", "test"):
        rows = cache.rows(parts[part]["path"])
        keep = np.ones(len(rows), bool) if targets is None else member[rows]
        rows, sub = rows[keep], parts[part][keep]
        with timing.step("inference", n=len(rows), unit="image"):
            prob = training.predict(model, images, rows, device, batch_size, task=task)
        f = pd.DataFrame({"path": sub["path"].to_numpy(), "patient": sub["patient"].to_numpy(), "split": part})
        f[prob_columns(labels)] = prob
        f[true_columns(labels)] = (cache.index.iloc[rows][true_columns(labels)].to_numpy(int) if targets is None
                                   else targets[rows].astype(int))
        frames.append(f)
    return pd.concat(frames, ignore_index=True)
