"""The four-column headline table from three runs' table2.json."""

import json

from cxrbench import compare


def _t2(f1_r18, f1_ens):
    row = lambda key, model, f1, paper: {"key": key, "model": model, "f1": {"mean": f1, "std": 0.01},  # noqa: E731
                                         "paper_f1": {"mean": paper, "std": 0.007}}
    return {"rows": [row("resnet18", "ResNet18", f1_r18, 0.824), row("ensemble", "Ensemble", f1_ens, 0.869)]}


def test_table_puts_the_runs_side_by_side(tmp_path, capsys):
    for name, vals in {"a": (0.9, 0.95), "b": (0.7, 0.75), "c": (0.6, 0.65)}.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(_t2(*vals)))
    assert compare.main(["--paper-protocol", str(tmp_path / "a.json"), "--corrected", str(tmp_path / "b.json"),
                         "--rebuilt", str(tmp_path / "c.json"), "--label", "test", "--out",
                         str(tmp_path / "t.md")]) == 0
    lines = (tmp_path / "t.md").read_text().splitlines()
    assert lines[2].startswith("| model | paper (Table 2) | authors' cohort + their protocol |")
    assert lines[4] == "| ResNet18 | 0.824 ± 0.007 | 0.900 ± 0.010 | 0.700 ± 0.010 | 0.600 ± 0.010 |"
    assert lines[5].startswith("| Ensemble | 0.869 ± 0.007 | 0.950")
