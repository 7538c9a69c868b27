"""Rows per forward/backward that fit in memory, for the attribution methods' chunks.

Memory (DenseNet161 ran out of GPU memory): every method works on chunks of
at most ``max_batch`` rows per forward/backward (IG: ``internal_batch_size``;
occlusion: ``perturbations_per_eval``; DeepLIFT: half a chunk, as it stacks
inputs and baselines; the others split the input batch). ``max_batch`` comes
from params or, when null, from :func:`estimate_max_batch`.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def available_memory(device: torch.device | str) -> int:
    """Free bytes on ``device`` (GPU: cudaMemGetInfo; CPU: MemAvailable)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil
    return int(psutil.virtual_memory().available)


def estimate_max_batch(model: nn.Module, example: torch.Tensor, fraction: float = 0.5,
                       overhead: float = 3.0, cap: int = 256) -> int:
    """Rows per forward+backward that fit in ``fraction`` of free memory.

    Per row: the bytes of every leaf module's output in one forward (probe with
    one row) times ``overhead`` (gradients, Captum's copies of hooked tensors).
    A coarse, safe-side estimate; set ``explain.max_batch`` to override it. On
    CUDA the per-row bytes are measured instead (:func:`measured_row_bytes`).
    """
    if example.device.type == "cuda":
        per_row = measured_row_bytes(model, example) * overhead
        return int(max(1, min(cap, available_memory(example.device) * fraction // max(1, per_row))))
    total = [0]

    def hook(_m, _i, out):
        if torch.is_tensor(out):
            total[0] += out.numel() * out.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    per_row = max(1, int(total[0] * overhead) + example[:1].numel() * example.element_size())
    return int(max(1, min(cap, available_memory(example.device) * fraction // per_row)))


def measured_row_bytes(model: nn.Module, example: torch.Tensor) -> int:
    """Peak CUDA bytes one more row adds to a forward + input-gradient backward (the work of the gradient
    methods): the peak with 2 rows minus the peak with 1, so the model's own weights and their gradients
    cancel. CUDA only (``torch.cuda.max_memory_allocated``)."""
    dev = example.device
    if dev.type != "cuda":
        raise ValueError(f"measured_row_bytes needs a CUDA tensor, got one on {dev}")
    peaks = []
    for rows in (1, 2):
        x = example[:1].detach().repeat(rows, *([1] * (example.dim() - 1))).requires_grad_(True)
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        out = model(x)
        out = out[0] if isinstance(out, (tuple, list)) else out
        out[:, 0].sum().backward()
        torch.cuda.synchronize(dev)
        peaks.append(torch.cuda.max_memory_allocated(dev) - base)
        del x, out
        model.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    return int(max(peaks[1] - peaks[0], peaks[1] // 2, 1))
