"""Train one classifier (backbone x fold) on the uint8 cache, resumably.

Seed 000, section 3.5: BCE with logits, Adam (lr 1e-3, weight decay 1e-4), a
manual seed, mixed precision. Model selection by the fold's own validation
loss; the test set is never read here.

Every epoch ends with an atomic checkpoint ``last.pt`` (model, optimiser,
scaler, epoch, best, RNG states, history); a new best validation loss also
writes ``best.pt``, and the last epoch ``final.pt``
(:func:`cxrbench.classify.models.save_classifier`; ``evaluate.checkpoint`` picks one). A rerun with the
same configuration resumes from ``last.pt`` and reproduces the uninterrupted
run on CPU (the batch order and augmentation draw from (seed, epoch)), also
under ``dvc exp run`` (:mod:`cxrbench.core.resume`). A
non-finite loss stops training with the epoch and batch, and keeps the last
good checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.lungs import controls as audit_inputs
from cxrbench.core import checkpoints, resume, timing
from cxrbench.classify import cxrnet as CX
from cxrbench.classify import gpu
from cxrbench.classify import hierarchy
from cxrbench.classify import models as M
from cxrbench.classify import schedules
from cxrbench.classify import task as TK
from cxrbench.data.cache import BatchLoader, to_float
from cxrbench.data.labels import LabelTable
from cxrbench.core.params import ParamError, check_choice, check_int, section
from cxrbench.core.runtime import check_deadline, deterministic
from cxrbench.core.runtime import progress as progress_bar
from cxrbench.core.runtime import progress_mode
from cxrbench.core.runtime import device as runtime_device
from cxrbench.lungs import segmentation as seg
from cxrbench.lungs.segmentation import INPUT_MODES


class NonFiniteLossError(RuntimeError):
    pass


# The saved classifiers of a run (evaluate.checkpoint): the lowest loss on the selection part, and the
# last epoch's weights.
CHECKPOINT_FILES = {"best": "best.pt", "last": "final.pt"}
FINAL = CHECKPOINT_FILES["last"]


def checkpoint_file(params: dict) -> str:
    """The file name of the saved classifier that ``evaluate.checkpoint`` names (evaluated and explained)."""
    return CHECKPOINT_FILES[check_choice("evaluate.checkpoint", section(params, "evaluate.checkpoint"),
                                         CHECKPOINT_FILES)]


@dataclass
class TrainConfig:
    backbone: str
    fold: int
    labels: list
    in_chans: int
    cache_size: int
    input_size: int
    pretrained: str = "none"
    weights: str | None = None
    normalize: str = "imagenet"
    drop_last: bool = True
    input_mode: str = "full"
    mask_dilation: int = 0
    input_options: dict = field(default_factory=dict)   # an audit control's region and fill (audit_inputs)
    weights_id: str = ""           # what a packaged or local weights file is (package, version, SHA-256)
    epochs: int = 50
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    pos_weight: bool = False
    label_smoothing: float = 0.0
    aux_weight: float = 0.0
    augment: dict = field(default_factory=lambda: {"enabled": False})
    seed: int = 42
    amp: bool = True
    # later knobs: left out of the digest and of the checkpoint's record at their defaults, so that a run
    # that does not use them has the identity (and writes the bytes) it had before they existed
    task: str = "multilabel"       # multilabel | multiclass (cxrbench.classify.task)
    classes: dict = field(default_factory=dict)      # multiclass: class -> labels, the first listed wins
    optimizer: str = "adam"        # adam | sgd (cxrbench.classify.schedules)
    momentum: float = 0.9          # sgd only
    schedule: dict = field(default_factory=lambda: dict(schedules.DEFAULT_SCHEDULE))
    snapshots: bool = False        # a snapshot of the weights at the end of every schedule cycle
    head: dict = field(default_factory=lambda: dict(M.DEFAULT_HEAD))
    patience: int | None = None    # early stopping: epochs without a lower validation loss; None: all epochs
    hierarchy: list = field(default_factory=list)    # two-stage classifier's group (classify.hierarchy); []: one

    def record(self) -> dict:
        """The configuration as ``last.pt`` records it: every field, less the later knobs at their defaults."""
        d = asdict(self)
        for key, default in LATER_DEFAULTS.items():
            if d[key] == default:
                del d[key]
        if d.get("optimizer", "adam") == "adam":
            d.pop("momentum", None)                       # read by sgd only
        return d

    def digest(self) -> str:
        """Identity of a run: a checkpoint of another configuration is never resumed."""
        d = self.record()
        for key in ("input_options", "weights_id"):     # absent before these existed: keeps older checkpoints resumable
            if not d[key]:
                del d[key]
        return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


LATER_DEFAULTS = {"task": "multilabel", "classes": {}, "optimizer": "adam", "momentum": 0.9,
                  "schedule": dict(schedules.DEFAULT_SCHEDULE), "snapshots": False, "head": dict(M.DEFAULT_HEAD),
                  "patience": None, "hierarchy": []}


def validate(params: dict, cache_meta: dict | None = None) -> dict:
    """Check ``params: train`` before any work; return it."""
    p = section(params, "train")
    known = p.get("known_backbones")
    if not isinstance(known, list) or not known:
        raise ParamError("train.known_backbones", "expected a non-empty list of timm model names")
    for name in known:
        M.check_backbone(name, known, "train.known_backbones")
    bbs = p.get("backbones")
    if not isinstance(bbs, list) or not bbs:
        raise ParamError("train.backbones", f"expected a non-empty list drawn from {known}, got {bbs!r}")
    for name in bbs:
        M.check_backbone(name, known)
    n_folds = check_int("split.folds", section(params, "split.folds"), minimum=2)
    folds = p.get("folds")
    if not isinstance(folds, list) or not folds:
        raise ParamError("train.folds", f"expected a non-empty list of fold indices, got {folds!r}")
    for k in folds:
        check_int("train.folds", k, minimum=0, maximum=n_folds - 1)
    if len(set(folds)) != len(folds):
        raise ParamError("train.folds", f"lists a fold twice: {folds}; each fold is trained once")
    if p.get("patience") is not None:
        check_int("train.patience", p["patience"], minimum=1)
    sizes = p.get("input_size")
    if not isinstance(sizes, dict) or "default" not in sizes:
        raise ParamError("train.input_size", "expected a mapping with a `default` entry and optional per-backbone ones")
    for name in sizes:
        if name != "default" and name not in known:
            raise ParamError("train.input_size", f"unknown backbone {name!r}; valid names are {known}")
        M.input_size(name if name != "default" else "resnet18", sizes[name], 512)
    pre = p.get("pretrained")
    if isinstance(pre, dict):
        if "default" not in pre:
            raise ParamError("train.pretrained", "a per-backbone mapping needs a `default` entry, e.g. "
                                                 "{default: none, efficientnet_lite0: packaged}")
        for name, value in pre.items():
            if name != "default" and name not in known:
                raise ParamError("train.pretrained", f"unknown backbone {name!r}; valid names are {known}")
            _check_pretrained(f"train.pretrained.{name}", value)
    else:
        _check_pretrained("train.pretrained", pre)
    for name in bbs:
        if pretrained_of(p, name) == M.PACKAGED:
            _check_packaged(name)
    weights = p.get("weights")
    if not isinstance(weights, dict):
        raise ParamError("train.weights", f"expected a mapping backbone -> timm weight tag, got {weights!r}")
    for name, tag in weights.items():
        if name not in known:
            raise ParamError("train.weights", f"unknown backbone {name!r}; valid names are {known}")
        M.check_weight_tag(name, tag)
    check_choice("train.normalize", p.get("normalize"), M.NORMALIZE)
    if not isinstance(p.get("drop_last"), bool):
        raise ParamError("train.drop_last", f"expected true or false, got {p.get('drop_last')!r}")
    check_choice("train.input_mode", p.get("input_mode"), INPUT_MODES)
    check_int("train.mask_dilation", p.get("mask_dilation"), minimum=0)
    check_int("train.epochs", p.get("epochs"), minimum=1)
    check_int("train.batch_size", p.get("batch_size"), minimum=1)
    check_int("train.seed", p.get("seed"), minimum=0)
    for key in ("lr", "weight_decay", "label_smoothing", "aux_weight"):
        v = p.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ParamError(f"train.{key}", f"expected a finite number >= 0, got {v!r}")
    if not p["lr"] > 0:
        raise ParamError("train.lr", f"expected a learning rate > 0 (seed 000: 0.001), got {p['lr']!r}")
    if p["label_smoothing"] >= 1:
        raise ParamError("train.label_smoothing", f"expected a value in [0, 1), got {p['label_smoothing']}")
    for key in ("pos_weight", "amp"):
        if not isinstance(p.get(key), bool):
            raise ParamError(f"train.{key}", f"expected true or false, got {p.get(key)!r}")
    aug = p.get("augment")
    if not isinstance(aug, dict) or not isinstance(aug.get("enabled"), bool):
        raise ParamError("train.augment", "expected a mapping with enabled: true|false, degrees, translate, scale")
    if aug["enabled"]:
        for key in ("degrees", "translate", "scale"):
            v = aug.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ParamError(f"train.augment.{key}", f"expected a finite number >= 0, got {v!r}")
        if aug["scale"] >= 1:
            raise ParamError("train.augment.scale", f"expected a value in [0, 1) (zoom 1 +- scale), got {aug['scale']}")
        br = aug.get("brightness", 0.0)
        if isinstance(br, bool) or not isinstance(br, (int, float)) or not 0 <= br < 1:
            raise ParamError("train.augment.brightness", f"expected a value in [0, 1) (x (1 +- b)), got {br!r}")
    if TK.validate(params)["task"] == "multiclass" and p["pos_weight"]:
        raise ParamError("train.pos_weight", "is a per-label BCE weight; train.task: multiclass uses cross-entropy: "
                                             "set it to false")
    schedules.validate(p)
    M.check_head(p.get("head", M.DEFAULT_HEAD))
    hierarchy.validate(params, TK.validate(params)["classes"])
    return p


PRETRAINED_CHOICES = ("imagenet", "none", M.PACKAGED)
WEIGHT_FILES = (".safetensors", ".pt", ".pth")


def _check_pretrained(key: str, value) -> None:
    if value in PRETRAINED_CHOICES:
        return
    if not (isinstance(value, str) and Path(value).suffix in WEIGHT_FILES):
        raise ParamError(key, f"expected one of {list(PRETRAINED_CHOICES)} or a {'/'.join(WEIGHT_FILES)} path, "
                              f"got {value!r}")
    if not Path(value).is_file():
        raise ParamError(key, f"weights file {value} not found")


def _check_packaged(backbone: str) -> None:
    from cxrbench.classify.weights import PACKAGED, packaged_checkpoint

    backbone = CX.encoder_of(backbone)
    if backbone not in PACKAGED:
        raise ParamError("train.pretrained", f"{backbone}: no ImageNet weights are packaged for it (packaged: "
                                             f"{sorted(PACKAGED)}); use imagenet (needs internet), none or a file")
    try:
        packaged_checkpoint(backbone)
    except RuntimeError as err:
        raise ParamError("train.pretrained", str(err)) from err


def pretrained_of(p: dict, backbone: str) -> str:
    """``train.pretrained`` for one backbone: the value itself, or its mapping's entry (else ``default``)."""
    pre = p["pretrained"]
    return pre.get(backbone, pre["default"]) if isinstance(pre, dict) else pre


def weights_identity(backbone: str, pretrained: str) -> str:
    """What a run's starting weights are beyond their name: the packaged checkpoint's package, version and
    SHA-256, or a local file's SHA-256; '' for imagenet (its timm tag is the identity) and none."""
    if pretrained == M.PACKAGED:
        from cxrbench.classify.weights import packaged_identity

        return packaged_identity(CX.encoder_of(backbone))
    if pretrained in PRETRAINED_CHOICES:
        return ""
    return "sha256:" + hashlib.sha256(Path(pretrained).read_bytes()).hexdigest()[:16]


def config_for(params: dict, backbone: str, fold: int, cache_meta: dict) -> TrainConfig:
    p = validate(params)
    M.check_backbone(backbone, p["known_backbones"], "BACKBONE argument")
    if fold not in p["folds"]:
        raise ParamError("train.folds", f"fold {fold} is not in train.folds {p['folds']}")
    policy = p["input_size"].get(backbone, p["input_size"]["default"])
    # inception_v3: its auxiliary head's weight; CXR-Net: the second encoder's loss, added with weight 1 (eq. 5)
    aux = 1.0 if CX.is_cxrnet(backbone) else float(p["aux_weight"]) if backbone == "inception_v3" else 0.0
    pretrained = pretrained_of(p, backbone)
    t, sch = TK.validate(params), schedules.validate(p)
    return TrainConfig(
        backbone=backbone, fold=fold, labels=TK.output_names(params, LabelTable.from_params(params).names),
        task=t["task"], classes=t["classes"], optimizer=sch["optimizer"], momentum=sch["momentum"],
        schedule=sch["schedule"], snapshots=sch["snapshots"], head=M.check_head(p.get("head", M.DEFAULT_HEAD)),
        in_chans=len(cache_meta["channels"]), cache_size=int(cache_meta["size"]),
        input_size=M.input_size(backbone, policy, cache_meta["size"]), pretrained=pretrained,
        weights=p["weights"].get(backbone) if pretrained == "imagenet" else None,
        weights_id=weights_identity(backbone, pretrained),
        normalize=p["normalize"], drop_last=p["drop_last"],
        input_mode=p["input_mode"], mask_dilation=p["mask_dilation"], epochs=p["epochs"],
        batch_size=p["batch_size"], lr=float(p["lr"]), weight_decay=float(p["weight_decay"]),
        pos_weight=p["pos_weight"], label_smoothing=float(p["label_smoothing"]), aux_weight=aux,
        augment={k: v for k, v in p["augment"].items() if not (k == "brightness" and v == 0)},  # 0: as before it
        seed=p["seed"], amp=p["amp"], patience=p.get("patience"), hierarchy=hierarchy.validate(params, t["classes"]))


def apply_input_mode(images: np.ndarray, mode: str, dilation: int, masks_path: str | Path = seg.LUNG_MASKS,
                     options: dict | None = None):
    """The cache images as the classifier sees them (the segment stage's lung masks for modes other than full).

    ``mode``: an input mode (``train.input_mode``) or a shortcut-audit control
    (:data:`audit_inputs.CONTROLS`, with its ``options``: region, dilation, fill).
    """
    if mode == "full":
        return images
    with timing.step(f"input mode {mode}", n=len(images), unit="image"):
        masks = seg.load_lung_masks(len(images), masks_path)
        if mode in audit_inputs.CONTROLS:
            return audit_inputs.apply_control(np.asarray(images), masks, mode, dilation, **(options or {}))
        return seg.apply_input_mode(np.asarray(images), masks, mode, dilation)


# --- pieces -------------------------------------------------------------------

def pos_weight_of(targets: np.ndarray) -> torch.Tensor:
    """negatives / positives per label of the training part (1 where a label has no positives)."""
    pos = targets.sum(0)
    neg = len(targets) - pos
    return torch.tensor(np.where(pos > 0, neg / np.maximum(pos, 1), 1.0), dtype=torch.float32)


def augment_batch(x: torch.Tensor, aug: dict, generator: torch.Generator) -> torch.Tensor:
    """A small random affine per image (rotation, translation, scale), zero fill; with ``brightness`` b > 0,
    then each image times (1 + u), u uniform in [-b, b], clipped to [0, 1] (drawn after the affine's draws,
    so a run without it draws what it drew before)."""
    if not aug.get("enabled"):
        return x
    b = x.shape[0]
    u = lambda: torch.rand(b, generator=generator) * 2 - 1  # noqa: E731
    angle = u() * math.radians(aug["degrees"])
    scale = 1 + u() * aug["scale"]
    tx, ty = u() * aug["translate"] * 2, u() * aug["translate"] * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if aug.get("brightness"):
        factor = (1 + u() * aug["brightness"]).to(x.device, x.dtype).view(b, 1, 1, 1)
        x = (x * factor).clamp(0, 1)
    return x


def loss_of(out, y: torch.Tensor, criterion: nn.Module, smoothing: float, aux_weight: float,
            task: str = "multilabel") -> torch.Tensor:
    if smoothing:
        y = TK.smooth(y, smoothing, task)
    if isinstance(out, (tuple, list)):
        main, aux = out
        return criterion(main.float(), y) + aux_weight * criterion(aux.float(), y)
    return criterion(out.float(), y)


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, rows: np.ndarray, device, batch_size: int = 64,
            amp: bool = False, task: str = "multilabel") -> np.ndarray:
    """Probabilities (N, L) of the cache rows ``rows``, in that order: sigmoid per label, or softmax over the
    classes with ``task: multiclass`` (a saved classifier's ``meta.get('task', 'multilabel')``)."""
    model = gpu.prepare_model(model, device).eval()         # channels_last on CUDA; unchanged on the CPU
    dummy = np.zeros((len(rows), 1), np.float32)
    loader = (gpu.batches(images, dummy, rows, batch_size, device, prefetch=2) if gpu.on_cuda(device)
              else BatchLoader(images, dummy, rows, batch_size, prefetch=2))
    out = []
    for x, _, _ in loader:
        with gpu.autocast(device, amp):
            logits = model(to_float(x, device))
        out.append(TK.probabilities(logits.float(), task).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@torch.no_grad()
def mean_loss(model, images, targets, rows, device, batch_size, amp=False, loader=None,
              task: str = "multilabel") -> float:
    """Mean BCE per label and image (cross-entropy per image with ``task: multiclass``) of ``rows``;
    ``loader``: batches of those rows made once (CUDA)."""
    model.eval()
    crit = TK.criterion(task, reduction="sum")
    loader = loader if loader is not None else BatchLoader(images, targets, rows, batch_size, prefetch=2)
    total = 0.0
    for x, y, _ in loader:
        with gpu.autocast(device, amp):
            logits = model(to_float(x, device))
        total += float(crit(logits.float(), y.to(device)))
    return total / max(1, len(targets) if task == "multiclass" else targets.size)


def _later_meta(cfg: TrainConfig) -> dict:
    """What a saved classifier records of the later knobs, only where they are not at their defaults."""
    out = {}
    if cfg.task != "multilabel":
        out.update(task=cfg.task, classes=cfg.classes)
    if cfg.head != M.DEFAULT_HEAD:
        out["head"] = cfg.head
    if cfg.snapshots:
        out["schedule"] = cfg.schedule
    if cfg.hierarchy:
        out["hierarchy"] = cfg.hierarchy
    return out


def _rng_states() -> dict:
    # tensors only, so that last.pt loads with weights_only=True. No code here draws from NumPy's global
    # generator (every draw is a seeded torch.Generator or numpy default_rng), so its state is not saved: an
    # unseeded global state made two identical runs write different last.pt files
    s = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


# --- the loop -----------------------------------------------------------------

def stop_early(history: list[dict], best: dict, patience: int | None) -> bool:
    """Early stopping: ``patience`` epochs have passed since the lowest validation loss (``best``)."""
    return bool(patience) and bool(history) and history[-1]["epoch"] - best["epoch"] >= int(patience)


def train(cfg: TrainConfig, images: np.ndarray, targets: np.ndarray, train_rows: np.ndarray,
          val_rows: np.ndarray, out_dir: str | Path, live_dir: str | Path | None = None,
          device: str | torch.device | None = None, progress: bool = True,
          stop_after_epochs: int | None = None, on_batch: Callable | None = None,
          paths: dict[str, list[str]] | None = None, cache_id: str = "") -> dict:
    """Train with deterministic kernels on the CPU (see :func:`_train`); global state is restored after.

    ``paths`` ({"train": [...], "val": [...]}, the image paths of the rows) joins the data fingerprint;
    ``cache_id`` (the cache's meta.json digest, :func:`cxrbench.classify.identity.cache_digest`) joins the
    finished-record, so that predict can check the cache without its images.
    """
    device = runtime_device(device)
    data = checkpoints.rows_fingerprint(images, targets, {"train": train_rows, "val": val_rows}, paths or {})
    with deterministic(device):
        return _train(cfg, images, targets, train_rows, val_rows, out_dir, live_dir, device, progress,
                      stop_after_epochs, on_batch, data, cache_id)


def _train(cfg: TrainConfig, images: np.ndarray, targets: np.ndarray, train_rows: np.ndarray,
           val_rows: np.ndarray, out_dir: str | Path, live_dir: str | Path | None,
           device: torch.device, progress: bool, stop_after_epochs: int | None,
           on_batch: Callable | None, data_digest: str = "", cache_id: str = "") -> dict:
    """Train ``cfg`` on cache rows ``train_rows``, select on ``val_rows``; return a summary.

    ``images``: the whole uint8 cache (already in the input mode); ``targets``: (N, L) float32
    aligned with the cache. ``stop_after_epochs`` simulates an interruption (tests);
    ``on_batch(epoch, batch, loss)`` lets a test inject faults. ``data_digest``: the data
    fingerprint; ``last.pt`` is resumed only when its sidecar ``last.json`` holds this
    configuration's digest and this data fingerprint (checked before anything is unpickled).
    ``best.json`` and ``final.json`` (the finished-records the readers check) are deleted before an
    epoch runs and written only when the last epoch is done.
    """
    out_dir = Path(out_dir)
    use_amp = cfg.amp and device.type == "cuda"
    last_path, best_path, final_path = out_dir / "last.pt", out_dir / "best.pt", out_dir / FINAL
    digest = cfg.digest()
    identity = {"config": digest, "data": data_digest}

    torch.manual_seed(cfg.seed)
    model = M.create_model(cfg.backbone, len(cfg.labels), cfg.in_chans, cfg.pretrained, cfg.input_size,
                           aux=cfg.aux_weight > 0 and not CX.is_cxrnet(cfg.backbone), weights=cfg.weights,
                           normalize=cfg.normalize, head=cfg.head,
                           hierarchy={"classes": cfg.labels, "group": cfg.hierarchy} if cfg.hierarchy else None).to(device)
    model = gpu.prepare_model(model, device)               # channels_last on CUDA; unchanged on the CPU
    opt = schedules.make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.weight_decay, cfg.momentum)
    sched = schedules.make_scheduler(opt, cfg.schedule, cfg.epochs)     # None: a constant rate
    snap_epochs = schedules.snapshot_epochs(cfg.schedule, cfg.epochs) if cfg.snapshots else []
    snap_paths = [out_dir / schedules.snapshot_file(c) for c in range(len(snap_epochs))]
    scaler = gpu.grad_scaler(device, use_amp)              # fp16 only; bf16 and the CPU need no scaling
    tr_targets, va_targets = targets[train_rows], targets[val_rows]
    pw = pos_weight_of(tr_targets).to(device) if cfg.pos_weight else None
    criterion = TK.criterion(cfg.task, pw)

    start, best, history = 0, {"val_loss": math.inf, "epoch": -1}, []
    resumed = False
    kept = resume.slot(out_dir, identity)       # the checkpoints again, outside the DVC outputs (core.resume)
    if put_back := resume.restore(kept):
        print(f"train: {len(put_back)} file(s) of an interrupted run put back from {kept}", flush=True)
    ck, why = checkpoints.load(last_path, identity)
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        scaler.load_state_dict(ck["scaler"])
        if sched is not None:
            sched.load_state_dict(ck["scheduler"])
        start, best, history = ck["epoch"] + 1, ck["best"], ck["history"]
        torch.set_rng_state(ck["rng"]["torch"])
        resumed = True
        print(f"train: resuming {cfg.backbone} fold {cfg.fold} after epoch {ck['epoch']}")
    elif last_path.exists() or best_path.exists():
        print(f"train: {why}; starting afresh")
        for stale in (last_path, checkpoints.sidecar(last_path), best_path, final_path, *snap_paths):
            stale.unlink(missing_ok=True)
    stopped = stop_early(history, best, cfg.patience)     # a resumed run that had already stopped early
    if start < cfg.epochs and not stopped:                 # models about to change: unfinished until the end
        checkpoints.clear_finished((best_path, final_path, *snap_paths))

    live = None
    if live_dir is not None:
        from dvclive import Live
        live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, resume=resumed and start > 0)

    drop = cfg.drop_last and len(train_rows) > cfg.batch_size
    val_batch = max(cfg.batch_size, 32)
    if gpu.on_cuda(device):     # the rows on the GPU once when they fit (gpu.batches), else a pinned host loader
        loader = gpu.batches(images, tr_targets, train_rows, cfg.batch_size, device, shuffle=True, seed=cfg.seed,
                             drop_last=drop)
        val_loader = gpu.batches(images, va_targets, val_rows, val_batch, device, prefetch=2)
    else:
        loader = BatchLoader(images, tr_targets, train_rows, cfg.batch_size, shuffle=True, seed=cfg.seed,
                             drop_last=drop)
        val_loader = None
    t_start = time.perf_counter()
    seen = 0
    for epoch in range(start, cfg.epochs):
        if stop_after_epochs is not None and epoch >= stop_after_epochs:
            break
        if stop_early(history, best, cfg.patience):
            stopped = True
            break
        t_epoch = time.perf_counter()
        model.train()
        loader.epoch = epoch
        torch.manual_seed(cfg.seed * 100003 + epoch)       # dropout etc.: a function of (seed, epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        total, n = 0.0, 0
        bar = progress_bar(loader, desc=f"{cfg.backbone} f{cfg.fold} epoch {epoch + 1}/{cfg.epochs}", leave=False,
                           enabled=progress and progress_mode() == "bar", unit="batch")  # logs: the epoch line below
        for b, (x, y, _) in enumerate(bar):
            x = augment_batch(to_float(x, device), cfg.augment, gen)
            y = y.to(device, non_blocking=True)
            with gpu.autocast(device, use_amp):
                out = model(x)
            loss = loss_of(out, y, criterion, cfg.label_smoothing, cfg.aux_weight, cfg.task)
            if on_batch is not None:
                loss = on_batch(epoch, b, loss)
            if not torch.isfinite(loss):
                kept = (f"{last_path} (after epoch {history[-1]['epoch'] + 1})"
                        if history and last_path.is_file() else "none yet (failed in the first epoch)")
                raise NonFiniteLossError(
                    f"{cfg.backbone} fold {cfg.fold}: loss is {float(loss.detach())} at epoch {epoch + 1} batch {b + 1}; "
                    f"training stopped, last good checkpoint kept: {kept}. Lower train.lr or check the inputs.")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total += float(loss.detach()) * len(x)
            n += len(x)
            bar.set_postfix(loss=f"{total / n:.4f}")
        seen += n
        with timing.step("validation", unit="epoch"):
            val_loss = mean_loss(model, images, va_targets, val_rows, device, val_batch, use_amp, loader=val_loader,
                                 task=cfg.task)
        rec = {"epoch": epoch, "train_loss": total / max(n, 1), "val_loss": val_loss}
        if sched is not None:
            rec["lr"] = opt.param_groups[0]["lr"]          # the rate this epoch trained at
            sched.step()
        history.append(rec)
        meta = M.classifier_meta(
            cfg.backbone, cfg.labels, cfg.in_chans, cfg.input_size, cfg.cache_size, cfg.input_mode,
            cfg.mask_dilation, input_options=cfg.input_options, fold=cfg.fold, epoch=epoch, val_loss=val_loss,
            pretrained=cfg.pretrained, weights=cfg.weights, weights_id=cfg.weights_id, normalize=cfg.normalize,
            digest=digest, data_digest=data_digest, **_later_meta(cfg))
        if val_loss < best["val_loss"]:
            best = {"val_loss": val_loss, "epoch": epoch}
            M.save_classifier(best_path, model, meta)
        if epoch == cfg.epochs - 1 or stop_early(history, best, cfg.patience):   # before last.pt: a complete
            # last.pt implies final.pt
            M.save_classifier(final_path, model, meta)
        if epoch in snap_epochs:                           # a cycle's end: its snapshot, before last.pt
            M.save_classifier(snap_paths[snap_epochs.index(epoch)], model, {**meta, "snapshot": snap_epochs.index(epoch)})
        state = dict(model=model.state_dict(), optimizer=opt.state_dict(), scaler=scaler.state_dict(), epoch=epoch,
                     best=best, history=history, digest=digest, config=cfg.record(), rng=_rng_states())
        if sched is not None:
            state["scheduler"] = sched.state_dict()
        checkpoints.save(last_path, state, identity)
        if live is not None:
            live.step = epoch
            live.log_metric("train_loss", rec["train_loss"])
            live.log_metric("val_loss", val_loss)
            live.log_metric("best_val_loss", best["val_loss"])
            live.next_step()
        resume.keep(kept, resume.files_under(out_dir, live_dir))
        timing.add("epoch (train, validation, checkpoint)", time.perf_counter() - t_epoch, unit="epoch")
        print(f"train: {cfg.backbone} f{cfg.fold} epoch {epoch + 1}/{cfg.epochs} train_loss {rec['train_loss']:.4f} "
              f"val_loss {val_loss:.4f}{' *' if best['epoch'] == epoch else ''}", flush=True)
        if stop_early(history, best, cfg.patience):
            print(f"train: {cfg.backbone} f{cfg.fold}: early stop after epoch {epoch + 1}, {cfg.patience} epoch(s) "
                  f"without a lower val_loss (best: epoch {best['epoch'] + 1})", flush=True)
        elif epoch + 1 < cfg.epochs:                       # a time-boxed step stops here, checkpoint complete
            check_deadline(time.perf_counter() - t_epoch, f"train {cfg.backbone} f{cfg.fold} after epoch {epoch + 1}")
    seconds = time.perf_counter() - t_start
    if live is not None:
        live.end()
    stopped = stop_early(history, best, cfg.patience)
    done = bool(history) and (history[-1]["epoch"] == cfg.epochs - 1 or stopped)
    if done:
        checkpoints.mark_finished((best_path, final_path, *snap_paths), {**identity, **({"cache": cache_id} if cache_id else {}),
                                                            "epochs": cfg.epochs})
        resume.forget(kept)
    return {"backbone": cfg.backbone, "fold": cfg.fold, "epochs_done": len(history), "complete": done,
            "stopped_early": stopped, "patience": cfg.patience,
            "best_epoch": best["epoch"], "best_val_loss": best["val_loss"],
            "final_train_loss": history[-1]["train_loss"] if history else None,
            "train_images": int(len(train_rows)), "val_images": int(len(val_rows)),
            "input_size": cfg.input_size, "seconds_this_run": seconds,
            "train_images_per_s": seen / seconds if seconds > 0 and seen else None,
            "device": str(device), "resumed": resumed, "digest": digest, "data_digest": data_digest}
