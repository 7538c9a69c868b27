"""Params fail closed: NaN, infinity and a list or mapping where a number or name belongs are a ParamError
naming the key, in the shared checkers, in load (every number of params) and in the validators that checked
numbers by hand; a stage that refuses a param prints that one message and exits non-zero, no traceback."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cxrbench.core import params as P
from cxrbench.core.params import ParamError

ROOT = Path(__file__).resolve().parents[2]
BAD = [math.nan, math.inf, -math.inf, [0.1], {"a": 1}, "0.1", True, None]


@pytest.mark.parametrize("bad", BAD)
def test_float_checks_reject_non_finite_and_wrong_types(bad):
    for check in (lambda v: P.check_float("a.b", v), lambda v: P.check_float("a.b", v, minimum=0),
                  lambda v: P.check_fraction("a.b", v), lambda v: P.check_fraction("a.b", v, open_high=False)):
        with pytest.raises(ParamError, match=r"`a\.b`"):
            check(bad)
    assert P.check_float("a.b", 3) == 3.0 and P.check_fraction("a.b", 0.5) == 0.5


@pytest.mark.parametrize("bad", [[1], {"a": 1}, ["x"]])
def test_name_checks_reject_lists_and_mappings(bad):
    with pytest.raises(ParamError, match=r"`a\.b`"):
        P.check_choice("a.b", bad, ["x", "y"])
    with pytest.raises(ParamError, match=r"`a\.b`"):
        P.check_subset("a.b", [bad], ["x", "y"])
    with pytest.raises(ParamError, match=r"`a\.b`"):
        P.check_names("a.b", ["x", bad])


@pytest.mark.parametrize("item,key", [
    ("aoppc.region.road_noise=.nan", "aoppc.region.road_noise"),
    ("aoppc.region.road_noise=.inf", "aoppc.region.road_noise"),
    ("unet.lr=-.inf", "unet.lr"),
    ("aoppc.reference={saliency: .nan}", "aoppc.reference.saliency"),
    ("preprocess.percentiles=[0.5, .inf]", r"preprocess.percentiles\[1\]"),
])
def test_load_refuses_a_non_finite_number_anywhere(item, key):
    with pytest.raises(ParamError, match=rf"`{key}`.*finite"):
        P.load(ROOT / "params.yaml", P.parse_overrides([item]))


def _params(**overrides):
    return P.load(ROOT / "params.yaml", overrides)


def test_validators_name_the_key_of_a_wrong_value():
    """Representative params of the validators that checked numbers or names by hand (NaN and infinity also
    reach them directly, e.g. from a test or a profile's dict, not only through load)."""
    from cxrbench.classify import models
    from cxrbench.data.labels import LabelTable
    from cxrbench.data.preprocess import Recipe
    from cxrbench.data.sources import ExtractLimits
    from cxrbench.explain import runner
    from cxrbench.explain.metrics import scoring
    from cxrbench.lungs import controls, unet
    from cxrbench.ops import ladder
    from cxrbench.studies import audit

    def refused(call, path, named, value):
        p = _params()
        node = p
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(leaf) if isinstance(node, list) else leaf] = value
        with pytest.raises(ParamError, match=named):
            call(p)

    unet_config = lambda p: unet.UNetConfig.from_params(p, 1)  # noqa: E731
    cases = [   # (validator, where the value goes, the key the message must name, wrong values)
        (scoring.validate, "aoppc.region.road_noise", r"`aoppc\.region\.road_noise`", [math.nan, math.inf, [0.01]]),
        (scoring.validate, "aoppc.region.steps", r"`aoppc\.region\.steps`", [{"a": 1}, [3], 2.5]),
        (scoring.validate, "aoppc.reference.saliency", r"`aoppc\.reference\.saliency`", [math.nan, [0.6]]),
        (unet_config, "unet.lr", r"`unet\.lr`", [math.nan, math.inf, [0.001], {"a": 1}]),
        (unet_config, "unet.augment.intensity_jitter", r"`unet\.augment\.intensity_jitter`", [math.nan, {"a": 1}]),
        (lambda p: controls.validate(p["audit"]), "audit.dilation", r"`audit\.dilation`", [math.nan, [0.03]]),
        (Recipe.from_params, "preprocess.clahe_clip_limit", r"`preprocess\.clahe_clip_limit`",
         [math.nan, math.inf, [2.0]]),
        (ExtractLimits.from_params, "download.max_extract_gb", r"`download\.max_extract_gb`",
         [math.inf, math.nan, [20]]),
        (LabelTable.from_params, "labels.names.0", r"`labels\.names`", [["covid19"], {"a": 1}]),
        (audit.validate, "audit.controls.0", r"`audit\.controls`", [["outside_only"], {"a": 1}]),
        (runner.validate, "explain.methods.0", r"`explain\.methods`", [["saliency"], {"a": 1}]),
        (ladder.validate, "ablation.rows.2.from", r"`ablation\.rows\[2\]\.from`", [["paper"], {"a": 1}]),
        (lambda p: models.check_backbone(p["train"]["backbones"][0], p["train"]["known_backbones"]),
         "train.backbones.0", r"`train\.backbones`", [["resnet18"]]),
    ]
    for call, path, named, values in cases:
        for value in values:
            refused(call, path, named, value)


def test_set_with_a_bad_item_is_a_param_error():
    with pytest.raises(ParamError, match="KEY=VALUE"):
        P.parse_overrides(["unet.lr"])
    with pytest.raises(ParamError, match=r"`unet\.lr`.*YAML"):
        P.parse_overrides(["unet.lr=[1,"])


def _stage(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", f"stages.{name}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("stage,item,key", [
    ("ensemble", "ensemble.vote_tie=maybe", "ensemble.vote_tie"),      # as dvc exp run -S would
    ("aoppc", "aoppc.region.road_noise=.nan", "aoppc.region.road_noise"),
    ("aoppc", "aoppc.region.road_noise=[0.01]", "aoppc.region.road_noise"),
])
def test_a_stage_refusing_a_param_exits_with_one_message(stage, item, key):
    r = _stage(stage, "--set", item)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"`{key}`" in lines[0], r.stderr


def test_run_stage_passes_other_errors_through():
    def main(argv):
        raise RuntimeError("a bug")
    with pytest.raises(RuntimeError):
        P.run_stage(main, [])


def test_params_yaml_reads_an_exponent_without_a_dot_as_a_float(tmp_path):
    """DVC writes a profile's 0.000001 back into params.yaml as ``1e-06``, which YAML 1.1 (PyYAML) reads as a
    string; the stages then refused train.schedule.min_lr. The loader reads it as YAML 1.2 does."""
    from cxrbench.core import params as P

    f = tmp_path / "params.yaml"
    f.write_text("train: {schedule: {name: cosine, min_lr: 1e-06}, lr: 1.0e-4, n: 12, tag: 1e, v: '1e-06'}\n")
    t = P.load(f)["train"]
    assert t["schedule"]["min_lr"] == 1e-06 and isinstance(t["schedule"]["min_lr"], float)
    assert t["lr"] == 1e-4 and t["n"] == 12 and t["tag"] == "1e" and t["v"] == "1e-06"   # quoted stays a string


def test_seed_runs_may_differ_in_the_gate_but_in_nothing_else_that_computes():
    """Runs of one profile at two commits whose gate checks differ are still seeds of one study; a changed
    training setting is not."""
    from cxrbench.core.params import seed_runs_problem
    a = {"train": {"seed": 42, "epochs": 4}, "gate": {"checks": [{"metric": "x"}]}, "explain": {"max_images": 30}}
    b = {"train": {"seed": 43, "epochs": 4}, "gate": {"checks": [{"metric": "y"}]}, "explain": {"max_images": 30}}
    assert seed_runs_problem([("a", a), ("b", b)]) is None
    c = {**b, "explain": {"max_images": 16}}
    assert "['explain']" in seed_runs_problem([("a", a), ("c", c)])
