"""The shortcut audit's control inputs: the hidden regions computed once per set of masks."""

import numpy as np


def test_regions_of_the_same_masks_are_computed_once(monkeypatch):
    """The identity check and the prediction of one stage build the same control input: the hulls are
    computed once per masks, a changed mask recomputes them, and a caller's edit does not reach the cache."""
    from cxrbench.lungs import controls as C

    calls = []
    real = C.convex_hull_image
    monkeypatch.setattr(C, "convex_hull_image", lambda m: calls.append(1) or real(m))
    masks = np.zeros((3, 16, 16), bool)
    masks[:, 4:8, 3:6] = True
    masks[:, 4:8, 10:13] = True
    a = C.regions(masks, "hull", 0.0)
    a[:] = False
    b = C.regions(masks, "hull", 0.0)
    assert len(calls) == 3 and b[:, 6, 8].all()          # between the two lungs: inside their hull
    masks[1, 12, 12] = True
    C.regions(masks, "hull", 0.0)
    assert len(calls) == 6
