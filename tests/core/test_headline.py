"""The headline metrics: a small set, the only metrics dvc.yaml declares, read from the detailed JSONs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cxrbench.core import headline as H
from cxrbench.core import params as P
from cxrbench.core import paths
from cxrbench.ops.profiles import read_profile

ROOT = Path(__file__).resolve().parents[2]
PROFILES = sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml"))


def _params(profile: str | None) -> dict:
    over = {} if profile is None else read_profile(profile, ROOT)
    over = {k: v for k, v in over.items() if not k.startswith("sources.")}
    return P.load(ROOT / "params.yaml", over)


@pytest.mark.parametrize("profile", [None, *PROFILES])
def test_the_headline_set_stays_small(profile):
    """About 60 values over the whole pipeline, whatever the profile: a reader's screen, not 16,000 columns."""
    n = H.count(_params(profile))
    assert 30 <= n <= H.MAX_ENTRIES, f"{profile or 'params.yaml'}: {n} headline values"


def test_dvc_declares_only_the_headline_files_as_metrics():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    declared = {}
    for name, st in stages.items():
        for m in st.get("do", st).get("metrics", []):       # a foreach/matrix stage holds its body under do
            declared[name] = [*declared.get(name, []), next(iter(m)) if isinstance(m, dict) else m]
    assert declared == {stage: [paths.headline(stage)] for stage in H.SPEC}
    for stage, entries in H.SPEC.items():
        st = stages[stage]
        outs = {next(iter(o)) if isinstance(o, dict) else o for o in st.get("outs", [])}
        for _, file, key in entries:          # every detailed file it reads is an output of the stage itself
            assert file in outs, (stage, file)
        listed = {p if isinstance(p, str) else next(iter(p)) for p in st.get("params", [])}
        for slot, param in H.EACH.items():    # a param that shapes the headline is a param of the stage
            if any("{" + slot + "}" in key for _, _, key in entries):
                assert param in listed or param.split(".")[0] in listed, (stage, param)


def test_extract_reads_values_cis_and_not_scored(tmp_path):
    params = {"explain": {"methods": ["occlusion", "gradcam"]}, "audit": {"scores": {}}}
    (tmp_path / "metrics").mkdir()
    aoppc = {"status": {}, "pooled": {"random|aoppc_pixels_morf": {"mean": -0.1, "std": 0.2, "n": 8}},
             "gain": {"pooled": {"occlusion|aoppc_pixels_morf": {"mean": 0.3, "low": 0.1, "high": 0.5, "n": 8},
                                 "gradcam|aoppc_pixels_morf": {"mean": None, "low": None, "high": None, "n": 0}}}}
    (tmp_path / paths.AOPPC).write_text(json.dumps(aoppc))
    h = H.write("aoppc", params, tmp_path)
    assert h == json.loads((tmp_path / paths.headline("aoppc")).read_text())
    assert h["random"] == -0.1
    assert h["gain.occlusion"] == {"value": 0.3, "low": 0.1, "high": 0.5, "n": 8}
    assert h["gain.gradcam"] == H.NOT_SCORED and h["not_scored"] == ["gain.gradcam"]   # shown, not a number


def test_lists_are_picked_by_field_and_non_finite_is_not_a_number(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / paths.TABLE2).write_text(json.dumps({
        "rows": [{"key": "resnet18", "f1": {"mean": 0.5}},
                 {"key": "ensemble", "f1": {"mean": 0.7, "std": 0.01, "low": 0.6, "high": 0.8},
                  "auroc_micro": {"mean": 0.9, "low": 0.85, "high": 0.95},
                  "paper_scoring": {"f1": {"mean": 0.66, "low": 0.5, "high": 0.7}}}],
        "majority_vote": {"micro_f1_mean": 0.71}}))
    (tmp_path / paths.SUMMARY).write_text(json.dumps({"test": [
        {"model": "ensemble", "auroc_mean": {"covid19": 0.88, "healthy": float("nan")}, "ap_micro_mean": 0.6,
         "ap_micro_chance_mean": 0.2}]}).replace("NaN", "NaN"))
    h = H.extract("ensemble", {}, tmp_path)
    assert h["f1"] == {"value": 0.7, "low": 0.6, "high": 0.8}
    assert h["f1_paper_scoring"]["value"] == 0.66 and h["vote_f1"] == 0.71 and h["auroc_covid19"] == 0.88
    assert h["auroc_healthy"] == H.NOT_SCORED and "auroc_healthy" in h["not_scored"]
    assert h["resnet18_auroc_covid19"] == H.NOT_SCORED          # no such row: not scored, never 0


def test_a_stage_that_is_off_writes_its_status(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / paths.PLANTED).write_text(json.dumps({"enabled": False, "status": "disabled"}))
    h = H.extract("planted", {}, tmp_path)
    assert h["status"] == "disabled" and h["not_scored"] == ["kendall_tau", "spearman_rho"]


def test_the_gate_still_reads_detailed_files_that_the_stages_write():
    """The gate's guarded values did not move: every file it reads is still an output of the pipeline."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    outs = {next(iter(o)) if isinstance(o, dict) else o for st in stages.values() for o in st.get("outs", [])}
    checks = P.load(ROOT / "params.yaml")["gate"]["checks"]
    for c in checks:
        if c.get("paired"):                 # FILE.csv:[BACKBONE/]METHOD|METRIC - CONTROL: one file, per image
            from cxrbench.ops import paired
            assert paired.parse(c["metric"])[0] in outs
            continue
        for term in c["metric"].split(" - "):
            assert term.split(":", 1)[0] in outs


def test_a_headline_cell_writes_out_every_status():
    """A value with bounds, with an interval status instead of bounds, and an unscored one: each is written,
    none is left blank (show, diff and the report share this formatter)."""
    assert H.cell({"value": 0.5, "low": 0.4, "high": 0.6, "n": 9}) == "0.500 [0.400, 0.600] n=9"
    assert H.cell({"value": 0.04, "ci": "no_ci", "n": 3}) == "0.040 (no ci) n=3"
    assert H.cell(None) == H.NOT_SCORED and H.cell(0.25) == "0.250"
    assert H.value_of({"mean": 0.04, "low": None, "high": None, "status": "no_ci", "n": 3}) == \
        {"value": 0.04, "ci": "no_ci", "n": 3}


def test_a_stage_that_is_off_shows_its_status_with_no_values(tmp_path):
    """external with no sources: its entries expand to none, and the headline still says the stage is off."""
    (tmp_path / "metrics").mkdir()
    (tmp_path / paths.EXTERNAL_METRICS).write_text(json.dumps({"status": "off", "reason": "external.sources is empty"}))
    h = H.extract("external", {"external": {"sources": []}}, tmp_path)
    assert h == {"status": "off", "not_scored": []}
    (tmp_path / paths.EXTERNAL_METRICS).write_text(json.dumps({"status": "on", "sources": {"k": {"models": {
        "ensemble": {"labels": {"pneumonia": {"sets": {"external": {"auroc": {"estimate": 0.9, "low": 0.8,
                                                                               "high": 0.95}}}}}}}}}}))
    h = H.extract("external", {"external": {"sources": ["k"]}}, tmp_path)
    assert h["k.pneumonia"] == {"value": 0.9, "low": 0.8, "high": 0.95}
    assert h["status"] == "on" and h["not_scored"] == ["k.healthy", "k.bacterial", "k.pneumonia_internal"]
