"""What a CUDA run does differently from a CPU run, in one place.

Every function here changes nothing on the CPU: the CPU path (whose metrics CI
gates bit for bit) never enters the CUDA branches. On CUDA:

* mixed precision in bf16 where the GPU supports it (Ampere and later, Hopper:
  no loss scaling needed), else fp16 with a gradient scaler (:func:`autocast`,
  :func:`grad_scaler`);
* ``channels_last`` weights, the layout cuDNN's fastest convolutions use
  (:func:`prepare_model`);
* the uint8 cache rows a loop needs moved to the GPU once when they take at most
  :data:`CACHE_SHARE` of its free memory (:class:`DeviceBatches`): a batch is then
  one ``index_select`` on the GPU, with no host loader thread and no copies per
  step (:func:`batches` chooses).
"""

from __future__ import annotations

import numpy as np
import torch

from cxrbench.data.cache import BatchLoader

# Share of the GPU's free memory that the uint8 cache rows of one loop may take
# (the full study at 512 px: ~0.4 GB of an 80 GB H100).
CACHE_SHARE = 0.25


def on_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def amp_dtype(device) -> torch.dtype:
    """bf16 where the CUDA device supports it, else fp16 (the CPU path never autocasts)."""
    if on_cuda(device) and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast(device, enabled: bool):
    """``torch.autocast`` on CUDA in :func:`amp_dtype` when ``enabled``; a disabled context elsewhere."""
    device = torch.device(device)
    on = bool(enabled) and on_cuda(device)
    return torch.autocast(device.type, dtype=amp_dtype(device) if on else None, enabled=on)


def grad_scaler(device, enabled: bool) -> torch.amp.GradScaler:
    """Loss scaling for fp16 autocast only: bf16 has float32's range, and the CPU path never scales."""
    device = torch.device(device)
    return torch.amp.GradScaler(device.type, enabled=bool(enabled) and on_cuda(device)
                                and amp_dtype(device) == torch.float16)


def prepare_model(model: torch.nn.Module, device) -> torch.nn.Module:
    """``channels_last`` weights on CUDA; the model unchanged elsewhere."""
    if on_cuda(device):
        return model.to(memory_format=torch.channels_last)
    return model


def free_bytes(device) -> int:
    return int(torch.cuda.mem_get_info(torch.device(device))[0])


def fits(nbytes: int, device, share: float = CACHE_SHARE) -> bool:
    """Whether ``nbytes`` may live on ``device`` for a loop: CUDA only, within ``share`` of free memory."""
    return on_cuda(device) and nbytes <= share * free_bytes(device)


class DeviceBatches(BatchLoader):
    """:class:`~cxrbench.data.cache.BatchLoader` with the rows it serves moved to ``device`` once.

    Same batches in the same order (``order`` is inherited: (seed, epoch)),
    yielded as (uint8 images, float targets, row ids) already on ``device``.
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, rows: np.ndarray, batch_size: int,
                 device, shuffle: bool = False, seed: int = 0, drop_last: bool = False):
        super().__init__(images, targets, rows, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                         prefetch=0)
        device = torch.device(device)
        self.device = device
        self.x = torch.from_numpy(np.ascontiguousarray(images[self.rows])).to(device)
        self.y = torch.from_numpy(np.ascontiguousarray(targets)).to(device)
        self.row_ids = torch.from_numpy(np.asarray(self.rows, dtype=np.int64))

    def _batch(self, sel: np.ndarray):
        idx = torch.from_numpy(np.asarray(sel, dtype=np.int64)).to(self.device)
        return self.x.index_select(0, idx), self.y.index_select(0, idx), self.row_ids[torch.from_numpy(sel)]


def batches(images: np.ndarray, targets: np.ndarray, rows: np.ndarray, batch_size: int, device,
            shuffle: bool = False, seed: int = 0, drop_last: bool = False, prefetch: int = 4) -> BatchLoader:
    """:class:`DeviceBatches` when the rows fit on a CUDA device (:func:`fits`), else the host
    :class:`~cxrbench.data.cache.BatchLoader` (pinned memory on CUDA); the CPU path gets exactly the loader it
    always had."""
    rows = np.asarray(rows)
    nbytes = int(len(rows) * (images[0].nbytes if len(images) else 0) + np.asarray(targets).nbytes)
    if fits(nbytes, device):
        return DeviceBatches(images, targets, rows, batch_size, device, shuffle=shuffle, seed=seed,
                             drop_last=drop_last)
    return BatchLoader(images, targets, rows, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                       prefetch=prefetch, pin_memory=on_cuda(device))
