"""Every path the pipeline reads or writes, named once; ``dvc.yaml`` is the only other place that spells them.

Paths are relative to the repository root (the working directory of every stage).
"""

from __future__ import annotations

from dataclasses import dataclass

# data
RAW = "data/raw"
DOWNLOADS = "data/downloads"
INDEX = "data/index.csv"
INDEX_REPORT = "data/index_report.json"
COPY_FEATURES = "data/copy_features.npz"      # the copy search's features of the index's images (copy_store)
SPLITS = "data/splits.csv"
CACHE = "data/cache"
CACHE_MASKS = "data/cache/masks.npy"
LUNGS = "data/lungs"
LUNG_MASKS = "data/lungs/masks.npy"
CONFOUNDER = "data/confounder"
CONFOUNDER_PLAN = "data/confounder/plan.csv"
EXTERNAL = "data/external"
ATTRIBUTIONS = "data/attributions"
AOPPC_PARTIAL = "data/aoppc_partial"          # each scored model's part of the aoppc stage (resume)
ENSEMBLE_PREDICTIONS = "data/ensemble"

# checkpoints of interrupted stages, outside every DVC output (cxrbench.core.resume; not tracked)
RESUME = ".cxrbench/resume"

# models
UNET_MODEL = "models/unet/model.pt"
CLASSIFIERS = "models/classifier"
AUDIT_MODELS = "models/audit"

# metrics (tables and JSONs the stages write), plots, logs
METRICS = "metrics"
DOWNLOAD_METRICS = "metrics/download"
DATA_METRICS = "metrics/data.json"
COHORT_AUDIT = "metrics/cohort_audit.json"
COHORT_AUDIT_MD = "metrics/cohort_audit.md"
UNET_METRICS = "metrics/unet.json"
SEGMENT_METRICS = "metrics/segment.json"
CONFOUND_METRICS = "metrics/confound.json"
EVAL_METRICS = "metrics/eval"
ENSEMBLE_METRICS = "metrics/ensemble.json"
TABLE2 = "metrics/table2.json"
TABLE2_MD = "metrics/table2.md"
SUMMARY = "metrics/summary.json"
SUMMARY_MD = "metrics/summary.md"
SHORTCUT_AUDIT = "metrics/shortcut_audit.json"
SHORTCUT_AUDIT_MD = "metrics/shortcut_audit.md"
AOPPC = "metrics/aoppc.json"
AOPPC_MD = "metrics/aoppc_table.md"
AOPPC_PER_IMAGE = "metrics/aoppc_per_image.csv"
RELIABILITY = "metrics/reliability.json"
RELIABILITY_MD = "metrics/reliability.md"
RELIABILITY_PER_IMAGE = "metrics/reliability_per_image.csv"
RANDOMISATION = "metrics/randomisation.json"
RANDOMISATION_MD = "metrics/randomisation.md"
PLANTED = "metrics/planted.json"
PLANTED_MD = "metrics/planted.md"
SEVERITY = "metrics/severity.json"
SEVERITY_MD = "metrics/severity.md"
EXTERNAL_METRICS = "metrics/external.json"
EXTERNAL_MD = "metrics/external.md"
HEADLINE = "metrics/headline"         # one small JSON per stage: the only files dvc.yaml declares as metrics
TIMING = "timing"                     # one JSON per DVC stage: its wall time and hottest steps (never a metric)

PLOTS = "plots"
LABEL_DISTRIBUTION_PLOT = "plots/label_distribution.png"
UNET_OVERLAYS_PLOT = "plots/unet_overlays.png"
SEGMENT_GRID_PLOT = "plots/segment_grid.png"
ROC_ENSEMBLE = "plots/roc_ensemble.csv"
SHORTCUT_AUDIT_PLOT = "plots/shortcut_audit.png"
SHORTCUT_CONTROLS_PLOT = "plots/shortcut_controls.png"
ATTRIBUTION_PLOTS = "plots/attributions"
AOPPC_CURVES_PLOT = "plots/aoppc/curves.png"
AOPPC_CURVES = "plots/aoppc/curves.csv"
AOPPC_CURVES_ALL = "plots/aoppc/curves_all.csv"
RANDOMISATION_PLOT = "plots/randomisation/cascade.png"
RANDOMISATION_CURVES = "plots/randomisation/cascade.csv"
PLANTED_PLOTS = "plots/planted"
PLANTED_MAPS_PLOT = "plots/planted/maps.png"
PLANTED_RANKING_PLOT = "plots/planted/ranking.png"
EXTERNAL_CALIBRATION_PLOT = "plots/external_calibration.png"
DVCLIVE_UNET = "dvclive/unet"

# outside the pipeline: the report, the ablation ladder's results
REPORT = "report"
ABLATION_RESULTS = "results/ablation"
ABLATION_TABLE = "results/ablation.md"

VARIANTS = ("main", "audit")


@dataclass(frozen=True)
class RunPaths:
    """Where the train and evaluate stages write for one backbone x fold (x audit control)."""
    model_dir: str
    train_metrics: str
    live_dir: str
    predictions: str
    eval_metrics: str
    roc: str


def run_name(backbone: str, fold: int) -> str:
    return f"{backbone}-f{fold}"


def run(variant: str, backbone: str, fold: int, control: str | None = None) -> RunPaths:
    """The paths of one training run: ``variant`` main, or audit with its ``control``."""
    name = run_name(backbone, fold)
    if variant == "main":
        return RunPaths(f"{CLASSIFIERS}/{backbone}/fold{fold}", f"metrics/train/{name}.json", f"dvclive/train/{name}",
                        f"data/predictions/{name}.csv", f"metrics/eval/{name}.json", f"plots/roc/{name}.csv")
    if variant == "audit":
        if not control:
            raise ValueError("the audit variant needs a control")
        c = control
        return RunPaths(f"{AUDIT_MODELS}/{c}/{backbone}/fold{fold}", f"metrics/audit/train/{c}/{name}.json",
                        f"dvclive/audit/{c}/{name}", f"data/predictions_audit/{c}/{name}.csv",
                        f"metrics/audit/eval/{c}/{name}.json", f"plots/roc_audit/{c}/{name}.csv")
    raise ValueError(f"unknown variant {variant!r}; valid variants are {list(VARIANTS)}")


def attributions(backbone: str, fold: int) -> str:
    return f"{ATTRIBUTIONS}/{run_name(backbone, fold)}.npz"


def aoppc_partial(backbone: str, fold: int) -> str:
    return f"{AOPPC_PARTIAL}/{run_name(backbone, fold)}.npz"


def attribute_metrics(backbone: str, fold: int) -> str:
    return f"{METRICS}/attribute/{run_name(backbone, fold)}.json"


def headline(stage: str) -> str:
    return f"{HEADLINE}/{stage}.json"


def timing_file(stage: str) -> str:
    """The timing record of DVC stage ``stage`` (``train@resnet18-0``, as DVC names a matrix cell)."""
    return f"{TIMING}/{stage}.json"


def attribution_plot(backbone: str) -> str:
    return f"{ATTRIBUTION_PLOTS}/{backbone}.png"


def ensemble_predictions(fold: int) -> str:
    return f"{ENSEMBLE_PREDICTIONS}/f{fold}.csv"
