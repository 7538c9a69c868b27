"""The two-stage classifier (COVID-CXNet, seed 004, Table 5): normal vs pneumonia, then COVID-19 vs other
pneumonia, one model whose softmax is the chained probabilities."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrbench.classify import hierarchy as H
from cxrbench.classify import models as M
from cxrbench.classify import task as TK
from cxrbench.classify import training as T
from cxrbench.core.params import ParamError

from helpers import TINY
from helpers import train_config as _cfg

THREE = {"covid19": ["covid19"], "pneumonia": ["pneumonia"], "healthy": ["healthy"]}
CLASSES = list(THREE)
GROUP = ["covid19", "pneumonia"]


def _params(params, **train):
    p = copy.deepcopy(params)
    p["train"].update({"task": "multiclass", "classes": THREE, "pos_weight": False, "folds": [0, 1], **train})
    return p


def test_hierarchy_params_are_checked_naming_the_key(params):
    assert H.validate(_params(params), THREE) == []                               # null: one classifier
    assert H.validate(_params(params, hierarchy=["pneumonia", "covid19"]), THREE) == GROUP   # the listed order
    p = _params(params, task="multilabel", hierarchy=GROUP)
    with pytest.raises(ParamError, match="train.hierarchy.*multiclass"):
        T.validate(p)                                                             # multilabel: refused
    for bad, msg in ((["covid19"], "at least 2"), (["covid19", "flu"], "unknown"), (CLASSES, "every class"),
                     (["covid19", "covid19"], "distinct"), ("covid19", "at least 2")):
        with pytest.raises(ParamError, match=f"train.hierarchy.*{msg}"):
            T.validate(_params(params, hierarchy=bad))
    cfg = T.config_for(_params(params, hierarchy=GROUP), "resnet18", 0, {"channels": ["raw"], "size": 64})
    assert cfg.labels == CLASSES and cfg.hierarchy == GROUP
    assert cfg.digest() != T.config_for(_params(params), "resnet18", 0, {"channels": ["raw"], "size": 64}).digest()


def _model():
    torch.manual_seed(0)
    return M.create_model(TINY, 3, 1, "none", input_size=32, hierarchy={"classes": CLASSES, "group": GROUP}).eval()


def test_the_output_is_the_log_of_the_chained_probabilities():
    """P(healthy) = p1(healthy), P(covid19) = p1(pneumonia-any) p2(covid19), P(pneumonia) = p1(.) p2(pneumonia),
    checked in float64 against the two stages' own softmax."""
    model = _model().double()
    assert isinstance(model, H.HierarchicalClassifier)
    assert model.first(torch.zeros(1, 1, 32, 32, dtype=torch.float64)).shape[1] == 2    # [healthy, group]
    x = torch.rand(4, 1, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        p1, p2 = torch.softmax(model.first(x), 1), torch.softmax(model.second(x), 1)
        out = model(x)
    want = torch.stack([p1[:, 1] * p2[:, 0], p1[:, 1] * p2[:, 1], p1[:, 0]], 1)
    torch.testing.assert_close(torch.exp(out), want, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.softmax(out, 1), want, rtol=1e-12, atol=0)         # what every reader uses
    torch.testing.assert_close(want.sum(1), torch.ones(4, dtype=torch.float64), rtol=1e-12, atol=0)


def test_its_cross_entropy_is_the_first_stage_plus_the_second_on_the_group():
    model = _model().double().train()
    torch.manual_seed(1)
    x = torch.rand(6, 1, 32, 32, dtype=torch.float64)
    cls = torch.tensor([0, 1, 2, 2, 0, 2])                    # covid19, pneumonia, healthy, ...
    onehot = F.one_hot(cls, 3).double()
    torch.manual_seed(2)
    loss = TK.criterion("multiclass")(model(x), onehot)        # what training.loss_of computes, kept in float64
    torch.manual_seed(2)                                       # the same dropout draws, if any
    l1, l2 = model.first(x), model.second(x)
    first_t = torch.where(cls == 2, 0, 1)                     # stage 1: [healthy, group]
    in_group = cls < 2
    want = (F.cross_entropy(l1, first_t, reduction="sum")
            + F.cross_entropy(l2[in_group], cls[in_group], reduction="sum")) / len(x)
    torch.testing.assert_close(loss, want, rtol=1e-10, atol=0)


def test_the_papers_hard_rule_and_the_argmax_differ_where_they_should():
    # p1(group) = 0.55 > p1(healthy) = 0.45: the hard rule goes to stage 2, which picks covid19 (0.30 > 0.25);
    # the argmax of the chained probabilities picks healthy (0.45)
    prob = np.array([[0.30, 0.25, 0.45],
                     [0.10, 0.20, 0.70],        # healthy either way
                     [0.50, 0.30, 0.20]])       # covid19 either way
    assert H.sequential(prob, CLASSES, GROUP).tolist() == [0, 2, 0]
    assert prob.argmax(1).tolist() == [2, 2, 0]
    y = np.eye(3)[[0, 2, 1]]                    # true: covid19, healthy, pneumonia
    m = H.sequential_metrics(y, prob, CLASSES, GROUP, np.arange(3), None)
    assert m["confusion"]["matrix"] == [[1, 0, 0], [1, 0, 0], [0, 0, 1]]    # rows true, columns predicted
    assert m["accuracy"] == pytest.approx(2 / 3)
    four = ["a", "covid19", "pneumonia", "b"]   # two classes outside the group: stage 1 has three outputs
    p4 = np.array([[0.34, 0.20, 0.13, 0.33], [0.30, 0.16, 0.15, 0.39]])     # group 0.33 / 0.31: not taken
    assert H.sequential(p4, four, GROUP).tolist() == [0, 3]


def test_a_two_stage_model_saves_loads_and_is_explained_at_its_second_stage(tmp_path):
    from cxrbench.explain import runner

    model = _model()
    meta = M.classifier_meta(TINY, CLASSES, 1, 32, 32, "full", 0, task="multiclass", classes=THREE, hierarchy=GROUP)
    M.save_classifier(tmp_path / "m.pt", model, meta)
    again, meta2 = M.load_classifier(tmp_path / "m.pt")
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        # the loaded model convolves in channels-last order on the CPU: the same weights, the same sums in
        # another order, so the same outputs to float32 rounding (4 ulp of a probability)
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=4 * torch.finfo(torch.float32).eps)
        torch.testing.assert_close(again(x), model.to(memory_format=torch.channels_last)(x), rtol=0, atol=0)
    assert isinstance(again, H.HierarchicalClassifier) and again.task == "multiclass"
    assert meta2["hierarchy"] == GROUP and meta2["mean"] == model.first.mean.flatten().tolist()
    name, layer = runner.target_layer(again, TINY, {TINY: "layer4"})
    assert name == "second.backbone.layer4" and layer is again.second.backbone.layer4
    with pytest.raises(ParamError, match="train.aux_weight"):
        M.create_model("inception_v3", 3, 1, "none", input_size=75, aux=True,
                       hierarchy={"classes": CLASSES, "group": GROUP})


def _three_class_data(n=36, size=32, seed=0):
    """Class by a bright patch: top-left covid19, bottom-right pneumonia, none healthy."""
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 60, (n, 1, size, size), dtype=np.uint8)
    cls = np.arange(n) % 3
    imgs[cls == 0, :, 2:14, 2:14] = 230
    imgs[cls == 1, :, 18:30, 18:30] = 230
    return imgs, np.eye(3, dtype=np.float32)[cls]


@pytest.mark.slow
def test_a_two_stage_model_trains_resumes_and_predicts_chained_softmax(tmp_path):
    imgs, y = _three_class_data()
    cfg = _cfg(labels=CLASSES, task="multiclass", classes=THREE, hierarchy=GROUP, pos_weight=False, epochs=4,
               lr=3e-3, augment={"enabled": False}, label_smoothing=0.0)
    T.train(cfg, imgs, y, np.arange(24), np.arange(24, 36), tmp_path, progress=False, device="cpu",
            stop_after_epochs=2)                                 # interrupted, then resumed
    T.train(cfg, imgs, y, np.arange(24), np.arange(24, 36), tmp_path, progress=False, device="cpu")
    model, meta = M.load_classifier(tmp_path / "final.pt")
    assert meta["hierarchy"] == GROUP and isinstance(model, H.HierarchicalClassifier)
    prob = T.predict(model, imgs, np.arange(36), torch.device("cpu"), task=meta["task"])
    np.testing.assert_allclose(prob.sum(1), 1.0, rtol=0, atol=1e-5)       # float32 log-softmax and exp
    hist = torch.load(tmp_path / "last.pt", weights_only=False)["history"]
    assert len(hist) == 4 and hist[-1]["train_loss"] < math.log(3)       # chance: log 3 for 3 balanced classes
