"""Small builders shared by tests of several folders (tests/ is on the path through its conftest)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from cxrbench.classify import training as T
from cxrbench.lungs import unet

LABELS = ["pneumonia", "viral", "covid19", "healthy"]
TINY = "test_resnet"


def synthetic_cache(n=24, size=32, seed=0):
    """Synthetic cache: label 0 is a bright square, so a tiny model can learn it."""
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 60, (n, 1, size, size), dtype=np.uint8)
    y = np.zeros((n, len(LABELS)), np.float32)
    y[::2, 0] = 1
    imgs[::2, :, 8:24, 8:24] = 230
    y[:, 1] = rng.random(n) < 0.5
    return imgs, y



def train_config(**kw):
    base = dict(backbone=TINY, fold=0, labels=LABELS, in_chans=1, cache_size=32, input_size=32, pretrained="none",
                epochs=2, batch_size=8, lr=1e-3, weight_decay=1e-4, seed=3, augment={"enabled": True, "degrees": 5,
                "translate": 0.05, "scale": 0.05}, label_smoothing=0.05, pos_weight=True)
    base.update(kw)
    return T.TrainConfig(**base)



def real_lungs(root, n=6):
    """``n`` real images with V7 lung masks from the embedded sample's cache (``sample_data``)."""
    from cxrbench.data.cache import Cache

    cache = Cache(root / "cache", root / "index.csv", in_memory=False)
    rows = np.flatnonzero((cache.index["mask"] != "").to_numpy())[:n]
    assert len(rows) == n, "the embedded sample ships 26 lung masks"
    return np.asarray(cache.images[rows]), np.asarray(cache.masks[rows])



def tiny_unet(**kw):
    base = dict(size=32, channels=(4, 8, 16), strides=(2, 2), num_res_units=0, epochs=1, batch_size=3,
                lr=0.01, seed=0, augment=unet.Augment(rotation_degrees=5.0, intensity_jitter=0.05))
    base.update(kw)
    return unet.UNetConfig(**base)


def script(name: str):
    """``scripts/NAME.py`` loaded as a module (the scripts are not a package), for tests of its ``main``."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
