"""The offline bundle (cxrbench/ops/bundle/): size limits, step planning, unpacking, collecting, the runner's
standard-library-only imports; no pipeline run."""

from __future__ import annotations

import ast
import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cxrbench.ops.bundle import host as B
from cxrbench.ops.bundle import pack as K
from cxrbench.data.images import load_grey, load_mask
from cxrbench.data.preprocess import Recipe, prepare, prepare_mask

MIB = B.MIB


def test_check_sizes_limits():
    B.check_sizes({"a": 10 * MIB, "b": 20 * MIB}, 64, "x")
    with pytest.raises(B.BundleError, match=r"over the 64 MiB limit.*a 60.0 MiB"):
        B.check_sizes({"a": 60 * MIB, "b": 5 * MIB}, 64, "x")
    with pytest.raises(B.BundleError, match="9 files, more than 8"):
        B.check_sizes({str(i): 1 for i in range(9)}, 64, "x", max_files=8)
    with pytest.raises(B.BundleError, match=r"\['big'\] over 16 MiB"):
        B.check_sizes({"big": 17 * MIB}, 64, "x", max_file_mib=16)


def test_plan_deadlines_end_inside_the_step():
    d = B.plan_deadlines(1000.0, 600)
    assert d["soft"] < d["hard"] < d["end"] == 1600.0
    assert d["end"] - d["hard"] == B.STEP_RESERVE_SECONDS
    assert d["hard"] - d["soft"] == B.INTERRUPT_GRACE_SECONDS
    with pytest.raises(B.BundleError, match="--step-seconds"):
        B.plan_deadlines(0.0, B.STEP_RESERVE_SECONDS + B.INTERRUPT_GRACE_SECONDS)


def test_stage_seconds_from_dvc_output():
    lines = [(0.0, "Running stage 'index':"), (1.0, "> python stages/index.py"), (5.0, "Running stage 'split':"),
             (7.0, "Stage 'x' didn't change, skipping"), (9.0, "Running stage 'index':")]
    assert B.stage_seconds(lines, 12.0) == {"index": 8.0, "split": 4.0}
    assert B.stage_seconds([], 3.0) == {}


def _tar(path: Path, members: dict[str, bytes], link: str | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return path


def test_safe_extract_refuses_escapes_and_links(tmp_path):
    B.safe_extract(_tar(tmp_path / "ok.tar", {"a/b.txt": b"x"}), tmp_path / "ok")
    assert (tmp_path / "ok/a/b.txt").read_bytes() == b"x"
    with pytest.raises(B.BundleError, match=r"'\.\./evil'"):
        B.safe_extract(_tar(tmp_path / "up.tar", {"../evil": b"x"}), tmp_path / "up")
    with pytest.raises(B.BundleError, match="lnk"):
        B.safe_extract(_tar(tmp_path / "ln.tar", {"a": b"x"}, link="lnk"), tmp_path / "ln")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "ln" / "a").exists()   # nothing written first


def _xray(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = 120 + 80 * np.sin(xx / 37.0) * np.cos(yy / 23.0) + rng.normal(0, 6, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_resize_like_preprocess_keeps_the_cache(tmp_path, fmt):
    """A pre-resized image gives the cache row of the original within the 8-bit rounding (PNG) or the
    re-encoding (JPEG); one already small enough travels byte for byte."""
    src = tmp_path / ("big.png" if fmt == "PNG" else "big.jpg")
    Image.fromarray(_xray(300, 220)).save(src, format=fmt, quality=95)
    data, resized = K.resize_like_preprocess(src, 128, 95)
    assert resized
    out = tmp_path / ("small" + src.suffix)
    out.write_bytes(data)
    with Image.open(out) as im:
        assert im.format == fmt and max(im.size) == 128
    r = Recipe(size=128, percentiles=(1.0, 95.0), channels=("raw",))
    diff = np.abs(prepare(load_grey(out), r).astype(int) - prepare(load_grey(src), r).astype(int))
    assert diff.max() <= (2 if fmt == "PNG" else 40) and diff.mean() < (0.5 if fmt == "PNG" else 3)
    same, resized = K.resize_like_preprocess(out, 128, 95)
    assert not resized and same == data


def test_resized_mask_is_exact(tmp_path):
    mask = np.zeros((300, 220), np.uint8)
    mask[40:260, 30:100] = 255
    mask[60:250, 120:200] = 255
    src = tmp_path / "m.png"
    Image.fromarray(mask).save(src)
    out = tmp_path / "m_small.png"
    out.write_bytes(K.resize_mask_like_preprocess(src, (128, 94), 128))
    np.testing.assert_array_equal(prepare_mask(load_mask(out), 128), prepare_mask(load_mask(src), 128))
    with pytest.raises(B.BundleError, match="its image"):
        K.resize_mask_like_preprocess(src, (128, 128), 128)


def test_wheel_plan_leaves_the_torch_stack_and_unused_packages_to_the_host():
    plan = K.wheel_plan()
    for name in ("dvc", "dvclive", "captum", "monai", "imagehash", "dulwich", "omegaconf"):
        assert name in plan
    for name in ("torch", "numpy", "pandas", "timm", "scipy", "pygit2", "celery", "pywavelets"):
        assert name not in plan


def test_host_params_points_the_sources_at_the_study_mirror(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "params.yaml").write_text(Path("params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    (tree / "cxrbench").symlink_to(Path("cxrbench").resolve())
    B.host_params(tree, {"sources.kermany.mirror": "@mirror/kermany", "train.epochs": 3}, tmp_path / "work")
    p = yaml.safe_load((tree / "params.yaml").read_text(encoding="utf-8"))
    assert p["sources"]["kermany"]["mirror"] == str(tmp_path / "work/.mirror/kermany")
    assert p["train"]["epochs"] == 3 and p["train"]["batch_size"] == 16          # the rest untouched


def _work(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    for rel, data in {"metrics/data.json": b"{}", "report/README.md": b"# r", "plots/a.png": b"png",
                      "dvc.lock": b"schema: '2.0'", "params.yaml": b"a: 1",
                      "models/classifier/resnet18/fold0/best.pt": b"w" * 1000, "data/cache/images.npy": b"c" * 1000,
                      "data/lungs/masks.npy": b"l"}.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_bytes(data)
    step = {"step": 1, "started": time.time(), "seconds": 10.0, "outcome": "deadline", "stages": {"index": 4.0}}
    step2 = dict(step, step=2, outcome="complete", stages={"index": 1.0, "train@resnet18-0": 5.0})
    (work / B.RUN_STATE).write_text(json.dumps({"bundle": "x", "steps": [step, step2]}), encoding="utf-8")
    (work / B.RUN_LOG).write_text("log\n", encoding="utf-8")
    return work


def _names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def test_collect_at_most_8_files_and_never_models(tmp_path):
    work = _work(tmp_path)
    written = B.collect(work, tmp_path / "out")
    assert len(written) <= B.COLLECT_MAX_FILES and set(written) == {p.name for p in (tmp_path / "out").iterdir()}
    names = [n for f in B.RESULT_PARTS for n in _names(tmp_path / "out" / f)]
    assert "metrics/data.json" in names and "report/README.md" in names and "plots/a.png" in names
    assert not any(n.startswith(("models", "data")) for n in names)
    t = json.loads((tmp_path / "out/timings.json").read_text())
    assert t["stages"] == {"index": 5.0, "train@resnet18-0": 5.0} and t["total_seconds"] == 20.0 and t["complete"]
    with pytest.raises(B.BundleError, match="no bundle run"):
        B.collect(tmp_path / "empty", tmp_path / "out2")


def test_state_archive_leaves_models_and_cache_out(tmp_path):
    work = _work(tmp_path)
    info = B.state_archive(work, tmp_path / "state.tar.gz")
    names = _names(tmp_path / "state.tar.gz")
    assert "data/lungs/masks.npy" in names and "dvc.lock" in names and B.RUN_STATE in names
    assert not any(n.startswith(("models/classifier", "data/cache")) for n in names)
    assert info["left_out"] == []
    (work / "report/noise.bin").write_bytes(np.random.default_rng(0).bytes(4000))
    info = B.state_archive(work, tmp_path / "small.tar.gz", max_mib=1500 / MIB)   # 3000 bytes before compression
    assert info["left_out"] == ["report/noise.bin"] and len(_names(tmp_path / "small.tar.gz")) == info["files"]


def test_read_manifest_checks_sizes_and_hashes(tmp_path):
    (tmp_path / "wheels.tar").write_bytes(b"abc")
    manifest = {"files": {"wheels.tar": {"bytes": 3, "sha256": B.sha256(tmp_path / "wheels.tar")}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    B.verify(tmp_path, B.read_manifest(tmp_path))
    (tmp_path / "wheels.tar").write_bytes(b"abd")
    with pytest.raises(B.BundleError, match="SHA-256"):
        B.verify(tmp_path, B.read_manifest(tmp_path))
    (tmp_path / "wheels.tar").write_bytes(b"ab")
    with pytest.raises(B.BundleError, match="another size"):
        B.read_manifest(tmp_path)
    with pytest.raises(B.BundleError, match="manifest.json not found"):
        B.read_manifest(tmp_path / "nothing")


def _tiny_bundle(tmp_path: Path, monkeypatch) -> Path:
    """A bundle of a two-file source tree; the host's pip/import check, params and DVC are stubbed."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    _tar(bundle / "source.tar.gz", {".dvc/config": b"", "params.yaml": b"a: 1\n"})
    _tar(bundle / "mirror.tar", {})
    _tar(bundle / "wheels.tar", {})
    files = {f.name: {"bytes": f.stat().st_size, "sha256": B.sha256(f)} for f in bundle.iterdir()}
    (bundle / "manifest.json").write_text(json.dumps({"files": files, "wheels": [], "overrides": {}}))
    monkeypatch.setattr(B.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, "2.x", ""))
    monkeypatch.setattr(B, "host_params", lambda *a, **k: None)
    monkeypatch.setattr(B, "run_step", lambda *a, **k: ("complete", {"s": 1.0}))
    return bundle


def _run(bundle: Path, work: Path) -> int:
    return B.main(["run", "--bundle", str(bundle), "--work", str(work)])


def test_run_never_replaces_a_work_folder_it_did_not_create(tmp_path, monkeypatch, capsys):
    bundle = _tiny_bundle(tmp_path, monkeypatch)
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "sub" / "thesis.tex").write_text("years of work")
    assert _run(bundle, mine) == 2
    assert f"{mine} is a folder that bundle.py did not create" in capsys.readouterr().err
    assert [p.name for p in mine.rglob("*")] == ["sub", "thesis.tex"]
    assert (mine / "sub" / "thesis.tex").read_text() == "years of work"
    # nor the folder beside it that unpacking uses
    (tmp_path / "new.unpacking").mkdir()
    (tmp_path / "new.unpacking" / "keep.txt").write_text("mine")
    assert _run(bundle, tmp_path / "new") == 2 and not (tmp_path / "new").exists()
    assert (tmp_path / "new.unpacking" / "keep.txt").read_text() == "mine"
    # a file: a message, not a traceback
    (tmp_path / "notes.txt").write_text("mine")
    assert _run(bundle, tmp_path / "notes.txt") == 2
    assert "notes.txt exists and is not a folder" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_run_reuses_or_replaces_the_work_folder_it_created(tmp_path, monkeypatch):
    bundle = _tiny_bundle(tmp_path, monkeypatch)
    work = tmp_path / "work"
    assert _run(bundle, work) == 0 and (work / B.WORK_MARKER).is_file() and (work / "params.yaml").is_file()
    assert _run(bundle, work) == 0                   # the next step resumes in it
    assert len(json.loads((work / B.RUN_STATE).read_text())["steps"]) == 2
    (work / B.RUN_STATE).unlink()                    # an unpack that stopped half way: unpacked again
    (work / "stale.txt").write_text("x")
    (tmp_path / "work.unpacking").mkdir()            # a stopped unpack's own folder (its marker)
    (tmp_path / "work.unpacking" / B.WORK_MARKER).write_text("")
    assert _run(bundle, work) == 0 and not (work / "stale.txt").exists()
    assert not (tmp_path / "work.unpacking").exists()
    empty = tmp_path / "empty"                       # an empty folder holds nothing to lose: taken
    empty.mkdir()
    assert _run(bundle, empty) == 0 and (empty / B.WORK_MARKER).is_file()


def test_host_missing_installs_only_what_the_host_lacks():
    wheels = ["dvc_data-3.18.3-py3-none-any.whl", "no_such_dist_cxrbench-1.0-py3-none-any.whl"]
    assert B.host_missing(wheels) == ["no_such_dist_cxrbench-1.0-py3-none-any.whl"]


def _module_level_imports(tree: ast.Module) -> list[str]:
    """Top names of the imports that run when the module loads (not those inside functions or classes)."""
    names, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            names += [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append("." if node.level else node.module.split(".")[0])
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            todo += list(ast.iter_child_nodes(node))
    return names


def test_host_imports_the_standard_library_only():
    """The runner travels alone: what it imports at load time is the standard library, and the package
    nowhere but in write_params (which runs in a Python whose path holds the unpacked tree)."""
    tree = ast.parse(Path(B.__file__).read_text(encoding="utf-8"))
    imports = _module_level_imports(tree)
    assert imports and not [n for n in imports if n not in sys.stdlib_module_names and n != "__future__"]
    users = {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
             and any(isinstance(n, ast.ImportFrom) and (n.module or "").startswith("cxrbench") for n in ast.walk(f))}
    assert users == {"write_params"}


def test_copied_runner_runs_alone_with_the_standard_library(tmp_path):
    """The bundle's bundle.py is host.py, and runs (help, collect) alone in an isolated Python without
    site-packages (-I -S): no package, no third-party module."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    runner = K.copy_runner(bundle)
    assert runner.name == "bundle.py" == K.RUNNER and runner.read_bytes() == Path(B.__file__).read_bytes()
    alone = [sys.executable, "-I", "-S", str(runner)]
    for args in ([], ["run"], ["collect"]):
        done = subprocess.run(alone + args + ["--help"], cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert "--step-seconds" in subprocess.run(alone + ["run", "--help"], capture_output=True, text=True).stdout
    work = _work(tmp_path)
    done = subprocess.run(alone + ["collect", "--work", str(work), "--out", str(tmp_path / "out")], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (tmp_path / "out").iterdir()} == {*B.RESULT_PARTS, "timings.json", B.RUN_LOG}


@pytest.mark.skipif(shutil.which("git") is None or not Path(".git").exists(), reason="needs the git checkout")
def test_source_archive_holds_the_package_tree(tmp_path):
    """source.tar.gz holds every tracked file, subfolders included: the package's subpackages, the runner,
    the stages and what DVC and the install read."""
    info = K.source_archive(tmp_path / "source.tar.gz")
    names = set(_names(tmp_path / "source.tar.gz"))
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, check=True).stdout.split()
    assert info["files"] == len(names) == len([n for n in tracked if Path(n).is_file()])
    for name in ("pyproject.toml", "dvc.yaml", "params.yaml", "profiles/gpu.yaml", "stages/train.py",
                 "cxrbench/__init__.py", "cxrbench/core/paths.py", "cxrbench/explain/metrics/__init__.py",
                 "cxrbench/ops/bundle/host.py", "cxrbench/ops/bundle/pack.py"):
        assert name in names


def test_budget_measures_runs_the_data_stages_plans_then_runs_the_rest_once(tmp_path, monkeypatch):
    """``run --budget``: measure, the data stages, the plan (with the seconds left before the hard deadline),
    then the rest, all before the budget's deadline; a second run in the same WORK keeps the plan."""
    bundle = _tiny_bundle(tmp_path, monkeypatch)
    calls, repro = [], []

    def call(cmd, cwd=None, env=None, timeout=None):
        action = cmd[cmd.index("cxrbench.ops.bundle.sizing") + 1]
        calls.append((action, cmd, timeout))
        if action == "plan":
            (Path(cwd) / B.SIZING).write_text(json.dumps({"chosen": {}, "seconds_left": float(
                cmd[cmd.index("--seconds-left") + 1])}))
        return 0

    def step(work, deadlines, extra):
        repro.append((list(extra), deadlines))
        return "complete", {f"stage{len(repro)}": 1.0}

    monkeypatch.setattr(B.subprocess, "call", call)
    monkeypatch.setattr(B, "run_step", step)
    work = tmp_path / "work"
    t0 = time.time()
    assert B.main(["run", "--bundle", str(bundle), "--work", str(work), "--budget", "300"]) == 0
    assert [c[0] for c in calls] == ["measure", "plan"] and "--apply" in calls[1][1]
    assert 0 < calls[0][2] <= 300 - B.BUDGET_RESERVE_SECONDS
    assert [r[0] for r in repro] == [list(B.DATA_STAGES), []]
    hard = repro[0][1]["hard"]
    assert t0 + 300 - B.BUDGET_RESERVE_SECONDS <= hard + 1 and hard <= time.time() + 300 - B.BUDGET_RESERVE_SECONDS
    sizing = json.loads((work / B.SIZING).read_text())
    assert 0 < sizing["seconds_left"] <= 300 - B.BUDGET_RESERVE_SECONDS and "measure_s" in sizing
    state = json.loads((work / B.RUN_STATE).read_text())
    assert state["steps"][0]["budget"] == 300 and set(state["steps"][0]["stages"]) == {"stage1", "stage2"}
    # the next call resumes with the same sizes: no measuring, no new plan
    assert B.main(["run", "--bundle", str(bundle), "--work", str(work), "--budget", "300"]) == 0
    assert len(calls) == 2 and repro[-1][0] == []
    out = tmp_path / "out"
    (work / B.BENCH).write_text("{}")
    assert {B.BENCH, B.SIZING, "timings.json"} <= set(B.collect(work, out))


def test_budget_run_goes_on_at_the_profiles_sizes_when_measuring_fails(tmp_path, monkeypatch, capsys):
    bundle = _tiny_bundle(tmp_path, monkeypatch)
    monkeypatch.setattr(B.subprocess, "call", lambda cmd, **k: 1)
    repro = []
    monkeypatch.setattr(B, "run_step", lambda work, d, extra: repro.append(list(extra)) or ("complete", {}))
    work = tmp_path / "work"
    assert B.main(["run", "--bundle", str(bundle), "--work", str(work), "--budget", "300"]) == 0
    assert "measuring failed" in json.loads((work / B.SIZING).read_text())["error"]
    assert repro == [list(B.DATA_STAGES), []] and "measuring failed" in capsys.readouterr().out


def test_host_has_leaves_the_hosts_own_wheels_out(tmp_path):
    (tmp_path / "host.txt").write_text("# the host's image\nAiohttp\nrequests  # comment\n\n")
    assert K.read_host_has(f"@{tmp_path / 'host.txt'}") == {"aiohttp", "requests"}
    assert K.read_host_has("Rich,PyYAML") == {"rich", "pyyaml"} and K.read_host_has(None) == set()
    with pytest.raises(B.BundleError, match="not found"):
        K.read_host_has(f"@{tmp_path / 'none.txt'}")
    full = K.wheel_plan()
    assert {"grad-cam", "zennit", "dvc", "captum"} <= set(full)       # the attribution libraries travel too
    dropped = {n for n in full if n not in {"dvc", "captum", "grad-cam", "zennit"}}
    assert set(K.wheel_plan(host_has=dropped)) == set(full) - dropped


def test_report_page_of_a_collected_run(tmp_path):
    from cxrbench.ops.bundle import summary

    res = tmp_path / "res"
    res.mkdir()
    bench = {"device": "NVIDIA X", "torch": "2.11.0", "cuda": "13.0", "runtime": {"cpu": "c"}, "size": 512, "batch": 32,
             "amp": "torch.bfloat16", "stage_start_s": 6.0, "seconds": 50.0, "skipped": ["lrp on resnet34: time"],
             "throughput": [{"backbone": "resnet18", "train_images_per_s": 2000.0, "synthetic_train_images_per_s": 2100.0,
                             "loader_vs_synthetic": 0.95, "infer_images_per_s": 9000.0, "first_step_s": 3.0,
                             "params_M": 11.2}],
             "attribution": [{"backbone": "resnet18", "method": "saliency", "images": 4, "max_batch": 64,
                              "seconds_per_image": 0.01, "peak_memory_GiB": 1.5}]}
    sizing = {"fits": True, "seconds_left": 300.0, "estimate_s": 200.0, "safety": 1.25, "measure_s": 50.0,
              "chosen": {"folds": 1, "epochs": 4, "controls": 2, "methods": ["saliency"], "images": 8},
              "of": {"folds": 2, "epochs": 20, "controls": 5, "methods": ["saliency", "gradcam"], "images": 16},
              "cohort": {"train": [730]}, "estimate_per_stage_s": {"train": 100.0, "aoppc": 50.0}}
    timings = {"profile": "gpu", "source": {"commit": "abc", "dirty": False}, "complete": False, "total_seconds": 400.0,
               "steps": [{"outcome": "deadline"}], "stages": {"index": 20.0, "train@resnet18-0": 60.0,
                                                              "train@resnet18-1": 30.0, "aoppc": 10.0}}
    for name, obj in (("bench.json", bench), ("sizing.json", sizing), ("timings.json", timings)):
        (res / name).write_text(json.dumps(obj))
    with tarfile.open(res / "metrics.tar.gz", "w:gz") as tar:
        (tmp_path / "table2.md").write_text("| table |")
        tar.add(tmp_path / "table2.md", arcname="metrics/table2.md")
    text = summary.report(res, tmp_path / "page").read_text()
    assert "`gpu` profile" in text and "commit abc" in text and "NVIDIA X" in text and "| resnet18 | 2000 | 2100 | 0.95 |" in text
    assert "| train | 100 | 90 |" in text and "| data (before the plan; measuring took 50 s) | - | 20 |" in text
    assert "stopped: deadline" in text and "[table2.md](table2.md)" in text
    assert (tmp_path / "page" / "table2.md").read_text() == "| table |"
    assert summary.group("audit_train@resnet18-0-outside_only") == "audit_train" and summary.group("report") == "other"
