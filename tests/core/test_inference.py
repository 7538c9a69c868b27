"""Multiplicity adjustment and the two-level (training seeds x patients) bootstrap."""

import numpy as np
import pytest

from cxrbench.core.inference import adjust, holm, two_level_ci, variance_note


def test_holm_by_hand():
    # p sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> monotone 0.06)
    p = [0.03, 0.01, 0.04, 0.02]
    np.testing.assert_allclose(holm(p), [0.06, 0.04, 0.06, 0.06])
    np.testing.assert_allclose(holm([0.01, 0.9]), [0.02, 0.9])
    np.testing.assert_allclose(holm([0.6, 0.9]), [1.0, 1.0])              # capped at 1, monotone


def test_bh_by_hand_and_entries_without_p_are_not_in_the_family():
    entries = [{"p": 0.01}, {"p": 0.04}, {"p": 0.03}, {"p": 0.20}, {"status": "no_ci"}]
    assert adjust(entries, "bh", 0.05) == 4
    # BH: sorted 0.01, 0.03, 0.04, 0.20 -> 0.04, 0.0533, 0.0533, 0.20
    assert [e["p_adjusted"] for e in entries[:4]] == pytest.approx([0.04, 0.0533, 0.0533, 0.2], abs=1e-4)
    assert [e["significant"] for e in entries[:4]] == [True, False, False, False]
    assert "p_adjusted" not in entries[4]
    adjust(entries, "holm", 0.05)
    assert entries[0]["p_adjusted"] == pytest.approx(0.04) and entries[0]["family"]["method"] == "holm"
    with pytest.raises(ValueError, match="multiplicity"):
        adjust(entries, "bonferonni")


def _seeded(rng, n_seeds, n_patients=40, seed_sd=0.2, patient_sd=0.3):
    seed_effect = rng.normal(0, seed_sd, n_seeds)
    patient_effect = rng.normal(0, patient_sd, n_patients)
    v, s, g = [], [], []
    for k in range(n_seeds):
        for p in range(n_patients):
            for _ in range(1 + p % 3):
                v.append(seed_effect[k] + patient_effect[p] + rng.normal(0, 0.05))
                s.append(k)
                g.append(p)
    return np.array(v), np.array(s), np.array(g)


def test_two_level_interval_includes_training_variance():
    """Seeds differ by more than the test sampling: a patient-only interval undercovers the mean over training
    runs; the two-level one covers it."""
    from cxrbench.core.bootstrap import patient_mean_ci
    rng = np.random.default_rng(0)
    hits_two, hits_one, trials = 0, 0, 60
    for t in range(trials):
        v, s, g = _seeded(rng, n_seeds=5)
        two = two_level_ci(v, s, g, n_boot=300, seed=t)
        hits_two += two["low"] <= 0 <= two["high"]
        one = patient_mean_ci(v[s == 0], g[s == 0], n_boot=300, seed=t)      # one seed, patients only
        hits_one += one["low"] <= 0 <= one["high"]
    assert hits_two / trials >= 0.85 and hits_one / trials < 0.7
    assert "training seeds (5)" in two["variance"] and two["seeds"] == 5 and two["groups"] == 40


def test_two_level_estimate_is_the_mean_of_the_seeds_patient_weighted_means():
    rng = np.random.default_rng(1)
    v, s, g = _seeded(rng, n_seeds=3, n_patients=10)
    out = two_level_ci(v, s, g, n_boot=200)
    per_seed = [np.mean([v[(s == k) & (g == p)].mean() for p in range(10)]) for k in range(3)]
    assert out["estimate"] == pytest.approx(np.mean(per_seed))
    assert "one training seed" in variance_note(1)
    with pytest.raises(ValueError, match="one of each"):
        two_level_ci(v, s[:-1], g)


def test_two_level_p_against_zero_and_the_unit_in_words():
    rng = np.random.default_rng(2)
    v, s, g = _seeded(rng, n_seeds=4, n_patients=20)
    shifted = two_level_ci(v + 5.0, s, g, n_boot=300, unit="models")
    assert shifted["p"] < 0.01 and shifted["low"] > 0
    assert "models (4) and test patients" in shifted["variance"] and "models, then patients" in shifted["method"]
    centred = two_level_ci(v - two_level_ci(v, s, g, n_boot=10)["estimate"], s, g, n_boot=300)
    assert centred["p"] > 0.5
    for k in range(20):                            # the p agrees with the interval: p < 0.05 iff 0 is outside
        out = two_level_ci(v + 0.1 * k, s, g, n_boot=300, seed=k)
        assert (out["p"] < 0.05) == (not out["low"] <= 0 <= out["high"]), (k, out)
