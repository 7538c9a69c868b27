"""Figures written by the stages (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cxrbench.core.io import atomic_path  # noqa: E402


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
            ax.imshow(images[c][0], cmap="gray", vmin=0, vmax=255)
            if m is not None:
                v = m[c]
                span = float(np.abs(v).max()) or 1.0
                side = images[c].shape[-1]
                ax.imshow(v, cmap="bwr", vmin=-span, vmax=span, alpha=0.6,
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
