"""The headline metrics: a small set, the only metrics dvc.yaml declares, read from the detailed JSONs."""

from __future__ import annotations

import hashlib
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


def test_across_runs_flags_intervals_that_do_not_overlap():
    ci = lambda v, lo, hi: {"value": v, "low": lo, "high": hi}
    rows = {r["key"]: r for r in H.across_runs({
        "seed 42": {"a.f1": ci(0.80, 0.75, 0.85), "a.auc": ci(0.60, 0.50, 0.70), "a.n": 10, "a.x": ci(0.5, 0.4, 0.6)},
        "seed 43": {"a.f1": ci(0.90, 0.86, 0.95), "a.auc": ci(0.65, 0.55, 0.75), "a.n": 12, "a.x": "not scored"},
        "seed 44": {"a.f1": ci(0.82, 0.78, 0.88), "a.auc": ci(0.62, 0.52, 0.72), "a.n": 12},
    })}
    assert rows["a.f1"]["apart"] is True                 # 42's [0.75, 0.85] misses 43's [0.86, 0.95]
    assert rows["a.f1"]["spread"] == pytest.approx(0.10)
    assert rows["a.auc"]["apart"] is False
    assert rows["a.n"]["apart"] is None and rows["a.n"]["spread"] == 2
    assert rows["a.x"]["apart"] is None and rows["a.x"]["spread"] is None   # not scored in one, absent in one
    assert rows["a.x"]["runs"]["seed 44"] is None


def test_compare_seeds_script_writes_the_table_and_refuses_runs_that_are_not_seeds(tmp_path, capsys):
    from helpers import script
    mod = script("compare_seeds")
    runs = []
    for seed, f1 in ((42, (0.80, 0.75, 0.85)), (43, (0.90, 0.86, 0.95))):
        run = tmp_path / f"s{seed}"
        (run / paths.HEADLINE).mkdir(parents=True)
        (run / P.PARAMS_FILE).write_text(yaml.safe_dump({"train": {"seed": seed, "epochs": 3}}))
        (run / paths.headline("ensemble")).write_text(json.dumps(
            {"f1": dict(zip(("value", "low", "high"), f1)), "not_scored": []}))
        (run / paths.headline("audit")).write_text(json.dumps({"auc": 0.9, "not_scored": []}))
        outs = [{"path": paths.headline("ensemble"), "md5": hashlib.md5(
            (run / paths.headline("ensemble")).read_bytes()).hexdigest()}]
        if seed == 42:     # seed 43's audit headline is a file it did not write (its lock does not record it)
            outs.append({"path": paths.headline("audit"), "md5": hashlib.md5(
                (run / paths.headline("audit")).read_bytes()).hexdigest()})
        (run / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"s": {"outs": outs}}}))
        runs.append(run)
    out = tmp_path / "out"
    assert mod.main([*map(str, runs), "--out", str(out)]) == 0
    md = (out / "headline_seeds.md").read_text()
    assert "1 of the 1 values with an interval in every run are apart" in md
    assert "| ensemble.f1 | 0.800 [0.750, 0.850] | 0.900 [0.860, 0.950] | 0.100 | **apart** |" in md
    assert "| audit.auc | 0.900 | not run |  |  |" in md
    assert "seed 43: audit: headline not written by this run" in capsys.readouterr().err
    assert json.loads((out / "headline_seeds.json").read_text())["seeds"] == [42, 43]
    (runs[1] / P.PARAMS_FILE).write_text(yaml.safe_dump({"train": {"seed": 43, "epochs": 4}}))
    assert mod.main([*map(str, runs), "--out", str(out)]) == 2
    assert "not only in train.seed" in capsys.readouterr().err
