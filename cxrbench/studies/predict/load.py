"""The trained run predict reads: its cache recipe, the chosen models and their validation thresholds, all checked."""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from cxrbench.core import paths
from cxrbench.classify import evaluation as E
from cxrbench.classify import task as TK
from cxrbench.core import params as P
from cxrbench.core import runtime
from cxrbench.classify.ensemble import VOTE_TIES, vote_rule_name
from cxrbench.core.io import read_json
from cxrbench.core.params import check_choice, section
from cxrbench.data.preprocess import Recipe

ENSEMBLE = "ensemble"


class PredictError(RuntimeError):
    """A run, model or recipe that predict cannot use; the message names the file and what to do."""


def cache_recipe(run: str | Path, params: dict, params_file: str | Path = "params.yaml") -> Recipe:
    """The preprocessing recipe of the run's cache.

    ``data/cache/meta.json`` records size, channels and percentiles (all of the recipe when it holds a
    ``recipe`` mapping); the rest (intensity, fixed_range, filter settings) comes from the run's params,
    which must agree with meta.json wherever both speak, or the params are not the ones the cache was
    built with.
    """
    meta_path = Path(run) / paths.CACHE / "meta.json"
    if not meta_path.is_file():
        raise PredictError(f"{meta_path} not found: predict reads the preprocessing recipe of the run's cache; "
                           f"bring it back in {run} (dvc pull data/cache, or dvc repro preprocess)")
    meta = read_json(meta_path)
    recipe = Recipe.from_params(params)
    recorded = dict(meta["recipe"]) if isinstance(meta.get("recipe"), dict) else {
        "size": meta.get("size"), "channels": meta.get("channels"), "percentiles": meta.get("percentiles")}
    names = {f.name for f in fields(Recipe)}
    unknown = sorted(set(recorded) - names)
    if unknown:
        raise PredictError(f"{meta_path}: unknown recipe key(s) {unknown}; this cxrbench knows {sorted(names)}")

    def same(value):       # JSON lists -> the recipe's tuples (a chain of channel recipes is a tuple in a tuple)
        return tuple(same(v) for v in value) if isinstance(value, list) else value

    wrong = [f"{k}: {v!r} in meta.json, {getattr(recipe, k)!r} from params" for k, v in recorded.items()
             if v is not None and same(v) != getattr(recipe, k)]
    if wrong:
        raise PredictError(f"{meta_path} and {params_file} disagree on the preprocessing recipe "
                           f"({'; '.join(wrong)}): the cache was built with other params; use the params.yaml "
                           f"of that run (--params), or rerun preprocess and train there")
    return recipe


@dataclass
class Member:
    """One trained classifier of the run and its validation thresholds."""
    backbone: str
    fold: int
    path: Path
    model: object
    meta: dict
    cuts: np.ndarray               # per label, from metrics/eval
    cut: str                       # ge | gt

    @property
    def name(self) -> str:
        return f"{self.backbone}-f{self.fold}"


@dataclass
class Run:
    root: Path
    params: dict
    recipe: Recipe
    labels: list
    members: list[Member]
    vote_tie: str
    batch_size: int
    device: object = None

    @property
    def rule(self) -> str:
        """How ``pred_*`` is decided, in words."""
        if len(self.members) == 1:
            return f"{self.members[0].name}'s validation thresholds"
        return f"vote of {len(self.members)} models' thresholded predictions: " + \
            vote_rule_name(len(self.members), self.vote_tie)


def parse_models(spec: str, backbones: Sequence[str], folds: Sequence[int]) -> list[tuple[str, int]]:
    """``resnet18:0`` | ``resnet18`` (its folds) | ``ensemble`` | ``ensemble:0``, comma-joined -> (backbone, fold)."""
    out: list[tuple[str, int]] = []
    for part in str(spec).split(","):
        name, sep, fold = part.strip().partition(":")
        if not name:
            raise PredictError(f"--models {spec!r}: empty model name; write e.g. resnet18:0, resnet18 or ensemble")
        if sep and not fold.strip().isdigit():
            raise PredictError(f"--models {part.strip()!r}: the fold after ':' must be an integer, e.g. {name}:0")
        chosen = [int(fold)] if sep else list(folds)
        for b in (list(backbones) if name == ENSEMBLE else [name]):
            out += [(b, k) for k in chosen if (b, k) not in out]
    return out


def load_thresholds(path: Path, member_labels: list, meta: dict, checkpoint: str, model_path: Path) -> tuple:
    """(cuts per label, cut rule) written by the evaluate stage for the model at ``model_path``."""
    if meta.get("task") == "multiclass":
        raise PredictError(f"{model_path} is a train.task: multiclass classifier (classes {member_labels}, argmax "
                           f"decisions, no thresholds): predict applies multi-label runs only so far; its "
                           f"test-set class metrics are in metrics/eval and metrics/summary.md")
    if not path.is_file():
        raise PredictError(f"{path} not found: the validation thresholds of {model_path} come from the evaluate "
                           f"stage; run it (dvc repro evaluate) in the run folder")
    ev = read_json(path)
    if ev.get("checkpoint") not in (None, checkpoint):
        raise PredictError(f"{path} holds the thresholds of the {ev['checkpoint']!r} checkpoint but evaluate."
                           f"checkpoint is {checkpoint!r} ({model_path}): rerun the evaluate stage")
    if ev.get("checkpoint_epoch") is not None and meta.get("epoch") is not None \
            and ev["checkpoint_epoch"] != meta["epoch"]:
        raise PredictError(f"{path} holds thresholds chosen for epoch {ev['checkpoint_epoch']} but {model_path} "
                           f"is from epoch {meta['epoch']}: the model was retrained; rerun the evaluate stage")
    thresholds = ev.get("thresholds") or {}
    missing = [n for n in member_labels if n not in thresholds]
    if missing:
        raise PredictError(f"{path} has no threshold for label(s) {missing} of {model_path}: rerun the evaluate stage")
    cut = ev.get("cut") or "ge"
    if cut not in E.CUTS:
        raise PredictError(f"{path}: unknown cut {cut!r}; valid: {list(E.CUTS)}")
    return np.array([float(thresholds[n]["cut"]) for n in member_labels]), cut


def check_model(meta: dict, model_path: Path, recipe: Recipe, run: Path) -> None:
    """A model trained on another cache, or one that needs lung masks, is refused with the reason."""
    meta_path = Path(run) / paths.CACHE / "meta.json"
    mode = meta.get("input_mode", "full")
    if mode != "full":
        raise PredictError(
            f"{model_path} was trained with input_mode {mode!r} (lungs hidden or cropped with the U-Net's lung "
            f"masks); predict has no lung masks of new images and will not feed it unmasked images: choose "
            f"models trained with train.input_mode: full")
    size, chans = meta.get("cache_size"), meta.get("in_chans")
    if size != recipe.size or chans != len(recipe.channels):
        raise PredictError(
            f"{model_path} was trained on a {size} px cache of {chans} channel(s) but the run's cache recipe "
            f"{meta_path} is {recipe.size} px with channels {list(recipe.channels)}: the model and the recipe "
            f"disagree; retrain the model on this cache (dvc repro train) or pass the --run it was trained in")


DATA_FILES = (paths.CACHE + "/images.npy", paths.INDEX, paths.SPLITS, paths.CONFOUNDER_PLAN)


def check_identity(run: Path, params: dict, backbone: str, fold: int, path: Path) -> str | None:
    """Refuse a model whose training did not finish, or that was trained with other params, another cache
    recipe or (when the run folder holds the cache, index, splits and confounder plan) other training data;
    return a note naming what could not be checked, else None."""
    from cxrbench.classify import identity

    missing = [f for f in DATA_FILES if not (run / f).is_file()]
    try:
        if not missing:
            expected = identity.expected(params, backbone, fold, root=run)
        else:
            cache_meta = read_json(run / paths.CACHE / "meta.json")
            expected = {"config": identity.config(params, backbone, fold, cache_meta).digest(),
                        "cache": identity.cache_digest(cache_meta)}
        unchecked = identity.check(path, expected, f"dvc repro train in {run}")
    except identity.StaleModelError as err:
        raise PredictError(str(err)) from None
    if unchecked:
        return (f"{path}: finished, params and cache recipe checked; its training data ({', '.join(unchecked)}) "
                f"could not be, as {run} lacks {', '.join(missing)}")
    return None


def load_run(run: str | Path = ".", models: str = ENSEMBLE, params: dict | None = None, device=None,
             params_file: str | Path | None = None) -> Run:
    """The run's recipe, the chosen models (on ``device``) and their validation thresholds, all checked."""
    from cxrbench.classify import training
    from cxrbench.classify.models import load_classifier

    run = Path(run)
    params_file = Path(params_file) if params_file else run / P.PARAMS_FILE
    params = P.load(params_file) if params is None else params
    if TK.task_of(params) == "multiclass":          # refused before any model loads (load_thresholds: per model)
        classes = TK.validate(params)["classes"]
        raise PredictError(f"{params_file}: train.task is multiclass (classes {list(classes)}, argmax decisions, no "
                           f"thresholds): predict applies multi-label runs only so far; the run's test-set class "
                           f"metrics are in metrics/eval and metrics/summary.md")
    ev = E.validate(params)
    checkpoint_name = training.checkpoint_file(params)
    vote_tie = check_choice("ensemble.vote_tie", section(params, "ensemble.vote_tie"), VOTE_TIES)
    backbones = P.check_nonempty_list("train.backbones", section(params, "train.backbones"))
    folds = P.check_nonempty_list("train.folds", section(params, "train.folds"))
    recipe = cache_recipe(run, params, params_file)
    device = runtime.device(device)
    members: list[Member] = []
    for b, k in parse_models(models, backbones, folds):
        where = paths.run("main", b, k)
        path = run / where.model_dir / checkpoint_name
        if not path.is_file():
            raise PredictError(f"{path} not found: no trained {b} fold {k} in {run} (its train.backbones are "
                               f"{backbones}, train.folds {folds}; evaluate.checkpoint {ev['checkpoint']!r})")
        model, meta = load_classifier(path, device)
        check_model(meta, path, recipe, run)               # the specific reasons first, then the whole identity
        note = check_identity(run, params, b, k, path)
        if note:
            print(f"predict: note: {note}", file=sys.stderr)
        labels = list(meta["labels"])
        if members and labels != members[0].meta["labels"]:
            raise PredictError(f"{path} predicts labels {labels} but {members[0].path} predicts "
                               f"{members[0].meta['labels']}: models of one prediction must share their labels")
        cuts, cut = load_thresholds(run / where.eval_metrics, labels, meta, ev["checkpoint"], path)
        members.append(Member(b, k, path, model, meta, cuts, cut))
    return Run(run, params, recipe, list(members[0].meta["labels"]), members, vote_tie, int(ev["batch_size"]),
               device)
