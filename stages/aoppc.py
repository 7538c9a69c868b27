"""Stage aoppc: explanation metrics of every backbone x fold of data/attributions.

Per method, backbone and fold (mean +- std over images): AOPPC with the
paper's threshold levels (CXR-Net eq. 12) and with fraction (MoRF) levels,
the least-important-first (LeRF) control for both, the random-map baseline,
the share of attribution mass inside the lung mask, and the Spearman rank
correlation with the maps of a weight-randomised model (sanity check).
Degenerate maps (constant or non-finite) are a status, not a score: left out
of every metric of their method and counted; the common-set tables compare
all methods on the same (backbone, fold, image) set (cxrbench/aoppc_tables.py,
which holds the aggregation and the tables).

Writes metrics/aoppc.json, metrics/aoppc_table.md (next to CXR-Net's values),
plots/aoppc/curves.csv (method, level, p_drop: threshold MoRF, pooled),
plots/aoppc/curves_all.csv (every backbone/fold/scheme/order),
plots/aoppc/curves.png and plots/attributions/{backbone}.png (first fold).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from cxrbench import aoppc_tables as AT  # noqa: E402
from cxrbench import attribution as A  # noqa: E402
from cxrbench import explanation_metrics as EM  # noqa: E402
from cxrbench import params as P  # noqa: E402
from cxrbench import runtime, training  # noqa: E402
from cxrbench import confounder  # noqa: E402
from cxrbench.cache import Cache  # noqa: E402
from cxrbench.io import read_json, write_csv, write_json, write_text  # noqa: E402
from cxrbench.plotting import plt, save  # noqa: E402

RANDOM = AT.RANDOM


def figure(backbone: str, fold: int, images: np.ndarray, z, methods: list, path: Path, n: int = 3) -> None:
    have = [m for m in methods if m in z.files]
    n = min(n, len(images))
    cols = 2 + len(have)
    fig, axes = plt.subplots(n, cols, figsize=(1.8 * cols, 1.9 * n), squeeze=False)
    for i in range(n):
        img = images[i, 0]
        axes[i, 0].imshow(img, cmap="gray")
        axes[i, 1].imshow(img, cmap="gray")
        axes[i, 1].imshow(np.ma.masked_equal(z["masks"][i], 0), cmap="autumn", alpha=0.4)
        for j, m in enumerate(have):
            a = z[m][i].astype(np.float32)
            lim = float(np.abs(a).max()) or 1.0
            axes[i, 2 + j].imshow(img, cmap="gray")
            axes[i, 2 + j].imshow(a, cmap="bwr", vmin=-lim, vmax=lim, alpha=0.7)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    for j, title in enumerate(["image", "lung mask"] + have):
        axes[0, j].set_title(title, fontsize=7)
    fig.suptitle(f"{backbone} fold {fold}: attributions (red +, blue -)", fontsize=9)
    save(fig, path)


def main() -> None:
    params = P.stage_params(__doc__)
    checkpoint_file = training.checkpoint_file(params)
    s = A.validate(params)
    backbones = P.check_nonempty_list("train.backbones", P.section(params, "train.backbones"))
    folds = P.check_nonempty_list("train.folds", P.section(params, "train.folds"))
    importance = P.check_choice("aoppc.importance", P.section(params, "aoppc.importance"), ["signed", "abs"])
    per_batch = P.check_int("aoppc.images_per_batch", P.section(params, "aoppc.images_per_batch"), minimum=1)
    reference = P.section(params, "aoppc.reference") or {}
    seed = P.check_int("explain.seed", P.section(params, "explain.seed"))
    rt = runtime.configure()
    device = runtime.device()
    cache = Cache("data/cache", "data/index.csv")
    confounder.apply(cache)                                 # the planted shortcut (confounder.enabled; else a no-op)

    scores = AT.new_scores()     # per-image values and map statuses (cxrbench.aoppc_tables)
    curves = []                  # rows of curves_all.csv
    status: dict = {}

    for backbone in backbones:
        figure_done = False
        for fold in folds:
            key = f"f{fold}"
            npz = Path(f"data/attributions/{backbone}-f{fold}.npz")
            z = np.load(npz, allow_pickle=False)
            if "skipped" in z.files:
                status.setdefault(backbone, {})[key] = {"skipped": str(z["skipped"])}
                print(f"aoppc {backbone} fold {fold}: skipped ({z['skipped']})")
                continue
            att = read_json(f"metrics/attribute/{backbone}-f{fold}.json")
            model, meta = A.load_classifier(backbone, fold, device, checkpoint_file)
            x = A.classifier_input(cache.images[z["rows"]], meta, device, z["masks"])
            target = torch.as_tensor(z["target"], device=device)
            named = {m: EM.stored_maps(z, m) for m in s.methods if m in z.files}
            named[RANDOM] = EM.random_maps((len(x),) + tuple(x.shape[-2:]), seed + fold)
            randomised = {m: EM.stored_maps(z, f"rand__{m}") for m in named if f"rand__{m}" in z.files}

            def score(rows, maps, scheme, order, x=x, target=target, model=model):
                return EM.perturbation_curves(model, EM.take(x, rows), maps, EM.take(target, rows), scheme=scheme,
                                              order=order, mode=importance, images_per_batch=per_batch)

            curves += AT.score_fold(scores, backbone, fold, named, z["masks"], randomised, score)
            status.setdefault(backbone, {})[key] = AT.fold_status(att["methods"], scores, backbone, fold)
            bad = {m: st for m, st in status[backbone][key].items() if st != "ok"}
            print(f"aoppc {backbone} fold {fold}: {len(x)} images, {len(named) - 1} methods"
                  + "".join(f"; {m}: {st if isinstance(st, str) else 'failed'}" for m, st in bad.items()))
            if not figure_done:
                imgs = x[:3].mean(1, keepdim=True).cpu().numpy()
                figure(backbone, fold, imgs, z, s.methods, Path(f"plots/attributions/{backbone}.png"))
                figure_done = True

    result = AT.summary(scores, s.methods)
    write_json("metrics/aoppc.json", {
        "definition": {"aoppc_threshold_morf": "CXR-Net eq. 12: zero pixels with min-max importance >= x, "
                                               "x = 1.0..0.1; mean over levels of p(orig) - p(perturbed)",
                       "aoppc_fraction_morf": "zero the top 10..100 % pixels by importance",
                       "*_lerf": "same levels, least important first (control)",
                       "random": "uniform random map (control)",
                       "lung_mass": "share of |attribution| inside the lung mask; lung_area: mask share of image",
                       "sanity_spearman": "Spearman of |map| vs. |map| of a weight-randomised model (low = passes)",
                       "importance": importance},
        "runtime": rt, "pooled": result["pooled"], "by_method": result["by_method"], "status": status,
        "maps": result["maps"], "sanity": result["sanity"], "common": result["common"]})

    frame = pd.DataFrame(curves)
    if len(frame):
        write_csv("plots/aoppc/curves_all.csv", frame)
        main_curve = (frame[(frame["scheme"] == "threshold") & (frame["order"] == "morf")]
                      .groupby(["method", "level"], as_index=False)["p_drop"].mean())
        write_csv("plots/aoppc/curves.csv", main_curve[["method", "level", "p_drop"]])
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, scheme in zip(axes, EM.SCHEMES):
            sub = frame[(frame["scheme"] == scheme) & (frame["order"] == "morf")]
            for m, g in sub.groupby("method"):
                g = g.groupby("level", as_index=False)["p_drop"].mean()
                ax.plot(g["level"], g["p_drop"], marker="o", ms=3, label=m, ls="--" if m == RANDOM else "-")
            ax.set_xlabel("threshold x (pixels >= x zeroed)" if scheme == "threshold" else "fraction zeroed (MoRF)")
            ax.set_ylabel("p(original) - p(perturbed)")
            ax.set_title(f"{scheme} levels")
            if scheme == "threshold":
                ax.invert_xaxis()
        axes[1].legend(fontsize=7)
        save(fig, "plots/aoppc/curves.png")
    else:
        write_csv("plots/aoppc/curves.csv", pd.DataFrame(columns=["method", "level", "p_drop"]))
        fig = plt.figure()
        fig.text(0.5, 0.5, "no attribution maps (every fold skipped)", ha="center")
        save(fig, "plots/aoppc/curves.png")

    table = AT.markdown(result, s.methods, reference)
    write_text("metrics/aoppc_table.md", table)
    print(table, end="")

if __name__ == "__main__":
    main()
