"""``cxrbench times``: one row per stage with its share of the run and its hottest steps."""

import json
from pathlib import Path

from cxrbench.ops import times as T

ROOT = Path(__file__).resolve().parents[2]


def _record(folder, stage, wall, steps=None, startup=1.5):
    folder.mkdir(exist_ok=True)
    (folder / f"{stage}.json").write_text(json.dumps({"stage": stage, "wall_s": wall, "startup_s": startup,
                                                      "steps": steps or {}}))


def test_rows_take_the_seconds_dvc_saw_and_sum_the_shares_to_one(tmp_path):
    d = tmp_path / "timing"
    _record(d, "aoppc", 30.0, {"region road fill": {"seconds": 20.0, "n": 8, "unit": "image", "per_unit": 2.5}})
    _record(d, "index", 10.0)
    rows = T.rows(T.load(d), seen={"index": 12.0, "aoppc": 36.0, "report": 2.0})
    assert [r["stage"] for r in rows] == ["index", "aoppc", "report"]
    assert [r["seconds"] for r in rows] == [12.0, 36.0, 2.0]
    assert abs(sum(r["share"] for r in rows) - 1.0) < 1e-12
    assert rows[1]["share"] == 36.0 / 50.0
    assert "region road fill 20.0 s (8 image, 2.5 s/image)" in rows[1]["steps"]
    assert rows[2]["steps"] == "(no timing record)"


def test_without_dvc_times_the_records_wall_time_is_used(tmp_path):
    d = tmp_path / "timing"
    _record(d, "a", 3.0)
    _record(d, "b", 1.0)
    rows = T.rows(T.load(d))
    assert [(r["stage"], r["seconds"], r["share"]) for r in rows] == [("a", 3.0, 0.75), ("b", 1.0, 0.25)]


def test_markdown_and_text_tables_carry_the_total(tmp_path):
    d = tmp_path / "timing"
    _record(d, "a", 3.0)
    table = T.rows(T.load(d))
    assert "| **total** | **3.0** |" in T.render(table, markdown=True)
    assert T.render(table).splitlines()[-1].split()[:2] == ["total", "3.0"]


def test_a_corrupt_record_is_named_not_silently_dropped(tmp_path, capsys):
    d = tmp_path / "timing"
    d.mkdir()
    (d / "bad.json").write_text("{not json")
    assert T.load(d) == {}
    assert "timing/bad.json is not a timing record" in capsys.readouterr().err


def test_the_command_says_what_to_do_without_records(tmp_path, capsys):
    assert T.main(["--dir", str(tmp_path / "none")]) == 1
    assert "run the pipeline" in capsys.readouterr().err


def test_dvc_reads_the_project_yaml_with_ruamels_c_scanner_and_the_same_values():
    """DVC parses params.yaml once per stage it checks (50 times in a no-op `dvc repro` of the sample profile):
    ruamel.yaml.clib (requirements.txt) makes that 7x faster. The C scanner must give the values the pure
    parser gives, on every YAML file DVC reads here."""
    import _ruamel_yaml  # noqa: F401  (the C scanner is installed)
    from ruamel.yaml import YAML

    from dvc.utils.serialize._yaml import parse_yaml
    files = ["params.yaml", "dvc.yaml", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "profiles").glob("*.yaml"))]
    for name in files:
        text = (ROOT / name).read_text()
        assert parse_yaml(text, name) == YAML(typ="safe", pure=True).load(text), name
    tricky = "a: 1e-06\nb: on\nc: yes\nd: 010\ne: 1:20\nf: .inf\ng: ~\n"
    assert parse_yaml(tricky, "x") == YAML(typ="safe", pure=True).load(tricky)
