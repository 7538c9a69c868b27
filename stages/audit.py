"""Stage audit: the shortcut audit's table, every control against the full image (metrics/shortcut_audit.{json,md}).

Reads the test predictions of the main models and of every audit control's
models (audit.backbones x train.folds x audit.controls), drops test images whose
lung mask is implausible from every arm, scores audit.scores with paired
bootstrap CIs, and draws plots/shortcut_audit.png (AUROC per control) and
plots/shortcut_controls.png (what each model sees).
"""



import numpy as np
import pandas as pd

from cxrbench.core import paths
from cxrbench.core import bootstrap
from cxrbench.core import params as P
from cxrbench.core.io import read_json, write_json, write_text
from cxrbench.data.cache import Cache
from cxrbench.lungs import controls as audit_inputs
from cxrbench.lungs import segmentation as seg
from cxrbench.studies import audit


def test_part(path: str) -> pd.DataFrame:
    frame = pd.read_csv(path, keep_default_na=False)
    return frame[frame["split"] == "test"].reset_index(drop=True)


def main() -> None:
    params = P.stage_params(__doc__)
    a = audit.validate(params)
    stats = bootstrap.validate(params)
    max_area = P.section(params, "segment.implausible_max_area")
    folds = P.section(params, "train.folds")
    cache = Cache("data/cache", "data/index.csv", in_memory=False)
    masks = seg.load_lung_masks(len(cache.index), mmap=True)
    index = cache.index.set_index("path")
    row_of = pd.Series(np.arange(len(cache.index)), index=cache.index["path"])

    records, excluded = [], {}
    for bb in a["backbones"]:
        for k in folds:
            full = test_part(paths.run("main", bb, k).predictions)
            paths = list(full["path"])
            labels = [c[len("prob_"):] for c in full.columns if c.startswith("prob_")]   # the label table in use
            needed = {v for s in a["scores"].values() for v in (s["score"], s["truth"]) if not v.startswith("source=")}
            missing = sorted(needed - set(labels))
            if missing:
                raise P.ParamError("audit.scores", f"label(s) {missing} are not among the classifier's outputs "
                                                   f"{labels}: score labels the models predict")
            prob = {"full": full}
            for c in a["controls"]:
                frame = test_part(paths.run("audit", bb, k, c).predictions)
                if list(frame["path"]) != paths:
                    raise RuntimeError(f"{bb} fold {k}: the {c} model was evaluated on other test images than the "
                                       f"full-image model: rerun evaluate for both (dvc repro evaluate audit_evaluate)")
                prob[c] = frame
            keep = np.ones(len(paths), dtype=bool)
            for i, path in enumerate(paths):
                reasons = seg.implausible(masks[row_of[path]], max_area)
                if reasons:
                    keep[i] = False
                    if path not in excluded:
                        excluded[path] = {"path": path, "source": index.at[path, "source"], "reasons": reasons}
            records.append({
                "model": f"{bb}-f{k}", "paths": paths, "groups": index.loc[paths, "group"].to_numpy(),
                "source": index.loc[paths, "source"].to_numpy(), "keep": keep,
                "y": {n: full[f"y_{n}"].to_numpy(int) for n in labels},
                "prob": {arm: {n: f[f"prob_{n}"].to_numpy(float) for n in labels} for arm, f in prob.items()}})

    by_reason = {}
    for e in excluded.values():
        for r in e["reasons"]:
            by_reason[r] = by_reason.get(r, 0) + 1
    n_test = len({p for r in records for p in r["paths"]})
    options = audit_inputs.validate(a)
    segment = read_json("metrics/segment.json")
    result = {"backbones": a["backbones"], "folds": folds, "controls": a["controls"], "options": options,
              "confidence": stats["confidence"], "chance": audit.CHANCE,
              "scores": audit.analyse(records, a["scores"], a["controls"], stats),
              "excluded": {"count": len(excluded), "of": n_test, "by_reason": by_reason,
                           "images": sorted(excluded.values(), key=lambda e: e["path"])},
              "mask_plausibility": segment.get("by_source")}
    write_json("metrics/shortcut_audit.json", result)
    write_text("metrics/shortcut_audit.md", audit.markdown(result))
    audit.plot_scores(result, "plots/shortcut_audit.png")

    arms = ["full", *a["controls"]]
    first = records[0]
    picks = {}                                  # the first plausible test image of each source
    for path, src, ok in zip(first["paths"], first["source"], first["keep"]):
        if ok and src not in picks:
            picks[src] = int(row_of[path])
    rows = np.array(sorted(picks.values()))
    images = np.asarray(cache.images)           # the fill and template come from the whole cache, as in training
    shown = [images[rows]] + [audit_inputs.apply_control(images, np.asarray(masks), c,
                                                         P.section(params, "train.mask_dilation"), rows=rows,
                                                         **audit_inputs.options_for(c, a)) for c in a["controls"]]
    examples = {src: np.stack([s[list(rows).index(r)] for s in shown]) for src, r in sorted(picks.items())}
    audit.plot_controls(examples, arms, "plots/shortcut_controls.png")
    for name, s in result["scores"].items():
        if s["status"] != "ok":
            print(f"audit: {name}: {s['status']}")
            continue
        print(f"audit: {name}: " + ", ".join(f"{arm} {s['auroc'][arm]['mean']:.3f}" for arm in arms))
    print(f"audit: {len(excluded)} test image(s) with implausible masks excluded from every arm")


if __name__ == "__main__":
    main()
