"""An interrupted stage's checkpoints survive ``dvc exp run``, which deletes an unfinished stage's outputs."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrbench.classify import training as T
from cxrbench.core import paths, resume
from cxrbench.core.runtime import RESUME_ENV, DeadlineReached
from cxrbench.lungs import unet
from helpers import real_lungs as _real
from helpers import synthetic_cache as _data
from helpers import tiny_unet as _tiny
from helpers import train_config as _cfg

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path, monkeypatch):
    (tmp_path / "store").mkdir()
    monkeypatch.setenv(RESUME_ENV, str(tmp_path / "store"))
    return tmp_path / "store"


def test_keep_restore_forget(tmp_path, store, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = Path("models/m")
    out.mkdir(parents=True)
    (out / "last.pt").write_bytes(b"epoch 1")
    (out / "last.json").write_text("{}")
    (out / ".last.pt.123.tmp").write_bytes(b"half")                   # a temporary of an atomic write
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"          # a path outside the working directory
    outside.write_text("kept too")
    kept = resume.slot(out, {"config": "a"})
    assert kept.parent == store and kept != resume.slot(out, {"config": "b"})
    resume.keep(kept, [*resume.files_under(out), outside])
    assert os.path.samefile(kept / "0-last.json", out / "last.json")   # a link, not a second copy
    names = json.loads((kept / resume.MANIFEST).read_text())
    assert sorted(names.values()) == sorted([str(outside), "models/m/last.json", "models/m/last.pt"])

    # what dvc exp run does to an unfinished stage's output
    for f in out.iterdir():
        f.unlink()
    outside.unlink()
    back = resume.restore(kept)
    assert sorted(map(str, back)) == sorted([str(outside), "models/m/last.json", "models/m/last.pt"])
    assert (out / "last.pt").read_bytes() == b"epoch 1" and outside.read_text() == "kept too"
    assert not (out / ".last.pt.123.tmp").exists()
    assert not os.path.samefile(kept / "1-last.pt", out / "last.pt")  # a copy: appending leaves the slot alone

    (out / "last.pt").write_bytes(b"epoch 2")                          # a file present is never overwritten
    assert resume.restore(kept) == [] and (out / "last.pt").read_bytes() == b"epoch 2"
    resume.keep(kept, [out / "last.pt"])                               # the slot now holds exactly this
    assert sorted(json.loads((kept / resume.MANIFEST).read_text()).values()) == ["models/m/last.pt"]
    assert [p.name for p in store.iterdir()] == [kept.name]            # the old slot was swapped out, not left
    resume.forget(kept)
    assert not kept.exists() and resume.restore(kept) == []
    with pytest.raises(ValueError, match="not a slot"):
        resume.forget(tmp_path / "models")                             # nothing outside the store is deleted
    assert (out / "last.pt").is_file()


def test_the_store_is_the_repositorys_also_from_a_dvc_temporary_copy(tmp_path, monkeypatch):
    monkeypatch.delenv(RESUME_ENV, raising=False)
    repo = tmp_path / "repo"
    assert resume.store(repo) == repo.resolve() / paths.RESUME
    assert resume.store(repo / ".dvc/tmp/exps/tmpab12cd") == repo.resolve() / paths.RESUME
    monkeypatch.setenv(RESUME_ENV, str(tmp_path / "elsewhere"))
    assert resume.store(repo) == (tmp_path / "elsewhere").resolve()


STAGE = """
import sys
from pathlib import Path
from cxrbench.core import resume

ckpt = Path("out/ckpt")
print("before restore:", "present" if ckpt.exists() else "missing")
kept = resume.slot(ckpt, {"config": 1})
resume.restore(kept)
n = int(ckpt.read_text()) + 1 if ckpt.exists() else 1
ckpt.parent.mkdir(exist_ok=True)
ckpt.write_text(str(n))
resume.keep(kept, [ckpt])
print("epochs done:", n)
if n < 2:
    sys.exit(1)          # interrupted after its first epoch
resume.forget(kept)
"""


def _git_repo(path: Path) -> Path:
    path.mkdir()
    (path / "stage.py").write_text(textwrap.dedent(STAGE))
    (path / "params.yaml").write_text("p: 1\n")
    (path / "dvc.yaml").write_text(textwrap.dedent(f"""
        stages:
          train:
            cmd: {sys.executable} stage.py
            params: [p]
            deps: [stage.py]
            outs:
              - out:
                  persist: true
        """))
    (path / ".gitignore").write_text("/.cxrbench/\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "core.hooksPath=/dev/null", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=path, check=True, env=env, capture_output=True)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("where", ["workspace", "temp"])
def test_dvc_exp_run_deletes_the_unfinished_output_and_the_rerun_resumes_from_the_slot(tmp_path, monkeypatch, where):
    monkeypatch.delenv(RESUME_ENV, raising=False)                     # the default store: the repository's
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    repo = _git_repo(tmp_path / "repo")
    cmd = ["dvc", "exp", "run", *(["--temp"] if where == "temp" else [])]
    first = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    assert first.returncode != 0 and "epochs done: 1" in first.stdout + first.stderr, first.stdout + first.stderr
    assert (repo / paths.RESUME).is_dir()
    second = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log
    assert "before restore: missing" in log          # DVC removed the output (in the workspace) or never had it
    assert "epochs done: 2" in log                   # ... and the stage went on from its kept first epoch
    assert not any((repo / paths.RESUME).iterdir())  # finished: the slot is gone


@pytest.mark.slow
def test_a_classifier_resumes_after_its_outputs_were_deleted(tmp_path, store):
    imgs, y = _data()
    full = T.train(_cfg(), imgs, y, np.arange(16), np.arange(16, 24), tmp_path / "full", progress=False,
                   device="cpu", live_dir=tmp_path / "full-live")
    out, live = tmp_path / "run", tmp_path / "run-live"
    s1 = T.train(_cfg(), imgs, y, np.arange(16), np.arange(16, 24), out, progress=False, device="cpu",
                 stop_after_epochs=1, live_dir=live)
    assert s1["epochs_done"] == 1
    for d in (out, live):                            # what dvc exp run does before it reruns the stage
        for f in sorted(d.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
    s2 = T.train(_cfg(), imgs, y, np.arange(16), np.arange(16, 24), out, progress=False, device="cpu",
                 live_dir=live)
    assert s2["resumed"] and s2["complete"] and s2["epochs_done"] == full["epochs_done"]
    a, b = torch.load(tmp_path / "full/last.pt")["model"], torch.load(out / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "best.pt").is_file() and s2["best_epoch"] == full["best_epoch"]
    rows = (live / "plots/metrics/val_loss.tsv").read_text().splitlines()
    assert rows == (tmp_path / "full-live/plots/metrics/val_loss.tsv").read_text().splitlines()
    assert not any(store.iterdir())                  # finished: nothing left to resume


@pytest.mark.slow
def test_the_unet_resumes_after_its_checkpoint_was_deleted(tmp_path, store, sample_data, monkeypatch, capsys):
    images, masks = _real(sample_data, 6)
    parts = {"train": np.arange(4), "val": np.arange(4, 6)}
    dev = torch.device("cpu")
    full = unet.train(_tiny(epochs=2), images, masks, parts, tmp_path / "a.pt", progress=False, dev=dev)
    assert not any(store.iterdir())

    def stop(*a, **k):
        raise DeadlineReached("interrupted after the first epoch")
    monkeypatch.setattr(unet, "check_deadline", stop)
    with pytest.raises(DeadlineReached):
        unet.train(_tiny(epochs=2), images, masks, parts, tmp_path / "b.pt", progress=False, dev=dev)
    monkeypatch.undo()
    monkeypatch.setenv(RESUME_ENV, str(store))
    (tmp_path / "b.pt").unlink()
    (tmp_path / "b.json").unlink()
    capsys.readouterr()
    resumed = unet.train(_tiny(epochs=2), images, masks, parts, tmp_path / "b.pt", progress=False, dev=dev)
    assert "resuming from" in capsys.readouterr().out                 # not trained again from the start
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]
    a, b = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    for k in a["last"]["state_dict"]:
        torch.testing.assert_close(a["last"]["state_dict"][k], b["last"]["state_dict"][k], rtol=0, atol=0)
    assert not any(store.iterdir())
