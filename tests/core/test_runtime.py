"""Machine knobs: threads set in one place (not from the worker count), progress that reads well in logs."""

import io

import pytest
import torch

from cxrbench.core import runtime


def test_threads_come_from_their_own_variable_not_workers(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("CXRBENCH_WORKERS", "2")
        monkeypatch.setenv("CXRBENCH_THREADS", "1")
        info = runtime.configure()
        assert torch.get_num_threads() == 1 and info["torch_threads"] == 1
        assert runtime.workers() == 2
        monkeypatch.delenv("CXRBENCH_THREADS")
        assert runtime.threads() == runtime.cores()            # default: every core, whatever WORKERS says
        assert {"torch", "cpu", "machine"} <= set(info)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_bad_thread_count_names_the_variable(monkeypatch, value):
    monkeypatch.setenv("CXRBENCH_THREADS", value)
    with pytest.raises(ValueError, match="CXRBENCH_THREADS"):
        runtime.threads()


def test_progress_mode(monkeypatch):
    monkeypatch.delenv("CXRBENCH_PROGRESS", raising=False)
    assert runtime.progress_mode(io.StringIO()) == "lines"          # a log file is not a terminal
    monkeypatch.setenv("CXRBENCH_PROGRESS", "off")
    assert runtime.progress_mode() == "off"
    monkeypatch.setenv("CXRBENCH_PROGRESS", "fancy")
    with pytest.raises(ValueError, match="CXRBENCH_PROGRESS"):
        runtime.progress_mode()


def test_line_progress_prints_plain_lines_every_tenth_and_at_the_end():
    out = io.StringIO()
    items = list(runtime.LineProgress(range(100), desc="decode", unit="img", stream=out))
    assert items == list(range(100))
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 10 and lines[-1].startswith("decode: 100/100 img")


def test_line_progress_one_line_per_epoch_with_postfix():
    out = io.StringIO()
    bar = runtime.LineProgress(range(2, 5), desc="train_unet", unit="epoch", initial=2, total=5, every=0, stream=out)
    for epoch in bar:
        bar.set_postfix(val=f"{epoch / 10:.2f}")
    lines = out.getvalue().splitlines()
    assert [line.split(" epoch")[0] for line in lines] == ["train_unet: 3/5", "train_unet: 4/5", "train_unet: 5/5"]
    assert lines[0].endswith("val=0.20") and lines[-1].endswith("val=0.40")


def test_progress_off_prints_nothing(monkeypatch, capsys):
    monkeypatch.setenv("CXRBENCH_PROGRESS", "off")
    assert sum(runtime.progress(range(5), desc="x")) == 10
    assert capsys.readouterr().err == ""


def test_the_package_has_no_import_cycle():
    """labels -> cohort -> indexing -> labels was one; modules must form a DAG."""
    import ast
    from pathlib import Path

    pkg = Path(runtime.__file__).parent
    mods = {p.stem: p for p in pkg.glob("*.py")}
    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        graph[name] = deps & set(mods)
    state = {}

    def visit(n, path):
        state[n] = "open"
        for d in graph[n]:
            assert state.get(d) != "open", f"import cycle: {' -> '.join(path + [d])}"
            if d not in state:
                visit(d, path + [d])
        state[n] = "done"

    for n in graph:
        if n not in state:
            visit(n, [n])


_POLICY_AT_TORCH = r"""
import os, sys
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            print("at torch:", os.environ.get("OMP_WAIT_POLICY"))
            sys.meta_path.remove(self)
        return None
sys.meta_path.insert(0, Watch())
import stages.train
"""


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_threads_sleep_when_waiting_before_a_stage_loads_torch(given, expected):
    """A stage run as ``python -m stages.NAME`` has OMP_WAIT_POLICY set when torch loads (OpenMP reads it
    only then); a value the user sets is kept."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", _POLICY_AT_TORCH], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert f"at torch: {expected}" in out.splitlines()
