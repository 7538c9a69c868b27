"""The two-stage classifier of COVID-CXNet (seed 004, Table 5): normal vs pneumonia, then COVID-19 vs other
pneumonia, scored as one model.

``train.hierarchy`` (with ``train.task: multiclass``) lists the classes of ``train.classes`` that the first
stage takes as one class (the *group*) and the second stage separates, e.g. ``[covid19, pneumonia]`` on
``three_class``. :class:`HierarchicalClassifier` holds two networks of the same backbone, head and input:

* ``first``: the classes outside the group, in their listed order, then the group (normal vs pneumonia);
* ``second``: the classes of the group, in their listed order (COVID-19 vs other pneumonia).

Its output is the log of the chained probabilities, in the order of ``train.classes``:

    P(c) = p1(c)                      for a class c outside the group
    P(c) = p1(group) * p2(c)          for a class c of the group

They sum to 1, so ``softmax(output) == P`` and every reader of a multiclass classifier (evaluate, the
ensemble, the attribution methods, the audit, external, predict) uses the two-stage model as one model.
The cross-entropy of P is the first stage's cross-entropy plus, on the group's images, the second
stage's: training the pair through P trains each stage on its own task (their weights are disjoint; the
second stage's loss is averaged over the whole batch, not over the group's images in it, and label
smoothing spreads a little of every image's target over the group's classes, so the second stage also
sees the other classes' images with a small, uniform target).

Decisions: the argmax of P (the decision of the model, like any multiclass model's), and beside it the
paper's hard rule, :func:`sequential`: the first stage's argmax, then within the group the second stage's
(recoverable from P alone: p1(group) is the sum of P over the group). The two differ only where the first
stage sends an image to the group with p1(group) * max p2 below the best other class's p1.

What differs from the paper: both stages train for ``train.epochs`` in one run (the paper: 10 epochs, then
20 for the second stage), on the same batches.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cxrbench.core.params import ParamError, section


def validate(params: dict, classes: dict) -> list[str]:
    """``train.hierarchy``: [] when null or absent; else the group, checked against the multiclass ``classes``
    (an empty mapping: the task is multilabel)."""
    value = section(params, "train").get("hierarchy")
    if value is None:
        return []
    if not classes:
        raise ParamError("train.hierarchy", "a two-stage classifier needs train.task: multiclass (and train.classes)")
    names = list(classes)
    if not isinstance(value, list) or len(value) < 2 or any(not isinstance(c, str) for c in value):
        raise ParamError("train.hierarchy", f"expected null or a list of at least 2 classes of train.classes {names} "
                                            f"(COVID-CXNet: [covid19, pneumonia]), got {value!r}")
    bad = [c for c in value if c not in names]
    if bad or len(set(value)) != len(value):
        raise ParamError("train.hierarchy", f"{value!r}: every entry must be a distinct class of train.classes "
                                            f"{names}; unknown: {bad}")
    if len(value) == len(names):
        raise ParamError("train.hierarchy", f"the group {value} holds every class: the first stage would have one "
                                            f"class; leave at least one class of {names} out of it")
    return [c for c in names if c in value]       # in the listed order of train.classes


def stage_classes(classes, group) -> tuple[list[str], list[str]]:
    """(first stage's outputs, second stage's outputs): the other classes then ``"group"``, and the group."""
    group = list(group)
    return [c for c in classes if c not in group] + ["group"], [c for c in classes if c in group]


def _full(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (mixed precision on CUDA) in float32 before the log-softmax; others unchanged."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


class HierarchicalClassifier(nn.Module):
    """Two classifiers whose chained probabilities are one model's output (log-probabilities, see above)."""

    def __init__(self, first: nn.Module, second: nn.Module, classes, group):
        super().__init__()
        self.first, self.second = first, second
        self.classes, self.group = list(classes), list(group)
        order = [c for c in self.classes if c not in self.group] + self.group     # the concatenation's order
        self.register_buffer("perm", torch.tensor([order.index(c) for c in self.classes]), persistent=False)
        self.aux = False          # what cxrbench.classify.models.save_classifier records of a Classifier

    @property
    def mean(self) -> torch.Tensor:
        return self.first.mean

    @property
    def std(self) -> torch.Tensor:
        return self.first.std

    @property
    def input_size(self) -> int:
        return self.first.input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        l1 = torch.log_softmax(_full(self.first(x)), dim=1)
        l2 = torch.log_softmax(_full(self.second(x)), dim=1)
        return torch.cat([l1[:, :-1], l1[:, -1:] + l2], dim=1)[:, self.perm]


def build(create, num_classes: int, classes, group, **kwargs) -> HierarchicalClassifier:
    """The two stages made by ``create`` (cxrbench.classify.models.create_model without ``hierarchy``)."""
    classes = list(classes)
    if kwargs.get("aux"):
        raise ParamError("train.aux_weight", "inception_v3's auxiliary head and train.hierarchy do not combine; "
                                             "set train.aux_weight to 0")
    if len(classes) != num_classes:
        raise ValueError(f"a two-stage classifier of {num_classes} outputs got {len(classes)} class names")
    one, two = stage_classes(classes, group)
    return HierarchicalClassifier(create(num_classes=len(one), **kwargs), create(num_classes=len(two), **kwargs),
                                  classes, group)


def sequential_metrics(y_onehot: np.ndarray, prob: np.ndarray, classes, group, groups, stats: dict | None) -> dict:
    """:func:`cxrbench.classify.task.multiclass_metrics` of the paper's hard rule (:func:`sequential`)."""
    from cxrbench.classify import task as TK

    decision = np.eye(len(classes))[sequential(prob, classes, group)]
    return TK.multiclass_metrics(y_onehot, decision, classes, groups, stats, auroc=False)   # decisions, not scores


def sequential(prob: np.ndarray, classes, group) -> np.ndarray:
    """The paper's hard rule from the chained probabilities (N, C): the first stage's argmax over the other
    classes and the group (p1(group) = the sum of P over the group), then, where that is the group, the
    second stage's argmax within it. Returns (N,) class indices into ``classes``."""
    prob = np.asarray(prob, dtype=np.float64)
    classes = list(classes)
    g = [classes.index(c) for c in group]
    others = [j for j in range(len(classes)) if j not in g]
    first = np.concatenate([prob[:, others], prob[:, g].sum(1, keepdims=True)], axis=1)
    pick = first.argmax(1)
    inner = np.asarray(g)[prob[:, g].argmax(1)]
    return np.where(pick == len(others), inner, np.asarray(others + [-1])[pick])
