"""`dvc plots show` works offline: DVC's page template carries Vega, Vega-Lite and Vega-Embed with their licences,
and the attribution figures are among the plots."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from helpers import script

ROOT = Path(__file__).resolve().parents[2]
PLOTS = ROOT / ".dvc" / "plots"


def _template() -> Path:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / ".dvc" / "config")
    return ROOT / ".dvc" / cfg["plots"]["html_template"]          # DVC reads it relative to .dvc/


def test_the_plots_template_carries_the_libraries_and_their_licences():
    page = _template().read_text()
    assert "{plot_divs}" in page and "{scripts}" not in page       # DVC's CDN <script> tags have nowhere to go
    assert not re.search(r"<script[^>]*\ssrc=", page)              # every script inline
    for name, version in (("vega", "5.20.2"), ("vega-lite", "5.2.0"), ("vega-embed", "6.18.2")):
        assert f"/* {name} {version}, BSD-3-Clause" in page
        licence = (PLOTS / "LICENSES" / f"{name}-{version}.LICENSE").read_text()
        assert "Redistribution and use in source and binary forms" in licence
    assert "sourceMappingURL" not in page


def test_the_attribution_figures_are_plots():
    assert "plots/attributions" in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no Chromium here (Debian: apt-get install chromium)")
def test_dvc_plots_show_draws_offline_in_headless_chromium(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    run = lambda *a: subprocess.run(a, cwd=repo, check=True, capture_output=True, text=True)
    run("git", "init", "-q")
    run("dvc", "init", "-q")
    shutil.copytree(PLOTS, repo / ".dvc" / "plots")
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    (repo / "plots").mkdir()
    x = np.linspace(0, 1, 20)
    pd.DataFrame({"fpr": x, "tpr": np.sqrt(x)}).to_csv(repo / "plots" / "roc.csv", index=False)
    (repo / "dvc.yaml").write_text("plots:\n  - plots/roc.csv:\n      x: fpr\n      y: tpr\n")
    run("dvc", "plots", "show", "-o", "out")
    check = script("check_report_html")
    shot = tmp_path / "shot.png"
    assert check.check(repo / "out" / "index.html", shot, height=700) == []      # no request, not blank
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=int)
    coloured = (np.abs(rgb[..., 0] - rgb[..., 1]) > 40) | (np.abs(rgb[..., 1] - rgb[..., 2]) > 40)
    assert coloured.sum() > 50                                     # Vega drew the coloured curve
