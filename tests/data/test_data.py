"""Foundation: sources, labels, index, dedupe, split, preprocess, cache, profiles."""

from __future__ import annotations

import copy
import errno
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrbench.data import dedupe
from cxrbench.data import indexing
from cxrbench.data import preprocess
from cxrbench.ops import profiles
from cxrbench.data import splitting
from cxrbench.data.cache import BatchLoader, Cache
from cxrbench.data.labels import LabelTable, UnmappedFindingError
from cxrbench.core.params import ParamError
from cxrbench.core.params import load as load_params
from cxrbench.data.sources import ExtractLimits, SourceError, SourceSpec, UnsafeArchiveError, fetch, safe_extract

LIMITS = ExtractLimits.from_params(load_params(Path(__file__).resolve().parents[2] / "params.yaml"))

# --- sources ----------------------------------------------------------------------------------


def _zip(path: Path, members: dict[str, bytes], link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = (0o120777 << 16)
            z.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize("evil", ["../evil.txt", "/abs/evil.txt", "root/../../evil.txt"])
def test_zip_extraction_rejects_traversal(tmp_path, evil):
    arc = _zip(tmp_path / "a.zip", {"root/ok.txt": b"ok", evil: b"x"})
    with zipfile.ZipFile(arc) as z, pytest.raises(UnsafeArchiveError, match="refusing"):
        safe_extract(z, tmp_path / "out", root="root", include=None, where="test")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "ok.txt").exists()


def test_zip_extraction_rejects_links(tmp_path):
    arc = _zip(tmp_path / "a.zip", {"root/ok.txt": b"ok"}, link="root/link")
    with zipfile.ZipFile(arc) as z, pytest.raises(UnsafeArchiveError, match="link"):
        safe_extract(z, tmp_path / "out", root="root", include=None, where="test")


def test_tar_extraction_rejects_traversal_and_links(tmp_path):
    for kind in ("traversal", "symlink"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            info = tarfile.TarInfo("root/../../x" if kind == "traversal" else "root/l")
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                t.addfile(info)
            else:
                info.size = 1
                t.addfile(info, io.BytesIO(b"x"))
        buf.seek(0)
        with tarfile.open(fileobj=buf) as t, pytest.raises(UnsafeArchiveError):
            safe_extract(t, tmp_path / kind, root="root", include=None, where="test")


def test_download_from_url_verifies_checksum_and_extracts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    arc = _zip(tmp_path / "up.zip", {"up-1/data/a.txt": b"A", "up-1/data/sub/b.txt": b"B", "up-1/other.txt": b"O"})
    digest = hashlib.sha256(arc.read_bytes()).hexdigest()
    spec = dict(url=arc.as_uri(), sha256=digest, archive_root="up-1", inner_archive=None, include=["data"],
                mirror=None)
    rec = fetch(SourceSpec.from_params("toy", spec), tmp_path / "raw" / "toy", LIMITS)
    assert rec["sha256"] == digest and rec["files"] == 2
    assert (tmp_path / "raw/toy/data/sub/b.txt").read_text() == "B"
    assert not (tmp_path / "raw/toy/other.txt").exists()
    bad = dict(spec, sha256="0" * 64)
    (tmp_path / "data/downloads/toy.archive").unlink()
    with pytest.raises(SourceError, match="sha256"):
        fetch(SourceSpec.from_params("toy", bad), tmp_path / "raw" / "toy2", LIMITS)
    assert not (tmp_path / "raw/toy2").exists()


def test_unreachable_url_names_source_and_mirror_param(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = dict(url=(tmp_path / "nope.zip").as_uri(), sha256=None, archive_root=None, inner_archive=None,
                include=None, mirror=None)
    with pytest.raises(SourceError, match=r"source `toy`.*sources\.toy\.mirror"):
        fetch(SourceSpec.from_params("toy", spec), tmp_path / "raw" / "toy", LIMITS)


def test_inner_archive_as_in_the_torchxrayvision_wheel(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("semantic_masks_v7labs_lungs/", b"")
        z.writestr("semantic_masks_v7labs_lungs/m.png", b"png")
    whl = _zip(tmp_path / "w.whl", {"pkg/data/masks.zip": inner.getvalue(), "pkg/__init__.py": b""})
    spec = dict(url=whl.as_uri(), sha256=None, archive_root="semantic_masks_v7labs_lungs",
                inner_archive="pkg/data/masks.zip", include=None, mirror=None)
    fetch(SourceSpec.from_params("v7", spec), tmp_path / "raw" / "v7", LIMITS)
    assert (tmp_path / "raw/v7/m.png").read_bytes() == b"png"


def test_missing_mirror_is_an_actionable_error(tmp_path):
    spec = SourceSpec.from_params("kermany", dict(url="https://x", mirror=str(tmp_path / "absent")))
    with pytest.raises(SourceError, match=r"sources\.kermany\.mirror"):
        fetch(spec, tmp_path / "raw", LIMITS)


# --- labels -----------------------------------------------------------------------------------


def test_label_mapping_of_real_metadata_rows(raw, table):
    meta = pd.read_csv(raw / "covid_chestxray/metadata.csv", dtype=str, keep_default_na=False)
    expected = {
        "COVID-19": ["pneumonia", "viral", "covid19"],
        "COVID-19, ARDS": ["pneumonia", "viral", "covid19", "ards"],
        "Pneumocystis": ["pneumonia", "fungal", "pneumocystis"],
        "Streptococcus": ["pneumonia", "bacterial", "streptococcus"],
        "E.Coli": ["pneumonia", "bacterial", "ecoli"],
        "No Finding": ["healthy"],
        "ARDS": ["ards"],
    }
    for finding, labels in expected.items():
        assert finding in set(meta["finding"]), finding
        assert table.labels_of("covid_chestxray", finding) == labels
    assert table.labels_of("kermany", "virus") == ["pneumonia", "viral"]
    assert table.labels_of("kermany", "NORMAL") == ["healthy"]


def test_unmapped_finding_is_named(table):
    with pytest.raises(UnmappedFindingError, match="'Tuberculosis'.*labels.findings.covid_chestxray"):
        table.labels_of("covid_chestxray", "Tuberculosis")


def test_label_table_validation(params):
    p = copy.deepcopy(params)
    p["labels"]["findings"]["kermany"]["virus"] = ["virall"]
    with pytest.raises(ParamError, match="unknown label.*virall"):
        LabelTable.from_params(p)
    p = copy.deepcopy(params)
    p["labels"]["parents"]["pneumonia"] = "covid19"
    with pytest.raises(ParamError, match="cycle"):
        LabelTable.from_params(p)


# --- index ------------------------------------------------------------------------------------


def test_index_of_the_sample(index_frame, table):
    report = index_frame.attrs["report"]
    assert report.missing == ["covid_chestxray/images/covid-19-pneumonia-14-PA.png"]
    assert set(index_frame["source"]) == {"covid_chestxray", "kermany"}
    assert (index_frame["view"].isin(["PA", "AP", "AP Supine"])).all()
    covid = index_frame[index_frame["finding"] == "COVID-19"]
    assert (covid[["y_covid19", "y_viral", "y_pneumonia"]] == 1).all().all()
    assert (covid["y_healthy"] == 0).all()
    # Kermany patients come from the file names
    km = index_frame[index_frame["source"] == "kermany"]
    assert km["patient"].str.match(r"^km:(person\d+|(NORMAL2-)?IM-\d+)$").all()
    assert (index_frame["mask"] != "").sum() == 26


@pytest.mark.parametrize("name,patient", [("IM-0115-0001.jpeg", "IM-0115"), ("IM-0497-0001-0002.jpeg", "IM-0497"),
                                          ("NORMAL2-IM-1102-0001-0002.jpeg", "NORMAL2-IM-1102"),
                                          ("NORMAL2-IM-0416-0001.jpeg", "NORMAL2-IM-0416")])
def test_kermany_normal_file_names_give_the_patient(name, patient):
    assert indexing.KERMANY_NORMAL.match(name).group(1) == patient


def test_kermany_pneumonia_file_names_give_patient_and_class():
    for name, patient, cls in [("person1000_bacteria_2931.jpeg", "person1000", "bacteria"),
                               ("person447_virus_921_1.jpeg", "person447", "virus")]:
        m = indexing.KERMANY_PNEUMONIA.match(name)
        assert (m.group(1), m.group(2)) == (patient, cls)


def test_every_sample_kermany_file_is_indexed(index_frame):
    assert index_frame.attrs["report"].unparsed_kermany == []
    assert (index_frame["source"] == "kermany").sum() == 60


def test_corrupt_image_is_skipped_and_reported(tmp_path, table, params):
    raw = tmp_path / "raw"
    (raw / "kermany/train/NORMAL").mkdir(parents=True)
    (raw / "kermany/train/PNEUMONIA").mkdir(parents=True)
    good = Path(__file__).resolve().parents[2] / "data/sample/chest_xray/train/NORMAL"
    first = sorted(good.iterdir())[0]
    (raw / "kermany/train/NORMAL" / first.name).write_bytes(first.read_bytes())
    (raw / "kermany/train/NORMAL/IM-9999-0001.jpeg").write_bytes(first.read_bytes()[:200])  # truncated
    p = dict(params["index"], kermany_subset={"NORMAL": None, "virus": None, "bacteria": None})
    report = indexing.IndexReport()
    rows = indexing.kermany_rows(raw, p, table, report)
    with pytest.warns(UserWarning, match="IM-9999-0001"):
        kept = indexing.describe_images(raw, rows, 1, report)
    assert [r["path"].rsplit("/", 1)[1] for r in kept] == [first.name]
    assert len(report.corrupt) == 1 and "IM-9999-0001.jpeg" in report.corrupt[0]


def test_index_params_validation(params):
    p = copy.deepcopy(params)
    p["index"]["kermany_subset"] = {"NORMAL": 5}
    with pytest.raises(ParamError, match="index.kermany_subset"):
        indexing.validate(p)


def test_unknown_view_lists_valid_views(raw, params, table):
    p = dict(params["index"], views=["PA", "Frontal"])
    with pytest.raises(ParamError, match=r"index.views.*'Frontal'.*valid views"):
        indexing.covid_rows(raw, p, table, indexing.IndexReport())


def _covid_copy(raw, tmp_path, edit=None, images=True):
    import shutil

    root = tmp_path / "raw"
    shutil.copytree(raw / "covid_chestxray", root / "covid_chestxray",
                    ignore=None if images else shutil.ignore_patterns("images"))
    if edit is not None:
        meta = root / "covid_chestxray/metadata.csv"
        frame = pd.read_csv(meta, dtype=str, keep_default_na=False)
        edit(frame, meta)
    return root


@pytest.mark.parametrize("case,msg", [
    ("absolute", r"filename '/etc/hostname'.*outside"),
    ("dotdot", r"filename '../../x.png'.*outside"),
    ("empty", r"metadata.csv is empty"),
    ("no_view", r"no column\(s\) \['view'\]"),
    ("no_images", r"images folder is empty"),
])
def test_bad_covid_metadata_or_folder_is_named(raw, params, table, tmp_path, case, msg):
    def edit(frame, meta):
        if case == "absolute":
            frame.loc[frame.index[0], "filename"] = "/etc/hostname"
        elif case == "dotdot":
            frame.loc[frame.index[0], "filename"] = "../../x.png"
        elif case == "no_view":
            frame = frame.drop(columns=["view"])
        if case == "empty":
            meta.write_text("")
        else:
            frame.to_csv(meta, index=False)

    root = _covid_copy(raw, tmp_path, None if case == "no_images" else edit, images=case != "no_images")
    with pytest.raises((ValueError, FileNotFoundError), match=msg):
        indexing.covid_rows(root, params["index"], table, indexing.IndexReport())


# --- dedupe -----------------------------------------------------------------------------------


def _frame(rows):
    return pd.DataFrame([dict(path=p, patient=pt, exact_hash=e, phash=h, source="s", labels="healthy")
                         for p, pt, e, h in rows])


def test_dedupe_drops_exact_copies_and_merges_near_duplicates():
    h0, h1, far = "0" * 64, "0" * 63 + "3", "f" * 64  # h1 is 2 bits from h0
    frame = _frame([("a.png", "p1", "x", h0), ("b.png", "p2", "x", h0),   # exact copy across patients
                    ("c.png", "p3", "y", h1),                             # near copy of a
                    ("d.png", "p4", "z", far)])
    kept, rep = dedupe.dedupe(frame, max_distance=4, near_action="merge")
    assert list(kept["path"]) == ["a.png", "c.png", "d.png"]
    assert rep["exact_copies_dropped"] == 1 and rep["near_duplicate_pairs_across_patients"] == 1
    g = dict(zip(kept["path"], kept["group"]))
    assert g["a.png"] == g["c.png"] != g["d.png"]
    kept, rep = dedupe.dedupe(frame, max_distance=4, near_action="drop")
    assert list(kept["path"]) == ["a.png", "d.png"] and rep["near_copies_dropped"] == 1
    kept, _ = dedupe.dedupe(frame, max_distance=1, near_action="merge")
    assert kept["group"].nunique() == 2 + 0 + 1  # c no longer near: a(+b), c, d


def test_patients_listed_twice_upstream_share_a_group():
    frame = _frame([("a.png", "cc:285", "x", "0" * 64), ("b.png", "cc:339", "y", "f" * 64)])
    frame["linked_patients"] = ["cc:339", ""]
    kept, _ = dedupe.dedupe(frame, 0, "merge")
    assert kept["group"].nunique() == 1


def test_near_pairs_counts_bits_across_words():
    hashes = dedupe.phash_bits(["0" * 32, "0" * 16 + "f" * 16, "1" + "0" * 31])
    pairs = dedupe.near_pairs(hashes, 64)
    assert (0, 1, 64) in pairs and (0, 2, 1) in pairs


# --- split ------------------------------------------------------------------------------------


def _fake_index(n_groups=60, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        lab = ["healthy", "covid19", "viral"][g % 3]
        for i in range(rng.integers(1, 4)):
            rows.append(dict(path=f"g{g}_{i}.png", patient=f"p{g}_{i % 2}", group=f"G{g}", source="s",
                             labels=lab))
    return pd.DataFrame(rows)


def test_split_never_puts_a_patient_or_group_on_two_sides(index_frame, table):
    for seed in range(3):
        s = splitting.split(index_frame, table, 0.4, 2, seed)
        assert splitting.leakage(s) == {k: 0 for k in splitting.leakage(s)}
        for key in ("patient", "group"):
            assert (s.groupby(key)["split"].nunique() == 1).all()
            assert (s[s["split"] == "dev"].groupby(key)["fold"].nunique() == 1).all()
        assert set(s.loc[s["split"] == "dev", "fold"]) == {0, 1}
        assert (s.loc[s["split"] == "test", "fold"] == -1).all()


def test_leakage_detects_a_planted_leak():
    s = pd.DataFrame(dict(path=["a", "b"], patient=["p", "p"], group=["g", "g"], split=["test", "dev"], fold=[-1, 0]))
    assert splitting.leakage(s)["patients_in_test_and_dev"] == 1


def test_split_is_deterministic_by_seed(table):
    frame = _fake_index()
    a = splitting.split(frame, table, 0.4, 5, 1)
    b = splitting.split(frame, table, 0.4, 5, 1)
    c = splitting.split(frame, table, 0.4, 5, 2)
    pd.testing.assert_frame_equal(a, b)
    assert not a[["split", "fold"]].equals(c[["split", "fold"]])


def test_split_fractions_and_folds(table):
    frame = _fake_index(100)
    s = splitting.split(frame, table, 0.4, 5, 0)
    groups = s.groupby("group")["split"].first()
    assert (groups == "test").sum() == 40
    parts = splitting.fold_parts(s, 3)
    assert set(parts["train"]["group"]).isdisjoint(parts["val"]["group"])
    assert set(parts["val"]["group"]).isdisjoint(parts["test"]["group"])
    assert sum(len(p) for p in parts.values()) == len(s)
    assert (parts["val"]["fold"] == 3).all() and (parts["test"]["split"] == "test").all()
    # every dev image is validation in exactly one fold
    n_val = sum((s[splitting.part_column(k)] == "val").astype(int) for k in range(5))
    assert (n_val[s["split"] == "dev"] == 1).all() and (n_val[s["split"] == "test"] == 0).all()
    with pytest.raises(ValueError, match="fold 5 is not in the splits"):
        splitting.fold_parts(s, 5)
    assert s.loc[s["split"] == "dev", "fold"].nunique() == 5


@pytest.mark.parametrize("key,value,msg", [("test_fraction", 1.2, r"fraction in \(0, 1\)"),
                                           ("test_fraction", 0, r"fraction in \(0, 1\)"),
                                           ("folds", 1, ">= 2"), ("folds", 2.5, "integer")])
def test_split_params_validation(params, key, value, msg):
    p = copy.deepcopy(params)
    p["split"][key] = value
    with pytest.raises(ParamError, match=rf"split\.{key}.*{msg}"):
        splitting.validate(p)


# --- preprocess -------------------------------------------------------------------------------


def _recipe(**kw):
    base = dict(size=64, percentiles=(1.0, 95.0), channels=("raw",))
    base.update(kw)
    return preprocess.Recipe(**base)


def test_preprocess_shape_range_and_centred_padding():
    rng = np.random.default_rng(0)
    img = rng.uniform(0.2, 0.8, size=(100, 50)).astype(np.float32)  # portrait: pad left and right
    out = preprocess.prepare(img, _recipe(channels=("raw", "clahe", "histeq", "unsharp")))
    assert out.shape == (4, 64, 64) and out.dtype == np.uint8
    new_h, new_w, top, left = preprocess.geometry(100, 50, 64)
    assert (new_h, new_w, top, left) == (64, 32, 0, 16)
    assert (out[:, :, :16] == 0).all() and (out[:, :, 48:] == 0).all()
    inner = out[0, :, 16:48]
    assert inner.max() == 255 and inner.min() == 0  # percentile-scaled to the full range
    # the 95th percentile clips: about 5 % of the image pixels saturate
    assert 0.03 < (inner == 255).mean() < 0.08


def test_mask_follows_the_image_geometry():
    mask = np.zeros((100, 50), dtype=bool)
    mask[10:90, 5:20] = True
    m = preprocess.prepare_mask(mask, 64)
    assert m.shape == (64, 64) and set(np.unique(m)) == {0, 1}
    ys, xs = np.nonzero(m)
    assert xs.min() >= 16 + 2 and xs.max() <= 16 + 14 and ys.min() >= 5 and ys.max() <= 59


def test_preprocess_params_validation(params):
    p = copy.deepcopy(params)
    p["preprocess"]["channels"] = ["raw", "sobel"]
    with pytest.raises(ParamError, match=r"preprocess.channels.*'sobel'"):
        preprocess.Recipe.from_params(p)
    p = copy.deepcopy(params)
    p["preprocess"]["percentiles"] = [95, 1]
    with pytest.raises(ParamError, match="preprocess.percentiles"):
        preprocess.Recipe.from_params(p)


def test_cache_roundtrip_and_mask_mismatch(tmp_path, raw, index_frame):
    sub = index_frame[index_frame["mask"] != ""].head(3).reset_index(drop=True)
    sub = pd.concat([sub, index_frame[index_frame["source"] == "kermany"].head(2)]).reset_index(drop=True)
    sub.to_csv(tmp_path / "index.csv", index=False)
    meta = preprocess.build_cache(sub, raw, tmp_path / "cache", _recipe(size=32), 1, "x")
    assert meta["n"] == 5 and meta["with_mask"] == 3
    cache = Cache(tmp_path / "cache", tmp_path / "index.csv")
    assert cache.images.shape == (5, 1, 32, 32) and cache.masks[:3].sum() > 0 and cache.masks[3:].sum() == 0
    # a mask of the wrong size is an error naming both files
    bad = raw / "v7_masks" / "bad.png"
    from PIL import Image
    Image.new("L", (7, 7)).save(bad)
    broken = sub.head(1).assign(mask="v7_masks/bad.png")
    with pytest.raises(preprocess.MaskMismatchError, match=r"bad\.png.*images/"):
        preprocess.build_cache(broken, raw, tmp_path / "cache2", _recipe(size=32), 1, "x")
    assert not (tmp_path / "cache2").exists()


def test_batch_loader_order_is_reproducible_per_epoch():
    images = np.arange(10 * 4, dtype=np.uint8).reshape(10, 1, 2, 2)
    targets = np.arange(10, dtype=np.float32)[:, None]
    rows = np.arange(10)[::-1].copy()
    a = BatchLoader(images, targets, rows, 3, shuffle=True, seed=5)
    first = [r.tolist() for _, _, r in a]
    second = [r.tolist() for _, _, r in a]
    b = BatchLoader(images, targets, rows, 3, shuffle=True, seed=5, prefetch=0)
    b.epoch = 1
    assert [r.tolist() for _, _, r in b] == second != first
    x, y, r = next(iter(BatchLoader(images, targets, rows, 4)))
    assert x.dtype.is_floating_point is False and (x.numpy() == images[r.numpy()]).all()
    assert (y[:, 0].numpy() == np.arange(4)).all()  # targets follow position, images follow rows


# --- profiles ---------------------------------------------------------------------------------


def test_profiles_become_dvc_overrides(tmp_path):
    root = Path(__file__).resolve().parents[2]
    over = profiles.resolve_paths(profiles.read_profile("ci", root), root)
    assert Path(over["sources.kermany.mirror"]).is_absolute()  # outside the repo -> absolute
    sample = profiles.resolve_paths(profiles.read_profile("sample", root), root)
    assert sample["sources.kermany.mirror"] == "data/sample/chest_xray"  # inside -> stays relative
    assert sample["index.kermany_subset.NORMAL"] is None
    cmd = profiles.exp_command("sample", sample, [], True, None)
    assert cmd[:4] == ["dvc", "exp", "run", "--temp"]
    assert "index.kermany_subset.NORMAL=null" in cmd and "preprocess.size=128" in cmd
    assert profiles.hydra_value(["a", 1, None]) == "[a,1,null]"          # a bare name needs no quotes
    assert profiles.hydra_value(["1", "null", "a b"]) == "['1','null','a b']"   # these do: Hydra reads them otherwise
    from hydra.core.override_parser.overrides_parser import OverridesParser
    assert OverridesParser.create().parse_override("k=" + profiles.hydra_value(["a", 1, None, "1"])).value() == \
        ["a", 1, None, "1"]
    for name in ("ci", "sample", "mirror"):
        profiles.check_keys(profiles.read_profile(name, root), __import__("yaml").safe_load(
            open(root / "params.yaml")), name)
    with pytest.raises(ParamError, match="profile 'x'"):
        profiles.check_keys({"split.nope": 1}, {"split": {}}, "x")


def test_profile_overrides_from_the_command_line():
    sets = profiles.parse_sets(["preprocess.channels=[raw,clahe]", "index.kermany_subset.NORMAL=null"])
    assert sets == {"preprocess.channels": ["raw", "clahe"], "index.kermany_subset.NORMAL": None}
    cmd = profiles.exp_command("sample", {"preprocess.size": 64}, [], True, "x", queue=True)
    assert cmd[:4] == ["dvc", "exp", "run", "--queue"] and "--temp" not in cmd
    with pytest.raises(ValueError, match="KEY=VALUE"):
        profiles.parse_sets(["preprocess.size"])


def test_fold_parts_reads_joined_parts():
    s = pd.DataFrame({"path": list("abcd"), "part_f0": ["train", "test+val", "unused", "train+test"]})
    parts = splitting.fold_parts(s, 0)
    assert list(parts["train"]["path"]) == ["a", "d"]
    assert list(parts["val"]["path"]) == ["b"]
    assert list(parts["test"]["path"]) == ["b", "d"]


def test_fixed_intensity_range_as_the_authors_code():
    img = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    out = preprocess.prepare(img, _recipe(size=64, intensity="fixed", fixed_range=(0.0, 207.0)))[0]
    # values above 207/255 saturate, below scale linearly: about (255-207)/255 of the pixels are 255
    assert abs((out == 255).mean() - 48 / 255) < 0.01
    assert out[0, 0] == 0 and 96 <= out[20, 0] <= 100  # 0.3126 * 255 / 207 * 255 = 98.2


def test_profile_runner_passes_arguments_after_double_dash(capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    assert profiles.main(["show", "sample", "--set", "cohort=paper", "--", "ensemble", "--force"]) == 0
    out = __import__("shlex").split(capsys.readouterr().out.replace("\\\n", " "))   # lines joined as a shell does
    assert out[-2:] == ["ensemble", "--force"] and "cohort=paper" in out


def test_preprocess_refuses_to_start_on_a_full_disk(tmp_path, raw, index_frame, monkeypatch):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(preprocess.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    recipe = preprocess.Recipe(size=64, percentiles=(1, 95), channels=("raw",))
    with pytest.raises(preprocess.DiskFullError, match=r"needs .* GiB .* free.*preprocess.size"):
        preprocess.build_cache(index_frame, raw, tmp_path / "cache", recipe, 1, "x")
    assert not (tmp_path / "cache").exists()


def test_every_stage_takes_the_same_overrides(tmp_path):
    from cxrbench.core import params as P

    root = Path(__file__).resolve().parents[2]
    p = P.stage_params(None, ["--params", str(root / "params.yaml"), "--set", "preprocess.size=64",
                              "--set", "index.kermany_subset={NORMAL: 3, virus: 2, bacteria: 1}"])
    assert p["preprocess"]["size"] == 64 and p["index"]["kermany_subset"] == {"NORMAL": 3, "virus": 2, "bacteria": 1}
    # overrides come before the authors' protocol, so --set cohort=paper applies it
    paper = P.stage_params(None, ["--params", str(root / "params.yaml"), "--set", "cohort=paper"])
    assert paper["preprocess"]["intensity"] == "percentile"        # protocol: corrected (the default)
    paper = P.stage_params(None, ["--params", str(root / "params.yaml"), "--set", "cohort=paper",
                                  "--set", "protocol=paper"])
    assert paper["preprocess"]["intensity"] == "fixed" and paper["evaluate"]["cut"] == "gt"
    with pytest.raises(ParamError, match="preprocess.sise"):
        P.stage_params(None, ["--params", str(root / "params.yaml"), "--set", "preprocess.sise=64"])
    assert profiles.parse_sets(["a.b=1"]) == P.parse_overrides(["a.b=1"]) == {"a.b": 1}


def test_altered_copy_with_text_and_crop_joins_the_groups(raw, params, tmp_path):
    """A copy with a caption burned in and a cropped border (as extubation-1.jpg of AR-2.jpg) is linked;
    different patients' films are not."""
    import shutil

    from PIL import Image, ImageDraw

    from cxrbench.data import copies

    images = sorted((raw / "covid_chestxray/images").glob("*.jp*g"))[:6]
    root = tmp_path / "raw"
    (root / "x").mkdir(parents=True)
    for f in images:
        shutil.copy(f, root / "x" / f.name)
    im = Image.open(images[0]).convert("L")
    w, h = im.size
    altered = im.crop((0, 0, w, int(h * 0.92)))                           # bottom 8 % cut off
    draw = ImageDraw.Draw(altered)
    draw.rectangle((int(w * 0.55), int(h * 0.78), int(w * 0.8), int(h * 0.86)), fill=0)
    draw.text((int(w * 0.58), int(h * 0.79)), "day 1", fill=255)         # a burned-in caption
    altered.save(root / "x" / "altered.png")
    names = [f.name for f in images] + ["altered.png"]
    frame = pd.DataFrame({"path": [f"x/{n}" for n in names], "patient": [f"p{i}" for i in range(len(names))]})
    frame["group"] = frame["patient"]
    p = copies.validate(params)
    out, rep = copies.link_altered_copies(frame, root, p, 1)
    assert rep["altered_copies_across_groups"] == 1, rep["altered_copies"]
    pair = rep["altered_copies"][0]
    assert {pair["a"], pair["b"]} == {f"x/{images[0].name}", "x/altered.png"}
    assert pair["inliers"] >= p["copy_min_inliers"]
    assert out["group"].iat[0] == out["group"].iat[-1] and out["group"].nunique() == len(names) - 1
    assert rep["groups_merged"] == 1
    # every candidate pair is either verified (its exact count in the histogram) or had too few matches
    assert rep["pairs_under_min_matches"] + sum(rep["inlier_histogram"].values()) == rep["candidate_pairs"]


def _hflip(im):
    return im.transpose(Image.FLIP_LEFT_RIGHT)


def _jpeg(im, quality=70):
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("L")


COPY_ALTERATIONS = {
    "mirrored": _hflip,
    "flipped_upside_down": lambda im: im.transpose(Image.FLIP_TOP_BOTTOM),
    "rotated_90": lambda im: im.transpose(Image.ROTATE_90),
    "rotated_270_and_rescaled": lambda im: im.transpose(Image.ROTATE_270).resize(
        (im.height * 3 // 4, im.width * 3 // 4), Image.BICUBIC),
    "mirrored_cropped_and_jpeg": lambda im: _jpeg(_hflip(im).crop(
        (int(im.width * 0.04), int(im.height * 0.06), int(im.width * 0.97), int(im.height * 0.93)))),
    "transposed_and_jpeg": lambda im: _jpeg(im.transpose(Image.TRANSPOSE), 60),
}


@pytest.mark.parametrize("alteration", sorted(COPY_ALTERATIONS))
def test_mirrored_or_rotated_copy_joins_the_groups(raw, params, tmp_path, alteration):
    """A re-uploaded copy that was mirrored, flipped or turned by a right angle (and cropped, rescaled, JPEG
    re-encoded) under another patient id is linked to its original, even when it must be the image's single
    best candidate; the other patients' films (and their mirror images) stay apart."""
    import shutil

    from cxrbench.data import copies

    images = sorted((raw / "covid_chestxray/images").glob("*.jp*g"))[:8]
    root = tmp_path / "raw"
    (root / "x").mkdir(parents=True)
    for f in images:
        shutil.copy(f, root / "x" / f.name)
    COPY_ALTERATIONS[alteration](Image.open(images[2]).convert("L")).save(root / "x" / "copy.png")
    names = [f.name for f in images] + ["copy.png"]
    frame = pd.DataFrame({"path": [f"x/{n}" for n in names], "patient": [f"p{i}" for i in range(len(names))]})
    frame["group"] = frame["patient"]
    p = {**copies.validate(params), "copy_candidates": 1}      # the copy must be found as the best candidate
    out, rep = copies.link_altered_copies(frame, root, p, 1)
    assert rep["altered_copies_across_groups"] == 1, rep["altered_copies"]
    pair = rep["altered_copies"][0]
    assert {pair["a"], pair["b"]} == {f"x/{images[2].name}", "x/copy.png"}
    assert pair["inliers"] >= p["copy_min_inliers"]
    assert out["group"].iat[2] == out["group"].iat[-1] and out["group"].nunique() == len(names) - 1


def test_packed_descriptor_matching_equals_scikit_image(raw):
    """The copy search's popcount matcher returns what skimage's match_descriptors does on the unpacked bits,
    so the inlier counts of copies as they are stay those of the thumbnail-only search."""
    from skimage.feature import match_descriptors

    from cxrbench.data import copies

    files = sorted((raw / "covid_chestxray/images").glob("*.jp*g"))[:5]
    feats = [copies._features(str(f)) for f in files]
    for a in feats:
        for b in feats:
            for da, db in [(a[1][1], b[1][1]), (a[1][1], b[2][1])]:
                ref = match_descriptors(np.unpackbits(da, axis=1).astype(bool), np.unpackbits(db, axis=1).astype(bool),
                                        cross_check=True, max_ratio=0.8)
                assert np.array_equal(copies.match(da, db), ref)


# --- preprocess on a disk that fills, and a parent that dies ----------------------------------

_ROOT = Path(__file__).resolve().parents[2]


def _grey_seven(job):
    return np.full((1, 32, 32), 7, np.uint8), None


def test_a_disk_that_fills_after_the_check_is_an_error_not_sigbus(tmp_path, monkeypatch):
    """The free-space check passes, then the disk is full: the cache's blocks are reserved before any image is
    written, so this is ENOSPC with a message (it was SIGBUS, rc 135, from the memory map)."""
    index = pd.DataFrame({"path": [f"i{k}.png" for k in range(8)], "mask": [""] * 8})
    recipe = preprocess.Recipe(size=32, percentiles=(1, 95), channels=("raw",))

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(preprocess.os, "posix_fallocate", full, raising=False)
    monkeypatch.setattr(preprocess, "_work", _grey_seven)
    with pytest.raises(preprocess.DiskFullError, match=r"cannot reserve .*/images\.npy.*free space") as err:
        preprocess.build_cache(index, tmp_path, tmp_path / "cache", recipe, 1, "x")
    assert err.value.errno == errno.ENOSPC and not (tmp_path / "cache").exists()

    def refused(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")
    monkeypatch.setattr(preprocess.os, "posix_fallocate", refused, raising=False)
    with pytest.raises(OSError, match=r"cannot reserve .*the filesystem refused"):
        preprocess.build_cache(index, tmp_path, tmp_path / "cache", recipe, 1, "x")


def test_a_real_full_disk_is_an_error_not_sigbus(tmp_path):
    """The same on a real 1 MiB tmpfs (in a private mount namespace; skipped where that is not allowed)."""
    import shutil as sh
    import subprocess
    import sys

    if sh.which("unshare") is None:
        pytest.skip("no unshare")
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = (
        "import sys, numpy as np, pandas as pd\n"
        "from pathlib import Path\n"
        "from cxrbench.data import preprocess as pp\n"
        "pp.check_free_space = lambda out, needed, margin=1.05: None\n"        # the disk fills after the check
        "def work(job):\n"
        "    return np.full((1, 64, 64), 7, np.uint8), None\n"
        "pp._work = work\n"
        "index = pd.DataFrame({'path': [f'i{k}.png' for k in range(300)], 'mask': [''] * 300})\n"
        "r = pp.Recipe(size=64, percentiles=(1, 95), channels=('raw',))\n"
        "pp.build_cache(index, Path(sys.argv[1]), Path(sys.argv[1]) / 'cache', r, 1, 'x')\n")
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m none {mnt}"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.decode().strip()}")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o size=1m none {mnt} && '
                           f'exec "$0" -c "$1" {mnt}', sys.executable, script], capture_output=True, text=True,
                          cwd=_ROOT, env={**__import__("os").environ, "PYTHONPATH": str(_ROOT)}, timeout=60)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])          # not -7 / 135 (SIGBUS)
    assert "DiskFullError" in proc.stderr and "cannot reserve" in proc.stderr and "free space" in proc.stderr


def test_preprocess_workers_end_with_their_parent(tmp_path):
    """Kill the stage mid-build: its decoding workers are gone within seconds, not orphaned."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "import pandas as pd\n"
        "from cxrbench.data import preprocess as pp\n"
        "def slow(job):\n"
        "    Path(sys.argv[1], str(os.getpid())).touch()\n"
        "    time.sleep(120)\n"
        "pp._work = slow\n"
        "index = pd.DataFrame({'path': ['a.png'] * 40, 'mask': [''] * 40})\n"
        "r = pp.Recipe(size=16, percentiles=(1, 95), channels=('raw',))\n"
        "pp.build_cache(index, Path(sys.argv[1]), Path(sys.argv[2]) / 'cache', r, 2, 'x')\n")
    marks = tmp_path / "pids"
    marks.mkdir()
    parent = subprocess.Popen([sys.executable, "-c", script, str(marks), str(tmp_path)], cwd=_ROOT,
                              env={**os.environ, "PYTHONPATH": str(_ROOT)})
    workers: list[int] = []
    try:
        deadline = time.time() + 60
        while len(workers) < 2 and time.time() < deadline:
            time.sleep(0.2)
            workers = [int(p.name) for p in marks.iterdir()]
        assert len(workers) == 2, "the workers did not start"
        parent.send_signal(signal.SIGKILL)
        parent.wait()

        def alive(pid: int) -> bool:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                return False
            return state != "Z"                                          # a zombie has ended

        deadline = time.time() + 5
        while any(alive(p) for p in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(alive(p) for p in workers), "orphaned workers outlived the killed preprocess"
    finally:
        for pid in workers:                                              # only the workers this test started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue


# --- the decoder and hostile images -----------------------------------------------------------

def huge_png(path: Path, width: int = 12000, height: int = 10000) -> Path:
    """A valid grey PNG of ``width`` x ``height`` black pixels: 120 megapixels in about 117 kB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row, parts = zlib.compressobj(9), bytes(width + 1), []
    for _ in range(height):
        parts.append(z.compress(row))
    parts.append(z.flush())
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
    return path


def float_tiff(path: Path, bad: float | None) -> Path:
    from PIL import Image

    arr = np.linspace(0, 300, 64 * 48, dtype=np.float32).reshape(64, 48)
    if bad is not None:
        arr[5, 7] = bad
    Image.fromarray(arr, mode="F").save(path, format="TIFF")
    return path


def test_the_decoder_checks_the_declared_size_before_decoding(tmp_path):
    from PIL import Image

    from cxrbench.data import images

    big = huge_png(tmp_path / "bomb.png")
    assert big.stat().st_size < 200_000
    with pytest.raises(images.ImageTooLargeError, match=r"12000 x 10000 = 120,000,000 pixels, over the limit"):
        images.load_grey(big, max_pixels=50_000_000)
    assert issubclass(images.ImageTooLargeError, images.DECODE_ERRORS)     # the index lists it, as any bad file
    assert load_params(_ROOT / "params.yaml")["predict"]["max_pixels"] < Image.MAX_IMAGE_PIXELS
    small = huge_png(tmp_path / "small.png", 30, 20)
    assert images.load_grey(small, max_pixels=600).shape == (20, 30)     # at the limit: read


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_float_image_with_non_finite_pixels_is_a_bad_file(tmp_path, bad):
    from cxrbench.data import images

    with pytest.raises(images.NonFiniteImageError, match=r"1 NaN or infinite pixel"):
        images.load_grey(float_tiff(tmp_path / "x.tif", bad))
    grey = images.load_grey(float_tiff(tmp_path / "ok.tif", None))          # finite float images: unchanged
    assert grey.min() == 0 and grey.max() == 1 and np.isfinite(grey).all()


def test_the_decoder_refuses_a_fifo_without_blocking(tmp_path):
    import os
    import threading

    from cxrbench.data import images

    fifo = tmp_path / "scan.png"
    os.mkfifo(fifo)

    fired = []

    def unblock():                       # before the fix the decoder waits for a writer: give it EOF
        fired.append(True)
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    timer = threading.Timer(10, unblock)
    timer.start()
    try:
        with pytest.raises(images.NotRegularFileError, match=r"scan\.png is a FIFO .*not a regular file"):
            images.load_grey(fifo)
        with pytest.raises(images.NotRegularFileError, match="is a folder"):
            images.load_grey(tmp_path)
        assert not fired, "the decoder blocked on the FIFO until the test wrote to it"
    finally:
        timer.cancel()


def test_a_count_that_cannot_reach_the_threshold_skips_ransac(raw, params, monkeypatch):
    """``inliers(..., need)``: RANSAC runs only for pairs with at least ``need`` matches (their count is exact),
    the others are NOT_VERIFIED: they cannot reach ``need``, so the copy search (which needs no count below
    copy_min_inliers) finds the copies of the exact search."""
    import skimage.measure

    from cxrbench.data import copies

    need = copies.validate(params)["copy_min_inliers"]
    files = sorted((raw / "covid_chestxray/images").glob("*.jp*g"))[:4]
    im = Image.open(files[0]).convert("L")
    copy = _jpeg(im.crop((0, 0, im.width, int(im.height * 0.9))))            # a cropped, re-encoded copy
    feats = [copies._features(str(f)) for f in files]
    feats.append(copies._features(str(files[0]), loader=lambda _: np.asarray(copy, np.float32) / 255))
    exact = {(i, j): copies.verify_pair(feats[i], feats[j]) for i in range(5) for j in range(5) if i != j}
    assert max(max(v) for v in exact.values()) >= need                     # the copy pair reaches it
    calls = []
    real = skimage.measure.ransac
    monkeypatch.setattr(skimage.measure, "ransac", lambda *a, **k: calls.append(1) or real(*a, **k))
    for (i, j), counts in exact.items():
        enough = [len(copies.match(feats[i][1][1], feats[j][k][1])) >= need for k in (1, 2)]
        fast = copies.verify_pair(feats[i], feats[j], need)
        assert fast == tuple(n if e else copies.NOT_VERIFIED for n, e in zip(counts, enough))
        assert (max(fast) >= need) == (max(counts) >= need)                # the same decision
    matched = sum(len(copies.match(feats[i][1][1], feats[j][k][1])) >= need for i, j in exact for k in (1, 2))
    assert len(calls) == matched < 2 * len(exact)
