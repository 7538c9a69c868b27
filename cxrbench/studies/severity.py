"""Plausibility against radiologists' severity scores: does a map put more relevance in the lungs of sicker patients?

The covid-chestxray-dataset mirror ships ``annotations/covid-severity-scores.csv``
(Cohen et al. 2020, arXiv 2005.11856; CC BY-SA): for 94 images, the mean of
three raters' *geographic extent* (0-8: extent of ground-glass opacity or
consolidation, 0-4 per lung) and *opacity* (0-6: degree of opacity, 0-3 per
lung). The file opens with ``## `` comment lines (title, ``License:``,
``Citation:``, the scores' definitions); :func:`read_scores_meta` keeps them
so a report can credit the source.

* :func:`read_scores`: the scores by pipeline path (``covid_chestxray/images/<filename>``).
* :func:`lung_share`: per map, the share of its positive relevance inside the lung mask.
* :func:`correlate`: Spearman's rho between that share and a score, with a CI over patient groups.
* Controls beside each method: the lung mask's area share (a uniform random map), the image itself and the
  squared image as maps (:func:`image_controls`: zero-baseline maps scale with the input, and opacities are
  bright), and the mean lung intensity (:func:`lung_intensity`).
* :func:`partial_correlate`: the partial Spearman correlation of a method's share with the score given lung
  area and mean lung intensity, its CI over patient groups, its p-value, Holm-corrected across the methods
  of a backbone (:func:`holm`).
* :func:`run`: the severity stage, every classifier's maps of the scored held-out test images.

Degenerate inputs give a status, never a number: a map that is constant,
non-finite or has no positive value, an empty lung mask (:func:`lung_share`),
fewer than 5 scored maps or fewer than 2 patient groups (:func:`correlate`).
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats

from cxrbench.classify import training
from cxrbench.core import bootstrap, paths, runtime
from cxrbench.core import params as P
from cxrbench.core.bootstrap import format_ci, group_ci
from cxrbench.core.io import write_json, write_text
from cxrbench.data.cache import Cache
from cxrbench.explain import attribution as A
from cxrbench.explain.metrics.localisation import counts, map_status
from cxrbench.lungs.segmentation import LUNG_MASKS, load_lung_masks

PREFIX = "covid_chestxray/images/"
EXTENT_COLUMNS = ("geographic_mean", "geographic_extent_mean")      # the mirror's name, and the documented one
RANGES = {"extent": (0.0, 8.0), "opacity": (0.0, 6.0)}
SHARE_STATUSES = ("ok", "constant", "nonfinite", "no_positive", "empty_mask")
MODES = ("positive", "absolute")
MIN_N, MIN_GROUPS = 5, 2
AREA, IMAGE, IMAGE_SQ = "lung area (random map)", "image as map", "image squared as map"
CONTROLS = (AREA, IMAGE, IMAGE_SQ)
INTENSITY = "mean lung intensity"
COVARIATES = (AREA, INTENSITY)          # what partial_correlate holds fixed
OUT_JSON, OUT_MD = paths.SEVERITY, paths.SEVERITY_MD


# --- scores --------------------------------------------------------------------------------------------------

def _lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise ValueError(f"{path}: no such file (the covid-chestxray-dataset mirror's "
                         f"annotations/covid-severity-scores.csv)")
    text = path.read_text(encoding="utf-8-sig")
    return [(i, line) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_scores_meta(path: str | Path) -> dict[str, str]:
    """The file's ``## `` comment lines: ``title`` (the first, without a key) and ``key: value`` pairs with the
    key lower-cased (``license``, ``citation``, ``geographic_extent_mean``, ``opacity_mean``)."""
    path = Path(path)
    meta: dict[str, str] = {}
    for i, line in _lines(path):
        if not line.startswith("##"):
            break
        body = line[2:].strip().rstrip(",").strip()
        m = re.match(r"([A-Za-z_][A-Za-z0-9_]*):\s*(.*)$", body)
        if m:
            meta[m.group(1).lower()] = m.group(2).strip()
        elif "title" not in meta:
            meta["title"] = body
        else:
            meta[f"line_{i}"] = body
    for needed in ("license", "citation"):
        if needed not in meta:
            raise ValueError(f"{path}: no '## {needed.capitalize()}:' line; the scores' source must be credited")
    return meta


def read_scores(path: str | Path, prefix: str = PREFIX) -> pd.DataFrame:
    """The severity scores: columns ``path`` (``prefix + filename``), ``extent`` (0-8), ``opacity`` (0-6).

    Validates the header (``filename``, ``geographic_mean`` or
    ``geographic_extent_mean``, ``opacity_mean``), one row per file, and the
    ranges; errors name the file and line.
    """
    path = Path(path)
    rows = [(i, line) for i, line in _lines(path) if not line.startswith("##")]
    if not rows:
        raise ValueError(f"{path}: no header and no rows after the '##' comment lines")
    (hline, header), body = rows[0], rows[1:]
    cols = [c.strip() for c in next(csv.reader([header]))]
    if len(cols) != 3 or cols[0] != "filename" or cols[1] not in EXTENT_COLUMNS or cols[2] != "opacity_mean":
        raise ValueError(f"{path}, line {hline}: header {cols}; expected filename, one of {list(EXTENT_COLUMNS)}, "
                         f"opacity_mean")
    out, seen = [], {}
    for i, line in body:
        cells = [c.strip() for c in next(csv.reader([line]))]
        if len(cells) != 3 or not cells[0]:
            raise ValueError(f"{path}, line {i}: expected 3 cells (filename, extent, opacity), got {cells}")
        if cells[0] in seen:
            raise ValueError(f"{path}, line {i}: {cells[0]} already scored on line {seen[cells[0]]}")
        seen[cells[0]] = i
        values = {}
        for name, cell in zip(("extent", "opacity"), cells[1:]):
            try:
                v = float(cell)
            except ValueError:
                raise ValueError(f"{path}, line {i}: {name} {cell!r} is not a number") from None
            lo, hi = RANGES[name]
            if not (math.isfinite(v) and lo <= v <= hi):
                raise ValueError(f"{path}, line {i}: {name} {v!r} outside its range {lo:g}-{hi:g}")
            values[name] = v
        out.append({"path": prefix + cells[0], **values})
    if not out:
        raise ValueError(f"{path}: a header but no scored image")
    return pd.DataFrame(out, columns=["path", "extent", "opacity"])


def scores_for(scores: pd.DataFrame, paths: Iterable[str], column: str) -> np.ndarray:
    """``column`` of :func:`read_scores` aligned to ``paths`` (NaN where an image is not scored)."""
    if column not in RANGES:
        raise ValueError(f"column: expected one of {list(RANGES)}, got {column!r}")
    return scores.set_index("path")[column].reindex(list(paths)).to_numpy(np.float64)


# --- lung share ----------------------------------------------------------------------------------------------

def lung_share(maps: Any, lung_masks: Any, mode: str = "positive") -> tuple[np.ndarray, np.ndarray]:
    """Share of each map's relevance inside its lung mask: ``sum(R+ in lungs) / sum(R+)``.

    ``maps`` (N, H, W) signed relevance, ``lung_masks`` (N, H, W) booleans or
    0/1. ``mode='positive'``: ``R+ = max(R, 0)`` (evidence for the class, as
    the relevance mass accuracy); ``'absolute'``: ``|R|``. Returns ``(values,
    status)``: status ``empty_mask`` (no lung pixel), ``nonfinite``,
    ``constant`` or ``no_positive`` (nothing to share) give NaN.
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
    a = np.asarray(maps)
    m = np.asarray(lung_masks)
    if a.ndim != 3 or 0 in a.shape:
        raise ValueError(f"maps: expected a non-empty (N, H, W) array (sum the channels first), got shape {a.shape}")
    if m.shape != a.shape:
        raise ValueError(f"lung_masks: expected the maps' shape {a.shape} (resize the masks to the maps), got "
                         f"{m.shape}")
    if m.dtype != bool and not np.isin(m, (0, 1)).all():
        raise ValueError(f"lung_masks: expected booleans or 0/1, got dtype {m.dtype} with other values")
    n = len(a)
    status = map_status(a).astype(object)
    flat, mask = a.reshape(n, -1).astype(np.float64), m.reshape(n, -1).astype(bool)
    ok = status == "ok"
    weight = np.zeros_like(flat)
    weight[ok] = np.maximum(flat[ok], 0.0) if mode == "positive" else np.abs(flat[ok])
    total = weight.sum(1)
    status[ok & (total == 0)] = "no_positive"
    status[~mask.any(1)] = "empty_mask"
    good = status == "ok"
    values = np.full(n, np.nan)
    values[good] = (weight[good] * mask[good]).sum(1) / total[good]
    return values, status


def share_counts(status: Any) -> dict[str, int]:
    """How many maps have each :func:`lung_share` status (zeros included)."""
    return counts(status, SHARE_STATUSES)


# --- correlation ---------------------------------------------------------------------------------------------

def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def correlate(values: Any, scores: Any, groups: Any, *, n_boot: int, seed: int, confidence: float = 0.95,
              method: str = bootstrap.DEFAULT_METHOD, min_valid_share: float = bootstrap.DEFAULT_MIN_VALID) -> dict:
    """Spearman's rho between ``values`` (e.g. :func:`lung_share`) and ``scores``, with a CI over patient groups
    (``method``, ``min_valid_share``: :func:`cxrbench.core.bootstrap.group_ci`'s, ``stats.*``).

    Pairs where either is NaN (a map that is not ``ok``, an unscored image) are
    dropped and counted (``dropped``). Status ``too_few`` (fewer than 5 pairs or
    2 groups) or ``constant`` (one side has a single value): ``rho`` None.
    Otherwise ``rho`` is a group_ci dict (``estimate``, ``low``, ``high``, ...)
    and ``p`` the asymptotic p-value of scipy's spearmanr (images as independent).
    """
    v = np.asarray(values, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(groups, dtype=object)
    if v.ndim != 1 or s.shape != v.shape or g.shape != v.shape:
        raise ValueError(f"values, scores, groups: expected three 1-d arrays of one length, got shapes {v.shape}, "
                         f"{s.shape}, {g.shape}")
    if n_boot < 100:
        raise ValueError(f"n_boot={n_boot}: at least 100 resamples are needed for a bootstrap interval (stats.resamples)")
    keep = np.isfinite(v) & np.isfinite(s)
    v, s, g = v[keep], s[keep], g[keep]
    n, n_groups = int(len(v)), int(len(set(g.tolist())))
    out: dict[str, Any] = {"n": n, "groups": n_groups, "dropped": int((~keep).sum()), "rho": None, "p": None,
                           "confidence": confidence, "n_boot": n_boot}
    if n < MIN_N or n_groups < MIN_GROUPS:
        return {**out, "status": "too_few"}
    if _spearman(v, s) is None:
        return {**out, "status": "constant"}
    ci = group_ci(lambda idx: _spearman(v[idx], s[idx]), g, n_boot=n_boot, seed=seed, confidence=confidence,
                  method=method, min_valid_share=min_valid_share)
    ci = {k: (None if isinstance(x, float) and not math.isfinite(x) else x) for k, x in ci.items()}
    return {**out, "status": "ok", "rho": ci, "p": float(stats.spearmanr(v, s).pvalue)}


def image_controls(images: Any, lung_masks: Any) -> dict[str, np.ndarray]:
    """The image (N, H, W, values >= 0) and the squared image used as maps: their :func:`lung_share`. What a
    map that only scales with brightness would score."""
    img = np.asarray(images, dtype=np.float64)
    if img.ndim != 3 or (img < 0).any():
        raise ValueError(f"images: expected non-negative (N, H, W) intensities, got shape {img.shape}")
    return {IMAGE: lung_share(img, lung_masks)[0], IMAGE_SQ: lung_share(img ** 2, lung_masks)[0]}


def lung_intensity(images: Any, lung_masks: Any) -> np.ndarray:
    """Mean intensity of each image inside its lung mask (NaN where the mask is empty)."""
    img = np.asarray(images, dtype=np.float64)
    m = np.asarray(lung_masks).astype(bool)
    if img.shape != m.shape:
        raise ValueError(f"lung_masks: expected the images' shape {img.shape}, got {m.shape}")
    n = m.reshape(len(m), -1).sum(1)
    total = (img * m).reshape(len(m), -1).sum(1)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def _partial_spearman(v: np.ndarray, s: np.ndarray, z: np.ndarray) -> float | None:
    """Spearman's partial correlation: Pearson's r of the ranks of ``v`` and ``s`` after each is regressed
    (least squares, with an intercept) on the ranks of the columns of ``z``."""
    if np.ptp(v) == 0 or np.ptp(s) == 0:
        return None
    design = np.column_stack([np.ones(len(v))] + [stats.rankdata(c) for c in z.T])
    rv = stats.rankdata(v) - design @ np.linalg.lstsq(design, stats.rankdata(v), rcond=None)[0]
    rs = stats.rankdata(s) - design @ np.linalg.lstsq(design, stats.rankdata(s), rcond=None)[0]
    scale = np.sqrt((rv ** 2).sum() * (rs ** 2).sum())
    if not scale > 1e-9 * len(v) ** 2:         # a residual that is (up to float error) zero: undefined
        return None
    return float((rv * rs).sum() / scale)


def partial_correlate(values: Any, scores: Any, covariates: Mapping[str, Any], groups: Any, *, n_boot: int,
                      seed: int, confidence: float = 0.95, method: str = bootstrap.DEFAULT_METHOD,
                      min_valid_share: float = bootstrap.DEFAULT_MIN_VALID) -> dict:
    """Spearman's partial correlation of ``values`` with ``scores`` given ``covariates`` (name -> (N,) array,
    e.g. lung area and mean lung intensity), with a CI over resampled patient groups (as :func:`correlate`).

    Rows with any NaN are dropped and counted. ``p``: two-sided t-test of the partial correlation with
    ``groups - 2 - k`` degrees of freedom (patients, not images, count as observations; ``k`` covariates),
    for :func:`holm`. Status ``too_few`` (fewer than 5 + k rows or 3 + k groups) or ``constant``: no number.
    """
    v = np.asarray(values, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(groups, dtype=object)
    names = list(covariates)
    z = np.column_stack([np.asarray(covariates[c], dtype=np.float64) for c in names]) if names else \
        np.zeros((len(v), 0))
    if v.ndim != 1 or s.shape != v.shape or g.shape != v.shape or z.shape[0] != len(v):
        raise ValueError(f"values, scores, covariates, groups: expected arrays of one length, got {v.shape}, "
                         f"{s.shape}, {z.shape}, {g.shape}")
    keep = np.isfinite(v) & np.isfinite(s) & np.isfinite(z).all(1)
    v, s, g, z = v[keep], s[keep], g[keep], z[keep]
    k, n, n_groups = len(names), int(len(v)), int(len(set(g.tolist())))
    out: dict[str, Any] = {"n": n, "groups": n_groups, "dropped": int((~keep).sum()), "covariates": names,
                           "rho": None, "p": None, "confidence": confidence, "n_boot": n_boot}
    if n < MIN_N + k or n_groups < 3 + k:
        return {**out, "status": "too_few"}
    r = _partial_spearman(v, s, z)
    if r is None:
        return {**out, "status": "constant"}
    ci = group_ci(lambda idx: _partial_spearman(v[idx], s[idx], z[idx]), g, n_boot=n_boot, seed=seed,
                  confidence=confidence, method=method, min_valid_share=min_valid_share)
    ci = {key: (None if isinstance(x, float) and not math.isfinite(x) else x) for key, x in ci.items()}
    df = n_groups - 2 - k
    t = r * math.sqrt(df / max(1e-300, 1 - r * r))
    return {**out, "status": "ok", "rho": ci, "p": float(2 * stats.t.sf(abs(t), df)), "df": df}


def holm(pvalues: Mapping[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjustment of the p-values of one family (None: not tested, stays None)."""
    tested = sorted(((p, k) for k, p in pvalues.items() if p is not None), key=lambda t: t[0])
    m, out, running = len(tested), {k: None for k in pvalues}, 0.0
    for i, (p, k) in enumerate(tested):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def partial_table(partial: Mapping[str, Mapping[str, Mapping[str, Any]]], alpha: float = 0.05) -> str:
    """Markdown: per backbone and method, the partial correlation [CI], p, Holm-adjusted p, n."""
    lines = ["| backbone | method | partial Spearman rho [CI] | p | p (Holm) | n | groups | status |",
             "|---|---|---|---|---|---|---|---|"]
    for bb, per in partial.items():
        for m, r in per.items():
            rho = format_ci(r["rho"]) if r["status"] == "ok" else "–"
            p = "–" if r["p"] is None else f"{r['p']:.3g}"
            ph = r.get("p_holm")
            mark = "" if ph is None else (" *" if ph < alpha else "")
            lines.append(f"| {bb} | {m} | {rho} | {p} | {'–' if ph is None else f'{ph:.3g}'}{mark} | {r['n']} | "
                         f"{r['groups']} | {r['status']} |")
    return "\n".join(lines)


def severity_table(rows: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Mapping[str, Any]]],
                   columns: Sequence[str] | None = None, meta: Mapping[str, str] | None = None) -> str:
    """Markdown: one row per :func:`correlate` result.

    ``rows``: a list of correlate() dicts, each with its label keys ``columns``
    (default ``method, score``), or a nested ``{backbone: {method: correlate()}}``
    (labelled ``backbone, method``). ``meta`` (:func:`read_scores_meta`) adds
    the source's licence and citation.
    """
    if isinstance(rows, Mapping):
        columns = tuple(columns or ("backbone", "method"))
        rows = [{columns[0]: outer, columns[1]: inner, **r}
                for outer, per in rows.items() for inner, r in per.items()]
    columns = tuple(columns or ("method", "score"))
    if not rows:
        raise ValueError("rows: nothing to tabulate (expected correlate() dicts with label keys)")
    for r in rows:
        missing = [c for c in (*columns, "status", "rho", "n", "groups") if c not in r]
        if missing:
            raise ValueError(f"rows: a row lacks {missing}; each row is correlate(...) plus the label columns "
                             f"{list(columns)}")
    lines = ["| " + " | ".join([*columns, "Spearman rho [CI]", "n", "groups", "dropped", "status"]) + " |",
             "|" + "---|" * (len(columns) + 5)]
    for r in rows:
        rho = format_ci(r["rho"]) if r["status"] == "ok" else "–"
        lines.append("| " + " | ".join([*(str(r[c]) for c in columns), rho, str(r["n"]), str(r["groups"]),
                                        str(r.get("dropped", 0)), r["status"]]) + " |")
    conf, n_boot = rows[0].get("confidence"), rows[0].get("n_boot")
    how = next((r["rho"]["method"] for r in rows if isinstance(r.get("rho"), Mapping) and r["rho"].get("method")),
               bootstrap.DEFAULT_METHOD)                    # the interval the CIs shown used (stats.method)
    lines += ["", f"Spearman rho between the share of positive relevance inside the lungs and the radiologists' "
                  f"mean score; CI: {100 * conf:g} % bootstrap over patient groups ({n_boot} resamples; "
                  f"{bootstrap.method_name(how)}, benchmarks/README.md). "
                  f"No number with fewer than {MIN_N} maps or {MIN_GROUPS} groups."]
    if meta:
        lines.append(f"Scores: {meta.get('citation', '?')} License: {meta.get('license', '?')}.")
    return "\n".join(lines)


# --- the stage -----------------------------------------------------------------------------------------------

def run(params: dict) -> None:
    """The severity stage on ``params``: every classifier x method of severity.methods explained on the scored
    held-out test images, the lung share correlated with the score; metrics/severity.{json,md}."""
    sv = P.section(params, "severity")
    methods = sv.get("methods")
    if not isinstance(methods, list):
        raise P.ParamError("severity.methods", f"expected a list of attribution methods ([] skips), got {methods!r}")
    for m in methods:
        A.check_method(m, "severity.methods")
    score_col = P.check_choice("severity.score", sv.get("score"), ["extent", "opacity"])
    if not methods:
        write_json(OUT_JSON, {"status": "skipped", "reason": "severity.methods is empty"})
        write_text(OUT_MD, "### Severity plausibility\n\nSkipped: severity.methods is empty.\n")
        print("severity: skipped (severity.methods is empty)")
        return
    stats = bootstrap.validate(params)
    rt = runtime.configure()
    device = runtime.device()
    s = A.validate(params)
    target_name = sv.get("target")
    scores_file = Path(sv.get("scores_file", ""))
    scores = read_scores(scores_file)
    meta_lines = read_scores_meta(scores_file)

    cache = Cache(paths.CACHE, paths.INDEX)
    splits = pd.read_csv(paths.SPLITS, keep_default_na=False)
    test = splits[splits["split"] == "test"]
    scored = test.merge(scores, on="path", how="inner").reset_index(drop=True)
    base = {"scores_file": str(scores_file), "score": score_col, "scored_images": int(len(scores)),
            "scored_test_images": int(len(scored)), "scored_test_groups": int(scored["group"].nunique()),
            "license": meta_lines, "methods": methods, "target": target_name}
    if len(scored) < 5:
        write_json(OUT_JSON, {**base, "status": "too_few", "reason": f"{len(scored)} scored test images (< 5)"})
        write_text(OUT_MD, f"### Severity plausibility\n\nNot scored: {len(scored)} held-out test images have a "
                           f"severity score (< 5).\n")
        print(f"severity: too few scored test images ({len(scored)})")
        return
    rows = cache.rows(scored["path"])
    if not Path(LUNG_MASKS).is_file():
        raise FileNotFoundError(f"{LUNG_MASKS} not found: run the segment stage (dvc repro segment)")
    lungs = np.asarray(load_lung_masks(len(cache.index), mmap=True)[rows])
    training.checkpoint_file(params)                        # evaluate.checkpoint checked before any work
    shares: dict = {}          # backbone -> method -> list over folds of (N,) shares
    status: dict = {}
    for bb in P.section(params, "train.backbones"):
        for k in P.section(params, "train.folds"):
            model, meta = A.load_classifier(params, bb, k, device)
            labels = list(meta["labels"])
            if target_name not in labels:
                raise P.ParamError("severity.target", f"{target_name!r} is not among the classifier's labels")
            x = A.classifier_input(cache.images[rows], meta, device, lungs)
            masks = A.resize_masks(lungs, tuple(x.shape[-2:]))
            target = torch.full((len(x),), labels.index(target_name), device=device)
            run = A.attribute_all(methods, model, x, target, s, bb, log=lambda msg: print(f"  {bb}-f{k}" + msg))
            maps = run.maps
            status[f"{bb}-f{k}"] = run.status
            for m, a in maps.items():
                v, map_status = lung_share(a.astype(np.float32), masks)
                shares.setdefault(bb, {}).setdefault(m, []).append(v)
                status[f"{bb}-f{k}"][m]["maps"] = share_counts(map_status)
            area = masks.reshape(len(masks), -1).mean(1)
            image = x.mean(1).cpu().numpy().astype(np.float64)            # the classifier's input, 0..1
            controls = {AREA: area, **image_controls(image, masks), INTENSITY: lung_intensity(image, masks)}
            for name, v in controls.items():
                shares.setdefault(bb, {}).setdefault(name, []).append(v)
            print(f"severity: {bb}-f{k} {len(maps)}/{len(methods)} methods on {len(x)} scored test images")
    y = scored[score_col].to_numpy(float)
    groups = scored["group"].to_numpy()
    results, partial = {}, {}
    kw = bootstrap.options(stats)           # the whole stats section: the interval's method too
    for bb, per in shares.items():
        mean = {m: np.stack(folds).mean(0) for m, folds in per.items()}   # NaN where any fold's map is degenerate
        for m, v in mean.items():
            results.setdefault(bb, {})[m] = correlate(v, y, groups, **kw)
        cov = {c: mean[c] for c in COVARIATES}
        partial[bb] = {m: partial_correlate(v, y, cov, groups, **kw) for m, v in mean.items()
                       if m not in COVARIATES}
        adjusted = holm({m: r["p"] for m, r in partial[bb].items() if m not in CONTROLS})
        for m, r in partial[bb].items():
            r["p_holm"] = adjusted.get(m)
            r["family"] = "the methods of this backbone (Holm)" if m in adjusted else "control: not in the family"
    write_json(OUT_JSON, {**base, "status": "ok", "results": results, "partial": partial,
                          "controls": {"brightness": [IMAGE, IMAGE_SQ, INTENSITY], "area": AREA,
                                       "partial_given": list(COVARIATES)},
                          "methods_status": status, "runtime": rt})
    write_text(OUT_MD, "\n".join([
        "### Severity plausibility", "",
        f"Spearman correlation between the share of positive relevance inside the lungs and the radiologists' "
        f"{score_col} score, {len(scored)} held-out test images of {scored['group'].nunique()} patients "
        f"(mean over folds per backbone; CI over patients; dropped: images whose map was degenerate in some fold). Control: the lung mask's area share (what a "
        f"uniform random map gives). Scores: {scores_file.name} (CC BY-SA, Cohen et al. 2020).", "",
        severity_table(results), "",
        f"Brightness controls: the classifier's input used as a map ({IMAGE!r}) and squared ({IMAGE_SQ!r}), and "
        f"the {INTENSITY} itself: a map that scales with the input scores like them without finding anything. "
        f"Below, each method's partial correlation given {' and '.join(COVARIATES)} (ranks regressed out); "
        f"p: t-test with patients as observations; Holm across the methods of a backbone (* p < 0.05); the "
        f"image controls are shown, not counted in the family.", "",
        partial_table(partial), ""]))
    print(f"severity: {OUT_MD}")
