"""``python -m cxrbench.ops._dvc``: DVC with dvc.lock parsed for update by the safe loader writes the same
dvc.lock, byte for byte, as DVC itself, on a real DVC project (the toy project of ``cxrbench scale``)."""

import subprocess
import sys

import pytest

from cxrbench.ops import _dvc
from cxrbench.ops.scale import toy


def _repro(root, *prefix):
    done = subprocess.run([*prefix, "repro", "-q"], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return (root / "dvc.lock").read_bytes()


def test_the_wrapper_writes_the_lock_dvc_writes(tmp_path):
    plain, fast = toy.make(tmp_path / "plain"), toy.make(tmp_path / "fast")
    a = _repro(plain, sys.executable, "-m", "dvc")
    b = _repro(fast, sys.executable, "-m", "cxrbench.ops._dvc")
    assert a == b and b.count(b"cmd:") >= 3                  # several stages: the lock was parsed and updated
    for root in (plain, fast):                                # an existing lock updated: a param changed
        text = (root / "params.yaml").read_text()
        (root / "params.yaml").write_text(text.replace("items: [a, b]", "items: [a, b, c]"))
    assert _repro(plain, sys.executable, "-m", "dvc") == _repro(fast, sys.executable, "-m", "cxrbench.ops._dvc")


def test_only_the_lock_file_loses_the_round_trip_parse():
    from dvc.utils.serialize import _yaml

    assert _dvc.patch() and _dvc.patch()                      # idempotent
    text = "# a comment\nstages:\n  a:\n    cmd: echo\n"
    assert type(_yaml.parse_yaml_for_update(text, "dvc.lock")) is dict
    assert type(_yaml.parse_yaml_for_update(text, "dvc.yaml")).__name__ == "CommentedMap"    # comments kept
