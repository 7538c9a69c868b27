"""``cxrbench scale`` on a local Ray with 2 single-CPU workers, on the toy project (cxrbench.ops.scale.toy):
byte-identical outputs to serial ``dvc repro``, the cells restored from DVC's run-cache, a failed stage named
with its log and resumed by a rerun, a killed worker's task retried. Needs Ray (the ``scale`` extra)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from cxrbench.core.params import load  # noqa: E402
from cxrbench.ops.scale import coordinator, toy, worker  # noqa: E402
from cxrbench.ops.scale import plan as planning  # noqa: E402
from cxrbench.ops.scale.cli import compare_trees  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("git") is None, reason="needs git")]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


def _run(repo, **kw):
    conf = planning.settings(load(repo / "params.yaml"))
    plan = planning.make_plan(repo, conf)
    return plan, coordinator.run(repo, conf, plan, plan.outs, workers=2, **kw)


def _serial(tmp_path):
    serial = toy.make(tmp_path / "serial")
    worker.dvc(["repro", "-q"], serial)
    return serial


def test_two_workers_give_the_serial_bytes_through_the_run_cache(tmp_path):
    repo, serial = toy.make(tmp_path / "toy"), _serial(tmp_path)
    plan, out = _run(repo)
    assert out.ok and sorted(out.done) == sorted(plan.tasks)
    assert sorted(out.restored) == sorted(n for n, t in plan.tasks.items() if not t.persist)   # the evaluate cells
    assert out.rerun == []
    assert compare_trees(repo, serial, plan.outs) == []
    assert worker.dvc(["status", "--json"], repo).strip() in ("{}", "")
    count = tmp_path / "count"
    os.environ["TOY_COUNT"] = str(count)
    try:
        _, again = _run(repo)                                     # a rerun: nothing left to do, nothing runs
    finally:
        del os.environ["TOY_COUNT"]
    assert again.ok and again.done == [] and len(again.up_to_date) == len(plan.tasks) and not count.exists()


def test_a_failed_stage_is_named_and_a_rerun_resumes(tmp_path, monkeypatch):
    repo, serial = toy.make(tmp_path / "toy"), _serial(tmp_path)
    flag, count = tmp_path / "fail", tmp_path / "count"
    flag.touch()
    monkeypatch.setenv("TOY_FAIL", f"train@b-0:{flag}")
    monkeypatch.setenv("TOY_COUNT", str(count))
    lines = []
    plan, out = _run(repo, log=lines.append)
    assert list(out.failed) == ["train@b-0"] and "train@b-0.log" in out.failed["train@b-0"]
    assert out.skipped == {"evaluate@b-0": "train@b-0"}
    assert any(line.startswith("FAILED stage train@b-0") for line in lines)
    assert len(out.done) == 6
    flag.unlink()
    count.unlink()
    plan, again = _run(repo)
    # the failed cell and its dependent run; the evaluate cells that finished before are resubmitted (they are
    # not in the workspace's dvc.lock yet) and their workers restore them from the run-cache without running
    assert again.ok and {"evaluate@b-0", "train@b-0"} <= set(again.done) and "train@a-0" in again.up_to_date
    assert sorted(count.read_text().split()) == ["aggregate", "evaluate@b-0", "train@b-0"]   # nothing else reran
    assert compare_trees(repo, serial, plan.outs) == []


def test_a_killed_worker_is_retried_and_the_outputs_are_unchanged(tmp_path):
    repo, serial = toy.make(tmp_path / "toy", items=["a"]), toy.make(tmp_path / "serial", items=["a"])
    worker.dvc(["repro", "-q"], serial)
    logs = repo / coordinator.WORKDIR / "logs"
    env = {**os.environ, "TOY_SLEEP": "3", "PYTHONPATH": str(ROOT), "CXRBENCH_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cxrbench", "scale", "run", "--workers", "2"], cwd=repo,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pidfile = logs / "train@a-0.task-pid"
    stage_pid = repo / coordinator.WORKDIR / "worktrees" / "train@a-0" / worker.PIDFILE
    deadline = time.time() + 300
    while not (pidfile.exists() and stage_pid.exists()):           # the task's dvc repro has started
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[0]
        time.sleep(0.2)
    os.kill(int(pidfile.read_text()), signal.SIGKILL)              # the Ray worker process running train@a-0
    text = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, text
    assert "4/4 matrix stages done" in text, text
    log = (logs / "train@a-0.log").read_text()
    assert log.count("=== train@a-0") == 2 and "(resumed worktree)" in log   # retried in the same worktree
    plan = planning.make_plan(repo, planning.settings(load(repo / "params.yaml")))
    assert compare_trees(repo, serial, plan.outs) == []


def test_a_sweep_runs_one_experiment_per_combination_and_dvc_lists_them(tmp_path):
    repo = toy.make(tmp_path / "toy", items=["a"])
    conf = planning.settings(load(repo / "params.yaml"))
    uncached = sorted({u for t in planning.make_plan(repo, conf).tasks.values() for u in t.uncached})
    status = coordinator.sweep(repo, conf, [("ep1", ["epochs=1"]), ("ep3", ["epochs=3"])], uncached, workers=2,
                               log=lambda _: None)
    assert status == {"ep1": "", "ep3": ""}
    names = worker.dvc(["exp", "list", "--name-only"], repo).split()
    assert sorted(names) == ["ep1", "ep3"]
    refs = dict(line.split()[::-1] for line in worker.git(
        ["for-each-ref", "refs/exps", "--format=%(objectname) %(refname)"], repo).splitlines())
    for name, epochs in (("ep1", 1), ("ep3", 3)):                # each experiment's own params and metrics
        sha = next(v for k, v in refs.items() if k.endswith("/" + name))
        assert f"epochs: {epochs}" in worker.git(["show", f"{sha}:params.yaml"], repo)
        assert f'"epochs": {epochs}' in worker.git(["show", f"{sha}:metrics/train/a-f0.json"], repo)
