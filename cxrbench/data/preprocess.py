"""Seed 000's preprocessing, cached once for every later stage.

Per image: bicubic resize of the longer side to ``size``; clip intensities to
the ``percentiles`` of the image (seed 000: 1st and 95th) and scale to [0, 1];
build one channel per recipe (``raw``; ``clahe`` as CXR-Net and COVID-CXNet;
``histeq`` and ``unsharp`` as DeepCOVIDExplainer; ``beasf`` as COVID-CXNet), or per ordered chain of
recipes (``[histeq, unsharp]``: unsharp masking of the equalised image, DeepCOVIDExplainer's one
enhanced image); zero-pad, centred, to
``size`` x ``size``. Padding comes last, so percentiles and equalisation see only
the image. Lung masks get the same resize and padding.

The cache (``data/cache``) holds ``images.npy`` (N, C, S, S) uint8 and
``masks.npy`` (N, S, S) uint8 in the row order of ``data/index.csv``, plus
``meta.json``; it is written to a temporary folder and renamed when complete.
Its disk space is reserved before the first image (a full disk is an error, not
SIGBUS), and the decoding workers end with the stage.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap
from PIL import Image
from skimage import exposure, filters

from cxrbench.core.io import atomic_path, write_json
from cxrbench.core.params import ParamError, check_choice, check_float, check_int, section
from cxrbench.core.runtime import progress as progress_bar
from cxrbench.data.images import load_grey, load_mask

RECIPES = ("raw", "clahe", "histeq", "unsharp", "beasf")
INTENSITY = ("percentile", "fixed")


class MaskMismatchError(ValueError):
    pass


@dataclass(frozen=True)
class Recipe:
    size: int
    percentiles: tuple[float, float]
    channels: tuple[str, ...]
    clahe_clip_limit: float = 0.01
    unsharp_radius: float = 2.0
    unsharp_amount: float = 1.0
    intensity: str = "percentile"
    fixed_range: tuple[float, float] = (0.0, 255.0)
    beasf_gamma: float = 1.5

    def record(self) -> dict:
        """The recipe as the cache's meta.json records it (``beasf_gamma`` only when a channel uses it)."""
        d = dataclasses.asdict(self)
        d["channels"] = tuple(list(c) if isinstance(c, tuple) else c for c in self.channels)
        if "beasf" not in steps(self.channels):
            del d["beasf_gamma"]
        return d

    @classmethod
    def from_params(cls, params: dict) -> "Recipe":
        p = section(params, "preprocess")
        check_int("preprocess.size", p.get("size"), minimum=16, maximum=4096)
        pct = p.get("percentiles")
        if (not isinstance(pct, list) or len(pct) != 2 or not all(isinstance(v, (int, float)) for v in pct)
                or not 0 <= pct[0] < pct[1] <= 100):
            raise ParamError("preprocess.percentiles", f"expected [low, high] with 0 <= low < high <= 100, got {pct!r}")
        chans = check_channels(p.get("channels"))
        intensity = check_choice("preprocess.intensity", p.get("intensity", "percentile"), INTENSITY)
        rng = p.get("fixed_range", [0, 255])
        if (not isinstance(rng, list) or len(rng) != 2 or not all(isinstance(v, (int, float)) for v in rng)
                or not 0 <= rng[0] < rng[1] <= 255):
            raise ParamError("preprocess.fixed_range", f"expected [low, high] within 0..255, got {rng!r}")
        for key in ("clahe_clip_limit", "unsharp_radius", "unsharp_amount"):
            check_float(f"preprocess.{key}", p.get(key), minimum=0, open_low=True, what="a positive number")
        gamma = p.get("beasf_gamma", 1.5)
        check_float("preprocess.beasf_gamma", gamma, minimum=0, open_low=True, what="a positive sigmoid slope")
        return cls(p["size"], (float(pct[0]), float(pct[1])), chans,
                   float(p["clahe_clip_limit"]), float(p["unsharp_radius"]), float(p["unsharp_amount"]),
                   intensity, (float(rng[0]), float(rng[1])), float(gamma))


def check_channels(chans) -> tuple:
    """``preprocess.channels``: a non-empty list whose entries are a recipe or an ordered chain of recipes."""
    if not isinstance(chans, list) or not chans:
        raise ParamError("preprocess.channels", f"expected a non-empty list of recipes {list(RECIPES)} or chains of "
                                                f"them (e.g. [raw, [histeq, unsharp]]), got {chans!r}")
    out = []
    for c in chans:
        chain = c if isinstance(c, list) else [c]
        if not chain or any(step not in RECIPES for step in chain):
            raise ParamError("preprocess.channels", f"{c!r}: each channel is one of {list(RECIPES)} or a non-empty "
                                                    f"list of them, applied in order")
        out.append(tuple(chain) if isinstance(c, list) else c)
    return tuple(out)


def steps(channels) -> set:
    """Every recipe that some channel (or chain) applies."""
    return {s for c in channels for s in (c if isinstance(c, (tuple, list)) else (c,))}


def beasf_lut(hist: np.ndarray, gamma: float) -> np.ndarray:
    """BEASF's tone map (256,) float64 of an 8-bit histogram ``hist`` (256,): bi-histogram equalisation with
    adaptive sigmoid functions (Arriaga-Garcia et al. 2014), as COVID-CXNet (seed 004) enhances its images.

    The tones split at ``m``, the floor of the image's mean tone. Each part gets a sigmoid centred on the
    part's median tone (the smallest tone whose CDF within the part exceeds 1/2), of slope ``gamma`` on a
    scale where the part spans 5 units: ``s(t) = 1 / (1 + exp(-gamma 5 (t - median) / span))`` with span
    ``m`` below and ``255 - m`` above. The lower part's ``s`` is stretched linearly onto [0, m] (tones 0..m),
    the upper part's onto [m, 255] (tones m + 1..255). A part without pixels, or one tone wide, keeps its
    tones (a degenerate part has no sigmoid to fit).
    """
    hist = np.asarray(hist, dtype=np.float64)
    t = np.arange(256, dtype=np.float64)
    lut = t.copy()
    total = hist.sum()
    if total <= 0:
        return lut
    m = int(np.floor((hist * t).sum() / total))

    def part(lo: int, hi: int, out_lo: float, out_hi: float, span: float):
        h = hist[lo:hi + 1]
        if hi <= lo or h.sum() <= 0 or span <= 0:
            return
        median = lo + int(np.argmax(np.cumsum(h) / h.sum() > 0.5))
        s = 1 / (1 + np.exp(-gamma * 5.0 * (t[lo:hi + 1] - median) / span))
        lut[lo:hi + 1] = out_lo + (out_hi - out_lo) * (s - s[0]) / (s[-1] - s[0])

    part(0, m, 0.0, float(m), float(m))
    part(m + 1, 255, float(m), 255.0, float(255 - m))
    return lut


def beasf(img01: np.ndarray, gamma: float) -> np.ndarray:
    """BEASF (:func:`beasf_lut`) of a [0, 1] image, on its 8-bit tones; float32 in [0, 1]."""
    tones = np.clip(np.round(np.asarray(img01) * 255), 0, 255).astype(np.int64)
    lut = beasf_lut(np.bincount(tones.ravel(), minlength=256), gamma)
    return (lut[tones] / 255.0).astype(np.float32)


def geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(new_h, new_w, top, left): the resized shape and its offset in the padded square."""
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    return new_h, new_w, (size - new_h) // 2, (size - new_w) // 2


def _pad(img: np.ndarray, size: int, top: int, left: int) -> np.ndarray:
    out = np.zeros((size, size), dtype=img.dtype)
    out[top:top + img.shape[0], left:left + img.shape[1]] = img
    return out


def normalise(img: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    lo, hi = np.percentile(img, percentiles)
    if hi <= lo:
        return np.zeros_like(img, dtype=np.float32)
    return ((np.clip(img, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def channel(img01: np.ndarray, name, recipe: Recipe) -> np.ndarray:
    """One channel: a recipe of [0, 1] -> [0, 1], or a chain of them applied in order."""
    if isinstance(name, (tuple, list)):
        for step in name:
            img01 = channel(img01, step, recipe)
        return img01
    if name == "beasf":
        return beasf(img01, recipe.beasf_gamma)
    if name == "raw":
        return img01
    if name == "clahe":
        return exposure.equalize_adapthist(img01, clip_limit=recipe.clahe_clip_limit).astype(np.float32)
    if name == "histeq":
        return exposure.equalize_hist(img01).astype(np.float32)
    if name == "unsharp":
        return np.clip(filters.unsharp_mask(img01, radius=recipe.unsharp_radius, amount=recipe.unsharp_amount),
                       0, 1).astype(np.float32)
    raise ParamError("preprocess.channels", f"unknown recipe {name!r}; valid values are {list(RECIPES)}")


def prepare(grey: np.ndarray, recipe: Recipe) -> np.ndarray:
    """A grey float image in [0, 1] of any shape -> (C, size, size) uint8.

    ``intensity: percentile`` (seed 000's paper): clip to the image's own
    percentiles. ``fixed`` (seed 000's published code): the 8-bit values,
    clipped to ``fixed_range`` (their 0..207) and scaled to [0, 1].
    """
    new_h, new_w, top, left = geometry(*grey.shape, recipe.size)
    resized = np.asarray(Image.fromarray(grey.astype(np.float32), mode="F").resize((new_w, new_h), Image.BICUBIC))
    if recipe.intensity == "fixed":
        lo, hi = recipe.fixed_range
        img01 = ((np.clip(resized * 255.0, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    else:
        img01 = normalise(resized, recipe.percentiles)
    chans = [_pad(np.round(channel(img01, c, recipe) * 255).astype(np.uint8), recipe.size, top, left)
             for c in recipe.channels]
    return np.stack(chans)


def prepare_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A boolean mask of the original image size -> (size, size) uint8 in {0, 1}, same geometry."""
    new_h, new_w, top, left = geometry(*mask.shape, size)
    resized = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((new_w, new_h), Image.BILINEAR))
    return _pad((resized >= 128).astype(np.uint8), size, top, left)


def _work(job: tuple[str, str, Recipe]) -> tuple[np.ndarray, np.ndarray | None]:
    image_path, mask_path, recipe = job
    grey = load_grey(image_path)
    mask = None
    if mask_path:
        m = load_mask(mask_path)
        if m.shape != grey.shape:
            raise MaskMismatchError(
                f"mask {mask_path} is {m.shape[1]}x{m.shape[0]} but its image {image_path} is "
                f"{grey.shape[1]}x{grey.shape[0]}; a mask must have its image's exact size")
        mask = prepare_mask(m, recipe.size)
    return prepare(grey, recipe), mask


def index_digest(index_csv: Path) -> str:
    return hashlib.sha1(Path(index_csv).read_bytes()).hexdigest()


class DiskFullError(OSError):
    pass


def check_free_space(out_dir: Path, needed: int, margin: float = 1.05) -> None:
    """Refuse to start a memory-mapped cache that cannot fit: a full disk kills the writer with SIGBUS."""
    out_dir = Path(out_dir)
    where = next(p for p in [out_dir, *out_dir.parents] if p.exists())
    free = shutil.disk_usage(where).free
    if free < needed * margin:
        raise DiskFullError(f"the cache {out_dir} needs {needed / 2**30:.2f} GiB but {where.resolve()} has "
                            f"{free / 2**30:.2f} GiB free: free space, or lower preprocess.size")


def reserve_space(path: Path) -> None:
    """Allocate every block of ``path`` (a memory-mapped cache file, at its full length) now.

    A sparse memory map that meets a full disk while its pages are written back kills the writer with
    SIGBUS (no message, workers orphaned); reserved blocks make a full disk an ENOSPC error here, before
    any image is decoded. The file's content (zeros) is unchanged.
    """
    size = path.stat().st_size
    amount = f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
    fd = os.open(path, os.O_RDWR)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
        else:                                     # no posix_fallocate (macOS): write the zeros
            block = bytes(1 << 20)
            for offset in range(0, size, len(block)):
                os.pwrite(fd, block[:size - offset], offset)
            os.fsync(fd)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(errno.ENOSPC, f"cannot reserve {amount} for the cache file {path}: "
                                              f"{os.strerror(err.errno)}; free space, or lower "
                                              f"preprocess.size") from err
        raise OSError(err.errno, f"cannot reserve {amount} for the cache file {path}: the "
                                 f"filesystem refused ({os.strerror(err.errno)}); build the cache on a local "
                                 f"disk") from err
    finally:
        os.close(fd)


# --- worker pools that end with their parent ------------------------------------

PR_SET_PDEATHSIG = 1                               # linux/prctl.h


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _die_with_parent(parent: int) -> None:
    """Pool initializer: the worker ends when ``parent`` does (killed, or dead of SIGBUS), never orphaned.

    Linux: the kernel sends SIGKILL on the parent's death (``PR_SET_PDEATHSIG``); elsewhere a thread
    polls the parent id. Either way, a parent already gone before this line ends the worker now.
    """
    armed = False
    if sys.platform.startswith("linux"):
        import ctypes

        armed = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:
        os._exit(1)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool whose workers end with this process (see :func:`_die_with_parent`).

    Workers are forked on Linux (the default there) and spawned elsewhere, so their parent is this
    process: never a fork server's.
    """
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_die_with_parent,
                               initargs=(os.getpid(),))


def build_cache(index: pd.DataFrame, raw: Path, out_dir: Path, recipe: Recipe, workers: int,
                index_sha1: str) -> dict:
    """Preprocess every indexed image (and its mask) into ``out_dir``; return meta."""
    n, c, s = len(index), len(recipe.channels), recipe.size
    check_free_space(out_dir, n * (c + 1) * s * s)
    jobs = [(str(raw / p), str(raw / m) if m else "", recipe) for p, m in zip(index["path"], index["mask"].fillna(""))]
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        images = open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, c, s, s))
        masks = open_memmap(tmp / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, s, s))
        reserve_space(tmp / "images.npy")
        reserve_space(tmp / "masks.npy")
        has_mask = np.zeros(n, dtype=bool)
        with worker_pool(workers) as pool:
            results = pool.map(_work, jobs, chunksize=8)
            for i, (img, mask) in enumerate(progress_bar(results, total=n, desc=f"preprocess {s}px", unit="img")):
                images[i] = img
                if mask is not None:
                    masks[i] = mask
                    has_mask[i] = True
        images.flush()
        masks.flush()
        del images, masks
        meta = {"n": n, "size": s, "channels": list(recipe.channels), "percentiles": list(recipe.percentiles),
                "index_sha1": index_sha1, "with_mask": int(has_mask.sum()),
                "recipe": recipe.record()}       # all of it: predict re-applies it to new images
        write_json(tmp / "meta.json", meta)
    return meta
