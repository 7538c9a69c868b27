"""Stage severity: do the maps spread over the lungs as the radiologists' severity scores do?

covid-chestxray-dataset's annotations/covid-severity-scores.csv gives, for 94 images, the mean of three
radiologists' geographic extent (0-8) and opacity (0-6) scores (CC BY-SA, Cohen et al. 2020). For the
held-out test images that have a score, each classifier of train.backbones x train.folds is explained
with every method of severity.methods (target: severity.target), and the share of positive relevance
inside the segment stage's lung mask is rank-correlated with the score (Spearman, CI over patients);
per backbone the share is the mean over its folds. Control: a uniform random map (its share is the lung
mask's area share), so a method is only plausible where it beats the mask's own correlation.

Writes metrics/severity.json and metrics/severity.md; with severity.methods empty, only that status.
Images are untagged (the planted tag is not applied here).
"""

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrbench.classify import training
from cxrbench.core import bootstrap, runtime
from cxrbench.core import params as P
from cxrbench.core.io import write_json, write_text
from cxrbench.data.cache import Cache
from cxrbench.explain import attribution as A
from cxrbench.lungs.segmentation import LUNG_MASKS, load_lung_masks
from cxrbench.studies import severity

OUT_JSON, OUT_MD = "metrics/severity.json", "metrics/severity.md"


def main() -> None:
    params = P.stage_params(__doc__)
    sv = P.section(params, "severity")
    methods = sv.get("methods")
    if not isinstance(methods, list):
        raise P.ParamError("severity.methods", f"expected a list of attribution methods ([] skips), got {methods!r}")
    for m in methods:
        A.check_method(m, "severity.methods")
    score_col = P.check_choice("severity.score", sv.get("score"), ["extent", "opacity"])
    if not methods:
        write_json(OUT_JSON, {"status": "skipped", "reason": "severity.methods is empty"})
        write_text(OUT_MD, "### Severity plausibility\n\nSkipped: severity.methods is empty.\n")
        print("severity: skipped (severity.methods is empty)")
        return
    stats = bootstrap.validate(params)
    rt = runtime.configure()
    device = runtime.device()
    s = A.validate(params)
    target_name = sv.get("target")
    scores_file = Path(sv.get("scores_file", ""))
    scores = severity.read_scores(scores_file)
    meta_lines = severity.read_scores_meta(scores_file)

    cache = Cache("data/cache", "data/index.csv")
    splits = pd.read_csv("data/splits.csv", keep_default_na=False)
    test = splits[splits["split"] == "test"]
    scored = test.merge(scores, on="path", how="inner").reset_index(drop=True)
    base = {"scores_file": str(scores_file), "score": score_col, "scored_images": int(len(scores)),
            "scored_test_images": int(len(scored)), "scored_test_groups": int(scored["group"].nunique()),
            "license": meta_lines, "methods": methods, "target": target_name}
    if len(scored) < 5:
        write_json(OUT_JSON, {**base, "status": "too_few", "reason": f"{len(scored)} scored test images (< 5)"})
        write_text(OUT_MD, f"### Severity plausibility\n\nNot scored: {len(scored)} held-out test images have a "
                           f"severity score (< 5).\n")
        print(f"severity: too few scored test images ({len(scored)})")
        return
    rows = cache.rows(scored["path"])
    if not Path(LUNG_MASKS).is_file():
        raise FileNotFoundError(f"{LUNG_MASKS} not found: run the segment stage (dvc repro segment)")
    lungs = np.asarray(load_lung_masks(len(cache.index), mmap=True)[rows])
    checkpoint = training.checkpoint_file(params)
    shares: dict = {}          # backbone -> method -> list over folds of (N,) shares
    status: dict = {}
    for bb in P.section(params, "train.backbones"):
        for k in P.section(params, "train.folds"):
            model, meta = A.load_classifier(bb, k, device, checkpoint)
            labels = list(meta["labels"])
            if target_name not in labels:
                raise P.ParamError("severity.target", f"{target_name!r} is not among the classifier's labels")
            x = A.classifier_input(cache.images[rows], meta, device, lungs)
            masks = A.resize_masks(lungs, tuple(x.shape[-2:]))
            target = torch.full((len(x),), labels.index(target_name), device=device)
            run = A.attribute_all(methods, model, x, target, s, bb, log=lambda msg: print(f"  {bb}-f{k}" + msg))
            maps = run.maps
            status[f"{bb}-f{k}"] = run.status
            for m, a in maps.items():
                v, map_status = severity.lung_share(a.astype(np.float32), masks)
                shares.setdefault(bb, {}).setdefault(m, []).append(v)
                status[f"{bb}-f{k}"][m]["maps"] = severity.share_counts(map_status)
            area = masks.reshape(len(masks), -1).mean(1)
            shares.setdefault(bb, {}).setdefault("lung area (random map)", []).append(area)
            print(f"severity: {bb}-f{k} {len(maps)}/{len(methods)} methods on {len(x)} scored test images")
    y = scored[score_col].to_numpy(float)
    groups = scored["group"].to_numpy()
    results = {}
    for bb, per in shares.items():
        for m, folds in per.items():
            v = np.stack(folds).mean(0)          # NaN where any fold's map is degenerate: correlate() drops and counts
            results.setdefault(bb, {})[m] = severity.correlate(v, y, groups, n_boot=stats["resamples"],
                                                               seed=stats["seed"], confidence=stats["confidence"])
    write_json(OUT_JSON, {**base, "status": "ok", "results": results, "methods_status": status, "runtime": rt})
    write_text(OUT_MD, "\n".join([
        "### Severity plausibility", "",
        f"Spearman correlation between the share of positive relevance inside the lungs and the radiologists' "
        f"{score_col} score, {len(scored)} held-out test images of {scored['group'].nunique()} patients "
        f"(mean over folds per backbone; CI over patients; dropped: images whose map was degenerate in some fold). Control: the lung mask's area share (what a "
        f"uniform random map gives). Scores: {scores_file.name} (CC BY-SA, Cohen et al. 2020).", "",
        severity.severity_table(results), ""]))
    print(f"severity: {OUT_MD}")


if __name__ == "__main__":
    main()
