"""The copy search's features kept by the index stage: what the external stage reuses equals what it would
compute, and a changed file or other feature code is computed afresh."""

import shutil

import numpy as np
import pandas as pd
from PIL import Image

from cxrbench.data import copies, copy_store, indexing


def _study(raw, params, tmp_path, n=5):
    images = sorted((raw / "covid_chestxray/images").glob("*.jp*g"))[:n]
    root = tmp_path / "raw"
    (root / "x").mkdir(parents=True)
    for f in images:
        shutil.copy(f, root / "x" / f.name)
    p = copies.validate(params)
    frame = pd.DataFrame({"path": [f"x/{f.name}" for f in images], "patient": [f"p{i}" for i in range(n)]})
    frame["group"] = frame["patient"]
    described = [indexing._describe(str(root / x), p["phash_size"]) for x in frame["path"]]
    frame["exact_hash"], frame["phash"] = [d[3] for d in described], [d[4] for d in described]
    return root, frame, p


def test_kept_features_equal_computed_ones_and_give_the_same_copies(raw, params, tmp_path):
    root, frame, p = _study(raw, params, tmp_path)
    keep = tmp_path / "copy_features.npz"
    copies.link_altered_copies(frame, root, p, 1, keep=keep)
    cached, why = copy_store.load(keep, copies.feature_key(p["phash_size"]))
    assert why is None and sorted(cached) == sorted(frame["path"])
    for rel in frame["path"]:
        got = copy_store.lookup(cached, rel, root / rel)
        want = copies._features(str(root / rel), hash_size=p["phash_size"])
        assert np.array_equal(got[0], want[0]) and got[3:] == want[3:]
        for k in (1, 2):
            assert all(np.array_equal(a, b) for a, b in zip(got[k], want[k]))
    # an outside image that is a mirrored copy of a study image, and one that is not
    Image.open(root / frame["path"].iat[1]).convert("L").transpose(Image.FLIP_LEFT_RIGHT).save(tmp_path / "q.png")
    query = [str(tmp_path / "q.png"), str(sorted((raw / "covid_chestxray/images").glob("*.jp*g"))[7])]
    ref = [str(root / x) for x in frame["path"]]
    known = [copy_store.lookup(cached, rel, root / rel) for rel in frame["path"]]
    fresh = copies.copies_between(query, ref, p, 1)
    assert fresh and copies.copies_between(query, ref, p, 1, ref_features=known) == fresh
    assert copies.copies_between(query, ref, p, 1, ref_features=[None] + known[1:]) == fresh


def test_a_changed_file_or_other_feature_code_is_not_reused(raw, params, tmp_path):
    root, frame, p = _study(raw, params, tmp_path, n=3)
    keep = tmp_path / "copy_features.npz"
    copies.link_altered_copies(frame, root, p, 1, keep=keep)
    cached, _ = copy_store.load(keep, copies.feature_key(p["phash_size"]))
    rel = frame["path"].iat[0]
    with open(root / rel, "ab") as f:
        f.write(b"\0")                                           # other bytes: computed afresh
    assert copy_store.lookup(cached, rel, root / rel) is None
    assert copy_store.lookup(cached, frame["path"].iat[1], root / frame["path"].iat[1]) is not None
    other, why = copy_store.load(keep, copies.feature_key(p["phash_size"] * 2))
    assert other == {} and "rerun the index stage" in why
    missing, why = copy_store.load(tmp_path / "none.npz", copies.feature_key(p["phash_size"]))
    assert missing == {} and "not found" in why
    empty = tmp_path / "empty.npz"                                # copy_candidates 0: a store with no image
    copies.link_altered_copies(frame, root, {**p, "copy_candidates": 0}, 1, keep=empty)
    assert copy_store.load(empty, copies.feature_key(p["phash_size"])) == ({}, None)


def test_the_external_stage_reads_the_kept_features_once_for_the_whole_index(raw, params, tmp_path, capsys):
    from cxrbench.studies.external.overlap import kept_features

    root, frame, p = _study(raw, params, tmp_path, n=3)
    keep = tmp_path / "copy_features.npz"
    copies.link_altered_copies(frame, root, p, 1, keep=keep)
    with open(root / frame["path"].iat[2], "ab") as f:
        f.write(b"\0")
    known = kept_features(frame, root, p, keep)
    assert [k is not None for k in known] == [True, True, False]
    assert "2 of 3 study images (the others' files changed since: computed)" in capsys.readouterr().out
    assert kept_features(frame, root, p, tmp_path / "none.npz") == [None] * 3
