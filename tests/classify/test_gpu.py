"""The CUDA-only paths (cxrbench/classify/gpu.py), on the meta device where a GPU is needed, and the deadline stop.

The meta device stands in for a GPU: a tensor made on the CPU and combined with a meta tensor raises, as it
does with a CUDA tensor. The CPU path must be exactly the one it was (CI gates CPU metrics bit for bit).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrbench.classify import gpu
from cxrbench.core import runtime
from cxrbench.classify import training
from cxrbench.data.cache import BatchLoader, to_float

META = torch.device("meta")


def _data(n=10, size=8):
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (n, 1, size, size), dtype=np.uint8),
            (rng.random((n, 3)) < 0.5).astype(np.float32))


def test_device_batches_serve_the_host_loaders_batches_on_the_device():
    images, targets = _data()
    rows = np.array([7, 2, 5, 0, 9, 3, 1])
    host = BatchLoader(images, targets[rows], rows, 3, shuffle=True, seed=4, drop_last=True, prefetch=0)
    dev = gpu.DeviceBatches(images, targets[rows], rows, 3, META, shuffle=True, seed=4, drop_last=True)
    assert len(dev) == len(host) == 2
    for epoch in (0, 1):
        host.epoch = dev.epoch = epoch
        for (hx, hy, hr), (dx, dy, dr) in zip(host, dev):
            assert dx.device == dy.device == META and dx.dtype == torch.uint8 and tuple(dx.shape) == tuple(hx.shape)
            assert tuple(dy.shape) == tuple(hy.shape)
            torch.testing.assert_close(dr, hr)                          # the same rows in the same order
            assert to_float(dx, META).device == META                    # float on the device, no host copy


def test_device_batches_hold_only_their_rows_on_the_device():
    images, targets = _data()
    rows = np.array([4, 6])
    dev = gpu.DeviceBatches(images, targets[rows], rows, 8, META)
    assert dev.x.device == META and tuple(dev.x.shape) == (2, 1, 8, 8)


def test_the_cpu_path_is_unchanged():
    images, targets = _data()
    loader = gpu.batches(images, targets, np.arange(10), 4, torch.device("cpu"))
    assert type(loader) is BatchLoader and not loader.pin_memory
    assert not gpu.grad_scaler("cpu", True).is_enabled()
    with gpu.autocast(torch.device("cpu"), True):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    model = torch.nn.Conv2d(1, 4, 3)
    before = model.weight.stride()
    assert gpu.prepare_model(model, "cpu") is model and model.weight.stride() == before
    assert not gpu.fits(1, "cpu")


def test_prepare_model_on_a_cuda_like_device_is_channels_last(monkeypatch):
    model = torch.nn.Conv2d(3, 8, 3).to(META)
    monkeypatch.setattr(gpu, "on_cuda", lambda device: True)
    out = gpu.prepare_model(model, META)
    assert out.weight.is_contiguous(memory_format=torch.channels_last)


def test_amp_dtype_is_bf16_where_supported(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert gpu.amp_dtype(torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert gpu.amp_dtype(torch.device("cuda")) == torch.float16
    assert gpu.amp_dtype(torch.device("cpu")) == torch.float16      # never used: the CPU never autocasts


def test_check_deadline(monkeypatch):
    monkeypatch.delenv("CXRBENCH_DEADLINE", raising=False)
    runtime.check_deadline(1e9, "x")                                   # no deadline: never stops
    import time
    monkeypatch.setenv("CXRBENCH_DEADLINE", str(time.time() + 100))
    runtime.check_deadline(10, "x")
    with pytest.raises(runtime.DeadlineReached, match="x: the next epoch"):
        runtime.check_deadline(200, "x")
    monkeypatch.setenv("CXRBENCH_DEADLINE", "soon")
    with pytest.raises(ValueError, match="CXRBENCH_DEADLINE"):
        runtime.deadline()
    with pytest.raises(SystemExit) as exc:
        with runtime.exit_on_deadline():
            raise runtime.DeadlineReached("stop")
    assert exc.value.code == runtime.DEADLINE_EXIT


@pytest.mark.slow
def test_training_stops_at_the_deadline_after_a_checkpoint_and_resumes(tmp_path, monkeypatch):
    """A time-boxed step: the loop stops after epoch 1's checkpoint; the rerun resumes it to the end."""
    images, _ = _data(24, 32)
    targets = np.zeros((24, 2), np.float32)
    targets[::2, 0] = 1
    cfg = training.TrainConfig(backbone="test_resnet", fold=0, labels=["a", "b"], in_chans=1, cache_size=32,
                               input_size=32, epochs=3, batch_size=8, seed=0)
    monkeypatch.setenv("CXRBENCH_DEADLINE", "1")                       # long past: stop after the first epoch
    with pytest.raises(runtime.DeadlineReached):
        training.train(cfg, images, targets, np.arange(16), np.arange(16, 24), tmp_path, device="cpu",
                       progress=False)
    assert (tmp_path / "last.pt").is_file() and not (tmp_path / training.FINAL).exists()
    monkeypatch.delenv("CXRBENCH_DEADLINE")
    out = training.train(cfg, images, targets, np.arange(16), np.arange(16, 24), tmp_path, device="cpu",
                         progress=False)
    assert out["resumed"] and out["complete"] and out["epochs_done"] == 3


def test_bench_gpu_runs_at_tiny_sizes(tmp_path):
    """benchmarks/bench_gpu.py (the figures that size the gpu profile) runs on whatever device is here."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--size", "32", "--backbones", "resnet18", "--batch", "4", "--steps", "1", "--attr-images", "1",
                      "--methods", "saliency", "gradcam", "--device", "cpu", "--json", str(tmp_path / "b.json")])
    (t,) = out["throughput"]
    assert t["train_images_per_s"] > 0 and t["synthetic_train_images_per_s"] > 0 and t["loader"] == "BatchLoader"
    assert [r["method"] for r in out["attribution"]] == ["saliency", "gradcam"]
    assert all(r["seconds_per_image"] > 0 for r in out["attribution"]) and out["device"].startswith("CPU")
    assert (tmp_path / "b.json").is_file()


def test_early_stopping_stops_after_patience_epochs_and_a_rerun_keeps_the_stop(tmp_path, monkeypatch):
    """train.patience: with validation losses 1.0, 0.9, 0.95, 0.97, ... and patience 2, training stops after
    the 4th of 10 epochs, is complete (best.pt from epoch 2, final.pt from epoch 4), and a rerun neither
    trains again nor reopens the finished models."""
    images, _ = _data(24, 32)
    targets = np.zeros((24, 2), np.float32)
    targets[::2, 0] = 1
    losses = iter([1.0, 0.9, 0.95, 0.97, 0.99, 1.0, 1.1, 1.2, 1.3, 1.4])
    monkeypatch.setattr(training, "mean_loss", lambda *a, **k: next(losses))
    cfg = training.TrainConfig(backbone="test_resnet", fold=0, labels=["a", "b"], in_chans=1, cache_size=32,
                               input_size=32, epochs=10, batch_size=8, seed=0, patience=2)
    out = training.train(cfg, images, targets, np.arange(16), np.arange(16, 24), tmp_path, device="cpu",
                         progress=False)
    assert out["complete"] and out["stopped_early"] and out["epochs_done"] == 4 and out["best_epoch"] == 1
    assert (tmp_path / training.FINAL).is_file()
    again = training.train(cfg, images, targets, np.arange(16), np.arange(16, 24), tmp_path, device="cpu",
                           progress=False)
    assert again["resumed"] and again["complete"] and again["epochs_done"] == 4
    assert training.stop_early([{"epoch": 3}], {"epoch": 1}, 2) and not training.stop_early([{"epoch": 3}],
                                                                                            {"epoch": 1}, None)
    # without patience the digest is the one of a config without the key: older checkpoints stay resumable
    plain = training.TrainConfig(backbone="test_resnet", fold=0, labels=["a", "b"], in_chans=1, cache_size=32,
                                 input_size=32, epochs=10, batch_size=8, seed=0)
    import hashlib
    import json
    before = {k: v for k, v in training.asdict(plain).items() if k not in ("input_options", "weights_id", *training.LATER_DEFAULTS)}
    assert plain.digest() == hashlib.sha1(json.dumps(before, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert plain.digest() != cfg.digest()
