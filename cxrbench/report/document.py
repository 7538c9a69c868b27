"""The study's report: one self-contained folder (``report/README.md`` + ``report/img/``).

Built from what the stages wrote (metrics/*.json, tables, plots); a section
whose inputs do not exist says which stage to run instead of failing, so a
partial pipeline still gets a report. Figures are copied next to the text so
the folder can be shared alone.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import yaml

from cxrbench.core import paths, runtime
from cxrbench.core.io import atomic_path

PACKAGES = ("torch", "torchvision", "timm", "captum", "monai", "scikit-learn", "scikit-image", "numpy",
            "pandas", "dvc", "dvclive")


def _json(path: Path) -> Any | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


class Report:
    def __init__(self, root: Path = Path(".")):
        self.root = root
        self.parts: list[str] = []
        self.images: list[tuple[Path, str]] = []
        self.files: dict[str, str] = {}          # more text files of the folder (the model card), by name

    def text(self, s: str) -> None:
        self.parts.append(s.rstrip() + "\n")

    def image(self, path: str | Path, caption: str) -> None:
        src = self.root / path
        if not src.is_file():
            self.text(f"*{caption}: {path} not found (run its stage).*")
            return
        name = str(path).replace("/", "__")
        self.images.append((src, name))
        self.text(f"![{caption}](img/{name})\n\n*{caption}* (`{path}`)")

    def include(self, path: str | Path, missing: str) -> bool:
        src = self.root / path
        if src.is_file():
            self.text(src.read_text())
            return True
        self.text(f"*{missing}*")
        return False

    def write(self, out_dir: Path) -> None:
        with atomic_path(out_dir) as tmp:
            (tmp / "img").mkdir(parents=True)
            for src, name in self.images:
                shutil.copy2(src, tmp / "img" / name)
            (tmp / "README.md").write_text("\n".join(self.parts), encoding="utf-8")
            for name, text in self.files.items():
                (tmp / name).write_text(text, encoding="utf-8")


def provenance(params: dict, root: Path) -> str:
    commit = runtime.git_commit(root)
    versions = []
    for p in PACKAGES:
        try:
            versions.append([p, metadata.version(p)])
        except metadata.PackageNotFoundError:
            versions.append([p, "not installed"])
    return ("## Provenance\n\n"
            f"- git commit: `{commit}`\n- Python {platform.python_version()} on {platform.machine()}\n\n"
            + md_table(["package", "version"], versions)
            + "\n\n<details><summary>params.yaml used for this run</summary>\n\n```yaml\n"
            + yaml.safe_dump(params, sort_keys=False, width=100) + "```\n</details>\n")


def section_data(r: Report) -> None:
    r.text("## Data and split")
    d = _json(r.root / paths.DATA_METRICS)
    if d is None:
        r.text("*metrics/data.json not found: run `dvc repro split`.*")
        return
    rows = [["images", d["images"]], ["patients", d["patients"]], ["patient groups", d["groups"]],
            ["test images (held out)", d["test_images"]], ["dev images (K folds)", d["dev_images"]],
            ["files listed upstream but missing", d["missing_files"]], ["corrupt files", d["corrupt_files"]],
            ["exact copies dropped", d["exact_copies_dropped"]],
            ["near-duplicate pairs across patients (merged)", d["near_duplicate_pairs_across_patients"]],
            ["**patients on two sides of a split**", d["leaked_patients"]],
            ["**groups on two sides of a split**", d["leaked_groups"]]]
    r.text(md_table(["", "count"], rows))
    r.text("Split proof: every patient and every duplicate group lies in exactly one of test / dev, and in "
           "exactly one dev fold (checked by the split stage, which stops otherwise).")
    r.image(paths.LABEL_DISTRIBUTION_PLOT, "Label distribution by split")


def section_unet(r: Report) -> None:
    r.text("## Lung segmentation (U-Net, CXR-Net loss)")
    u = _json(r.root / paths.UNET_METRICS)
    if u is None:
        r.text("*metrics/unet.json not found: run `dvc repro train_unet`.*")
        return
    t = u["test"]
    r.text(md_table(["held-out test patients", "images", "IoU mean", "IoU median", "Dice mean", "Dice median"],
                    [[u["patients"]["test"], t["iou"]["n"], t["iou"]["mean"], t["iou"]["median"],
                      t["dice"]["mean"], t["dice"]["median"]]]))
    r.text(f"Trained {u['epochs']} epochs at {u['size']} px on {u['images']['train']} images of "
           f"{u['patients']['train']} dev patients; epoch {u['best_epoch']} chosen on the validation part. "
           "CXR-Net reports IoU 0.925 on its own data.")
    r.image(paths.UNET_OVERLAYS_PLOT, "Held-out images: image, V7 mask, U-Net mask")
    s = _json(r.root / paths.SEGMENT_METRICS)
    if s is not None:
        rows = [[src, v["area_fraction"]["mean"], v["area_fraction"]["std"], v["implausible"]]
                for src, v in s["by_source"].items()]
        r.text(md_table(["source", "lung area fraction (mean)", "std", "implausible masks"], rows))
        r.image(paths.SEGMENT_GRID_PLOT, "Segmented Kermany and covid-chestxray images")


def section_classification(r: Report) -> None:
    r.text("## Classification (seed 000, Table 2)")
    r.include(paths.TABLE2_MD, f"{paths.TABLE2_MD} not found: run `dvc repro ensemble`.")
    if r.include(paths.SHORTCUT_AUDIT_MD, f"{paths.SHORTCUT_AUDIT_MD} not found: run `dvc repro audit`."):
        r.image(paths.SHORTCUT_AUDIT_PLOT, "Shortcut audit: AUROC of every control with its CI (chance 0.5)")
        r.image(paths.SHORTCUT_CONTROLS_PLOT, "What each audit model sees")


def section_external(r: Report) -> None:
    """metrics/external.md (it brings its own heading) and, when the stage was on, its calibration plot."""
    if not (r.root / paths.EXTERNAL_MD).is_file():
        r.text("## External validation\n\n*metrics/external.md not found: run `dvc repro external`.*")
        return
    r.include(paths.EXTERNAL_MD, "")
    x = _json(r.root / paths.EXTERNAL_METRICS)
    if x is not None and x.get("status") == "on":
        r.image(paths.EXTERNAL_CALIBRATION_PLOT, "Calibration, internal test vs external (reliability diagrams)")


def section_explain(r: Report) -> None:
    r.text("## Explanations and AOPPC")
    if r.include(paths.AOPPC_MD, f"{paths.AOPPC_MD} not found: run `dvc repro aoppc`."):
        r.image(paths.AOPPC_CURVES_PLOT, "Probability drop per perturbation level (MoRF, LeRF, random)")
    for png in sorted((r.root / paths.ATTRIBUTION_PLOTS).glob("*.png")) if (r.root / paths.ATTRIBUTION_PLOTS).is_dir() else []:
        r.image(png.relative_to(r.root), f"Attribution maps: {png.stem}")
    r.text("### Randomisation checks")
    if r.include(paths.RANDOMISATION_MD, f"{paths.RANDOMISATION_MD} not found: run `dvc repro randomisation`."):
        r.image(paths.RANDOMISATION_PLOT, "Cascading randomisation: similarity of each method's map to the "
                "trained model's as layers are re-initialised from the head down (null reference as a band)")


def section_reliability(r: Report) -> None:
    """How far the explanation metrics can be trusted: robustness, agreement across metrics, repeatability."""
    r.text("## Reliability of the explanation metrics")
    r.include(paths.RELIABILITY_MD, f"{paths.RELIABILITY_MD} not found: run `dvc repro reliability`.")


def section_ground_truth(r: Report) -> None:
    """The planted shortcut (when confounder.enabled) and the severity plausibility check."""
    r.text("## Ground truth for explanations")
    if r.include(paths.PLANTED_MD, f"{paths.PLANTED_MD} not found: run `dvc repro planted`."):
        x = _json(r.root / paths.PLANTED)
        if x is not None and x.get("enabled"):
            r.image(paths.PLANTED_RANKING_PLOT, "Methods: localisation of the planted tag vs AOPPC (gain over random)")
            r.image(paths.PLANTED_MAPS_PLOT, "Tagged test images, each method's map and the tag's box")
    r.include(paths.SEVERITY_MD, f"{paths.SEVERITY_MD} not found: run `dvc repro severity`.")


def section_cohort(r: Report) -> None:
    r.text("## The authors' cohort")
    r.text("### Audit of this run's cohort")
    r.include(paths.COHORT_AUDIT_MD, f"{paths.COHORT_AUDIT_MD} not found: run `dvc repro split`.")
    r.text("### How much of the published score survives: the one-factor ablation ladder (committed)")
    r.text("*Not produced by this run: `results/ablation.md` is committed, measured at the commit and on the "
           "machine it names (the ci profile's sizes); this run's own numbers are in the summary above.*")
    r.include(paths.ABLATION_TABLE, f"{paths.ABLATION_TABLE} not found: build it with `cxrbench ablation "
                                     "run` and `cxrbench ablation table` (docs/authors-cohort.md).")


SECTIONS: tuple[Callable[[Report], None], ...] = (section_data, section_unet, section_classification,
                                                  section_external, section_explain, section_reliability,
                                                  section_ground_truth,
                                                  section_cohort)


def build(params: dict, root: Path = Path("."), title: str = "cxrbench report") -> Report:
    r = Report(root)
    from cxrbench.report import summary

    r.text(f"# {title}\n\nGenerated by `stages/report.py` from this run's metrics and plots; the same summary "
           f"with every figure embedded: [index.html](index.html) (opens offline). The model card of this run's "
           f"classifiers: [model_card.md](model_card.md).")
    r.text(summary.markdown(params, root))
    r.files[summary.HTML] = summary.page(params, root, title)
    for section in SECTIONS:
        section(r)
    r.text(provenance(params, root))
    return r


def write_report(params: dict, root: Path = Path(".")) -> Report:
    """report/: README.md (the summary first), index.html, img/ and the model card, from ``root``'s outputs."""
    from cxrbench.core.params import section
    from cxrbench.report import model_card

    model_card.validate(params)
    report = build(params, root, title=section(params, "report.title"))
    report.files[model_card.CARD] = model_card.build(params, root)
    report.write(root / paths.REPORT)
    return report


def main(argv: list[str] | None = None) -> int:
    """``cxrbench report``: the report stage's work on this workspace's outputs, without DVC."""
    from cxrbench.core import params as P
    from cxrbench.report import model_card

    try:
        params = P.stage_params("cxrbench report: write report/ (README.md with the summary first, the offline "
                                "one-page index.html, the model card) from this workspace's outputs", argv)
        report = write_report(params)
    except (P.ParamError, FileNotFoundError) as err:
        print(f"cxrbench report: {err}", file=sys.stderr)
        return 2
    print(f"report: {paths.REPORT}/README.md with {len(report.images)} figures, {paths.REPORT}/index.html "
          f"(opens offline), {paths.REPORT}/{model_card.CARD}")
    return 0
