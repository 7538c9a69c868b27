"""Figures written by the stages (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .io import atomic_path  # noqa: E402


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
