"""Model-parameter randomisation checks of attribution maps (Adebayo et al. 2018; Sixt et al. 2020).

A map that explains the *model* must change when the model's weights do. Three checks, each a
similarity per image between two maps of the same input (:data:`METRICS`):

* **cascading randomisation** (Adebayo et al. 2018, sec. 3.1): the layer groups of the classifier
  (:func:`cascade_groups`) are re-initialised one more at a time, from the head down to the stem
  (:func:`cascade`); at step k the top k groups are random. Similarity to the trained model's map
  should fall towards the null level as k grows; a curve that stays high means the map is
  produced by the input (or the lower layers' structure), not by what the model learned.
* **null reference**: the same similarities between the maps of two *independently* fully
  randomised copies (:func:`full_randomisation`, replicates 0 and 1). Two random models share
  nothing but the input and the architecture, so this is the similarity the input alone produces:
  the level a fully randomised model's similarity to the trained one can be compared to.
* **random logit** (Sixt et al. 2020; Quantus ``RandomLogit``): the trained model's map for the
  target label against its map for another label, drawn per image (seeded) among the other labels
  (:func:`other_labels`). A class-sensitive method gives dissimilar maps.

Similarities (:func:`similarities`): ``spearman`` (rank correlation of the raw, signed maps),
``spearman_abs`` (of their absolute values: insensitive to sign flips, Adebayo et al.'s main
metric) and ``ssim`` (scikit-image ``structural_similarity`` of the maps min-max normalised to
[0, 1], ``data_range=1``).

Degenerate maps are a status, never a number (:func:`pair_status`, :data:`PAIR_STATUSES`): a
constant or non-finite map of the reference (the trained model's, or replicate 0's for the null)
leaves the pair out (``reference_degenerate``); a constant map of the other side
(``changed_constant``: e.g. an all-zero Grad-CAM of a randomised model) has no similarity but
changed completely, so it counts as passing; a non-finite one is ``changed_nonfinite``. All are
counted next to every mean.

Randomisation has no global RNG side effect: each group is re-initialised with its modules' own
``reset_parameters`` (PyTorch's default init; BatchNorm: weight 1, bias 0, running statistics
reset) on a CPU copy, inside :func:`cxrbench.explain.metrics.perturbation.seeded_rng`, with a seed derived
from (seed, replicate, group index) (:func:`group_seed`); the values are then copied into the model
on its device. So a group gets the same values whatever the device, and whether it is randomised
alone, in the cascade or in a full randomisation: the cascade's last step *is* the full
randomisation of replicate 0.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from cxrbench.classify.cxrnet import CXRNet
from cxrbench.explain.metrics import perturbation as EM
from cxrbench.core.bootstrap import DEFAULT_METHOD, DEFAULT_MIN_VALID
from cxrbench.core.params import ParamError, check_int, check_subset, section

METRICS = ("spearman", "spearman_abs", "ssim")
PAIR_STATUSES = ("compared", "changed_constant", "changed_nonfinite", "reference_degenerate")
COMPARISONS = ("cascade", "null", "random_logit")
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm,
          nn.LocalResponseNorm)


# --- layer groups --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerGroup:
    """One step of the cascade: ``name`` (e.g. ``fc`` or ``conv1+bn1``) and the qualified names of its
    modules in the model (e.g. ``backbone.conv1``, ``backbone.bn1``)."""
    name: str
    modules: tuple[str, ...]


def _holds_state(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def _is_stage_sequence(m: nn.Module) -> bool:
    """A ``nn.Sequential`` of *stages* rather than one stage: its parameter-holding children are all
    ``nn.Sequential`` (EfficientNet's ``blocks``), or are of more than one type with at least one of them
    a container of parameter-holding modules (DenseNet's ``features``: conv, norm, dense blocks,
    transitions). A sequence of blocks of one type (ResNet's ``layer4``, Inception-ResNet's ``repeat``)
    or of plain layers (DenseNet's transition: norm, conv) is one stage."""
    if not isinstance(m, nn.Sequential):
        return False
    kids = [c for c in m.children() if _holds_state(c)]
    if kids and all(isinstance(c, nn.Sequential) for c in kids):
        return True
    return len({type(c) for c in kids}) > 1 and any(any(_holds_state(g) for g in c.children()) for c in kids)


def _units(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    out = []
    for name, child in module.named_children():
        if not _holds_state(child):
            continue
        if _is_stage_sequence(child):
            out += _units(child, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", child))
    return out


def cascade_groups(model: nn.Module) -> list[LayerGroup]:
    """The layer groups of ``model``, top (head) first: the order of the cascade.

    The rule, the same for every backbone: take the top-level children of the timm network (inside
    :class:`cxrbench.classify.models.Classifier`: ``model.backbone``; any other module: ``model`` itself) that
    hold parameters, in definition order (the forward order of timm's CNNs); a child that is a
    sequence of stages (:func:`_is_stage_sequence`) is replaced by its children, recursively; a
    normalisation layer joins the group of the layer before it (``conv1+bn1``). Then reverse. E.g.
    resnet18: fc, layer4, layer3, layer2, layer1, conv1+bn1; efficientnet_lite0: classifier,
    conv_head+bn2, blocks.6 ... blocks.0, conv_stem+bn1; densenet121: classifier,
    features.denseblock4+features.norm5, features.transition3, features.denseblock3, ...,
    features.conv0+features.norm0;
    inception_v3: fc, Mixed_7c, ..., Conv2d_1a_3x3 (AuxLogits is a group of its own; it does not act
    at evaluation, so its step changes nothing).
    CXR-Net (:class:`cxrbench.classify.cxrnet.CXRNet`): its decoder's stages first (decoder.out, decoder.last,
    decoder.stages.3 ... 0), then its encoder's groups as above (encoder.fc, encoder.layer4, ...).

    A Classifier with ``train.head: fc`` (COVID-CXNet's head on the pooled features) has ``head`` as its
    top group, above the network's own (then parameter-free) classifier.

    Every parameter of ``model`` belongs to exactly one group (else ValueError).
    """
    inner = getattr(model, "backbone", None)
    root, prefix = (inner, "backbone.") if isinstance(inner, nn.Module) else (model, "")
    units = _units(root, prefix)
    if isinstance(root, CXRNet):       # CXR-Net: its encoder's groups, then each decoder stage (forward order)
        dec = root.decoder
        units = (_units(root.encoder, f"{prefix}encoder.")
                 + [(f"{prefix}decoder.stages.{i}", st) for i, st in enumerate(dec.stages)]
                 + [(f"{prefix}decoder.last", dec.last), (f"{prefix}decoder.out", dec.out)])
    groups: list[list[str]] = []
    for name, mod in units:
        if isinstance(mod, _NORMS) and groups:
            groups[-1].append(name)
        else:
            groups.append([name])
    if not groups:
        raise ValueError(f"{type(root).__name__} has no child module with parameters to randomise")
    head = getattr(model, "head", None) if root is inner else None     # train.head: fc sits on the pooled features
    if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
        groups.append(["head"])                                         # the top of the cascade
    covered = {f"{m}.{p}" for g in groups for m in g for p, _ in model.get_submodule(m).named_parameters()}
    missing = [n for n, _ in model.named_parameters() if n not in covered]
    if missing:
        raise ValueError(f"cascade_groups: parameters outside every layer group: {missing[:8]}"
                         + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
    return [LayerGroup("+".join(n[len(prefix):] if n.startswith(prefix) else n for n in g), tuple(g))
            for g in reversed(groups)]


# --- randomisation ---------------------------------------------------------------------------------------

def group_seed(seed: int, replicate: int, index: int) -> int:
    """The seed of group ``index`` (0 = the top group) in randomisation ``replicate`` of ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(replicate), int(index)]).generate_state(1)[0])


def _unresettable(module: nn.Module) -> list[str]:
    """Parameters of ``module`` whose owning module has no ``reset_parameters`` (cannot be re-initialised)."""
    out = []
    for name, sub in module.named_modules():
        own = [p for p, _ in sub.named_parameters(recurse=False)]
        if own and not callable(getattr(sub, "reset_parameters", None)):
            out += [f"{name}.{p}" if name else p for p in own]
    return out


def randomise_group(model: nn.Module, group: LayerGroup, seed: int) -> None:
    """Re-initialise ``group`` of ``model`` in place: each of its modules' ``reset_parameters``, drawn on a
    CPU copy from generators seeded with ``seed`` (no global RNG side effect), copied into ``model``."""
    with torch.no_grad():
        for name in group.modules:
            mod = model.get_submodule(name)
            bad = _unresettable(mod)
            if bad:
                raise ValueError(f"{name}: no reset_parameters for {bad[:4]}: cannot re-initialise it")
        with EM.seeded_rng(seed):
            fresh = []
            for name in group.modules:
                cpu = copy.deepcopy(model.get_submodule(name)).cpu()
                for sub in cpu.modules():
                    if callable(getattr(sub, "reset_parameters", None)):
                        sub.reset_parameters()
                fresh.append(cpu)
        for name, cpu in zip(group.modules, fresh):
            model.get_submodule(name).load_state_dict(cpu.state_dict())


def cascade(model: nn.Module, seed: int, groups: Sequence[LayerGroup] | None = None
            ) -> Iterator[tuple[int, LayerGroup, nn.Module]]:
    """Cascading randomisation: yields ``(k, group, randomised)`` for k = 1 .. len(groups), where
    ``randomised`` (one copy of ``model`` in eval mode, re-used: read it before the next step) has the top
    k groups re-initialised (replicate 0 of ``seed``). ``model`` is left untouched."""
    groups = list(cascade_groups(model) if groups is None else groups)
    rnd = copy.deepcopy(model).eval()
    for i, g in enumerate(groups):
        randomise_group(rnd, g, group_seed(seed, 0, i))
        yield i + 1, g, rnd


def full_randomisation(model: nn.Module, seed: int, replicate: int = 0,
                       groups: Sequence[LayerGroup] | None = None) -> nn.Module:
    """A copy of ``model`` with every group re-initialised (replicate 0 equals the cascade's last step;
    replicates 0 and 1 are the two independent randomisations of the null reference)."""
    groups = list(cascade_groups(model) if groups is None else groups)
    rnd = copy.deepcopy(model).eval()
    for i, g in enumerate(groups):
        randomise_group(rnd, g, group_seed(seed, replicate, i))
    return rnd


def other_labels(target, n_labels: int, seed) -> np.ndarray:
    """Per image, a label other than its ``target``, drawn uniformly (seeded) among the ``n_labels - 1``
    others: the random-logit check's second class."""
    target = np.asarray(target, dtype=np.int64).reshape(-1)
    if n_labels < 2:
        raise ValueError(f"the random-logit check needs at least 2 labels, the classifier has {n_labels}")
    if len(target) and (target.min() < 0 or target.max() >= n_labels):
        raise ValueError(f"targets {sorted(set(target.tolist()))} outside 0..{n_labels - 1}")
    k = np.random.default_rng(seed).integers(0, n_labels - 1, size=len(target))
    return k + (k >= target)


# --- similarity -----------------------------------------------------------------------------------------

def pair_status(reference, other) -> np.ndarray:
    """Per image, :data:`PAIR_STATUSES`: what the similarity of ``reference`` and ``other`` (N, H, W) is."""
    r, o = EM.map_status(reference), EM.map_status(other)
    if len(r) != len(o):
        raise ValueError(f"pair_status: {len(r)} reference maps but {len(o)} other maps")
    return np.where(r != "ok", "reference_degenerate",
                    np.where(o == "constant", "changed_constant",
                             np.where(o == "nonfinite", "changed_nonfinite", "compared"))).astype(object)


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def ssim(a, b) -> np.ndarray:
    """Per image, scikit-image's SSIM of the two maps min-max normalised to [0, 1] (``data_range=1``;
    the default 7 px window, smaller on maps under 7 px)."""
    from skimage.metrics import structural_similarity

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    side = min(a.shape[-2:])
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        raise ValueError(f"ssim: maps of {a.shape[-2:]} are too small for a 3 px window")
    return np.array([structural_similarity(_minmax(x), _minmax(y), data_range=1.0, win_size=win)
                     for x, y in zip(a, b)])


def _unit_ranks(maps: np.ndarray) -> np.ndarray:
    """Per row of (N, H, W): the ranks of the pixels (ties averaged, as :func:`scipy.stats.spearmanr`),
    centred and scaled to unit norm, so that a dot product of two rows is their Spearman correlation."""
    from scipy.stats import rankdata

    r = rankdata(maps.reshape(len(maps), -1), axis=1)
    r -= r.mean(1, keepdims=True)
    norm = np.sqrt((r * r).sum(1, keepdims=True))
    return r / np.where(norm > 0, norm, 1.0)


class Reference:
    """The first maps of a comparison (the trained model's, or replicate 0's for the null), compared with
    several others (each cascade step, another label): their ranks are computed once.

    ``Reference(maps).compare(other, metrics)`` -> ``status`` (:func:`pair_status`) and, per metric of
    :data:`METRICS`, a float per image: the similarity where the status is ``compared``, NaN elsewhere
    (the status says why). Spearman is computed on ranks (equal to :func:`scipy.stats.spearmanr` and
    :func:`cxrbench.explain.metrics.perturbation.rank_correlation`; a test checks it), vectorised over images.
    """

    def __init__(self, maps):
        self.maps = np.asarray(maps, dtype=np.float32)
        self._ranks: dict = {}

    def _ranks_of(self, absolute: bool) -> np.ndarray:
        if absolute not in self._ranks:
            self._ranks[absolute] = _unit_ranks(np.abs(self.maps) if absolute else self.maps)
        return self._ranks[absolute]

    def compare(self, other, metrics: Sequence[str] = METRICS) -> dict:
        other = np.asarray(other, dtype=np.float32)
        if self.maps.shape != other.shape:
            raise ValueError(f"similarities: maps of shapes {self.maps.shape} and {other.shape}")
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown similarity {unknown}; valid ones are {list(METRICS)}")
        status = pair_status(self.maps, other)
        keep = np.flatnonzero(status == "compared")
        out = {"status": status}
        for m in metrics:
            v = np.full(len(other), np.nan)
            if len(keep):
                if m in ("spearman", "spearman_abs"):
                    absolute = m == "spearman_abs"
                    mine = self._ranks_of(absolute)[keep]
                    theirs = _unit_ranks(np.abs(other[keep]) if absolute else other[keep])
                    v[keep] = np.clip((mine * theirs).sum(1), -1.0, 1.0)
                else:
                    v[keep] = ssim(self.maps[keep], other[keep])
            out[m] = v
        return out


def similarities(reference, other, metrics: Sequence[str] = METRICS) -> dict:
    """:meth:`Reference.compare` of two stacks of maps (N, H, W): ``status`` and one array per metric."""
    return Reference(reference).compare(other, metrics)


# --- one classifier --------------------------------------------------------------------------------------

def masked_compare(a: np.ndarray, b: np.ndarray, keep: np.ndarray, cam_side: int | None,
                   metrics: Sequence[str] = METRICS) -> dict:
    """:meth:`Reference.compare`'s result with the similarities over the pixels ``keep`` (N, H, W: where the
    input is not 0) and, when ``cam_side`` is given (a CAM), at the feature map's resolution
    (:mod:`cxrbench.explain.metrics.similarity`). The status is :func:`pair_status` of the full maps; a value the
    kept pixels leave undefined (a map constant over them, an SSIM window larger than the feature map) is NaN,
    counted as ``masked_out`` by :func:`summarise`."""
    from cxrbench.explain.metrics import similarity as SM

    status = pair_status(a, b)
    k = np.asarray(keep, bool)[:len(a)]
    if cam_side is not None and cam_side < a.shape[-1]:
        a, k2 = SM.to_grid(a, k, cam_side)
        b, _ = SM.to_grid(b, k, cam_side)
        k = k2
    sim = SM.compare(a, b, k, metrics)
    out = {"status": status}
    for m in metrics:
        out[m] = np.where((status == "compared") & (sim[f"{m}_status"] == "compared"), sim[m], np.nan)
    return out


def run_checks(model: nn.Module, x: torch.Tensor, target: torch.Tensor, other: torch.Tensor,
               attribute: Callable[[nn.Module, torch.Tensor, torch.Tensor, str], dict], seed: int,
               metrics: Sequence[str] = METRICS, log: Callable[[str], None] = print, keep: np.ndarray | None = None,
               cam_side: int | None = None) -> tuple[list[dict], dict]:
    """The three checks on one classifier: rows of per-image similarities and the layer groups / map status.

    ``attribute(model, x, target, label)`` -> (maps: method -> float32 (N, H, W), status: method ->
    {ok, ...}) runs the methods on one model (``label`` names the model for the log and the status).
    Rows: ``comparison`` (:data:`COMPARISONS`), ``step`` (cascade: 0 .. groups; 0 is the trained model
    against itself), ``layer`` (the group randomised last), ``method``, ``image`` (row in ``x``),
    ``status`` (:data:`PAIR_STATUSES`) and one column per metric. A method that fails on some model
    (out of memory) is recorded in the returned status and has no rows for that model. With ``keep`` (N, H, W
    bool: where the input is not 0) the similarities leave the other pixels out, and the CAMs
    (:data:`cxrbench.explain.metrics.robustness.CAMS`) are compared at ``cam_side`` (:func:`masked_compare`).
    """
    from cxrbench.explain.metrics.robustness import CAMS
    groups = cascade_groups(model)
    trained, st_trained = attribute(model, x, target, "trained")
    other_maps, st_other = attribute(model, x, other, "trained, other label")
    status = {"groups": [g.name for g in groups], "trained": st_trained, "other_label": st_other, "cascade": {}}
    rows: list[dict] = []

    def add(comparison, step, layer, ref, oth):
        for m in ref:
            if m not in oth:
                continue
            sim = ref[m].compare(oth[m], metrics) if keep is None else \
                masked_compare(ref[m].maps, oth[m], keep, cam_side if m in CAMS else None, metrics)
            for i in range(len(sim["status"])):
                rows.append({"comparison": comparison, "step": step, "layer": layer, "method": m, "image": i,
                             "status": sim["status"][i], **{k: float(sim[k][i]) for k in metrics}})

    reference = {m: Reference(a) for m, a in trained.items()}
    add("cascade", 0, "", reference, trained)
    add("random_logit", 0, "", reference, other_maps)
    last = None
    for k, g, rnd in cascade(model, seed, groups):
        maps, st = attribute(rnd, x, target, f"top {k}/{len(groups)} randomised ({g.name})")
        status["cascade"][g.name] = st
        add("cascade", k, g.name, reference, maps)
        last = maps
        log(f"  cascade {k}/{len(groups)}: {g.name} randomised")
    null_maps, st_null = attribute(full_randomisation(model, seed, 1, groups), x, target, "randomised, replicate 1")
    status["null"] = st_null
    add("null", 0, "", {m: Reference(a) for m, a in last.items()}, null_maps)
    return rows, status


# --- summaries -------------------------------------------------------------------------------------------

def _weighted_mean(values: np.ndarray) -> Callable[[np.ndarray], float | None]:
    values = np.asarray(values, dtype=float)

    def stat(w: np.ndarray) -> float | None:
        total = w.sum()
        return float(w @ values / total) if total > 0 else None
    return stat


def _mean_defined(v: np.ndarray) -> float:
    """The mean of the finite values (NaN when none): called per resample, so plain Python on a few folds."""
    ok = [x for x in v.tolist() if x == x and abs(x) != float("inf")]
    return sum(ok) / len(ok) if ok else float("nan")


def _finite_or_none(v):
    """JSON has no NaN: an undefined estimate or bound is None."""
    return None if isinstance(v, float) and not np.isfinite(v) else v


def summarise(frame, metrics: Sequence[str], n_boot: int, seed: int, confidence: float,
              ci_method: str = DEFAULT_METHOD, min_valid_share: float = DEFAULT_MIN_VALID) -> dict:
    """Per method x backbone: for each comparison (the cascade's steps, the null, the random logit) the
    counts of :data:`PAIR_STATUSES`, ``n`` and ``patients`` (compared maps, their patient groups; the same
    image explained by several folds' models counts once per fold in ``n``) and, per metric, the mean over
    folds of the mean over compared images with a bootstrap CI (``ci_method``, ``min_valid_share``: stats.*) resampling
    patient groups (:func:`cxrbench.core.bootstrap.fold_bootstrap`; every comparison and step on the same
    draws). A fold with no compared image for a comparison is left out of its mean (its maps are counted).
    ``frame``: the rows of :func:`run_checks` with ``backbone``, ``fold`` and ``group`` (patient group)
    columns added."""
    from cxrbench.core.bootstrap import fold_bootstrap

    out: dict = {}
    for (method, backbone), cell in frame.groupby(["method", "backbone"], sort=False):
        keys = sorted({(c, int(s)) for c, s in zip(cell["comparison"], cell["step"])},
                      key=lambda k: (COMPARISONS.index(k[0]), k[1]))
        layer = {(c, int(s)): lay for c, s, lay in zip(cell["comparison"], cell["step"], cell["layer"])}
        folds = sorted(cell["fold"].unique())
        entries = {}
        for key in keys:
            sub = cell[(cell["comparison"] == key[0]) & (cell["step"] == key[1])]
            compared = sub[sub["status"] == "compared"]
            entries[key] = {"counts": {s: int((sub["status"] == s).sum()) for s in PAIR_STATUSES},
                            "masked_out": {m: int(compared[m].isna().sum()) for m in metrics},
                            "n": int((sub["status"] == "compared").sum()),
                            "patients": int(sub.loc[sub["status"] == "compared", "group"].nunique()),
                            "folds": int(sub.loc[sub["status"] == "compared", "fold"].nunique())}
            if key[0] == "cascade":
                entries[key] = {"step": key[1], "layer": layer[key], **entries[key]}
        for metric in metrics:
            # the >= 2-patient check is per comparison (and per metric: only defined similarities count), in every
            # fold: a comparison whose compared maps come from one patient has no interval, whatever the others have
            defined = (cell["status"] == "compared") & cell[metric].notna()
            enough = {key: all(cell.loc[(cell["fold"] == f) & defined & (cell["comparison"] == key[0])
                                        & (cell["step"] == key[1]), "group"].nunique() >= 2 for f in folds)
                      for key in keys}
            cis = {}
            if any(enough.values()):
                arms_by_fold = []
                for f in folds:
                    arms = []
                    for key in keys:
                        sub = cell[(cell["fold"] == f) & (cell["comparison"] == key[0]) & (cell["step"] == key[1])
                                   & (cell["status"] == "compared") & cell[metric].notna()]
                        arms.append((sub["group"].astype(str).to_numpy(), _weighted_mean(sub[metric].to_numpy())))
                    arms_by_fold.append(arms)
                reducers = {j: (lambda t, j=j: _mean_defined(t[:, j])) for j in range(len(keys)) if enough[keys[j]]}
                cis = fold_bootstrap(arms_by_fold, reducers, n_boot, seed, confidence, ci_method, min_valid_share)
            for j, key in enumerate(keys):
                if j in cis:
                    entries[key][metric] = {k: _finite_or_none(cis[j].get(k)) for k in (
                        "estimate", "low", "high", "confidence", "n_boot", "undefined", "status")}
                    continue
                sub = cell[(cell["comparison"] == key[0]) & (cell["step"] == key[1]) & (cell["status"] == "compared")]
                per_fold = np.array([sub.loc[sub["fold"] == f, metric].mean() for f in folds], dtype=float)
                est = _mean_defined(per_fold)
                entries[key][metric] = {"estimate": est if np.isfinite(est) else None, "low": None, "high": None,
                                        "status": "no_ci",
                                        "note": "fewer than 2 patient groups with a defined similarity in a fold: no CI"}
        out.setdefault(method, {})[backbone] = {
            "folds": [int(f) for f in folds],
            "images": int(cell[(cell["comparison"] == "cascade") & (cell["step"] == 0)].shape[0]),
            "cascade": [entries[k] for k in keys if k[0] == "cascade"],
            "null": entries.get(("null", 0)), "random_logit": entries.get(("random_logit", 0))}
    return out


def curve_rows(summary: dict, metrics: Sequence[str]) -> list[dict]:
    """The cascade curves as long rows (backbone, method, metric, step, layer, similarity, low, high, n) plus
    the null reference per method (``null``, ``null_low``, ``null_high``): plots/randomisation/cascade.csv."""
    rows = []
    for method, per in summary.items():
        for backbone, s in per.items():
            null = s.get("null") or {}
            for metric in metrics:
                nv = null.get(metric) or {}
                for e in s["cascade"]:
                    v = e.get(metric) or {}
                    rows.append({"backbone": backbone, "method": method, "metric": metric, "step": e["step"],
                                 "layer": e["layer"], "similarity": v.get("estimate"), "low": v.get("low"),
                                 "high": v.get("high"), "n": e["n"], "null": nv.get("estimate"),
                                 "null_low": nv.get("low"), "null_high": nv.get("high")})
    return rows


def _fmt(v: dict | None) -> str:
    from cxrbench.core.bootstrap import format_ci

    if not v:
        return "–"
    low, high = v.get("low"), v.get("high")
    return format_ci({**v, "low": np.nan if low is None else low, "high": np.nan if high is None else high})


def _counts_text(e: dict | None) -> str:
    if not e:
        return "–"
    c = e["counts"]
    parts = [f"{c['compared']} ({e['patients']} pat.)"]
    if c["changed_constant"]:
        parts.append(f"{c['changed_constant']} constant")
    if c["changed_nonfinite"]:
        parts.append(f"{c['changed_nonfinite']} non-finite")
    if c["reference_degenerate"]:
        parts.append(f"{c['reference_degenerate']} excluded")
    return ", ".join(parts)


METRIC_NAMES = {"spearman": "Spearman (signed)", "spearman_abs": "Spearman |map|", "ssim": "SSIM"}


def markdown(summary: dict, metrics: Sequence[str], methods: Sequence[str], images: int) -> str:
    """The randomisation tables: per metric, trained vs fully randomised next to the null reference and the
    random logit (mean [95 % CI], n compared and the degenerate maps), then the cascade curves (means)."""
    backbones = list(dict.fromkeys(b for per in summary.values() for b in per))
    lines = ["### Model-parameter randomisation (Adebayo et al. 2018) and random logit (Sixt et al. 2020)", "",
             f"Up to {images} held-out images per model (the attribute stage's first ones), mean over folds of the "
             f"mean over images, 95 % CI resampling patient groups; pixels where the input is 0 (padding, clipping) "
             f"are left out of every similarity, and CAMs are compared at the feature map's resolution. "
             f"**Full**: trained vs fully randomised model "
             f"(the cascade's last step); **null**: two independently randomised models (the similarity the input "
             f"alone produces: the level to compare Full with); **logit**: the trained model's map for the target "
             f"vs for another label (seeded choice). Lower = the map depends more on the weights / the class. "
             f"n: maps compared (their patients; an image explained by two folds' models counts twice), then "
             f"the second map's constant ones (no similarity; for full and logit they count as passing: the map "
             f"changed completely), non-finite ones, and images excluded because the first map (trained model; "
             f"null: the first randomised model) is degenerate.", ""]
    for metric in metrics:
        lines += [f"#### {METRIC_NAMES.get(metric, metric)}", "",
                  "| backbone | method | full | null | logit | n full | n null | n logit |",
                  "|---|---|---|---|---|---|---|---|"]
        for b in backbones:
            for m in methods:
                s = summary.get(m, {}).get(b)
                if s is None:
                    lines.append(f"| {b} | {m} | not run | | | | | |")
                    continue
                full = s["cascade"][-1] if len(s["cascade"]) > 1 else None
                lines.append(f"| {b} | {m} | {_fmt((full or {}).get(metric))} | "
                             f"{_fmt((s['null'] or {}).get(metric))} | {_fmt((s['random_logit'] or {}).get(metric))} | "
                             f"{_counts_text(full)} | {_counts_text(s['null'])} | {_counts_text(s['random_logit'])} |")
        lines.append("")
    metric = "spearman_abs" if "spearman_abs" in metrics else metrics[0]      # Adebayo et al.'s main metric
    lines += [f"#### Cascade ({METRIC_NAMES.get(metric, metric)}, mean; step k: the top k layer groups randomised)", ""]
    for b in backbones:
        layers = next((s[b]["cascade"] for s in summary.values() if b in s), [])
        head = [e["layer"] or "trained" for e in layers]
        lines += [f"{b}: " + " → ".join(head[1:]), "",
                  "| method | " + " | ".join(str(e["step"]) for e in layers) + " | null |",
                  "|---|" + "---|" * (len(layers) + 1)]
        for m in methods:
            s = summary.get(m, {}).get(b)
            if s is None:
                continue
            vals = [(e.get(metric) or {}).get("estimate") for e in s["cascade"]]
            nv = ((s["null"] or {}).get(metric) or {}).get("estimate")
            lines.append(f"| {m} | " + " | ".join("–" if v is None else f"{v:.2f}" for v in vals)
                         + f" | {'–' if nv is None else f'{nv:.2f}'} |")
        lines.append("")
    return "\n".join(lines)


# --- params ----------------------------------------------------------------------------------------------

@dataclass
class Settings:
    images: int
    methods: list
    seed: int
    metrics: list


def validate(params: dict) -> Settings:
    """``randomisation`` params, checked before any work. ``methods: null`` means ``explain.methods``."""
    from cxrbench.explain.runner import check_method

    images = check_int("randomisation.images", section(params, "randomisation.images"), minimum=1)
    methods = section(params, "randomisation.methods")
    if methods is None:
        methods = list(section(params, "explain.methods"))
    elif not isinstance(methods, list) or not methods:
        raise ParamError("randomisation.methods", f"expected a non-empty list of attribution methods or null "
                                                  f"(= explain.methods), got {methods!r}")
    for m in methods:
        check_method(m, "randomisation.methods")
    seed = check_int("randomisation.seed", section(params, "randomisation.seed"), minimum=0)
    metrics = check_subset("randomisation.metrics", section(params, "randomisation.metrics"), METRICS)
    return Settings(images=images, methods=list(methods), seed=seed, metrics=list(metrics))
