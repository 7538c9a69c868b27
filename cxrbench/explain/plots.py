"""Figures of the aoppc stage: attribution panels per backbone and the perturbation curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.core.plotting import plt, save

RANDOM = "random"


def attribution_panels(backbone: str, fold: int, images: np.ndarray, z, methods: list, path: Path | str,
                       n: int = 3) -> None:
    """The first ``n`` images, their lung mask and every method's map (red +, blue -) of one model."""
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
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4), squeeze=False)
    for ax, (scheme, fill) in zip(axes[0], panels):
        sub = morf[(morf["scheme"] == scheme) & (morf["fill"] == fill)]
        for m, g in sub.groupby("method"):
            g = g.groupby("level", as_index=False)["p_drop"].mean()
            ax.plot(g["level"], g["p_drop"], marker="o", ms=2, label=m, ls="--" if m == RANDOM else "-")
        ax.set_ylabel("p(original) - p(perturbed)")
        if scheme == "threshold":
            ax.set_xlabel("threshold x (pixels >= x zeroed)")
            ax.invert_xaxis()
        elif scheme == "pixels":
            ax.set_xlabel("share of pixels zeroed (most important first)")
        else:
            ax.set_xlabel("patches removed (most relevant first)")
        ax.set_title(f"{scheme}" + (f", {fill} fill" if scheme == "region" else " (black)"), fontsize=9)
    axes[0, -1].legend(fontsize=6)
    save(fig, path)
