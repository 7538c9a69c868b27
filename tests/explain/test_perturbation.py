"""Region perturbation, its fills (black, blur, ROAD) and tie-breaking: cxrbench.explain.metrics.perturbation."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from cxrbench.explain.metrics import perturbation as EM

META = torch.device("meta")


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(64, 2)).eval()


class TopHalf(nn.Module):
    """Logit of class 1 = 8 * (mean of the top half of the image) - 4: the model looks at rows 0 .. H/2."""

    def forward(self, x):
        z = 8 * x[:, 0, : x.shape[-2] // 2].mean((1, 2)) - 4
        return torch.stack([-z, z], 1)


def _road_reference(img: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """ROAD's NoisyLinearImputer without noise, as its authors wrote it: one sparse equation per removed
    pixel (weighted mean of the in-image neighbours), solved by scipy's spsolve."""
    from scipy.sparse import csc_matrix, lil_matrix
    from scipy.sparse.linalg import spsolve
    c, h, w = img.shape
    flat_rm = removed.ravel()
    idx = np.flatnonzero(flat_rm)
    vid = -np.ones(h * w, int)
    vid[idx] = np.arange(len(idx))
    weights = np.array(EM.ROAD_WEIGHTS)
    a, b, diag = lil_matrix((len(idx), len(idx))), np.zeros((len(idx), c)), np.zeros(len(idx))
    flat = img.reshape(c, -1)
    for k, i in enumerate(idx):
        y, x = divmod(int(i), w)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                wt = weights[dy + 1, dx + 1]
                yy, xx = y + dy, x + dx
                if wt == 0 or not (0 <= yy < h and 0 <= xx < w):
                    continue
                j = yy * w + xx
                diag[k] += wt
                if flat_rm[j]:
                    a[k, vid[j]] = -wt
                else:
                    b[k] += wt * flat[:, j]
    a.setdiag(diag)
    sol = np.asarray(spsolve(csc_matrix(a), b)).reshape(len(idx), c)
    out = flat.astype(np.float64).copy()
    out[:, idx] = sol.T
    return out.reshape(c, h, w)


@pytest.mark.parametrize("solver", EM.ROAD_SOLVERS)
def test_road_imputation_matches_the_sparse_solve_of_road(solver):
    rng = np.random.default_rng(0)
    img = rng.random((3, 2, 24, 24))
    removed = rng.random((3, 24, 24)) < 0.3
    removed[1, 4:20, 2:22] = True                     # one large hole: CG needs many iterations
    removed[2, :, :12] = True                         # a hole touching three borders
    out, residual = EM.noisy_linear_imputation(torch.tensor(img, dtype=torch.float32), torch.tensor(removed),
                                               noise=0.0, solver=solver, tol=1e-5)
    assert (residual.numpy() <= 1e-5).all()
    for i in range(3):
        ref = _road_reference(img[i], removed[i])
        np.testing.assert_allclose(out[i].numpy(), ref, atol=1e-4)
        kept = ~removed[i]
        np.testing.assert_array_equal(out[i].numpy()[:, kept], img[i].astype(np.float32)[:, kept])


def test_road_direct_solve_is_exact_in_float64():
    """The direct solve is the reference's own system: in float64 they agree to rounding (a wrong weight,
    neighbour or border rule is off by far more than 1e-9), image by image in one block-diagonal solve."""
    rng = np.random.default_rng(1)
    img = rng.random((4, 3, 20, 17))
    removed = rng.random((4, 20, 17)) < 0.4
    removed[0] = False                                # an image with nothing removed
    removed[3, 2:18, 1:16] = True
    out, residual = EM.noisy_linear_imputation(torch.tensor(img), torch.tensor(removed), noise=0.0)
    assert out.dtype == torch.float64 and (residual.numpy() <= 1e-12).all()
    for i in range(4):
        np.testing.assert_allclose(out[i].numpy(), _road_reference(img[i], removed[i]), rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="solver must be one of"):
        EM.noisy_linear_imputation(torch.tensor(img), torch.tensor(removed), noise=0.0, solver="lu")


def test_road_noise_is_seeded_per_image_and_only_on_removed_pixels():
    x = torch.rand(4, 1, 16, 16)
    rm = torch.zeros(4, 16, 16, dtype=torch.bool)
    rm[:, 4:8, 4:8] = True
    clean, _ = EM.noisy_linear_imputation(x, rm, noise=0.0)
    a, _ = EM.noisy_linear_imputation(x, rm, noise=0.05, seeds=[1, 2, 3, 4])
    b, _ = EM.noisy_linear_imputation(x[2:], rm[2:], noise=0.05, seeds=[3, 4])
    torch.testing.assert_close(a[2:], b)                       # an image's noise does not depend on its batch
    d = (a - clean)[:, 0]
    assert d[:, ~rm[0]].abs().max() == 0
    assert 0.02 < d[:, rm[0]].std() < 0.08


@pytest.mark.parametrize("fill", EM.FILLS)
def test_region_curves_do_not_depend_on_batching(fill):
    x, maps = torch.rand(5, 1, 32, 32), np.random.default_rng(2).standard_normal((5, 32, 32)).astype(np.float32)
    kw = dict(scheme="region", fill=fill, patch=4, steps=12, blur_sigma=2.0, road_noise=0.01, seed=3)
    one = EM.perturbation_curves(_net(), x, maps, 1, images_per_batch=1, **kw)
    three = EM.perturbation_curves(_net(), x, maps, 1, images_per_batch=3, **kw)
    # drops are differences of float32 probabilities in [0, 1]: batches of 1 and 3 may round differently
    # (CPU-dependent kernels; the road fill's solve stays float32 even for a float64 model), by a few
    # eps32 = 1.2e-7 (measured <= 1.8e-7); 1e-6 allows 8 eps32, far below a wrong image's or patch's drop
    np.testing.assert_allclose(one["drop"], three["drop"], atol=1e-6)


class _Counting(nn.Module):
    """``net`` in float64, counting the images it is fed."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.images = net.double(), 0

    def forward(self, x):
        self.images += len(x)
        return self.net(x.double())


@pytest.mark.parametrize("scheme", EM.SCHEMES)
def test_a_given_p0_gives_the_same_curves_without_forwarding_the_originals(scheme):
    x, maps = torch.rand(5, 1, 32, 32), np.random.default_rng(4).standard_normal((5, 32, 32)).astype(np.float32)
    target = torch.tensor([1, 0, 1, 1, 0])
    kw = dict(scheme=scheme, images_per_batch=2, patch=4, steps=12, seed=3)
    plain, reuse = _Counting(_net()), _Counting(_net())
    ref = EM.perturbation_curves(plain, x, maps, target, **kw)
    p0 = EM.target_probability(reuse, x, target, batch=4)
    fed = reuse.images
    got = EM.perturbation_curves(reuse, x, maps, target, p0=p0, **kw)
    n_levels = ref["p"].shape[1]
    assert plain.images == 5 * (1 + n_levels) and reuse.images - fed == 5 * n_levels
    # a float64 model: the probabilities of one image in two batch compositions agree to float64 rounding
    # (then stored as float32 probabilities: within one eps32 = 1.2e-7 of each other)
    for k in ("p0", "p", "drop", "aoppc"):
        np.testing.assert_allclose(got[k], ref[k], atol=2.4e-7, rtol=0)
    with pytest.raises(ValueError, match="p0 holds 4 probabilities for 5 images"):
        EM.perturbation_curves(reuse, x, maps, target, p0=p0[:4], **kw)


def test_region_black_matches_quantus_region_perturbation():
    """Cross-check with Quantus 0.6.0's RegionPerturbation (Samek et al. 2017) on the same model, inputs and
    maps: same patches, same MoRF order, same zero fill -> the same probability drops at every step (our
    model outputs logits; Quantus is given the sigmoid probabilities with softmax off). Maps are continuous
    (no ties, so both orders agree) and the patch divides the side (Quantus pads otherwise)."""
    quantus = pytest.importorskip("quantus")
    net = _net()
    x = torch.rand(5, 1, 32, 32)
    maps = np.random.default_rng(1).standard_normal((5, 32, 32)).astype(np.float32)
    y = np.array([1, 0, 1, 1, 0])
    for order in ("morf", "lerf"):
        ours = EM.perturbation_curves(net, x, maps, torch.tensor(y), scheme="region", order=order, patch=4,
                                      steps=12, fill="black")
        metric = quantus.RegionPerturbation(patch_size=4, regions_evaluation=12, order=order, abs=False,
                                            normalise=False, perturb_baseline=0.0, disable_warnings=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = np.array(metric(model=nn.Sequential(net, nn.Sigmoid()).eval(), x_batch=x.numpy(), y_batch=y,
                                a_batch=maps[:, None], softmax=False, device="cpu"))
        # float32 probabilities in [0, 1] from two batchings of the same net: a few eps32 = 1.2e-7 apart
        # (measured <= 6e-8); 1e-6 allows 8 eps32, far below a wrong patch's or order's drop
        np.testing.assert_allclose(ours["drop"], q, atol=1e-6)
        # Samek's AOPC: steps 0..L, step 0 a drop of 0
        np.testing.assert_allclose(ours["aoppc"], q.sum(1) / 13, atol=1e-6)


def test_region_removal_adds_one_patch_per_step_in_importance_order():
    imp = torch.zeros(1, 8, 8)
    imp[0, 4:6, 2:4] = 3.0            # patch (2, 1) with patch side 2
    imp[0, 0:2, 6:8] = 2.0            # patch (0, 3)
    rm = EM.region_removal(imp, "morf", patch=2, steps=3)
    assert rm.shape == (1, 3, 8, 8)
    assert rm[0, 0].sum() == 4 and rm[0, 0, 4:6, 2:4].all()
    assert rm[0, 1].sum() == 8 and rm[0, 1, 0:2, 6:8].all()
    assert rm[0, 2].sum() == 12
    assert (rm[0, 1] >= rm[0, 0]).all() and (rm[0, 2] >= rm[0, 1]).all()
    lerf = EM.region_removal(imp, "lerf", patch=2, steps=3)
    assert not lerf[0, 2, 4:6, 2:4].any() and not lerf[0, 2, 0:2, 6:8].any()
    with pytest.raises(ValueError, match="leave at least one patch"):
        EM.region_removal(imp, "morf", patch=2, steps=16)


def test_ties_are_broken_by_a_seeded_permutation_not_raster_order():
    """A constant map ranks every pixel equally. Raster order removed the top rows first (0.654 vs 0.253
    for one image and its 180-degree rotation); a seeded random order removes a spread-out subset, so the
    score hardly depends on where the model looks, and it is reproducible."""
    model = TopHalf()
    x = 0.5 + 0.5 * torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    rot = torch.flip(x, dims=(2, 3))
    const = np.ones((1, 32, 32), np.float32)
    for scheme, kw in (("pixels", {}), ("region", {"patch": 4, "steps": 20})):
        a = EM.perturbation_curves(model, x, const, 1, scheme=scheme, seed=0, **kw)["aoppc"][0]
        b = EM.perturbation_curves(model, rot, const, 1, scheme=scheme, seed=0, **kw)["aoppc"][0]
        assert abs(a - b) < 0.05, (scheme, a, b)
        again = EM.perturbation_curves(model, x, const, 1, scheme=scheme, seed=0, **kw)["aoppc"][0]
        assert a == again
    # the raster order this replaced: a stable descending sort removes the top rows first
    flat = torch.ones(1, 32 * 32)
    raster = torch.argsort(flat, dim=1, descending=True, stable=True)[0, :512]
    assert (raster // 32 < 16).all()
    ranked = EM.rank_descending(flat, seed=0)[0]
    assert 0.35 < ((ranked < 512).view(32, 32)[:16].float().mean()) < 0.65


def test_rank_descending_orders_distinct_values_and_is_seed_dependent_only_for_ties():
    s = torch.tensor([[0.1, 0.9, 0.5, 0.5, 0.2]])
    r0, r1 = EM.rank_descending(s, seed=0), EM.rank_descending(s, seed=1)
    assert r0[0, 1] == 0 and r0[0, 0] == 4 and r0[0, 4] == 3
    assert sorted(r0[0, 2:4].tolist()) == [1, 2]
    assert r1[0, [0, 1, 4]].tolist() == r0[0, [0, 1, 4]].tolist() and sorted(r1[0, 2:4].tolist()) == [1, 2]
    ties = {tuple(EM.rank_descending(s, seed=k)[0, 2:4].tolist()) for k in range(20)}
    assert ties == {(1, 2), (2, 1)}                     # the seed decides the order of the tied pair only
    distinct = torch.rand(3, 50)
    torch.testing.assert_close(EM.rank_descending(distinct, 0), EM.rank_descending(distinct, 7))


def test_blur_fill_replaces_removed_patches_by_the_blurred_image():
    x = torch.rand(2, 1, 16, 16)
    blurred = EM.gaussian_blur(x, 1.5)
    assert blurred.shape == x.shape and blurred.std() < x.std()
    torch.testing.assert_close(EM.gaussian_blur(torch.full((1, 1, 8, 8), 0.3), 1.0), torch.full((1, 1, 8, 8), 0.3))


@pytest.mark.parametrize("fill", EM.FILLS)
@pytest.mark.parametrize("order", EM.ORDERS)
def test_region_fills_stay_on_the_inputs_device(fill, order):
    """Region perturbation with every fill runs on the input's device (meta: no data, so a tensor made on
    the host and met on the device would fail)."""
    torch.manual_seed(0)
    model = _net().to(META)
    x = torch.rand(3, 1, 16, 16, device=META)
    maps = np.random.default_rng(0).standard_normal((3, 16, 16)).astype(np.float32)
    r = EM.perturbation_tensors(model, x, maps, torch.tensor([1, 0, 1], device=META), scheme="region",
                                order=order, fill=fill, patch=2, steps=10, blur_sigma=1.0, images_per_batch=2)
    assert {v.device for v in r.values()} == {META}
    assert tuple(r["drop"].shape) == (3, 10)


def test_fills_other_than_black_are_refused_for_the_pixel_schemes():
    with pytest.raises(ValueError, match="fills are for 'region'"):
        EM.perturbation_curves(_net(), torch.rand(1, 1, 16, 16), np.ones((1, 16, 16), np.float32), 1,
                               scheme="pixels", fill="blur")
    with pytest.raises(ValueError, match="fill must be one of"):
        EM.perturbation_curves(_net(), torch.rand(1, 1, 16, 16), np.ones((1, 16, 16), np.float32), 1,
                               scheme="region", fill="grey")


# --- aggregation: gain over random with CIs over patients, rank agreement, removed share ---------------------

def _scores_with(values: dict, patients: np.ndarray, metric: str = "aoppc_region_black_morf"):
    from cxrbench.explain.metrics import tables as AT
    scores = AT.new_scores()
    n = len(patients)
    for m, v in values.items():
        AT.add_status(scores, m, "b", 0, np.array(["ok"] * n, dtype=object))
        AT.add_values(scores, m, "b", 0, metric, v, np.arange(n))
    scores["groups"][("b", "f0")] = patients
    return scores


def _multi_metric_scores(values: dict, patients: np.ndarray):
    """values: metric -> method -> per-image values; one backbone, one fold."""
    from cxrbench.explain.metrics import tables as AT
    scores = AT.new_scores()
    n = len(patients)
    for metric, per in values.items():
        for m, v in per.items():
            AT.add_status(scores, m, "b", 0, np.array(["ok"] * n, dtype=object))
            AT.add_values(scores, m, "b", 0, metric, v, np.arange(n))
    scores["groups"][("b", "f0")] = patients
    return scores


STATS = {"resamples": 400, "seed": 0, "confidence": 0.95}


def test_gain_is_per_image_difference_with_a_patient_bootstrap():
    from cxrbench.explain.metrics import tables as AT
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(10), 2)                  # 10 patients, 2 images each
    rnd = rng.normal(0.1, 0.05, 20)
    good = rnd + 0.2 + rng.normal(0, 0.01, 20)
    same = rnd.copy()
    scores = _scores_with({"good": good, "same": same, "random": rnd}, patients)
    g = AT.gains(scores, ["good", "same"], ["aoppc_region_black_morf"], STATS)
    cell = g["pooled"]["good|aoppc_region_black_morf"]
    assert cell["mean"] == pytest.approx(float((good - rnd).mean()), abs=1e-4)   # equal sizes: either weighting
    assert cell["n"] == 20 and cell["patients"] == 10 and 0.18 < cell["low"] < cell["mean"] < cell["high"] < 0.22
    assert cell["p"] < 0.01 and cell["significant"] and cell["family"]["size"] == 1 and not cell["at_chance"]
    zero = g["pooled"]["same|aoppc_region_black_morf"]
    assert zero["mean"] == 0 and zero["low"] is None and zero["status"] == "no_ci"   # no spread: a status
    assert g["chance"] == 0.0 and "test patients only" in g["variance"]
    one = AT.gain_ci(np.array([0.1, 0.2]), np.array(["p", "p"], dtype=object), STATS)
    assert one["low"] is None and one["status"] == "no_ci" and "1 patient" in one["reason"]


def test_gain_mean_weights_patients_not_images():
    """One patient with 12 images of gain 1 among 8 patients of gain 0: the patient-weighted mean is 1/9."""
    from cxrbench.explain.metrics import tables as AT
    patients = np.array([0] * 12 + list(range(1, 9)))
    gains = np.array([1.0] * 12 + [0.0] * 8) + np.linspace(0, 1e-3, 20)
    cell = AT.gain_ci(gains, patients.astype(object), STATS)
    assert cell["mean"] == pytest.approx(float(np.mean([gains[:12].mean(), *gains[12:]])), abs=1e-4)
    assert cell["image_mean"] == pytest.approx(float(gains.mean()), abs=1e-4)
    assert cell["mean"] < 0.2 < cell["image_mean"]


def test_at_chance_only_from_the_equivalence_test():
    from cxrbench.explain.metrics import tables as AT
    rng = np.random.default_rng(2)
    patients = np.arange(60).astype(object)
    tight = AT.gain_ci(rng.normal(0, 0.01, 60), patients, STATS)          # CI well inside +- 0.02
    wide = AT.gain_ci(rng.normal(0, 0.5, 60), patients, STATS)            # CI includes 0 but also +- 0.1
    assert tight["at_chance"] and tight["equivalence"]["p"] < 0.05
    assert wide["low"] < 0 < wide["high"] and not wide["at_chance"]


def test_holm_adjusts_across_the_table():
    from cxrbench.explain.metrics import tables as AT
    rng = np.random.default_rng(3)
    patients = np.repeat(np.arange(30), 2)
    rnd = rng.normal(0, 0.1, 60)
    methods = {f"m{k}": rnd + rng.normal(0.0, 0.1, 60) for k in range(8)}
    g = AT.gains(_scores_with({**methods, "random": rnd}, patients), list(methods), ["aoppc_region_black_morf"],
                 STATS)
    cells = list(g["pooled"].values())
    assert {c["family"]["size"] for c in cells} == {8}
    assert all(c["p_adjusted"] >= c["p"] for c in cells)


def test_a_clear_gain_survives_holm_across_a_large_table():
    """65 comparisons (13 methods x 5 perturbations, as the ci profile's table): a bootstrap p is at least
    1 / (resamples + 1), so with 1000 resamples Holm could never go below 65 / 1001 = 0.065 and no gain was
    ever marked. The resamples now grow with the table, and a gain of 10 standard errors is significant."""
    from cxrbench.explain.metrics import tables as AT
    rng = np.random.default_rng(8)
    patients = np.repeat(np.arange(30), 2)
    rnd = rng.normal(0, 0.1, 60)
    methods = {f"m{k}": rnd + (0.3 if k == 0 else 0.0) + rng.normal(0.0, 0.05, 60) for k in range(13)}
    metrics = [f"aoppc_region_{f}_morf" for f in ("black", "blur", "road")] + ["aoppc_pixels_morf",
                                                                               "aoppc_threshold_morf"]
    scores = _multi_metric_scores({me: {**methods, "random": rnd} for me in metrics}, patients)
    g = AT.gains(scores, list(methods), metrics, STATS)
    cell = g["pooled"]["m0|aoppc_region_black_morf"]
    assert cell["family"]["size"] == 65 and cell["p"] < 0.05 / 65 and cell["significant"]
    assert not g["pooled"]["m1|aoppc_region_black_morf"].get("significant")


def test_kendall_w_and_rank_agreement_with_a_ci():
    from cxrbench.explain.metrics import tables as AT
    same = np.array([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]], float)
    assert AT.kendall_w(same) == pytest.approx(1.0)
    opposite = np.array([[1, 2, 3, 4], [4, 3, 2, 1]], float)
    assert AT.kendall_w(opposite) == pytest.approx(0.0)
    rng = np.random.default_rng(1)
    patients = np.repeat(np.arange(30), 2)
    base = rng.normal(0, 0.05, 60)
    fills = {"black": [0.3, 0.2, 0.1], "blur": [0.1, 0.2, 0.3], "road": [0.3, 0.2, 0.1]}
    values = {f"aoppc_region_{f}_morf": {"random": base, **{m: base + v + rng.normal(0, 0.02, 60)
                                                           for m, v in zip("abc", order)}}
              for f, order in fills.items()}
    scores = _multi_metric_scores(values, patients)
    metrics = [f"aoppc_region_{f}_morf" for f in fills]
    sets, _, _ = AT.common_images(scores, ["a", "b", "c", "random"])
    ag = AT.rank_agreement(scores, ["a", "b", "c"], metrics, STATS, sets)
    assert ag["ranking"]["aoppc_region_black_morf"] == ["a", "b", "c"]
    assert ag["ranking"]["aoppc_region_blur_morf"] == ["c", "b", "a"]
    assert ag["pairs"]["aoppc_region_black_morf vs aoppc_region_road_morf"] == 1.0
    assert ag["pairs"]["aoppc_region_black_morf vs aoppc_region_blur_morf"] == -1.0
    assert 0 < ag["kendall_w"] < 1 and ag["kendall_w_ci"]["status"] == "ok"
    assert ag["kendall_w_ci"]["low"] <= ag["kendall_w"] <= ag["kendall_w_ci"]["high"]


def test_a_winner_needs_paired_intervals_that_exclude_every_other_method():
    from cxrbench.explain.metrics import tables as AT
    rng = np.random.default_rng(4)
    patients = np.repeat(np.arange(30), 2)
    base = rng.normal(0, 0.1, 60)
    clear = {"random": base, "a": base + 0.3 + rng.normal(0, 0.02, 60), "b": base + 0.1 + rng.normal(0, 0.02, 60)}
    close = {"random": base, "a": base + 0.101 + rng.normal(0, 0.05, 60), "b": base + 0.1 + rng.normal(0, 0.05, 60)}
    scores = _multi_metric_scores({"aoppc_region_black_morf": clear, "aoppc_region_blur_morf": close}, patients)
    sets, _, _ = AT.common_images(scores, ["a", "b", "random"])
    w = AT.winners(scores, ["a", "b"], ["aoppc_region_black_morf", "aoppc_region_blur_morf"], STATS, sets)
    assert w["aoppc_region_black_morf"]["leader"] == "a" and w["aoppc_region_black_morf"]["clear"]
    assert not w["aoppc_region_blur_morf"]["clear"] and w["aoppc_region_blur_morf"]["tied_with"]


def _fold_scores(values_by_fold: list[dict], patients: np.ndarray, metric: str = "aoppc_region_black_morf"):
    """values_by_fold[k]: method -> per-image values of fold k's model; every model explains the same images."""
    from cxrbench.explain.metrics import tables as AT
    scores = AT.new_scores()
    n = len(patients)
    for k, values in enumerate(values_by_fold):
        for m, v in values.items():
            AT.add_status(scores, m, "b", k, np.array(["ok"] * n, dtype=object))
            AT.add_values(scores, m, "b", k, metric, v, np.arange(n))
        scores["groups"][("b", f"f{k}")] = patients
    return scores


def test_gain_across_models_includes_the_variance_between_trained_models():
    """Five models whose gains differ by model (+0.30 to -0.10) and barely by patient: the interval over patients
    alone is narrow and above 0, the two-level interval over models and patients includes 0, and the model whose
    mean has the other sign is flagged."""
    from cxrbench.explain.metrics import tables as AT
    from cxrbench.explain.metrics import tables_text as TT
    rng = np.random.default_rng(5)
    patients = np.arange(40).astype(object)
    shifts = [0.30, 0.25, 0.20, 0.05, -0.10]
    folds = []
    for sh in shifts:
        rnd = rng.normal(0, 0.02, 40)
        folds.append({"random": rnd, "a": rnd + sh + rng.normal(0, 0.02, 40)})
    g = AT.gains(_fold_scores(folds, patients), ["a"], ["aoppc_region_black_morf"], STATS)
    one = g["pooled"]["a|aoppc_region_black_morf"]
    two = g["across_models"]["pooled"]["a|aoppc_region_black_morf"]
    assert one["low"] > 0.1                                               # patients only: confidently above 0
    assert two["models"] == 5 and two["patients"] == 40 and two["status"] == "ok"
    assert two["low"] < 0 < two["high"] and not two["significant"]
    assert two["mean"] == pytest.approx(np.mean(shifts), abs=0.01)
    assert two["per_model"]["b|f4"] < 0 < two["per_model"]["b|f0"] and not two["sign_agrees"]
    assert "models (5) and test patients" in two["variance"]
    md = TT.markdown({"pooled": {"random|aoppc_region_black_morf": {}}, "maps": {"by_method": {}},
                      "sanity": {"by_method": {}},
                      "common": {"images": {"pooled": 200, "scored": 200, "by_backbone": {}}, "missing": [],
                                 "pooled": {}, "by_backbone": {}}, "gain": g}, ["a"], {})
    assert "5 models" in md and " !)" in md


def test_a_gain_reliably_below_the_random_map_is_starred_and_the_legend_says_two_sided():
    """The gains' p values are two-sided: a method reliably worse than the random map is marked * too, so the
    legend must not read "above 0" (it once did, beside saliency's -0.126*)."""
    from cxrbench.explain.metrics import tables as AT
    from cxrbench.explain.metrics import tables_text as TT
    rng = np.random.default_rng(6)
    patients = np.arange(40).astype(object)
    folds = []
    for _ in range(5):
        rnd = rng.normal(0, 0.02, 40)
        folds.append({"random": rnd, "a": rnd - 0.2 + rng.normal(0, 0.02, 40)})
    g = AT.gains(_fold_scores(folds, patients), ["a"], ["aoppc_region_black_morf"], STATS)
    one = g["pooled"]["a|aoppc_region_black_morf"]
    two = g["across_models"]["pooled"]["a|aoppc_region_black_morf"]
    assert one["high"] < 0 and one["significant"] and two["high"] < 0 and two["significant"]
    md = TT.markdown({"pooled": {"random|aoppc_region_black_morf": {}}, "maps": {"by_method": {}},
                      "sanity": {"by_method": {}},
                      "common": {"images": {"pooled": 200, "scored": 200, "by_backbone": {}}, "missing": [],
                                 "pooled": {}, "by_backbone": {}}, "gain": g}, ["a"], {})
    assert "above 0 after" not in md and md.count("differs from 0 (two-sided") == 2
    assert f"| a | - | - | {one['mean']:+.3f} [{one['low']:+.3f}, {one['high']:+.3f}]* |" in md


def test_gain_across_models_is_no_ci_with_one_model():
    from cxrbench.explain.metrics import tables as AT
    patients = np.arange(10).astype(object)
    rnd = np.linspace(0, 0.1, 10)
    g = AT.gains(_fold_scores([{"random": rnd, "a": rnd + 0.2}], patients), ["a"], ["aoppc_region_black_morf"],
                 STATS)
    assert g["across_models"]["pooled"] == {} and "one model" in g["across_models"]["note"]
    cell = AT.across_models_ci(rnd, patients, np.array(["m"] * 10, dtype=object), STATS)
    assert cell["status"] == "no_ci" and cell["low"] is None and "1 model" in cell["reason"]


def test_a_winner_that_another_model_overturns_is_not_clear_across_models():
    """Method a leads b by 0.08 on four models and trails by 0.2 on the fifth: over patients the pooled lead is
    clear, over models and patients it is not, and the fifth model names b first."""
    from cxrbench.explain.metrics import tables as AT
    rng = np.random.default_rng(6)
    patients = np.arange(40).astype(object)
    folds = []
    for lead in [0.08, 0.08, 0.08, 0.08, -0.2]:
        rnd = rng.normal(0, 0.05, 40)
        b = rnd + 0.2 + rng.normal(0, 0.005, 40)
        folds.append({"random": rnd, "a": b + lead + rng.normal(0, 0.005, 40), "b": b})
    scores = _fold_scores(folds, patients)
    sets, _, _ = AT.common_images(scores, ["a", "b", "random"])
    w = AT.winners(scores, ["a", "b"], ["aoppc_region_black_morf"], STATS, sets)["aoppc_region_black_morf"]
    assert w["leader"] == "a"
    a = w["across_models"]
    assert a["models"] == 5 and not a["same_leader"] and a["leader_by_model"]["b|f4"] == "b"
    assert not a["clear"] and a["tied_with"] == ["b"]
    from cxrbench.explain.metrics import tables_text as TT
    assert "first in 4 of the 5 models alone" in TT._winner_text(w)


def test_removed_share_weights_folds_by_their_images():
    from cxrbench.explain.metrics import tables as AT
    rows = [{"method": "m", "scheme": "threshold", "order": "morf", "level": 0.1, "removed": 1.0, "images": 3},
            {"method": "m", "scheme": "threshold", "order": "morf", "level": 0.1, "removed": 0.0, "images": 1},
            {"method": "m", "scheme": "pixels", "order": "morf", "level": 0.1, "removed": 0.5, "images": 9}]
    assert AT.removed_share(rows) == {"m": {"0.1": 0.75}}


def test_region_settings_are_validated_with_the_param_named(params):
    from cxrbench.core.params import ParamError, with_overrides
    from cxrbench.explain.metrics import scoring as AS
    s = AS.validate(params)
    k = AS.perturbation_settings(s, 512)
    assert k["patch"] == round(params["aoppc"]["region"]["patch"] * 512) and k["steps"] == s.steps
    with pytest.raises(ParamError, match="aoppc.region.steps"):
        AS.perturbation_settings(AS.validate(with_overrides(params, {"aoppc.region.steps": 400})), 64)
    with pytest.raises(ParamError, match="aoppc.region.fills"):
        AS.validate(with_overrides(params, {"aoppc.region.fills": ["grey"]}))
    with pytest.raises(ParamError, match="aoppc.region.road_noise"):
        AS.validate(with_overrides(params, {"aoppc.region.road_noise": -1}))


def test_quantus_map_properties_on_maps_with_known_answers():
    """Sparseness (Gini of |map|) and complexity (entropy of the shares) from Quantus: a 4 x 4 block carries
    all the mass -> entropy ln 16 and a Gini near 1; a uniform random map -> Gini about 1/3 and entropy
    near ln(H x W)."""
    from cxrbench.explain.metrics import properties as MP
    block = np.zeros((1, 64, 64), np.float32)
    block[0, 10:14, 20:24] = 1.0
    noise = np.random.default_rng(0).random((1, 64, 64)).astype(np.float32)
    p = MP.properties(np.concatenate([block, noise]))
    assert p["complexity"][0] == pytest.approx(np.log(16), abs=1e-4)
    assert p["sparseness"][0] > 0.99 and 0.30 < p["sparseness"][1] < 0.36
    assert np.log(64 * 64) - 0.3 < p["complexity"][1] < np.log(64 * 64)
    assert {k: len(v) for k, v in MP.properties(np.zeros((0, 8, 8))).items()} == {"sparseness": 0, "complexity": 0}


def test_map_properties_of_all_negative_maps_are_those_of_their_magnitude():
    """Quantus scores |map| but refuses a batch whose values are all negative (the aoppc stage crashed on a
    signed map of an untrained VGG-16). Negated maps score as the maps themselves, and a mixed-sign batch scores
    as Quantus scores it when given the signed values."""
    import quantus

    from cxrbench.explain.metrics import properties as MP
    rng = np.random.default_rng(1)
    maps = rng.random((3, 16, 16)).astype(np.float32)
    pos, neg = MP.properties(maps), MP.properties(-maps)
    for k in pos:
        np.testing.assert_array_equal(pos[k], neg[k])
    mixed = (rng.random((3, 16, 16)) - 0.3).astype(np.float32)
    x, y = np.zeros_like(mixed[:, None]), np.zeros(3, dtype=int)
    ours = MP.properties(mixed)
    for name, metric in (("sparseness", quantus.Sparseness), ("complexity", quantus.Complexity)):
        theirs = metric(disable_warnings=True)(model=None, x_batch=x, y_batch=y, a_batch=mixed[:, None])
        np.testing.assert_allclose(ours[name], np.asarray(theirs, np.float64), rtol=1e-6)


def test_pooled_cells_carry_a_patient_weighted_mean_beside_the_image_mean():
    from cxrbench.explain.metrics import tables as AT
    patients = np.array([0] * 12 + list(range(1, 5)))          # one patient holds 12 of 16 images
    v = np.array([1.0] * 12 + [0.0] * 4)
    scores = _scores_with({"m": v, "random": np.zeros(16)}, patients)
    cell = AT.pooled(scores)["m|aoppc_region_black_morf"]
    assert cell["mean"] == 0.75 and cell["patient_mean"] == 0.2 and cell["patients"] == 5
