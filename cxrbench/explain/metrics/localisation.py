"""Localisation of attribution maps against a known region: implemented once, vectorised.

Every function takes a batch of maps ``(N, H, W)`` (one channel: reduce the
input channels first, e.g. sum them) and a region per map: boxes ``(N, 4)``
half-open ``x0, y0, x1, y1`` in map pixels (``x`` the column, as
:mod:`cxrbench.data.confounder` writes them) or boolean masks ``(N, H, W)``. Values
are signed relevance; larger means "more evidence for the explained class".

Metrics (chance = their expectation for a map of i.i.d. uniform noise, with
``p = |region| / (H W)``):

* **pointing game** (Zhang et al. 2018): 1 if the map's maximum lies in the
  region, else 0. A tie for the maximum is broken at random with the caller's
  seeded ``rng`` (``ties='random'``); ``ties='any'`` counts a hit when any
  maximal pixel is inside (Quantus' rule). Chance: ``p``.
* **relevance mass accuracy** (Arras et al. 2022): the share of the *positive*
  relevance that lies inside the region, ``sum(max(R, 0) in region) / sum(max(R, 0))``.
  Negative relevance (evidence against the class) is set to zero, as Arras
  et al. do; Quantus 0.6 divides signed sums instead (equal when no value is
  negative). A map with no positive value gets status ``no_positive`` and NaN.
  In [0, 1]; chance: about ``p``.
* **relevance rank accuracy** (Arras et al. 2022): with ``K = |region|``, the
  share of the K highest-valued pixels that lie inside the region. Pixels tied
  at the K-th value are counted by their expected share under a uniformly
  random tie-break (exact, no draw): ``(#{R > t, inside} + (K - #{R > t}) x
  #{R = t, inside} / #{R = t}) / K``, ``t`` the K-th largest value. Without a
  tie at ``t`` this is Quantus' value. Chance: ``p``.
* **AUROC**: the map as a pixel-wise detector of the region (Mann-Whitney,
  ties count one half); 1 = every region pixel outranks every other pixel.
  Chance: 0.5.

A map with a non-finite value (status ``nonfinite``) or one value everywhere
(``constant``) has no location: every metric is NaN, never a number that could
be averaged in. :func:`counts` tallies the statuses.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

METRICS = ("pointing", "mass", "rank", "auroc")
STATUSES = ("ok", "no_positive", "constant", "nonfinite")
TIES = ("random", "any")


# --- inputs ------------------------------------------------------------------------------------------------

def _maps(maps: Any) -> np.ndarray:
    a = np.asarray(maps)
    if a.ndim != 3 or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)) \
            or a.dtype == bool or 0 in a.shape:
        raise ValueError(f"maps: expected a non-empty real array (N, H, W) (one channel per map: sum the "
                         f"channels first), got dtype {a.dtype}, shape {a.shape}")
    return a.astype(np.float64, copy=False)


def box_masks(boxes: Any, shape: tuple[int, int]) -> np.ndarray:
    """Boolean masks (N, H, W) of half-open boxes ``x0, y0, x1, y1`` (N, 4)."""
    b = np.asarray(boxes)
    h, w = shape
    if b.ndim != 2 or b.shape[1] != 4 or not np.issubdtype(b.dtype, np.integer):
        raise ValueError(f"boxes: expected integers of shape (N, 4) (x0, y0, x1, y1), got dtype {b.dtype}, "
                         f"shape {b.shape}")
    bad = (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > w) | (b[:, 3] > h) | (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
    if bad.any():
        raise ValueError(f"boxes: row {int(np.flatnonzero(bad)[0])} {b[bad][0].tolist()} is not a non-empty box "
                         f"inside {h} x {w} (untagged rows, -1, have no region: select the tagged rows first)")
    ys, xs = np.arange(h), np.arange(w)
    rows = (ys >= b[:, 1, None]) & (ys < b[:, 3, None])
    cols = (xs >= b[:, 0, None]) & (xs < b[:, 2, None])
    return rows[:, :, None] & cols[:, None, :]


def regions(region: Any, shape: tuple[int, int, int]) -> np.ndarray:
    """The region of each map as boolean masks (N, H, W), from boxes (N, 4) or masks (N, H, W)."""
    n, h, w = shape
    r = np.asarray(region)
    if r.shape == (n, 4) and np.issubdtype(r.dtype, np.integer):
        m = box_masks(r, (h, w))
    elif r.shape == (n, h, w) and (r.dtype == bool or np.isin(r, (0, 1)).all()):
        m = r.astype(bool)
    else:
        raise ValueError(f"region: expected integer boxes ({n}, 4) or 0/1 masks {(n, h, w)} matching the maps, "
                         f"got dtype {r.dtype}, shape {r.shape}")
    size = m.reshape(n, -1).sum(1)
    if (size == 0).any() or (size == h * w).any():
        i = int(np.flatnonzero((size == 0) | (size == h * w))[0])
        raise ValueError(f"region of map {i} is {'empty' if size[i] == 0 else 'the whole map'}: localisation "
                         f"needs pixels inside and outside it")
    return m


def _prepare(maps: Any, region: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = _maps(maps)
    m = regions(region, a.shape)
    n = len(a)
    return a.reshape(n, -1), m.reshape(n, -1), map_status(a)


def map_status(maps: Any) -> np.ndarray:
    """Per map: ``nonfinite`` (a NaN or infinity), ``constant`` (one value everywhere) or ``ok``."""
    a = _maps(maps).reshape(len(maps), -1)
    finite = np.isfinite(a).all(1)
    constant = np.zeros(len(a), dtype=bool)
    constant[finite] = (a[finite] == a[finite, :1]).all(1)
    return np.where(~finite, "nonfinite", np.where(constant, "constant", "ok")).astype(object)


# --- metrics -----------------------------------------------------------------------------------------------

def pointing_game(maps: Any, region: Any, *, rng: Any, ties: str = "random") -> tuple[np.ndarray, np.ndarray]:
    """Hit (1.0) if the map's maximum lies in the region, else 0.0; NaN for a degenerate map.

    ``rng``: a seed or ``numpy.random.Generator`` breaking ties for the maximum
    (``ties='random'``: one maximal pixel uniformly at random); ``ties='any'``:
    a hit when any maximal pixel is inside. Returns ``(values, status)``.
    """
    if ties not in TIES:
        raise ValueError(f"ties: expected one of {list(TIES)}, got {ties!r}")
    a, m, status = _prepare(maps, region)
    gen = np.random.default_rng(rng)
    ok = status == "ok"
    out = np.full(len(a), np.nan)
    if ok.any():
        aa, mm = a[ok], m[ok]
        is_max = aa == aa.max(1, keepdims=True)
        if ties == "any":
            hit = (is_max & mm).any(1)
        else:
            u = gen.random(aa.shape)
            pick = np.where(is_max, u, -1.0).argmax(1)
            hit = mm[np.arange(len(aa)), pick]
        out[ok] = hit.astype(np.float64)
    return out, status


def relevance_mass(maps: Any, region: Any) -> tuple[np.ndarray, np.ndarray]:
    """Share of the positive relevance inside the region (negative values set to 0; Arras et al. 2022).

    Returns ``(values, status)``; a map without a positive value is ``no_positive`` (NaN).
    """
    a, m, status = _prepare(maps, region)
    ok = status == "ok"
    out = np.full(len(a), np.nan)
    pos = np.where(ok[:, None], np.maximum(a, 0.0), 0.0)
    total = pos.sum(1)
    none = ok & (total == 0)
    status = np.where(none, "no_positive", status).astype(object)
    good = ok & ~none
    out[good] = (pos[good] * m[good]).sum(1) / total[good]
    return out, status


def relevance_rank(maps: Any, region: Any) -> tuple[np.ndarray, np.ndarray]:
    """Share of the ``|region|`` highest-valued pixels inside the region; ties at the cut by their expected
    share under a random tie-break. Returns ``(values, status)``."""
    a, m, status = _prepare(maps, region)
    ok = status == "ok"
    out = np.full(len(a), np.nan)
    if ok.any():
        aa, mm = a[ok], m[ok]
        k = mm.sum(1)
        t = -np.sort(-aa, axis=1)[np.arange(len(aa)), k - 1]          # the K-th largest value
        above, at = aa > t[:, None], aa == t[:, None]
        n_above = above.sum(1)
        hits = (above & mm).sum(1) + (k - n_above) * (at & mm).sum(1) / at.sum(1)
        out[ok] = hits / k
    return out, status


def auroc(maps: Any, region: Any) -> tuple[np.ndarray, np.ndarray]:
    """AUROC of the map's values as a detector of the region's pixels (ties count one half)."""
    a, m, status = _prepare(maps, region)
    ok = status == "ok"
    out = np.full(len(a), np.nan)
    if ok.any():
        aa, mm = a[ok], m[ok]
        ranks = rankdata(aa, axis=1, method="average")
        n_pos = mm.sum(1).astype(np.float64)
        n_neg = mm.shape[1] - n_pos
        out[ok] = ((ranks * mm).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out, status


def localise(maps: Any, region: Any, *, rng: Any, ties: str = "random") -> pd.DataFrame:
    """Every metric of every map: columns ``pointing, mass, rank, auroc, status`` (one row per map).

    ``status`` is the map's (``ok``, ``constant``, ``nonfinite``: every metric
    NaN) or ``no_positive`` (only ``mass`` NaN).
    """
    pointing, status = pointing_game(maps, region, rng=rng, ties=ties)
    mass, mass_status = relevance_mass(maps, region)
    rank, _ = relevance_rank(maps, region)
    auc, _ = auroc(maps, region)
    return pd.DataFrame({"pointing": pointing, "mass": mass, "rank": rank, "auroc": auc, "status": mass_status})


def counts(status: Any, names: Sequence[str] = STATUSES) -> dict[str, int]:
    """How many maps have each status of ``names`` (every one listed, zeros included); another value raises."""
    s = np.asarray(status, dtype=object)
    unknown = set(s.tolist()) - set(names)
    if unknown:
        raise ValueError(f"status: unknown value(s) {sorted(unknown)}; expected {list(names)}")
    return {name: int((s == name).sum()) for name in names}


# --- chance --------------------------------------------------------------------------------------------

def random_maps(n: int, shape: tuple[int, int], seed: Any) -> np.ndarray:
    """``n`` maps of i.i.d. uniform [0, 1) noise, seeded: the random-map control."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n: expected a positive number of maps, got {n!r}")
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape: expected (H, W), got {shape!r}")
    return np.random.default_rng(seed).random((n, *shape))


def random_control(region: Any, shape: tuple[int, int], *, seed: Any, draws: int = 1) -> pd.DataFrame:
    """The metrics of ``draws`` seeded random maps per region: what a map that knows nothing scores.

    Columns of :func:`localise` plus ``image`` (the region's row) and ``draw``.
    """
    r = np.asarray(region)
    n = len(r)
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 1:
        raise ValueError(f"draws: expected a positive integer, got {draws!r}")
    gen = np.random.default_rng(seed)
    maps = random_maps(n * draws, shape, gen)
    out = localise(maps, np.repeat(r, draws, axis=0), rng=gen)
    out.insert(0, "draw", np.tile(np.arange(draws), n))
    out.insert(0, "image", np.repeat(np.arange(n), draws))
    return out


def chance(region: Any, shape: tuple[int, int]) -> pd.DataFrame:
    """Expected value of each metric for a uniform random map, per region: ``p`` for pointing, rank and (to
    first order) mass, 0.5 for AUROC, with ``p`` the region's share of the map."""
    h, w = shape
    r = np.asarray(region)
    m = regions(r, (len(r), h, w))
    p = m.reshape(len(m), -1).mean(1)
    return pd.DataFrame({"pointing": p, "mass": p, "rank": p, "auroc": np.full(len(p), 0.5)})
