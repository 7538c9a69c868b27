"""Atomic writes: a crash leaves the old output, and a write never deletes a folder that cxrbench did not write."""

from __future__ import annotations

import os

import pytest

from cxrbench.core import io


def _user_folder(tmp_path):
    folder = tmp_path / "my_xrays"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(b"\x89PNG user data")
    (folder / "sub" / "b.png").write_bytes(b"more")
    return folder


def _contents(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_atomic_path_never_replaces_a_users_folder(tmp_path):
    folder = _user_folder(tmp_path)
    before = _contents(folder)
    for write in (lambda: io.write_text(folder, "x"), lambda: io.write_json(folder, {"a": 1})):
        with pytest.raises(io.OutputPathError, match=str(folder)):
            write()
    ran = []
    with pytest.raises(io.OutputPathError, match="did not write"):
        with io.atomic_path(folder) as tmp:          # a folder body: refused before it runs
            ran.append(tmp)
    assert not ran and _contents(folder) == before
    assert [p.name for p in tmp_path.iterdir()] == ["my_xrays"]        # no temporary left


def test_atomic_path_replaces_only_the_folders_it_wrote(tmp_path):
    out = tmp_path / "out"
    with io.atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "a.npy").write_bytes(b"1")
    assert (out / io.OUTPUT_MARKER).is_file() and io.owned_output(out)
    with io.atomic_path(out) as tmp:                 # its own output: replaced as a whole
        tmp.mkdir()
        (tmp / "b.npy").write_bytes(b"2")
    assert sorted(p.name for p in out.iterdir()) == sorted([io.OUTPUT_MARKER, "b.npy"])
    # a file is never written over a folder, not even one of its own outputs: the folder stays
    with pytest.raises(io.OutputPathError, match=f"{out} is a folder"):
        io.write_text(out, "x")
    assert (out / "b.npy").read_bytes() == b"2"
    with pytest.raises(RuntimeError):                # a failed body keeps the old output
        with io.atomic_path(out) as tmp:
            tmp.mkdir()
            raise RuntimeError("crash")
    assert (out / "b.npy").read_bytes() == b"2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_declared_dvc_outputs_are_replaceable(tmp_path):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  seg:\n    cmd: x\n    outs:\n      - data/lungs\n"
        "  dl:\n    foreach: [a, b]\n    do:\n      cmd: y\n      outs:\n        - data/raw/${item}\n"
        "  tr:\n    matrix:\n      f: [0]\n    cmd: z\n    outs:\n"
        "      - models/m/fold${item.f}:\n          persist: true\n")
    for rel, owned in [("data/lungs", True), ("data/raw/a", True), ("data/raw/a/x", True),
                       ("models/m/fold0", True), ("data", False), ("data/raw", False), ("data/lungsX", False),
                       ("models/m/other", False)]:
        (tmp_path / rel).mkdir(parents=True, exist_ok=True)
        assert io.declared_output(tmp_path / rel) is owned, rel
    (tmp_path / "data/lungs/old.npy").write_bytes(b"old")    # e.g. checked out by DVC: no marker
    with io.atomic_path(tmp_path / "data/lungs") as tmp:
        tmp.mkdir()
        (tmp / "masks.npy").write_bytes(b"new")
    assert not (tmp_path / "data/lungs/old.npy").exists()
    with pytest.raises(io.OutputPathError):
        io.write_text(tmp_path / "data/raw", "x")


def test_check_writable_before_any_work(tmp_path):
    folder = _user_folder(tmp_path)
    assert io.check_writable(tmp_path / "new" / "p.csv") == tmp_path / "new" / "p.csv"   # created later
    assert not (tmp_path / "new").exists()           # the check creates nothing
    with pytest.raises(io.OutputPathError, match=f"{folder} is a folder"):
        io.check_writable(folder)
    with pytest.raises(io.OutputPathError, match="a.png is not a folder"):       # under a file: fails for root too
        io.check_writable(folder / "a.png" / "p.csv")
    if os.path.isdir("/proc/self"):                  # a folder even root cannot create files in
        with pytest.raises(io.OutputPathError, match="cannot write in /proc/self"):
            io.check_writable("/proc/self/p.csv")
    assert sorted(os.listdir(folder)) == ["a.png", "sub"]


def test_a_link_to_a_users_folder_is_refused_too(tmp_path):
    folder = _user_folder(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(folder)
    with pytest.raises(io.OutputPathError, match=str(link)):
        io.write_text(link, "x")
    with pytest.raises(io.OutputPathError, match=str(link)):
        io.check_writable(link)
    assert link.is_symlink() and sorted(os.listdir(folder)) == ["a.png", "sub"]
