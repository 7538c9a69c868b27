"""Properties of a map alone, computed by Quantus 0.6.0 (metrics we do not write ourselves).

* ``sparseness`` (Chalasani et al. 2020, ``quantus.Sparseness``): the Gini index of |map|; 1 = all the
  mass on one pixel, 0 = the same value everywhere; a uniform random map scores about 1/3.
* ``complexity`` (Bhatt et al. 2020, ``quantus.Complexity``): the entropy of each pixel's share of
  |map|; at most ln(H x W) (a flat map), lower = simpler.

Both ignore the model and the image (Quantus is given ``model=None`` and a placeholder image of the map's
shape). Host-only: numpy in, numpy out. Degenerate maps must be left out by the caller (a constant map has
no shares to rank; :func:`cxrbench.explain.metrics.perturbation.map_status`).
"""

from __future__ import annotations

import warnings

import numpy as np

PROPERTIES = ("sparseness", "complexity")


def properties(maps) -> dict[str, np.ndarray]:
    """(N, H, W) maps -> {"sparseness": (N,), "complexity": (N,)} (float64), by Quantus with its defaults
    (absolute values, each map normalised by its maximum)."""
    import quantus

    a = np.asarray(maps, dtype=np.float32)
    if a.ndim != 3:
        raise ValueError(f"maps must be (N, H, W), got shape {a.shape}")
    if len(a) == 0:
        return {p: np.zeros(0) for p in PROPERTIES}
    # Quantus scores |map| (abs=True, the maps normalised by their maximum |value|), but its input check refuses a
    # batch whose values are all negative (a signed map of a model that has learnt little can be): |map| in
    # gives the same scores and passes it
    a = np.abs(a)[:, None]
    x, y = np.zeros_like(a), np.zeros(len(a), dtype=int)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")           # Quantus' parameterisation notes, once per call
        for name, metric in (("sparseness", quantus.Sparseness), ("complexity", quantus.Complexity)):
            values = metric(disable_warnings=True)(model=None, x_batch=x, y_batch=y, a_batch=a)
            out[name] = np.asarray(values, dtype=np.float64)
    return out
