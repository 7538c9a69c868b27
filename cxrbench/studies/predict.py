"""Apply a trained run's classifiers to new radiographs: probabilities, labels, overlays.

    cxrbench predict my_xrays/ --out predictions.csv                     # every model of the run
    cxrbench predict a.png b.jpg --models resnet18:0 --out p.csv       # one backbone x fold
    cxrbench predict scans/ --models resnet18 --device cuda            # every fold of resnet18
    cxrbench predict scans/ --models ensemble:0 --overlays overlays/    # fold 0's backbones, with maps
    cxrbench predict scans/ --run ../exp-folder --set predict.overlay_method=saliency --overlays maps/

IMAGES are files or folders (searched recursively for *.png, *.jpg, *.jpeg, *.dcm, any case). DICOM is read
only when the optional ``pydicom`` is installed (``pip install pydicom``); otherwise each ``.dcm`` file is
listed as bad with that reason. ``--run`` is the folder of a trained run (default: the workspace ``.``): its
``params.yaml``, ``data/cache/meta.json`` (the preprocessing recipe), ``models/classifier/<backbone>/fold<k>/``
(the checkpoint ``evaluate.checkpoint`` names) and ``metrics/eval/<backbone>-f<k>.json`` (the validation
thresholds). A DVC experiment is predicted from a folder where it is checked out (``git worktree`` +
``dvc checkout``, or ``dvc exp apply`` in a clone).

``--models``: ``BACKBONE:FOLD`` (one model), ``BACKBONE`` (its ``train.folds``), ``ensemble`` (every
``train.backbones`` x ``train.folds``, the default) or ``ensemble:FOLD`` (the backbones of one fold, the
ensemble stage's members); several specs are joined with commas.

Every image gets exactly the training input: decoded by :func:`cxrbench.data.images.load_grey`, preprocessed by
:func:`cxrbench.data.preprocess.prepare` with the run's cache recipe (an image that is in the run's cache gives
byte-identical uint8 input), fed to each model as :func:`cxrbench.classify.training.predict` feeds it: the same
images in the evaluate stage's batches (``evaluate.batch_size``) get its probabilities bit for bit (other
batches: within about 1e-7, CPU kernels sum in another order). Before any image is read, the run's params
are checked against ``data/cache/meta.json`` and every model's ``cache_size`` / ``in_chans`` against that
recipe (a disagreement is an error naming both files), and each model's thresholds against its checkpoint.
Models trained with the lungs hidden or cropped (``input_mode`` other than ``full``) need lung masks of the
new images and are refused.

The CSV has one row per image, in input order: ``path``, ``status`` (``ok`` or why the image could not be
read; such rows have no probabilities), ``prob_<label>`` for every label (the mean of the models'
sigmoid probabilities, the ensemble stage's ``mean`` score; one model: its own), ``pred_<label>`` (0/1:
each model thresholds its probability at its own validation cut of ``metrics/eval``, with its
``evaluate.cut`` (>= or >), and the label is on when more than half of the models say so; a tie follows
``ensemble.vote_tie``, the ensemble stage's ``vote`` rule; one model: its own decision), ``models`` (the
``backbone-fK`` models that voted) and, with ``--overlays``, ``overlay`` (the PNG written, or why not).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from cxrbench.core import paths
from cxrbench.classify import evaluation as E
from cxrbench.core import params as P
from cxrbench.core import runtime
from cxrbench.classify.ensemble import VOTE_TIES, vote_decision, vote_rule_name
from cxrbench.data.images import DECODE_ERRORS, load_grey
from cxrbench.core.io import read_json, write_csv
from cxrbench.core.params import ParamError, check_choice, check_fraction, section
from cxrbench.data.preprocess import Recipe, prepare

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")        # what a folder is searched for (any case)
DICOM_SUFFIXES = (".dcm", ".dicom")
ENSEMBLE = "ensemble"
TOP = "top"                                                # predict.overlay_target: each image's likeliest label
OK = "ok"


class PredictError(RuntimeError):
    """A run, model or recipe that predict cannot use; the message names the file and what to do."""


class DicomUnavailableError(RuntimeError):
    """A DICOM file while the optional pydicom is not installed."""


# --- params -------------------------------------------------------------------

def validate(params: dict) -> dict:
    """The ``predict`` section (read only for ``--overlays``), every key checked."""
    from cxrbench.explain.attribution import check_method

    p = section(params, "predict")
    if not isinstance(p, dict):
        raise ParamError("predict", "expected a mapping with overlay_method, overlay_target, overlay_alpha")
    check_method(section(params, "predict.overlay_method"), "predict.overlay_method")
    target = section(params, "predict.overlay_target")
    if not isinstance(target, str) or not target:
        raise ParamError("predict.overlay_target", f"expected a label name (labels.names) or {TOP!r}, got {target!r}")
    check_fraction("predict.overlay_alpha", section(params, "predict.overlay_alpha"), open_high=False)
    return p


# --- the run: recipe, models, thresholds ---------------------------------------

def cache_recipe(run: str | Path, params: dict, params_file: str | Path = "params.yaml") -> Recipe:
    """The preprocessing recipe of the run's cache.

    ``data/cache/meta.json`` records size, channels and percentiles (all of the recipe when it holds a
    ``recipe`` mapping); the rest (intensity, fixed_range, filter settings) comes from the run's params,
    which must agree with meta.json wherever both speak, or the params are not the ones the cache was
    built with.
    """
    meta_path = Path(run) / "data" / "cache" / "meta.json"
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

    def same(value):
        return tuple(value) if isinstance(value, list) else value

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
    meta_path = Path(run) / "data" / "cache" / "meta.json"
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


def load_run(run: str | Path = ".", models: str = ENSEMBLE, params: dict | None = None, device=None,
             params_file: str | Path | None = None) -> Run:
    """The run's recipe, the chosen models (on ``device``) and their validation thresholds, all checked."""
    from cxrbench.classify import training
    from cxrbench.classify.models import load_classifier

    run = Path(run)
    params_file = Path(params_file) if params_file else run / P.PARAMS_FILE
    params = P.load(params_file) if params is None else params
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
        check_model(meta, path, recipe, run)
        labels = list(meta["labels"])
        if members and labels != members[0].meta["labels"]:
            raise PredictError(f"{path} predicts labels {labels} but {members[0].path} predicts "
                               f"{members[0].meta['labels']}: models of one prediction must share their labels")
        cuts, cut = load_thresholds(run / where.eval_metrics, labels, meta, ev["checkpoint"], path)
        members.append(Member(b, k, path, model, meta, cuts, cut))
    return Run(run, params, recipe, list(members[0].meta["labels"]), members, vote_tie, int(ev["batch_size"]),
               device)


# --- images -------------------------------------------------------------------

def find_images(items: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for :data:`IMAGE_SUFFIXES`; a missing path is kept
    (it is then listed as bad)."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def load_dicom(path: str | Path) -> np.ndarray:
    """A DICOM radiograph as grey float32 in [0, 1]: modality and VOI LUTs applied, MONOCHROME1 inverted,
    then scaled by its own minimum and maximum (the training images are 8-bit PNG/JPEG: see docs/predict.md)."""
    try:
        import pydicom
    except ImportError:
        raise DicomUnavailableError("reading DICOM needs the optional pydicom, which is not installed "
                                    "(pip install pydicom)") from None
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:          # pydicom < 3
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    ds = pydicom.dcmread(str(path))
    arr = ds.pixel_array
    if int(getattr(ds, "SamplesPerPixel", 1)) != 1 or arr.ndim != 2:
        raise ValueError(f"expected one grey frame, got pixel data of shape {arr.shape} "
                         f"({getattr(ds, 'PhotometricInterpretation', '?')})")
    arr = apply_modality_lut(arr, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        arr = apply_voi_lut(arr, ds)
    arr = np.asarray(arr, dtype=np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return 1.0 - arr if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1" else arr


def _dicom_errors() -> tuple:
    try:
        from pydicom.errors import InvalidDicomError
    except ImportError:
        return (DicomUnavailableError,)
    # pixel data missing (AttributeError), a transfer syntax without a decoder (RuntimeError,
    # NotImplementedError), a malformed element (ValueError, KeyError, OSError)
    return (DicomUnavailableError, InvalidDicomError, AttributeError, RuntimeError, NotImplementedError,
            ValueError, KeyError, OSError)


def load_image(path: str | Path) -> np.ndarray:
    """Grey float32 in [0, 1] of shape (H, W): DICOM by :func:`load_dicom`, anything else by
    :func:`cxrbench.data.images.load_grey` (the decoder that built the cache)."""
    if Path(path).suffix.lower() in DICOM_SUFFIXES:
        return load_dicom(path)
    return load_grey(path)


def prepare_file(job: tuple[str, Recipe]) -> tuple[np.ndarray | None, str]:
    """(the (C, S, S) uint8 input, ``ok``) or (None, why it could not be read)."""
    path, recipe = job
    dicom = Path(path).suffix.lower() in DICOM_SUFFIXES
    expected = _dicom_errors() if dicom else DECODE_ERRORS
    try:
        grey = load_image(path)
    except expected as err:
        return None, f"{type(err).__name__}: {err}".replace("\n", " ").strip()
    return prepare(grey, recipe), OK


def prepare_files(paths: Sequence[str | Path], recipe: Recipe, workers: int = 1) -> Iterator[tuple]:
    """(path, uint8 input or None, status) per path, in order; ``workers`` > 1 decodes in processes."""
    jobs = [(str(p), recipe) for p in paths]
    if workers <= 1 or len(jobs) < 2 * workers:
        for (p, _), (arr, status) in zip(jobs, map(prepare_file, jobs)):
            yield p, arr, status
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for (p, _), (arr, status) in zip(jobs, pool.map(prepare_file, jobs, chunksize=4)):
            yield p, arr, status


# --- prediction -----------------------------------------------------------------

def predict_members(run: Run, images: np.ndarray) -> list[np.ndarray]:
    """Each model's sigmoid probabilities (N, L) float32 of uint8 inputs (N, C, S, S), as evaluate computes them."""
    from cxrbench.classify import training

    rows = np.arange(len(images))
    return [training.predict(m.model, images, rows, run.device, run.batch_size) for m in run.members]


def combine(run: Run, probs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(probability, 0/1 decision) per image and label: the mean probability, and the vote of the models'
    own thresholded decisions (:func:`cxrbench.classify.ensemble.vote_decision`; one model: its own decision)."""
    prob = probs[0] if len(probs) == 1 else np.mean(np.stack(probs), axis=0, dtype=np.float64).astype(np.float32)
    votes = np.mean([E.positive(p, m.cuts, m.cut) for p, m in zip(probs, run.members)], axis=0)
    return prob, vote_decision(votes, run.vote_tie).astype(np.int64)


def predict_files(run: Run, paths: Sequence[str | Path], overlays: str | Path | None = None,
                  workers: int = 1, progress: bool = True) -> pd.DataFrame:
    """The predictions table of ``paths`` (see the module docstring); bad images get their reason as status.

    Images are predicted in blocks of a whole number of ``evaluate.batch_size`` batches, so batches hold
    the same images as one call of :func:`cxrbench.classify.training.predict` over every readable image.
    """
    labels = run.labels
    n = len(paths)
    prob = np.full((n, len(labels)), np.nan, dtype=np.float32)
    pred = np.zeros((n, len(labels)), dtype=np.int64)
    status = [OK] * n
    overlay_col = [""] * n
    block = run.batch_size * max(1, 256 // run.batch_size)
    pending: list[tuple[int, np.ndarray]] = []
    painter = Overlays(run, overlays) if overlays is not None else None

    def flush(items):
        if not items:
            return
        idx = np.array([i for i, _ in items])
        images = np.stack([a for _, a in items])
        prob[idx], pred[idx] = combine(run, predict_members(run, images))
        if painter is not None:
            for i, note in zip(idx, painter.draw(images, prob[idx], [str(paths[i]) for i in idx], idx)):
                overlay_col[i] = note

    bar = runtime.progress(prepare_files(paths, run.recipe, workers), total=n, desc="predict", unit="img",
                           enabled=progress)
    for i, (_, arr, st) in enumerate(bar):
        status[i] = st
        if arr is not None:
            pending.append((i, arr))
        if len(pending) >= block:
            flush(pending[:block])
            pending = pending[block:]
    flush(pending)

    ok = np.array([s == OK for s in status], dtype=bool)
    frame = pd.DataFrame({"path": [str(p) for p in paths], "status": status})
    frame[E.prob_columns(labels)] = prob
    decided = pd.DataFrame(pred, columns=[f"pred_{n}" for n in labels]).astype("Int64")
    decided.loc[~ok, :] = pd.NA
    frame = pd.concat([frame, decided], axis=1)
    frame["models"] = np.where(ok, ";".join(m.name for m in run.members), "")
    if painter is not None:
        frame["overlay"] = overlay_col
    return frame


# --- overlays -------------------------------------------------------------------

class Overlays:
    """Attribution overlays (``predict.overlay_method`` with the ``explain`` settings) as PNGs.

    The map of an image is the mean over the models of each model's map divided by its own largest
    absolute value (models' raw maps have unrelated scales), shown over the preprocessed image: red is
    evidence for the explained label, blue against it.
    """

    def __init__(self, run: Run, out_dir: str | Path):
        from cxrbench.explain import attribution as A

        p = validate(run.params)
        self.A, self.run, self.out_dir = A, run, Path(out_dir)
        self.settings = A.validate(run.params)
        self.method, self.alpha = p["overlay_method"], float(p["overlay_alpha"])
        self.target = p["overlay_target"]
        if self.target != TOP and self.target not in run.labels:
            raise ParamError("predict.overlay_target", f"{self.target!r} is not a label of the models "
                                                       f"{run.labels}; name one, or write {TOP!r}")
        if A.METHODS[self.method].needs_layer:       # a backbone without a Grad-CAM layer fails now, not mid-run
            for m in run.members:
                A.target_layer(m.model, m.backbone, self.settings.target_layers)
        self.prepared: dict[str, object] = {}
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def maps(self, x, target) -> tuple[np.ndarray | None, str]:
        A = self.A
        total = None
        for m in self.run.members:
            if m.name not in self.prepared:        # a hookable copy, only for the methods that hook activations
                needs = A.METHODS[self.method].needs_prepared
                self.prepared[m.name] = A.prepare_for_attribution(m.model, x)[0] if needs else m.model
            max_batch = self.settings.max_batch or A.estimate_max_batch(m.model, x, self.settings.memory_fraction)
            method = A.make(self.method, m.model, self.prepared[m.name], self.settings, max_batch, m.backbone)
            try:
                with warnings.catch_warnings():
                    for note in A.HARMLESS_CAPTUM_NOTES:
                        warnings.filterwarnings("ignore", message=note)
                    a = method.attribute(x, target).detach().cpu().numpy().astype(np.float32)
            except A.EXPECTED_ERRORS as err:
                return None, f"{self.method} failed on {m.name}: {type(err).__name__}: {err}"[:300]
            scale = np.abs(a).reshape(len(a), -1).max(1)
            a = a / np.where(scale > 0, scale, 1.0)[:, None, None]
            total = a if total is None else total + a
        return total / len(self.run.members), OK

    def draw(self, images: np.ndarray, prob: np.ndarray, paths: list[str], rows: np.ndarray) -> list[str]:
        """One PNG per image; returns the file written per image, or why none was."""
        import torch

        from cxrbench.data.cache import to_float
        from cxrbench.core.plotting import plt, save

        labels = self.run.labels
        target = (prob.argmax(1) if self.target == TOP
                  else np.full(len(images), labels.index(self.target)))
        x = to_float(torch.from_numpy(np.ascontiguousarray(images)), self.run.device)
        maps, note = self.maps(x, torch.from_numpy(target).to(self.run.device))
        if maps is None:
            return [note] * len(images)
        out = []
        for img, m, t, p, path, row in zip(images, maps, target, prob, paths, rows):
            fig, ax = plt.subplots(figsize=(4.2, 4.6))
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=255)
            ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1, alpha=np.clip(np.abs(m), 0, 1) * self.alpha)
            ax.set_title(f"{Path(path).name[-40:]}\n{self.method}: {labels[t]} (p = {p[t]:.3f}), "
                         f"{len(self.run.members)} model(s)", fontsize=7)
            ax.axis("off")
            name = self.out_dir / f"{int(row):05d}_{Path(path).stem}.{self.method}.png"
            save(fig, name)
            out.append(str(name))
        return out


# --- command line ---------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cxrbench predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders (searched recursively)")
    ap.add_argument("--run", default=".", help="folder of the trained run (default: the workspace)")
    ap.add_argument("--models", default=ENSEMBLE,
                    help="BACKBONE:FOLD | BACKBONE (its folds) | ensemble | ensemble:FOLD, comma-joined "
                         "(default: ensemble, every backbone x fold)")
    ap.add_argument("--out", default="predictions.csv", help="the CSV to write (default predictions.csv)")
    ap.add_argument("--overlays", default=None, metavar="DIR",
                    help="also write attribution overlays (predict.overlay_method) as PNGs into DIR")
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    ap.add_argument("--params", default=None, help="the run's params file (default: RUN/params.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params key, e.g. --set predict.overlay_method=saliency (repeatable)")
    args = ap.parse_args(argv)
    try:
        overrides = P.parse_overrides(args.set)
    except ValueError as err:
        ap.error(str(err))
    try:
        rt = runtime.configure()
        if args.device and args.device.startswith("cuda"):
            import torch
            if not torch.cuda.is_available():
                raise PredictError(f"--device {args.device}: CUDA is not available on this machine; use --device cpu")
        params_file = Path(args.params) if args.params else Path(args.run) / P.PARAMS_FILE
        params = P.load(params_file, overrides)
        if args.overlays is not None:
            validate(params)                         # before any model is loaded
        run = load_run(args.run, args.models, params, args.device, params_file)
        paths = find_images(args.images)
        if not paths:
            raise PredictError(f"no images (*.png, *.jpg, *.jpeg, *.dcm) found in {args.images}")
        print(f"predict: {len(paths)} image(s), {len(run.members)} model(s) "
              f"[{', '.join(m.name for m in run.members)}] on {run.device}, "
              f"{run.recipe.size} px {list(run.recipe.channels)}; pred_*: {run.rule}", flush=True)
        frame = predict_files(run, paths, args.overlays, runtime.workers())
    except (PredictError, ParamError, FileNotFoundError) as err:
        print(f"predict: error: {err}", file=sys.stderr)
        return 2
    write_csv(args.out, frame)
    bad = frame.loc[frame["status"] != OK]
    print(f"predict: wrote {args.out}: {len(frame) - len(bad)} image(s) predicted, {len(bad)} unreadable "
          f"(torch {rt['torch']}, {rt['torch_threads']} thread(s))")
    for _, row in bad.head(20).iterrows():
        print(f"  bad: {row['path']}: {row['status']}")
    if len(bad) > 20:
        print(f"  ... and {len(bad) - 20} more (status column of {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
