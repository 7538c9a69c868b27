"""Reading the images predict is given: folders searched, DICOM and PNG/JPEG decoded, preprocessed with the
run's recipe."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from cxrbench.data.images import DECODE_ERRORS, load_grey
from cxrbench.data.preprocess import Recipe, prepare

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")        # what a folder is searched for (any case)
DICOM_SUFFIXES = (".dcm", ".dicom")
OK = "ok"


class DicomUnavailableError(RuntimeError):
    """A DICOM file while the optional pydicom is not installed."""


def find_images(items: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for :data:`IMAGE_SUFFIXES`; a missing path is kept
    (it is then listed as bad)."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def load_dicom(path: str | Path) -> np.ndarray:
    """A DICOM radiograph as grey float32 in [0, 1]: modality and VOI LUTs applied, MONOCHROME1 inverted,
    then scaled by its own minimum and maximum (the training images are 8-bit PNG/JPEG: see docs/predict.md)."""
    try:
        import pydicom
    except ImportError:
        raise DicomUnavailableError("reading DICOM needs the optional pydicom, which is not installed "
                                    "(pip install pydicom)") from None
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:          # pydicom < 3
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    ds = pydicom.dcmread(str(path))
    arr = ds.pixel_array
    if int(getattr(ds, "SamplesPerPixel", 1)) != 1 or arr.ndim != 2:
        raise ValueError(f"expected one grey frame, got pixel data of shape {arr.shape} "
                         f"({getattr(ds, 'PhotometricInterpretation', '?')})")
    arr = apply_modality_lut(arr, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        arr = apply_voi_lut(arr, ds)
    arr = np.asarray(arr, dtype=np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return 1.0 - arr if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1" else arr


def _dicom_errors() -> tuple:
    try:
        from pydicom.errors import InvalidDicomError
    except ImportError:
        return (DicomUnavailableError,)
    # pixel data missing (AttributeError), a transfer syntax without a decoder (RuntimeError,
    # NotImplementedError), a malformed element (ValueError, KeyError, OSError)
    return (DicomUnavailableError, InvalidDicomError, AttributeError, RuntimeError, NotImplementedError,
            ValueError, KeyError, OSError)


def load_image(path: str | Path) -> np.ndarray:
    """Grey float32 in [0, 1] of shape (H, W): DICOM by :func:`load_dicom`, anything else by
    :func:`cxrbench.data.images.load_grey` (the decoder that built the cache)."""
    if Path(path).suffix.lower() in DICOM_SUFFIXES:
        return load_dicom(path)
    return load_grey(path)


def prepare_file(job: tuple[str, Recipe]) -> tuple[np.ndarray | None, str]:
    """(the (C, S, S) uint8 input, ``ok``) or (None, why it could not be read)."""
    path, recipe = job
    dicom = Path(path).suffix.lower() in DICOM_SUFFIXES
    expected = _dicom_errors() if dicom else DECODE_ERRORS
    try:
        grey = load_image(path)
    except expected as err:
        return None, f"{type(err).__name__}: {err}".replace("\n", " ").strip()
    return prepare(grey, recipe), OK


def prepare_files(paths: Sequence[str | Path], recipe: Recipe, workers: int = 1) -> Iterator[tuple]:
    """(path, uint8 input or None, status) per path, in order; ``workers`` > 1 decodes in processes."""
    jobs = [(str(p), recipe) for p in paths]
    if workers <= 1 or len(jobs) < 2 * workers:
        for (p, _), (arr, status) in zip(jobs, map(prepare_file, jobs)):
            yield p, arr, status
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for (p, _), (arr, status) in zip(jobs, pool.map(prepare_file, jobs, chunksize=4)):
            yield p, arr, status
