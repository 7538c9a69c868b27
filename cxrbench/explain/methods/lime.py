"""LIME (Ribeiro et al. 2016; COVID-CXNet's partner of Grad-CAM, seed 004) through captum.attr.Lime on
scikit-image SLIC superpixels.

Per image: SLIC (``skimage.segmentation.slic``) splits the image (its channels' mean, in [0, 1]) into about
``explain.lime_segments`` superpixels of compactness ``explain.lime_compactness``; Captum's ``Lime`` draws
``explain.lime_samples`` random subsets of them (the others set to the zero baseline, as occlusion's), scores
each by the target's logit, and fits its default interpretable model (a Lasso, alpha 0.01, weighted by an
exponential kernel of the cosine distance). Every pixel of a superpixel gets that superpixel's coefficient.
The draws come from a generator seeded per image (seed 0 + the image's row in the batch), inside a forked
RNG: a rerun gives the same map and the global RNG is left as it was.
"""

from __future__ import annotations

import numpy as np
import torch

from cxrbench.explain.methods.registry import Method, register


def slic_segments(image: torch.Tensor, n_segments: int, compactness: float) -> torch.Tensor:
    """(H, W) long superpixel labels 0..K-1 of one (C, H, W) image in [0, 1] (SLIC on its channel mean)."""
    from skimage.segmentation import slic

    grey = image.detach().float().mean(0).cpu().numpy().astype(np.float64)
    labels = slic(grey, n_segments=n_segments, compactness=compactness, channel_axis=None, start_label=0,
                  enforce_connectivity=True)
    _, labels = np.unique(labels, return_inverse=True)          # consecutive 0..K-1
    return torch.as_tensor(labels.reshape(grey.shape), dtype=torch.long, device=image.device)


@register("lime")
class LimeMethod(Method):
    def _one(self, x, target):
        from captum.attr import Lime

        lime = Lime(self.model)
        n, segs, comp = (self.settings.get("lime_samples", 200), self.settings.get("lime_segments", 50),
                         self.settings.get("lime_compactness", 0.1))
        per_eval = max(1, min(n, self.max_batch))
        out = []
        for i in range(len(x)):
            mask = slic_segments(x[i], segs, comp)
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                torch.manual_seed(i)
                a = lime.attribute(x[i:i + 1], baselines=0.0, target=target[i:i + 1],
                                   feature_mask=mask.expand_as(x[i:i + 1]), n_samples=n,
                                   perturbations_per_eval=per_eval, return_input_shape=True)
            out.append(a.detach().float())
        return torch.cat(out)
