"""The gate's paired per-image checks: a planted regression (one method's maps shuffled across images) fails the
gate at a 0.05 tolerance under the black fill and a fill-neutral one (blur), where the former unpaired
tolerance of 0.25 passes it; an unchanged run passes; a changed sample is UNPAIRED, not compared."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import yaml

from cxrbench.core.io import write_csv
from cxrbench.core.params import ParamError
from cxrbench.explain.metrics import perturbation as EM
from cxrbench.explain.metrics import tables as AT
from cxrbench.ops import gate, paired

SIDE, N = 32, 24
CHECKS = [
    {"metric": "metrics/aoppc_per_image.csv:ixg|aoppc_pixels_morf - random", "paired": True, "tolerance": 0.05,
     "direction": "higher", "reason": "the method's gain over random, black fill, image by image"},
    {"metric": "metrics/aoppc_per_image.csv:ixg|aoppc_region_blur_morf - random", "paired": True,
     "tolerance": 0.05, "direction": "higher", "reason": "the same under a fill-neutral perturbation (blur)"},
]


class Quad(nn.Module):
    """logit = 40 x the centre-weighted mean of x^2 - 3 (and its negative): its input x gradient map, 2 w x^2,
    differs from image to image, so another image's map removes the wrong pixels."""

    def __init__(self):
        super().__init__()
        yy, xx = np.mgrid[:SIDE, :SIDE]
        w = np.exp(-((yy - SIDE / 2) ** 2 + (xx - SIDE / 2) ** 2) / (2 * (SIDE / 4) ** 2))
        self.register_buffer("w", torch.as_tensor(w, dtype=torch.float32))

    def forward(self, x):
        z = (x ** 2 * self.w).sum((1, 2, 3)) / self.w.sum() * 40 - 3
        return torch.stack([z, -z], 1)


def _images():
    rng = np.random.default_rng(0)
    x = np.zeros((N, 1, SIDE, SIDE), np.float32)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    for i in range(N):
        for _ in range(3):                                  # three bright blobs per image, placed at random
            cy, cx = rng.integers(4, SIDE - 4, 2)
            x[i, 0][(yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(2, 6) ** 2] = rng.uniform(0.5, 1)
    return torch.as_tensor(x)


def _run(root: Path, shuffle: bool = False, images=slice(None)):
    """metrics/aoppc_per_image.csv of a run scoring the method `ixg` and the random map with the project's
    perturbation curves (pixel deletion, black; region perturbation, blur)."""
    model, x = Quad().eval(), _images()[images]
    maps = (2 * model.w * x[:, 0] ** 2).numpy()
    if shuffle:
        maps = np.roll(maps, 1, axis=0)                     # the planted regression: each image gets another's map
    named = {"ixg": maps, "random": EM.random_maps(maps.shape, 0)}
    scores = AT.new_scores()
    n = len(x)
    scores["groups"][("toy", "f0")] = np.array([f"p{i // 2}" for i in range(N)])[images]
    t = torch.zeros(n, dtype=torch.long)
    for m, a in named.items():
        pix = EM.perturbation_curves(model, x, a, t, scheme="pixels", order="morf", images_per_batch=8, seed=0)
        blur = EM.perturbation_curves(model, x, a, t, scheme="region", order="morf", images_per_batch=8, fill="blur",
                                      patch=4, steps=8, blur_sigma=2.0, road_noise=0.01, seed=0)
        AT.add_values(scores, m, "toy", 0, "aoppc_pixels_morf", pix["aoppc"], np.arange(n))
        AT.add_values(scores, m, "toy", 0, "aoppc_region_blur_morf", blur["aoppc"], np.arange(n))
    paths = {("toy", "f0"): np.array([f"img{i}.png" for i in range(N)])[images]}
    write_csv(root / "metrics/aoppc_per_image.csv", pd.DataFrame(AT.per_image_rows(scores, paths)))


def _params(root: Path, tolerance: float = 0.05) -> Path:
    checks = [{**c, "tolerance": tolerance} for c in CHECKS]
    p = {"gate": {"baseline": str(root / "baselines/ci.json"), "per_image_baseline": str(root / "baselines/pi.csv"),
                  "paired_max_tolerance": 0.05 if tolerance <= 0.05 else None, "checks": checks}}
    p["gate"] = {k: v for k, v in p["gate"].items() if v is not None}
    (root / "params.yaml").write_text(yaml.safe_dump(p))
    return root / "params.yaml"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for name, kw in (("base", {}), ("same", {}), ("shuffled", {"shuffle": True}), ("fewer", {"images": slice(0, 12)})):
        root = tmp_path_factory.mktemp(name)
        (root / "metrics").mkdir()
        _run(root, **kw)
        out[name] = root
    params = _params(out["base"])
    assert gate.main(["snapshot", "--params", str(params), "--root", str(out["base"])]) == 0
    return out, params


def test_the_planted_regression_fails_the_paired_gate_and_an_unchanged_run_passes(runs, capsys):
    (r, params) = runs
    assert gate.main(["check", "--params", str(params), "--root", str(r["same"])]) == 0
    cfg = gate.config_from_params(yaml.safe_load(params.read_text()))
    code, rows = gate.check(cfg, r["shuffled"])
    assert code == 1 and [row["status"] for row in rows] == ["REGRESSION", "REGRESSION"]
    for row in rows:                        # the drop is many times the tolerance, and its CI excludes it
        assert row["change"] < -0.1 and row["paired"]["high"] < -0.05 and row["paired"]["paired"] == N
    assert gate.main(["check", "--params", str(params), "--root", str(r["shuffled"])]) == 1
    assert "images paired" in capsys.readouterr().out


def test_the_former_unpaired_tolerance_passes_the_same_regression(runs):
    """At 0.25 (the tolerance the gate had on occlusion's gain) the shuffled maps' black-fill gain still passes:
    the regression is real, the old tolerance could not see it."""
    (r, _) = runs
    base = pd.read_csv(r["base"] / "baselines/pi.csv")
    metric = CHECKS[0]["metric"]
    drop = paired.compare(metric, base, r["shuffled"])["change"]
    assert -0.25 < drop < -0.05


def test_a_changed_sample_is_unpaired_not_compared(runs):
    (r, params) = runs
    cfg = gate.config_from_params(yaml.safe_load(params.read_text()))
    code, rows = gate.check(cfg, r["fewer"])
    assert code == 1 and all(row["status"].startswith("UNPAIRED (12 of 24") for row in rows)


def test_snapshot_keeps_each_images_value_and_the_mean(runs):
    (r, _) = runs
    base = pd.read_csv(r["base"] / "baselines/pi.csv")
    means = json.loads((r["base"] / "baselines/ci.json").read_text())
    for c in CHECKS:
        assert len(base[base["metric"] == c["metric"]]) == N
        assert means[c["metric"]] == pytest.approx(base[base["metric"] == c["metric"]]["value"].mean())


def test_params_of_paired_checks_are_validated(tmp_path):
    p = yaml.safe_load(_params(tmp_path).read_text())
    p["gate"]["checks"][0]["tolerance"] = 0.1
    with pytest.raises(ParamError, match="paired_max_tolerance"):
        gate.config_from_params(p)
    p = yaml.safe_load(_params(tmp_path).read_text())
    del p["gate"]["per_image_baseline"]
    with pytest.raises(ParamError, match="per_image_baseline"):
        gate.config_from_params(p)
    with pytest.raises(ParamError, match="paired metric"):
        paired.parse("metrics/aoppc.json:occlusion|aoppc_pixels_morf")


def test_a_spread_tolerance_over_chosen_runs_and_its_cap(runs, tmp_path):
    """``spread_runs`` restricts the range to the named runs (here the machine-only ones of the committed spread:
    occlusion's gain 0.3111, 0.3241, 0.3402, range 0.0291; with the seeds it is 0.219); a spread tolerance above
    ``paired_max_tolerance`` fails as SPREAD > MAX instead of passing everything."""
    metric = CHECKS[0]["metric"]
    spread = {"metrics": {metric: {"values": {"reference": 0.3111, "threads1": 0.3241, "isa_avx2": 0.3402,
                                              "seed43": 0.2325, "seed44": 0.1212}}}}
    p = {"gate": {"baseline": "b.json", "spread": "s.json", "spread_factor": 2, "per_image_baseline": "pi.csv",
                  "paired_max_tolerance": 0.05,
                  "checks": [{**CHECKS[0], "tolerance": "spread", "spread_runs": ["reference", "threads1", "isa_avx2"]},
                             {**CHECKS[1], "tolerance": "spread"}]}}
    cfg = gate.config_from_params(p)
    both = {"metrics": {**spread["metrics"], CHECKS[1]["metric"]: spread["metrics"][metric]}}
    tol = gate.tolerances(cfg.checks, both, cfg.spread_factor)
    assert tol[metric] == pytest.approx(2 * 0.0291) and tol[CHECKS[1]["metric"]] == pytest.approx(2 * 0.219)
    with pytest.raises(ParamError, match="spread_runs"):
        gate.config_from_params({"gate": {**p["gate"], "checks": [{**CHECKS[0], "spread_runs": ["reference"]}]}})
    # on the unchanged run, both tolerances exceed the cap: neither check may pass as ok
    (r, params) = runs
    base = yaml.safe_load(params.read_text())["gate"]
    (tmp_path / "s.json").write_text(json.dumps({"metrics": {c["metric"]: spread["metrics"][metric] for c in CHECKS}}))
    cfg = gate.config_from_params({"gate": {**p["gate"], "baseline": base["baseline"],
                                            "spread": str(tmp_path / "s.json"),
                                            "per_image_baseline": base["per_image_baseline"]}})
    code, rows = gate.check(cfg, r["same"])
    assert code == 1 and [row["status"] for row in rows] == ["SPREAD > MAX", "SPREAD > MAX"]


def test_collecting_the_machine_runs_refreshes_only_the_checks_measured_over_them(runs, tmp_path, capsys):
    """`cxrbench spread collect` with the runs of some perturbations (the machine ones) writes the spread of the
    checks whose spread_runs they are, from those runs' per-image files, and keeps every other check's committed
    spread (measured over all five runs): tightening those from three runs would be a gate nobody measured."""
    from cxrbench.ops import spread as SP

    (r, _params_file) = runs
    work = tmp_path / "spread"
    for name, root in (("reference", r["same"]), ("threads1", r["same"]), ("isa_avx2", r["shuffled"])):
        (work / "runs" / name).mkdir(parents=True)
        (work / "runs" / name / "metrics").symlink_to(Path(root).resolve() / "metrics")
        (work / "runs" / name / "run.json").write_text(json.dumps({"name": name}))
    machine = ["reference", "threads1", "isa_avx2"]
    other = "metrics/data.json:images"
    committed = {"runs": {n: {"name": n} for n in machine + ["seed43", "seed44"]},
                 "metrics": {other: {"values": {"reference": 7, "seed43": 9}, "range": 2}},
                 "leave_one_out": {"seed43": {"passes": True, "failing": []}}}
    (tmp_path / "s.json").write_text(json.dumps(committed))
    p = {"cohort": "rebuilt", "gate": {
        "profile": "ci", "baseline": str(tmp_path / "b.json"), "spread": str(tmp_path / "s.json"), "spread_factor": 2,
        "per_image_baseline": str(tmp_path / "pi.csv"), "paired_max_tolerance": 0.05,
        "perturbations": {n: {} if n == "reference" else {"env": {"X": "1"}} for n in machine + ["seed43", "seed44"]},
        "checks": [{**CHECKS[0], "tolerance": "spread", "spread_runs": machine},
                   {"metric": other, "tolerance": "spread", "direction": "equal", "reason": "kept"}]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    assert SP.main(["collect", str(work), "--params", str(tmp_path / "params.yaml")]) == 0
    out = json.loads((tmp_path / "s.json").read_text())
    assert out["metrics"][other] == committed["metrics"][other]                          # untouched
    values = out["metrics"][CHECKS[0]["metric"]]["values"]
    assert sorted(values) == sorted(machine) and values["reference"] == values["threads1"]
    assert values["isa_avx2"] < values["reference"] - 0.05          # the shuffled maps' gain is lower
    assert out["runs"] == committed["runs"] and "seed43" in out["leave_one_out"]   # the other measurement stays
    assert sorted(out["metrics"][CHECKS[0]["metric"]]["runs"]) == sorted(machine)  # the entry names its own runs
    assert "keep the committed spread" in capsys.readouterr().out
    # --snapshot: that check's baseline (and per-image rows) from this reference run; the others keep theirs
    (tmp_path / "b.json").write_text(json.dumps({other: 7}))
    assert SP.main(["collect", str(work), "--snapshot", "--params", str(tmp_path / "params.yaml")]) == 0
    base = json.loads((tmp_path / "b.json").read_text())
    assert base[other] == 7 and base[CHECKS[0]["metric"]] == pytest.approx(values["reference"])
    rows = pd.read_csv(tmp_path / "pi.csv")
    assert set(rows["metric"]) == {CHECKS[0]["metric"]} and len(rows) == N
    # nothing measured over the runs at hand: an error that names the missing runs, and nothing written
    p["gate"]["checks"] = p["gate"]["checks"][1:]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    assert SP.main(["collect", str(work), "--params", str(tmp_path / "params.yaml")]) == 1
    assert "seed43" in capsys.readouterr().err


def test_a_paired_check_can_keep_one_backbones_models(runs, tmp_path):
    """``BACKBONE/METHOD`` keeps that backbone's rows: here a second backbone whose values are far off is added to
    the run, and the restricted check reads exactly the first backbone's mean while the plain one moves."""
    (r, _) = runs
    f = pd.read_csv(Path(r["same"]) / "metrics/aoppc_per_image.csv", keep_default_na=False)
    other = f.assign(backbone="other", value=f["value"].astype(float) + 5.0)
    (tmp_path / "metrics").mkdir()
    pd.concat([f, other]).to_csv(tmp_path / "metrics/aoppc_per_image.csv", index=False)
    plain = CHECKS[0]["metric"]
    one = plain.replace(":ixg|", ":toy/ixg|")
    assert paired.parse(one) == ("metrics/aoppc_per_image.csv", "ixg", "aoppc_pixels_morf", "random", "toy")
    assert paired.parse(plain)[-1] is None
    assert paired.value(one, tmp_path) == pytest.approx(paired.value(plain, Path(r["same"])), abs=1e-12)
    assert paired.value(one.replace("toy/", "nobody/"), tmp_path) is None
    with pytest.raises(ParamError, match="BACKBONE"):
        paired.parse(plain.replace(":ixg|", ":/ixg|"))
