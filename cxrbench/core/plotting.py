"""Figures written by the stages (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cxrbench.core.io import atomic_path  # noqa: E402


CONSTANT_MAP = "constant map: no usable explanation"
RANDOM = "random"                  # the random-map control: always black, dashed
_COLOURS = [*plt.cm.tab10.colors, "#8c6d31", "#393b79", "#637939", "#843c39", "#7b4173", "#3182bd", "#e6550d",
            "#31a354", "#756bb1", "#636363"]
_STYLES = ["-", "--", "-.", ":"]
_MARKERS = ["o", "s", "^", "v", "D", "P", "X", "*"]


def method_styles(methods) -> dict[str, dict]:
    """A line style per method: every method its own colour (20 before they repeat) and, in turn, its own line
    style and marker, so two methods never share (colour, line style) and neighbours differ in style as well.
    The random-map control is black and dashed."""
    out, i = {}, 0
    for m in dict.fromkeys(methods):
        if m == RANDOM:
            out[m] = dict(color="black", ls="--", marker="x")
            continue
        out[m] = dict(color=_COLOURS[i % len(_COLOURS)], ls=_STYLES[i % len(_STYLES)],
                      marker=_MARKERS[(i // len(_STYLES)) % len(_MARKERS)])
        i += 1
    return out


def legend_outside(fig, ax, title: str | None = None) -> None:
    """The legend of ``ax``'s lines to the right of the whole figure, never over the data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, title=title,
                   title_fontsize=7, frameon=False)


def is_constant(a: np.ndarray) -> bool:
    """A map that explains nothing: constant, or with a value that is not finite."""
    a = np.asarray(a, dtype=np.float64)
    return a.size == 0 or not np.isfinite(a).all() or float(a.max() - a.min()) == 0.0


def map_panel(ax, image: np.ndarray, a: np.ndarray, alpha: float = 0.7, vmin_image=None, vmax_image=None,
              extent=None) -> str:
    """``image`` with the map ``a`` over it: a signed map on a symmetric red/blue scale; a map of one sign on
    its own range (its lowest value transparent), so a map that is positive everywhere shows its structure,
    not a solid red; a constant map as the words :data:`CONSTANT_MAP` on the greyed image. ``extent``: where
    the map lies over the image (a map of another resolution). Returns ``"constant"``, ``"signed"`` or
    ``"one-signed"``."""
    ax.imshow(image, cmap="gray", vmin=vmin_image, vmax=vmax_image)
    ax.set_xticks([])
    ax.set_yticks([])
    if is_constant(a):
        ax.imshow(np.ones_like(image, dtype=float), cmap="gray", vmin=0, vmax=1, alpha=0.6)
        ax.text(0.5, 0.5, CONSTANT_MAP.replace(": ", ":\n"), transform=ax.transAxes, ha="center", va="center",
                fontsize=6, color="black", wrap=True)
        return "constant"
    a = np.asarray(a, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 < hi:
        lim = max(-lo, hi)
        ax.imshow(a, cmap="bwr", vmin=-lim, vmax=lim, alpha=alpha, extent=extent)
        return "signed"
    cmap, norm = ("Reds", (a - lo) / (hi - lo)) if hi > 0 else ("Blues", (hi - a) / (hi - lo))
    ax.imshow(norm, cmap=cmap, vmin=0, vmax=1, alpha=np.clip(norm, 0, 1) * alpha, extent=extent)
    return "one-signed"


def save(fig, path: str | Path, dpi: int = 110) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)


def label_distribution(frame: pd.DataFrame, names, path: str | Path) -> None:
    """Images per label, by source, for the test set and each dev fold."""
    parts = [("test", frame["split"] == "test")] + [
        (f"fold {k}", (frame["split"] == "dev") & (frame["fold"] == k)) for k in sorted(frame["fold"].unique()) if k >= 0]
    sources = sorted(frame["source"].unique())
    fig, axes = plt.subplots(1, len(sources), figsize=(6 * len(sources), 0.32 * len(names) + 1.5), squeeze=False)
    for ax, src in zip(axes[0], sources):
        y = np.arange(len(names))
        h = 0.8 / len(parts)
        for j, (label, sel) in enumerate(parts):
            sub = frame[sel & (frame["source"] == src)]
            counts = [int(sub[f"y_{n}"].sum()) for n in names]
            ax.barh(y + j * h, counts, height=h, label=label)
        ax.set_yticks(y + 0.4 - h / 2, names)
        ax.invert_yaxis()
        ax.set_xscale("symlog")
        ax.set_xlabel("images")
        ax.set_title(src)
        ax.legend(fontsize=7)
    fig.suptitle("Label distribution by split (patient-level, leak-free)")
    save(fig, path)


def planted_grid(images: np.ndarray, maps: dict, boxes: np.ndarray, path: str | Path, title: str = "") -> None:
    """Tagged images (first row) and each method's map (one row per method) with the tag's box drawn."""
    from matplotlib.patches import Rectangle

    n = len(images)
    rows = 1 + len(maps)
    fig, axes = plt.subplots(rows, n, figsize=(1.8 * n, 1.8 * rows), squeeze=False)
    panels = [("image", None)] + list(maps.items())
    for r, (name, m) in enumerate(panels):
        for c in range(n):
            ax = axes[r][c]
            side = images[c].shape[-1]
            if m is None:
                ax.imshow(images[c][0], cmap="gray", vmin=0, vmax=255)
            else:                           # a constant map says so (map_panel), never a blank or solid panel
                map_panel(ax, images[c][0], m[c], alpha=0.6, vmin_image=0, vmax_image=255,
                          extent=(-0.5, side - 0.5, side - 0.5, -0.5))
            x0, y0, x1, y1 = boxes[c]
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="lime", lw=1))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.99))
    save(fig, path)
