"""cxrbench show / diff / run's progress / profiles show: what a user reads fits a screen and says what to do."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cxrbench import cli
from cxrbench.core import paths
from cxrbench.ops import profiles
from cxrbench.ops import progress as PR
from cxrbench.ops import show as S

ROOT = Path(__file__).resolve().parents[2]
ENSEMBLE = {"f1": {"value": 0.7, "low": 0.6, "high": 0.8}, "vote_f1": 0.71, "auroc_healthy": "not scored",
            "not_scored": ["auroc_healthy"]}


def _write(root: Path, stage: str, h: dict) -> None:
    (root / paths.HEADLINE).mkdir(parents=True, exist_ok=True)
    (root / paths.headline(stage)).write_text(json.dumps(h))


def test_show_prints_values_cis_and_what_was_not_scored(tmp_path):
    _write(tmp_path, "ensemble", ENSEMBLE)
    text = S.show_text(S.load(".", tmp_path), "workspace")
    rows = [" ".join(line.split()) for line in text.splitlines()]
    assert "ensemble.f1 0.700 [0.600, 0.800]" in rows
    assert "ensemble.auroc_healthy not scored" in rows and "1 value(s) not scored" in text
    assert len(text.splitlines()) < 40


def test_diff_reads_a_committed_revision_against_the_workspace(tmp_path):
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)
    git("init", "-q")
    _write(tmp_path, "ensemble", ENSEMBLE)
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "reference")
    _write(tmp_path, "ensemble", {**ENSEMBLE, "vote_f1": 0.81})
    text = S.diff_text(S.load("HEAD", tmp_path), S.load(".", tmp_path), "HEAD", ".")
    row = next(line for line in text.splitlines() if line.startswith("ensemble.vote_f1"))
    assert row.split() == ["ensemble.vote_f1", "0.710", "0.810", "+0.100"]
    only = S.diff_text(S.load("HEAD", tmp_path), S.load(".", tmp_path), "HEAD", ".", changed=True)
    assert [line.split()[0] for line in only.splitlines()[2:-1]] == ["ensemble.vote_f1"]
    assert only.splitlines()[-1].startswith(f"{len(text.splitlines()) - 3} other value(s) equal")
    same = S.diff_text(S.load("HEAD", tmp_path), S.load("HEAD", tmp_path), "HEAD", "HEAD", changed=True)
    assert same.startswith("HEAD and HEAD: all") and same.endswith("headline values are equal")
    with pytest.raises(S.RunNotFound, match="no experiment or git revision named 'HAED'"):
        S.load("HAED", tmp_path)


def test_progress_counts_the_stages_of_the_profile_and_estimates_from_the_previous_run(tmp_path):
    params = profiles.load(overrides={"train.backbones": ["resnet18", "efficientnet_lite0"], "train.folds": [0, 1]})
    stages = PR.expected_stages(params, ROOT / "dvc.yaml")
    assert "train@resnet18-0" in stages and "train@efficientnet_lite0-1" in stages
    assert len([s for s in stages if s.startswith("train@")]) == 4
    now = [0.0]
    prog = PR.Progress(stages, {s: 60.0 for s in stages}, clock=lambda: now[0])
    first = prog.feed("Running stage 'download@kermany':")
    assert first.startswith(f"[cxrbench] stage 1 of {len(stages)}: download@kermany")
    assert f"about {len(stages)} min left" in first
    now[0] = 30.0
    second = prog.feed("Stage 'index' didn't change, skipping")
    assert f"stage 2 of {len(stages)}: index" in second and f"about {len(stages) - 1} min left" in second
    assert prog.feed("some other output") is None
    prog.finish(tmp_path / "times.json")
    assert json.loads((tmp_path / "times.json").read_text())["download@kermany"] == 30.0
    assert "unknown" in PR.Progress(stages).feed("Running stage 'index':")


def test_a_mistyped_profile_or_subcommand_is_one_line_with_close_matches(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert profiles.main(["show", "sampel"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean sample?" in err
    assert cli.main(["run", "smaple"]) == 2
    assert "did you mean sample?" in capsys.readouterr().err
    assert cli.main(["shwo"]) == 2
    assert "did you mean show?" in capsys.readouterr().err


def test_profiles_show_prints_a_command_a_shell_runs_as_is(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert profiles.main(["show", "sample"]) == 0
    text = capsys.readouterr().out
    assert "\"'\"'" not in text                        # no nested shell quotes
    assert "-S 'train.backbones=[resnet18,efficientnet_lite0]' \\" in text   # quoted once: [ ] glob
    args = subprocess.run(["bash", "-c", "printf '%s\\n' " + text.split(" ", 3)[3]], capture_output=True,
                          text=True, check=True).stdout.splitlines()     # the shell's words after dvc exp run --temp
    assert "sources.kermany.mirror=data/sample/chest_xray" in args


def test_the_stage_names_are_those_dvc_lists(monkeypatch):
    monkeypatch.chdir(ROOT)
    listed = subprocess.run(["dvc", "stage", "list", "--name-only"], capture_output=True, text=True, check=True)
    assert set(PR.expected_stages(profiles.load(), ROOT / "dvc.yaml")) == set(listed.stdout.split())
