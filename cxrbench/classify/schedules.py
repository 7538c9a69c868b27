"""Optimisers and learning-rate schedules of training, and the snapshots taken at each cycle's end.

``train.optimizer``: ``adam`` (seed 000) or ``sgd`` with ``train.momentum``. ``train.schedule.name``,
stepped once per epoch through :mod:`torch.optim.lr_scheduler`:

* ``constant``: ``train.lr`` throughout (seed 000; no scheduler object at all).
* ``cosine``: ``CosineAnnealingLR`` from ``train.lr`` to ``min_lr`` over ``train.epochs``.
* ``cosine_restarts``: ``CosineAnnealingWarmRestarts`` with cycles of ``ceil(epochs / cycles)`` epochs: at
  epoch t (1-based) the rate is ``min_lr + (lr - min_lr) / 2 (1 + cos(pi mod(t - 1, L) / L))``, seed 001's
  eq. 1 (cyclic cosine annealing, Huang et al. 2017's snapshot ensembles) when ``min_lr`` is 0.
* ``exponential``: ``ExponentialLR``, the rate times ``gamma`` after every epoch.

``train.snapshots: true`` saves the weights at the end of every cycle (:func:`snapshot_epochs`; one cycle
for the schedules without restarts, so its one snapshot is the last epoch's weights) as
``snapshot-cK.pt`` beside ``best.pt``; the ensemble combines them.
"""

from __future__ import annotations

import math

import torch

from cxrbench.core.params import ParamError, check_choice, check_int

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine", "cosine_restarts", "exponential")
DEFAULT_SCHEDULE = {"name": "constant"}
# the keys each schedule reads (the rest of train.schedule is ignored, and left out of the run's identity)
SCHEDULE_KEYS = {"constant": (), "cosine": ("min_lr",), "cosine_restarts": ("cycles", "min_lr"),
                 "exponential": ("gamma",)}


def _number(key: str, v, low: float = 0.0, low_open: bool = False, high: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < low \
            or (low_open and v == low) or (high is not None and v > high):
        bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
        raise ParamError(key, f"expected a finite number {bound}, got {v!r}")
    return float(v)


def validate(p: dict) -> dict:
    """Check ``train.optimizer``, ``train.momentum``, ``train.schedule`` and ``train.snapshots`` of the
    ``train`` section ``p`` (each absent key: today's behaviour); return the normalised
    ``{"optimizer", "momentum", "schedule", "snapshots"}``."""
    opt = check_choice("train.optimizer", p.get("optimizer", "adam"), OPTIMIZERS)
    momentum = _number("train.momentum", p.get("momentum", 0.9), high=1.0)
    sched = p.get("schedule", DEFAULT_SCHEDULE)
    if not isinstance(sched, dict):
        raise ParamError("train.schedule", f"expected a mapping with name: {'|'.join(SCHEDULES)}, got {sched!r}")
    name = check_choice("train.schedule.name", sched.get("name"), SCHEDULES)
    out = {"name": name}
    for key in SCHEDULE_KEYS[name]:
        if key not in sched:
            raise ParamError(f"train.schedule.{key}", f"schedule {name} needs {key}")
        if key == "cycles":
            out[key] = check_int("train.schedule.cycles", sched[key], minimum=1)
        elif key == "gamma":
            out[key] = _number("train.schedule.gamma", sched[key], low=0.0, low_open=True, high=1.0)
        else:
            out[key] = _number(f"train.schedule.{key}", sched[key])
    if "min_lr" in out and out["min_lr"] >= float(p.get("lr", math.inf)):
        raise ParamError("train.schedule.min_lr", f"expected a rate below train.lr ({p.get('lr')}), got {out['min_lr']}")
    if name == "cosine_restarts" and out["cycles"] > int(p.get("epochs", 1)):
        raise ParamError("train.schedule.cycles", f"{out['cycles']} cycles do not fit in train.epochs {p.get('epochs')}")
    snaps = p.get("snapshots", False)
    if not isinstance(snaps, bool):
        raise ParamError("train.snapshots", f"expected true or false, got {snaps!r}")
    return {"optimizer": opt, "momentum": momentum, "schedule": out, "snapshots": snaps}


def make_optimizer(name: str, params, lr: float, weight_decay: float, momentum: float = 0.9):
    """The optimiser of ``train.optimizer``. Adam runs fused (one kernel for every parameter) where torch has
    that kernel (float parameters on the CPU or a CUDA device): the same update, rounded differently (6e-8
    after 20 steps), in a quarter of the time on the CPU (14 against 56 ms a step for resnet18, one thread,
    benchmarks/bench_optimizer.py)."""
    params = list(params)
    if name == "adam":
        fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; valid: {OPTIMIZERS}")


def cycle_length(schedule: dict, epochs: int) -> int:
    """Epochs per cycle: ``ceil(epochs / cycles)`` with restarts, else the whole run."""
    return math.ceil(epochs / schedule["cycles"]) if schedule["name"] == "cosine_restarts" else epochs


def make_scheduler(opt, schedule: dict, epochs: int):
    """The per-epoch scheduler of ``schedule`` on ``opt``; None for ``constant``."""
    name = schedule["name"]
    lrs = torch.optim.lr_scheduler
    if name == "constant":
        return None
    if name == "cosine":
        return lrs.CosineAnnealingLR(opt, T_max=epochs, eta_min=schedule["min_lr"])
    if name == "cosine_restarts":
        return lrs.CosineAnnealingWarmRestarts(opt, T_0=cycle_length(schedule, epochs), eta_min=schedule["min_lr"])
    if name == "exponential":
        return lrs.ExponentialLR(opt, gamma=schedule["gamma"])
    raise ValueError(f"unknown schedule {name!r}; valid: {SCHEDULES}")


def snapshot_epochs(schedule: dict, epochs: int) -> list[int]:
    """0-based epochs whose end closes a cycle (the last epoch always does)."""
    n = cycle_length(schedule, epochs)
    return sorted({e for e in range(epochs) if (e + 1) % n == 0} | {epochs - 1})


def snapshot_file(cycle: int) -> str:
    """The file of the snapshot that closes cycle ``cycle`` (0-based)."""
    return f"snapshot-c{cycle}.pt"
