"""The reliability stage's pieces: its params, the robustness scores of one classifier, the repeatability of
maps across independently trained classifiers, and the summaries with patient-bootstrap CIs.

* :func:`robustness_rows`: per image, Captum's max-sensitivity (each method re-run on perturbed inputs) and
  infidelity (of the stored maps) for the methods and the two controls, ``random`` and ``edge``
  (:mod:`cxrbench.explain.metrics.robustness`).
* :func:`repeatability_rows`: the same method's maps of the same test image from the models of two folds
  (different training data and trajectory, the same recipe), and, beside them, the trained model's map vs its
  weight-randomised copy's (the attribute stage's ``rand__`` maps), both with
  :func:`cxrbench.explain.metrics.similarity.compare`: zero-input pixels excluded, CAMs at feature-map
  resolution. A method whose maps differ more between two trained models than between a model and its
  randomised copy is flagged (:func:`summarise_repeatability`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cxrbench.core.params import ParamError, check_float, check_int, check_subset, section
from cxrbench.explain.metrics import robustness as RB
from cxrbench.explain.metrics import similarity as SM

__all__ = ["Settings", "validate", "support", "feature_side", "robustness_rows", "repeatability_rows",
           "summarise", "summarise_repeatability", "markdown", "perturbed_model", "resilience_rows",
           "summarise_resilience", "RESILIENCE_METRICS", "CONTROLS", "ROBUSTNESS", "AGREEMENT_METRICS"]

CONTROLS = ("random", "edge")
ROBUSTNESS = ("sensitivity_max", "infidelity")
AGREEMENT_METRICS = ("aoppc_threshold_morf", "aoppc_pixels_morf", "aoppc_region_black_morf",
                     "aoppc_region_blur_morf", "aoppc_region_road_morf", "lung_mass") + ROBUSTNESS


RESILIENCE_METRICS = ("infidelity", "aoppc_pixels_morf", "aoppc_region_blur_morf")


@dataclass(frozen=True)
class Settings:
    images: int
    methods: list              # infidelity (stored maps): every one of these
    sensitivity_methods: list  # max-sensitivity re-runs each method: the affordable ones
    radius: float
    sensitivity_samples: int
    noise: float
    infidelity_samples: int
    seed: int
    agreement_metrics: list
    resilience_methods: list   # MetaQuantus-style tests re-run these methods twice per model
    resilience_metrics: list
    input_noise: float         # sd of the input noise that should leave the prediction (and the score) unchanged
    model_noise: float         # sd of the multiplicative weight noise that should change them
    prob_tolerance: float      # |change of P(target)| up to which a prediction counts as unchanged


def validate(params: dict) -> Settings:
    """``reliability`` params, checked before any work. ``methods: null`` = explain.methods; the same for
    ``sensitivity_methods``."""
    from cxrbench.explain.runner import check_method

    explain = list(section(params, "explain.methods"))

    def methods(key):
        v = section(params, key)
        if v is None:
            return explain
        if not isinstance(v, list):
            raise ParamError(key, f"expected a list of attribution methods or null (= explain.methods), got {v!r}")
        for m in v:
            check_method(m, key)
        return list(v)
    return Settings(
        images=check_int("reliability.images", section(params, "reliability.images"), minimum=1),
        methods=methods("reliability.methods"), sensitivity_methods=methods("reliability.sensitivity_methods"),
        radius=check_float("reliability.sensitivity_radius", section(params, "reliability.sensitivity_radius"),
                           minimum=1e-6, what="the L-infinity radius of the perturbations, input units"),
        sensitivity_samples=check_int("reliability.sensitivity_samples",
                                      section(params, "reliability.sensitivity_samples"), minimum=1),
        noise=check_float("reliability.infidelity_noise", section(params, "reliability.infidelity_noise"),
                          minimum=1e-6, what="the standard deviation of the perturbations, input units"),
        infidelity_samples=check_int("reliability.infidelity_samples",
                                     section(params, "reliability.infidelity_samples"), minimum=1),
        seed=check_int("reliability.seed", section(params, "reliability.seed"), minimum=0),
        agreement_metrics=check_subset("reliability.agreement_metrics",
                                       section(params, "reliability.agreement_metrics"), list(AGREEMENT_METRICS)),
        resilience_methods=methods("reliability.resilience_methods"),
        resilience_metrics=check_subset("reliability.resilience_metrics",
                                        section(params, "reliability.resilience_metrics"), list(RESILIENCE_METRICS)),
        input_noise=check_float("reliability.input_noise", section(params, "reliability.input_noise"), minimum=1e-6,
                                what="the sd of the input noise, input units"),
        model_noise=check_float("reliability.model_noise", section(params, "reliability.model_noise"), minimum=1e-6,
                                what="the sd of the multiplicative weight noise"),
        prob_tolerance=check_float("reliability.prob_tolerance", section(params, "reliability.prob_tolerance"),
                                   minimum=0, maximum=1, what="a change of probability"))


def support(inputs: np.ndarray, side: int) -> np.ndarray:
    """(N, side, side) bool: where the model's input (N, C, H, W; zeros are padding, clipping or a removed
    region) is not 0 in some channel, at the maps' resolution (a pixel kept when most of the input pixels it
    covers are)."""
    t = torch.as_tensor((np.asarray(inputs) != 0).any(1, keepdims=True), dtype=torch.float32)
    return (torch.nn.functional.interpolate(t, size=(side, side), mode="area")[:, 0] > 0.5).numpy()


def feature_side(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor) -> int:
    """The spatial side of ``layer``'s output on ``x`` (one forward with a hook): the CAMs' own resolution."""
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[-2:])))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        handle.remove()
    if not seen or seen[0][0] != seen[0][1]:
        raise ValueError(f"target layer output {seen[:1]}: expected one square feature map")
    return int(seen[0][0])


def robustness_rows(s: Settings, model, x: torch.Tensor, target: torch.Tensor, stored: dict, explainers: dict,
                    max_batch: int) -> list[dict]:
    """Per image and method (and control): ``sensitivity_max`` for the methods of ``explainers`` (name ->
    ``f(inputs, target) -> (N, H, W)``) and ``infidelity`` of ``stored`` maps (name -> (N, H, W)); rows
    ``method``, ``image``, ``metric``, ``status``, ``value``. An image whose stored map is degenerate
    (:func:`cxrbench.explain.metrics.perturbation.map_status`: constant or non-finite) is not scored: its row has
    that status and no value (a relative change of a constant map is undefined)."""
    from cxrbench.explain.metrics.perturbation import map_status

    rows = []
    for name, maps in stored.items():
        status = map_status(maps)
        ok = np.flatnonzero(status == "ok")
        rows += [{"method": name, "image": int(i), "metric": metric, "status": str(status[i]), "value": np.nan}
                 for i in np.flatnonzero(status != "ok") for metric in ROBUSTNESS
                 if metric == "infidelity" or name in explainers]
        if not len(ok):
            continue
        sel = torch.as_tensor(ok, device=x.device)
        values = {"infidelity": RB.infidelity(model, x[sel], maps[ok], target[sel], s.noise, s.infidelity_samples,
                                              s.seed, max_batch)}
        if name in explainers:
            values["sensitivity_max"] = RB.sensitivity_max(explainers[name], x[sel], target[sel], s.radius,
                                                           s.sensitivity_samples, s.seed, max_batch)
        for metric, v in values.items():
            rows += [{"method": name, "image": int(i), "metric": metric, "status": "ok", "value": float(a)}
                     for i, a in zip(ok, v)]
    return rows


def perturbed_model(model: torch.nn.Module, sigma: float, seed: int) -> torch.nn.Module:
    """A copy of ``model`` with every parameter multiplied by (1 + sigma * N(0, 1)), drawn on the CPU from a
    seeded generator (MetaQuantus' model perturbation test)."""
    import copy
    net = copy.deepcopy(model).eval()
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for p in net.parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.device, p.dtype)
            p.mul_(1 + sigma * noise)
    return net


def _prob(net, x, target) -> np.ndarray:
    """The target's probability: sigmoid of its logit, or its softmax over the classes of a multiclass model."""
    from cxrbench.classify.task import probabilities

    with torch.no_grad():
        prob = probabilities(net(x), getattr(net, "task", "multilabel"))
        return prob.gather(1, target.view(-1, 1))[:, 0].double().cpu().numpy()


def resilience_rows(s: Settings, model, x: torch.Tensor, target: torch.Tensor, explainer, metric_fns: dict
                    ) -> list[dict]:
    """Noise resilience and reactivity of each metric (Hedström et al. 2023, MetaQuantus), per image and method.

    ``explainer(net, method) -> f(inputs, target) -> (N, H, W)`` builds a method on a model; ``metric_fns``:
    metric -> ``g(net, inputs, maps, target) -> (N,)``. For each method of ``s.resilience_methods``, each metric
    is computed on (model, x, its maps) and again (a) on x plus Gaussian noise of sd ``s.input_noise`` with
    the maps of the noisy input (**input_noise**: the score should not move where the prediction did not:
    ``|P(target) change| <= s.prob_tolerance``, else ``prediction_changed``), and (b) with a copy of the model
    whose weights carry multiplicative noise ``s.model_noise`` and its own maps (**model_noise**: the score
    should move where the prediction did: else ``prediction_unchanged``). Rows: method, image, metric, test,
    status (``ok`` or the reason the image does not count), delta = |score change|."""
    from cxrbench.explain.metrics.perturbation import map_status

    gen = np.random.default_rng([s.seed, 1])
    x_noisy = x + torch.as_tensor(gen.normal(0, s.input_noise, tuple(x.shape)), dtype=x.dtype, device=x.device)
    net = perturbed_model(model, s.model_noise, s.seed)
    p0 = _prob(model, x, target)
    moved = {"input_noise": np.abs(_prob(model, x_noisy, target) - p0),
             "model_noise": np.abs(_prob(net, x, target) - p0)}
    counts = {"input_noise": moved["input_noise"] <= s.prob_tolerance,
              "model_noise": moved["model_noise"] > s.prob_tolerance}
    reasons = {"input_noise": "prediction_changed", "model_noise": "prediction_unchanged"}
    rows = []
    for method in s.resilience_methods:
        maps0 = np.asarray(explainer(model, method)(x, target), np.float32)
        runs = {"input_noise": (model, x_noisy, np.asarray(explainer(model, method)(x_noisy, target), np.float32)),
                "model_noise": (net, x, np.asarray(explainer(net, method)(x, target), np.float32))}
        for metric, g in metric_fns.items():
            base = np.asarray(g(model, x, maps0, target), float)
            for test, (nn_, xx, maps) in runs.items():
                ok = (map_status(maps0) == "ok") & (map_status(maps) == "ok")
                val = np.asarray(g(nn_, xx, maps, target), float)
                for i in range(len(x)):
                    status = "degenerate" if not ok[i] else "ok" if counts[test][i] else reasons[test]
                    rows.append({"method": method, "image": i, "metric": metric, "test": test, "status": status,
                                 "delta": float(abs(val[i] - base[i])), "prob_change": float(moved[test][i])})
    return rows


def summarise_resilience(frame, stats: dict) -> dict:
    """Per metric: ``input_noise`` (mean |score change| where the prediction stayed; lower = more resilient)
    and ``model_noise`` (where it changed; higher = more reactive), each with a patient CI, n and the counts of
    images that did not qualify; pooled over methods and models."""
    out: dict = {}
    for (metric, test), cell in frame.groupby(["metric", "test"], sort=False):
        ok = cell[cell["status"] == "ok"]
        e = _mean_ci(ok["delta"].to_numpy(float), ok["group"].astype(str).to_numpy(), stats) if len(ok) else \
            {"mean": None, "n": 0}
        skipped = cell.loc[cell["status"] != "ok", "status"].value_counts()
        e["not_counted"] = {str(k): int(v) for k, v in skipped.items()}
        out.setdefault(metric, {})[test] = e
    return out


def _pair(a, b, keep, cam_side: int | None) -> dict:
    if cam_side is not None and cam_side < a.shape[-1]:
        a, keep_a = SM.to_grid(a, keep, cam_side)
        b, _ = SM.to_grid(b, keep, cam_side)
        keep = keep_a
    return SM.compare(a, b, keep)


def repeatability_rows(maps_a: dict, maps_b: dict, rand_a: dict, keep: np.ndarray, keep_rand: np.ndarray,
                       cam_side: int | None) -> list[dict]:
    """Rows ``method``, ``image``, ``comparison`` (``repeat``: model A vs model B on the same images;
    ``randomised``: model A vs its randomised copy, first images), ``metric``, ``status``, ``value``.
    ``maps_a``/``maps_b``: method -> (N, H, W) maps of the same N images; ``rand_a``: method -> the randomised
    model's maps of the first images; ``keep``/``keep_rand``: their kept pixels; ``cam_side``: the feature-map
    side of the CAMs (:data:`cxrbench.explain.metrics.robustness.CAMS`)."""
    rows = []
    for m in maps_a:
        side = cam_side if m in RB.CAMS else None
        pairs = []
        if m in maps_b:
            pairs.append(("repeat", maps_a[m], maps_b[m], keep))
        if m in rand_a:
            n = len(rand_a[m])
            pairs.append(("randomised", maps_a[m][:n], rand_a[m], keep_rand[:n]))
        for comparison, a, b, k in pairs:
            sim = _pair(a, b, k, side)
            for metric in ("spearman_abs", "ssim"):
                for i in range(len(a)):
                    rows.append({"method": m, "image": i, "comparison": comparison, "metric": metric,
                                 "status": sim[f"{metric}_status"][i], "value": float(sim[metric][i])})
    return rows


def _mean_ci(values: np.ndarray, groups: np.ndarray, stats: dict) -> dict:
    from cxrbench.core.bootstrap import group_ci, options
    out = {"mean": float(values.mean()) if len(values) else None, "n": int(len(values)),
           "patients": int(len(set(groups.tolist()))), "low": None, "high": None}
    if out["patients"] >= 2:
        ci = group_ci(lambda idx: float(values[idx].mean()), groups, **options(stats))
        out.update(low=ci["low"], high=ci["high"])
    else:
        out["note"] = "fewer than 2 patients: no CI"
    return out


def summarise(frame, stats: dict) -> dict:
    """Per method x metric of long rows (``method``, ``metric``, ``status``, ``value``, ``group``): mean over the
    scored (``ok``) images, patient CI, n, and the count of images not scored by status."""
    out: dict = {}
    for (m, metric), cell in frame.groupby(["method", "metric"], sort=False):
        ok = cell[cell["status"] == "ok"]
        e = _mean_ci(ok["value"].to_numpy(float), ok["group"].astype(str).to_numpy(), stats) if len(ok) else \
            {"mean": None, "n": 0}
        e["not_scored"] = {str(k): int(v) for k, v in cell.loc[cell["status"] != "ok", "status"].value_counts().items()}
        out.setdefault(m, {})[metric] = e
    return out


def summarise_repeatability(frame, stats: dict) -> dict:
    """Per method x metric: ``repeat`` and ``randomised`` (mean, patient CI over compared maps, n), the counts
    of maps not compared by status, and ``flag``: the repeat similarity is below the randomised one (the maps
    change more between two trained models than under randomisation)."""
    out: dict = {}
    for (m, metric), cell in frame.groupby(["method", "metric"], sort=False):
        e = {}
        for comparison in ("repeat", "randomised"):
            sub = cell[cell["comparison"] == comparison]
            ok = sub[sub["status"] == "compared"]
            e[comparison] = {**_mean_ci(ok["value"].to_numpy(float), ok["group"].astype(str).to_numpy(), stats),
                             "not_compared": {st: int((sub["status"] == st).sum())
                                              for st in SM.STATUSES if st != "compared"}} if len(ok) else \
                {"mean": None, "n": 0, "not_compared": {st: int((sub["status"] == st).sum()) for st in SM.STATUSES
                                                        if st != "compared"}}
        r, z = e["repeat"].get("mean"), e["randomised"].get("mean")
        e["flag"] = None if r is None or z is None else bool(r < z)
        out.setdefault(m, {})[metric] = e
    return out


def _not(e: dict | None) -> str:
    nc = (e or {}).get("not_counted") or {}
    return "; " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in nc.items()) if nc else ""


def _cell(e: dict | None) -> str:
    if not e or e.get("mean") is None:
        return "–"
    ci = f" [{e['low']:.3g}, {e['high']:.3g}]" if e.get("low") is not None and np.isfinite(e["low"]) else " (no CI)"
    skipped = "".join(f", {v} {k}" for k, v in (e.get("not_scored") or {}).items())
    return f"{e['mean']:.3g}{ci} (n {e['n']}, {e.get('patients', 0)} pat.{skipped})"


def markdown(robustness: dict, agreement: dict, repeat: dict, s: Settings, resilience: dict | None = None,
             pairs: dict | None = None, with_robustness: dict | None = None) -> str:
    """The reliability tables: robustness with its controls, agreement across metrics (every explained image;
    ``with_robustness``: the same with the robustness metrics, on the images they were scored on), repeatability."""
    from cxrbench.explain.metrics import agreement as AG

    lines = ["### Reliability of the explanation metrics", "",
             "#### Robustness (Captum; lower is better)", "",
             f"Up to {s.images} held-out images per model. Max-sensitivity: {s.sensitivity_samples} uniform "
             f"perturbations of L-inf radius {s.radius:g} (input units); infidelity: {s.infidelity_samples} "
             f"Gaussian perturbations, sd {s.noise:g}, normalised. Controls: `random` (a fresh noise map per call: "
             f"the least robust map) and `edge` (Sobel magnitude of the input). Mean "
             f"[{100 * agreement.get('confidence', 0.95):g} % CI over patients].", "",
             "| method | max-sensitivity | infidelity |", "|---|---|---|"]
    order = [m for m in robustness if m not in CONTROLS] + [m for m in CONTROLS if m in robustness]
    for m in order:
        lines.append(f"| {m} | {_cell(robustness[m].get('sensitivity_max'))} | "
                     f"{_cell(robustness[m].get('infidelity'))} |")
    lines += ["", AG.markdown(agreement).rstrip()]
    if agreement.get("metrics_not_scored"):
        lines += ["", "Metrics left out of the agreement (every method must have a score under each): "
                  + "; ".join(f"`{m}` ({why})" for m, why in agreement["metrics_not_scored"].items()) + "."]
    if with_robustness:
        text = AG.markdown(with_robustness).rstrip().replace(
            "#### Agreement across metrics", "#### Agreement across metrics, with robustness (its images only)", 1)
        lines += ["", text]
        if with_robustness.get("metrics_not_scored"):
            lines += ["", "Left out here: " + "; ".join(
                f"`{m}` ({why})" for m, why in with_robustness["metrics_not_scored"].items()) + "."]
    lines += ["", "#### Noise resilience and reactivity of each metric (MetaQuantus)", "",
              f"Mean |change of the score| per image, methods {', '.join(s.resilience_methods)} pooled. **Input "
              f"noise** (sd {s.input_noise:g}; images whose P(target) moved by at most {s.prob_tolerance:g}): the "
              f"score should not move, lower = more resilient. **Model noise** (weights x (1 + {s.model_noise:g} "
              f"N(0,1)); images whose P(target) moved by more): the score should move, higher = more reactive. "
              f"A metric is useful when its reactivity exceeds its noise.", "",
              "| metric | input noise (lower better) | model noise (higher better) |", "|---|---|---|"]
    for metric, e in (resilience or {}).items():
        lines.append(f"| {metric} | {_cell(e.get('input_noise'))}{_not(e.get('input_noise'))} | "
                     f"{_cell(e.get('model_noise'))}{_not(e.get('model_noise'))} |")
    lines += ["", "#### Repeatability across independently trained models", "",
              repeatability_markdown(repeat, pairs, FOLDS_INTRO).rstrip()]
    return "\n".join(lines) + "\n"


FOLDS_INTRO = ("The same method's maps of the same held-out images from the models of two folds (**repeat**), beside "
               "the trained model vs its weight-randomised copy (**randomised**, the attribute stage's sanity "
               "images). Zero-input pixels excluded; CAMs at feature-map resolution. Flag: the maps change more "
               "between two trained models than under randomisation. One training seed per fold: repeatability "
               "across seeds is scripts/repeat_seeds.py's, over runs of other seeds.")


def repeatability_markdown(repeat: dict, pairs: dict | None, intro: str) -> str:
    """The repeatability table (:func:`summarise_repeatability`) under ``intro``, with each compared pair of
    models and their test AUROC (``pairs``: name -> {label, test_auroc, cam_side})."""
    lines = [intro, ""]
    for name, e in (pairs or {}).items():
        auc = ", ".join("not evaluated" if v is None else f"{v:.3f}" for v in e["test_auroc"])
        lines.append(f"- {name}: test AUROC ({e['label']}) {auc}; CAMs compared on a {e['cam_side']} x "
                     f"{e['cam_side']} grid")
    lines += ["", "| method | similarity | repeat | randomised | flag |", "|---|---|---|---|---|"]
    for m, per in repeat.items():
        for metric, e in per.items():
            nc = {k: v for k, v in e["repeat"].get("not_compared", {}).items() if v}
            note = "; not compared: " + ", ".join(f"{v} {k}" for k, v in nc.items()) if nc else ""
            flag = "–" if e["flag"] is None else ("**yes**" if e["flag"] else "no")
            lines.append(f"| {m} | {metric} | {_cell(e['repeat'])}{note} | {_cell(e['randomised'])} | {flag} |")
    return "\n".join(lines) + "\n"
