"""Every figure type of the explain stages, rendered at the ci profile's size (128 px maps, the ci methods):
a constant map is a labelled panel, never blank or solid; curves have one style per method; legends sit
outside the data; panels do not overlap."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from cxrbench.core import plotting as PL
from cxrbench.explain import plots as AP


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions would save, drawn and kept open for inspection."""
    kept = []

    def keep(fig, path, dpi=110):
        fig.canvas.draw()
        kept.append(fig)

    monkeypatch.setattr(AP, "save", keep)
    yield kept
    for fig in kept:
        PL.plt.close(fig)


def _methods() -> list[str]:
    from cxrbench.explain.methods.registry import METHODS
    return list(METHODS)                 # all 14: more than one palette of 10 colours


def _no_overlaps(fig) -> None:
    r = fig.canvas.get_renderer()
    boxes = [ax.get_tightbbox(r) for ax in fig.axes]          # with tick labels and axis labels
    for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
        assert not a.overlaps(b), f"axes {i} and {j} overlap"
    for leg in fig.legends:
        lb = leg.get_window_extent(r)
        for ax in fig.axes:
            assert not lb.overlaps(ax.get_window_extent(r)), "the legend covers a panel"


def _line_styles(fig) -> dict[str, tuple]:
    out = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            label = line.get_label()
            if label.startswith("_"):
                continue
            style = (PL.matplotlib.colors.to_hex(line.get_color()), line.get_linestyle())
            assert out.setdefault(label, style) == style, f"{label} changes style between panels"
    return out


def test_curves_give_every_method_its_own_colour_and_line_style(figures):
    methods = _methods() + ["random"]
    rows = [{"scheme": scheme, "fill": fill, "order": "morf", "method": m, "level": lvl, "p_drop": float(np.sin(i + lvl))}
            for scheme, fill in [("threshold", "black"), ("pixels", "black"), ("region", "mean")]
            for i, m in enumerate(methods) for lvl in np.linspace(0.1, 1, 10)]
    AP.curves_figure(pd.DataFrame(rows), "unused.png")
    fig = figures[0]
    styles = _line_styles(fig)
    assert set(styles) == set(methods)
    colours = [c for m, (c, _) in styles.items() if m != "random"]
    assert len(set(colours)) == len(colours), "two methods share a colour"
    assert len(set(styles.values())) == len(styles)
    assert styles["random"] == ("#000000", "--")
    assert len(fig.legends) == 1
    _no_overlaps(fig)


def test_randomisation_curves_have_distinct_styles_and_an_outside_legend(figures):
    methods = _methods()
    rows = [{"backbone": b, "method": m, "metric": metric, "step": s, "layer": f"l{s}",
             "similarity": 1 - s / 4 + i / 100, "low": 0, "high": 1, "n": 4, "null": 0.1, "null_low": 0.0,
             "null_high": 0.2}
            for b in ("resnet18", "efficientnet_lite0") for metric in ("spearman_abs", "ssim")
            for i, m in enumerate(methods) for s in range(5)]
    AP.randomisation_figure(pd.DataFrame(rows), ["spearman_abs", "ssim"], methods, "unused.png")
    fig = figures[0]
    styles = _line_styles(fig)
    assert len(set(styles.values())) == len(methods) and len({c for c, _ in styles.values()}) == len(methods)
    _no_overlaps(fig)


def test_a_constant_map_is_a_labelled_panel_never_blank_or_solid(figures):
    rng = np.random.default_rng(0)
    n, side = 3, 128
    images = rng.random((n, 1, side, side)).astype(np.float32)
    maps = {"gradcam": np.zeros((n, side, side), np.float32),                           # dead layer: all zero
            "layercam": np.full((n, side, side), 0.7, np.float32),                      # constant, not zero
            "gradcam_pp": 5 + rng.random((n, side, side)).astype(np.float32),           # positive everywhere
            "saliency": rng.standard_normal((n, side, side)).astype(np.float32)}
    maps["layercam"][1, 0, 0] = np.nan
    store = {**maps, "masks": np.ones((n, side, side), np.uint8)}
    npz = type("Npz", (), {"files": list(store), "__getitem__": lambda self, k: store[k]})()   # as np.load gives
    AP.attribution_panels("resnet18", 0, images, npz, list(maps), "unused.png")
    fig = figures[0]
    axes = np.array(fig.axes).reshape(n, 2 + len(maps))
    for i in range(n):
        for j, m in enumerate(maps):
            texts = [t.get_text() for t in axes[i, 2 + j].texts]
            constant = m in ("gradcam", "layercam")
            assert (PL.CONSTANT_MAP.replace(": ", ":\n") in texts) == constant, (m, i)
    titles = [ax.get_title() for ax in axes[0]]
    assert "gradcam\n(3 of 3 constant)" in titles and "layercam\n(3 of 3 constant)" in titles
    assert "gradcam_pp" in titles and "saliency" in titles
    # the positive map keeps its structure: its overlay spans its own range, not one saturated colour
    overlay = axes[0, 2 + list(maps).index("gradcam_pp")].images[-1].get_array()
    assert float(np.ptp(overlay)) > 0.9


def test_map_panel_kinds():
    fig, ax = PL.plt.subplots()
    img = np.zeros((8, 8))
    assert PL.map_panel(ax, img, np.zeros((8, 8))) == "constant"
    assert PL.map_panel(ax, img, np.arange(64.0).reshape(8, 8) - 10) == "signed"
    assert PL.map_panel(ax, img, np.arange(64.0).reshape(8, 8) + 1) == "one-signed"
    assert PL.map_panel(ax, img, -np.arange(64.0).reshape(8, 8) - 1) == "one-signed"
    PL.plt.close(fig)


def test_the_planted_grid_labels_a_constant_map(monkeypatch):
    kept = []
    monkeypatch.setattr(PL, "save", lambda fig, path, dpi=110: (fig.canvas.draw(), kept.append(fig)))
    rng = np.random.default_rng(0)
    images = (rng.random((2, 1, 128, 128)) * 255).astype(np.uint8)
    maps = {"gradcam": np.zeros((2, 32, 32), np.float32), "saliency": rng.random((2, 32, 32)).astype(np.float32)}
    PL.planted_grid(images, maps, np.array([[10, 10, 20, 20]] * 2), "unused.png", title="t")
    axes = np.array(kept[0].axes).reshape(3, 2)
    label = PL.CONSTANT_MAP.replace(": ", ":\n")
    assert all(label in [t.get_text() for t in ax.texts] for ax in axes[1])       # the gradcam row
    assert not any(ax.texts for ax in axes[2])                                    # saliency explains something
    PL.plt.close(kept[0])


def test_gains_by_model_show_every_model_coloured_by_seed_beside_the_pooled_interval(figures):
    """One dot per trained model in each panel, one colour per training seed (one legend entry each), and the
    two-level mean with its interval as an error bar; panels share the y axis and do not overlap."""
    methods = ["occlusion", "saliency"]
    models = [f"efficientnet_lite0@seed{s}|f{k}" for s in (42, 43, 44) for k in range(5)]
    across = {f"{m}|{me}": {"mean": 0.1 * i, "low": 0.1 * i - 0.05, "high": 0.1 * i + 0.05, "significant": i > 0,
                            "models": 15, "patients": 99,
                            "per_model": {k: 0.1 * i + 0.01 * j for j, k in enumerate(models)}}
              for i, m in enumerate(methods) for me in ("aoppc_threshold_morf", "aoppc_region_black_morf")}
    AP.gains_by_model_figure(across, methods, {"aoppc_threshold_morf": "threshold",
                                               "aoppc_region_black_morf": "region, black"}, "unused.png")
    fig = figures[0]
    assert [ax.get_title() for ax in fig.axes] == ["threshold", "region, black"]
    for ax in fig.axes:
        dots = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
        assert len(dots) == len(methods) * len(models)
        assert len({PL.matplotlib.colors.to_hex(ln.get_color()) for ln in dots}) == 3
        assert len(ax.containers) == len(methods)                      # one error bar per method
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["seed 42", "seed 43", "seed 44"]
    _no_overlaps(fig)
