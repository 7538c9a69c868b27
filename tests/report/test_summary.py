"""The report opens with what ran and what it found; index.html is one self-contained page that works offline."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrbench.core import paths
from cxrbench.report import summary as S
from cxrbench.report.document import build
from helpers import script

ROOT = Path(__file__).resolve().parents[2]


def _run(root: Path) -> None:
    """A finished run's outputs in miniature: headline files, data.json, aoppc.json, the audit figure."""
    (root / paths.HEADLINE).mkdir(parents=True)
    (root / "plots").mkdir()
    heads = {"split": {"images": 826, "patients": 700, "test_images": 330, "leaked_patients": 0, "not_scored": []},
             "ensemble": {"f1": {"value": 0.71, "low": 0.66, "high": 0.76}, "auroc_healthy": "not scored",
                          "not_scored": ["auroc_healthy"]},
             "aoppc": {"random": -0.1, "gain.occlusion": {"value": 0.31, "low": 0.2, "high": 0.4, "n": 12},
                       "gain.saliency": {"value": -0.05, "low": -0.1, "high": 0.01, "n": 12}, "gain.gradcam": "not scored",
                       "not_scored": ["gain.gradcam"]},
             "planted": {"status": "disabled", "kendall_tau": "not scored", "spearman_rho": "not scored",
                         "not_scored": ["kendall_tau", "spearman_rho"]}}
    for stage, h in heads.items():
        (root / paths.headline(stage)).write_text(json.dumps(h))
    (root / paths.DATA_METRICS).write_text(json.dumps({
        "images": 826, "patients": 700, "groups": 690, "test_images": 330, "dev_images": 496, "missing_files": 0,
        "corrupt_files": 0, "exact_copies_dropped": 1, "near_duplicate_pairs_across_patients": 2,
        "leaked_patients": 0, "leaked_groups": 0}))
    (root / paths.AOPPC).write_text(json.dumps({"maps": {"by_method": {
        "gradcam": {"ok": 0, "constant": 4, "nonfinite": 0, "excluded_degenerate": 4},
        "occlusion": {"ok": 4, "constant": 0, "nonfinite": 0, "excluded_degenerate": 0}}}}))
    (root / paths.EXTERNAL_METRICS).write_text(json.dumps({"status": "off", "reason": "external.sources is empty"}))
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((60, 90)) * 255).astype(np.uint8)).save(root / paths.SHORTCUT_AUDIT_PLOT)
    shutil.copytree(ROOT / "profiles", root / "profiles")


@pytest.fixture
def report(tmp_path):
    _run(tmp_path)
    params = {"split": {"seed": 1}, "preprocess": {"size": 128}}
    r = build(params, tmp_path, title="t")
    r.write(tmp_path / "report")
    return tmp_path / "report"


def test_the_readme_opens_with_the_summary_of_this_run(report):
    lines = (report / "README.md").read_text().splitlines()
    first = "\n".join(lines[:60])                                   # the first screen
    assert "## Summary of this run" in first
    for fact in ("| profile |", "| commit |", "| hardware |", "826 images of 700 patients; 330 held-out test"):
        assert fact in first
    assert "| ensemble.f1 | 0.710 [0.660, 0.760] |" in first
    assert "| random map (control) | -0.100 |" in first
    ranked = [line.split("|")[1].strip() for line in lines if line.startswith("| gain") is False
              and line.startswith(("| occlusion", "| saliency", "| gradcam"))]
    assert ranked == ["occlusion", "saliency", "gradcam"]           # best gain first, the unscored last
    assert "| occlusion | 0.310 [0.200, 0.400] (n=12) | beats the random map |" in first
    assert "| planted | status: disabled |" in first and "| external | status: off (external.sources is empty) |" in first
    assert "gradcam: degenerate or failed maps constant 4" in first
    assert "| train_unet | no output (metrics/headline/train_unet.json not found): the stage did not run |" in first


def test_results_of_another_commit_are_labelled(report):
    text = (report / "README.md").read_text()
    assert "Not produced by this run: `results/ablation.md` is committed" in text


def test_index_html_is_one_self_contained_page(report):
    page = (report / S.HTML).read_text()
    assert page.index("Summary of this run") < page.index("Headline metrics") < page.index("<img")
    urls = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert urls and all(u.startswith("data:image/png;base64,") for u in urls), urls
    assert not re.search(r"https?://", page) and "<script" not in page and "<link" not in page
    assert "Shortcut audit" in page and "not scored: auroc_healthy" in page


@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                    reason="no Chromium here (Debian: apt-get install chromium); scripts/check_report_html.py")
def test_index_html_renders_offline_in_headless_chromium(report, tmp_path):
    check = script("check_report_html")
    shot = tmp_path / "shot.png"
    assert check.check(report / S.HTML, shot) == []
    px = np.asarray(Image.open(shot).convert("L"))
    assert px.std() > 5                                             # not blank
    bad = report.parent / "bad.html"                                # the check does see a request, and a blank page
    bad.write_text('<html><body><img src="http://example.invalid/x.png"></body></html>')
    problems = check.check(bad, tmp_path / "bad.png")
    assert any("network request: http://example.invalid/x.png" in p for p in problems)
    assert any("blank" in p for p in problems)


def test_cxrbench_report_writes_the_folder_from_the_workspace(tmp_path, monkeypatch, capsys):
    from cxrbench import cli

    _run(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", "--params", str(ROOT / "params.yaml")]) == 0
    assert "report/index.html (opens offline)" in capsys.readouterr().out
    for name in ("README.md", "index.html", "model_card.md"):
        assert (tmp_path / "report" / name).is_file()
    assert "| profile | none (params.yaml as committed, or a custom run) |" in (tmp_path / "report/README.md").read_text()


@pytest.mark.parametrize("name", ["sample", "ci", "planted"])
def test_the_profile_of_a_run_is_named(name):
    from cxrbench.core.params import load
    from cxrbench.ops.profiles import read_profile

    params = load(ROOT / "params.yaml", read_profile(name, ROOT))
    assert S.profile_of(params, ROOT) == name
