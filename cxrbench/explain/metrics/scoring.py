"""The aoppc stage's work per model: its settings from params, and the scoring of one (backbone, fold).

:func:`validate` reads ``aoppc.*`` (and the ``explain.seed`` of the random map and of the tie-breaking
order) with early, actionable errors; :func:`perturbation_settings` turns the region perturbation's
fractions of the input side into pixels for one input size; :func:`score_model` loads one classifier and
its stored maps and scores every perturbation into the accumulator of :mod:`cxrbench.explain.metrics.tables`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxrbench.explain.metrics import tables as AT
from cxrbench.explain.metrics import perturbation as EM
from cxrbench.core import paths, runtime
from cxrbench.core.io import read_json
from cxrbench.core.params import ParamError, check_choice, check_float, check_fraction, check_int, check_subset, section


@dataclass(frozen=True)
class Settings:
    importance: str
    images_per_batch: int
    reference: dict
    seed: int
    patch: float             # region: patch side, fraction of the input side
    steps: int               # region: patches removed one after another
    fills: list
    orders: list
    blur_sigma: float        # fraction of the input side
    road_noise: float
    stats: dict

    def perturbations(self) -> list[dict]:
        return AT.specs(self.fills, self.orders)


def validate(params: dict) -> Settings:
    reg = section(params, "aoppc.region")
    if not isinstance(reg, dict):
        raise ParamError("aoppc.region", f"expected a mapping (patch, steps, fills, orders, blur_sigma, road_noise), "
                                         f"got {reg!r}")
    from cxrbench.core import bootstrap as B
    reference = section(params, "aoppc.reference") or {}
    if not isinstance(reference, dict):
        raise ParamError("aoppc.reference", f"expected a mapping of method -> published value, got {reference!r}")
    for method, value in reference.items():
        check_float(f"aoppc.reference.{method}", value)
    noise = check_float("aoppc.region.road_noise", section(params, "aoppc.region.road_noise"), minimum=0,
                        what="a standard deviation (image units 0..1)")
    return Settings(
        importance=check_choice("aoppc.importance", section(params, "aoppc.importance"), ["signed", "abs"]),
        images_per_batch=check_int("aoppc.images_per_batch", section(params, "aoppc.images_per_batch"), minimum=1),
        reference=reference,
        seed=check_int("explain.seed", section(params, "explain.seed")),
        patch=check_fraction("aoppc.region.patch", section(params, "aoppc.region.patch")),
        steps=check_int("aoppc.region.steps", section(params, "aoppc.region.steps"), minimum=1),
        fills=check_subset("aoppc.region.fills", section(params, "aoppc.region.fills"), EM.FILLS),
        orders=check_subset("aoppc.region.orders", section(params, "aoppc.region.orders"), EM.ORDERS),
        blur_sigma=check_fraction("aoppc.region.blur_sigma", section(params, "aoppc.region.blur_sigma")),
        road_noise=noise,
        stats=B.validate(params))


def perturbation_settings(s: Settings, side: int) -> dict:
    """Keyword arguments of :func:`cxrbench.explain.metrics.perturbation.perturbation_curves` for inputs of ``side``
    pixels: the patch and the blur in pixels (at least 1), the steps checked against the patch count."""
    patch = max(1, int(round(s.patch * side)))
    n_patches = (-(-side // patch)) ** 2
    if s.steps >= n_patches:
        raise ParamError("aoppc.region.steps", f"{s.steps} steps but a {side} px input has only {n_patches} patches "
                                               f"of {patch} px (aoppc.region.patch {s.patch}): lower the steps")
    return {"patch": patch, "steps": s.steps, "blur_sigma": max(1e-3, s.blur_sigma * side),
            "road_noise": s.road_noise, "seed": s.seed}


def region_sentence(s: Settings, side: int) -> str:
    k = perturbation_settings(s, side)
    share = min(1.0, k["steps"] * k["patch"] ** 2 / side ** 2)
    return (f"Region perturbation (Samek et al. 2017): {k['patch']} px patches of a {side} px input, {k['steps']} "
            f"steps ({share:.1%} of the image at the last step), fills: black = 0, blur = Gaussian sigma "
            f"{k['blur_sigma']:.2g} px, road = noisy linear imputation (Rong et al. 2022, noise {s.road_noise:g}); "
            f"AOPPC = mean drop over steps 0..{k['steps']}.")


def score_model(scores: dict, backbone: str, fold: int, methods: list, s: Settings, x: torch.Tensor, z,
                model: torch.nn.Module, groups=None, controls: dict | None = None) -> list[dict]:
    """Score one classifier's stored maps (``z``: its data/attributions npz) under every perturbation of
    ``s`` into ``scores``; ``x``: its model input (on the model's device); ``controls``: further control maps
    (name -> float32 (N, H, W) host array, e.g. the Sobel edge map) scored like the random map. Returns the
    curve rows."""
    target = torch.as_tensor(z["target"], device=x.device)
    named = {m: EM.stored_maps(z, m) for m in methods if m in z.files}
    named[AT.RANDOM] = EM.random_maps((len(x),) + tuple(x.shape[-2:]), s.seed + fold)
    named.update(controls or {})
    randomised = {m: EM.stored_maps(z, f"rand__{m}") for m in named if f"rand__{m}" in z.files}
    kw = perturbation_settings(s, int(x.shape[-1]))
    specs = s.perturbations()
    # a bar on a terminal, a line per tenth in a log: one step = one map's images under one perturbation
    bar = runtime.progress(total=len(named) * len(specs), desc=f"aoppc {backbone} fold {fold}",
                           unit="map x perturbation", every=0.1)

    # the unperturbed images' probabilities, once: every map and perturbation of an image starts from them
    p0 = EM.target_probability(model, x, target, batch=s.images_per_batch * (1 + max(kw["steps"], EM.N_LEVELS)))

    def curves(rows, maps, spec):
        out = EM.perturbation_curves(model, EM.take(x, rows), maps, EM.take(target, rows), scheme=spec["scheme"],
                                     order=spec["order"], fill=spec["fill"], mode=s.importance,
                                     images_per_batch=s.images_per_batch, p0=EM.take(p0, rows), **kw)
        bar.update(1)
        return out

    try:
        return AT.score_fold(scores, backbone, fold, named, z["masks"], randomised, curves,
                             perturbations=specs, groups=groups)
    finally:
        bar.close()


def load_fold(backbone: str, fold: int):
    """data/attributions/{backbone}-f{fold}.npz and metrics/attribute/{backbone}-f{fold}.json."""
    npz = Path(paths.attributions(backbone, fold))
    if not npz.is_file():
        raise FileNotFoundError(f"{npz} not found: run the attribute stage (dvc repro attribute)")
    return np.load(npz, allow_pickle=False), read_json(paths.attribute_metrics(backbone, fold))

