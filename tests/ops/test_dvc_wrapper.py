"""``python -m cxrbench.ops._dvc``: DVC with dvc.lock parsed for update by the safe loader writes the same
dvc.lock, byte for byte, as DVC itself, on a real DVC project (the toy project of ``cxrbench scale``)."""

import subprocess
import sys
from pathlib import Path

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


def _dpath_or_error(get, config, key):
    try:
        return ("value", get(config, key))
    except (KeyError, ValueError) as err:
        return ("error", type(err).__name__)


def test_the_direct_param_lookup_equals_dpath_on_every_param_key_of_the_pipeline():
    import dpath
    from dvc.repo import Repo
    from ruamel.yaml import YAML

    root = Path(__file__).resolve().parents[2]
    config = YAML(typ="safe").load((root / "params.yaml").read_text())
    with Repo(str(root)) as repo:
        keys = {k for st in repo.index.stages for d in st.deps if hasattr(d, "params") for k in (d.params or [])}
    keys |= {"train.backbones.0", "train.backbones.99", "no.such.key", "train", "train.*", "train.input_size"}
    assert len(keys) > 100
    slow = lambda c, k: dpath.get(c, k, separator=".")      # noqa: E731
    fast = lambda c, k: _dvc.param_get(c, k, dpath.get)      # noqa: E731
    for key in sorted(keys):
        assert _dpath_or_error(fast, config, key) == _dpath_or_error(slow, config, key), key
    odd = {1: {"a": [10, {"b": None}]}}                        # a YAML int key, a list, a null leaf
    for key in ["1", "1.a", "1.a.0", "1.a.1.b", "1.a.2", "1.b", "2"]:
        assert _dpath_or_error(fast, odd, key) == _dpath_or_error(slow, odd, key), key
    assert _dvc.patch_params() and _dvc.patch_params()
