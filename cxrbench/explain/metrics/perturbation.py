"""How good is an attribution map? AOPPC, controls, lung mass, sanity check.

AOPPC (CXR-Net, seed 003, section III, eq. 12)
----------------------------------------------
Each map is normalised to [0, 1] (min-max per image). At 10 perturbation levels
the most important pixels are replaced by zeros (black, in the model-input
space [0, 1]) and ``p`` is the sigmoid probability of the target class::

    AOPPC = 1/10 * sum_{levels x} ( p(f(0)) - p(f(x)) ),  averaged over images

with ``f(0)`` the unperturbed image. (Eq. 12 writes a sum over the n images
with a 1/10 factor; the reported values 0.629-0.903 are <= 1, so it is the
mean over images, as here.) Three perturbations (``scheme``):

``threshold`` (the paper's): level x in {1.0, 0.9, ..., 0.1} zeroes every
    pixel whose normalised importance is >= x ("all the pixels with a value
    of x were replaced with zeros", f(1) removing the most important regions).
    How many pixels a level removes depends on the map's histogram: a peaked
    map removes few pixels at every level, a flat one many (``removed``). The
    paper's text also calls f(0) "no change", which no threshold reading
    satisfies; we take f(0) as the original image, as the formula needs.
``pixels`` (pixel deletion; called "fraction MoRF" before, which it is not:
    Samek et al. remove regions): level k in {1..10} zeroes the top 10 k %
    pixels by importance (exact counts). Level 10 blanks the whole image for
    every map.
``region`` (region perturbation, Samek et al. 2017): the map is cut into
    ``patch`` x ``patch`` squares ranked by their summed importance; step k
    removes the first k of them (``steps`` steps) and AOPPC is the mean drop
    over steps 0..L (step 0, the image itself, a drop of 0). The removed
    patches are filled with ``fill``: ``black`` (0, the paper's, which is also
    the baseline of occlusion, integrated gradients and DeepLIFT), ``blur``
    (:func:`gaussian_blur` of the image) or ``road`` (ROAD's noisy linear
    imputation, :func:`noisy_linear_imputation`). With the black fill the
    drops equal Quantus' ``RegionPerturbation`` (tests/test_perturbation.py).

Ties (pixels or patches of equal importance) are ranked in a seeded random
order (:func:`rank_descending`), not in raster order, which made a constant
map remove the top rows first.

Controls: ``order='lerf'`` removes the least important pixels first (the
levels applied to 1 - map); a random map (uniform noise) is scored the same
way. A useful map has MoRF AOPPC > random > LeRF AOPPC.

All perturbed copies of an image (plus the original) go through the model in
one batch; several images may share a batch (``images_per_batch``). A caller that
scores many maps and perturbations of the same images passes their unperturbed
probabilities once (``p0``, :func:`target_probability`), and only the copies are fed.

Degenerate maps: a map with one value everywhere
(``constant``, e.g. an all-zero Grad-CAM when the target logit decreases with
every feature) or with a NaN or infinity (``nonfinite``) has no ranking of
pixels. :func:`map_status` says which (the rule of
:func:`cxrbench.explain.metrics.localisation.map_status`, not a second definition); such maps
are a status, not a score: the aoppc stage leaves them out of every metric of
their method and counts them (:mod:`cxrbench.explain.metrics.tables`).

Devices: every tensor is made on the device of the map or image it meets
(``device=`` or ``*_like``); :func:`perturbation_tensors` runs on the input's
device and :func:`perturbation_curves` only copies its results to the host;
:func:`take` selects rows on the tensor's own device.
The other metrics take and return numpy arrays and never touch a device.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from cxrbench.classify.task import probabilities
from cxrbench.core import timing
from cxrbench.explain.metrics import localisation
from cxrbench.explain.metrics.fills import ROAD_SOLVERS, ROAD_WEIGHTS, gaussian_blur, noisy_linear_imputation  # noqa: F401 (re-exported: the fills are part of this module's API)

N_LEVELS = 10
SCHEMES = ("threshold", "pixels", "region")
FILLS = ("black", "blur", "road")
ORDERS = ("morf", "lerf")
DEGENERATE = ("constant", "nonfinite")
MAP_STATUSES = ("ok",) + DEGENERATE


def map_status(maps) -> np.ndarray:
    """Per map of a host array (N, H, W): ``ok``, ``constant`` (one value everywhere) or ``nonfinite``
    (a NaN or infinity): :func:`cxrbench.explain.metrics.localisation.map_status`. An empty stack gives an empty array."""
    a = np.asarray(maps)
    if a.ndim == 3 and len(a) == 0:
        return np.array([], dtype=object)
    return localisation.map_status(a)


def map_report(maps, paths) -> dict:
    """What metrics/attribute/*.json records per method: ``maps`` (count per status, every status listed)
    and ``degenerate`` (the image paths of the constant or non-finite maps, in row order; empty if none)."""
    status = map_status(maps)
    paths = [str(p) for p in paths]
    if len(paths) != len(status):
        raise ValueError(f"map_report: {len(status)} maps but {len(paths)} image paths")
    return {"maps": {s: int((status == s).sum()) for s in MAP_STATUSES},
            "degenerate": [p for p, s in zip(paths, status) if s != "ok"]}


def degenerate_text(counts: dict) -> str:
    """``{ok, constant, nonfinite}`` counts -> e.g. ``4/16 constant`` or ``3/16 (2 constant, 1 nonfinite)``;
    ``''`` when no map is degenerate. Every map degenerate adds ``(no usable map)``."""
    n = sum(int(counts.get(s, 0)) for s in MAP_STATUSES)
    bad = {s: int(counts.get(s, 0)) for s in DEGENERATE if counts.get(s, 0)}
    k = sum(bad.values())
    if not k:
        return ""
    kinds = next(iter(bad)) if len(bad) == 1 else "(" + ", ".join(f"{v} {s}" for s, v in bad.items()) + ")"
    return f"{k}/{n} {kinds}" + (" (no usable map)" if k == n else "")


def degenerate_summary(methods: dict) -> str:
    """One log line from metrics/attribute/*.json's ``methods``: the degenerate maps per method, then those
    of the randomised model (``sanity``; a constant one passes the sanity check)."""
    def part(entries):
        return ", ".join(f"{m} {t}" for m, t in ((m, degenerate_text(st.get("maps", {}))) for m, st in entries) if t)

    own = part((m, st) for m, st in methods.items() if st.get("ok"))
    rnd = part((m, st["sanity"]) for m, st in methods.items() if st.get("ok") and st.get("sanity", {}).get("ok"))
    return (f"degenerate maps: {own or 'none'}"
            + (f"; randomised model: {rnd} (a constant one passes the sanity check)" if rnd else ""))


def stored_maps(z, name: str) -> np.ndarray:
    """Maps as data/attributions/*.npz stores them (``name``, float32; float16 in files of earlier runs,
    read alike, times the per-image ``name__scale``), as float32 (N, H, W): what the aoppc stage scores."""
    return z[name].astype(np.float32) * z[f"{name}__scale"][:, None, None]


def take(t: torch.Tensor, index) -> torch.Tensor:
    """Rows ``index`` (host integers) of ``t``, selected on ``t``'s device; ``t`` itself when ``index`` is
    every row in order (the common case: no map excluded, nothing copied)."""
    idx = np.asarray(index, dtype=np.int64).reshape(-1)
    if len(idx) == len(t) and np.array_equal(idx, np.arange(len(t))):
        return t
    return t.index_select(0, torch.as_tensor(idx, device=t.device))


def importance(attr: np.ndarray | torch.Tensor, mode: str = "signed") -> torch.Tensor:
    """(B, H, W) attribution -> importance: ``signed`` keeps positive evidence
    on top (raw values), ``abs`` ranks by magnitude."""
    a = torch.as_tensor(np.asarray(attr, dtype=np.float32) if not torch.is_tensor(attr) else attr).float()
    if mode == "abs":
        return a.abs()
    if mode == "signed":
        return a
    raise ValueError(f"importance mode must be 'signed' or 'abs', got {mode!r}")


def normalise(m: torch.Tensor) -> torch.Tensor:
    """Min-max per image to [0, 1]; a constant map becomes all zeros."""
    flat = m.reshape(len(m), -1)
    lo = flat.min(1, keepdim=True).values
    hi = flat.max(1, keepdim=True).values
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return ((flat - lo) / span).reshape(m.shape)


def levels(scheme: str, steps: int = N_LEVELS) -> np.ndarray:
    """The x axis: thresholds 1.0 .. 0.1, removed pixel fractions 0.1 .. 1.0, or region steps 1 .. ``steps``."""
    if scheme == "threshold":
        return np.round(np.linspace(1.0, 0.1, N_LEVELS), 2)
    if scheme == "pixels":
        return np.round(np.linspace(0.1, 1.0, N_LEVELS), 2)
    if scheme == "region":
        return np.arange(1, steps + 1, dtype=np.float64)
    raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")


def tie_order(n: int, seed: int, device) -> torch.Tensor:
    """A seeded random permutation of ``n`` positions, made on the host and moved to ``device``: the
    tie-breaking order of :func:`rank_descending` (the same for every image and every device)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=g).to(device)


def rank_descending(score: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(B, N) scores -> (B, N) rank of each position (0 = highest), ties in a seeded random order.

    The positions are visited in the order of :func:`tie_order` before a stable descending sort, so equal
    scores are ranked by a random permutation instead of raster order (which made a constant map remove
    the top rows first: 0.654 vs 0.253 on the same image rotated by 180 degrees).
    """
    b, n = score.shape
    perm = tie_order(n, seed, score.device)
    order = perm[torch.argsort(score[:, perm], dim=1, descending=True, stable=True)]
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=score.device).expand(b, n).contiguous())
    return rank


def patch_grid(h: int, w: int, patch: int, device) -> tuple[torch.Tensor, int]:
    """Patch index of every pixel of an (h, w) image cut into ``patch`` x ``patch`` squares (row-major;
    the last row / column of patches is smaller when ``patch`` does not divide the side), and the count."""
    if patch < 1:
        raise ValueError(f"patch side must be >= 1 pixel, got {patch}")
    cols = -(-w // patch)
    rows = torch.arange(h, device=device) // patch
    colsi = torch.arange(w, device=device) // patch
    return rows.view(-1, 1) * cols + colsi.view(1, -1), (-(-h // patch)) * cols


def region_removal(imp: torch.Tensor, order: str, patch: int, steps: int, seed: int = 0) -> torch.Tensor:
    """Region perturbation (Samek et al. 2017): (B, H, W) importance -> bool (B, steps, H, W), True where the
    first ``k + 1`` patches are removed at step k. Patches are ranked by the sum of importance inside them
    (most relevant first for ``morf``, least for ``lerf``), ties in a seeded random order."""
    b, h, w = imp.shape
    grid, n_patches = patch_grid(h, w, patch, imp.device)
    if not 1 <= steps < n_patches:
        raise ValueError(f"region perturbation: {steps} steps for {n_patches} patches of {patch} px on a {h}x{w} "
                         f"image; steps must be >= 1 and leave at least one patch (fewer steps or smaller patches)")
    sums = torch.zeros(b, n_patches, dtype=imp.dtype, device=imp.device)
    sums.index_add_(1, grid.reshape(-1), imp.reshape(b, -1))
    rank = rank_descending(sums if order == "morf" else -sums, seed)                  # (B, P)
    pixel_rank = rank.gather(1, grid.reshape(1, -1).expand(b, -1))                   # (B, H*W)
    k = torch.arange(steps, device=imp.device).view(1, -1, 1)
    return (pixel_rank.view(b, 1, -1) <= k).view(b, steps, h, w)


def removal_masks(norm_map: torch.Tensor, scheme: str, order: str = "morf", seed: int = 0, patch: int = 4,
                  steps: int = N_LEVELS) -> torch.Tensor:
    """(B, H, W) normalised maps -> bool (B, L, H, W): True where a pixel is removed at level l.

    ``region``: :func:`region_removal` of the normalised map (for patches of one size, ranking by the sum of
    the min-max normalised map is ranking by the sum of the raw map, as Quantus does)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if scheme == "region":
        return region_removal(norm_map, order, patch, steps, seed)
    m = norm_map if order == "morf" else 1.0 - norm_map
    b, h, w = m.shape
    if scheme == "threshold":
        t = torch.as_tensor(levels(scheme), dtype=m.dtype, device=m.device).view(1, -1, 1, 1)
        return m.unsqueeze(1) >= t - 1e-6
    if scheme == "pixels":
        n = h * w
        counts = torch.as_tensor(np.round(levels(scheme) * n).astype(np.int64), device=m.device)
        rank = rank_descending(m.reshape(b, -1), seed)
        return (rank.view(b, 1, n) < counts.view(1, -1, 1)).view(b, -1, h, w)
    raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")


def target_indices(target, b: int, device) -> torch.Tensor:
    """``target`` (an int, a 0-d tensor or B class indices, on any device) -> (B,) long on ``device``."""
    if not torch.is_tensor(target) or target.dim() == 0:
        return torch.as_tensor(target, device=device).long().expand(b)
    return target.to(device).long()


def _probability(model: torch.nn.Module, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, K) logits -> (N,) probability of each row's ``target`` class, as the model's task defines it
    (:func:`cxrbench.classify.task.probabilities`: softmax over the classes for a multiclass model, else the
    label's own sigmoid)."""
    probs = probabilities(logits.float(), getattr(model, "task", "multilabel"))
    return probs.gather(1, target.view(-1, 1)).squeeze(1)


@torch.no_grad()
def target_probability(model: torch.nn.Module, x: torch.Tensor, target, batch: int = 32) -> torch.Tensor:
    """(B,) probability of ``target`` (an int or B class indices) on the images ``x``, on ``x``'s device, in
    batches of ``batch``: the ``p0`` every perturbation of these images starts from."""
    target = target_indices(target, len(x), x.device)
    out = [_probability(model, model(x[s:s + batch]), target[s:s + batch]) for s in range(0, len(x), batch)]
    return torch.cat(out) if out else torch.empty(0, device=x.device)


def _filled(xs: torch.Tensor, rm: torch.Tensor, fill: str, blur_sigma: float, road_noise: float,
            seeds: list) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(b, C, H, W) images and (b, L, H, W) removal masks -> (b, L, C, H, W) perturbed copies (ROAD: and
    the largest CG residual per image); ``seeds``: one ROAD noise seed per image."""
    b, L, h, w = rm.shape
    keep = (~rm).unsqueeze(2).to(xs.dtype)                                   # (b, L, 1, H, W)
    if fill == "black":
        return xs.unsqueeze(1) * keep, None
    if fill == "blur":
        blurred = gaussian_blur(xs, blur_sigma)
        return xs.unsqueeze(1) * keep + blurred.unsqueeze(1) * (1 - keep), None
    if fill == "road":
        rep = xs.unsqueeze(1).expand(b, L, *xs.shape[1:]).reshape(b * L, *xs.shape[1:])
        step_seeds = [sd * 1000 + k for sd in seeds for k in range(L)]     # one draw per image and step
        # on the CPU the exact direct solve; on a GPU conjugate gradients on the device, all images and steps
        # at once (the direct solve would copy each system to the host and factor it there, one at a time; the
        # residual is recorded either way); a meta tensor (the tests' shape-only GPU) takes the GPU's path
        solver = "cg" if xs.device.type in ("meta", "cuda") else "direct"
        out, res = noisy_linear_imputation(rep, rm.reshape(b * L, h, w), road_noise, step_seeds, solver=solver)
        return out.view(b, L, *xs.shape[1:]), res.view(b, L).amax(1)
    raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")


@torch.no_grad()
def perturbation_tensors(model: torch.nn.Module, x: torch.Tensor, maps, target, scheme: str = "threshold",
                         order: str = "morf", mode: str = "signed", images_per_batch: int = 1,
                         sequential: bool = False, fill: str = "black", patch: int = 4, steps: int = N_LEVELS,
                         blur_sigma: float = 2.0, road_noise: float = 0.01, seed: int = 0,
                         p0: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """:func:`perturbation_curves` as tensors on ``x``'s device (no copy to the host).

    ``p0``: the (B,) probabilities of ``target`` on the unperturbed images (:func:`target_probability`), when the
    caller already has them: every map and perturbation of an image shares them, so a stage that scores many
    computes them once instead of feeding the original with every batch of copies (one forward in 1 + L).

    Every tensor is made on (or moved to) ``x.device`` before it meets another:
    the maps (a host array or a tensor anywhere) and ``target`` are moved there,
    and the levels, ranks, removal masks and fills are built there
    (:func:`removal_masks`, :func:`region_removal`). The model must live on ``x``'s device.
    """
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    if scheme != "region" and fill != "black":
        raise ValueError(f"the {scheme!r} scheme zeroes pixels (the paper's black fill); fills are for 'region'")
    b = len(x)
    target = target_indices(target, b, x.device)
    norm = normalise(importance(maps, mode).to(x.device))
    rm = removal_masks(norm, scheme, order, seed, patch, steps)                # (B, L, H, W)
    n_levels = rm.shape[1]
    given = p0 is not None
    if given:
        p0 = torch.as_tensor(p0, device=x.device).reshape(-1).float()
        if len(p0) != b:
            raise ValueError(f"p0 holds {len(p0)} probabilities for {b} images")
    else:
        p0 = torch.empty(b, device=x.device)
    p = torch.empty(b, n_levels, device=x.device)
    residual = torch.zeros(b, device=x.device)
    for s in range(0, b, images_per_batch):
        sl = slice(s, min(b, s + images_per_batch))
        xs = x[sl]
        seeds = [seed * 100_003 + i for i in range(sl.start, sl.stop)]         # per image: batching-invariant
        with timing.step(f"{scheme} {fill} fill", n=len(xs), unit="image"):
            pert, res = _filled(xs, rm[sl], fill, blur_sigma, road_noise, seeds)
        if res is not None:
            residual[sl] = res.to(residual.dtype)
        batch = pert if given else torch.cat([xs.unsqueeze(1), pert], 1)      # (b, [1 +] L, C, H, W)
        flat = batch.reshape(-1, *x.shape[1:])
        with timing.step(f"{scheme} forward", n=len(xs), unit="image"):
            if sequential:
                logits = torch.cat([model(flat[i:i + 1]) for i in range(len(flat))])
            else:
                logits = model(flat)
        per = n_levels + (0 if given else 1)
        prob = _probability(model, logits, target[sl].repeat_interleave(per)).view(-1, per)
        if given:
            p[sl] = prob
        else:
            p0[sl], p[sl] = prob[:, 0], prob[:, 1:]
    drop = p0.unsqueeze(1) - p
    # eq. 12 (threshold, pixels): the mean over the 10 levels; region (Samek et al. 2017): the mean over
    # steps 0 .. L, step 0 (the image itself) contributing a drop of 0
    aoppc = drop.mean(1) if scheme != "region" else drop.sum(1) / (n_levels + 1)
    out = {"p0": p0, "p": p, "drop": drop, "aoppc": aoppc, "removed": rm.float().mean((2, 3))}
    if fill == "road":
        out["road_residual"] = residual
    return out


def perturbation_curves(model: torch.nn.Module, x: torch.Tensor, maps, target, scheme: str = "threshold",
                        order: str = "morf", mode: str = "signed", images_per_batch: int = 1,
                        sequential: bool = False, **perturbation) -> dict:
    """Probabilities of ``target`` on the original and the perturbed copies of each image.

    ``x``: (B, C, H, W) model input; ``maps``: (B, H, W) attributions at input
    resolution; ``target``: int or (B,) class indices. ``sequential`` feeds
    every copy separately (for the speed comparison only). ``perturbation``: the
    region scheme's ``fill``, ``patch``, ``steps``, ``blur_sigma``, ``road_noise``, the
    tie-breaking / noise ``seed`` and a precomputed ``p0`` (:func:`perturbation_tensors`).
    Returns p0 (B,), p (B, L), drop (B, L) = p0 - p, aoppc (B,), removed (B, L) fractions
    (and road_residual (B,) for the ROAD fill), as numpy arrays (computed on ``x``'s device by
    :func:`perturbation_tensors`).
    """
    r = perturbation_tensors(model, x, maps, target, scheme=scheme, order=order, mode=mode,
                             images_per_batch=images_per_batch, sequential=sequential, **perturbation)
    return {k: v.cpu().numpy() for k, v in r.items()}


def random_maps(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def lung_mass_fraction(maps, masks: np.ndarray, mode: str = "abs") -> np.ndarray:
    """Share of attribution mass inside the lung mask, per image.

    Mass is |attribution| (``abs``) or its positive part (``positive``). Compare
    with the lung's share of the image (:func:`area_fraction`), which a
    uniform map would score.
    """
    a = np.asarray(maps, dtype=np.float32)
    a = np.abs(a) if mode == "abs" else np.clip(a, 0, None)
    m = np.asarray(masks) > 0
    tot = a.reshape(len(a), -1).sum(1)
    inside = (a * m).reshape(len(a), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, inside / tot, np.nan)


def area_fraction(masks: np.ndarray) -> np.ndarray:
    m = np.asarray(masks) > 0
    return m.reshape(len(m), -1).mean(1)


@contextlib.contextmanager
def seeded_rng(seed: int, devices=()):
    """Run the block with torch's CPU generator (and those of the CUDA ``devices``) seeded with ``seed``,
    then put every one of them back as it was: no global RNG side effect.

    Seeds exactly what ``torch.manual_seed(seed)`` seeds for those generators (so values drawn inside are
    the same), but touches no other CUDA device's generator (``torch.manual_seed`` seeds them all).
    """
    devices = sorted({int(d) for d in devices})
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(int(seed))
        for d in devices:
            torch.cuda.default_generators[d].manual_seed(int(seed))
        yield


def cuda_devices(model: torch.nn.Module) -> list[int]:
    """The CUDA device indices of ``model``'s parameters and buffers (what re-initialising it draws from)."""
    return sorted({t.device.index or 0 for t in list(model.parameters()) + list(model.buffers())
                   if t.device.type == "cuda"})


def randomise_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A copy of ``model`` with every parameter re-initialised (Adebayo et al. 2018,
    full-model randomisation): each module's own ``reset_parameters`` (PyTorch's
    default init; BatchNorm also resets its running statistics).

    Draws from generators seeded with ``seed`` inside :func:`seeded_rng`: the same values as
    ``torch.manual_seed(seed)`` followed by the resets, without changing torch's global RNG state.
    ``model`` is left untouched. Layer by layer (cascading) randomisation: :mod:`cxrbench.explain.randomisation`.
    """
    import copy
    rnd = copy.deepcopy(model)
    n = 0
    with seeded_rng(seed, cuda_devices(rnd)):
        for mod in rnd.modules():
            if hasattr(mod, "reset_parameters") and callable(mod.reset_parameters):
                mod.reset_parameters()
                n += 1
            if hasattr(mod, "reset_running_stats"):
                mod.reset_running_stats()
    if n == 0:
        raise ValueError("randomise_weights: no module with reset_parameters")
    return rnd.eval()


def rank_correlation(a, b, absolute: bool = True) -> np.ndarray:
    """Spearman rank correlation per image between two stacks of maps (B, H, W)."""
    from scipy.stats import spearmanr
    a = np.asarray(a, dtype=np.float32).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float32).reshape(len(b), -1)
    if absolute:
        a, b = np.abs(a), np.abs(b)
    out = np.full(len(a), np.nan)
    for i in range(len(a)):
        if a[i].std() > 0 and b[i].std() > 0:
            out[i] = spearmanr(a[i], b[i]).statistic
    return out


def mean_std(v) -> dict:
    v = np.asarray(v, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": round(float(v.mean()), 4), "std": round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 4),
            "n": len(v)}
