"""Decode images to one grey channel, whatever their upstream format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# exceptions that mean "this file is not a readable image"
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def load_grey(path: str | Path) -> np.ndarray:
    """Decode ``path`` fully to a float32 array in [0, 1] of shape (H, W).

    Colour and palette images are converted to luminance; 16-bit images keep
    their full range. Raises one of :data:`DECODE_ERRORS` for a corrupt file.
    """
    with Image.open(path) as im:
        im.load()  # force a full decode: a truncated file fails here
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float32)
            top = 65535.0 if arr.max() > 255 else 255.0
            return np.clip(arr / top, 0.0, 1.0)
        if im.mode == "F":
            arr = np.asarray(im, dtype=np.float32)
            lo, hi = float(arr.min()), float(arr.max())
            return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
            im = Image.alpha_composite(bg, im)
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def load_mask(path: str | Path, threshold: int = 127) -> np.ndarray:
    """A grey-level mask as a boolean array (pixels > ``threshold``)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > threshold
