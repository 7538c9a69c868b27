"""What predict tells a reader: the decision in words, weak models flagged, the training images and their
altered copies flagged, overlays of the top label, constant maps written as such, missing inputs refused."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw

from cxrbench.studies.predict import cli as PC
from cxrbench.studies.predict import overlays as PO
from cxrbench.studies.predict import readable as R
from tests.studies.test_predict import TINY, _files, trained  # noqa: F401  (the module's trained run)


def test_the_decision_names_the_called_labels_most_probable_first():
    prob = np.array([[0.2, 0.9, 0.6], [0.1, 0.2, 0.3], [np.nan] * 3], dtype=np.float32)
    pred = np.array([[0, 1, 1], [0, 0, 0], [0, 0, 0]])
    got = R.decisions(prob, pred, ["covid19", "pneumonia", "bacterial"], np.array([True, True, False]))
    assert got == ["pneumonia (p 0.90), bacterial (p 0.60)", R.NONE_CALLED, ""]


def _fake_run(tmp_path, f1s, level=0.6):
    members = []
    for k, f1 in enumerate(f1s):
        path = tmp_path / "metrics" / "eval" / f"m-f{k}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"val": {"micro": {"f1": f1}}} if f1 is not None else {}))
        members.append(SimpleNamespace(backbone="m", fold=k, name=f"m-f{k}"))
    return SimpleNamespace(root=tmp_path, members=members, params={"predict": {"min_val_f1": level}})


def test_weak_or_unscored_models_get_a_warning_that_states_their_quality(tmp_path):
    assert R.quality_warning(_fake_run(tmp_path, [0.8, 0.7])) is None
    w = R.quality_warning(_fake_run(tmp_path, [0.8, 0.41]))
    assert "validation micro F1 m-f0 0.80, m-f1 0.41" in w and "predict.min_val_f1 = 0.60" in w
    assert "unknown" in R.quality_warning(_fake_run(tmp_path, [0.8, None]))
    assert R.quality_warning(_fake_run(tmp_path, [0.1], level=0)) is None          # 0: the warning is off


def test_a_missing_input_is_an_error_before_any_model_is_loaded(tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert PC.main([str(tmp_path / "nowhere.png"), "--run", str(tmp_path / "no-run"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "1 input path(s) do not exist" in err and "nowhere.png" in err and "Traceback" not in err
    assert not out.exists()


def test_the_csv_says_the_decision_and_warns_of_unscored_models(trained, raw, tmp_path, capsys):  # noqa: F811
    files = [str(f) for f in _files(raw, trained["cache"])[:3]]
    out = tmp_path / "p.csv"
    assert PC.main(files + ["--run", str(trained["run"]), "--models", f"{TINY}:0", "--out", str(out),
                            "--device", "cpu"]) == 0
    assert "warning: the validation quality of test_resnet-f0 is unknown" in capsys.readouterr().err
    frame = pd.read_csv(out, keep_default_na=False)
    assert list(frame.columns[:4]) == ["path", "status", "decision", "training_copy"]
    labels = trained["labels"]
    for _, row in frame.iterrows():
        called = [n for n in labels if row[f"pred_{n}"] == 1]
        want = sorted(called, key=lambda n: -row[f"prob_{n}"])
        assert row["decision"] == (", ".join(f"{n} (p {row[f'prob_{n}']:.2f})" for n in want) or R.NONE_CALLED)
    assert frame["training_copy"].str.startswith("not checked: ").all()       # the run folder has no index


def test_training_images_and_altered_copies_are_flagged(trained, raw, sample_data, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    shutil.copy(sample_data / "index.csv", run / "data" / "index.csv")
    shutil.copy(sample_data / "splits.csv", run / "data" / "splits.csv")
    os.symlink(raw, run / "data" / "raw")
    splits = pd.read_csv(sample_data / "splits.csv", keep_default_na=False)
    dev = splits.loc[(splits["split"] == "dev") & splits["path"].str.startswith("covid"), "path"].tolist()
    test = splits.loc[splits["split"] == "test", "path"].tolist()
    as_is = raw / dev[0]
    img = Image.open(raw / dev[1]).convert("L")
    w, h = img.size
    img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop((w // 12, h // 12, w, h))   # mirrored, cropped
    ImageDraw.Draw(img).text((10, 10), "DAY 3 PORTABLE", fill=255)                         # burned-in text
    altered = tmp_path / "altered.png"
    img.save(altered)
    files = [str(as_is), str(altered), str(raw / test[0])]
    frame = pd.read_csv(_predict(run, files, tmp_path), keep_default_na=False)
    flags = frame["training_copy"].tolist()
    assert flags[0] == f"yes: the same pixels as training image {dev[0]}"
    assert flags[1] == f"yes: an altered copy (crop, marks, mirror or turn) of training image {dev[1]}"
    assert flags[2] == "no"


def _predict(run, files, tmp_path):
    out = tmp_path / "p.csv"
    assert PC.main(files + ["--run", str(run), "--models", f"{TINY}:0", "--out", str(out), "--device", "cpu"]) == 0
    return out


def test_constant_maps_are_detected():
    a = np.zeros((4, 5, 5), dtype=np.float32)
    a[1, 2, 2] = 1.0
    a[2] += 3.0                     # constant but not zero: a solid overlay, not an explanation
    a[3, 0, 0] = np.nan
    assert PO.constant_maps(a).tolist() == [True, False, True, True]


def test_overlays_explain_the_top_label_and_write_a_constant_map_as_such(trained, raw, tmp_path,  # noqa: F811
                                                                        monkeypatch):
    files = [str(f) for f in _files(raw, trained["cache"])[:2]]
    out, maps = tmp_path / "p.csv", tmp_path / "maps"
    seen = []
    from cxrbench.explain import attribution as A
    real = A.make

    def zero_maps(name, model, prepared, settings, max_batch, backbone):
        m = real(name, model, prepared, settings, max_batch, backbone)

        class Zero:
            def attribute(self, x, target):
                seen.append(target.tolist())
                return torch.zeros(x.shape[0], *x.shape[2:])      # what a dead Grad-CAM layer gives
        return Zero() if m is not None else m

    monkeypatch.setattr(A, "make", zero_maps)
    assert PC.main(files + ["--run", str(trained["run"]), "--models", f"{TINY}:0", "--out", str(out),
                            "--overlays", str(maps), "--device", "cpu"]) == 0
    frame = pd.read_csv(out, keep_default_na=False)
    probs = frame[[f"prob_{n}" for n in trained["labels"]]].to_numpy()
    assert seen == [probs.argmax(1).tolist()]                    # the top label of each image, by default
    assert all(o.endswith(f".gradcam.png ({PO.CONSTANT})") for o in frame["overlay"])
    assert all(Path(o.split(" (")[0]).is_file() for o in frame["overlay"])
    seen.clear()
    label = trained["labels"][1]
    assert PC.main(files + ["--run", str(trained["run"]), "--models", f"{TINY}:0", "--out", str(out),
                            "--overlays", str(maps), "--device", "cpu", "--explain", label]) == 0
    assert seen == [[1, 1]]
