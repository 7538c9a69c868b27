"""Which explanation metrics the gate can guard image by image (cxrbench.ops.paired.candidates and choose,
scripts/choose_gate_checks.py), from the per-image AOPPC files of finished spread runs. The picks follow the
rule of docs/ci-and-gate.md and skip a check whose tolerance (spread_factor x range over the runs) is over the cap."""

from pathlib import Path

import pandas as pd
import pytest

from cxrbench.ops import paired
from helpers import script

ROOT = Path(__file__).resolve().parents[2]
RUNS = ["reference", "threads1", "isa_avx2"]


def _write_runs(tmp_path: Path, values: dict) -> list[Path]:
    """values: (method, metric) -> one value per run, given to each of 4 images (the random map: 0 but where
    named), on resnet18; efficientnet_lite0 gets wild values that a resnet18 check must not see."""
    dirs = []
    for i, run in enumerate(RUNS):
        rows = []
        for (method, metric), per_run in values.items():
            for backbone, v in (("resnet18", per_run[i]), ("efficientnet_lite0", 9.0 * (i + 1))):
                rows += [{"method": method, "backbone": backbone, "fold": 0, "image": k,
                          "path": f"covid_chestxray/images/{k}.png", "group": f"cc:{k}", "metric": metric,
                          "value": v} for k in range(4)]
        d = tmp_path / "runs" / run
        (d / "metrics").mkdir(parents=True)
        pd.DataFrame(rows).to_csv(d / "metrics" / "aoppc_per_image.csv", index=False)
        dirs.append(d)
    return dirs


def test_the_picks_follow_the_rule_and_respect_the_cap(tmp_path):
    black, blur, pixels = "aoppc_region_black_morf", "aoppc_region_blur_morf", "aoppc_pixels_morf"
    values = {("random", m): [0.0, 0.0, 0.0] for m in paired.CANDIDATE_METRICS}
    values[("random", pixels)] = [-0.30, -0.31, -0.30]
    values.update({
        ("a", black): [0.20, 0.21, 0.20],      # gain 0.20, tolerance 0.02: ratio 10, the black pick
        ("b", black): [0.90, 0.87, 0.90],      # ratio 15, but tolerance 0.06 over the cap of 0.05: not picked
        ("a", blur): [0.30, 0.30, 0.31],       # the same method as the black pick: not the fill-neutral pick
        ("b", blur): [0.10, 0.105, 0.10],      # ratio 10 under blur, another method: the fill-neutral pick
        ("c", blur): [0.05, 0.06, 0.05],       # ratio 2.5
        ("c", "aoppc_region_road_morf"): [0.03, 0.0301, 0.03],  # ratio 150 by its range, 6 at the floor of 0.005
        ("c", pixels): [-0.2, -0.2, -0.2],     # below the random map: never a gain to guard
    })
    rows = paired.candidates(_write_runs(tmp_path, values), "resnet18", ["a", "b", "c"], factor=2.0)
    by = {r["metric"].partition(":")[2]: r for r in rows}
    assert by["resnet18/b|aoppc_region_black_morf - random"]["tolerance"] == pytest.approx(0.06)
    assert by["resnet18/a|aoppc_region_black_morf - random"]["images"] == 4
    picks = paired.choose(rows, cap=0.05)
    assert picks["black"]["metric"].endswith("resnet18/a|aoppc_region_black_morf - random")
    assert picks["fill-neutral"]["metric"].endswith("resnet18/b|aoppc_region_blur_morf - random")
    assert picks["control"]["metric"].endswith("resnet18/random|aoppc_pixels_morf")


def test_missing_runs_are_named(tmp_path, capsys):
    assert script("choose_gate_checks").main([str(tmp_path), "--params", str(ROOT / "params.yaml")]) == 2
    assert "aoppc_per_image.csv" in capsys.readouterr().err
