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
SPLITS = "data/splits.csv"
CACHE = "data/cache"
CACHE_MASKS = "data/cache/masks.npy"
LUNGS = "data/lungs"
LUNG_MASKS = "data/lungs/masks.npy"
CONFOUNDER = "data/confounder"
EXTERNAL = "data/external"
ATTRIBUTIONS = "data/attributions"
ENSEMBLE_PREDICTIONS = "data/ensemble"

# models
UNET_MODEL = "models/unet/model.pt"
CLASSIFIERS = "models/classifier"
AUDIT_MODELS = "models/audit"

# metrics, plots, report
METRICS = "metrics"
PLOTS = "plots"
DVCLIVE_UNET = "dvclive/unet"
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


def metric(name: str) -> str:
    """``metrics/NAME`` (NAME with its extension, e.g. ``data.json``)."""
    return f"{METRICS}/{name}"


def plot(name: str) -> str:
    """``plots/NAME``."""
    return f"{PLOTS}/{name}"


def attributions(backbone: str, fold: int) -> str:
    return f"{ATTRIBUTIONS}/{run_name(backbone, fold)}.npz"


def attribute_metrics(backbone: str, fold: int) -> str:
    return metric(f"attribute/{run_name(backbone, fold)}.json")


def ensemble_predictions(fold: int) -> str:
    return f"{ENSEMBLE_PREDICTIONS}/f{fold}.csv"
