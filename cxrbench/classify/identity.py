"""Which trained classifier a reader may use: one whose training finished on the current params and data.

Training writes, once its last epoch is done, a record beside each saved classifier (``best.json`` beside
``best.pt``, ``final.json`` beside ``final.pt``): the configuration digest (:meth:`TrainConfig.digest`:
every train param, the cache size and channels, the labels), the data fingerprint
(:func:`cxrbench.core.checkpoints.rows_fingerprint`: the pixels, targets and paths of the train and val
rows as the model saw them, so a preprocess param, a split, the planted tag and the lung masks are all
covered), the digest of the cache's ``meta.json`` and ``finished: true``. A run that starts or resumes
epochs deletes the records first, so a run killed mid-way leaves its ``best.pt`` without one.

Every reader of a classifier (evaluate, predict, external, attribute, aoppc, randomisation, severity,
planted, the audit's evaluate) loads it through :func:`load`, which recomputes the identity from the
current params, cache, splits, confounder plan and lung masks with :func:`inputs` (the train stage's own
function, so the writer and the reader compute the same thing) and refuses a model whose record is
missing, unfinished or different, naming what changed and what to rerun. The data part costs one pass
over the train and val pixels (about 0.6 s for 340 MB); it is computed once per process and fold.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.classify import training
from cxrbench.core import checkpoints, paths
from cxrbench.core.io import read_json
from cxrbench.core.params import section
from cxrbench.data import confounder, splitting
from cxrbench.data.cache import Cache
from cxrbench.data.indexing import label_matrix
from cxrbench.lungs import controls as audit_inputs

FIELDS = ("config", "data", "cache")        # compared when both the record and the reader have them


class StaleModelError(RuntimeError):
    """A saved classifier that does not belong to the current params and data, or whose training did not finish."""


def cache_digest(meta: dict) -> str:
    """The identity of a preprocess cache as its ``meta.json`` records it (recipe, image count, index digest)."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rerun_hint(variant: str, control: str | None) -> str:
    return "dvc repro audit_train, or python -m stages.train BACKBONE FOLD --variant audit --control " \
           f"{control}" if variant == "audit" else "dvc repro train, or python -m stages.train BACKBONE FOLD"


def check(model_path: str | Path, expected: dict, rerun: str = "dvc repro train") -> list[str]:
    """Raise :class:`StaleModelError` unless the record of ``model_path`` is finished and matches ``expected``
    on every field both hold; return the fields that could not be compared (in the record but not expected)."""
    model_path = Path(model_path)
    rec = checkpoints.sidecar(model_path)
    if not rec.is_file():
        raise StaleModelError(
            f"{model_path} has no finished-record {rec.name}: its training did not finish (interrupted, or still "
            f"running) or it was written by an older version; rerun its training to the end ({rerun})")
    try:
        found = read_json(rec)
    except (OSError, ValueError) as err:
        raise StaleModelError(f"{rec} is unreadable ({err}): rerun the training of {model_path} ({rerun})") from err
    if found.get("finished") is not True:
        raise StaleModelError(f"{model_path}: {rec.name} does not say its training finished; rerun it ({rerun})")
    what = {"config": "train params (or the cache size, channels or labels)",
            "data": "training data (split, preprocessing, planted tag or lung masks)",
            "cache": "preprocess cache (data/cache/meta.json)"}
    diff = [k for k in FIELDS if k in expected and found.get(k) != expected[k]]
    if diff:
        raise StaleModelError(
            f"{model_path} was trained with other {'; other '.join(what[k] for k in diff)} than the current "
            f"ones: it is stale; retrain it ({rerun}) or restore the params and data it was trained with")
    return [k for k in FIELDS if k not in expected]


@dataclass
class Inputs:
    """What the train stage trains one classifier from, and the reader recomputes."""
    cfg: training.TrainConfig
    images: np.ndarray                 # the whole cache as the model sees it (planted tag, input mode)
    targets: np.ndarray
    train_rows: np.ndarray
    val_rows: np.ndarray
    paths: dict
    cache_meta: dict

    def identity(self) -> dict:
        return {"config": self.cfg.digest(), "cache": cache_digest(self.cache_meta),
                "data": checkpoints.rows_fingerprint(self.images, self.targets,
                                                     {"train": self.train_rows, "val": self.val_rows}, self.paths)}


def config(params: dict, backbone: str, fold: int, cache_meta: dict, variant: str = "main",
           control: str | None = None) -> training.TrainConfig:
    """The training configuration of (backbone, fold, variant) under ``params`` and the cache ``cache_meta``."""
    cfg = training.config_for(params, backbone, fold, cache_meta)
    if variant == "audit":
        cfg = dataclasses.replace(cfg, input_mode=control,
                                  input_options=audit_inputs.options_for(control, section(params, "audit")))
    return cfg


def inputs(params: dict, backbone: str, fold: int, variant: str = "main", control: str | None = None,
           root: str | Path = ".", cache: Cache | None = None) -> Inputs:
    """The train stage's inputs of one classifier: the cache with the planted tag, the fold's train and val
    rows, the targets, the images in the run's input mode. ``root``: the run folder."""
    root = Path(root)
    if cache is None:
        cache = Cache(root / paths.CACHE, root / paths.INDEX)
        confounder.apply(cache, root / paths.CONFOUNDER_PLAN)  # the planted shortcut (a no-op when off)
    cfg = config(params, backbone, fold, cache.meta, variant, control)
    parts = splitting.fold_parts(pd.read_csv(root / paths.SPLITS, keep_default_na=False), fold)
    images = training.apply_input_mode(cache.images, cfg.input_mode, cfg.mask_dilation, root / paths.LUNG_MASKS,
                                       options=cfg.input_options)
    targets, member = task_targets(cache.index, cfg, params)
    parts = {k: parts[k][member[cache.rows(parts[k]["path"])]] for k in ("train", "val")}  # multiclass: in the task
    return Inputs(cfg, images, targets, cache.rows(parts["train"]["path"]), cache.rows(parts["val"]["path"]),
                  {k: list(parts[k]["path"]) for k in ("train", "val")}, cache.meta)


def task_targets(index: pd.DataFrame, cfg: training.TrainConfig, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """The targets of every cache row for ``cfg``'s task and the rows inside the task: the labels' multi-hot
    rows (every row), or the classes' one-hot rows by the first-listed-class rule (cxrbench.classify.task)."""
    if cfg.task != "multiclass":
        return label_matrix(index, cfg.labels), np.ones(len(index), bool)
    from cxrbench.classify import task as TK
    from cxrbench.data.labels import LabelTable

    names = LabelTable.from_params(params).names
    return TK.class_targets(label_matrix(index, names), names, cfg.classes)


_MEMO: dict = {}


def _stamp(root: Path) -> tuple:
    """What the expected identity depends on besides params: the files' sizes and modification times."""
    files = (paths.CACHE + "/meta.json", paths.CACHE + "/images.npy", paths.INDEX, paths.SPLITS,
             paths.CONFOUNDER_PLAN, paths.LUNG_MASKS)
    out = []
    for f in files:
        st = (root / f).stat() if (root / f).exists() else None
        out.append((f, st.st_mtime_ns, st.st_size) if st else (f, None))
    return tuple(out)


def expected(params: dict, backbone: str, fold: int, variant: str = "main", control: str | None = None,
             root: str | Path = ".") -> dict:
    """The identity a model of (backbone, fold, variant) trained on the current params and data has;
    memoised per process on the params' digest and the data files' sizes and times."""
    root = Path(root).resolve()
    key = (str(root), backbone, fold, variant, control, _stamp(root),
           hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest())
    if key not in _MEMO:
        cache = _MEMO.get(("cache", key[0], key[5]))
        if cache is None:
            cache = Cache(root / paths.CACHE, root / paths.INDEX)
            confounder.apply(cache, root / paths.CONFOUNDER_PLAN)
            _MEMO.clear()                                  # one cache held at a time
            _MEMO[("cache", key[0], key[5])] = cache
        _MEMO[key] = inputs(params, backbone, fold, variant, control, root, cache).identity()
    return _MEMO[key]


def model_path(params: dict, backbone: str, fold: int, variant: str = "main", control: str | None = None,
               root: str | Path = ".") -> Path:
    """The saved classifier that ``evaluate.checkpoint`` names, in the run folder ``root``."""
    return Path(root) / paths.run(variant, backbone, fold, control).model_dir / training.checkpoint_file(params)


def load(params: dict, backbone: str, fold: int, device="cpu", variant: str = "main", control: str | None = None,
         root: str | Path = "."):
    """The classifier of (backbone, fold, variant) on ``device`` and its meta, after :func:`check` against the
    identity of the current params and data (:func:`expected`)."""
    from cxrbench.classify.models import load_classifier

    path = model_path(params, backbone, fold, variant, control, root)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the train stage for {backbone} fold {fold} "
                                f"({rerun_hint(variant, control)})")
    check(path, expected(params, backbone, fold, variant, control, root), rerun_hint(variant, control))
    return load_classifier(path, device)
