"""Each DVC stage's deps cover all the code it runs, so that `dvc repro` can never report "up to date"
over results of older code."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from cxrbench.ops import deps as D

ROOT = Path(__file__).resolve().parents[2]


def test_every_stage_lists_the_code_it_runs():
    gaps = D.missing(ROOT)
    assert not gaps, "\n".join(f"{stage}: add to its deps: {', '.join(files)}" for stage, files in gaps.items())


def _toy(tmp_path: Path, deps: list[str]) -> Path:
    """A repository with a two-module package, one stage, and ``deps`` for it."""
    pkg = tmp_path / "cxrbench"
    (pkg / "core").mkdir(parents=True, exist_ok=True)
    (pkg / "explain").mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "io.py").write_text("X = 1\n")
    (pkg / "explain" / "__init__.py").write_text("")
    # a relative import inside a function: the kind of import a hand-kept list misses
    (pkg / "explain" / "run.py").write_text("def f():\n    from ..core.io import X\n    return X\n")
    (tmp_path / "stages").mkdir(exist_ok=True)
    (tmp_path / "stages" / "go.py").write_text("from cxrbench.explain import run\n")
    dvc = {"stages": {"go": {"cmd": "python stages/go.py", "deps": deps, "outs": ["out"]}}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc))
    return tmp_path


def test_a_module_imported_inside_a_function_is_required(tmp_path):
    root = _toy(tmp_path, ["stages/go.py", "cxrbench/__init__.py", "cxrbench/explain"])
    assert D.missing(root) == {"go": ["cxrbench/core/__init__.py", "cxrbench/core/io.py"]}
    root = _toy(tmp_path, ["stages/go.py", "cxrbench/__init__.py", "cxrbench/explain", "cxrbench/core/io.py"])
    assert D.missing(root) == {"go": ["cxrbench/core/__init__.py"]}     # a file dep covers that file only
    root = _toy(tmp_path, ["stages/go.py", "cxrbench"])
    assert D.missing(root) == {}


def test_the_check_names_the_stage_and_the_module(tmp_path, capsys):
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "cxrbench", repo / "cxrbench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "stages", repo / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    dvc["stages"]["evaluate"]["deps"].remove("cxrbench/lungs")
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc))
    assert D.main(["--root", str(repo)]) == 1
    out = capsys.readouterr().out
    assert "evaluate: not in its deps: cxrbench/lungs/__init__.py" in out and "cxrbench/lungs/controls.py" in out


def test_a_stage_with_intervals_lists_every_stats_key_that_sets_them():
    """Every interval a stage computes follows the whole stats section (cxrbench.core.bootstrap.options): a stage
    that lists one of those keys lists them all, so that `dvc repro -S stats.method=bca` reruns it instead of
    calling it up to date."""
    keys = {f"stats.{k}" for k in ("resamples", "seed", "confidence", "method", "min_valid_share")}
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    short = {}
    for name, st in stages.items():
        listed = {p for p in st.get("do", st).get("params", []) if isinstance(p, str)}
        if listed & keys and "stats" not in listed and not keys <= listed:
            short[name] = sorted(keys - listed)
    assert not short, f"stages that list only part of the interval settings: {short}"
