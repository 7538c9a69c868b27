"""Figures of the aoppc stage (attribution panels per backbone, the perturbation curves, the gains per trained
model) and of the randomisation stage (the cascade curves)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.core.plotting import RANDOM, legend_outside, map_panel, method_styles, plt, save
from cxrbench.explain import randomisation as R


def styles_of(methods) -> dict[str, dict]:
    """Each method's line style, the same in every figure: assigned in the registry's order of every method
    (:data:`cxrbench.explain.methods.registry.METHODS`), then any other name, and the random map last."""
    from cxrbench.explain.methods.registry import METHODS

    known = [*METHODS, *(m for m in methods if m not in METHODS and m != RANDOM), RANDOM]
    every = method_styles(known)
    return {m: every[m] for m in methods}


def attribution_panels(backbone: str, fold: int, images: np.ndarray, z, methods: list, path: Path | str,
                       n: int = 3) -> None:
    """The first ``n`` images, their lung mask and every method's map (red +, blue -) of one model; a
    constant map is a panel that says so (:func:`cxrbench.core.plotting.map_panel`), and the title counts them."""
    have = [m for m in methods if m in z.files]
    n = min(n, len(images))
    cols = 2 + len(have)
    fig, axes = plt.subplots(n, cols, figsize=(1.8 * cols, 1.9 * n), squeeze=False)
    constant = {m: 0 for m in have}
    for i in range(n):
        img = images[i, 0]
        axes[i, 0].imshow(img, cmap="gray")
        axes[i, 1].imshow(img, cmap="gray")
        axes[i, 1].imshow(np.ma.masked_equal(z["masks"][i], 0), cmap="autumn", alpha=0.4)
        for j, m in enumerate(have):
            if map_panel(axes[i, 2 + j], img, z[m][i].astype(np.float32)) == "constant":
                constant[m] += 1
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    for j, title in enumerate(["image", "lung mask"] + [m + (f"\n({constant[m]} of {n} constant)" if constant[m]
                                                            else "") for m in have]):
        axes[0, j].set_title(title, fontsize=7)
    fig.suptitle(f"{backbone} fold {fold}: attributions (red +, blue -; one-signed maps on their own range)",
                 fontsize=9)
    save(fig, path)


def _panel_key(row) -> tuple[str, str]:
    return (row["scheme"], row["fill"]) if "fill" in row else (row["scheme"], "black")


def curves_figure(frame: pd.DataFrame, path: Path | str) -> None:
    """One panel per perturbation (threshold, pixel deletion, region per fill): mean probability drop
    per level and method (MoRF), the random map dashed. An empty frame gives a figure that says so."""
    if not len(frame):
        fig = plt.figure()
        fig.text(0.5, 0.5, "no attribution maps (every fold skipped)", ha="center")
        save(fig, path)
        return
    morf = frame[frame["order"] == "morf"]
    panels = list(dict.fromkeys(zip(morf["scheme"], morf["fill"])))
    styles = styles_of(sorted(set(morf["method"]) - {RANDOM}) + [RANDOM])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False, layout="constrained")
    for ax, (scheme, fill) in zip(axes[0], panels):
        sub = morf[(morf["scheme"] == scheme) & (morf["fill"] == fill)]
        for m in styles:
            g = sub[sub["method"] == m]
            if not len(g):
                continue
            g = g.groupby("level", as_index=False)["p_drop"].mean()
            ax.plot(g["level"], g["p_drop"], ms=3, lw=1.2, label=m, **styles[m])
        ax.set_ylabel("p(original) - p(perturbed)", fontsize=8)
        if scheme == "threshold":
            ax.set_xlabel("threshold x (pixels >= x zeroed)", fontsize=8)
            ax.invert_xaxis()
        elif scheme == "pixels":
            ax.set_xlabel("share of pixels zeroed (most important first)", fontsize=8)
        else:
            ax.set_xlabel("patches removed (most relevant first)", fontsize=8)
        ax.set_title(f"{scheme}" + (f", {fill} fill" if scheme == "region" else " (black)"), fontsize=9)
    legend_outside(fig, axes[0, 0], "method (MoRF)")
    save(fig, path)


def gains_by_model_figure(across: dict, methods: list, metrics: dict, path: Path | str) -> None:
    """One panel per metric (``metrics``: name -> panel title): each trained model's mean gain over the random
    map per method (a dot per model, one colour per training seed where models carry a seed tag), beside the
    two-level mean and 95 % interval over the models and patients (black bar; ``*`` when it differs from 0
    after adjustment). The line at 0 is the random map: a method whose dots straddle it is not stable over
    training runs. ``across``: the ``gain.across_models.pooled`` table of :func:`cxrbench.explain.metrics.
    tables.gains`."""
    from cxrbench.explain.metrics.across_models import seed_of

    panels = [me for me in metrics if any(f"{m}|{me}" in across for m in methods)]
    if not panels:
        fig = plt.figure()
        fig.text(0.5, 0.5, "no gains over models (one model, or no scored map)", ha="center")
        save(fig, path)
        return
    groups = sorted({seed_of(k) for v in across.values() for k in (v.get("per_model") or {})})
    colours = dict(zip(groups, plt.cm.tab10.colors))
    labelled: set[str] = set()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, me in zip(axes[0], panels):
        ax.axhline(0, color="black", ls="--", lw=0.8)
        for i, m in enumerate(methods):
            v = across.get(f"{m}|{me}")
            if not v or v.get("mean") is None:
                continue
            per = v.get("per_model") or {}
            for j, (k, y) in enumerate(sorted(per.items())):
                g = seed_of(k)
                label = f"seed {g}" if g and g not in labelled else None
                labelled.add(g)
                ax.plot(i - 0.25 + 0.3 * j / max(len(per) - 1, 1), y, "o", ms=3, color=colours[g], alpha=0.8,
                        label=label)
            if v.get("low") is not None:
                ax.errorbar(i + 0.2, v["mean"], yerr=[[v["mean"] - v["low"]], [v["high"] - v["mean"]]], fmt="s",
                            color="black", ms=4, capsize=3, lw=1.2)
                if v.get("significant"):
                    ax.text(i + 0.28, v["high"], "*", fontsize=9, va="bottom")
        ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right", fontsize=7)
        ax.set_title(metrics[me], fontsize=9)
    axes[0, 0].set_ylabel("gain over the random map (AOPPC)", fontsize=8)
    first = next(iter(across.values()))
    fig.suptitle(f"Each trained model's gain (dots) and the mean over {first.get('models', '?')} models and "
                 f"{first.get('patients', '?')} patients with its 95 % interval (black)", fontsize=9)
    if len(groups) > 1:
        legend_outside(fig, axes[0, 0], "models of")
    save(fig, path)


def randomisation_figure(curves: pd.DataFrame, metrics: list, methods: list, path: str) -> None:
    """Similarity vs number of randomised groups, one curve per method, one panel per metric x backbone;
    the method's null reference (two independent randomisations) as a band (CI) around a dotted line."""
    backbones = list(dict.fromkeys(curves["backbone"])) if len(curves) else []
    if not backbones:
        fig = plt.figure()
        fig.text(0.5, 0.5, "no randomisation result (every model skipped)", ha="center")
        save(fig, path)
        return
    fig, axes = plt.subplots(len(metrics), len(backbones), figsize=(5.2 * len(backbones), 3.4 * len(metrics)),
                             squeeze=False, layout="constrained")
    styles = styles_of(methods)
    for i, metric in enumerate(metrics):
        for j, b in enumerate(backbones):
            ax = axes[i, j]
            sub = curves[(curves["metric"] == metric) & (curves["backbone"] == b)]
            for m, g in sub.groupby("method", sort=False):
                g = g.sort_values("step")
                st = styles.get(m, dict(color="k", ls="-", marker="o"))
                c = st["color"]
                ax.plot(g["step"], g["similarity"].astype(float), ms=3, label=m, **st)
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
    legend_outside(fig, axes[0, 0], "method")
    fig.suptitle("Cascading randomisation (top layer group down); dotted line and band: null reference "
                 "(two independently randomised models)", fontsize=9)
    save(fig, path)
