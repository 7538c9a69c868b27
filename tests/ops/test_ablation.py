"""The ablation ladder: rows resolve to the intended overrides, the paper's scoring by hand, the table end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cxrbench.ops import ablation_table
from cxrbench.ops import ladder as ablation
from cxrbench.classify import paper_scoring as PS
from cxrbench.core.params import ParamError, apply_protocol, with_overrides

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def _effective(params: dict) -> dict:
    m = apply_protocol(params)
    pre = dict(m["preprocess"])
    if pre["intensity"] != "fixed":
        pre.pop("fixed_range")                   # unused unless intensity is fixed
    return {"rules": m.get("paper_rules"), "preprocess": pre, "evaluate": m["evaluate"],
            "train": {k: m["train"][k] for k in ("normalize", "drop_last", "seed", "batch_size", "epochs")}}


def test_rows_change_one_factor_and_the_ladder_ends_at_the_corrected_protocol(base):
    rows = {r["name"]: r for r in ablation.ladder(base)}
    first = rows["authors_code"]
    assert first["from"] is None and first["overrides"] == {"cohort": "paper", "protocol": "paper"}
    for r in rows.values():
        if r["from"] and r["name"] != "threshold_rule":     # the threshold rule sets its rule and fallback cut
            assert len(r["set"]) == 1 or r["name"] == "rebuilt", r
    assert rows["val_holdout"]["from"] == "authors_code"   # test_checkpoint is a side row
    # at the ladder's profile: before the last step, the authors' cohort runs exactly our corrected protocol,
    # and the rebuilt row differs from it by the cohort only (the authors' training seed and batch kept)
    from cxrbench.ops.profiles import read_profile

    abl = ablation.validate(base)
    profile = read_profile(abl["profile"], ROOT)
    last = ablation.row_params(base, profile, abl, rows["drop_last"])
    corrected = with_overrides(ablation.row_params(base, profile, abl, first),
                               {"cohort": "paper", "protocol": "corrected"})
    assert _effective(last) == _effective(corrected)
    rebuilt = ablation.row_params(base, profile, abl, rows["rebuilt"])
    assert apply_protocol(rebuilt)["cohort"] == "rebuilt"
    for part in ("train", "evaluate", "preprocess"):
        assert _effective(rebuilt)[part] == _effective(last)[part], part


def test_bad_rows_are_refused_with_the_key(base):
    bad = copy.deepcopy(base)
    bad["ablation"]["rows"][1]["set"] = {"paper_protocol.paper.evaluate.checkpiont": "best"}
    with pytest.raises(ParamError, match="checkpiont"):
        ablation.ladder(bad)
    bad = copy.deepcopy(base)
    bad["ablation"]["rows"][2]["from"] = "nowhere"
    with pytest.raises(ParamError, match="nowhere"):
        ablation.ladder(bad)


def test_stage_keys_follow_what_each_data_stage_reads(base):
    rows = {r["name"]: r for r in ablation.ladder(base)}
    keys = {n: ablation.stage_keys(with_overrides(base, r["overrides"])) for n, r in rows.items()}
    assert keys["authors_code"] == keys["test_checkpoint"]                  # a checkpoint changes no data stage
    assert keys["authors_code"]["split"] != keys["val_holdout"]["split"]
    assert keys["val_holdout"]["index"] == keys["authors_code"]["index"]
    assert keys["label_table"]["index"] != keys["threshold_rule"]["index"]           # labels are in the index
    assert keys["leaked_test_removed"]["index"] == keys["label_table"]["index"]
    assert keys["intensity"]["preprocess"] != keys["leaked_test_removed"]["preprocess"]
    assert keys["intensity"]["split"] == keys["leaked_test_removed"]["split"]


def test_paper_scoring_on_a_hand_made_example(base):
    frame = pd.DataFrame({"finding": ["COVID-19", "E.Coli", "NORMAL", "Streptococcus"],
                          "source": ["covid_chestxray", "covid_chestxray", "kermany", "covid_chestxray"]})
    y = PS.truth(frame)
    col = {p: j for j, p in enumerate(PS.PAPER_PATHOLOGIES)}
    assert y[0, col["COVID-19"]] and y[0, col["Viral Pneumonia"]] and y[0, col["Pneumonia"]] and y[0].sum() == 3
    assert y[1].sum() == 0                                   # their rule gives E.Coli no label at all
    assert y[2, col["No Finding"]] and y[2].sum() == 1       # a rebuilt Kermany NORMAL file is their "No Finding"
    assert y[3, col["Bacterial Pneumonia"]] and y[3, col["Streptococcus"]] and y[3, col["Pneumonia"]]
    # an 18-label model of ours: their label reads our output; MERS has none and is never predicted
    ours = ["pneumonia", "viral", "bacterial", "covid19", "streptococcus", "healthy", "ecoli"]
    pred = pd.DataFrame({f"prob_{n}": [0.0] * 4 for n in ours})
    pred.loc[0, ["prob_pneumonia", "prob_viral", "prob_covid19"]] = [0.9, 0.51, 0.8]   # 0.51 is not > 0.51
    pred.loc[1, ["prob_pneumonia", "prob_bacterial", "prob_ecoli"]] = [0.7, 0.6, 0.9]   # ecoli: not theirs
    pred.loc[2, "prob_healthy"] = 0.95
    prob, missing = PS.probabilities(pred, ours)
    assert "MERS" in missing and "COVID-19" not in missing
    assert PS.rule(base) == (0.51, "gt")
    decided = PS.decide(prob, *PS.rule(base))                 # params.yaml: their 0.51 and >
    assert decided[0, col["Viral Pneumonia"]] == 0 and decided[0, col["COVID-19"]] == 1
    # TP: covid19, pneumonia (img 0), No Finding (img 2) = 3; predicted 2 + 2 + 1 = 5; positives 3 + 0 + 1 + 3 = 7
    from cxrbench.core.bootstrap import weighted_micro_f1

    assert weighted_micro_f1(y, decided, np.ones(4)) == pytest.approx(2 * 3 / (5 + 7))


def _fake_row(workdir: Path, name: str, info: dict, folds, rng, shift: float, n=40, labels=None):
    """A finished row: per fold, test predictions of a model whose scores separate by ``shift``."""
    labels = labels or ["pneumonia", "viral", "covid19", "healthy"]
    findings = np.where(np.arange(n) % 2 == 0, "COVID-19", "No Finding")
    row_dir = workdir / "rows" / name
    paths = [f"img{i}.png" for i in range(n)]
    for k in folds:
        d = row_dir / f"f{k}"
        d.mkdir(parents=True)
        y = np.stack([findings == "COVID-19"] * 3 + [findings == "No Finding"], 1).astype(int)
        prob = np.clip(y * shift + rng.random(y.shape) * (1 - shift), 0, 1)
        pred = pd.DataFrame({"path": paths, "patient": paths, "split": "test"})
        for j, lab in enumerate(labels):
            pred[f"prob_{lab}"] = prob[:, j]
        for j, lab in enumerate(labels):
            pred[f"y_{lab}"] = y[:, j]
        pred.to_csv(d / "predictions.csv", index=False)
        (d / "eval.json").write_text(json.dumps({"cut": "ge", "checkpoint_epoch": 3,
                                                 "thresholds": {lab: {"cut": 0.5} for lab in labels}}))
        (d / "train.json").write_text(json.dumps({"train_images": 100, "val_images": 25, "resumed": False}))
    pd.DataFrame({"path": paths, "source": "covid_chestxray", "patient": paths,
                  "group": [f"g{i // 2}" for i in range(n)], "finding": findings}).to_csv(row_dir / "images.csv",
                                                                                         index=False)
    (row_dir / "row.json").write_text(json.dumps({"name": name, "commit": "0" * 40, "runtime": None, **info}))


def test_table_end_to_end_on_constructed_rows(base, tmp_path):
    params = copy.deepcopy(base)
    params["ablation"]["folds"] = [0, 1]
    params["ablation"]["rows"] = [
        {"name": "weak", "change": "a weak model", "set": {"cohort": "paper", "protocol": "paper"}},
        {"name": "strong", "change": "a strong model", "set": {"paper_protocol.paper.evaluate.checkpoint": "best"}}]
    params["stats"]["resamples"] = 200
    rng = np.random.default_rng(0)
    _fake_row(tmp_path, "weak", {"cohort": "paper"}, [0, 1], rng, shift=0.1)
    _fake_row(tmp_path, "strong", {"cohort": "paper"}, [0, 1], rng, shift=0.6)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = ablation_table.write_table(tmp_path / "params.yaml", tmp_path, tmp_path / "ablation")
    weak, strong = result["rows"]
    assert strong["metrics"]["auroc"]["mean"] > weak["metrics"]["auroc"]["mean"] + 0.2
    d = strong["delta"]["paper_f1"]
    assert d["low"] <= d["mean"] <= d["high"] and d["low"] > 0 and d["corrected_t"]["low"] is not None
    assert strong["retrained"] == [True, True] and weak["delta"] == {}
    md = (tmp_path / "ablation.md").read_text()
    assert "| 1 | **strong**" in md and "-S 'paper_protocol.paper.evaluate.checkpoint=best'" in md
    assert "Chance: AUROC 0.5" in md
    with pytest.raises(FileNotFoundError, match="--only missing"):
        params["ablation"]["rows"][1]["name"] = "missing"
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        ablation_table.write_table(tmp_path / "params.yaml", tmp_path, tmp_path / "ablation")
