"""The report renders from whatever metrics exist and says what is missing."""

import json

from PIL import Image

from cxrbench.report.document import build


def test_report_renders_partial_runs(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "plots").mkdir()
    json.dump({"images": 10, "patients": 8, "groups": 7, "test_images": 4, "dev_images": 6, "missing_files": 1,
               "corrupt_files": 0, "exact_copies_dropped": 0, "near_duplicate_pairs_across_patients": 1,
               "leaked_patients": 0, "leaked_groups": 0}, open(tmp_path / "metrics/data.json", "w"))
    Image.new("L", (4, 4)).save(tmp_path / "plots/label_distribution.png")
    r = build({"split": {"seed": 1}}, tmp_path, title="t")
    r.write(tmp_path / "report")
    text = (tmp_path / "report/README.md").read_text()
    assert "| **patients on two sides of a split** | 0 |" in text
    assert "img/plots__label_distribution.png" in text
    assert (tmp_path / "report/img/plots__label_distribution.png").is_file()
    assert "metrics/unet.json not found" in text and "run `dvc repro ensemble`" in text
    assert "seed: 1" in text and "| torch |" in text
