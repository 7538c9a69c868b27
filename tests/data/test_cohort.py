"""The authors' cohort (diagnoPP): their label rule, their fold files, the cohort and its leak audit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrbench.data import cohort
from cxrbench.data import splitting
from cxrbench.data.cohort import PAPER_PATHOLOGIES, FoldFileError

# --- their label rule -------------------------------------------------------------------------------


def test_paper_pathologies_and_mapping_to_our_labels(params):
    assert len(PAPER_PATHOLOGIES) == 14 and list(PAPER_PATHOLOGIES) == sorted(PAPER_PATHOLOGIES)
    assert set(cohort.PAPER_TO_OURS) == set(PAPER_PATHOLOGIES)
    assert set(cohort.PAPER_MAPPING) == {"Pneumonia", "Viral Pneumonia", "Bacterial Pneumonia", "Fungal Pneumonia"}
    # every name of theirs has a label here except MERS, absent from covid-chestxray-dataset
    assert set(cohort.PAPER_TO_OURS.values()) - set(params["labels"]["names"]) == {"mers"}


@pytest.mark.parametrize("finding,expected", [
    ("COVID-19", {"COVID-19", "Viral Pneumonia", "Pneumonia"}),
    ("COVID-19, ARDS", {"COVID-19", "ARDS", "Viral Pneumonia", "Pneumonia"}),
    ("E.Coli", set()),
    ("Viral Pneumonia", {"Viral Pneumonia", "Pneumonia"}),
    ("Bacterial Pneumonia", {"Bacterial Pneumonia", "Pneumonia"}),
    ("No Finding", {"No Finding"}),
    ("ARDS", {"ARDS", "Pneumonia"}),
    ("Pneumocystis", {"Pneumocystis", "Fungal Pneumonia", "Pneumonia"}),
    ("Streptococcus", {"Streptococcus", "Bacterial Pneumonia", "Pneumonia"}),
    ("covid-19", set()),  # case-sensitive, as pandas str.contains
])
def test_paper_label_rule_on_known_rows(finding, expected):
    y = cohort.paper_labels(pd.Series([finding]))
    assert y.shape == (1, 14) and y.dtype == np.uint8
    assert {PAPER_PATHOLOGIES[j] for j in np.flatnonzero(y[0])} == expected
    assert set(cohort.paper_label_names(pd.Series([finding]))[0]) == expected


def test_paper_labels_keep_row_order_and_index_free():
    s = pd.Series(["No Finding", None, "SARS"], index=[7, 3, 5])
    y = cohort.paper_labels(s)
    assert y[0, PAPER_PATHOLOGIES.index("No Finding")] == 1 and y[1].sum() == 0
    assert y[2, PAPER_PATHOLOGIES.index("SARS")] == 1 and y[2, PAPER_PATHOLOGIES.index("Viral Pneumonia")] == 1


# --- their fold files -------------------------------------------------------------------------------


def _write_folds(folder: Path, folds: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, f in enumerate(folds):
        (folder / f"V2_60_40_00fold{k}.txt").write_text(json.dumps(f))


def test_read_folds_parses_until_the_first_absent_file(tmp_path):
    _write_folds(tmp_path, [{"seed": 1701, "train": [2, 3, 2051], "test": [4], "val": []},
                            {"seed": 1702, "train": [4], "test": [2, "3"], "val": []}])
    (tmp_path / "V2_60_40_00fold3.txt").write_text("not read: fold 2 is absent")
    folds = cohort.read_folds(tmp_path)
    assert [f["fold"] for f in folds] == [0, 1] and [f["seed"] for f in folds] == [1701, 1702]
    assert folds[0]["train"] == ["2", "3", "2051"] and folds[1]["test"] == ["2", "3"]
    assert folds[0]["file"] == "V2_60_40_00fold0.txt" and folds[0]["val"] == []


@pytest.mark.parametrize("text,match", [('{"seed": 1, "train": [1], ', "not valid JSON"),
                                        ('{"seed": 1, "train": [1]}', r"missing key.*test"),
                                        ('[1, 2]', "JSON object"),
                                        ('{"train": [1.5], "test": []}', "not a patient id")])
def test_bad_fold_file_is_named(tmp_path, text, match):
    _write_folds(tmp_path, [{"seed": 1, "train": [1], "test": [2], "val": []}])
    (tmp_path / "V2_60_40_00fold1.txt").write_text(text)
    with pytest.raises(FoldFileError, match=match) as err:
        cohort.read_folds(tmp_path)
    assert "V2_60_40_00fold1.txt" in str(err.value)


def test_no_fold_file_names_the_expected_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="V2_60_40_00fold0.txt"):
        cohort.read_folds(tmp_path)


# --- the audit on constructed frames ------------------------------------------------------------------


def _rows(spec):
    return pd.DataFrame([dict(path=p, source="kermany" if t.startswith("km:") else "covid_chestxray",
                              paper_patient=f"dp:{pp}", true_patient=t, finding=f, view="PA",
                              kermany_class="", meta_row=i)
                         for i, (p, pp, t, f) in enumerate(spec)])


ROWS = [("c/a1.png", 1, "cc:1", "COVID-19"), ("c/a2.png", 1, "cc:1", "COVID-19"),
        ("c/b.png", 2, "cc:2", "E.Coli"),
        ("c/c1.png", 3, "cc:3", "SARS"), ("c/c2.png", 3, "cc:3", "SARS"),          # patient 3: in both lists
        ("k/person5_virus_1.jpeg", 10, "km:person5", "Viral Pneumonia"),           # one child, two paper ids
        ("k/person5_virus_2.jpeg", 11, "km:person5", "Viral Pneumonia"),
        ("k/IM-0001-0001.jpeg", 12, "km:IM-0001", "No Finding"),
        ("k/IM-0002-0001.jpeg", 13, "km:IM-0002", "No Finding"),                  # in no list
        ]
FOLDS = [dict(fold=0, file="f0", seed=1, train=["1", "3", "10", "12", "99"], test=["2", "3", "11"], val=[]),
         dict(fold=1, file="f1", seed=2, train=["1", "2", "10", "11", "12", "13"], test=["3"], val=[])]


def test_fold_split_follows_their_isin_loaders():
    rows = _rows(ROWS)
    part = cohort.fold_split(rows, FOLDS, 0)
    assert part.name == "part_f0"
    assert list(part) == ["train", "train", "test", "train+test", "train+test", "train", "test", "train", "unused"]
    sel = cohort.fold_split(rows, FOLDS, 0, selection_on_test=True)
    assert sel.iloc[3] == "train+test+val" and sel.iloc[2] == "test+val"
    # the '+' form is what the pipeline's fold reader understands: the overlap is in both parts
    parts = splitting.fold_parts(pd.concat([rows, sel], axis=1), 0)
    assert {"c/c1.png", "c/c2.png"} <= set(parts["train"]["path"]) & set(parts["test"]["path"])
    assert set(parts["val"]["path"]) == set(parts["test"]["path"])
    with pytest.raises(ValueError, match="fold 5"):
        cohort.fold_split(rows, FOLDS, 5)


def test_audit_finds_planted_patient_overlap_and_true_patient_leak():
    rows = _rows(ROWS)
    near = [("c/a1.png", "c/b.png", 3),                       # train vs test, different patients
            ("c/a1.png", "c/a2.png", 0),                      # both train
            ("k/IM-0001-0001.jpeg", "k/gone.jpeg", 1)]        # outside the cohort
    res = cohort.audit(rows, FOLDS, near)
    f0, f1 = res["folds"]
    assert f0["paper_patients_in_both"] == 1 and f0["paper_patients_in_both_ids"] == ["3"]
    assert f0["images_in_both"] == 2
    assert f0["true_patients_leaked_ids"] == ["cc:3", "km:person5"]
    assert f0["true_patients_leaked_by_source"] == {"covid_chestxray": 1, "kermany": 1}
    assert f0["test_images_of_leaked_patients"] == 3      # c1, c2 (both sides) and person5_virus_2
    assert f0["listed_ids_not_in_cohort"] == 1 and f0["cohort_ids_in_no_list"] == 1
    nd = f0["near_duplicates_across"]
    assert nd["count"] == 1 and nd["other_patient"] == 1 and nd["pairs_outside_cohort"] == 1
    assert nd["pairs"][0]["pair"] == ["c/a1.png", "c/b.png"]
    # fold 1 keeps patients apart: no leak of either kind
    assert f1["paper_patients_in_both"] == 0 and f1["true_patients_leaked"] == 0
    assert f1["near_duplicates_across"]["count"] == 0
    z = res["cohort"]["all_zero_labels"]
    assert z["count"] == 1 and z["findings"] == {"E.Coli": 1} and z["paths"] == ["c/b.png"]
    assert res["cohort"]["paper_patients"] == 7 and res["cohort"]["true_patients"] == 6
    json.dumps(res)  # plain data
    md = cohort.audit_markdown(res)
    assert "| fold |" in md and "E.Coli: 1" in md and "km:person5" in md


def test_audit_without_near_pairs_says_not_computed():
    res = cohort.audit(_rows(ROWS), FOLDS)
    assert res["folds"][0]["near_duplicates_across"] is None
    assert "not computed" in cohort.audit_markdown(res)


# --- cohort_rows on a constructed raw folder ----------------------------------------------------------


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path, format="PNG")


META_COLUMNS = ["", "Unnamed: 0", "patientid", "offset", "finding", "view", "modality", "folder", "filename",
                "license"]


@pytest.fixture()
def tiny_raw(tmp_path):
    raw = tmp_path / "raw"
    _png(raw / "covid_chestxray/images/a.png", 10)
    _png(raw / "covid_chestxray/images/ct.png", 20)          # exists, but an Axial CT row
    _png(raw / "covid_chestxray/images/unlisted.png", 30)    # never listed: must never appear
    _png(raw / "covid_chestxray/secret.png", 40)             # reachable only by a traversal name
    _png(raw / "kermany/train/NORMAL/IM-0005-0001.jpeg", 50)
    _png(raw / "kermany/train/PNEUMONIA/person7_bacteria_3.jpeg", 60)
    _png(raw / "kermany/train/PNEUMONIA/person7_bacteria_4.jpeg", 70)
    rows = [(1, "COVID-19", "PA", "X-ray", "images", "a.png"),
            (1, "COVID-19", "PA", "X-ray", "images", "a.png"),          # listed twice
            (2, "SARS", "AP", "X-ray", "images", "missing.png"),        # file absent
            (3, "COVID-19", "Axial", "CT", "images", "ct.png"),
            (4, "ARDS", "AP semi erect", "X-ray", "images", "a.png"),
            (5, "E.Coli", "AP Supine", "X-ray", "..", "secret.png"),
            (300, "No Finding", "PA", "X-ray", "images", "IM-0005-0001.jpeg"),
            (301, "Bacterial Pneumonia", "PA", "X-ray", "images", "person7_bacteria_3.jpeg"),
            (302, "Bacterial Pneumonia", "PA", "X-ray", "images", "person7_bacteria_4.jpeg")]
    meta = pd.DataFrame([(i, i, pid, "", f, v, m, fo, fn, "CC BY") for i, (pid, f, v, m, fo, fn) in enumerate(rows)],
                        columns=META_COLUMNS)
    (raw / "diagnopp").mkdir()
    meta.to_csv(raw / "diagnopp/metadataV2.csv", index=False)
    _write_folds(raw / "diagnopp", [{"seed": 1, "train": [1, 301], "test": [2, 302, 300], "val": []}])
    return raw, meta


def test_cohort_rows_only_listed_files_and_reports_the_rest(tiny_raw, monkeypatch):
    raw, meta = tiny_raw
    # it may only look up the listed files, never list a folder
    for name in ("iterdir", "glob", "rglob"):
        monkeypatch.setattr(Path, name, lambda *a, **k: pytest.fail("cohort_rows listed a folder"))
    rows, report = cohort.cohort_rows(raw)
    monkeypatch.undo()
    assert list(rows["path"]) == ["covid_chestxray/images/a.png", "kermany/train/NORMAL/IM-0005-0001.jpeg",
                                  "kermany/train/PNEUMONIA/person7_bacteria_3.jpeg",
                                  "kermany/train/PNEUMONIA/person7_bacteria_4.jpeg"]
    listed = {f"covid_chestxray/images/{n}" for n in meta["filename"]} | {
        f"kermany/train/{d}/{n}" for n in meta["filename"] for d in ("NORMAL", "PNEUMONIA")}
    assert set(rows["path"]) <= listed
    assert all((raw / p).resolve().is_relative_to(raw.resolve()) for p in rows["path"])
    assert report["missing"] == ["covid_chestxray/images/missing.png"]
    assert report["invalid_names"] == ["../secret.png"]
    assert report["dropped_by_view"] == 2 and report["dropped_views"] == {"AP semi erect": 1, "Axial": 1}
    assert len(report["duplicates"]) == 1 and report["duplicates"][0]["meta_rows"] == [0, 1]
    assert report["rows_listed"] == 9 and report["rows_kept"] == 4 and report["kermany_finding_mismatch"] == []
    assert list(rows["paper_patient"]) == ["dp:1", "dp:300", "dp:301", "dp:302"]
    assert list(rows["true_patient"]) == ["cc:1", "km:IM-0005", "km:person7", "km:person7"]
    assert list(rows["kermany_class"]) == ["", "NORMAL", "bacteria", "bacteria"]
    assert list(rows["source"]) == ["covid_chestxray", "kermany", "kermany", "kermany"]


def test_cohort_audit_end_to_end_on_the_tiny_raw(tiny_raw):
    raw, _ = tiny_raw
    rows, report = cohort.cohort_rows(raw)
    folds = cohort.read_folds(raw / "diagnopp")
    pairs = cohort.near_duplicate_pairs(raw, rows, max_distance=256, hash_size=16)  # everything pairs
    assert len(pairs) == len(rows) * (len(rows) - 1) // 2
    res = cohort.audit(rows, folds, pairs, report)
    f0 = res["folds"][0]
    # person7's two images carry two paper ids, one per side: the real child leaks
    assert f0["paper_patients_in_both"] == 0 and f0["true_patients_leaked_ids"] == ["km:person7"]
    assert f0["listed_ids_not_in_cohort"] == 1    # patient 2: its only file is missing
    assert res["cohort"]["missing_files"] == 1 and res["cohort"]["dropped_by_view"] == 2
    assert f0["near_duplicates_across"]["count"] == 4  # train {a, b_3} x test {IM, b_4}
    assert "rows listed: 9" in cohort.audit_markdown(res)


def test_missing_metadata_is_actionable(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadataV2.csv.*download"):
        cohort.cohort_rows(tmp_path)


def _constructed(n_patients=6):
    # real patients g0..g{n-1}, two images each, under per-image ids (as their Kermany rows)
    n = 2 * n_patients
    return pd.DataFrame({"path": [f"i{i}.png" for i in range(n)], "patient": [f"g{i // 2}" for i in range(n)],
                         "group": [f"g{i // 2}" for i in range(n)], "paper_patient": [f"dp:{i}" for i in range(n)]})


def test_paper_splits_protocols_on_a_constructed_cohort():
    from cxrbench.data import splitting

    index = _constructed()
    # their list puts image 1 of g0 in test while image 0 of g0 trains: a real-patient leak
    folds = [{"fold": 0, "train": ["0", "2", "3", "4", "5", "6", "7"], "test": ["1", "8", "9", "10", "11"]}]
    paper, _ = cohort.paper_splits(index, folds, "test", "keep", 0.25, 0)
    assert paper.loc[1, "part_f0"] == "test+val" and paper.loc[0, "part_f0"] == "train"
    assert cohort.fold_leakage(paper)[0] == {"patient": 1, "group": 1}
    corrected, info = cohort.paper_splits(index, folds, "val", "remove", 0.25, 0)
    assert corrected.loc[1, "part_f0"] == "unused" and info["test_images_removed_as_leaked"] == {0: 1}
    assert cohort.fold_leakage(corrected)[0] == {"patient": 0, "group": 0}
    parts = splitting.fold_parts(corrected, 0)
    assert len(parts["val"]) > 0 and set(parts["val"]["group"]).isdisjoint(parts["train"]["group"])
    # the U-Net columns never put a test patient on the dev side
    assert set(corrected.loc[corrected["split"] == "test", "group"]).isdisjoint(
        corrected.loc[corrected["split"] == "dev", "group"])


def test_removing_leaked_test_images_changes_only_the_test_part():
    from cxrbench.data import splitting

    index = _constructed(8)
    # id 2 is in both lists (their loader trains and tests on it); image 1 of g0 is tested while image 0 trains
    folds = [{"fold": 0, "train": ["0", "2", "3", "4", "5", "6", "7", "8", "9"], "test": ["1", "2", "10", "11",
                                                                                        "12", "13", "14", "15"]}]
    for selection in ("test", "val"):
        keep, _ = cohort.paper_splits(index, folds, selection, "keep", 0.25, 0)
        remove, info = cohort.paper_splits(index, folds, selection, "remove", 0.25, 0)
        k, r = splitting.fold_parts(keep, 0), splitting.fold_parts(remove, 0)
        for part in ("train", "val"):       # same training side: a leak removal re-scores, it never retrains
            if selection == "val" or part == "train":
                assert list(k[part]["path"]) == list(r[part]["path"]), (selection, part)
        assert set(r["test"]["path"]) == set(k["test"]["path"]) - {"i1.png", "i2.png"}
        assert info["test_images_removed_as_leaked"] == {0: 2}
        assert cohort.fold_leakage(remove)[0] == {"patient": 0, "group": 0}
    assert keep.loc[2, "part_f0"] in ("train+test", "val+test")


def test_unet_never_trains_on_any_folds_test_patients():
    index = _constructed(10)
    # two of their folds with different test lists: g0-g3 tested in fold 0, g2-g5 in fold 1; g6-g9 never
    folds = [{"fold": 0, "train": [str(i) for i in range(8, 20)], "test": [str(i) for i in range(8)]},
             {"fold": 1, "train": [str(i) for i in [0, 1, 2, 3] + list(range(12, 20))],
              "test": [str(i) for i in range(4, 12)]}]
    for selection, leaked in (("test", "keep"), ("val", "remove")):
        splits, _ = cohort.paper_splits(index, folds, selection, leaked, 0.25, 0)
        dev = set(splits.loc[splits["split"] == "dev", "group"])
        assert dev == {"g6", "g7", "g8", "g9"}                # only patients that no fold tests on
        assert set(splits.loc[splits["fold"] == 0, "group"]) <= dev and (splits["fold"] == 0).any()
        assert cohort.unet_exclusion(splits) == {"dev_groups": 4, "dev_images": 8, "excluded_groups": 6}
    broken = splits.copy()
    broken.loc[broken["group"] == "g0", "split"] = "dev"      # a fold-0 test patient on the U-Net's side
    with pytest.raises(RuntimeError, match="fold 0's test part"):
        cohort.unet_exclusion(broken)
    everyone = [{"fold": 0, "train": [], "test": [str(i) for i in range(20)]}]
    with pytest.raises(ValueError, match="no image is left to train the lung U-Net"):
        cohort.paper_splits(index, everyone, "test", "keep", 0.25, 0)
