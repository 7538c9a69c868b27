"""The headline reads what the stages really write: each stage's own producer makes the detailed JSON here
(the audit's analysis, the aoppc summary, the planted ranking, the ensemble's tables), and every headline key
finds its number, with its CI where the producer computes one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrbench.classify import ensemble as EN
from cxrbench.classify import evaluation as E
from cxrbench.core import headline as H
from cxrbench.core import paths
from cxrbench.core.io import write_json
from cxrbench.explain.metrics import tables as AT
from cxrbench.studies import audit
from cxrbench.studies.planted import ranking as PLK
from tests.explain.test_degenerate_maps import _fold, _toy_curves, toy  # noqa: F401  (the module's fixture)
from tests.studies import test_audit as TA
from tests.studies.test_planted import _loc_table


def _ci(v) -> bool:
    return isinstance(v, dict) and {"value", "low", "high"} <= set(v) and v["low"] <= v["value"] <= v["high"]


def test_audit_headline_from_the_audit_analysis(tmp_path):
    scores = audit.analyse(TA._records(), TA.SCORES, ["outside_only", "silhouette_only"], TA.STATS)
    write_json(tmp_path / paths.SHORTCUT_AUDIT, {"scores": scores})
    h = H.extract("audit", {"audit": {"scores": TA.SCORES}}, tmp_path)
    for name in ("covid19_all", "covid19_in_a", "source"):
        assert _ci(h[f"{name}.full"]) and _ci(h[f"{name}.outside_only"]), name
    assert h["covid19_all.full"]["value"] > 0.8                        # the records' planted signal
    assert "covid19_all.lungs_only" in h["not_scored"]                 # a control the run did not train


def test_aoppc_headline_from_the_aoppc_summary(tmp_path, toy):  # noqa: F811
    x, target = toy
    maps, masks, rand = _fold(cam_constant=(1, 3))
    scores = AT.new_scores()
    AT.score_fold(scores, "bb", 0, maps, masks, rand, _toy_curves(x, target))
    res = AT.summary(scores, ["good", "cam"], stats={"resamples": 100, "seed": 0, "confidence": 0.95})
    write_json(tmp_path / paths.AOPPC, {"pooled": res["pooled"], "gain": res["gain"]})
    h = H.extract("aoppc", {"explain": {"methods": ["good", "cam"]}}, tmp_path)
    assert isinstance(h["random"], float)
    good = h["gain.good"]     # a gain with its CI over patients (or the interval's status, e.g. no_ci), and n
    assert (_ci(good) or (good.get("ci") == "no_ci" and "low" not in good)) and good["n"] >= 2
    assert h["gain.cam"] == H.NOT_SCORED or h["gain.cam"]["n"] <= 3            # its two constant maps are left out


def test_planted_headline_from_the_ranking(tmp_path):
    r = PLK.ranking(_loc_table({"a": 0.5, "b": 0.4, "c": 0.3}), {"pooled": {"a": 0.9, "b": 0.5, "c": 0.2}})
    write_json(tmp_path / paths.PLANTED, {"enabled": True, "ranking": r})
    h = H.extract("planted", {}, tmp_path)
    assert h["kendall_tau"] == 1.0 and h["spearman_rho"] == 1.0 and h["not_scored"] == []


def _fold_record(rng, labels):
    part = {avg: {m: float(rng.random()) for m in EN.METRICS} for avg in ("micro", "macro")}
    part.update(auroc_macro=0.8, auroc_micro=0.85, ap_micro=0.6, ap_macro=0.5, ap_micro_chance=0.2,
                ap_macro_chance=0.2, auroc={n: float(rng.random()) for n in labels})
    return {"test": part, "val": part}


def test_ensemble_headline_from_the_ensemble_tables(tmp_path):
    rng = np.random.default_rng(0)
    labels = ["covid19", "healthy", "pneumonia"]
    per_fold = {m: [_fold_record(rng, labels) for _ in range(2)] for m in ("resnet18", "ensemble", "vote")}
    rows = E.summary_rows(per_fold, "test")
    write_json(tmp_path / paths.SUMMARY, {"test": rows})
    write_json(tmp_path / paths.TABLE2, {"rows": EN.table2(per_fold, "test"),
                                         "majority_vote": next(r for r in rows if r["model"] == "vote")})
    h = H.extract("ensemble", {}, tmp_path)
    assert h["f1"] == np.mean([f["test"]["micro"]["f1"] for f in per_fold["ensemble"]])
    assert h["vote_f1"] == np.mean([f["test"]["micro"]["f1"] for f in per_fold["vote"]])
    assert h["auroc_covid19"] == np.mean([f["test"]["auroc"]["covid19"] for f in per_fold["ensemble"]])
    assert h["resnet18_auroc_covid19"] == np.mean([f["test"]["auroc"]["covid19"] for f in per_fold["resnet18"]])
    assert h["ap_micro"] == 0.6 and h["ap_micro_chance"] == 0.2
    assert h["not_scored"] == ["auroc_micro", "f1_paper_scoring"]      # the CIs of table2_intervals: not given here
    assert Path(tmp_path / paths.TABLE2).is_file()
