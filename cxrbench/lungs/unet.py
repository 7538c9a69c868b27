"""The lung U-Net: MONAI's 2-D ``UNet`` trained on the V7 Labs lung masks.

Split (leak-free, consistent with the classifier): the U-Net trains only on
images of the ``dev`` split that have a V7 mask, minus the dev fold
``val_fold``, which selects the model (lowest validation loss). Images of the
``test`` split are never trained on or used for selection; their masks give
the reported IoU / Dice.

Loss: ``ce_logdice`` is CXR-Net's binary cross-entropy minus the log of the
soft Dice (:class:`CELogDiceLoss`); ``dice_ce`` is MONAI's ``DiceCELoss``
(sigmoid, BCE + 1 - Dice).

Training is deterministic on the CPU: the batch order comes from
``seed`` + epoch (:class:`cxrbench.data.cache.BatchLoader`), the augmentation draws
from a generator seeded with ``seed`` + epoch, so a run resumed from its
checkpoint repeats an uninterrupted one. The checkpoint ``model.pt`` is written
atomically after every epoch and holds the config, the best weights
(``state_dict``) and the last epoch's weights, optimizer and history; it is
also kept in a slot of :mod:`cxrbench.core.resume` until the last epoch is
done (``dvc exp run`` deletes an unfinished stage's outputs before it reruns it).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from cxrbench.core import checkpoints, resume, timing
from cxrbench.core.params import ParamError, check_choice, check_float, check_fraction, check_int, section
from cxrbench.core.runtime import check_deadline, deterministic
from cxrbench.core.runtime import device as runtime_device
from cxrbench.core.runtime import progress as progress_bar
from cxrbench.data.cache import BatchLoader, to_float
from cxrbench.lungs import segmentation as seg

LOSSES = ("ce_logdice", "dice_ce")


# --- configuration ----------------------------------------------------------

def stage_params(description: str, argv: list[str] | None = None) -> dict:
    """The params of a U-Net stage script (train_unet, segment), with ``--params`` / ``--set`` as every
    stage takes them (:func:`cxrbench.core.params.stage_params`); sets torch's threads
    (:func:`cxrbench.core.runtime.configure`, $CXRBENCH_THREADS)."""
    from cxrbench.core.params import stage_params as load_stage_params
    from cxrbench.core.runtime import configure

    params = load_stage_params(description, argv)
    configure()
    return params


@dataclass(frozen=True)
class Augment:
    rotation_degrees: float = 10.0
    intensity_jitter: float = 0.1
    hflip: bool = False


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 1
    size: int = 256
    val_fold: int = 0
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 2
    dropout: float = 0.0
    loss: str = "ce_logdice"
    lr: float = 1e-3
    epochs: int = 50
    batch_size: int = 8
    seed: int = 42
    threshold: float = 0.5
    augment: Augment = field(default_factory=Augment)

    @classmethod
    def from_params(cls, params: dict, in_channels: int) -> "UNetConfig":
        p = section(params, "unet")
        size = check_int("unet.size", p.get("size"), minimum=16, maximum=4096)
        ch, st = p.get("channels"), p.get("strides")
        if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, int) and c > 0 for c in ch):
            raise ParamError("unet.channels", f"expected a list of >= 2 positive integers, got {ch!r}")
        if not isinstance(st, list) or len(st) != len(ch) - 1 or not all(isinstance(s, int) and s >= 1 for s in st):
            raise ParamError("unet.strides", f"expected {len(ch) - 1} positive integers (one fewer than "
                                             f"unet.channels), got {st!r}")
        if size % math.prod(st):
            raise ParamError("unet.size", f"{size} must be divisible by the product of unet.strides "
                                          f"({math.prod(st)})")
        lr = check_float("unet.lr", p.get("lr"), minimum=0, open_low=True,
                         what="a learning rate (write 0.001, not 1e-3)")
        dropout = check_float("unet.dropout", p.get("dropout"), minimum=0, maximum=1, open_high=True)
        threshold = check_fraction("unet.threshold", p.get("threshold"))
        a = section(params, "unet.augment")
        rot = check_float("unet.augment.rotation_degrees", a.get("rotation_degrees"), minimum=0, maximum=45,
                          what="degrees")
        jit = check_float("unet.augment.intensity_jitter", a.get("intensity_jitter"), minimum=0, maximum=1,
                          open_high=True)
        if not isinstance(a.get("hflip"), bool):
            raise ParamError("unet.augment.hflip", f"expected true or false, got {a.get('hflip')!r}")
        return cls(
            in_channels=in_channels, size=size,
            val_fold=check_int("unet.val_fold", p.get("val_fold"), minimum=0),
            channels=tuple(ch), strides=tuple(st),
            num_res_units=check_int("unet.num_res_units", p.get("num_res_units"), minimum=0),
            dropout=dropout, loss=check_choice("unet.loss", p.get("loss"), LOSSES),
            lr=lr, epochs=check_int("unet.epochs", p.get("epochs"), minimum=1),
            batch_size=check_int("unet.batch_size", p.get("batch_size"), minimum=1),
            seed=check_int("unet.seed", p.get("seed"), minimum=0), threshold=threshold,
            augment=Augment(rot, jit, a["hflip"]))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"], d["strides"] = list(self.channels), list(self.strides)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        d = dict(d)
        d["augment"] = Augment(**d["augment"])
        d["channels"], d["strides"] = tuple(d["channels"]), tuple(d["strides"])
        return cls(**d)


def build_model(cfg: UNetConfig) -> nn.Module:
    """MONAI 2-D U-Net, ``in_channels`` -> one logit channel (lung)."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=cfg.in_channels, out_channels=1, channels=cfg.channels,
                strides=cfg.strides, num_res_units=cfg.num_res_units, dropout=cfg.dropout)


# --- loss -------------------------------------------------------------------

class CELogDiceLoss(nn.Module):
    """CXR-Net's segmentation loss: ``BCE(logits, target) - log(soft Dice)``.

    ``soft Dice = (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth)`` with
    ``p = sigmoid(logits)``, summed over the whole batch (as the Keras original,
    which sums over every element of the batch tensor). The loss is >= 0 and
    tends to 0 for a confident, perfect prediction; ``-log`` punishes poor
    overlap much harder than ``1 - Dice`` does.

    logits, target: (B, 1, H, W); target in {0, 1} (float).
    """

    def __init__(self, smooth: float = 1.0):
        super().__init__()
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, target)
        p = torch.sigmoid(logits)
        soft_dice = (2 * (p * target).sum() + self.smooth) / (p.sum() + target.sum() + self.smooth)
        return bce - torch.log(soft_dice)


def make_loss(name: str) -> nn.Module:
    check_choice("unet.loss", name, LOSSES)
    if name == "ce_logdice":
        return CELogDiceLoss()
    from monai.losses import DiceCELoss

    return DiceCELoss(sigmoid=True)


# --- data -------------------------------------------------------------------

def unet_split(index: pd.DataFrame, splits: pd.DataFrame, val_fold: int) -> dict[str, np.ndarray]:
    """Row numbers of ``index`` (with a V7 mask) for the U-Net's train / val / test parts.

    train: dev split, fold != ``val_fold``; val: dev split, fold == ``val_fold``;
    test: the held-out test split. Raises if a patient or group of the test
    split would reach train or val (a bug upstream, never expected).
    """
    need = {"path", "patient", "mask"}
    if need - set(index.columns):
        raise ValueError(f"index lacks columns {sorted(need - set(index.columns))}")
    frame = index[["path", "patient", "mask"]].reset_index(drop=True).copy()
    frame["row"] = np.arange(len(frame))
    merged = frame.merge(splits[["path", "group", "split", "fold"]], on="path", how="left", validate="one_to_one")
    if merged["split"].isna().any():
        missing = merged.loc[merged["split"].isna(), "path"].iloc[0]
        raise ValueError(f"{int(merged['split'].isna().sum())} image(s) of the index are not in the splits, "
                         f"e.g. {missing}: rerun the split stage")
    dev_folds = sorted(int(f) for f in merged.loc[merged["split"] == "dev", "fold"].unique())
    if val_fold not in dev_folds:
        raise ParamError("unet.val_fold", f"fold {val_fold} does not exist; the dev folds are {dev_folds}")
    has = merged["mask"].fillna("").astype(str) != ""
    dev = merged["split"] == "dev"
    parts = {"train": merged[has & dev & (merged["fold"] != val_fold)],
             "val": merged[has & dev & (merged["fold"] == val_fold)],
             "test": merged[has & (merged["split"] == "test")]}
    test_all = merged[merged["split"] == "test"]
    for name in ("train", "val"):
        for key in ("patient", "group"):
            leaked = set(parts[name][key]) & set(test_all[key])
            if leaked:
                raise RuntimeError(f"U-Net {name} part holds {len(leaked)} test-split {key}(s), "
                                   f"e.g. {sorted(leaked)[0]}")
    return {k: v["row"].to_numpy(dtype=np.int64) for k, v in parts.items()}


def resize_images(images: np.ndarray, size: int, batch: int = 256) -> np.ndarray:
    """(N, C, S, S) uint8 -> (N, C, size, size) uint8, bilinear (antialiased when shrinking)."""
    if images.shape[-1] == size:
        return np.ascontiguousarray(images)
    out = np.empty(images.shape[:2] + (size, size), dtype=np.uint8)
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch])).float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=size < images.shape[-1])
        out[i:i + batch] = y.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """(N, S, S) {0,1} -> (N, size, size) {0,1}: bilinear then >= 0.5."""
    if masks.shape[-1] == size:
        return np.ascontiguousarray(masks.astype(np.uint8))
    r = resize_images((np.asarray(masks)[:, None] > 0).astype(np.uint8) * 255, size)[:, 0]
    return (r >= 128).astype(np.uint8)


def augment(x: torch.Tensor, m: torch.Tensor, aug: Augment, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rotation (images bilinear, masks re-thresholded), intensity jitter, optional h-flip.

    x: (B, C, H, W) float in [0, 1]; m: (B, 1, H, W) float in {0, 1}. Draws come from ``gen`` (CPU).
    """
    b = x.shape[0]
    if aug.rotation_degrees > 0:
        ang = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(aug.rotation_degrees)
        cos, sin = torch.cos(ang), torch.sin(ang)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        theta = theta.to(x.device)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        m = (F.grid_sample(m, grid, mode="bilinear", padding_mode="zeros", align_corners=False) >= 0.5).to(m.dtype)
    if aug.intensity_jitter > 0:
        j = aug.intensity_jitter
        gain = 1 + (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * j
        bias = (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * j
        x = (x * gain.to(x.device) + bias.to(x.device)).clamp_(0, 1)
    if aug.hflip:
        flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        m = torch.where(flip[:, None, None, None], m.flip(-1), m)
    return x, m


# --- training ---------------------------------------------------------------

def device() -> torch.device:
    return runtime_device()


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def load_checkpoint(path: str | Path) -> dict | None:
    """A finished ``model.pt`` as plain weights (nothing in it can run code); None when absent."""
    path = Path(path)
    if not path.is_file():
        return None
    return checkpoints.load_weights(path, "U-Net checkpoint")


def load_model(path: str | Path, dev: torch.device | None = None) -> tuple[nn.Module, UNetConfig]:
    """The best U-Net of a ``model.pt`` and its config, in eval mode."""
    ckpt = load_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"{path} not found: run the train_unet stage first")
    cfg = UNetConfig.from_dict(ckpt["config"])
    model = build_model(cfg)
    model.load_state_dict(ckpt["state_dict"])
    return model.to(dev or device()).eval(), cfg


def _batches(x: np.ndarray, m: np.ndarray, bs: int, shuffle: bool, seed: int, epoch: int):
    loader = BatchLoader(x, m, np.arange(len(x)), bs, shuffle=shuffle, seed=seed, prefetch=2)
    loader.epoch = epoch
    return loader


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: nn.Module, x: np.ndarray, m: np.ndarray, cfg: UNetConfig,
             dev: torch.device) -> tuple[float, float]:
    """Mean loss and mean IoU (threshold ``cfg.threshold``, at the training size) of (x, m)."""
    model.eval()
    total, n, ious = 0.0, 0, []
    for xb, mb, _ in _batches(x, m, cfg.batch_size, False, cfg.seed, 0):
        xf = to_float(xb, dev)
        mf = mb.to(dev).float()[:, None]
        logits = model(xf)
        total += float(loss_fn(logits, mf)) * len(xb)
        n += len(xb)
        pred = (torch.sigmoid(logits) >= cfg.threshold)[:, 0].cpu().numpy()
        ious.append(seg.iou(pred, mb.numpy()))
    return total / max(n, 1), float(np.concatenate(ious).mean()) if ious else float("nan")


def _no_clock(h: dict) -> dict:
    """An epoch's record as the checkpoint keeps it: without its wall-clock throughput, so that two identical
    runs write identical model files (metrics/unet.json reports the throughput)."""
    return {k: v for k, v in h.items() if k != "train_images_per_s"}


def train(cfg: UNetConfig, images: np.ndarray, masks: np.ndarray, parts: dict[str, np.ndarray],
          ckpt_path: str | Path, live=None, progress: bool = True, dev: torch.device | None = None,
          max_steps: int | None = None, fingerprint: str = "") -> dict:
    """Train with deterministic CPU kernels (see :func:`_train`); global torch state is restored after."""
    dev = dev or device()
    data = checkpoints.data_fingerprint(
        {f"{k}_{what}": (arr, parts[k]) for k in ("train", "val") for what, arr in (("images", images), ("masks", masks))},
        {"extra": fingerprint})
    with deterministic(dev, seed=cfg.seed):
        return _train(cfg, images, masks, parts, ckpt_path, live, progress, dev, max_steps, data)


def _train(cfg: UNetConfig, images: np.ndarray, masks: np.ndarray, parts: dict[str, np.ndarray],
           ckpt_path: str | Path, live, progress: bool, dev: torch.device, max_steps: int | None,
           fingerprint: str) -> dict:
    """Train (or resume) the U-Net on ``parts['train']`` rows, select on ``parts['val']``.

    ``images`` (N, C, S, S) uint8 and ``masks`` (N, S, S) are the cache arrays;
    they are resized to ``cfg.size``. ``live``: a dvclive ``Live`` (or None).
    ``max_steps`` stops after that many optimizer steps (tests). A checkpoint
    is resumed only when its config (but ``epochs``) and ``fingerprint`` (the
    pixels and masks of the train and val rows, see :func:`train`) match, which
    its sidecar ``model.json`` tells before anything is unpickled; otherwise
    training starts afresh.
    Returns the
    history and the best epoch; the checkpoint at ``ckpt_path`` holds the rest.
    """
    ckpt_path = Path(ckpt_path)
    if len(parts["train"]) == 0:
        raise ValueError("no training images with a lung mask in the dev split")
    if len(parts["val"]) == 0:
        raise ParamError("unet.val_fold", f"dev fold {cfg.val_fold} holds no image with a lung mask")
    xt, mt = resize_images(images[parts["train"]], cfg.size), resize_masks(masks[parts["train"]], cfg.size)
    xv, mv = resize_images(images[parts["val"]], cfg.size), resize_masks(masks[parts["val"]], cfg.size)
    mt, mv = mt.astype(np.float32), mv.astype(np.float32)

    model = build_model(cfg).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = make_loss(cfg.loss)
    history: list[dict] = []
    best = {"epoch": -1, "val_loss": float("inf"), "val_iou": float("nan")}
    best_state = None
    start = 0

    identity = {"config": dict(cfg.to_dict(), epochs=None), "data": fingerprint}
    kept = resume.slot(ckpt_path, identity)     # the checkpoint again, outside the DVC outputs (core.resume)
    if resume.restore(kept):
        print(f"train_unet: the checkpoint of an interrupted run put back from {kept} (dvc exp run had removed "
              f"the stage's outputs)", flush=True)
    ckpt, why = checkpoints.load(ckpt_path, identity)
    if ckpt is not None and ckpt["last"]["epoch"] + 1 <= cfg.epochs:
        done = ckpt["last"]["epoch"] + 1
        model.load_state_dict(ckpt["last"]["state_dict"])
        opt.load_state_dict(ckpt["last"]["optimizer"])
        history, best, best_state, start = ckpt["last"]["history"], ckpt["best"], ckpt["state_dict"], done
        print(f"train_unet: resuming from {ckpt_path}: {done}/{cfg.epochs} epochs already done")
    elif ckpt_path.exists():
        print(f"train_unet: {why if ckpt is None else 'it ran more epochs than unet.epochs'}; starting afresh")
    if live is not None:  # replay the resumed epochs so the dvclive files are complete
        for h in history:
            _log(live, h)

    steps = 0
    t0 = time.perf_counter()
    bar = progress_bar(range(start, cfg.epochs), desc=f"train_unet {cfg.size}px", unit="epoch", enabled=progress,
                       initial=start, total=cfg.epochs, every=0)
    for epoch in bar:
        torch.manual_seed(cfg.seed + epoch)  # dropout draws
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        model.train()
        total, n, seen, te = 0.0, 0, 0, time.perf_counter()
        for xb, mb, _ in _batches(xt, mt, cfg.batch_size, True, cfg.seed, epoch):
            xf, mf = to_float(xb, dev), mb.to(dev)[:, None]
            xf, mf = augment(xf, mf, cfg.augment, gen)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xf), mf)
            loss.backward()
            opt.step()
            total += loss.item() * len(xb)
            n += len(xb)
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
        train_s = time.perf_counter() - te
        timing.add("epoch training", train_s, unit="epoch")
        with timing.step("validation", unit="epoch"):
            val_loss, val_iou = evaluate(model, loss_fn, xv, mv, cfg, dev)
        h = {"epoch": epoch, "train_loss": total / max(n, 1), "val_loss": val_loss, "val_iou": val_iou,
             "train_images_per_s": n / train_s if train_s > 0 else float("nan")}
        history.append(h)
        if val_loss < best["val_loss"]:
            best = {"epoch": epoch, "val_loss": val_loss, "val_iou": val_iou}
            best_state = _cpu_state(model)
        with timing.step("checkpoint", unit="epoch"):
            checkpoints.save(ckpt_path, {"config": cfg.to_dict(), "fingerprint": fingerprint, "state_dict": best_state,
                                         "best": best, "last": {"epoch": epoch, "state_dict": _cpu_state(model),
                                                                "optimizer": opt.state_dict(),
                                                                "history": [_no_clock(h) for h in history]}},
                             identity)
            resume.keep(kept, [ckpt_path, checkpoints.sidecar(ckpt_path)])
        if live is not None:
            _log(live, h)
        bar.set_postfix(train=f"{h['train_loss']:.3f}", val=f"{val_loss:.3f}", iou=f"{val_iou:.3f}")
        if max_steps is not None and steps >= max_steps:
            break
        if epoch + 1 < cfg.epochs:                         # a time-boxed step stops here, checkpoint complete
            check_deadline(time.perf_counter() - te, f"train_unet after epoch {epoch + 1}")
    if history and history[-1]["epoch"] == cfg.epochs - 1:     # every epoch done: nothing left to resume
        resume.forget(kept)
    return {"history": history, "best": best, "seconds": time.perf_counter() - t0}


def data_fingerprint(cache_meta: dict, paths: dict[str, list[str]]) -> str:
    """SHA-1 of the cache identity and the train / val image paths: a checkpoint of other data is not resumed."""
    import hashlib
    import json

    blob = json.dumps({"cache": {k: cache_meta.get(k) for k in ("n", "size", "channels", "index_sha1")},
                       "paths": {k: list(v) for k, v in paths.items()}}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()


def _log(live, h: dict) -> None:
    live.log_metric("train/loss", h["train_loss"])
    live.log_metric("val/loss", h["val_loss"])
    live.log_metric("val/iou", h["val_iou"])
    live.next_step()


# --- inference --------------------------------------------------------------

@torch.no_grad()
def iter_proba(model: nn.Module, images: np.ndarray, size: int, out_size: int, batch_size: int,
               dev: torch.device | None = None, progress: bool = False, desc: str = "segment"):
    """Yield (start, probabilities (B, out_size, out_size) float32) batch by batch; see :func:`predict_proba`."""
    dev = dev or next(model.parameters()).device
    model.eval()
    for i in progress_bar(range(0, len(images), batch_size), desc=desc, unit="batch", enabled=progress):
        x = resize_images(np.array(images[i:i + batch_size]), size)   # a writable copy of the batch
        logits = model(to_float(torch.from_numpy(x), dev))
        if size != out_size:
            logits = F.interpolate(logits, size=(out_size, out_size), mode="bilinear", align_corners=False)
        yield i, torch.sigmoid(logits)[:, 0].cpu().numpy()


def predict_proba(model: nn.Module, images: np.ndarray, size: int, out_size: int, batch_size: int,
                  dev: torch.device | None = None, progress: bool = False, desc: str = "segment") -> np.ndarray:
    """Lung probabilities (N, out_size, out_size) float32 of cache images (N, C, S, S) uint8.

    Images are resized to the U-Net's ``size``; logits are resized back to
    ``out_size`` (bilinear) before the sigmoid.
    """
    out = np.empty((len(images), out_size, out_size), dtype=np.float32)
    for i, p in iter_proba(model, images, size, out_size, batch_size, dev, progress, desc):
        out[i:i + len(p)] = p
    return out


def predict_masks(model: nn.Module, images: np.ndarray, size: int, out_size: int, batch_size: int,
                  threshold: float, components: int = 2, fill_holes: bool = True,
                  dev: torch.device | None = None, progress: bool = False, desc: str = "segment") -> np.ndarray:
    """Post-processed lung masks (N, out_size, out_size) uint8, batch by batch (no (N, S, S) float array)."""
    out = np.empty((len(images), out_size, out_size), dtype=np.uint8)
    for i, p in iter_proba(model, images, size, out_size, batch_size, dev, progress, desc):
        out[i:i + len(p)] = seg.postprocess_all((p >= threshold).astype(np.uint8), components, fill_holes)
    return out
