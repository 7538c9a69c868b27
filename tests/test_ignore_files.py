"""The repository's .gitignore/.dvcignore keep a virtual environment in the clone out of DVC's reach.

``dvc exp apply`` moves every untracked file that git does not ignore into a git stash, removes it from disk
and writes back plain copies: a venv's ``bin/python`` link becomes a text file and its scripts lose their
executable bit (the venv is broken), and all of it is copied into git objects."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _sh(cmd: list[str], cwd: Path, env: dict) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


# environments and tool folders a user makes in a clone (an editable install's cxrbench.egg-info too)
USER_FOLDERS = (".venv", "venv", "env", ".idea", ".vscode", "cxrbench.egg-info")


def _state(folder: Path) -> dict:
    """Each path under ``folder``: its link target, or its mode and bytes."""
    return {p.relative_to(folder).as_posix(): ("link", os.readlink(p)) if p.is_symlink()
            else (oct(p.stat().st_mode), p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_venv_in_the_clone_survives_dvc_exp_apply(tmp_path):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(tmp_path)}
    dvc, repo = [sys.executable, "-m", "dvc"], tmp_path / "repo"
    repo.mkdir()
    _sh(["git", "init", "-q", "-b", "main"], repo, env)
    for key, value in (("user.name", "test"), ("user.email", "test@example.com"), ("commit.gpgsign", "false")):
        _sh(["git", "config", key, value], repo, env)
    _sh(dvc + ["init", "-q"], repo, env)
    for name in (".gitignore", ".dvcignore"):                       # the repository's own ignore files
        shutil.copy(ROOT / name, repo / name)
    (repo / "params.yaml").write_text("p: 1\n")
    (repo / "dvc.yaml").write_text(
        "stages:\n  write:\n    cmd: python3 -c \"import sys; open('out.txt', 'w').write(sys.argv[1])\" ${p}\n"
        "    params: [p]\n    outs:\n      - out.txt:\n          cache: false\n")
    _sh(["git", "add", "-A"], repo, env)
    _sh(["git", "commit", "-q", "-m", "tiny DVC project"], repo, env)
    made = {}
    for folder in USER_FOLDERS:                                      # what a venv holds: a link, a script, data
        (repo / folder / "bin").mkdir(parents=True)
        (repo / folder / "bin" / "python").symlink_to(sys.executable)
        (repo / folder / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
        (repo / folder / "bin" / "tool").chmod(0o755)
        (repo / folder / "lib.txt").write_text("the user's")
        made[folder] = _state(repo / folder)
    _sh(dvc + ["exp", "run", "-q", "-S", "p=2", "--name", "e1"], repo, env)
    _sh(dvc + ["exp", "apply", "e1"], repo, env)
    assert (repo / "out.txt").read_text() == "2"                     # the experiment was applied
    assert {folder: _state(repo / folder) for folder in USER_FOLDERS} == made
    stored = set()                                                   # nothing of them went into git
    for rev in _sh(["git", "rev-list", "--all"], repo, env).split():
        stored |= set(_sh(["git", "ls-tree", "-r", "--name-only", rev], repo, env).split())
    assert not [p for p in stored if p.split("/")[0] in USER_FOLDERS]
