"""The multiclass task, optimisers and schedules, snapshots, the fc head, the multiclass ensemble."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from cxrbench.classify import models as M
from cxrbench.classify import multiclass as MC
from cxrbench.classify import schedules as S
from cxrbench.classify import task as TK
from cxrbench.classify import training as T
from cxrbench.core.params import ParamError

from helpers import TINY
from helpers import synthetic_cache as _data
from helpers import train_config as _cfg

# DeepCOVIDExplainer's three classes, built from the label table (seed 001)
CLASSES = {"covid19": ["covid19"], "pneumonia": ["pneumonia"], "normal": ["healthy"]}


def _mc_params(params, **train):
    p = copy.deepcopy(params)
    p["train"].update({"task": "multiclass", "classes": CLASSES, "pos_weight": False, "folds": [0, 1], **train})
    return p


# --- the class rule -------------------------------------------------------------------------------

def test_the_first_listed_class_wins_and_images_without_one_are_outside():
    names = ["pneumonia", "viral", "covid19", "healthy", "ards"]
    y = np.array([[1, 1, 1, 0, 0],      # COVID-19 is also a viral pneumonia: covid19, listed first
                  [1, 1, 0, 0, 0],      # viral pneumonia: pneumonia
                  [0, 0, 0, 1, 0],      # healthy: normal
                  [0, 0, 0, 0, 1],      # ARDS only: outside the task
                  [1, 1, 1, 0, 1]])     # COVID-19 with ARDS: covid19
    onehot, member = TK.class_targets(y, names, CLASSES)
    assert member.tolist() == [True, True, True, False, True]
    assert onehot.argmax(1)[member].tolist() == [0, 1, 2, 0]
    assert onehot.sum(1).tolist() == [1, 1, 1, 0, 1]
    # the order is the rule: pneumonia listed first takes the COVID-19 image
    swapped = {"pneumonia": ["pneumonia"], "covid19": ["covid19"], "normal": ["healthy"]}
    assert TK.class_targets(y, names, swapped)[0].argmax(1)[0] == 0


@pytest.mark.parametrize("classes,msg", [
    ({"a": ["covid19"]}, "at least 2 classes"),
    ({"a": ["covid19"], "b": ["nonsense"]}, "unknown label"),
    ({"a": ["covid19"], "b": ["covid19"]}, "already listed"),
    ({"a": ["covid19"], "b": []}, "non-empty list"),
])
def test_bad_class_maps_are_refused_naming_the_key(params, classes, msg):
    with pytest.raises(ParamError, match=msg):
        TK.validate(_mc_params(params, classes=classes))


def test_multiclass_refuses_pos_weight_and_an_unknown_task(params):
    with pytest.raises(ParamError, match="train.pos_weight"):
        T.validate(_mc_params(params, pos_weight=True))
    p = _mc_params(params)
    p["train"]["task"] = "multihot"
    with pytest.raises(ParamError, match="train.task"):
        T.validate(p)


def test_multiclass_config_outputs_the_classes(params):
    t = TK.validate(_mc_params(params))
    assert TK.output_names(_mc_params(params), ["x"]) == list(CLASSES) and t["classes"] == CLASSES
    assert TK.output_names(params, ["x", "y"]) == ["x", "y"]


# --- loss, probabilities, metrics -----------------------------------------------------------------

def test_loss_is_cross_entropy_and_probabilities_are_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 3, generator=g, dtype=torch.float64)
    idx = torch.tensor([0, 1, 2, 2, 1, 0, 0])
    onehot = F.one_hot(idx, 3).double()
    crit = TK.criterion("multiclass")
    torch.testing.assert_close(T.loss_of(logits, onehot, crit, 0.0, 0.0, "multiclass"), F.cross_entropy(logits, idx))
    # smoothing e over C classes is torch's label_smoothing
    torch.testing.assert_close(T.loss_of(logits, onehot, crit, 0.1, 0.0, "multiclass"),
                               F.cross_entropy(logits, idx, label_smoothing=0.1))
    p = TK.probabilities(logits, "multiclass")
    torch.testing.assert_close(p.sum(1), torch.ones(7, dtype=torch.float64))
    torch.testing.assert_close(TK.probabilities(logits, "multilabel"), torch.sigmoid(logits))


def test_multiclass_metrics_match_scikit_learn_and_carry_patient_cis():
    rng = np.random.default_rng(1)
    n, c = 120, 3
    true = rng.integers(0, c, n)
    prob = rng.dirichlet(np.ones(c), n)
    prob[np.arange(n)[: n // 2], true[: n // 2]] += 2       # half the images right by construction
    prob /= prob.sum(1, keepdims=True)
    pred = prob.argmax(1)
    groups = np.arange(n) // 2                              # two images per patient
    m = TK.multiclass_metrics(np.eye(c)[true], prob, ["a", "b", "c"], groups,
                              {"resamples": 200, "seed": 0, "confidence": 0.95})
    assert m["accuracy"] == pytest.approx((true == pred).mean(), abs=1e-12)
    p, r, f, s = precision_recall_fscore_support(true, pred, labels=[0, 1, 2], zero_division=0)
    cm = confusion_matrix(true, pred, labels=[0, 1, 2])
    assert m["confusion"]["matrix"] == cm.tolist()
    for j, name in enumerate("abc"):
        v = m["per_class"][name]
        assert (v["precision"], v["recall"], v["f1"]) == pytest.approx((p[j], r[j], f[j]), abs=1e-12)
        neg = true != j
        assert v["specificity"] == pytest.approx((pred[neg] != j).mean(), abs=1e-12)
        assert v["support"] == s[j]
        ci = m["ci"]["per_class"][name]["recall"]
        assert ci["low"] <= v["recall"] <= ci["high"] and ci["groups"] == n // 2
    assert m["ci"]["accuracy"]["low"] < m["accuracy"] < m["ci"]["accuracy"]["high"]
    assert m["accuracy_chance"] == pytest.approx(np.bincount(true).max() / n)


def test_each_class_has_its_one_vs_rest_auroc_with_a_patient_ci_and_a_missing_ci_is_written_as_such():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    n, c = 60, 3
    true = rng.integers(0, c, n)
    prob = rng.dirichlet(np.ones(c), n)
    prob[np.arange(n), true] += 0.3
    prob /= prob.sum(1, keepdims=True)
    m = TK.multiclass_metrics(np.eye(c)[true], prob, ["a", "b", "c"], np.arange(n) // 2,
                              {"resamples": 200, "seed": 0, "confidence": 0.95})
    for j, name in enumerate("abc"):
        assert m["per_class"][name]["auroc"] == pytest.approx(roc_auc_score(true == j, prob[:, j]), rel=1e-12)
        ci = m["ci"]["per_class"][name]["auroc"]
        assert ci["status"] == "ok" and ci["low"] < ci["high"]
    text = TK.metrics_markdown("x", m)
    assert "AUROC one-vs-rest (chance 0.5)" in text and f"{m['per_class']['a']['auroc']:.3f} [" in text
    m["ci"]["accuracy"] = {"low": None, "high": None, "status": "no_ci", "reason": "too few resamples"}
    assert f"accuracy {m['accuracy']:.3f} (no CI)" in TK.metrics_markdown("x", m)      # a status, not a crash
    one = TK.multiclass_metrics(np.eye(2)[[0, 0]], np.array([[0.6, 0.4], [0.7, 0.3]]), ["a", "b"], np.arange(2))
    assert one["per_class"]["a"]["auroc"] is None                  # one class only: undefined, not a number


def test_a_class_never_predicted_has_no_precision_not_a_zero():
    prob = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4]])
    m = TK.multiclass_metrics(np.array([[1, 0], [0, 1], [0, 1]]), prob, ["a", "b"], np.arange(3), None)
    assert m["per_class"]["b"]["precision"] is None and m["per_class"]["b"]["recall"] == 0.0
    assert "n = 3" in TK.metrics_markdown("x", m) and "| b | 2 | – |" in TK.metrics_markdown("x", m)
    # an interval with a status and no bounds (the bootstrap's no_ci) is written as its status, not a crash
    m["ci"] = {"accuracy": {"estimate": m["accuracy"], "low": None, "high": None, "status": "no_ci"}}
    assert f"accuracy {m['accuracy']:.3f} (no CI)" in TK.metrics_markdown("x", m)


def _rare_class_run():
    """10 patients of 4 images; class c on 2 images of patient 0 only, so a resample without patient 0 (about
    35 % of them) has no c: its AUROC and recall are undefined there."""
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(10), 4)
    true = rng.integers(0, 2, 40)
    true[[0, 1]] = 2
    prob = rng.dirichlet(np.ones(3), 40)
    prob[np.arange(40), true] += 0.5
    prob /= prob.sum(1, keepdims=True)
    return np.eye(3)[true], prob, groups


def test_the_cis_follow_stats_method_and_min_valid_share():
    from cxrbench.core import bootstrap as B

    y, prob, groups = _rare_class_run()
    right = y.argmax(1) == prob.argmax(1)
    base = {"resamples": 200, "seed": 0, "confidence": 0.95}
    bounds = {}
    for method in ("percentile", "expanded_percentile"):
        ci = TK.multiclass_metrics(y, prob, list("abc"), groups, {**base, "method": method})["ci"]["accuracy"]
        want = B.group_ci(lambda idx: float(right[idx].mean()), groups, n_boot=200, seed=0, method=method)
        assert ci == want
        bounds[method] = (ci["low"], ci["high"])
    assert bounds["percentile"] != bounds["expanded_percentile"]
    strict = TK.multiclass_metrics(y, prob, list("abc"), groups, {**base, "min_valid_share": 0.9})
    loose = TK.multiclass_metrics(y, prob, list("abc"), groups, {**base, "min_valid_share": 0.5})
    assert 0.5 < strict["ci"]["per_class"]["c"]["auroc"]["valid_share"] < 0.9
    assert strict["ci"]["per_class"]["c"]["auroc"]["status"] == "no_ci"
    assert loose["ci"]["per_class"]["c"]["auroc"]["status"] == "ok" and loose["ci"]["per_class"]["c"]["auroc"]["low"]


def test_at_the_bootstrap_defaults_the_cis_are_unchanged():
    """A stats section at the bootstrap's defaults (params.yaml's), or without method / min_valid_share, gives
    the intervals of group_ci's defaults: what multiclass_metrics wrote before it read the whole section."""
    from cxrbench.core import bootstrap as B

    y, prob, groups = _rare_class_run()
    right = y.argmax(1) == prob.argmax(1)
    old = B.group_ci(lambda idx: float(right[idx].mean()), groups, n_boot=200, seed=0, confidence=0.95)
    short = {"resamples": 200, "seed": 0, "confidence": 0.95}
    full = {**short, "method": B.DEFAULT_METHOD, "min_valid_share": B.DEFAULT_MIN_VALID}
    a = TK.multiclass_metrics(y, prob, list("abc"), groups, short)
    b = TK.multiclass_metrics(y, prob, list("abc"), groups, full)
    assert a["ci"]["accuracy"] == b["ci"]["accuracy"] == old and a == b


def test_the_ensemble_note_names_the_interval_its_cis_used():
    y, prob, groups = _rare_class_run()
    base = {"resamples": 200, "seed": 0, "confidence": 0.95}

    def note(stats):
        res = {"combine": "mean", "snapshots": False, "folds": {
            0: {"members": ["a"], "ensemble": TK.multiclass_metrics(y, prob, list("abc"), groups, stats)}}}
        return MC.ensemble_markdown(res, list("abc")).split("\n\n")[1]

    assert "CIs: expanded percentile bootstrap over test patient groups." in note(base)
    assert "CIs: percentile bootstrap over test patient groups." in note({**base, "method": "percentile"})


def test_scpa_is_the_mean_and_pm_the_renormalised_max():
    a = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    b = np.array([[0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    np.testing.assert_allclose(MC.combine([a, b], "mean"), [[0.35, 0.55, 0.1], [0.25, 0.4, 0.35]])
    mx = MC.combine([a, b], "max")                           # maxima [.6 .8 .1] and [.3 .5 .4], sum 1.5 and 1.2
    np.testing.assert_allclose(mx, [[0.6 / 1.5, 0.8 / 1.5, 0.1 / 1.5], [0.3 / 1.2, 0.5 / 1.2, 0.4 / 1.2]])
    assert mx.argmax(1).tolist() == [1, 1]


# --- training a multiclass model ------------------------------------------------------------------

def _mc_data():
    imgs, y = _data(n=24)
    onehot = np.zeros((24, 2), np.float32)
    onehot[np.arange(24), (y[:, 0] == 0).astype(int)] = 1    # class 0: the bright square (label 0)
    return imgs, onehot


@pytest.mark.slow
def test_a_multiclass_model_trains_with_cross_entropy_and_predicts_softmax(tmp_path):
    imgs, y = _mc_data()
    cfg = _cfg(labels=["square", "plain"], task="multiclass", classes={"square": ["x"], "plain": ["y"]},
               pos_weight=False, epochs=4, lr=3e-3, augment={"enabled": False}, label_smoothing=0.0)
    T.train(cfg, imgs, y, np.arange(16), np.arange(16, 24), tmp_path, progress=False, device="cpu")
    model, meta = M.load_classifier(tmp_path / "best.pt")
    assert meta["task"] == "multiclass" and model.task == "multiclass"
    prob = T.predict(model, imgs, np.arange(24), torch.device("cpu"), task=meta["task"])
    np.testing.assert_allclose(prob.sum(1), 1.0, rtol=0, atol=1e-6)   # float32 softmax rounding
    hist = torch.load(tmp_path / "last.pt", weights_only=False)["history"]
    assert hist[-1]["train_loss"] < math.log(2)              # chance: log 2 for 2 balanced classes


# --- identity of the default ----------------------------------------------------------------------

def test_later_knobs_at_their_defaults_keep_the_old_digest():
    """The digest as it was computed before these knobs existed: a default run keeps its identity (and its
    resumable checkpoints); setting any knob changes it."""
    cfg = _cfg()
    d = dataclasses.asdict(cfg)
    for key in ("task", "classes", "optimizer", "momentum", "schedule", "snapshots", "head", "patience", "hierarchy"):
        del d[key]
    for key in ("input_options", "weights_id"):
        if not d[key]:
            del d[key]
    old = hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert cfg.digest() == old
    for change in ({"optimizer": "sgd"}, {"task": "multiclass"}, {"snapshots": True},
                   {"schedule": {"name": "cosine", "min_lr": 0.0}}, {"head": {"kind": "fc", "width": 10, "dropout": 0.2}},
                   {"hierarchy": ["a", "b"]}):
        assert dataclasses.replace(cfg, **change).digest() != old, change
    assert dataclasses.replace(cfg, momentum=0.5).digest() == old        # momentum is read by sgd only


# --- optimisers, schedules, snapshots ------------------------------------------------------------

def test_cosine_restarts_is_seed_001_eq_1():
    """alpha(t) = a0 / 2 (cos(pi mod(t - 1, ceil(T / C)) / ceil(T / C)) + 1), per epoch t = 1..T."""
    a0, t_total, cycles = 1.0, 10, 3
    opt = S.make_optimizer("sgd", [torch.nn.Parameter(torch.zeros(1))], a0, 0.0)
    sched = S.make_scheduler(opt, {"name": "cosine_restarts", "cycles": cycles, "min_lr": 0.0}, t_total)
    got = []
    for _ in range(t_total):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    n = math.ceil(t_total / cycles)
    want = [a0 / 2 * (math.cos(math.pi * ((t - 1) % n) / n) + 1) for t in range(1, t_total + 1)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert S.snapshot_epochs({"name": "cosine_restarts", "cycles": cycles, "min_lr": 0.0}, t_total) == [3, 7, 9]
    assert S.snapshot_epochs({"name": "constant"}, 5) == [4]


def test_schedule_params_are_checked(params):
    p = copy.deepcopy(params["train"])
    assert S.validate(p) == {"optimizer": "adam", "momentum": 0.9, "schedule": {"name": "constant"}, "snapshots": False}
    for change, key in (({"optimizer": "rmsprop"}, "train.optimizer"),
                        ({"schedule": {"name": "step"}}, "train.schedule.name"),
                        ({"schedule": {"name": "exponential", "gamma": 1.5}}, "train.schedule.gamma"),
                        ({"schedule": {"name": "cosine_restarts", "cycles": 99, "min_lr": 0.0}, "epochs": 5},
                         "train.schedule.cycles"),
                        ({"schedule": {"name": "cosine", "min_lr": 1.0}}, "train.schedule.min_lr"),
                        ({"snapshots": "yes"}, "train.snapshots")):
        with pytest.raises(ParamError, match=key.replace(".", r"\.")):
            S.validate({**p, **change})


@pytest.mark.slow
def test_sgd_restarts_with_snapshots_resume_to_the_same_weights(tmp_path):
    imgs, y = _data()
    kw = dict(optimizer="sgd", momentum=0.9, lr=0.05, epochs=4, snapshots=True,
              schedule={"name": "cosine_restarts", "cycles": 2, "min_lr": 0.0})
    full, part = tmp_path / "full", tmp_path / "part"
    T.train(_cfg(**kw), imgs, y, np.arange(16), np.arange(16, 24), full, progress=False, device="cpu")
    T.train(_cfg(**kw), imgs, y, np.arange(16), np.arange(16, 24), part, progress=False, device="cpu",
            stop_after_epochs=1)
    assert not (part / "snapshot-c0.pt").exists()             # cycle 0 ends after epoch 2
    s = T.train(_cfg(**kw), imgs, y, np.arange(16), np.arange(16, 24), part, progress=False, device="cpu")
    assert s["resumed"] and s["complete"]
    hist = torch.load(full / "last.pt", weights_only=False)["history"]
    assert [round(h["lr"], 12) for h in hist] == [0.05, 0.025, 0.05, 0.025]
    assert torch.load(part / "last.pt", weights_only=False)["history"] == hist
    for f in ("snapshot-c0.pt", "snapshot-c1.pt", "final.pt"):
        a = torch.load(full / f, weights_only=True)["state_dict"]
        b = torch.load(part / f, weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a), f
        assert (full / f.replace(".pt", ".json")).is_file()    # finished-records for every snapshot
    c1 = torch.load(full / "snapshot-c1.pt", weights_only=True)["state_dict"]
    fin = torch.load(full / "final.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(c1[k], fin[k]) for k in c1)         # the last cycle ends at the last epoch
    c0 = torch.load(full / "snapshot-c0.pt", weights_only=True)["state_dict"]
    assert not all(torch.equal(c0[k], fin[k]) for k in c0)


# --- the fc head ----------------------------------------------------------------------------------

def test_fc_head_is_width_dropout_output_and_survives_a_save(tmp_path):
    head = {"kind": "fc", "width": 10, "dropout": 0.2}
    torch.manual_seed(0)
    model = M.create_model(TINY, 3, 1, "none", input_size=32, head=head)
    assert isinstance(model.head, M.FCHead) and model.head.fc.out_features == 10
    assert model.head.out.in_features == 10 and model.head.out.out_features == 3 and model.head.drop.p == 0.2
    x = torch.rand(2, 1, 32, 32)
    model.eval()
    feats = model.backbone(model.normalise(model.resize(x)))
    torch.testing.assert_close(model(x), model.head.out(torch.relu(model.head.fc(feats))))
    M.save_classifier(tmp_path / "m.pt", model, M.classifier_meta(TINY, ["a", "b", "c"], 1, 32, 32, "full", 0,
                                                                  head=head))
    again, meta = M.load_classifier(tmp_path / "m.pt")
    torch.testing.assert_close(again(x), model(x))
    assert not hasattr(M.create_model(TINY, 3, 1, "none", input_size=32), "head")   # default: timm's own
    with pytest.raises(ParamError, match="train.head.dropout"):
        M.check_head({"kind": "fc", "width": 10, "dropout": 1.0})


def test_aoppc_reads_the_softmax_probability_of_a_multiclass_model():
    from cxrbench.explain.metrics import perturbation as PM

    torch.manual_seed(0)
    model = M.create_model(TINY, 3, 1, "none", input_size=32).eval()
    x = torch.rand(2, 1, 32, 32)
    maps = torch.rand(2, 32, 32)
    target = torch.tensor([0, 2])
    with torch.no_grad():
        logits = model(x)
    sig = PM.perturbation_curves(model, x, maps, target)["p0"]
    np.testing.assert_allclose(np.asarray(sig), torch.sigmoid(logits[[0, 1], [0, 2]]).numpy(), rtol=1e-5)
    model.task = "multiclass"                                  # as load_classifier sets it from the meta
    soft = PM.perturbation_curves(model, x, maps, target)["p0"]
    np.testing.assert_allclose(np.asarray(soft), torch.softmax(logits, 1)[[0, 1], [0, 2]].numpy(), rtol=1e-5)


def test_brightness_scales_each_image_after_the_affine_and_is_off_at_zero(params):
    x = torch.full((3, 1, 8, 8), 0.5)
    aug = {"enabled": True, "degrees": 0.0, "translate": 0.0, "scale": 0.0}
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    plain = T.augment_batch(x, aug, g1)
    bright = T.augment_batch(x, {**aug, "brightness": 0.4}, g2)
    torch.testing.assert_close(plain, x)                      # an identity affine
    ref = torch.Generator().manual_seed(0)
    for _ in range(4):                                        # the affine's four draws come first
        torch.rand(3, generator=ref)
    factor = 1 + (torch.rand(3, generator=ref) * 2 - 1) * 0.4
    torch.testing.assert_close(bright, (x * factor.view(3, 1, 1, 1)).clamp(0, 1))
    p = _mc_params(params)
    p["train"]["task"] = "multilabel"
    meta = {"channels": ["raw"], "size": 64}
    assert "brightness" not in T.config_for(p, "resnet18", 0, meta).augment     # 0: the config of before
    p["train"]["augment"]["brightness"] = 1.5
    with pytest.raises(ParamError, match="train.augment.brightness"):
        T.validate({**p, "train": {**p["train"], "augment": {**p["train"]["augment"], "enabled": True}}})


def test_adam_runs_fused_and_makes_the_same_update():
    """The fused Adam of make_optimizer is Adam: after 10 steps on the same gradients (float64, so rounding is
    ~1e-16 and any change of the update rule shows) the parameters equal the reference implementation's."""
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 3, generator=gen, dtype=torch.float64), torch.randn(7, generator=gen, dtype=torch.float64)]
    grads = [[torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in start] for _ in range(10)]
    ours = [torch.nn.Parameter(p.clone()) for p in start]
    ref = [torch.nn.Parameter(p.clone()) for p in start]
    opt = S.make_optimizer("adam", ours, 1e-2, 1e-4)
    ref_opt = torch.optim.Adam(ref, lr=1e-2, weight_decay=1e-4, foreach=False)
    assert opt.defaults["fused"] is True
    for g in grads:
        for p, q, gi in zip(ours, ref, g):
            p.grad, q.grad = gi.clone(), gi.clone()
        opt.step()
        ref_opt.step()
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-12)


def test_snapshot_columns_are_not_outputs_of_their_own():
    """A multiclass run with snapshots writes prob_sK_CLASS beside prob_CLASS; only the latter has a truth
    column and is an output (the audit read every prob_ column and asked for y_s0_covid19)."""
    import pandas as pd

    from cxrbench.data.labels import scored_outputs

    frame = pd.DataFrame(columns=["path", "split", "y_covid19", "y_normal", "prob_covid19", "prob_normal",
                                  "prob_s0_covid19", "prob_s0_normal", "prob_s1_covid19"])
    assert scored_outputs(frame) == ["covid19", "normal"]
