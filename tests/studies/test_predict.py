"""cxrbench predict: the training input exactly, checked recipes, bad images listed, masked models refused.

A tiny timm model (test_resnet, 32 px) trained for one epoch on the embedded sample's 64 px cache stands in
for a run's classifier; the run folder holds what predict reads: params.yaml, data/cache/meta.json,
models/classifier/<backbone>/fold<k>/best.pt and metrics/eval/<backbone>-f<k>.json.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cxrbench.classify import evaluation as E
from cxrbench.classify import models as M
from cxrbench.studies.predict import apply as PA
from cxrbench.studies.predict import cli as PC
from cxrbench.studies.predict import inputs as PI
from cxrbench.studies.predict import load as PL
from cxrbench.studies.predict import overlays as PO
from cxrbench.data import splitting
from cxrbench.classify import identity
from cxrbench.classify import training as T
from cxrbench.data.cache import Cache
from cxrbench.core.params import ParamError

TINY = "test_resnet"
CPU = torch.device("cpu")


def _write_eval(run, name, labels, cuts, epoch, cut="ge"):
    """metrics/eval/NAME.json as the evaluate stage writes it (the keys predict reads)."""
    path = run / "metrics" / "eval" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"checkpoint": "best", "checkpoint_epoch": epoch, "cut": cut,
                                "thresholds": {n: {"cut": float(c), "how": "val_f1"} for n, c in zip(labels, cuts)}}))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sample_data, params):
    """A run folder with test_resnet folds 0 and 1 (one epoch each) on the sample's 64 px cache."""
    from cxrbench.data.indexing import label_matrix

    cache = Cache(sample_data / "cache", sample_data / "index.csv")
    labels = list(params["labels"]["names"])
    y = label_matrix(cache.index, labels)
    run = tmp_path_factory.mktemp("run")
    p = copy.deepcopy(params)
    p["preprocess"].update(size=int(cache.meta["size"]), channels=list(cache.meta["channels"]),
                           percentiles=list(cache.meta["percentiles"]))
    p["train"].update(backbones=[TINY], folds=[0, 1], known_backbones=p["train"]["known_backbones"] + [TINY],
                      pretrained="none", input_size={"default": 32}, epochs=1, batch_size=16, lr=3e-3, seed=0,
                      augment={"enabled": False})
    p["evaluate"]["batch_size"] = 16
    p["explain"]["target_layers"]["test_resnet"] = "layer4"             # Grad-CAM layer of the tiny model
    (run / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    (run / "data" / "cache").mkdir(parents=True)
    shutil.copy(sample_data / "cache" / "meta.json", run / "data" / "cache" / "meta.json")
    rows = np.arange(len(cache.index))
    cuts = {}
    for fold in (0, 1):
        cfg = identity.config(p, TINY, fold, cache.meta)      # the run's params, as the train stage does
        out = run / "models" / "classifier" / TINY / f"fold{fold}"
        T.train(cfg, cache.images, y, rows[fold::2], rows[1 - fold::2], out, progress=False, device="cpu",
                cache_id=identity.cache_digest(cache.meta))
        model, meta = M.load_classifier(out / "best.pt")
        prob = T.predict(model, cache.images, rows[1 - fold::2], CPU)
        cuts[fold], _ = E.select_thresholds(y[rows[1 - fold::2]], prob, "val_f1", 0.5, 1)
        _write_eval(run, f"{TINY}-f{fold}", labels, cuts[fold], meta["epoch"])
    return {"run": run, "cache": cache, "labels": labels, "params": p, "cuts": cuts}


def _files(raw, cache):
    return [raw / p for p in cache.index["path"]]


def _edit_params(run, **preprocess):
    p = yaml.safe_load((run / "params.yaml").read_text())
    p["preprocess"].update(preprocess)
    (run / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def test_predict_reproduces_the_evaluate_probabilities_exactly(trained, raw, sample_data, tmp_path):
    """The original files, decoded and preprocessed by predict, give the cache's bytes and so training.predict's
    probabilities on the cache rows (what the evaluate stage writes) bit for bit."""
    cache, run = trained["cache"], PL.load_run(trained["run"], f"{TINY}:0", device="cpu")
    files = _files(raw, cache)
    for i, (path, arr, status) in enumerate(PI.prepare_files(files[:12], run.recipe)):
        assert status == PI.OK and path == str(files[i])
        np.testing.assert_array_equal(arr, cache.images[i])              # the cache's bytes
    frame = PA.predict_files(run, files, progress=False)
    expected = T.predict(run.members[0].model, cache.images, np.arange(len(files)), CPU, run.batch_size)
    probs = frame[E.prob_columns(trained["labels"])].to_numpy(np.float32)
    np.testing.assert_array_equal(probs, expected)
    assert (frame["status"] == "ok").all() and (frame["models"] == f"{TINY}-f0").all()
    # the evaluate stage's call: the fold's val part, rows of the whole cache, evaluate.batch_size
    val = splitting.fold_parts(pd.read_csv(sample_data / "splits.csv", keep_default_na=False), 0)["val"]["path"]
    frame_val = PA.predict_files(run, [raw / v for v in val], progress=False)
    np.testing.assert_array_equal(frame_val[E.prob_columns(trained["labels"])].to_numpy(np.float32),
                                  T.predict(run.members[0].model, cache.images, cache.rows(val), CPU, run.batch_size))
    # pred_: the model's validation cuts (evaluate.cut ge)
    np.testing.assert_array_equal(frame[[f"pred_{n}" for n in trained["labels"]]].to_numpy(int),
                                  (expected >= trained["cuts"][0]).astype(int))
    # the CSV round-trips the float32 probabilities exactly: compared with the same 20 files predicted in
    # process (batches of 20 rows; with one torch thread a batch of another size may differ by 1 ulp)
    out = tmp_path / "p.csv"
    assert PC.main([str(f) for f in files[:20]] + ["--run", str(trained["run"]), "--models", f"{TINY}:0",
                                                  "--out", str(out), "--device", "cpu"]) == 0
    back = pd.read_csv(out)
    first20 = PA.predict_files(run, files[:20], progress=False)[E.prob_columns(trained["labels"])]
    np.testing.assert_array_equal(back[E.prob_columns(trained["labels"])].to_numpy(np.float64).astype(np.float32),
                                  first20.to_numpy(np.float32))
    np.testing.assert_allclose(first20.to_numpy(np.float32), expected[:20], rtol=0, atol=1e-6)
    assert list(back.columns) == (["path", "status", "decision", "training_copy"] + E.prob_columns(trained["labels"])
                                  + [f"pred_{n}" for n in trained["labels"]] + ["models"])


def test_several_models_average_probabilities_and_vote(trained, raw, sample_data):
    cache = trained["cache"]
    files = _files(raw, cache)[:24]
    run = PL.load_run(trained["run"], TINY, device="cpu")                # the backbone's folds: 0 and 1
    assert [m.name for m in run.members] == [f"{TINY}-f0", f"{TINY}-f1"]
    assert PL.parse_models("ensemble:1", [TINY], [0, 1]) == [(TINY, 1)]
    frame = PA.predict_files(run, files, progress=False)
    p = [T.predict(m.model, cache.images, np.arange(24), CPU, run.batch_size) for m in run.members]
    np.testing.assert_allclose(frame[E.prob_columns(trained["labels"])].to_numpy(float), (p[0] + p[1]) / 2,
                               rtol=0, atol=1e-7)
    votes = [(p[k] >= trained["cuts"][k]).astype(int) for k in (0, 1)]
    tie = run.vote_tie                                                   # 2 voters: unanimity or any-of
    want = (votes[0] & votes[1]) if tie == "negative" else (votes[0] | votes[1])
    np.testing.assert_array_equal(frame[[f"pred_{n}" for n in trained["labels"]]].to_numpy(int), want)
    assert (frame["models"] == f"{TINY}-f0;{TINY}-f1").all()


def test_a_recipe_mismatch_is_an_error_naming_both_files(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    # the model was trained on a 64 px cache; the run's cache recipe says 96 px
    meta = json.loads((run / "data/cache/meta.json").read_text())
    recipe = {**meta["recipe"], "size": 96} if "recipe" in meta else None    # the whole recipe, when recorded
    (run / "data/cache/meta.json").write_text(json.dumps({**meta, "size": 96, **({"recipe": recipe} if recipe else {})}))
    _edit_params(run, size=96)
    with pytest.raises(PL.PredictError, match=r"trained on a 64 px cache.*meta\.json is 96 px") as err:
        PL.load_run(run, f"{TINY}:0", device="cpu")
    assert "best.pt" in str(err.value) and "disagree" in str(err.value)
    # params that disagree with the cache's meta.json (the cache was built with other params)
    _edit_params(run, size=128)
    with pytest.raises(PL.PredictError, match=r"meta\.json and .*params\.yaml disagree.*size: 96 in meta\.json, "
                                              r"128 from params"):
        PL.load_run(run, f"{TINY}:0", device="cpu")
    # thresholds of another epoch's checkpoint
    shutil.copy(trained["run"] / "params.yaml", run / "params.yaml")
    shutil.copy(trained["run"] / "data/cache/meta.json", run / "data/cache/meta.json")
    _write_eval(run, f"{TINY}-f0", trained["labels"], trained["cuts"][0], epoch=7)
    with pytest.raises(PL.PredictError, match="epoch 7.*rerun the evaluate stage"):
        PL.load_run(run, f"{TINY}:0", device="cpu")
    with pytest.raises(PL.PredictError, match="fold3/best.pt not found"):
        PL.load_run(trained["run"], f"{TINY}:3", device="cpu")


def test_bad_images_are_listed_not_fatal(trained, raw, sample_data, tmp_path, monkeypatch):
    good = _files(raw, trained["cache"])[:3]
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for f in good:
        shutil.copy(f, folder / "sub" / f.name)
    png = next(f for f in sorted(raw.rglob("*")) if f.suffix.lower() == ".png")
    (folder / "truncated.png").write_bytes(png.read_bytes()[:png.stat().st_size // 2])
    (folder / "notes.jpg").write_text("not an image")
    (folder / "scan.dcm").write_bytes(b"\0" * 300)
    (folder / "ignored.txt").write_text("not searched")
    monkeypatch.setitem(sys.modules, "pydicom", None)                   # DICOM without the optional pydicom
    out = tmp_path / "pred.csv"
    rc = PC.main([str(folder), "--run", str(trained["run"]),
                  "--models", f"{TINY}:0", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    frame = pd.read_csv(out, keep_default_na=False).set_index("path")
    status = {k.split("/")[-1]: v for k, v in frame["status"].items()}
    assert len(frame) == 6 and "ignored.txt" not in status
    assert [status[f.name] for f in good] == ["ok"] * 3
    assert status["notes.jpg"].startswith("UnidentifiedImageError")
    assert "truncated" in status["truncated.png"] or status["truncated.png"].startswith(("OSError", "SyntaxError"))
    assert "pip install pydicom" in status["scan.dcm"]
    bad = frame[frame["status"] != "ok"]
    assert (bad[f"prob_{trained['labels'][0]}"] == "").all() and (bad["models"] == "").all()


def test_models_with_the_lungs_hidden_are_refused(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    path = run / "models" / "classifier" / TINY / "fold0" / "best.pt"
    model, meta = M.load_classifier(path)
    M.save_classifier(path, model, {**meta, "input_mode": "lungs_removed"})
    with pytest.raises(PL.PredictError, match=r"fold0/best.pt was trained with input_mode 'lungs_removed'.*"
                                              r"lung masks"):
        PL.load_run(run, TINY, device="cpu")


def test_overlays_are_written_for_readable_images(trained, raw, sample_data, tmp_path):
    files = [str(f) for f in _files(raw, trained["cache"])[:2]]
    out, maps = tmp_path / "p.csv", tmp_path / "maps"
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert PC.main(files + [str(bad), "--run", str(trained["run"]), "--models", TINY,
                            "--out", str(out), "--overlays", str(maps), "--device", "cpu"]) == 0
    frame = pd.read_csv(out, keep_default_na=False)
    written = frame["overlay"].tolist()
    assert written[2] == "" and all(w.endswith(".gradcam.png") for w in written[:2])
    assert sorted(p.name for p in maps.iterdir()) == sorted(w.split("/")[-1] for w in written[:2])
    with pytest.raises(ParamError, match="predict.overlay_method"):
        PO.validate({"predict": {"overlay_method": "kernel_shap", "overlay_target": "covid19", "overlay_alpha": 0.5}})
    with pytest.raises(ParamError, match="predict.overlay_alpha"):
        PO.validate({"predict": {"overlay_method": "gradcam", "overlay_target": "covid19", "overlay_alpha": 0}})


def test_dicom_is_read_with_pydicom(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = (np.arange(40 * 30, dtype=np.uint16).reshape(40, 30) * 3)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 40, 30, 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.tobytes()
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    grey = PI.load_image(path)
    assert grey.shape == (40, 30) and grey.dtype == np.float32
    np.testing.assert_allclose(grey, 1 - pixels / pixels.max(), atol=1e-6)   # MONOCHROME1: bright = low values


# --- the output: checked before any work, never written over a folder ---

def _stub_run(monkeypatch, calls):
    """predict with the model part stubbed (no training): load_run and predict_files record their calls."""
    def load_run(*a, **k):
        calls.append("load_run")
        return SimpleNamespace(members=[SimpleNamespace(name=f"{TINY}-f0")], device="cpu", rule="majority",
                               recipe=SimpleNamespace(size=64, channels=("raw",)))

    def predict_files(run, paths, *a, **k):
        calls.append("predict_files")
        return pd.DataFrame({"path": [str(p) for p in paths], "status": "ok", "prob_covid19": 0.5})

    monkeypatch.setattr(PC, "load_run", load_run)
    monkeypatch.setattr(PC, "predict_files", predict_files)
    monkeypatch.setattr(PC, "quality_warning", lambda run: None)      # the stub has no validation scores
    return ["--params", str(Path(__file__).resolve().parents[2] / "params.yaml"), "--device", "cpu"]


def _xray_folder(tmp_path):
    folder = tmp_path / "my_xrays"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(b"\x89PNG user scan")
    (folder / "sub" / "b.jpg").write_bytes(b"user scan")
    return folder, {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_out_onto_the_input_folder_is_refused_and_the_folder_kept(tmp_path, monkeypatch, capsys):
    calls = []
    argv = _stub_run(monkeypatch, calls)
    folder, before = _xray_folder(tmp_path)
    assert PC.main([str(folder), "--out", str(folder)] + argv) == 2
    assert f"{folder} is a folder" in capsys.readouterr().err
    assert folder.is_dir() and {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert calls == []                               # refused before any model was loaded
    assert PC.main([str(folder), "--out", str(tmp_path / "p.csv")] + argv) == 0     # the stub itself works
    assert len(pd.read_csv(tmp_path / "p.csv")) == 2


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_an_unwritable_out_is_refused_before_any_work(tmp_path, monkeypatch, capsys, where):
    """Root ignores permission bits, so the tests use what fails for root too: a path under a file, /proc."""
    calls = []
    argv = _stub_run(monkeypatch, calls)
    folder, before = _xray_folder(tmp_path)
    out = folder / "a.png" / "p.csv" if where == "under_a_file" else "/proc/self/p.csv"
    if where == "proc" and not os.path.isdir("/proc/self"):
        pytest.skip("no /proc")
    assert PC.main([str(folder), "--out", str(out)] + argv) == 2
    err = capsys.readouterr().err
    assert f"--out {out}" in err and "predict: error" in err
    assert calls == []                               # nothing computed, nothing lost
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_a_failed_final_write_is_a_message_not_a_traceback(tmp_path, monkeypatch, capsys):
    argv = _stub_run(monkeypatch, [])
    folder, _ = _xray_folder(tmp_path)

    def full(path, frame):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(PC, "write_csv", full)
    assert PC.main([str(folder), "--out", str(tmp_path / "p.csv")] + argv) == 2
    assert f"cannot write --out {tmp_path / 'p.csv'}" in capsys.readouterr().err


# --- hostile inputs ---------------------------------------------------------------------------

def _fifo_watchdog(fifos, seconds=30):
    """Before the fix a FIFO blocks the decoder until a writer comes: after ``seconds``, open each for writing
    (EOF for the reader) so the test fails instead of hanging. Returns (timer, fired)."""
    import os
    import threading

    fired = []

    def unblock():
        fired.append(True)
        for f in fifos:
            try:
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:                      # no reader waiting on this one
                continue
    timer = threading.Timer(seconds, unblock)
    timer.start()
    return timer, fired


def test_hostile_images_are_listed_not_decoded_or_waited_for(trained, raw, tmp_path):
    """A FIFO, an image over predict.max_pixels, float images with NaN/inf pixels: each a bad row with its
    reason, and the run ends; images under a linked folder are searched (a link loop ends)."""
    import os
    from PIL import Image

    good = _files(raw, trained["cache"])[:2]
    folder, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    shutil.copy(good[0], folder / good[0].name)
    shutil.copy(good[1], elsewhere / good[1].name)
    (folder / "linked").symlink_to(elsewhere, target_is_directory=True)
    (folder / "loop").symlink_to(folder, target_is_directory=True)        # must not be searched forever
    os.mkfifo(folder / "pipe.png")
    os.mkfifo(tmp_path / "given.png")
    Image.fromarray(np.full((1000, 1500), 90, np.uint8)).save(tmp_path / "large.png")     # 1.5 MP
    floats = []
    for name, bad in (("nan.tif", np.nan), ("inf.tif", np.inf)):
        arr = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
        arr[3, 3] = bad
        Image.fromarray(arr, mode="F").save(tmp_path / name, format="TIFF")
        floats.append(str(tmp_path / name))
    timer, fired = _fifo_watchdog([folder / "pipe.png", tmp_path / "given.png"])
    out = tmp_path / "p.csv"
    try:
        rc = PC.main([str(folder), str(tmp_path / "given.png"), str(tmp_path / "large.png"), *floats,
                      "--run", str(trained["run"]), "--models", f"{TINY}:0", "--out", str(out), "--device", "cpu",
                      "--set", "predict.max_pixels=1000000"])
    finally:
        timer.cancel()
    assert not fired, "predict waited on a FIFO"
    assert rc == 0
    frame = pd.read_csv(out, keep_default_na=False)
    status = dict(zip(frame["path"], frame["status"]))
    assert status[str(folder / good[0].name)] == "ok"
    assert status[str(folder / "linked" / good[1].name)] == "ok"                   # the linked folder
    assert not any("/loop/" in p for p in status) and len(frame) == 7
    for fifo in (folder / "pipe.png", tmp_path / "given.png"):
        assert status[str(fifo)].startswith("NotRegularFileError") and "FIFO" in status[str(fifo)]
    assert status[str(tmp_path / "large.png")].startswith("ImageTooLargeError")
    assert "1500 x 1000" in status[str(tmp_path / "large.png")] and "predict.max_pixels" in status[str(tmp_path / "large.png")]
    for f in floats:
        assert status[f].startswith("NonFiniteImageError"), status[f]


def test_overlay_titles_are_text_and_one_failed_overlay_keeps_the_run(trained, raw, tmp_path):
    """`invoice_$5_$6.png` is a file name, not mathtext; an overlay that cannot be written (its name too long
    for the filesystem) is noted in its row, and the others and the CSV are written."""
    src = _files(raw, trained["cache"])[:3]
    names = ["invoice_$5_$6.png", "x" * 240 + ".png", "plain.png"]
    for f, name in zip(src, names):
        shutil.copy(f, tmp_path / name)
    out, maps = tmp_path / "p.csv", tmp_path / "maps"
    assert PC.main([str(tmp_path / n) for n in names] + ["--run", str(trained["run"]), "--models", f"{TINY}:0",
                                                        "--out", str(out), "--overlays", str(maps),
                                                        "--device", "cpu"]) == 0
    frame = pd.read_csv(out, keep_default_na=False)
    assert (frame["status"] == "ok").all()
    overlay = frame["overlay"].tolist()
    assert overlay[0].endswith("00000_invoice_$5_$6.gradcam.png") and (maps / overlay[0].split("/")[-1]).is_file()
    assert overlay[1].startswith("overlay not written: OSError") and "too long" in overlay[1]
    assert overlay[2].endswith("00002_plain.gradcam.png")


@pytest.mark.parametrize("extra, message", [
    (["--device", "gpu"], r"--device 'gpu': not a device name.*use cpu, cuda or cuda:N"),
    (["--device", "cuda:99"], r"--device cuda:99: (CUDA is not available|this machine has \d+ CUDA device)"),
    (["--device", "meta"], r"--device meta: not available"),
    (["--overlays", "FILE"], r"--overlays .*is a file, not a folder"),
    (["--overlays", "FILE/sub"], r"--overlays .*is a file, not a folder"),
    (["--overlays", "maps", "--set", "predict.overlay_method=[gradcam]"], r"predict.overlay_method.*expected the name"),
    (["--overlays", "maps", "--set", "predict.overlay_method=kernel_shap"], r"predict.overlay_method.*unknown"),
    (["--set", "predict.max_pixels=0"], r"predict.max_pixels.*must be >= 1"),
    (["--set", "predict.max_pixels=1e9"], r"predict.max_pixels.*expected an integer"),
])
def test_bad_arguments_are_messages_not_tracebacks(trained, raw, tmp_path, capsys, extra, message):
    (tmp_path / "FILE").write_text("not a folder")
    extra = [str(tmp_path / e) if e.startswith(("FILE", "maps")) else e for e in extra]
    args = [str(_files(raw, trained["cache"])[0]), "--run", str(trained["run"]), "--models", f"{TINY}:0",
            "--out", str(tmp_path / "p.csv")]
    if "--device" not in extra:
        args += ["--device", "cpu"]
    assert PC.main(args + extra) == 2
    err = capsys.readouterr().err
    assert "predict: error:" in err and "Traceback" not in err
    import re
    assert re.search(message, err), err
    assert not (tmp_path / "p.csv").exists()


def test_dicom_rows_and_columns_are_checked_before_the_pixels(tmp_path, monkeypatch):
    """A DICOM header declaring 12000 x 10000 is refused before its pixel data is decoded (a stand-in
    pydicom: the real one is optional), and a float DICOM with a NaN is a bad file."""
    import types

    class Dataset(dict):
        def __init__(self, rows, cols, pixels=None):
            super().__init__()
            self.Rows, self.Columns, self.SamplesPerPixel, self._pixels = rows, cols, 1, pixels

        @property
        def pixel_array(self):
            assert self._pixels is not None, "the pixel data of an oversized image was decoded"
            return self._pixels

    datasets = {}
    fake = types.ModuleType("pydicom")
    fake.dcmread = lambda path: datasets[path]
    fake.pixels = types.SimpleNamespace(apply_modality_lut=lambda a, ds: a, apply_voi_lut=lambda a, ds: a)
    fake.errors = types.SimpleNamespace(InvalidDicomError=type("InvalidDicomError", (Exception,), {}))
    monkeypatch.setitem(sys.modules, "pydicom", fake)
    monkeypatch.setitem(sys.modules, "pydicom.pixels", fake.pixels)
    monkeypatch.setitem(sys.modules, "pydicom.errors", fake.errors)
    from cxrbench.data.preprocess import Recipe

    recipe = Recipe(size=32, percentiles=(1.0, 95.0), channels=("raw",))
    big, nan, fine = (tmp_path / n for n in ("big.dcm", "nan.dcm", "fine.dcm"))
    pixels = np.linspace(0, 1000, 40 * 30, dtype=np.float32).reshape(40, 30)
    datasets[str(big)] = Dataset(10000, 12000)
    datasets[str(nan)] = Dataset(40, 30, np.where(np.arange(1200).reshape(40, 30) == 7, np.nan, pixels))
    datasets[str(fine)] = Dataset(40, 30, pixels)
    for f in (big, nan, fine):
        f.write_bytes(b"DICM")
    arr, why = PI.prepare_file((str(big), recipe, 50_000_000))
    assert arr is None and why.startswith("ImageTooLargeError") and "12000 x 10000" in why
    arr, why = PI.prepare_file((str(nan), recipe, 50_000_000))
    assert arr is None and why.startswith("NonFiniteImageError")
    arr, why = PI.prepare_file((str(fine), recipe, 50_000_000))
    assert why == PI.OK and arr.shape == (1, 32, 32)


# --- predict --calibrate: decisions refitted on a labelled sample of a site with a known shift ---------------

from cxrbench.studies.predict import calibrate as PCal  # noqa: E402


def _site(n, seed, offset=0.25):
    """A site whose probabilities of 'healthy' are all ``offset`` higher than at the study's: the classes
    separate around 0.5 + offset, so the validation cut 0.5 calls healthy on nearly every image."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(float)
    prob = np.clip(0.5 + offset + 0.12 * (2 * y - 1) + rng.normal(0, 0.05, n), 0, 1)
    return y, prob


@pytest.mark.parametrize("method", ["cut", "platt"])
def test_calibration_on_a_shifted_site_restores_its_decisions(method):
    y_fit, p_fit = _site(80, 0)
    fitted = PCal.fit(y_fit[:, None], p_fit[:, None], ["healthy"], method, np.array([0.5]))
    e = fitted["healthy"]
    assert e["status"] == "fitted" and e["n"] == 80
    assert 0.15 < e["shift"] < 0.35                                  # the known shift, +0.25, recovered
    y_new, p_new = _site(200, 1)                                     # other images of the same site
    frame = pd.DataFrame({"path": [f"x{i}" for i in range(200)], "status": "ok", "prob_healthy": p_new,
                          "pred_healthy": (p_new >= 0.5).astype(int)})
    before = (frame["pred_healthy"] == y_new).mean()
    out = PCal.apply(frame, fitted)
    after = (out["pred_healthy"] == y_new).mean()
    assert before < 0.65 and after > 0.9
    assert (out["decided_by"] == "site calibration: healthy").all()
    assert (f"cal_prob_healthy" in out.columns) == (method == "platt")


def test_calibration_keeps_the_validation_decision_without_enough_labels():
    y = np.array([[1.0, np.nan]] * 6 + [[0.0, np.nan]] * 3)
    prob = np.full((9, 2), 0.6)
    fitted = PCal.fit(y, prob, ["healthy", "covid19"])
    assert fitted["healthy"]["status"] == "kept the validation decision" and "3 negative" in fitted["healthy"]["reason"]
    assert fitted["covid19"]["n"] == 0
    frame = pd.DataFrame({"path": ["a", "b"], "status": ["ok", "unreadable"], "prob_healthy": [0.7, np.nan],
                          "prob_covid19": [0.1, np.nan], "pred_healthy": [0, np.nan], "pred_covid19": [1, np.nan]})
    out = PCal.apply(frame, fitted)
    assert out["pred_healthy"].tolist()[:1] == [0] and out["decided_by"].tolist() == ["validation cuts", ""]


def test_calibration_labels_csv_errors_name_file_line_and_column(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_text("path,y_healthy\na.png,1\nb.png,yes\n")
    with pytest.raises(PL.PredictError, match=r"labels.csv, line 3: y_healthy is 'yes'"):
        PCal.read_labels(f, ["healthy", "covid19"])
    f.write_text("path,y_flu\na.png,1\n")
    with pytest.raises(PL.PredictError, match=r"\['y_flu'\] name no label"):
        PCal.read_labels(f, ["healthy"])
    f.write_text("path,y_healthy\nsub/a.png,1\nb.png,\n")
    frame = PCal.read_labels(f, ["healthy", "covid19"])
    assert frame["path"].tolist() == [str(tmp_path / "sub" / "a.png"), str(tmp_path / "b.png")]
    assert frame["y_healthy"].tolist()[0] == 1.0 and np.isnan(frame["y_healthy"].tolist()[1])
    assert np.isnan(frame["y_covid19"]).all()


def test_predict_calibrate_end_to_end_on_a_shifted_site(tmp_path, monkeypatch, capsys):
    """The command: the labelled site images are scored, the cut refitted, the predicted images decided by
    it, and the fit written beside --out (the models stubbed: their probabilities carry the known shift)."""
    y_site, p_site = _site(60, 2)
    y_new, p_new = _site(40, 3)
    probs = {**{f"/site/s{i}.png": p for i, p in enumerate(p_site)}, **{f"/new/n{i}.png": p for i, p in enumerate(p_new)}}

    def load_run(*a, **k):
        return SimpleNamespace(members=[SimpleNamespace(name=f"{TINY}-f0", cuts=np.array([0.5]))], device="cpu",
                               rule="own cut", labels=["healthy"], recipe=SimpleNamespace(size=64, channels=("raw",)))

    def predict_files(run, paths, *a, **k):
        p = np.array([probs[str(x)] for x in paths])
        return pd.DataFrame({"path": [str(x) for x in paths], "status": "ok", "prob_healthy": p,
                             "pred_healthy": (p >= 0.5).astype(int), "models": f"{TINY}-f0"})

    monkeypatch.setattr(PC, "load_run", load_run)
    monkeypatch.setattr(PC, "predict_files", predict_files)
    monkeypatch.setattr(PC, "find_images", lambda items: [Path(f"/new/n{i}.png") for i in range(40)])
    monkeypatch.setattr(PC, "quality_warning", lambda run: None)   # the stub run has no model card to read
    labels = tmp_path / "site.csv"
    pd.DataFrame({"path": [f"/site/s{i}.png" for i in range(60)], "y_healthy": y_site.astype(int)}).to_csv(labels, index=False)
    out = tmp_path / "p.csv"
    argv = [str(tmp_path), "--out", str(out), "--calibrate", str(labels), "--params",
            str(Path(__file__).resolve().parents[2] / "params.yaml"), "--device", "cpu"]
    assert PC.main(argv) == 0
    got = pd.read_csv(out)
    assert (got["pred_healthy"] == y_new).mean() > 0.9 and ((p_new >= 0.5) == y_new).mean() < 0.65
    fit = json.loads((tmp_path / "p.calibration.json").read_text())
    assert fit["labels"]["healthy"]["status"] == "fitted" and 0.15 < fit["labels"]["healthy"]["shift"] < 0.35
    assert "calibrate healthy" in capsys.readouterr().out


def test_a_multiclass_run_is_refused_naming_train_task_before_any_model_loads(params, tmp_path):
    """No thresholds and argmax classes: predict says so at once (no model file exists here to load)."""
    p = copy.deepcopy(params)
    p["train"].update(task="multiclass", classes="covid_vs_normal", pos_weight=False)
    with pytest.raises(PL.PredictError, match=r"params.yaml: train.task is multiclass \(classes \['covid19', "
                                              r"'healthy'\], argmax"):
        PL.load_run(tmp_path, params=p, device="cpu")
