"""Readers of a trained classifier refuse a model of other params or data, or of an unfinished training.

A run folder of the embedded sample (64 px cache, 2 folds, no planted tag) with a tiny timm model trained
by the train stage itself; the readers are the evaluate stage and predict's loader (the others load
through the same function, :func:`cxrbench.classify.identity.load`).
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import time

import pandas as pd
import pytest
import yaml

from cxrbench.data import splitting

TINY = "test_resnet"
pytestmark = pytest.mark.slow


@contextlib.contextmanager
def _cwd(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _params(params, cache_meta, epochs=2):
    p = copy.deepcopy(params)
    p["preprocess"].update(size=int(cache_meta["size"]), channels=list(cache_meta["channels"]),
                           percentiles=list(cache_meta["percentiles"]))
    p["train"].update(backbones=[TINY], folds=[0], known_backbones=p["train"]["known_backbones"] + [TINY],
                      pretrained="none", input_size={"default": 32}, epochs=epochs, batch_size=16, lr=3e-3, seed=0)
    p["evaluate"]["batch_size"] = 32
    return p


def _write_params(run, p):
    (run / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def _train(run, *extra):
    from stages import train

    with _cwd(run):
        train.main([TINY, "0", "--device", "cpu", "--no-progress", *extra])


def _evaluate(run):
    from stages import evaluate

    with _cwd(run):
        evaluate.main([TINY, "0", "--device", "cpu"])


def _load_run(run):
    from cxrbench.studies.predict import load as PL

    return PL.load_run(run, f"{TINY}:0", device="cpu")


@pytest.fixture(scope="module")
def template(tmp_path_factory, sample_data, params):
    """data/{index.csv, splits.csv, cache, confounder/plan.csv} and params.yaml of a run, nothing trained."""
    from cxrbench.core.io import read_json
    from cxrbench.data.confounder import PLAN_COLUMNS

    run = tmp_path_factory.mktemp("identity") / "run"
    (run / "data").mkdir(parents=True)
    for f in ("index.csv", "splits.csv"):
        shutil.copy(sample_data / f, run / "data" / f)
    shutil.copytree(sample_data / "cache", run / "data" / "cache")
    index = pd.read_csv(run / "data" / "index.csv", keep_default_na=False)
    plan = pd.DataFrame({c: 0 for c in PLAN_COLUMNS}, index=range(len(index)))
    plan["path"], plan["tagged"], plan["target"], plan["stratum"] = index["path"], False, False, ""
    (run / "data" / "confounder").mkdir()
    plan.to_csv(run / "data" / "confounder" / "plan.csv", index=False)
    _write_params(run, _params(params, read_json(run / "data" / "cache" / "meta.json")))
    return run


@pytest.fixture(scope="module")
def trained_run(template, tmp_path_factory):
    """The template with fold 0 trained to the end by the train stage, and evaluated."""
    run = tmp_path_factory.mktemp("trained") / "run"
    shutil.copytree(template, run)
    _train(run)
    _evaluate(run)
    return run


@pytest.fixture
def run(trained_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    return out


def test_models_of_the_train_stage_load_in_evaluate_and_predict(run):
    """The normal pipeline: the identity the readers recompute is the one the train stage recorded."""
    _evaluate(run)
    assert _load_run(run).members[0].name == f"{TINY}-f0"


def test_a_split_change_makes_evaluate_and_predict_refuse_the_model(run, index_frame, table):
    """Item 8: splits.csv rewritten (another seed) after training: the model saw some of the new test images."""
    new = splitting.split(index_frame, table, 0.4, 2, 1)
    old = pd.read_csv(run / "data" / "splits.csv", keep_default_na=False)
    moved = set(new.loc[new["split"] == "test", "path"]) - set(old.loc[old["split"] == "test", "path"])
    assert moved                                          # the new test part holds images the model trained on
    new.to_csv(run / "data" / "splits.csv", index=False)
    with pytest.raises(RuntimeError, match="stale.*training data|training data.*stale"):
        _evaluate(run)
    with pytest.raises(RuntimeError, match="training data"):
        _load_run(run)


def test_a_rebuilt_cache_makes_evaluate_and_predict_refuse_the_model(run, raw, index_frame, params):
    """Item 9: the cache rebuilt with other preprocess params (and params.yaml saying so), model not retrained;
    predict refuses it also on a machine without the cache images (the cache's meta.json is recorded)."""
    from cxrbench.core.io import read_json
    from cxrbench.data import preprocess

    shutil.rmtree(run / "data" / "cache")
    recipe = preprocess.Recipe(size=64, percentiles=(2.0, 98.0), channels=("raw",))
    preprocess.build_cache(index_frame, raw, run / "data" / "cache", recipe, 1, "sample")
    _write_params(run, _params(params, read_json(run / "data" / "cache" / "meta.json")))
    with pytest.raises(RuntimeError, match="stale"):
        _evaluate(run)
    with pytest.raises(RuntimeError, match="preprocess cache"):
        _load_run(run)
    (run / "data" / "cache" / "images.npy").unlink()      # a user's machine: meta.json only
    with pytest.raises(RuntimeError, match="preprocess cache"):
        _load_run(run)


def test_a_train_param_change_without_retraining_is_refused(run):
    p = yaml.safe_load((run / "params.yaml").read_text())
    p["train"]["lr"] = 1e-2
    _write_params(run, p)
    with pytest.raises(RuntimeError, match="train params"):
        _evaluate(run)
    (run / "data" / "cache" / "images.npy").unlink()
    with pytest.raises(RuntimeError, match="train params"):
        _load_run(run)


def test_predict_without_the_cache_images_checks_what_it_can_and_says_what_it_could_not(run, capsys):
    (run / "data" / "cache" / "images.npy").unlink()
    assert _load_run(run).members
    err = capsys.readouterr().err
    assert "could not be" in err and "images.npy" in err


def test_an_unfinished_training_is_refused_until_it_is_resumed_to_the_end(template, tmp_path, monkeypatch):
    """Item 10: training stopped after epoch 1 of 3 (here at CXRBENCH_DEADLINE, as a kill would leave it):
    best.pt exists but evaluate and predict refuse it; resumed to the end, both accept it."""
    run = tmp_path / "run"
    shutil.copytree(template, run)
    p = yaml.safe_load((run / "params.yaml").read_text())
    p["train"]["epochs"] = 3
    _write_params(run, p)
    monkeypatch.setenv("CXRBENCH_DEADLINE", str(time.time()))
    with pytest.raises(SystemExit):
        _train(run)
    assert (run / "models" / "classifier" / TINY / "fold0" / "best.pt").is_file()
    with pytest.raises(RuntimeError, match="did not finish"):
        _evaluate(run)
    with pytest.raises(RuntimeError, match="did not finish"):
        _load_run(run)
    monkeypatch.delenv("CXRBENCH_DEADLINE")
    _train(run)
    _evaluate(run)
    assert _load_run(run).members


def test_a_finished_model_retrained_with_other_epochs_and_stopped_is_refused(run, monkeypatch):
    """A finished run's record does not survive a new (here: longer) training stopped after one epoch."""
    p = yaml.safe_load((run / "params.yaml").read_text())
    p["train"]["epochs"] = 4
    _write_params(run, p)
    monkeypatch.setenv("CXRBENCH_DEADLINE", str(time.time()))
    with pytest.raises(SystemExit):
        _train(run)
    with pytest.raises(RuntimeError, match="did not finish"):
        _evaluate(run)


def test_last_checkpoint_rng_state_does_not_depend_on_numpys_unseeded_global_state():
    """last.pt saves the RNG states a resume restores. NumPy's global generator is never seeded nor drawn from
    by training, so saving it made two identical runs write different last.pt files; it is no longer saved."""
    import numpy as np
    import torch

    from cxrbench.classify import training
    torch.manual_seed(0)
    np.random.seed(1)
    a = training._rng_states()
    torch.manual_seed(0)
    np.random.seed(2)
    b = training._rng_states()
    assert a.keys() == b.keys() and "numpy" not in a
    assert all(torch.equal(a[k], b[k]) for k in a if k != "cuda")
