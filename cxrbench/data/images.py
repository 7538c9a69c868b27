"""Decode images to one grey channel, whatever their upstream format.

Only regular files are opened (a FIFO or a device would block or never end), the pixel count is read
from the header before anything is decoded (``max_pixels``), and a float image with a NaN or infinite
pixel is refused rather than normalised to zeros.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class NotRegularFileError(OSError):
    """A FIFO, device, socket or folder where an image file is expected."""


class ImageTooLargeError(ValueError):
    """The header declares more pixels than the caller's ``max_pixels``."""


class NonFiniteImageError(ValueError):
    """A decoded image with NaN or infinite pixels."""


# exceptions that mean "this file is not a readable image"
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def check_regular(path: str | Path) -> None:
    """Raise :class:`NotRegularFileError` unless ``path`` (links followed) is a regular file."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a file")
        raise NotRegularFileError(f"{path} is {kind}, not a regular file: not read")


def check_pixels(width: int, height: int, max_pixels: int | None, path: str | Path, frames: int = 1) -> None:
    """Raise :class:`ImageTooLargeError` when ``width`` x ``height`` (x ``frames``) is over ``max_pixels``."""
    n = int(width) * int(height) * max(int(frames), 1)
    if max_pixels is not None and n > max_pixels:
        raise ImageTooLargeError(f"{path} declares {width} x {height}{f' x {frames} frames' if frames > 1 else ''} "
                                 f"= {n:,} pixels, over the limit of {max_pixels:,}: not decoded")


def check_finite(arr: np.ndarray, path: str | Path) -> None:
    """Raise :class:`NonFiniteImageError` when ``arr`` holds a NaN or an infinity."""
    if not np.isfinite(arr).all():
        n = int(arr.size - np.isfinite(arr).sum())
        raise NonFiniteImageError(f"{path} has {n} NaN or infinite pixel(s): not a valid image")


def load_grey(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Decode ``path`` fully to a float32 array in [0, 1] of shape (H, W).

    Colour and palette images are converted to luminance; 16-bit images keep
    their full range. ``max_pixels``: refuse an image whose header declares more
    pixels, before decoding it (None: only PIL's own decompression-bomb limit).
    Raises one of :data:`DECODE_ERRORS` for a corrupt, oversized, non-finite or
    non-regular file.
    """
    check_regular(path)
    with warnings.catch_warnings():
        if max_pixels is not None:               # the caller's cap replaces PIL's warning (its error stays)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im_ctx = Image.open(path)                # lazy: reads the header only
    with im_ctx as im:
        check_pixels(*im.size, max_pixels, path)
        im.load()  # force a full decode: a truncated file fails here
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float32)
            top = 65535.0 if arr.max() > 255 else 255.0
            return np.clip(arr / top, 0.0, 1.0)
        if im.mode == "F":
            arr = np.asarray(im, dtype=np.float32)
            check_finite(arr, path)
            lo, hi = float(arr.min()), float(arr.max())
            out = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
            if not np.isfinite(out).all():       # a range wider than float32 holds
                raise NonFiniteImageError(f"{path}: pixel range {lo:g}..{hi:g} overflows float32")
            return out
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
            im = Image.alpha_composite(bg, im)
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def load_mask(path: str | Path, threshold: int = 127) -> np.ndarray:
    """A grey-level mask as a boolean array (pixels > ``threshold``)."""
    check_regular(path)
    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > threshold
