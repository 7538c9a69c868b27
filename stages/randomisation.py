"""Stage randomisation: do the maps depend on the model's weights and on the class explained?

For every classifier of train.backbones x train.folds, on the first ``randomisation.images`` images of
data/attributions/{backbone}-f{fold}.npz (the attribute stage's held-out images, targets and masks), the
methods of ``randomisation.methods`` (null: explain.methods, with the explain.* settings) are run on the
trained model, on each step of the cascading randomisation (the top k layer groups re-initialised,
k = 1 .. all; Adebayo et al. 2018), on a second, independent full randomisation (the null reference) and,
on the trained model, for another label drawn per image (the random-logit check; Sixt et al. 2020).
Per image: signed and |map| Spearman and SSIM (randomisation.metrics); degenerate maps are counted, not
scored (cxrbench/explain/randomisation.py holds the definitions).

Writes metrics/randomisation.json (per method x backbone, per step, the null and the random logit: mean
over folds of the mean over images, patient-bootstrap CI, n and status counts; the layer groups and the
timings per model), metrics/randomisation.md, plots/randomisation/cascade.csv (the curves, long form) and
plots/randomisation/cascade.png (similarity vs number of randomised groups, one curve per method, the
null reference as a band).
"""

import time
import zlib

import numpy as np
import pandas as pd
import torch

from cxrbench.classify import training
from cxrbench.core import bootstrap, runtime
from cxrbench.core import params as P
from cxrbench.core.io import write_csv, write_json, write_text
from cxrbench.core.plotting import plt, save
from cxrbench.data import confounder
from cxrbench.data.cache import Cache
from cxrbench.explain import attribution as A
from cxrbench.explain import randomisation as R

OUT_JSON, OUT_MD = "metrics/randomisation.json", "metrics/randomisation.md"
OUT_CSV, OUT_PNG = "plots/randomisation/cascade.csv", "plots/randomisation/cascade.png"


def figure(curves: pd.DataFrame, metrics: list, methods: list, path: str) -> None:
    """Similarity vs number of randomised groups, one curve per method, one panel per metric x backbone;
    the method's null reference (two independent randomisations) as a band (CI) around a dotted line."""
    backbones = list(dict.fromkeys(curves["backbone"])) if len(curves) else []
    if not backbones:
        fig = plt.figure()
        fig.text(0.5, 0.5, "no randomisation result (every model skipped)", ha="center")
        save(fig, path)
        return
    fig, axes = plt.subplots(len(metrics), len(backbones), figsize=(5.2 * len(backbones), 3.4 * len(metrics)),
                             squeeze=False)
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for i, metric in enumerate(metrics):
        for j, b in enumerate(backbones):
            ax = axes[i, j]
            sub = curves[(curves["metric"] == metric) & (curves["backbone"] == b)]
            for m, g in sub.groupby("method", sort=False):
                g = g.sort_values("step")
                c = colours.get(m, "k")
                ax.plot(g["step"], g["similarity"].astype(float), marker="o", ms=3, color=c, label=m)
                null, lo, hi = (g[k].iloc[0] for k in ("null", "null_low", "null_high"))
                if null is not None and np.isfinite(float(null)):
                    ax.axhline(float(null), color=c, ls=":", lw=1)
                    if lo is not None and hi is not None and np.isfinite(float(lo)) and np.isfinite(float(hi)):
                        ax.axhspan(float(lo), float(hi), color=c, alpha=0.08, lw=0)
            layers = sub.drop_duplicates("step").sort_values("step")
            ax.set_xticks(layers["step"])
            ax.set_xticklabels(["trained"] + [f"+{lay}" for lay in layers["layer"].iloc[1:]], rotation=60,
                               fontsize=6, ha="right")
            ax.axhline(0, color="grey", lw=0.5)
            ax.set_title(f"{b}: {R.METRIC_NAMES.get(metric, metric)}", fontsize=9)
            ax.set_ylabel("similarity to the trained model's map", fontsize=7)
    axes[0, -1].legend(fontsize=6, loc="upper right")
    fig.suptitle("Cascading randomisation (top layer group down); dotted line and band: null reference "
                 "(two independently randomised models)", fontsize=9)
    fig.tight_layout()
    save(fig, path)


def main(argv: list[str] | None = None) -> None:
    params = P.stage_params(__doc__, argv)
    cfg = R.validate(params)
    s = A.validate(params)
    stats = bootstrap.validate(params)
    backbones = P.check_nonempty_list("train.backbones", P.section(params, "train.backbones"))
    folds = P.check_nonempty_list("train.folds", P.section(params, "train.folds"))
    checkpoint_file = training.checkpoint_file(params)
    rt = runtime.configure()
    device = runtime.device()
    cache = Cache("data/cache", "data/index.csv")
    confounder.apply(cache)                                 # the images as the attribute stage saw them
    splits = pd.read_csv("data/splits.csv", keep_default_na=False)
    group_of = dict(zip(splits["path"], splits["group"].astype(str)))

    t_all = time.perf_counter()
    frames, models = [], {}
    for bb in backbones:
        for k in folds:
            name = f"{bb}-f{k}"
            z = np.load(f"data/attributions/{name}.npz", allow_pickle=False)
            if "skipped" in z.files:
                models[name] = {"skipped": str(z["skipped"])}
                print(f"randomisation {name}: skipped ({z['skipped']})")
                continue
            t0 = time.perf_counter()
            n = min(cfg.images, len(z["rows"]))
            paths = z["paths"][:n].astype(str)
            model, meta = A.load_classifier(bb, k, device, checkpoint_file)
            labels = list(meta["labels"])
            x = A.classifier_input(cache.images[z["rows"][:n]], meta, device, z["masks"][:n])
            target = torch.as_tensor(z["target"][:n], device=device).long()
            other = R.other_labels(target.cpu().numpy(), len(labels), [cfg.seed, int(k), zlib.crc32(bb.encode())])
            max_batch = s.max_batch or A.estimate_max_batch(model, x, s.memory_fraction)
            failed: dict = {}

            def attribute(net, xx, t, label, name=name, max_batch=max_batch, failed=failed):
                t1 = time.perf_counter()
                run = A.attribute_all(cfg.methods, net, xx, t, s, bb, max_batch, log=lambda msg: None)
                maps, st = run.maps, run.status
                bad = {m: v["reason"] for m, v in st.items() if not v["ok"]}
                if bad:
                    failed[label] = bad
                print(f"  {name} {label}: {len(maps)}/{len(cfg.methods)} methods, {time.perf_counter() - t1:.1f}s"
                      + (f"; failed (recorded): {sorted(bad)}" if bad else ""))
                return maps, st

            print(f"randomisation {name}: {n} images, methods {cfg.methods}")
            rows, status = R.run_checks(model, x, target, torch.as_tensor(other, device=device), attribute,
                                        cfg.seed, cfg.metrics, log=lambda msg: None)
            frame = pd.DataFrame(rows)
            frame["backbone"], frame["fold"] = bb, int(k)
            frame["path"] = paths[frame["image"].to_numpy()]
            frame["group"] = [group_of.get(p, p) for p in frame["path"]]
            frames.append(frame)
            models[name] = {"images": int(n), "groups_top_down": status["groups"],
                            "other_labels": {labels[i]: int((other == i).sum()) for i in sorted(set(other.tolist()))},
                            "failed": failed, "max_batch": int(max_batch),
                            "seconds": round(time.perf_counter() - t0, 1)}
            print(f"randomisation {name}: {len(status['groups'])} layer groups, {models[name]['seconds']}s")

    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    t1 = time.perf_counter()
    summary = (R.summarise(frame, cfg.metrics, stats["resamples"], stats["seed"], stats["confidence"])
               if len(frame) else {})
    print(f"randomisation: {len(frame)} per-image similarities summarised ({stats['resamples']} resamples) in "
          f"{time.perf_counter() - t1:.1f}s")
    curves = pd.DataFrame(R.curve_rows(summary, cfg.metrics),
                          columns=["backbone", "method", "metric", "step", "layer", "similarity", "low", "high", "n",
                                   "null", "null_low", "null_high"])
    write_json(OUT_JSON, {
        "definition": {
            "cascade": "step k: the top k layer groups (cxrbench.explain.randomisation.cascade_groups) re-initialised; "
                       "similarity of each image's map to the trained model's (step 0: the trained model itself)",
            "null": "similarity between the maps of two independently, fully randomised models "
                    "(replicates 0 and 1): what the input alone produces",
            "random_logit": "the trained model's map for the target vs for another label (seeded choice)",
            "spearman": "rank correlation of the signed maps", "spearman_abs": "rank correlation of |map|",
            "ssim": "scikit-image SSIM of min-max normalised maps, data_range 1",
            "estimate": "mean over folds of the mean over compared images; CI: percentile bootstrap resampling "
                        "patient groups within each fold's images",
            "counts": "compared | changed_constant (the second map constant: passes, no similarity) | "
                      "changed_nonfinite | reference_degenerate (the first map constant or non-finite: excluded)"},
        "params": {"images": cfg.images, "methods": cfg.methods, "seed": cfg.seed, "metrics": cfg.metrics},
        "runtime": rt, "seconds": round(time.perf_counter() - t_all, 1), "models": models, "summary": summary})
    write_csv(OUT_CSV, curves)
    figure(curves, cfg.metrics, cfg.methods, OUT_PNG)
    table = R.markdown(summary, cfg.metrics, cfg.methods, cfg.images) if summary else \
        "### Model-parameter randomisation\n\nNo result: every model was skipped (see metrics/randomisation.json).\n"
    write_text(OUT_MD, table)
    print(table, end="")
    print(f"randomisation: {OUT_JSON}, {OUT_MD}, {OUT_PNG} in {time.perf_counter() - t_all:.0f}s")


if __name__ == "__main__":
    main()
