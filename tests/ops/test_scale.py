"""``cxrbench scale`` without Ray: the plan read from DVC's graph, the settings' errors, one task run in its
worktree on the shared cache, and the adoption of a persistent-output stage (which DVC's run-cache cannot
carry) checked by ``dvc status``."""

from __future__ import annotations

import os
import shutil

import pytest

from cxrbench.core.params import ParamError, load
from cxrbench.ops.scale import plan as planning
from cxrbench.ops.scale import toy, worker
from cxrbench.ops.scale.cli import apply_overrides, compare_trees, grid

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


def _settings(path):
    return planning.settings(load(path / "params.yaml"))


def test_the_plan_splits_shared_stages_cells_and_aggregates(tmp_path):
    repo = toy.make(tmp_path / "toy")
    plan = planning.make_plan(repo, _settings(repo))
    assert plan.upstream == ["prep"]
    assert list(plan.tasks) == ["train@a-0", "evaluate@a-0", "train@a-1", "evaluate@a-1", "train@b-0",
                                "evaluate@b-0", "train@b-1", "evaluate@b-1"]
    assert plan.aggregates == ["aggregate"]
    train, ev = plan.tasks["train@a-1"], plan.tasks["evaluate@a-1"]
    assert (train.needs, train.upstream, train.persist) == ([], ["prep"], True)
    assert (ev.needs, ev.upstream, ev.persist) == (["train@a-1"], ["prep"], False)
    assert train.uncached == ["dvclive/train/a-f1", "metrics/train/a-f1.json"]
    assert (train.cpus, train.gpus) == (1, 0)


def test_the_real_pipeline_fans_out_every_matrix_cell():
    root = planning.Path(__file__).resolve().parents[2]
    params = load(root / "params.yaml")
    plan = planning.make_plan(root, planning.settings(params))
    n_train = len(params["train"]["backbones"]) * len(params["train"]["folds"])
    assert sum(planning.base_name(t) == "train" for t in plan.tasks) == n_train
    assert {"download@covid_chestxray", "index", "split", "preprocess", "segment"} <= set(plan.upstream)
    assert {"ensemble", "audit", "aoppc", "report"} <= set(plan.aggregates)
    for name, task in plan.tasks.items():
        if planning.base_name(name) in ("evaluate", "attribute"):
            assert task.needs == [name.replace(planning.base_name(name), "train", 1)]
        if planning.base_name(name) == "audit_evaluate":
            assert task.needs == [name.replace("audit_evaluate", "audit_train", 1)]
        # every cell writes its timing record as a plain cache: false output, for which DVC saves no run-cache
        # entry: each is adopted by its dvc.lock entry (a sample run through scale reran all 18 evaluate,
        # audit_evaluate and attribute cells when they were left to the run-cache)
        assert task.persist, name


@pytest.mark.parametrize("key,value,match", [
    ("stages", [], "scale.stages"),
    ("cpus", {"train": 2}, "scale.cpus.*default"),
    ("cpus", {"default": 0}, "scale.cpus.default"),
    ("threads", 0, "scale.threads"),
])
def test_bad_settings_name_their_key(key, value, match):
    params = {"scale": {"stages": ["train"], "cpus": {"default": 1}, "gpus": {"default": 0}, "threads": 1,
                        "retries": 1}}
    params["scale"][key] = value
    with pytest.raises(ParamError, match=match):
        planning.settings(params)


def test_a_stage_name_not_in_dvc_yaml_is_refused(tmp_path):
    repo = toy.make(tmp_path / "toy")
    conf = _settings(repo)
    conf = planning.Settings(stages=("train", "evalute"), cpus=conf.cpus, gpus=conf.gpus, threads=1, retries=0)
    with pytest.raises(ParamError, match=r"\['evalute'\] are not stages"):
        planning.make_plan(repo, conf)
    conf = planning.Settings(stages=("train",), cpus={"default": 1}, gpus={"default": 0, "trian": 1}, threads=1,
                             retries=0)
    with pytest.raises(ParamError, match=r"scale.gpus.*\['trian'\], which are not stages"):
        planning.make_plan(repo, conf)


def _spec(repo, plan, stage, tmp_path):
    t = plan.tasks[stage]
    return {"root": str(repo), "commit": worker.git(["rev-parse", "HEAD"], repo).strip(), "stage": stage,
            "workdir": str(tmp_path / "work"), "cache_dir": worker.dvc(["cache", "dir"], repo).strip(),
            "params": (repo / "params.yaml").read_text(), "lock": (repo / "dvc.lock").read_text(),
            "upstream": t.upstream, "uncached": t.uncached, "persist": t.persist, "threads": 1, "keep": False}


def test_tasks_in_worktrees_give_the_serial_bytes_and_are_adopted(tmp_path):
    repo, serial = toy.make(tmp_path / "toy"), toy.make(tmp_path / "serial")
    worker.dvc(["repro", "-q"], serial)
    plan = planning.make_plan(repo, _settings(repo))
    worker.dvc(["repro", "-q", "prep"], repo)
    trained = worker.run_task(_spec(repo, plan, "train@b-1", tmp_path))
    assert trained.persist and set(trained.files) == {"dvclive/train/b-f1/metrics.tsv", "metrics/train/b-f1.json"}
    assert not (tmp_path / "work" / "worktrees" / "train@b-1").exists()       # removed after success
    evaluated = worker.run_task(_spec(repo, plan, "evaluate@b-1", tmp_path), trained)
    assert {"run", "worktree", "checkout"} <= set(evaluated.times)
    worker.adopt(repo, [trained])                                  # merged through dvc.lock, checked by status
    assert compare_trees(repo, serial, ["models/b/fold1", "dvclive/train/b-f1", "metrics/train/b-f1.json"]) == []
    out = worker.dvc(["repro", "--single-item", "evaluate@b-1"], repo)
    assert "Stage 'evaluate@b-1' is cached - skipping run" in out            # DVC's run-cache, not a copy
    assert compare_trees(repo, serial, ["preds/b-f1.csv", "metrics/eval/b-f1.json"]) == []


def test_a_result_from_other_params_is_refused(tmp_path):
    repo = toy.make(tmp_path / "toy")
    plan = planning.make_plan(repo, _settings(repo))
    worker.dvc(["repro", "-q", "prep"], repo)
    trained = worker.run_task(_spec(repo, plan, "train@a-0", tmp_path))
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text().replace("epochs: 2", "epochs: 3"))
    with pytest.raises(RuntimeError, match=r"\['train@a-0'\] are not up to date.*other code, data or params"):
        worker.adopt(repo, [trained])


def test_a_failed_task_names_its_stage_and_log_and_keeps_its_worktree(tmp_path, monkeypatch):
    repo = toy.make(tmp_path / "toy")
    plan = planning.make_plan(repo, _settings(repo))
    worker.dvc(["repro", "-q", "prep"], repo)
    flag = tmp_path / "fail"
    flag.touch()
    monkeypatch.setenv("TOY_FAIL", f"train@a-0:{flag}")
    with pytest.raises(worker.StageFailed, match=r"(?s)stage train@a-0 failed.*toy failure.*log: \S*train@a-0\.log") as err:
        worker.run_task(_spec(repo, plan, "train@a-0", tmp_path))
    assert "toy failure of train@a-0" in (tmp_path / "work" / "logs" / "train@a-0.log").read_text()
    assert err.value.__reduce__()[1][0] == "train@a-0"             # survives pickling through Ray
    wt = tmp_path / "work" / "worktrees" / "train@a-0"
    assert wt.is_dir()
    (wt / "models" / "a" / "fold0").mkdir(parents=True)
    (wt / "models" / "a" / "fold0" / "last.txt").write_text("1")    # one epoch done before the failure
    flag.unlink()
    count = tmp_path / "count"
    monkeypatch.setenv("TOY_COUNT", str(count))
    result = worker.run_task(_spec(repo, plan, "train@a-0", tmp_path))     # the rerun resumes in the worktree
    assert result.entry["outs"] and count.read_text() == "train@a-0\n"


def test_dirty_code_is_refused_but_params_and_outputs_are_not(tmp_path):
    from cxrbench.ops.scale.coordinator import check_clean

    repo = toy.make(tmp_path / "toy")
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text() + "\n")
    assert len(check_clean(repo, [])) == 40
    (repo / "toy.py").write_text((repo / "toy.py").read_text() + "\n# edited\n")
    with pytest.raises(RuntimeError, match=r"toy\.py.*commit them first"):
        check_clean(repo, [])


def test_overrides_are_written_only_over_a_committed_params_file(tmp_path):
    repo = toy.make(tmp_path / "toy")
    apply_overrides(repo, {"epochs": 5})
    assert load(repo / "params.yaml")["epochs"] == 5
    with pytest.raises(ParamError, match="uncommitted changes"):
        apply_overrides(repo, {"epochs": 6})
    with pytest.raises(ParamError, match="epoch"):
        worker.git(["checkout", "params.yaml"], repo)
        apply_overrides(repo, {"epoch": 6})


def test_a_sweep_is_the_grid_of_the_values_given_per_key():
    exps = grid(["train.seed=1", "train.seed=2", "train.lr=0.01"])
    assert exps == [("seed1-lr0.01", ["train.seed=1", "train.lr=0.01"]),
                    ("seed2-lr0.01", ["train.seed=2", "train.lr=0.01"])]
    with pytest.raises(ParamError):
        grid(["train.seed"])


def test_only_the_scale_package_imports_ray():
    root = planning.Path(__file__).resolve().parents[2]
    users = [p.relative_to(root).as_posix() for p in (root / "cxrbench").rglob("*.py")
             if "import ray" in p.read_text() or "from ray" in p.read_text()]
    assert users and all(u.startswith("cxrbench/ops/scale/") for u in users), users
    assert os.path.exists(root / "cxrbench" / "ops" / "scale" / "coordinator.py")


def test_the_plan_of_a_profile_follows_its_matrix(monkeypatch, capsys):
    from cxrbench.ops.scale.cli import main

    root = planning.Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    before = (root / "params.yaml").read_bytes()
    assert main(["plan", "--profile", "sample"]) == 0
    text = capsys.readouterr().out
    trains = [line.split()[0] for line in text.splitlines() if line.strip().startswith("train@")]
    assert sorted(trains) == ["train@efficientnet_lite0-0", "train@efficientnet_lite0-1", "train@resnet18-0",
                              "train@resnet18-1"]                  # profiles/sample.yaml: 2 backbones x 2 folds
    assert "audit_train@resnet18-0-" in text and "evaluate@resnet18-1" in text
    assert (root / "params.yaml").read_bytes() == before
