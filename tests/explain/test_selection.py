"""Tests of cxrbench.explain.selection: the explained images are a seeded, patient-stratified sample."""

import numpy as np
import pandas as pd
import pytest

from cxrbench.explain import selection as S


def toy_test_set() -> pd.DataFrame:
    """30 COVID-19 patients of source A (the first 6 with 5 images each, sorting first by path, as journal
    figures did), 10 of source B; 20 negatives."""
    rows = []
    for i in range(30):
        for j in range(5 if i < 6 else 1):
            rows.append({"path": f"a/{'0' if i < 6 else 'x'}{i:03d}_{j}.png", "patient": f"pa{i}", "source": "A",
                         "y_covid19": 1})
    for i in range(10):
        rows.append({"path": f"b/{i:03d}.png", "patient": f"pb{i}", "source": "B", "y_covid19": 1})
    for i in range(20):
        rows.append({"path": f"a/n{i:03d}.png", "patient": f"pn{i}", "source": "A", "y_covid19": 0})
    return pd.DataFrame(rows)


def test_one_image_per_patient_and_sources_in_proportion():
    test = toy_test_set()
    sel = S.sample(test, "covid19", 16, seed=0)
    assert len(sel) == 16
    assert sel["patient"].is_unique                       # index order took 16 images of 4 patients
    assert (sel["y_covid19"] == 1).all()
    assert sel["source"].value_counts().to_dict() == {"A": 12, "B": 4}   # 30:10 patients -> 12:4


def test_sample_is_random_within_source_and_seeded():
    test = toy_test_set()
    a, b = S.sample(test, "covid19", 16, seed=0), S.sample(test, "covid19", 16, seed=0)
    assert list(a["path"]) == list(b["path"])              # seeded: the same in every fold and model
    draws = [frozenset(S.sample(test, "covid19", 8, seed=s)["patient"]) for s in range(20)]
    assert len(set(draws)) > 10                            # not the first patients in index order
    # each patient of source A drawn about equally often (20 seeds x 6 draws of 30)
    counts = pd.Series([p for d in draws for p in d if p.startswith("pa")]).value_counts()
    assert counts.max() <= 12 and len(counts) >= 20
    # the image of a patient with several images is drawn at random among them
    picks = {S.sample(test, "covid19", 40, seed=s).set_index("patient").loc["pa0", "path"] for s in range(20)}
    assert len(picks) > 1


def test_fewer_patients_than_asked_takes_everyone_once():
    test = toy_test_set()
    sel = S.sample(test, "covid19", 100, seed=3)
    assert len(sel) == 40 and sel["patient"].nunique() == 40


def test_allocate_largest_remainder_and_caps():
    assert S.allocate({"A": 30, "B": 10}, 16) == {"A": 12, "B": 4}
    assert S.allocate({"A": 1, "B": 1, "C": 1}, 2) in ({"A": 1, "B": 1, "C": 0},)
    assert sum(S.allocate({"A": 7, "B": 5, "C": 1}, 9).values()) == 9
    assert S.allocate({"A": 2, "B": 50}, 100) == {"A": 2, "B": 50}


def test_describe_states_images_patients_sources():
    test = toy_test_set()
    sel = S.sample(test, "covid19", 16, seed=0).assign(target_name="covid19")
    d = S.describe(sel, test, seed=0)
    assert (d["images"], d["patients"], d["sources"]) == (16, 16, {"A": 12, "B": 4})
    assert d["per_target"]["covid19"]["patients_available"] == 40
    assert d["per_target"]["covid19"]["images_available"] == 64
    assert d["seed"] == 0 and len(d["paths"]) == 16


def test_missing_patient_column_is_a_clear_error():
    with pytest.raises(ValueError, match="no column 'patient'"):
        S.sample(toy_test_set().drop(columns="patient"), "covid19", 4, seed=0)


def test_aoppc_states_the_sample_of_every_model():
    from cxrbench.explain import aoppc_run

    test = toy_test_set()
    a = S.describe(S.sample(test, "covid19", 16, seed=0).assign(target_name="covid19"), test, seed=0)
    b = S.describe(S.sample(test, "covid19", 8, seed=1).assign(target_name="covid19"), test, seed=1)
    summary = aoppc_run.sample_summary({"resnet18": {"f0": a, "f1": b}, "efficientnet_lite0": {"f0": None}})
    union = set(a["paths"]) | set(b["paths"])
    assert summary["all"]["images"] == len(union) and summary["all"]["patients"] == len(union)
    line = aoppc_run.sample_sentence(summary)
    assert "resnet18 f0: 16 images of 16 patients (A 12, B 4)" in line and "one image per patient" in line
