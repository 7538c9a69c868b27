"""Model-parameter randomisation (Adebayo et al. 2018): the cascade, its RNG hygiene, the null reference and
the random-logit check (cxrbench/randomisation.py, cxrbench/explanation_metrics.randomise_weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from cxrbench import explanation_metrics as EM


def _rng_state():
    return torch.get_rng_state().clone()


def test_randomise_weights_leaves_the_global_rng_alone_and_keeps_its_values():
    """Same values as the old ``torch.manual_seed(seed)`` + resets, but torch's global state is unchanged."""
    torch.manual_seed(11)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 1, 8, 8))
    before = _rng_state()
    rnd = EM.randomise_weights(model, seed=5)
    assert torch.equal(before, _rng_state())
    torch.manual_seed(5)                                 # what randomise_weights did before: a global reseed
    import copy
    ref = copy.deepcopy(model)
    for mod in ref.modules():
        if hasattr(mod, "reset_parameters"):
            mod.reset_parameters()
    for (k, a), b in zip(rnd.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k
    assert not torch.equal(rnd[0].weight, model[0].weight)
