"""Reading the images predict is given: folders searched, DICOM and PNG/JPEG decoded, preprocessed with the
run's recipe."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from cxrbench.core.params import ParamError, check_int
from cxrbench.data.images import (DECODE_ERRORS, ImageTooLargeError, NonFiniteImageError, NotRegularFileError,
                                  check_finite, check_pixels, check_regular, load_grey)
from cxrbench.data.preprocess import Recipe, prepare, worker_pool

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")        # what a folder is searched for (any case)
DICOM_SUFFIXES = (".dcm", ".dicom")
OK = "ok"
MAX_PIXELS = 50_000_000          # predict.max_pixels when a run's params.yaml predates it (params.yaml's value)


class DicomUnavailableError(RuntimeError):
    """A DICOM file while the optional pydicom is not installed."""


def max_pixels(params: dict) -> int:
    """``predict.max_pixels``: the most pixels an image's header may declare before it is decoded."""
    p = params.get("predict")
    if p is not None and not isinstance(p, dict):
        raise ParamError("predict", f"expected a mapping, got {p!r}")
    value = (p or {}).get("max_pixels", MAX_PIXELS)
    return check_int("predict.max_pixels", value, minimum=1)


def _search(folder: Path) -> list[Path]:
    """Every non-folder entry of ``folder`` with an image suffix, linked folders followed (each real folder
    once, so a link loop ends); a folder that cannot be listed is kept (then listed as bad)."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()

    def unreadable(err: OSError) -> None:
        found.append(Path(err.filename))

    for root, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:      # reached again through a link: already searched
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        found += [Path(root, f) for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found)


def find_images(items: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for :data:`IMAGE_SUFFIXES` (linked folders too); a
    missing path, or a FIFO or device with an image suffix, is kept (it is then listed as bad)."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += _search(p)
        else:
            out.append(p)
    return out


def load_dicom(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """A DICOM radiograph as grey float32 in [0, 1]: modality and VOI LUTs applied, MONOCHROME1 inverted,
    then scaled by its own minimum and maximum (the training images are 8-bit PNG/JPEG: see docs/predict.md).
    Rows x Columns (x frames) is checked against ``max_pixels`` before the pixel data is decoded."""
    try:
        import pydicom
    except ImportError:
        raise DicomUnavailableError("reading DICOM needs the optional pydicom, which is not installed "
                                    "(pip install pydicom)") from None
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:          # pydicom < 3
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    check_regular(path)
    ds = pydicom.dcmread(str(path))
    check_pixels(int(getattr(ds, "Columns", 0) or 0), int(getattr(ds, "Rows", 0) or 0), max_pixels, path,
                 int(getattr(ds, "NumberOfFrames", 1) or 1))
    arr = ds.pixel_array
    if int(getattr(ds, "SamplesPerPixel", 1)) != 1 or arr.ndim != 2:
        raise ValueError(f"expected one grey frame, got pixel data of shape {arr.shape} "
                         f"({getattr(ds, 'PhotometricInterpretation', '?')})")
    arr = apply_modality_lut(arr, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        arr = apply_voi_lut(arr, ds)
    arr = np.asarray(arr, dtype=np.float32)
    check_finite(arr, path)                      # float pixel data, or a LUT that overflows
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    check_finite(arr, path)
    return 1.0 - arr if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1" else arr


def _dicom_errors() -> tuple:
    try:
        from pydicom.errors import InvalidDicomError
    except ImportError:
        return (DicomUnavailableError, NotRegularFileError, ImageTooLargeError, NonFiniteImageError)
    # pixel data missing (AttributeError), a transfer syntax without a decoder (RuntimeError,
    # NotImplementedError), a malformed element (ValueError, KeyError, OSError)
    return (DicomUnavailableError, InvalidDicomError, AttributeError, RuntimeError, NotImplementedError,
            ValueError, KeyError, OSError)


def load_image(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Grey float32 in [0, 1] of shape (H, W): DICOM by :func:`load_dicom`, anything else by
    :func:`cxrbench.data.images.load_grey` (the decoder that built the cache)."""
    if Path(path).suffix.lower() in DICOM_SUFFIXES:
        return load_dicom(path, max_pixels)
    return load_grey(path, max_pixels)


def prepare_file(job: tuple[str, Recipe, int | None]) -> tuple[np.ndarray | None, str]:
    """(the (C, S, S) uint8 input, ``ok``) or (None, why it could not be read)."""
    path, recipe, cap = job
    dicom = Path(path).suffix.lower() in DICOM_SUFFIXES
    expected = _dicom_errors() if dicom else DECODE_ERRORS
    try:
        grey = load_image(path, cap)
    except expected as err:
        why = f"{type(err).__name__}: {err}".replace("\n", " ").strip()
        if isinstance(err, ImageTooLargeError):
            why += " (predict.max_pixels; raise it to read this image)"
        return None, why
    return prepare(grey, recipe), OK


def prepare_files(paths: Sequence[str | Path], recipe: Recipe, workers: int = 1,
                  max_pixels: int | None = None) -> Iterator[tuple]:
    """(path, uint8 input or None, status) per path, in order; ``workers`` > 1 decodes in processes (which
    end with this one); an image declaring more than ``max_pixels`` pixels is not decoded."""
    jobs = [(str(p), recipe, max_pixels) for p in paths]
    if workers <= 1 or len(jobs) < 2 * workers:
        for (p, _, _), (arr, status) in zip(jobs, map(prepare_file, jobs)):
            yield p, arr, status
        return
    with worker_pool(workers) as pool:
        for (p, _, _), (arr, status) in zip(jobs, pool.map(prepare_file, jobs, chunksize=4)):
            yield p, arr, status
