"""What each control of the shortcut audit sees: a hidden region that does not trace the lungs, and its fill.

The paper-style variant (``lungs_removed``: the predicted lung mask blacked out)
leaves a black, lung-shaped hole; the hole's shape alone can carry the label
(pediatric vs adult lungs, source). The audit's controls therefore hide a
*region* that does not trace the lungs, fill it with a value that carries no
information about the image, and add controls that show what the region's shape
alone is worth:

* ``outside_only``: the region hidden, everything outside it visible;
* ``lungs_only``: everything outside the region hidden, the region visible;
* ``silhouette_only``: the region as a binary image (255 inside, 0 outside),
  nothing of the radiograph: what a model can read from the region's shape;
* ``mask_silhouette``: the predicted lung mask as a binary image: what the
  paper-style hole gives away;
* ``lungs_removed``: the paper-style variant, kept for comparison (the mask
  dilated by ``train.mask_dilation``, black).

Regions (``audit.region``), each dilated by ``audit.dilation`` x the image side:

* ``hull``: the convex hull of both lungs together (one convex shape around
  lungs and mediastinum): no lung outline, but its extent and position remain;
* ``template``: one fixed region in image coordinates for every image: the
  convex hull of the pixels that are lung in at least half of the non-empty
  masks; carries no per-image shape at all, but hides lungs only approximately;
* ``mask``: the lung mask itself (the silhouette is then the lungs' shape).

Fills (``audit.fill``): ``mean``, one constant per channel (the mean of the
images passed, i.e. the whole cache): the same for every image, so it says
nothing about the image; ``blur``, the image blurred by a Gaussian of
``audit.blur_sigma`` x the image side (keeps coarse intensity); ``zero``, black.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image

from cxrbench.core.params import check_choice, check_float
from cxrbench.lungs.segmentation import apply_input_mode as _mask_mode
from cxrbench.lungs.segmentation import dilate

REGION_CONTROLS = ("outside_only", "lungs_only", "silhouette_only")
MASK_CONTROLS = ("mask_silhouette", "lungs_removed")
CONTROLS = REGION_CONTROLS + MASK_CONTROLS
REGIONS = ("hull", "template", "mask")
FILLS = ("mean", "blur", "zero")


def validate(p: dict) -> dict:
    """Check the region keys of ``params: audit`` (``p``); return them as the controls' input options."""
    region = check_choice("audit.region", p.get("region"), REGIONS)
    d = check_float("audit.dilation", p.get("dilation"), minimum=0, maximum=0.25,
                    what="a fraction of the image side (e.g. 0.03)")
    fill = check_choice("audit.fill", p.get("fill"), FILLS)
    sigma = check_float("audit.blur_sigma", p.get("blur_sigma"), minimum=0, maximum=0.5, open_low=True,
                        what="a fraction of the image side (e.g. 0.05)")
    return {"region": region, "dilation": d, "fill": fill, "blur_sigma": sigma}


def options_for(control: str, p: dict) -> dict:
    """The input options a control's model records (and its identity includes): the region keys for the
    region controls, none for the mask controls (they read only ``train.mask_dilation``)."""
    check_choice("audit.controls", control, CONTROLS)
    return validate(p) if control in REGION_CONTROLS else {}


def template(masks: np.ndarray) -> np.ndarray:
    """The fixed thoracic region: convex hull of the pixels that are lung in >= half of the non-empty masks."""
    m = np.asarray(masks) > 0
    nonempty = m.reshape(len(m), -1).any(1)
    if not nonempty.any():
        raise ValueError("every lung mask is empty: no template region can be built; check the segment stage "
                         "(metrics/segment.json lists implausible masks)")
    share = m[nonempty].mean(0)
    core = share >= 0.5
    if not core.any():
        raise ValueError("no pixel is lung in half of the masks: the masks do not overlap; check the segment stage")
    return convex_hull_image(core)


def regions(masks: np.ndarray, region: str, dilation: float, fixed: np.ndarray | None = None) -> np.ndarray:
    """(N, S, S) bool: the region each image hides (an empty mask gives an empty hull / mask region).

    ``dilation``: a fraction of the image side, rounded to whole pixels; ``fixed``:
    the template (:func:`template`) when it comes from more masks than these."""
    check_choice("audit.region", region, REGIONS)
    m = np.asarray(masks) > 0
    dilation = int(round(dilation * m.shape[-1]))
    if region == "template":
        fixed = dilate(template(m) if fixed is None else fixed, dilation)
        return np.broadcast_to(fixed, m.shape).copy()
    key = (_digest(m), region, dilation)
    if key not in _REGIONS:
        out = np.zeros(m.shape, dtype=bool)
        for i in range(len(m)):
            if not m[i].any():
                continue
            r = convex_hull_image(m[i]) if region == "hull" else m[i]
            out[i] = dilate(r, dilation)
        _REGIONS.clear()                                  # one entry: the masks of this process's cache
        _REGIONS[key] = out
    return _REGIONS[key].copy()


# The last hull / mask regions computed, by the masks' digest: a stage that checks a model's identity and then
# predicts builds the same control input twice, and the hulls of a ci cache's 826 masks were half of the
# audit_evaluate stage's time (cProfile: 1,652 convex hulls)
_REGIONS: dict = {}


def _digest(m: np.ndarray) -> str:
    import hashlib

    return hashlib.blake2b(np.packbits(m).tobytes() + repr(m.shape).encode(), digest_size=16).hexdigest()


def _filled(images: np.ndarray, fill: str, blur_sigma: float, means: np.ndarray) -> np.ndarray:
    """(n, C, S, S) uint8: what hidden pixels of ``images`` become (``means``: per channel, for ``mean``)."""
    if fill == "zero":
        return np.zeros_like(images)
    if fill == "mean":
        return np.broadcast_to(np.round(means).astype(np.uint8)[None, :, None, None], images.shape)
    sigma = blur_sigma * images.shape[-1]
    out = np.empty_like(images)
    for i in range(len(images)):
        for c in range(images.shape[1]):
            out[i, c] = np.clip(np.round(ndimage.gaussian_filter(images[i, c].astype(np.float32), sigma)), 0, 255)
    return out


def apply_control(images: np.ndarray, masks: np.ndarray, control: str, mask_dilation: int = 0, region: str = "hull",
                  dilation: float = 0.0, fill: str = "mean", blur_sigma: float = 0.05,
                  rows: np.ndarray | None = None) -> np.ndarray:
    """The input of one audit control: (N, C, S, S) uint8 images, (N, S, S) lung masks -> (N, C, S, S) uint8.

    What depends on every image (the ``mean`` fill, the ``template`` region) is
    computed over all N; ``rows`` (optional) returns only those images, e.g. a
    figure's examples, exactly as the model saw them.
    """
    check_choice("audit.controls", control, CONTROLS)
    images, masks = np.asarray(images), np.asarray(masks)
    if images.ndim != 4 or masks.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"images (N, C, S, S) and masks (N, S, S) must agree, got {images.shape} and {masks.shape}")
    means = images.mean(axis=(0, 2, 3), dtype=np.float64) if fill == "mean" else None
    tmpl = template(masks) if region == "template" and control in REGION_CONTROLS else None
    if rows is not None:
        images, masks = images[rows], masks[rows]
    if control == "lungs_removed":
        return _mask_mode(images, masks, "lungs_removed", mask_dilation)
    if control == "mask_silhouette":
        sil = np.stack([dilate(m, mask_dilation) for m in masks]) if len(masks) else masks > 0
        return np.repeat((sil.astype(np.uint8) * 255)[:, None], images.shape[1], axis=1)
    hide = regions(masks, region, dilation, tmpl)
    if control == "silhouette_only":
        return np.repeat((hide.astype(np.uint8) * 255)[:, None], images.shape[1], axis=1)
    if control == "lungs_only":
        hide = ~hide
    out = images.astype(np.uint8, copy=True)
    filled = _filled(images, fill, blur_sigma, means)
    sel = np.broadcast_to(hide[:, None], images.shape)
    out[sel] = filled[sel]
    return out
