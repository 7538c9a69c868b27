"""Preprocessing recipes: ordered chains that make one channel, and BEASF on an image derived by hand."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from skimage import exposure, filters

from cxrbench.core.params import ParamError
from cxrbench.data import preprocess as PP


def _sig(x):
    return 1 / (1 + math.exp(-x))


def _image():
    """Tones {1, 64, 64, 192, 192, 255} (x 100 pixels each): mean 128, so m = 128; the lower part {1, 64, 64}
    has median 64 = m / 2 (centre of 0..128), the upper part {192, 192, 255} median 192 = centre of 129..255."""
    return np.repeat(np.array([1, 64, 64, 192, 192, 255], np.float64), 100).reshape(24, 25) / 255


@pytest.mark.parametrize("gamma", [0.5, 1.5, 2.0])
def test_beasf_on_an_image_whose_result_is_derived_by_hand(gamma):
    """Lower part: s(t) = sig(gamma 5 (t - 64) / 128) stretched onto [0, 128]; s is symmetric about 64, so 64 -> 64
    whatever gamma, and tone 1 -> 128 (sig(-315 g/128) - sig(-2.5 g)) / (sig(2.5 g) - sig(-2.5 g)).
    Upper part: s(t) = sig(gamma 5 (t - 192) / 127) over 129..255 stretched onto [128, 255]: symmetric about 192,
    so 192 -> 128 + 127 / 2 = 191.5, and 255, the top of the stretch, -> 255."""
    out = PP.beasf(_image(), gamma) * 255
    g = gamma
    lo = 128 * (_sig(-g * 5 * 63 / 128) - _sig(-2.5 * g)) / (_sig(2.5 * g) - _sig(-2.5 * g))
    want = {1: lo, 64: 64.0, 192: 191.5, 255: 255.0}
    tones = np.round(_image() * 255).astype(int)
    for tone, value in want.items():
        got = out[tones == tone]
        assert np.allclose(got, value, rtol=0, atol=255 * 2 ** -22), (tone, got[0], value)   # float32 output
    lut = PP.beasf_lut(np.bincount(tones.ravel(), minlength=256), gamma)
    assert lut[0] == 0 and lut[128] == 128 and lut[129] == 128 and (np.diff(lut) >= 0).all()


def test_beasf_steeper_gamma_pushes_tones_away_from_the_medians():
    tones = np.round(_image() * 255).astype(int)
    h = np.bincount(tones.ravel(), minlength=256)
    flat, steep = PP.beasf_lut(h, 0.5), PP.beasf_lut(h, 2.0)
    assert steep[40] < flat[40] < 64 and steep[90] > flat[90] > 64    # around the lower median 64


def test_beasf_keeps_a_constant_image():
    img = np.full((8, 8), 0.5, np.float32)
    np.testing.assert_allclose(PP.beasf(img, 1.5), np.round(img * 255) / 255, atol=1e-7)


def _recipe(channels, **kw):
    return PP.Recipe(size=32, percentiles=(1.0, 95.0), channels=channels, **kw)


def test_a_chain_makes_one_channel_in_its_order():
    rng = np.random.default_rng(0)
    img = rng.random((32, 32)).astype(np.float32)
    r = _recipe(("raw", ("histeq", "unsharp")))
    chained = PP.channel(img, ("histeq", "unsharp"), r)
    eq = exposure.equalize_hist(img).astype(np.float32)
    want = np.clip(filters.unsharp_mask(eq, radius=2.0, amount=1.0), 0, 1)
    np.testing.assert_allclose(chained, want, rtol=0, atol=1e-6)
    other = PP.channel(img, ("unsharp", "histeq"), r)
    assert np.abs(other - chained).max() > 0.01                          # the order matters
    out = PP.prepare(img, r)
    assert out.shape == (2, 32, 32)


def test_channels_params_accept_chains_and_refuse_unknown_steps(params):
    p = copy.deepcopy(params)
    p["preprocess"]["channels"] = ["raw", ["histeq", "unsharp"], "beasf"]
    r = PP.Recipe.from_params(p)
    assert r.channels == ("raw", ("histeq", "unsharp"), "beasf") and r.record()["beasf_gamma"] == 1.5
    assert r.record()["channels"] == ("raw", ["histeq", "unsharp"], "beasf")
    p["preprocess"]["channels"] = ["raw", ["histeq", "sharpen"]]
    with pytest.raises(ParamError, match="preprocess.channels"):
        PP.Recipe.from_params(p)
    p["preprocess"]["channels"] = [[]]
    with pytest.raises(ParamError, match="preprocess.channels"):
        PP.Recipe.from_params(p)


def test_the_default_recipe_records_what_it_recorded_before(params):
    import dataclasses

    r = PP.Recipe.from_params(params)
    old = dataclasses.asdict(r)
    del old["beasf_gamma"]                         # the field did not exist: the cache meta is unchanged
    assert r.record() == old and list(r.record()) == list(old)
