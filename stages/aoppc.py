"""Stage aoppc: explanation metrics of every backbone x fold of data/attributions.

Per method, backbone and fold (mean +- std over images): AOPPC with the
paper's threshold levels (CXR-Net eq. 12) and with fraction (MoRF) levels,
the least-important-first (LeRF) control for both, the random-map baseline,
the share of attribution mass inside the lung mask, and the Spearman rank
correlation with the maps of a weight-randomised model (sanity check).

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

from cxrbench import attribution as A  # noqa: E402
from cxrbench import explanation_metrics as EM  # noqa: E402
from cxrbench import params as P  # noqa: E402
from cxrbench import runtime, training  # noqa: E402
from cxrbench import confounder  # noqa: E402
from cxrbench.cache import Cache  # noqa: E402
from cxrbench.io import read_json, write_csv, write_json, write_text  # noqa: E402
from cxrbench.plotting import plt, save  # noqa: E402

RANDOM = "random"


def load_maps(z, name: str) -> np.ndarray:
    return z[name].astype(np.float32) * z[f"{name}__scale"][:, None, None]


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

    results: dict = {}           # method -> backbone -> fold -> metric -> {mean, std, n}
    per_image: dict = {}         # (method, metric) -> list of per-image arrays (pooled)
    curves = []                  # rows of curves_all.csv
    status: dict = {}

    def add(method, backbone, key, metric, values):
        results.setdefault(method, {}).setdefault(backbone, {}).setdefault(key, {})[metric] = EM.mean_std(values)
        per_image.setdefault((method, metric), []).append(np.asarray(values, dtype=np.float64))

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
            status.setdefault(backbone, {})[key] = {
                m: (st if not st["ok"] else "ok") for m, st in att["methods"].items()}
            model, meta = A.load_classifier(backbone, fold, device, checkpoint_file)
            x = A.classifier_input(cache.images[z["rows"]], meta, device, z["masks"])
            target = torch.as_tensor(z["target"], device=device)
            masks = z["masks"]
            has_mask = masks.reshape(len(masks), -1).any(1)
            named = {m: load_maps(z, m) for m in s.methods if m in z.files}
            named[RANDOM] = EM.random_maps((len(x),) + tuple(x.shape[-2:]), seed + fold)
            for m, maps in named.items():
                for scheme in EM.SCHEMES:
                    for order in EM.ORDERS:
                        r = EM.perturbation_curves(model, x, maps, target, scheme=scheme, order=order,
                                                   mode=importance, images_per_batch=per_batch)
                        add(m, backbone, key, f"aoppc_{scheme}_{order}", r["aoppc"])
                        for lvl, x_lvl in enumerate(EM.levels(scheme)):
                            curves.append({"method": m, "backbone": backbone, "fold": fold, "scheme": scheme,
                                           "order": order, "level": float(x_lvl),
                                           "p_drop": float(r["drop"][:, lvl].mean()),
                                           "removed": float(r["removed"][:, lvl].mean())})
                if has_mask.any():
                    add(m, backbone, key, "lung_mass", EM.lung_mass_fraction(maps[has_mask], masks[has_mask]))
                if f"rand__{m}" in z.files:
                    k = len(z[f"rand__{m}"])
                    add(m, backbone, key, "sanity_spearman", EM.rank_correlation(maps[:k], load_maps(z, f"rand__{m}")))
            if has_mask.any():
                add("lung_area", backbone, key, "lung_mass", EM.area_fraction(masks[has_mask]))
            print(f"aoppc {backbone} fold {fold}: {len(x)} images, {len(named) - 1} methods")
            if not figure_done:
                imgs = x[:3].mean(1, keepdim=True).cpu().numpy()
                figure(backbone, fold, imgs, z, s.methods, Path(f"plots/attributions/{backbone}.png"))
                figure_done = True

    pooled = {f"{m}|{metric}": EM.mean_std(np.concatenate(v)) for (m, metric), v in per_image.items()}
    write_json("metrics/aoppc.json", {
        "definition": {"aoppc_threshold_morf": "CXR-Net eq. 12: zero pixels with min-max importance >= x, "
                                               "x = 1.0..0.1; mean over levels of p(orig) - p(perturbed)",
                       "aoppc_fraction_morf": "zero the top 10..100 % pixels by importance",
                       "*_lerf": "same levels, least important first (control)",
                       "random": "uniform random map (control)",
                       "lung_mass": "share of |attribution| inside the lung mask; lung_area: mask share of image",
                       "sanity_spearman": "Spearman of |map| vs. |map| of a weight-randomised model (low = passes)",
                       "importance": importance},
        "runtime": rt, "pooled": pooled, "by_method": results, "status": status})

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

    lines = ["| method | AOPPC threshold (eq. 12) | AOPPC fraction MoRF | LeRF fraction | CXR-Net reported |",
             "|---|---|---|---|---|"]
    for m in list(s.methods) + [RANDOM]:
        def cell(metric):
            v = pooled.get(f"{m}|{metric}")
            return f"{v['mean']:.3f} ± {v['std']:.3f} (n={v['n']})" if v and v["n"] else "-"
        ref = reference.get(m)
        lines.append(f"| {m} | {cell('aoppc_threshold_morf')} | {cell('aoppc_fraction_morf')} | "
                     f"{cell('aoppc_fraction_lerf')} | {ref if ref is not None else '-'} |")
    write_text("metrics/aoppc_table.md", "AOPPC pooled over backbones, folds and images (mean ± std over images). "
               "CXR-Net (seed 003) reports its own models on its own data: a reference, not a like-for-like "
               "comparison.\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
