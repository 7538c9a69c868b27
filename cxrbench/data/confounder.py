"""The planted shortcut: a small visible tag stamped into the preprocessed cache.

The tag is ground truth by construction: a filled square of ``confounder.size`` x
the image side, stamped into a share ``fraction_target`` of the images of one
label (``confounder.label``, COVID-19 by default) and into a smaller share
``fraction_other`` of every other image, so the tag predicts the label without
being the label. A model trained on tagged images can then be asked whether it
uses the tag (score with the tag, removed, moved) and an attribution method
whether it points at it (:mod:`cxrbench.explain.metrics.localisation`).

Conventions (shared with :mod:`cxrbench.explain.metrics.localisation`):

* a box is ``x0, y0, x1, y1`` in cache pixels, ``x`` the column and ``y`` the
  row, half-open: the tag covers ``image[..., y0:y1, x0:x1]``; an untagged row
  has ``-1`` in all four;
* the draw is per image **path**: which images are tagged is decided by ranking
  a SHA-256 hash of ``(seed, path)`` within each stratum, and the position by a
  generator seeded from another hash of ``(seed, path)``. The plan therefore
  does not depend on the order of the rows, and adding or removing other images
  never moves an image's tag;
* the count tagged in each stratum (split x fold, see :func:`plan`) and class
  (target / other) is the nearest integer to fraction x count (halves up), so
  every part of every fold gets the same shares within rounding.

The tag is applied after preprocessing: the ``confound`` stage writes the plan
(``data/confounder/plan.csv``, one row per image with its box and tag value),
and every stage that reads the cache for the classifier stamps it in memory
(:func:`apply`). The rest of the cache is reused, and with ``enabled: false``
the plan tags nothing, so the images are untouched (bit-identical results).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from cxrbench.core import paths
from cxrbench.core.params import ParamError, check_choice, check_int, section

SHAPES = ("square",)
REMOVALS = ("mean", "blur")
BOX_COLUMNS = ("x0", "y0", "x1", "y1")
DEFAULT_STRATA = ("split", "fold")


# --- params ----------------------------------------------------------------------------------------------

def _number(key: str, value: Any, low: float, high: float, *, open_low: bool = False,
            open_high: bool = False, example: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ParamError(key, f"expected a number, got {value!r}{example}")
    ok_low = value > low if open_low else value >= low
    ok_high = value < high if open_high else value <= high
    if not (ok_low and ok_high):
        lo, hi = ("(" if open_low else "["), (")" if open_high else "]")
        raise ParamError(key, f"expected a number in {lo}{low}, {high}{hi}, got {value!r}{example}")
    return float(value)


def validate(params: dict) -> dict:
    """Check ``params: confounder`` (and that its label is in ``labels.names``); return its values.

    Validated whether or not ``enabled`` is true, so a profile that turns it on
    cannot fail later in the run.
    """
    p = section(params, "confounder")
    if not isinstance(p, dict):
        raise ParamError("confounder", f"expected a mapping of keys, got {p!r}")
    enabled = p.get("enabled")
    if not isinstance(enabled, bool):
        raise ParamError("confounder.enabled", f"expected true or false, got {enabled!r}")
    names = section(params, "labels.names")
    label = p.get("label")
    if label not in names:
        raise ParamError("confounder.label", f"unknown label {label!r}; use one of labels.names {names}")
    f_target = _number("confounder.fraction_target", p.get("fraction_target"), 0, 1, open_low=True,
                       example=" (share of the label's images that get the tag, e.g. 0.8)")
    f_other = _number("confounder.fraction_other", p.get("fraction_other"), 0, 1,
                      example=" (share of the other images that get the tag, e.g. 0.1)")
    if f_other >= f_target:
        raise ParamError("confounder.fraction_other",
                         f"{f_other} is not below confounder.fraction_target {f_target}: the tag would not "
                         f"predict {label!r}; lower it (e.g. 0.1)")
    size = _number("confounder.size", p.get("size"), 0, 0.5, open_low=True,
                   example=" (tag side as a fraction of the image side, e.g. 0.0625)")
    intensity = p.get("intensity")
    if intensity != "contrast" and (isinstance(intensity, bool) or not isinstance(intensity, int)
                                    or not 0 <= intensity <= 255):
        raise ParamError("confounder.intensity",
                         f"expected an integer 0-255 (the uint8 cache's scale) or 'contrast', got {intensity!r}")
    shape = check_choice("confounder.shape", p.get("shape"), SHAPES)
    margin = _number("confounder.margin", p.get("margin"), 0, 0.5, open_high=True,
                     example=" (least distance to the border as a fraction of the side, e.g. 0.05)")
    if 2 * margin + size > 1:
        raise ParamError("confounder.margin", f"2 x margin + size = {2 * margin + size:g} > 1: the tag does not "
                                              f"fit between the margins; lower confounder.margin or .size")
    seed = check_int("confounder.seed", p.get("seed"), minimum=0)
    context = _number("confounder.remove_context", p.get("remove_context"), 0, 8, open_low=True,
                      example=" (band width in tag sides, e.g. 1.0)")
    sigma = _number("confounder.remove_sigma", p.get("remove_sigma"), 0.25, 4,
                    example=" (Gaussian sigma in tag sides, e.g. 0.5; below 0.25 the tag's centre gets no "
                            "weight from the band)")
    removal = check_choice("confounder.removal", p.get("removal"), REMOVALS)
    return {"enabled": enabled, "label": label, "fraction_target": f_target, "fraction_other": f_other,
            "size": size, "intensity": intensity, "shape": shape, "margin": margin, "seed": seed,
            "removal": removal, "remove_context": context, "remove_sigma": sigma}


def geometry(cfg: dict, side: int) -> tuple[int, int]:
    """``(tag side, margin)`` in pixels for a cache of ``side`` x ``side`` pixels."""
    side = check_int("preprocess.size", side, minimum=1)
    tag = max(1, int(np.floor(cfg["size"] * side + 0.5)))
    margin = int(np.floor(cfg["margin"] * side + 0.5))
    if 2 * margin + tag > side:
        raise ParamError("confounder.size", f"a {tag} px tag with {margin} px margins does not fit in {side} px; "
                                            f"lower confounder.size or confounder.margin")
    return tag, margin


# --- the plan --------------------------------------------------------------------------------------------

def _hash_u64(seed: int, salt: str, path: str) -> int:
    digest = hashlib.sha256(f"{seed}\x00{salt}\x00{path}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _nearest(x: float) -> int:
    """Nearest integer, halves up (Python's round() rounds halves to even)."""
    return int(np.floor(x + 0.5))


def _has_label(labels: Any, n: int, names: Sequence[str], label: str) -> np.ndarray:
    """Rows with ``label``, from '|'-joined label strings (index.csv's ``labels``) or a multi-hot matrix."""
    arr = np.asarray(labels)
    if arr.shape[:1] != (n,):
        raise ValueError(f"labels has {arr.shape[0] if arr.ndim else 0} rows, rows has {n}: pass one entry per row")
    if arr.ndim == 1 and all(isinstance(v, str) for v in arr):
        return np.array([label in v.split("|") for v in arr], dtype=bool)
    if arr.ndim == 2 and arr.shape[1] == len(names) and np.isin(arr, (0, 1)).all():
        return arr[:, list(names).index(label)].astype(bool)
    raise ValueError(f"labels: expected '|'-joined label strings (index.csv's `labels` column) or a 0/1 matrix "
                     f"with one column per labels.names ({len(names)}), got shape {arr.shape}, dtype {arr.dtype}")


def _positions(paths: Sequence[str], seed: int, salt: str, tag: int, margin: int, side: int) -> np.ndarray:
    """One seeded top-left corner per path, uniform over the positions between the margins."""
    hi = side - margin - tag                     # inclusive upper corner
    out = np.empty((len(paths), 2), dtype=np.int64)
    for i, path in enumerate(paths):
        out[i] = np.random.default_rng(_hash_u64(seed, salt, path)).integers(margin, hi + 1, size=2)
    return out


def plan(rows: pd.DataFrame, labels: Any, params: dict, *, side: int | None = None,
         strata: Sequence[str] = DEFAULT_STRATA) -> pd.DataFrame:
    """Which images get the tag and where: one row per row of ``rows``, in its order.

    ``rows``: a frame with a unique ``path`` and the ``strata`` columns (default
    ``split`` and ``fold`` of data/splits.csv: the test set is one stratum and each
    dev fold another, so the train and val parts of every fold, and the test set,
    get the same shares within rounding). ``labels``: per row, '|'-joined label
    names (index.csv's ``labels``) or a 0/1 matrix over ``labels.names``.
    ``side``: the cache's image side (default ``preprocess.size``).

    Returns ``path, stratum, target, tagged, x0, y0, x1, y1`` (boxes half-open, in
    cache pixels, -1 where untagged). In each stratum, round(fraction_target x
    n_target) target images and round(fraction_other x n_other) other images are
    tagged: those with the smallest hash of ``(seed, path)``.
    """
    cfg = validate(params)
    if side is None:
        side = section(params, "preprocess.size")
    tag, margin = geometry(cfg, side)
    if not isinstance(rows, pd.DataFrame):
        raise TypeError(f"rows: expected a pandas DataFrame with `path` and {list(strata)}, got {type(rows).__name__}")
    missing = [c for c in ("path", *strata) if c not in rows.columns]
    if missing:
        raise ValueError(f"rows lacks column(s) {missing}; pass data/splits.csv's rows (path, split, fold) or "
                         f"name the stratum columns with strata=")
    paths = rows["path"].astype(str).tolist()
    if len(set(paths)) != len(paths):
        dup = rows["path"][rows["path"].duplicated()].iloc[0]
        raise ValueError(f"rows: path {dup!r} appears more than once; one row per image")
    target = _has_label(labels, len(rows), section(params, "labels.names"), cfg["label"])

    out = pd.DataFrame({"path": paths})
    out["stratum"] = (rows[list(strata)].astype(str).agg(":".join, axis=1).to_numpy() if strata
                      else np.full(len(rows), "all"))
    out["target"] = target
    key = [_hash_u64(cfg["seed"], "select", p) for p in paths]
    tagged = np.zeros(len(rows), dtype=bool)
    for (_, is_target), idx in out.groupby(["stratum", "target"], sort=True).indices.items():
        share = cfg["fraction_target"] if is_target else cfg["fraction_other"]
        k = _nearest(share * len(idx))
        order = sorted(idx, key=lambda j: (key[j], paths[j]))    # the path only breaks a (2^-64) hash tie
        tagged[order[:k]] = True
    out["tagged"] = tagged
    corner = np.full((len(rows), 2), -1, dtype=np.int64)
    if tagged.any():
        corner[tagged] = _positions([p for p, t in zip(paths, tagged) if t], cfg["seed"], "position", tag,
                                    margin, side)
    _set_boxes(out, corner, tag)
    out.attrs.update(side=int(side), tag=tag, margin=margin)
    return out


def _set_boxes(frame: pd.DataFrame, corner: np.ndarray, tag: int) -> None:
    on = corner[:, 0] >= 0
    frame["x0"], frame["y0"] = corner[:, 0], corner[:, 1]
    frame["x1"] = np.where(on, corner[:, 0] + tag, -1)
    frame["y1"] = np.where(on, corner[:, 1] + tag, -1)


def move(tag_plan: pd.DataFrame, params: dict, onto: Any = None) -> pd.DataFrame:
    """The "tag moved" test's plan: the tag on the rows ``onto`` (default: every non-target row), off elsewhere.

    Rows already tagged in ``tag_plan`` keep their box; newly tagged rows get a
    position drawn like :func:`plan`'s but from another stream (salt ``moved``),
    so they do not reuse a removed tag's position. Returns a copy.
    """
    cfg = validate(params)
    need = {"path", "target", "tagged", *BOX_COLUMNS}
    if not isinstance(tag_plan, pd.DataFrame) or need - set(tag_plan.columns):
        raise ValueError(f"tag_plan: expected the frame of confounder.plan() with columns {sorted(need)}")
    side = tag_plan.attrs.get("side")
    if side is None:
        raise ValueError("tag_plan has lost its attrs (side, tag): pass the frame plan() returned, or one read back "
                         "with its attrs set")
    tag, margin = geometry(cfg, side)
    if tag != tag_plan.attrs.get("tag"):
        raise ValueError(f"tag_plan was made with a {tag_plan.attrs.get('tag')} px tag, params give {tag} px")
    onto = ~tag_plan["target"].to_numpy(bool) if onto is None else np.asarray(onto)
    if onto.dtype != bool or onto.shape != (len(tag_plan),):
        raise ValueError(f"onto: expected a boolean array with one entry per plan row ({len(tag_plan)}), "
                         f"got dtype {onto.dtype}, shape {onto.shape}")
    was = tag_plan["tagged"].to_numpy(bool)
    corner = tag_plan[["x0", "y0"]].to_numpy(np.int64).copy()
    corner[~onto] = -1
    new = onto & ~was
    if new.any():
        corner[new] = _positions(tag_plan["path"][new].astype(str).tolist(), cfg["seed"], "moved", tag, margin,
                                 side)
    out = tag_plan.copy()
    out["tagged"] = onto
    _set_boxes(out, corner, tag)
    out.attrs.update(tag_plan.attrs)
    return out


# --- pixels ----------------------------------------------------------------------------------------------

def _boxes_array(boxes: Any, n: int, side_hw: tuple[int, int]) -> np.ndarray:
    if isinstance(boxes, pd.DataFrame):
        boxes = boxes[list(BOX_COLUMNS)].to_numpy()
    b = np.asarray(boxes)
    if b.shape != (n, 4) or not np.issubdtype(b.dtype, np.integer):
        raise ValueError(f"boxes: expected integers of shape ({n}, 4) (x0, y0, x1, y1 per image, -1 where "
                         f"untagged), got dtype {b.dtype}, shape {b.shape}")
    off = (b == -1).all(1)
    on = b[~off]
    h, w = side_hw
    bad = ((on[:, 0] < 0) | (on[:, 1] < 0) | (on[:, 2] > w) | (on[:, 3] > h)
           | (on[:, 2] <= on[:, 0]) | (on[:, 3] <= on[:, 1]))
    if bad.any():
        raise ValueError(f"boxes: {on[bad][0].tolist()} is not a non-empty box inside the {h} x {w} image "
                         f"(half-open x0, y0, x1, y1; all -1 for no tag)")
    return b


def _images(images: Any) -> np.ndarray:
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4):
        raise ValueError(f"images: expected uint8 of shape (N, S, S) or (N, C, S, S) (the cache), got dtype "
                         f"{arr.dtype}, shape {arr.shape}")
    return arr


def tag_values(images_u8: Any, boxes: Any, intensity: int | str) -> np.ndarray:
    """The value each image's tag is drawn with: ``intensity``, or for ``'contrast'`` 255 where the box's
    mean (over channels) is below 128 and 0 otherwise. -1 for untagged rows."""
    imgs = _images(images_u8)
    b = _boxes_array(boxes, len(imgs), imgs.shape[-2:])
    on = ~(b == -1).all(1)
    out = np.full(len(imgs), -1, dtype=np.int64)
    if intensity == "contrast":
        for i in np.flatnonzero(on):
            x0, y0, x1, y1 = b[i]
            out[i] = 255 if imgs[i, ..., y0:y1, x0:x1].mean() < 128 else 0
    elif isinstance(intensity, (int, np.integer)) and not isinstance(intensity, bool) and 0 <= intensity <= 255:
        out[on] = int(intensity)
    else:
        raise ValueError(f"intensity: expected an integer 0-255 or 'contrast', got {intensity!r}")
    return out


def stamp(images_u8: Any, boxes: Any, intensity: int | str = 255) -> np.ndarray:
    """A copy of ``images_u8`` with the tag drawn in every channel of each tagged row (never in place).

    ``boxes``: (N, 4) half-open ``x0, y0, x1, y1`` per image (-1 for none) or the
    frame of :func:`plan` / :func:`move`.
    """
    imgs = _images(images_u8)
    b = _boxes_array(boxes, len(imgs), imgs.shape[-2:])
    values = tag_values(imgs, b, intensity)
    out = imgs.copy()
    for i in np.flatnonzero(values >= 0):
        x0, y0, x1, y1 = b[i]
        out[i, ..., y0:y1, x0:x1] = values[i]
    return out


def remove(images_u8: Any, boxes: Any, how: str, *, context: float = 1.0, sigma: float = 0.5) -> np.ndarray:
    """A copy of ``images_u8`` with each box filled from its surroundings, to test the model's reliance on the tag.

    Only pixels of a band around the box (``context`` x the box's longer side
    wide, clipped at the image border) and outside the box are read, so nothing
    of the tag survives:

    * ``mean``: the box becomes the band's mean (per channel), a flat patch;
    * ``blur``: normalised convolution, the Gaussian-weighted mean of the band's
      pixels (``sigma`` x the box side) at each box pixel: a smooth fill.

    ``context`` and ``sigma`` are ``confounder.remove_context`` / ``remove_sigma``.
    """
    if how not in REMOVALS:
        raise ValueError(f"how: expected one of {list(REMOVALS)}, got {how!r}")
    imgs = _images(images_u8)
    b = _boxes_array(boxes, len(imgs), imgs.shape[-2:])
    if not (isinstance(context, (int, float)) and context > 0):
        raise ValueError(f"context: expected a positive width in box sides (confounder.remove_context), "
                         f"got {context!r}")
    if not (isinstance(sigma, (int, float)) and sigma >= 0.25):
        raise ValueError(f"sigma: expected >= 0.25 box sides (confounder.remove_sigma), got {sigma!r}")
    h, w = imgs.shape[-2:]
    out = imgs.copy()
    for i in np.flatnonzero(~(b == -1).all(1)):
        x0, y0, x1, y1 = (int(v) for v in b[i])
        pad = max(1, int(np.ceil(context * max(x1 - x0, y1 - y0))))
        cy0, cy1, cx0, cx1 = max(0, y0 - pad), min(h, y1 + pad), max(0, x0 - pad), min(w, x1 + pad)
        crop = imgs[i, ..., cy0:cy1, cx0:cx1].astype(np.float64)
        inside = np.zeros(crop.shape[-2:], dtype=bool)
        inside[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0] = True
        if inside.all():
            raise ValueError(f"box {b[i].tolist()} of row {i} leaves no pixel around it to fill it from")
        band = (~inside).astype(np.float64)
        filled = crop.reshape(-1, *crop.shape[-2:]).copy()
        for c in filled:
            if how == "mean":
                c[inside] = c[~inside].mean()
            else:
                s = sigma * max(x1 - x0, y1 - y0)
                num = ndimage.gaussian_filter(c * band, s, mode="constant", cval=0.0)
                den = ndimage.gaussian_filter(band, s, mode="constant", cval=0.0)
                if not (den[inside] > 0).all():
                    raise ValueError(f"blur: sigma {sigma} box sides gives no band weight at the centre of box "
                                     f"{b[i].tolist()}; raise confounder.remove_sigma")
                c[inside] = num[inside] / den[inside]
        filled = np.clip(np.floor(filled.reshape(crop.shape) + 0.5), 0, 255).astype(np.uint8)
        out[i, ..., y0:y1, x0:x1] = filled[..., y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]
    return out


# --- the pipeline's plan ---------------------------------------------------------------------------------

PLAN_DIR = paths.CONFOUNDER
PLAN_FILE = "plan.csv"
PLAN_COLUMNS = ("path", "stratum", "target", "tagged", *BOX_COLUMNS, "value")


def plan_for_cache(splits: pd.DataFrame, index: pd.DataFrame, images_u8: np.ndarray, params: dict) -> pd.DataFrame:
    """The run's plan: :func:`plan` over the rows of data/splits.csv (every image of the cache), or no tag at
    all when ``confounder.enabled`` is false; plus ``value``, the tag's pixel value per image (resolved
    here once, so ``intensity: contrast`` reads the untagged image), -1 where untagged.

    ``index`` is data/index.csv (its ``labels`` column) aligned with ``images_u8`` (the cache).
    """
    cfg = validate(params)
    if len(index) != len(images_u8):
        raise ValueError(f"index lists {len(index)} images but the cache holds {len(images_u8)}: rerun the "
                         f"preprocess stage (dvc repro preprocess)")
    row = {p: i for i, p in enumerate(index["path"])}
    missing = [p for p in splits["path"] if p not in row]
    if missing:
        raise ValueError(f"{len(missing)} image(s) of data/splits.csv are not in data/index.csv, e.g. "
                         f"{missing[0]}: rerun the split stage (dvc repro split)")
    rows = np.array([row[p] for p in splits["path"]], dtype=np.int64)
    side = int(images_u8.shape[-1])
    out = plan(splits, index["labels"].to_numpy()[rows], params, side=side)
    if not cfg["enabled"]:
        out["tagged"] = False
        _set_boxes(out, np.full((len(out), 2), -1, dtype=np.int64), out.attrs["tag"])
    value = np.full(len(out), -1, dtype=np.int64)
    on = out["tagged"].to_numpy(bool)
    if on.any():
        value[on] = tag_values(images_u8[rows[on]], out.loc[on, list(BOX_COLUMNS)].to_numpy(), cfg["intensity"])
    out["value"] = value
    return out


def read_plan(path: str | Path = f"{PLAN_DIR}/{PLAN_FILE}") -> pd.DataFrame:
    """data/confounder/plan.csv as written by the confound stage (columns :data:`PLAN_COLUMNS`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the confound stage (dvc repro confound)")
    frame = pd.read_csv(path, keep_default_na=False)
    missing = [c for c in PLAN_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}: rerun the confound stage (dvc repro confound)")
    frame["tagged"] = frame["tagged"].astype(str).str.lower().isin(["true", "1"])
    frame["target"] = frame["target"].astype(str).str.lower().isin(["true", "1"])
    return frame


def with_geometry(frame: pd.DataFrame, params: dict, side: int) -> pd.DataFrame:
    """``frame`` (e.g. from :func:`read_plan`) with the attrs :func:`move` needs (side, tag, margin)."""
    tag, margin = geometry(validate(params), side)
    frame.attrs.update(side=int(side), tag=tag, margin=margin)
    return frame


def stamp_plan(images_u8: np.ndarray, rows: np.ndarray, plan_frame: pd.DataFrame) -> np.ndarray:
    """A copy of ``images_u8[rows]`` with the tags of ``plan_frame``'s rows (aligned with ``rows``) drawn at
    their recorded value (the plan's ``value``, not re-derived from the image)."""
    out = np.array(images_u8[rows], copy=True)
    b = plan_frame[list(BOX_COLUMNS)].to_numpy(np.int64)
    v = plan_frame["value"].to_numpy(np.int64)
    for i in np.flatnonzero(plan_frame["tagged"].to_numpy(bool)):
        x0, y0, x1, y1 = b[i]
        out[i, ..., y0:y1, x0:x1] = v[i]
    return out


def apply(cache: Any, path: str | Path = f"{PLAN_DIR}/{PLAN_FILE}") -> dict:
    """Stamp the plan's tags into ``cache.images`` (a :class:`cxrbench.data.cache.Cache` read into memory).

    Nothing is copied or changed when the plan tags no image (``confounder.enabled: false``). Returns a
    summary: ``tagged`` (count) and ``target_tagged``.
    """
    frame = read_plan(path)
    on = frame["tagged"].to_numpy(bool)
    summary = {"tagged": int(on.sum()), "target_tagged": int((on & frame["target"].to_numpy(bool)).sum())}
    if not on.any():
        return summary
    if not cache.images.flags.writeable:
        raise ValueError(f"{path} tags {summary['tagged']} images but the cache was opened read-only "
                         f"(in_memory=False); open it with Cache(..., in_memory=True)")
    sel = frame[on]
    missing = [p for p in sel["path"] if p not in cache.row]
    if missing:
        raise ValueError(f"{path} tags {len(missing)} image(s) not in the cache, e.g. {missing[0]}: rerun the "
                         f"confound stage (dvc repro confound)")
    if int(sel["x1"].max()) > cache.images.shape[-1] or int(sel["y1"].max()) > cache.images.shape[-2]:
        raise ValueError(f"{path} has boxes outside the {cache.images.shape[-1]} px cache: it was planned for "
                         f"another preprocess.size; rerun the confound stage (dvc repro confound)")
    rows = cache.rows(sel["path"])
    cache.images[rows] = stamp_plan(cache.images, rows, sel.reset_index(drop=True))
    return summary


def conditions(images_u8: np.ndarray, rows: np.ndarray, plan_frame: pd.DataFrame, params: dict) -> dict:
    """The reliance test's inputs for the cache rows ``rows`` (untagged ``images_u8``; ``plan_frame`` aligned
    with ``rows``, carrying :func:`with_geometry`'s attrs):

    * ``as_is``: the plan's tags, as the model saw them in training;
    * ``removed``: each tag of the plan filled from around it (``confounder.removal``), never from the tag;
    * ``moved``: the tag on every non-target image and on none of the target label's (:func:`move`).

    Returns ``{name: (images (N, C, H, W) uint8, tagged (N,) bool)}``.
    """
    cfg = validate(params)
    if len(plan_frame) != len(rows):
        raise ValueError(f"plan_frame has {len(plan_frame)} rows for {len(rows)} images; align it with rows")
    frame = plan_frame.reset_index(drop=True)
    frame.attrs.update(plan_frame.attrs)
    as_is = stamp_plan(images_u8, rows, frame)
    boxes = frame[list(BOX_COLUMNS)].to_numpy(np.int64)
    removed = remove(as_is, boxes, cfg["removal"], context=cfg["remove_context"], sigma=cfg["remove_sigma"])
    moved_plan = move(frame, params)
    base = np.asarray(images_u8[rows])
    moved_plan["value"] = tag_values(base, moved_plan[list(BOX_COLUMNS)].to_numpy(np.int64), cfg["intensity"])
    kept = frame["tagged"].to_numpy(bool) & moved_plan["tagged"].to_numpy(bool)
    moved_plan.loc[kept, "value"] = frame.loc[kept, "value"]         # a tag that stays keeps its value
    moved = stamp_plan(images_u8, rows, moved_plan)
    tagged = frame["tagged"].to_numpy(bool)
    return {"as_is": (as_is, tagged), "removed": (removed, np.zeros(len(rows), dtype=bool)),
            "moved": (moved, moved_plan["tagged"].to_numpy(bool))}
