"""Runs that differ in ``train.seed`` alone, pooled: Table 2 over fold x seed models, whose interval over models
resamples them (scripts/pool_table2.py, cxrbench.classify.ensemble.pool_seeds), and the repeatability of the
maps across seeds of one fold (scripts/repeat_seeds.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from helpers import script as load_script
from test_identity import TINY, _cwd, _evaluate, _train, template  # noqa: F401  (the run folder fixture)

from cxrbench.classify import ensemble as EN

STATS = {"resamples": 200, "seed": 0, "confidence": 0.95, "method": "expanded_percentile", "min_valid_share": 0.9}


def _combined(seed: int, folds=(0, 1), n=40):
    """A combine() output: per fold, test labels of n images of n // 2 patients and one model's decisions that
    are right with a probability set by the seed (so the seeds' models differ)."""
    rng = np.random.default_rng(seed)
    rows, per_fold, records = [], {"m": [], "ensemble": [], "vote": []}, []
    for k in folds:
        y = rng.integers(0, 2, (n, 2))
        pred = np.where(rng.random((n, 2)) < 0.6 + 0.01 * (seed % 10), y, 1 - y)
        rows.append({"y": y, "groups": np.repeat([f"p{i}" for i in range(n // 2)], 2), "pred": {"m": pred}})
        for m in per_fold:
            per_fold[m].append({"fold": k, "seed": seed})
        records.append({"fold": k})
    return {"per_fold": per_fold, "test_rows": rows, "fold_records": records}


def test_seeds_become_models_in_a_stable_order():
    pooled = EN.pool_seeds({43: _combined(43), 42: _combined(42)})
    assert pooled["folds"] == ["f0@seed42", "f1@seed42", "f0@seed43", "f1@seed43"]
    assert [e["seed"] for e in pooled["per_fold"]["m"]] == [42, 42, 43, 43]
    assert len(pooled["test_rows"]) == 4
    assert pooled["test_rows"][2] is not None and np.array_equal(pooled["test_rows"][0]["y"],
                                                                 _combined(42)["test_rows"][0]["y"])
    with pytest.raises(ValueError, match="at least 2"):
        EN.pool_seeds({42: _combined(42)})
    other = _combined(43)
    other["per_fold"]["extra"] = []
    with pytest.raises(ValueError, match="other models"):
        EN.pool_seeds({42: _combined(42), 43: other})


def test_the_interval_over_models_exists_only_once_seeds_add_models():
    """Two fold models give no interval over models (too few to resample); two seeds of them give four, and the
    patients shared by every model move together (one weight per patient)."""
    from cxrbench.core.bootstrap import fold_mean_ci, weighted_micro_f1

    def folds(rows):
        return [[(r["groups"], lambda w, r=r: weighted_micro_f1(r["y"], r["pred"]["m"], w))] for r in rows]

    one = fold_mean_ci(folds(_combined(42)["test_rows"]), models=True, n_boot=200, seed=0)
    assert one["low"] is None and one["status"]
    pooled = EN.pool_seeds({s: _combined(s) for s in (42, 43, 44)})
    two = fold_mean_ci(folds(pooled["test_rows"]), models=True, n_boot=200, seed=0)
    assert two["low"] is not None and two["low"] < two["estimate"] < two["high"]
    assert "patients" in two["variance"]


@pytest.fixture(scope="module")
def seed_runs(template, tmp_path_factory):  # noqa: F811
    """Two run folders that differ only in train.seed (0, 1), with the same trained model, evaluation and maps
    (a copy): what the scripts read of a finished run."""
    from stages import attribute

    root = tmp_path_factory.mktemp("seeds")
    a = root / "s0"
    shutil.copytree(template, a)
    p = yaml.safe_load((a / "params.yaml").read_text())
    p["ensemble"]["min_backbones"] = 1
    p["stats"]["resamples"] = 100
    p["explain"].update(methods=["saliency", "gradcam"], max_images=4, sanity_images=2)
    p["explain"]["target_layers"][TINY] = "layer4"
    (a / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    _train(a)
    _evaluate(a)
    with _cwd(a):
        attribute.main([TINY, "0"])
    b = root / "s1"
    shutil.copytree(a, b)
    p["train"]["seed"] = 1
    (b / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return a, b, p


@pytest.mark.slow
def test_the_table2_script_pools_runs_and_refuses_what_is_not_a_seed(seed_runs, tmp_path, capsys):
    script = load_script("pool_table2")
    a, b, p = seed_runs
    assert script.main([str(a), str(b), "--out", str(tmp_path / "out")]) == 0
    out = json.loads((tmp_path / "out" / "table2.json").read_text())
    assert out["models"] == ["f0@seed0", "f0@seed1"] and out["seeds"] == [0, 1]
    row = {r["key"]: r for r in out["rows"]}[TINY]
    assert row["folds"] == 2 and "models" in row["f1"]
    md = (tmp_path / "out" / "table2.md").read_text()
    assert "Pooled over training seeds 0, 1" in md
    # one backbone: the ensemble is that backbone, so no difference of 0 is reported as a comparison
    assert out["paired_test"]["status"] == "one_backbone" and out["paired_test"]["difference"] is None
    assert "not compared (one backbone" in md and "difference +0.000" not in md
    # the same seed twice is a rerun; another setting is another study: both refused with the reason
    assert script.main([str(a), str(a), "--out", str(tmp_path / "x")]) == 2
    assert "share a seed" in capsys.readouterr().err
    c = tmp_path / "s2"
    shutil.copytree(b, c)
    q = yaml.safe_load((c / "params.yaml").read_text())
    q["train"]["seed"], q["train"]["epochs"] = 2, 5
    (c / "params.yaml").write_text(yaml.safe_dump(q, sort_keys=False))
    assert script.main([str(a), str(c), "--out", str(tmp_path / "x")]) == 2
    assert "['train']" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_maps_of_two_seeds_are_compared_image_by_image(seed_runs, tmp_path, capsys):
    """Identical maps (a copied run) repeat exactly (Spearman 1); the second run's maps shifted by one image
    (each image paired with another's map) do not, and the script says so."""
    from cxrbench.core import paths

    script = load_script("repeat_seeds")
    a, b, _ = seed_runs
    assert script.main([str(a), str(b), "--out", str(tmp_path / "same")]) == 0
    same = json.loads((tmp_path / "same" / "repeatability_seeds.json").read_text())
    cell = same["across_seeds"]["saliency"]["spearman_abs"]
    assert cell["repeat"]["mean"] == pytest.approx(1.0) and cell["repeat"]["n"] == 4 and cell["flag"] is False
    assert list(same["across_seeds_models"]) == [f"{TINY} f0 seed 0 vs 1"]
    c = tmp_path / "shifted"
    shutil.copytree(b, c)
    f = c / paths.attributions(TINY, 0)
    z = dict(np.load(f, allow_pickle=False))
    z["saliency"] = np.roll(z["saliency"], 1, axis=0)
    np.savez(f, **z)
    assert script.main([str(a), str(c), "--out", str(tmp_path / "moved")]) == 0
    moved = json.loads((tmp_path / "moved" / "repeatability_seeds.json").read_text())
    assert moved["across_seeds"]["saliency"]["spearman_abs"]["repeat"]["mean"] < 0.95
    assert "seeds" in (tmp_path / "moved" / "repeatability_seeds.md").read_text()
    assert script.main([str(a), "--out", str(tmp_path / "x")]) == 2
    assert "two or more seeds" in capsys.readouterr().err
