"""Build data/sample, the small embedded real sample, from a mirror of the sources.

    python scripts/make_sample.py ../shared/data

Keeps the upstream layout and file names. covid-chestxray-dataset: frontal
X-rays whose metadata license allows redistribution of a modified copy (CC BY,
CC BY-SA, CC BY-NC-SA, Apache 2.0; no blank license, no ND), up to 2 per
finding (COVID-19: 24, preferring images with a V7 lung mask), downscaled to
384 px on the longer side with their masks; one metadata row whose file is
missing upstream of the mirror is kept so the missing-file path is exercised.
Kermany: 20 images per class (CC BY 4.0), unchanged (224 px in the mirror).
"""

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ALLOWED = ("CC BY", "CC BY 3.0", "CC BY 4.0", "CC BY-SA", "CC BY-NC-SA", "CC BY-NC-SA 4.0", "Apache 2.0")
FRONTAL = ("PA", "AP", "AP Supine")
MAX_SIDE = 384
PER_FINDING = 2
COVID_N = 24
KERMANY_N = 20
SEED = 7


def shrink(src: Path, dst: Path, size=None, mask=False) -> tuple[int, int]:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        if size is None:
            scale = min(1.0, MAX_SIDE / max(im.size))
            size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
        im = im.convert("L").resize(size, Image.BILINEAR if mask else Image.LANCZOS)
        fmt = "PNG" if dst.suffix.lower() == ".png" else "JPEG"
        im.save(dst, fmt, **({} if fmt == "PNG" else {"quality": 95 if mask else 90}))
        return size


def main(mirror: Path, out: Path = Path("data/sample")) -> None:
    if out.exists():
        shutil.rmtree(out)
    cc_src, cc_out = mirror / "covid-chestxray-dataset", out / "covid-chestxray-dataset"
    meta = pd.read_csv(cc_src / "metadata.csv", dtype=str, keep_default_na=False, encoding_errors="replace")
    masks = {p.name for p in (mirror / "semantic_masks_v7labs_lungs").iterdir()}
    ok = (meta["modality"] == "X-ray") & meta["view"].isin(FRONTAL) & meta["license"].str.strip().isin(ALLOWED)
    present = meta["filename"].map(lambda f: (cc_src / "images" / f).is_file())
    cand = meta[ok & present].drop_duplicates("filename")
    cand = cand.assign(has_mask=cand["filename"].isin(masks)).sort_values(["has_mask", "filename"],
                                                                         ascending=[False, True])
    picked = []
    for finding, sub in cand.groupby("finding", sort=True):
        picked.append(sub.head(COVID_N if finding == "COVID-19" else PER_FINDING))
    picked = pd.concat(picked)
    missing_row = meta[ok & ~present & meta["folder"].eq("images")].head(1)
    rows = meta.loc[sorted(set(picked.index) | set(missing_row.index))]
    cc_out.mkdir(parents=True)
    rows = rows.rename(columns=lambda c: "" if c.startswith("Unnamed:") else c)  # upstream's trailing column
    rows.to_csv(cc_out / "metadata.csv", index=False, encoding="utf-8")
    # the radiologists' severity scores (CC BY-SA, Cohen et al. 2020), whole: the severity stage reads them
    (cc_out / "annotations").mkdir()
    shutil.copy2(cc_src / "annotations" / "covid-severity-scores.csv", cc_out / "annotations")
    for fn in picked["filename"]:
        size = shrink(cc_src / "images" / fn, cc_out / "images" / fn)
        if fn in masks:
            shrink(mirror / "semantic_masks_v7labs_lungs" / fn, out / "semantic_masks_v7labs_lungs" / fn, size, mask=True)
    km_src, km_out = mirror / "chest_xray" / "train", out / "chest_xray" / "train"
    rng = np.random.default_rng(SEED)
    for folder, pattern in (("NORMAL", "*.jpeg"), ("PNEUMONIA", "*_bacteria_*"), ("PNEUMONIA", "*_virus_*")):
        files = sorted((km_src / folder).glob(pattern))
        for i in sorted(rng.choice(len(files), KERMANY_N, replace=False)):
            (km_out / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy2(files[i], km_out / folder / files[i].name)
    licenses = picked.groupby(picked["license"].str.strip()).size()
    (cc_out / "README.md").write_text(
        "# covid-chestxray-dataset: embedded sample\n\n"
        "A subset of https://github.com/ieee8023/covid-chestxray-dataset at commit "
        "0f7245db6f5aa4001ea75cf69fe6cfe091928403 (Cohen et al. 2020), upstream layout and file names. "
        f"Images downscaled to at most {MAX_SIDE} px (longer side) and stored grey. Each image keeps the "
        "license of its metadata.csv row (column `license`); only licenses that allow redistributing a "
        "modified copy were taken:\n\n" + "".join(f"- {k}: {v} images\n" for k, v in licenses.items()) +
        f"\nOne metadata row ({', '.join(missing_row['filename'])}) lists a file that is not shipped (it is "
        "missing from the project's mirror too): the index stage must report and skip it.\n")
    print(f"covid: {len(picked)} images ({int(picked['has_mask'].sum())} with masks), "
          f"kermany: {3 * KERMANY_N}, missing rows kept: {len(missing_row)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
