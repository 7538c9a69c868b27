"""The classification task: multi-label (sigmoid, BCE) or multi-class (softmax, cross-entropy, argmax).

``train.task: multilabel`` (the default, seed 000) trains one sigmoid output per label of
``labels.names``. ``train.task: multiclass`` (seeds 001 and 004) trains one softmax output per class of
``train.classes`` (a name of ``train.class_maps``, or the map itself), an ordered mapping class -> labels of
``labels.names``, built from the label table
(``y_*`` columns of the index, ancestors included) by one stated rule:

    an image belongs to the FIRST class, in the listed order, any of whose labels it carries;
    an image that carries none of them is outside the task: it is neither trained, selected on nor
    scored, and the count of such images is reported.

So ``{covid19: [covid19], pneumonia: [pneumonia], normal: [healthy]}`` (DeepCOVIDExplainer's three
classes) puts a COVID-19 image, which is also a (viral) pneumonia, in ``covid19`` because it is listed
first, and leaves out an image whose only label is ``ards``.

Decisions are by argmax; the metrics (:func:`multiclass_metrics`) are accuracy, per-class precision,
recall (sensitivity), F1 and specificity, macro F1 and the confusion matrix, each with a percentile
bootstrap CI over patient groups (:mod:`cxrbench.core.bootstrap`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cxrbench.core import bootstrap
from cxrbench.core.params import ParamError, check_choice, section

TASKS = ("multilabel", "multiclass")
DEFAULT_TASK = "multilabel"


def task_of(params: dict) -> str:
    """``train.task`` (``multilabel`` when the key is absent: older params files)."""
    return check_choice("train.task", section(params, "train").get("task", DEFAULT_TASK), TASKS)


def validate(params: dict) -> dict:
    """``{"task", "classes"}``: the task and, for ``multiclass``, the checked ordered class map."""
    task = task_of(params)
    if task == "multilabel":
        return {"task": task, "classes": {}}
    names = section(params, "labels.names")
    train = section(params, "train")
    classes = train.get("classes")
    if isinstance(classes, str):                 # a name of train.class_maps (profiles select one by name)
        maps = train.get("class_maps") or {}
        if classes not in maps:
            raise ParamError("train.classes", f"{classes!r} is not a name of train.class_maps {sorted(maps)}")
        classes = maps[classes]
    if not isinstance(classes, dict) or len(classes) < 2:
        raise ParamError("train.classes", "train.task: multiclass needs a name of train.class_maps, or an ordered "
                                          "mapping of at least 2 classes, class -> [labels of labels.names], "
                                          f"got {classes!r}")
    seen: dict[str, str] = {}
    for cls, labs in classes.items():
        if not isinstance(cls, str) or not cls:
            raise ParamError("train.classes", f"class names are non-empty strings, got {cls!r}")
        if not isinstance(labs, list) or not labs:
            raise ParamError(f"train.classes.{cls}", f"expected a non-empty list of labels, got {labs!r}")
        bad = [lab for lab in labs if lab not in names]
        if bad:
            raise ParamError(f"train.classes.{cls}", f"unknown label(s) {bad}; valid labels are labels.names {names}")
        for lab in labs:
            if lab in seen:
                raise ParamError(f"train.classes.{cls}", f"label {lab!r} is already listed under class {seen[lab]!r}")
            seen[lab] = cls
    return {"task": task, "classes": {str(c): list(v) for c, v in classes.items()}}


def output_names(params: dict, label_names) -> list[str]:
    """The model's outputs: the classes of a multiclass task, else the labels."""
    t = validate(params)
    return list(t["classes"]) if t["task"] == "multiclass" else list(label_names)


def class_targets(label_targets: np.ndarray, label_names, classes: dict) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) float32 one-hot class targets and the (N,) bool mask of images inside the task, from (N, L)
    multi-hot label targets, by the first-listed-class rule."""
    y = np.asarray(label_targets) > 0
    label_names = list(label_names)
    onehot = np.zeros((len(y), len(classes)), np.float32)
    taken = np.zeros(len(y), bool)
    for c, labs in enumerate(classes.values()):
        hit = y[:, [label_names.index(lab) for lab in labs]].any(1) & ~taken
        onehot[hit, c] = 1
        taken |= hit
    return onehot, taken


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Output probabilities: sigmoid per label (multilabel), softmax over the classes (multiclass)."""
    return torch.softmax(logits, dim=1) if task == "multiclass" else torch.sigmoid(logits)


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy of logits against one-hot (or smoothed) float targets, mean over the batch."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = -(target * torch.log_softmax(logits, dim=1)).sum(1)
        return loss.sum() if self.reduction == "sum" else loss.mean()


def criterion(task: str, pos_weight: torch.Tensor | None = None, reduction: str = "mean") -> nn.Module:
    """BCE with logits (multilabel; ``pos_weight`` per label) or cross-entropy (multiclass)."""
    if task == "multiclass":
        return SoftTargetCrossEntropy(reduction)
    return nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction=reduction)


def smooth(y: torch.Tensor, smoothing: float, task: str) -> torch.Tensor:
    """Label smoothing: y (1 - e) + e / 2 per sigmoid output, y (1 - e) + e / C over C softmax classes."""
    k = y.shape[1] if task == "multiclass" else 2
    return y * (1 - smoothing) + smoothing / k


# --- metrics ------------------------------------------------------------------

def confusion(true_idx: np.ndarray, pred_idx: np.ndarray, n_classes: int, w: np.ndarray | None = None) -> np.ndarray:
    """(C, C) confusion matrix, rows true, columns predicted; ``w``: per-image weights."""
    m = np.zeros((n_classes, n_classes))
    np.add.at(m, (np.asarray(true_idx), np.asarray(pred_idx)), 1.0 if w is None else w)
    return m


def rates(m: np.ndarray) -> dict:
    """Accuracy, and per class precision, recall, F1 and specificity of a confusion matrix (NaN where a
    denominator is 0, so an undefined rate is never a number)."""
    total = m.sum()
    tp = np.diag(m)
    pred, true = m.sum(0), m.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(pred > 0, tp / pred, np.nan)
        recall = np.where(true > 0, tp / true, np.nan)
        f1 = np.where(pred + true > 0, 2 * tp / (pred + true), np.nan)
        tn = total - pred - true + tp
        specificity = np.where(total - true > 0, tn / (total - true), np.nan)
    return {"accuracy": float(tp.sum() / total) if total else float("nan"), "precision": precision,
            "recall": recall, "f1": f1, "specificity": specificity}


def one_vs_rest_auroc(is_class: np.ndarray, score: np.ndarray) -> float | None:
    """AUROC of one class's probability against the other classes' images; None when one side is empty.
    (:func:`cxrbench.core.bootstrap.auroc_statistic`: scikit-learn's value without its input checks, which
    cost about 1 ms a call inside a bootstrap.)"""
    from cxrbench.core.bootstrap import auroc_statistic

    is_class = np.asarray(is_class, bool)
    return None if is_class.all() or not is_class.any() else auroc_statistic(is_class, score)(np.ones(len(is_class)))


def multiclass_metrics(y_onehot: np.ndarray, prob: np.ndarray, classes, groups, stats: dict | None = None,
                       auroc: bool = True) -> dict:
    """Argmax decisions scored: accuracy, macro F1, per-class P / R / F1 / specificity and support, the
    confusion matrix, each rate with a CI over patient ``groups`` (``stats``: the stats section, every key
    that sets an interval used, :func:`cxrbench.core.bootstrap.options`; None: point estimates only). Chance
    levels: the majority class's share (accuracy), 1 / C (balanced).
    ``auroc``: also each class's one-vs-rest AUROC of its probability (chance 0.5), with its CI (``prob`` must
    then be probabilities, not decisions)."""
    classes = list(classes)
    y_onehot, prob = np.asarray(y_onehot), np.asarray(prob, dtype=np.float64)
    if not np.isfinite(prob).all():
        raise ValueError("non-finite class probabilities")
    if not (y_onehot.sum(1) == 1).all():
        raise ValueError("every scored image needs exactly one class (images outside the task are dropped first)")
    true, pred = y_onehot.argmax(1), prob.argmax(1)
    c = len(classes)
    m = confusion(true, pred, c)
    r = rates(m)
    support = m.sum(1)
    out: dict = {"n": int(len(true)), "classes": classes,
                 "confusion": {"rows_true_columns_predicted": classes, "matrix": m.astype(int).tolist()},
                 "accuracy": r["accuracy"], "accuracy_chance": float(support.max() / max(support.sum(), 1)),
                 "macro_f1": float(np.nanmean(r["f1"])) if np.isfinite(r["f1"]).any() else None,
                 "per_class": {}}
    for j, name in enumerate(classes):
        out["per_class"][name] = {k: (None if not np.isfinite(r[k][j]) else float(r[k][j]))
                                  for k in ("precision", "recall", "f1", "specificity")}
        out["per_class"][name]["support"] = int(support[j])
        out["per_class"][name]["predicted"] = int(m[:, j].sum())
        if auroc:
            out["per_class"][name]["auroc"] = one_vs_rest_auroc(true == j, prob[:, j])
    if stats is None or len(np.unique(groups)) < 2:
        return out

    def stat(key: str, j: int | None = None):
        def f(idx):
            v = rates(confusion(true[idx], pred[idx], c))
            x = v[key] if j is None else v[key][j]
            return None if not np.isfinite(x) else float(x)
        return f

    def macro(idx):
        f1 = rates(confusion(true[idx], pred[idx], c))["f1"]
        return float(np.nanmean(f1)) if np.isfinite(f1).any() else None

    kw = bootstrap.options(stats)           # the whole stats section: method and min_valid_share too
    ci = {"accuracy": bootstrap.group_ci(stat("accuracy"), groups, **kw),
          "macro_f1": bootstrap.group_ci(macro, groups, **kw), "per_class": {}}
    for j, name in enumerate(classes):
        ci["per_class"][name] = {k: bootstrap.group_ci(stat(k, j), groups, **kw)
                                 for k in ("precision", "recall", "f1", "specificity")}
        if auroc:
            ci["per_class"][name]["auroc"] = bootstrap.group_ci(
                lambda idx, j=j: one_vs_rest_auroc(true[idx] == j, prob[idx, j]), groups, **kw)
    out["ci"] = ci
    return out


def metrics_markdown(name: str, m: dict) -> str:
    """One model's multiclass metrics as markdown: accuracy, per-class rates with CIs, the confusion matrix."""
    ci = m.get("ci") or {}

    def cell(v, c):
        if v is None:
            return "–"
        if not c:
            return f"{v:.3f}"
        if c.get("low") is None or c.get("high") is None:      # an interval with a status instead of bounds
            status = c.get("status")
            return f"{v:.3f} ({'no CI' if status in (None, 'no_ci') else status})"
        return f"{v:.3f} [{c['low']:.3f}, {c['high']:.3f}]"

    pc = ci.get("per_class", {})
    lines = [f"**{name}** (n = {m['n']} images): accuracy {cell(m['accuracy'], ci.get('accuracy'))} "
             f"(chance: majority class {m['accuracy_chance']:.3f}), macro F1 {cell(m['macro_f1'], ci.get('macro_f1'))}",
             ""]
    keys = ["precision", "recall", "f1", "specificity"] + (["auroc"] if "auroc" in next(iter(m["per_class"].values()))
                                                           else [])
    names = {"precision": "precision", "recall": "recall", "f1": "F1", "specificity": "specificity",
             "auroc": "AUROC one-vs-rest (chance 0.5)"}
    lines += ["| class | support | " + " | ".join(names[k] for k in keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for cls, v in m["per_class"].items():
        lines.append(f"| {cls} | {v['support']} | " + " | ".join(cell(v[k], pc.get(cls, {}).get(k)) for k in keys) + " |")
    classes = m["confusion"]["rows_true_columns_predicted"]
    lines += ["", "| true \\ predicted | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for cls, row in zip(classes, m["confusion"]["matrix"]):
        lines.append(f"| {cls} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"
