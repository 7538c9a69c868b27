"""Paired per-image checks of the CI gate: an explanation metric compared image by image with the baseline run.

A paired check reads a per-image table (``metrics/aoppc_per_image.csv``: method, backbone, fold, image, path,
group, metric, value) and names one method's metric, optionally minus a control's on the same image::

    metrics/aoppc_per_image.csv:occlusion|aoppc_pixels_morf - random
    metrics/aoppc_per_image.csv:resnet18/occlusion|aoppc_pixels_morf - random     # one backbone's models only

Its value in a run is the mean over images of the per-image value (:func:`per_image`, :func:`value`). The
snapshot keeps each image's value in the per-image baseline (``gate.per_image_baseline``, keyed by backbone,
fold and image path); the check pairs this run's images with the baseline's and reports the mean per-image
change with a bootstrap CI over patients (:func:`compare`: group_ci's default interval, 1000 resamples, seed
0, whatever the run's ``stats``: the CI is shown, not judged, and stays one yardstick across profiles). Pairing
removes the spread of which images were drawn, so the tolerance only has to cover what the images' scores
themselves move. Fewer paired images than ``min_share`` of the baseline's is its own failure (``UNPAIRED``):
the sample changed, so the baseline must be renewed deliberately. Which checks the gate can guard at all is
measured over finished spread runs (:func:`candidates`, :func:`choose`; ``scripts/choose_gate_checks.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.core import paths
from cxrbench.core.params import ParamError

__all__ = ["KEY", "parse", "per_image", "value", "baseline_rows", "compare", "candidates", "ratio", "choose"]

KEY = ["backbone", "fold", "path"]


def parse(metric: str) -> tuple[str, str, str, str | None, str | None]:
    """``FILE:[BACKBONE/]METHOD|METRIC[ - CONTROL]`` -> (file, method, metric, control or None, backbone or None).
    ``BACKBONE/`` keeps that backbone's models only: a backbone whose maps move with the CPU's kernels far more
    than another's (docs/ci-and-gate.md) would otherwise set the whole check's spread."""
    file, _, rest = metric.partition(":")
    head, _, control = rest.partition(" - ")
    method, _, name = head.partition("|")
    backbone, _, method = method.strip().rpartition("/")
    if (not file.endswith(".csv") or not method or not name or (" - " in rest and not control.strip())
            or ("/" in head and not backbone)):
        raise ParamError("gate.checks", f"paired metric {metric!r}: expected FILE.csv:[BACKBONE/]METHOD|METRIC or "
                                        f"FILE.csv:[BACKBONE/]METHOD|METRIC - CONTROL")
    return file, method.strip(), name.strip(), control.strip() or None, backbone.strip() or None


def per_image(metric: str, root: Path = Path(".")) -> pd.DataFrame | None:
    """Per image (``KEY`` + group): the method's value, minus the control's on the same image when named; None
    when the file is missing. An image where either value is missing or not finite is left out."""
    file, method, name, control, backbone = parse(metric)
    path = Path(root) / file
    if not path.is_file():
        return None
    f = pd.read_csv(path, keep_default_na=False, dtype={"path": str, "backbone": str, "group": str})
    f = f[f["metric"] == name]
    if backbone is not None:
        f = f[f["backbone"] == backbone]
    cols = KEY + ["group", "value"]
    a = f[f["method"] == method][cols]
    if control is not None:
        b = f[f["method"] == control][KEY + ["value"]]
        a = a.merge(b, on=KEY, suffixes=("", "_control"))
        a = a.assign(value=a["value"].astype(float) - a["value_control"].astype(float))[cols]
    a = a.assign(value=pd.to_numeric(a["value"], errors="coerce"))
    return a[np.isfinite(a["value"].to_numpy(float))].reset_index(drop=True)


def value(metric: str, root: Path = Path(".")) -> float | None:
    """The run's value of a paired check: the mean over its images (None without images)."""
    f = per_image(metric, root)
    return None if f is None or not len(f) else float(f["value"].mean())


def baseline_rows(metric: str, root: Path = Path(".")) -> pd.DataFrame:
    """The per-image baseline rows of one paired check (``metric`` column first)."""
    f = per_image(metric, root)
    if f is None or not len(f):
        raise FileNotFoundError(f"{metric}: no per-image values under {root}")
    return f.assign(metric=metric)[["metric"] + KEY + ["group", "value"]]


def compare(metric: str, baseline: pd.DataFrame, root: Path = Path("."), min_share: float = 0.9,
            n_boot: int = 1000, seed: int = 0) -> dict:
    """This run's per-image values of ``metric`` paired with ``baseline``'s (the per-image baseline file's rows):
    ``change`` (mean over paired images of current - baseline), its 95 % CI over patients, ``paired`` and
    ``baseline_images``; ``status`` ``UNPAIRED`` when fewer than ``min_share`` of the baseline's images pair,
    ``MISSING`` when this run has no per-image values."""
    from cxrbench.core.bootstrap import group_ci

    base = baseline[baseline["metric"] == metric].astype({"fold": str, "path": str, "backbone": str})
    cur = per_image(metric, root)
    out = {"baseline_images": int(len(base)), "paired": 0, "change": None, "low": None, "high": None}
    if cur is None or not len(cur):
        return {**out, "status": "MISSING"}
    both = base.merge(cur.astype({"fold": str}), on=KEY, suffixes=("_base", ""))
    out["paired"] = int(len(both))
    if not len(base) or len(both) < min_share * len(base):
        return {**out, "status": f"UNPAIRED ({len(both)} of {len(base)} baseline images)"}
    d = both["value"].to_numpy(float) - both["value_base"].to_numpy(float)
    out["change"] = float(d.mean())
    groups = both["group"].astype(str).to_numpy()
    if len(set(groups.tolist())) >= 2:
        ci = group_ci(lambda idx: float(d[idx].mean()), groups, n_boot=n_boot, seed=seed)
        out.update(low=ci["low"], high=ci["high"], patients=ci["groups"])
    return {**out, "status": "paired"}


# the deletion metrics a paired check may guard (most relevant first), and those whose fill is not black
CANDIDATE_METRICS = ["aoppc_pixels_morf", "aoppc_threshold_morf", "aoppc_region_black_morf",
                     "aoppc_region_blur_morf", "aoppc_region_road_morf"]
FILL_NEUTRAL = ("aoppc_region_blur_morf", "aoppc_region_road_morf")


def candidates(run_dirs: list[Path], backbone: str, methods: list[str], factor: float,
               file: str = paths.AOPPC_PER_IMAGE) -> list[dict]:
    """Every check the gate could guard on one backbone's models: one row per method x deletion metric (its gain
    over the random map) and the random control per metric, with its value in each run folder (``run_dirs``,
    each holding ``file``), the range over them and the tolerance (``factor`` x range)."""
    rows = []
    for name in CANDIDATE_METRICS:
        for method in [*methods, "random"]:
            metric = f"{file}:{backbone}/{method}|{name}" + ("" if method == "random" else " - random")
            frames = [per_image(metric, d) for d in run_dirs]
            if any(f is None or not len(f) for f in frames):
                continue
            values = [float(f["value"].mean()) for f in frames]
            spread = max(values) - min(values)
            rows.append({"metric": metric, "fill_neutral": name in FILL_NEUTRAL, "control": method == "random",
                         "values": values, "images": len(frames[0]), "range": spread,
                         "tolerance": factor * spread})
    return rows


# in the choice, a tolerance counts as at least this: three runs that happen to agree to 1e-3 do not make a
# check more telling than one that a machine not measured could move by a few thousandths
CHOICE_FLOOR = 0.005


def ratio(row: dict, floor: float = CHOICE_FLOOR) -> float:
    """A candidate's reference value per tolerance, the tolerance counted as at least ``floor``."""
    return abs(row["values"][0]) / max(row["tolerance"], floor)


def choose(rows: list[dict], cap: float, floor: float = CHOICE_FLOOR) -> dict[str, dict]:
    """The rule of docs/ci-and-gate.md, among the checks whose tolerance is within ``cap``: the largest gain per
    tolerance (:func:`ratio`) under a black fill (pixel deletion, threshold or black region); the largest under a
    fill-neutral one (blur or ROAD) of another method, so that the two checks watch two methods; and the
    random-map control under the metric where a control collapsed to 0 would move it farthest beyond its
    tolerance. Only positive gains are candidates."""
    ok = [r for r in rows if r["tolerance"] <= cap]
    gains = [r for r in ok if not r["control"] and r["values"][0] > 0]
    black = max((r for r in gains if not r["fill_neutral"]), key=lambda r: ratio(r, floor), default=None)
    method = black["metric"].partition("/")[2].partition("|")[0] if black else None
    neutral = max((r for r in gains if r["fill_neutral"]
                   and r["metric"].partition("/")[2].partition("|")[0] != method),
                  key=lambda r: ratio(r, floor), default=None)
    control = max((r for r in ok if r["control"]), key=lambda r: abs(r["values"][0]) - r["tolerance"],
                  default=None)
    return {k: v for k, v in {"black": black, "fill-neutral": neutral, "control": control}.items() if v}
