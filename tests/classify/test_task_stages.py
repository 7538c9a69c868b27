"""A multiclass run through the train, evaluate and ensemble stages on the embedded sample: seed 001's three
classes built from the label table, a cyclic cosine schedule with snapshots, SCPA and PM ensembles."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from test_identity import TINY, _cwd, _params, template  # noqa: F401  (the run folder fixture)

pytestmark = pytest.mark.slow
CLASSES = {"covid19": ["covid19"], "pneumonia": ["pneumonia"], "normal": ["healthy"]}


@pytest.fixture(scope="module")
def mc_run(template, tmp_path_factory):  # noqa: F811
    import shutil

    from stages import ensemble, evaluate, train

    run = tmp_path_factory.mktemp("multiclass") / "run"
    shutil.copytree(template, run)
    p = yaml.safe_load((run / "params.yaml").read_text())
    p["train"].update(task="multiclass", classes=CLASSES, pos_weight=False, epochs=2, snapshots=True,
                      optimizer="sgd", schedule={"name": "cosine_restarts", "cycles": 2, "min_lr": 0.0})
    p["ensemble"].update(min_backbones=1, snapshots=True, combine="max")
    p["stats"]["resamples"] = 100
    (run / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    with _cwd(run):
        train.main([TINY, "0", "--device", "cpu", "--no-progress"])
        evaluate.main([TINY, "0", "--device", "cpu"])
        ensemble.main([])
    return run


def test_multiclass_stages_score_argmax_with_patient_cis_and_snapshots(mc_run):
    from cxrbench.data.indexing import label_matrix
    from cxrbench.classify import task as TK

    ev = json.loads((mc_run / "metrics/eval" / f"{TINY}-f0.json").read_text())
    pred = pd.read_csv(mc_run / "data/predictions" / f"{TINY}-f0.csv", keep_default_na=False)
    index = pd.read_csv(mc_run / "data/index.csv", keep_default_na=False)
    splits = pd.read_csv(mc_run / "data/splits.csv", keep_default_na=False)
    test = splits[splits["part_f0"] == "test"].merge(index, on="path", suffixes=("", "_i"))
    names = ["covid19", "pneumonia", "healthy"]
    onehot, member = TK.class_targets(label_matrix(test, names), names, CLASSES)
    t = pred[pred["split"] == "test"]
    assert len(t) == member.sum() and ev["test"]["n"] == member.sum()          # outside the task: not scored
    assert np.asarray(ev["test"]["confusion"]["matrix"]).sum() == member.sum()
    assert ev["test"]["confusion"]["matrix"] == [[int(v) for v in r] for r in
                                                  TK.confusion(onehot[member].argmax(1),
                                                               t[[f"prob_{c}" for c in CLASSES]].to_numpy().argmax(1),
                                                               3)]
    assert ev["snapshots"] == 2 and {"prob_s0_covid19", "prob_s1_normal"} <= set(pred.columns)
    np.testing.assert_allclose(t[[f"prob_{c}" for c in CLASSES]].sum(axis=1), 1.0, atol=1e-6)   # softmax (float32)
    ci = ev["test"]["ci"]["accuracy"]
    assert ci["low"] <= ev["test"]["accuracy"] <= ci["high"]
    ens = json.loads((mc_run / "metrics/ensemble.json").read_text())
    assert ens["combine"] == "max" and ens["folds"]["0"]["members"] == [TINY, f"{TINY}/s0", f"{TINY}/s1"]
    assert "Multiclass ensemble" in (mc_run / "metrics/summary.md").read_text()
    assert "not applicable" in (mc_run / "metrics/table2.md").read_text()
    # the headline DVC declares as the stage's metrics: the ensemble's accuracy and covid19 rates, not Table 2's
    h = json.loads((mc_run / "metrics/headline/ensemble.json").read_text())
    e = ens["folds"]["0"]["ensemble"]
    assert h["accuracy"]["value"] == e["accuracy"] and h["accuracy"]["n"] == e["n"]
    assert h["accuracy"]["low"] == e["ci"]["accuracy"]["low"] and h["accuracy_chance"] == e["accuracy_chance"]
    for key in ("recall", "f1", "auroc"):
        v = e["per_class"]["covid19"][key]
        assert (h[f"{key}_covid19"] == "not scored") if v is None else (h[f"{key}_covid19"]["value"] == v)
    assert "f1_paper_scoring" not in h


def test_pm_ensemble_is_recomputed_from_the_members(mc_run):
    from cxrbench.classify import multiclass as MC

    pred = pd.read_csv(mc_run / "data/predictions" / f"{TINY}-f0.csv", keep_default_na=False)
    ens = pd.read_csv(mc_run / "data/ensemble/f0.csv", keep_default_na=False)
    cols = [f"prob_{c}" for c in CLASSES]
    members = [pred[cols].to_numpy()] + [pred[[f"prob_s{k}_{c}" for c in CLASSES]].to_numpy() for k in (0, 1)]
    np.testing.assert_allclose(ens[cols].to_numpy(), MC.combine(members, "max"), rtol=1e-12)


def test_attribute_and_aoppc_explain_the_covid19_class_with_its_softmax(mc_run, tmp_path, monkeypatch):
    """The attribute stage explains the covid19 CLASS (its output index among the classes) and the aoppc
    stage scores the maps by the softmax probability of that class."""
    from stages import aoppc, attribute

    p = yaml.safe_load((mc_run / "params.yaml").read_text())
    p["explain"].update(methods=["saliency", "gradcam"], max_images=2, sanity_images=1)
    p["explain"]["target_layers"]["test_resnet"] = "layer4"
    (mc_run / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    store = tmp_path / "resume"
    store.mkdir()
    monkeypatch.setenv("CXRBENCH_RESUME_DIR", str(store))
    with _cwd(mc_run):
        attribute.main([TINY, "0"])
        aoppc.main([])
    assert not any(store.iterdir())                      # finished: no part left in the resume store
    arrays = np.load(mc_run / "data/attributions" / f"{TINY}-f0.npz", allow_pickle=False)
    assert (arrays["target"] == list(CLASSES).index("covid19")).all()
    res = json.loads((mc_run / "metrics/aoppc.json").read_text())
    assert "saliency" in json.dumps(res)
    # resumable: each scored model's part is saved; a rerun of the same inputs, params and code takes it back
    # instead of scoring again, and writes the same results; any other params score it again
    from cxrbench.core import paths
    from cxrbench.explain.metrics import scoring as AS
    assert (mc_run / paths.aoppc_partial(TINY, 0)).is_file()
    before = (mc_run / "metrics/aoppc.json").read_text()

    def refuse(*a, **k):
        raise AssertionError("scored again although a saved part of the same identity exists")
    mp = pytest.MonkeyPatch()
    mp.setattr(AS, "score_model", refuse)
    from cxrbench.explain.metrics.tables import summary
    try:
        with _cwd(mc_run):
            aoppc.main([])
        after = json.loads((mc_run / "metrics/aoppc.json").read_text())
        assert {k: v for k, v in after.items() if k != "runtime"} == \
            {k: v for k, v in json.loads(before).items() if k != "runtime"}
        # interrupted after the part was saved, then the stage's outputs deleted (dvc exp run does that before
        # it reruns an unfinished stage): the part is put back from the resume store, not scored again
        from cxrbench.explain.metrics import tables as AT

        def interrupted(*a, **k):
            raise KeyboardInterrupt
        mp.setattr(AT, "summary", interrupted)
        with _cwd(mc_run), pytest.raises(KeyboardInterrupt):
            aoppc.main([])
        mp.setattr(AT, "summary", summary)
        (mc_run / paths.aoppc_partial(TINY, 0)).unlink()
        with _cwd(mc_run):
            aoppc.main([])
        assert {k: v for k, v in json.loads((mc_run / "metrics/aoppc.json").read_text()).items() if k != "runtime"} \
            == {k: v for k, v in json.loads(before).items() if k != "runtime"}
        assert not any(store.iterdir())
        p["aoppc"]["region"]["steps"] = int(p["aoppc"]["region"]["steps"]) + 1
        (mc_run / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        with _cwd(mc_run), pytest.raises(AssertionError, match="scored again"):
            aoppc.main([])
    finally:
        mp.undo()


def test_randomisation_and_the_report_run_on_a_multiclass_run(mc_run):
    from stages import attribute, randomisation, report

    p = yaml.safe_load((mc_run / "params.yaml").read_text())
    p["explain"].update(methods=["saliency", "gradcam"], max_images=2, sanity_images=1)
    p["explain"]["target_layers"]["test_resnet"] = "layer4"
    p["randomisation"].update(methods=["saliency"], images=2)
    (mc_run / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    with _cwd(mc_run):
        attribute.main([TINY, "0"])
        randomisation.main([])
        report.main([])
    card = (mc_run / "report/model_card.md").read_text()
    assert "Multiclass ensemble" in card and "not applicable" in card


def test_predict_refuses_a_multiclass_run_saying_why(mc_run):
    from cxrbench.studies.predict import load as PL

    with pytest.raises(PL.PredictError, match="multiclass.*argmax"):
        PL.load_run(mc_run, f"{TINY}:0", device="cpu")


@pytest.fixture(scope="module")
def hier_run(template, tmp_path_factory):  # noqa: F811
    """COVID-CXNet's two-stage classifier (train.hierarchy) through the train, evaluate and attribute stages."""
    import shutil

    from stages import attribute, evaluate, train

    run = tmp_path_factory.mktemp("hierarchy") / "run"
    shutil.copytree(template, run)
    p = yaml.safe_load((run / "params.yaml").read_text())
    p["train"].update(task="multiclass", classes=CLASSES, pos_weight=False, epochs=2, hierarchy=["covid19", "pneumonia"])
    p["stats"]["resamples"] = 100
    p["explain"].update(methods=["saliency", "gradcam", "lrp"], max_images=2, sanity_images=1)
    p["explain"]["target_layers"]["test_resnet"] = "layer4"
    (run / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    with _cwd(run):
        train.main([TINY, "0", "--device", "cpu", "--no-progress"])
        evaluate.main([TINY, "0", "--device", "cpu"])
        attribute.main([TINY, "0"])
    return run


def test_a_two_stage_run_is_scored_as_one_model_and_by_the_papers_rule(hier_run):
    from cxrbench.classify import hierarchy as H
    from cxrbench.classify import task as TK

    ev = json.loads((hier_run / "metrics/eval" / f"{TINY}-f0.json").read_text())
    pred = pd.read_csv(hier_run / "data/predictions" / f"{TINY}-f0.csv", keep_default_na=False)
    t = pred[pred["split"] == "test"]
    prob, y = t[[f"prob_{c}" for c in CLASSES]].to_numpy(), t[[f"y_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(prob.sum(1), 1.0, atol=1e-5)         # chained probabilities (float32)
    assert ev["test"]["confusion"]["matrix"] == TK.confusion(y.argmax(1), prob.argmax(1), 3).astype(int).tolist()
    seq = ev["test_sequential"]
    assert seq["n"] == ev["test"]["n"] == len(t) and "ci" in seq
    want = TK.confusion(y.argmax(1), H.sequential(prob, list(CLASSES), ["covid19", "pneumonia"]), 3)
    assert seq["confusion"]["matrix"] == want.astype(int).tolist()
    status = json.loads((hier_run / "metrics/attribute" / f"{TINY}-f0.json").read_text())["methods"]
    assert "lrp" in status and "two-stage" in json.dumps(status["lrp"])        # recorded, not a crash
    assert status["saliency"]["ok"] is True and status["gradcam"]["ok"] is True and status["lrp"]["ok"] is False
