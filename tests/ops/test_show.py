"""cxrbench show / diff / run's progress / profiles show: what a user reads fits a screen and says what to do."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from cxrbench import cli
from cxrbench.core import params as P
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


def _lock(root: Path, stages: list[str]) -> None:
    """A dvc.lock that records the current headline files of ``stages``, as DVC writes it after they ran."""
    outs = [{"path": paths.headline(s), "hash": "md5",
             "md5": hashlib.md5((root / paths.headline(s)).read_bytes()).hexdigest()} for s in stages]
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"x": {"outs": outs}}}))


def test_the_workspace_shows_only_the_headline_files_its_dvc_lock_records(tmp_path, monkeypatch, capsys):
    """A headline file its stage has not written in this workspace (the committed reference's after a clone, an
    older run's after a param change) is "not run", never shown as the workspace's result."""
    _write(tmp_path, "ensemble", ENSEMBLE)
    _write(tmp_path, "split", {"images": 10, "not_scored": []})
    heads, stale = S.load_workspace(tmp_path)
    assert set(stale) == {"ensemble", "split"} and heads["ensemble"]["f1"] == S.NOT_RUN      # no dvc.lock: nothing ran
    _lock(tmp_path, ["ensemble", "split"])
    heads, stale = S.load_workspace(tmp_path)
    assert stale == [] and heads["ensemble"]["f1"] == ENSEMBLE["f1"]
    _write(tmp_path, "split", {"images": 12, "not_scored": []})                          # not the recorded file
    heads, stale = S.load_workspace(tmp_path)
    assert stale == ["split"] and heads["split"] == {"images": S.NOT_RUN} and heads["ensemble"]["vote_f1"] == 0.71
    monkeypatch.chdir(tmp_path)
    assert S.main([], "show") == 0
    out = capsys.readouterr().out
    assert "split.images" in out and "not run: split: the workspace's dvc.lock does not record" in out
    assert "ensemble.f1" in out and "0.700 [0.600, 0.800]" in out


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


def test_across_runs_flags_intervals_that_do_not_overlap():
    ci = lambda v, lo, hi: {"value": v, "low": lo, "high": hi}
    rows = {r["key"]: r for r in S.across_runs({
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
