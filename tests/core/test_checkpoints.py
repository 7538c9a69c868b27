"""A model is reused only for the same data, and a planted checkpoint never runs code."""

import json
import os
import pickle

import numpy as np
import pytest
import torch

from cxrbench.core import checkpoints
from cxrbench.lungs import unet
from cxrbench.classify import training as T
from helpers import real_lungs as _real
from helpers import synthetic_cache as _data
from helpers import tiny_unet as _tiny
from helpers import train_config as _cfg


class _Payload:
    """Unpickling this writes a marker file: proof that a checkpoint executed code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(path, marker, sidecar: dict | None):
    with open(path, "wb") as f:
        pickle.dump({"model": _Payload(marker), "epoch": 0}, f)
    if sidecar is not None:
        checkpoints.sidecar(path).write_text(json.dumps(sidecar))


@pytest.mark.slow
def test_finished_classifier_is_retrained_when_the_data_changes(tmp_path):
    imgs, y = _data()
    first = T.train(_cfg(), imgs, y, np.arange(16), np.arange(16, 24), tmp_path, progress=False, device="cpu")
    same = T.train(_cfg(), imgs, y, np.arange(16), np.arange(16, 24), tmp_path, progress=False, device="cpu")
    assert first["complete"] and same["resumed"] and same["data_digest"] == first["data_digest"]
    # another split: the same configuration, other training rows -> trained afresh, both epochs
    moved = T.train(_cfg(), imgs, y, np.arange(1, 17), np.arange(17, 24), tmp_path, progress=False, device="cpu")
    assert not moved["resumed"] and moved["epochs_done"] == 2 and moved["data_digest"] != first["data_digest"]
    # other preprocessing: one pixel of one training image differs
    imgs2 = imgs.copy()
    imgs2[3, 0, 0, 0] ^= 1
    changed = T.train(_cfg(), imgs2, y, np.arange(1, 17), np.arange(17, 24), tmp_path, progress=False, device="cpu")
    assert not changed["resumed"] and changed["epochs_done"] == 2
    # other labels
    y2 = y.copy()
    y2[5, 1] = 1 - y2[5, 1]
    relabelled = T.train(_cfg(), imgs2, y2, np.arange(1, 17), np.arange(17, 24), tmp_path, progress=False,
                         device="cpu")
    assert not relabelled["resumed"]


@pytest.mark.slow
@pytest.mark.parametrize("forge_sidecar", [False, True])
def test_planted_classifier_checkpoint_runs_no_code(tmp_path, capsys, forge_sidecar):
    imgs, y = _data()
    marker = tmp_path / "pwned"
    out = tmp_path / "model"
    out.mkdir()
    sidecar = None
    if forge_sidecar:  # an attacker who copied a real sidecar: weights_only still refuses the payload
        probe = T.train(_cfg(epochs=1), imgs, y, np.arange(16), np.arange(16, 24), tmp_path / "probe",
                        progress=False, device="cpu")
        sidecar = {"config": probe["digest"], "data": probe["data_digest"]}
    _plant(out / "last.pt", marker, sidecar)
    summary = T.train(_cfg(epochs=1), imgs, y, np.arange(16), np.arange(16, 24), out, progress=False, device="cpu")
    assert not marker.exists(), "the planted checkpoint executed code"
    assert not summary["resumed"] and summary["epochs_done"] == 1
    assert "starting afresh" in capsys.readouterr().out


@pytest.mark.slow
def test_planted_unet_checkpoint_runs_no_code(tmp_path, sample_data):
    images, masks = _real(sample_data, 4)
    parts = {"train": np.arange(3), "val": np.arange(3, 4)}
    marker = tmp_path / "pwned"
    _plant(tmp_path / "model.pt", marker, None)
    out = unet.train(_tiny(), images, masks, parts, tmp_path / "model.pt", progress=False, dev=torch.device("cpu"))
    assert not marker.exists() and out["history"][0]["epoch"] == 0
    _plant(tmp_path / "planted.pt", marker, None)
    with pytest.raises(RuntimeError, match=r"planted.pt does not load as plain weights.*delete it"):
        unet.load_model(tmp_path / "planted.pt")
    assert not marker.exists()


@pytest.mark.slow
def test_unet_is_retrained_when_its_images_change(tmp_path, sample_data):
    images, masks = _real(sample_data, 4)
    parts = {"train": np.arange(3), "val": np.arange(3, 4)}
    dev = torch.device("cpu")
    unet.train(_tiny(), images, masks, parts, tmp_path / "m.pt", progress=False, dev=dev)
    again = unet.train(_tiny(epochs=2), images, masks, parts, tmp_path / "m.pt", progress=False, dev=dev)
    assert [h["epoch"] for h in again["history"]] == [0, 1]               # resumed: epoch 0 came from the file
    brighter = np.clip(images.astype(np.int16) + 10, 0, 255).astype(np.uint8)  # e.g. other intensity params
    fresh = unet.train(_tiny(epochs=2), brighter, masks, parts, tmp_path / "m.pt", progress=False, dev=dev)
    assert [h["epoch"] for h in fresh["history"]] == [0, 1] and fresh["history"][0] != again["history"][0]


def test_identity_mismatch_names_what_differs(tmp_path):
    path = tmp_path / "x.pt"
    checkpoints.save(path, {"w": torch.zeros(2)}, {"config": "a", "data": "d1"})
    state, why = checkpoints.load(path, {"config": "a", "data": "d1"})
    assert why == "resumed" and torch.equal(state["w"], torch.zeros(2))
    state, why = checkpoints.load(path, {"config": "a", "data": "d2"})
    assert state is None and "other data" in why
    checkpoints.sidecar(path).unlink()
    state, why = checkpoints.load(path, {"config": "a", "data": "d1"})
    assert state is None and "no identity file" in why


def test_temporaries_of_killed_writers_are_removed(tmp_path):
    import subprocess
    import sys

    from cxrbench.core.io import write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.txt.{dead.stdout.strip()}.abc123"          # as a writer killed mid-write leaves it
    stale.mkdir()
    (stale / "out.txt").write_text("half")
    live = tmp_path / f".out.txt.{os.getpid()}.zzz"                      # ours: never touched
    live.mkdir()
    other = tmp_path / ".other.txt.1.x"
    other.mkdir()
    write_text(tmp_path / "out.txt", "whole")
    assert (tmp_path / "out.txt").read_text() == "whole"
    assert not stale.exists() and live.exists() and other.exists()
