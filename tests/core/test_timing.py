"""The timing record of a stage: steps summed and ranked, start-up split from the stage's own work, the
file written only for a stage DVC runs (and every dvc.yaml stage declares it as a non-metric output)."""

import json
import re
import time

import pytest
import yaml

from cxrbench.core import params as P
from cxrbench.core import paths, timing


@pytest.fixture(autouse=True)
def fresh():
    timing.reset()
    yield
    timing.reset()


def test_steps_are_summed_counted_and_ranked_slowest_first():
    timing.add("method saliency", 0.5, n=4, unit="image")
    timing.add("method occlusion", 3.0, n=4, unit="image")
    timing.add("method saliency", 0.5, n=4, unit="image")
    got = timing.steps()
    assert list(got) == ["method occlusion", "method saliency"]
    assert got["method saliency"] == {"seconds": 1.0, "n": 8, "unit": "image", "per_unit": 0.125}


def test_a_step_block_is_timed_even_when_it_raises():
    with pytest.raises(RuntimeError):
        with timing.step("fill road", n=2, unit="image"):
            time.sleep(0.02)
            raise RuntimeError("boom")
    rec = timing.steps()["fill road"]
    assert rec["n"] == 2 and rec["seconds"] >= 0.02


def test_startup_is_the_time_before_the_stage_work():
    time.sleep(0.05)
    timing.main_started()
    time.sleep(0.05)
    s = timing.summary("x")
    # both figures are rounded to the millisecond (each within 0.0005 of its value): 0.001 between them
    assert s["startup_s"] >= 0.05 - 0.0005 and s["wall_s"] >= s["startup_s"] + 0.05 - 0.001
    assert s["cores"] >= 1 and s["steps"] == {}


def test_nothing_is_written_outside_dvc(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert timing.write() is None
    assert not (tmp_path / paths.TIMING).exists()


def _stage_main(argv):
    timing.add("epoch", 0.25, unit="epoch")


def _failing_main(argv):
    raise P.ParamError("train.epochs", "expected an integer")


def test_run_stage_writes_the_record_named_by_dvc(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_STAGE", "sub/dvc.yaml:train@resnet18-0")
    P.run_stage(_stage_main, [])
    rec = json.loads((tmp_path / "timing" / "train@resnet18-0.json").read_text())
    assert rec["stage"] == "train@resnet18-0"
    assert rec["steps"]["epoch"]["seconds"] == 0.25
    assert rec["wall_s"] >= rec["startup_s"] >= 0


def test_a_failed_stage_writes_no_record(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_STAGE", "train@resnet18-0")
    with pytest.raises(SystemExit):
        P.run_stage(_failing_main, [])
    assert not (tmp_path / "timing").exists()


def _dvc_name(stage: str, body: dict) -> str:
    if "foreach" in body:
        return f"{stage}@${{item}}"
    if "matrix" in body:
        return stage + "@" + "-".join(f"${{item.{axis}}}" for axis in body["matrix"])
    return stage


def test_every_stage_declares_its_timing_record_as_an_uncached_output_never_a_metric():
    stages = yaml.safe_load(open("dvc.yaml"))["stages"]
    for name, st in stages.items():
        body = st.get("do", st)
        outs = {next(iter(o)) if isinstance(o, dict) else o: o for o in body.get("outs", [])}
        want = paths.timing_file(_dvc_name(name, st))
        assert want in outs, f"{name}: dvc.yaml must declare {want} in outs"
        assert outs[want] == {want: {"cache": False}}, f"{name}: {want} must be cache: false"
        declared_metrics = [next(iter(m)) if isinstance(m, dict) else m for m in body.get("metrics", [])]
        assert not any(re.match(r"^timing/", m) for m in declared_metrics)
