"""The headline metrics: the few numbers a reader compares between runs, one small JSON per stage.

Every stage writes detailed JSONs (per image, per resample, per fold); ``dvc.yaml`` keeps those as plain
outputs and declares as ``metrics:`` only the headline files written here (``metrics/headline/STAGE.json``),
so that ``dvc exp show``, ``dvc metrics show`` and ``dvc metrics diff`` print a screen, not megabytes.

:data:`SPEC` lists, per stage, each headline entry as (name, detailed file, dotted key). A key part
``{x}`` is repeated over a list of params (the methods, the audit's scores); a part ``field=value`` picks
the list item whose field is value (the notation of the CI gate). A value that is a CI (a dict with
``mean`` or ``estimate`` and ``low``/``high``) is written as ``{"value", "low", "high"}`` (with ``n`` when
known); a plain number as itself. An entry the run did not score (a stage switched off, a degenerate
method) is written as the words ``"not scored"`` (DVC shows a string, and would silently drop a null) and
named under ``not_scored``: shown and counted, never a silent number.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cxrbench.core import paths
from cxrbench.core.io import read_json, write_json

__all__ = [
    "EACH",
    "MAX_ENTRIES",
    "MULTICLASS",
    "NOT_SCORED",
    "SPEC",
    "cell",
    "count",
    "entries",
    "extract",
    "flatten",
    "load",
    "lookup",
    "value_of",
    "write",
]

NOT_SCORED = "not scored"

# The pipeline's headline set may hold at most this many values (each with its CI where one exists).
MAX_ENTRIES = 64

# {x} in a key is repeated over these params; the name gets the item in place of {x}.
EACH = {"method": "explain.methods", "score": "audit.scores", "source": "external.sources"}

_AOPPC = "aoppc_pixels_morf"
_EXT = "sources.{source}.models.ensemble.labels"
SPEC: dict[str, list[tuple[str, str, str]]] = {
    "split": [
        ("images", paths.DATA_METRICS, "images"),
        ("patients", paths.DATA_METRICS, "patients"),
        ("test_images", paths.DATA_METRICS, "test_images"),
        ("leaked_patients", paths.DATA_METRICS, "leaked_patients"),
        ("leaked_groups", paths.DATA_METRICS, "leaked_groups"),
    ],
    "train_unet": [
        ("iou", paths.UNET_METRICS, "test.iou.mean"),
        ("dice", paths.UNET_METRICS, "test.dice.mean"),
    ],
    "ensemble": [
        ("f1", paths.TABLE2, "rows.key=ensemble.f1"),
        ("auroc_micro", paths.TABLE2, "rows.key=ensemble.auroc_micro"),
        ("f1_paper_scoring", paths.TABLE2, "rows.key=ensemble.paper_scoring.f1"),
        ("vote_f1", paths.TABLE2, "majority_vote.micro_f1_mean"),
        ("auroc_covid19", paths.SUMMARY, "test.model=ensemble.auroc_mean.covid19"),
        ("auroc_healthy", paths.SUMMARY, "test.model=ensemble.auroc_mean.healthy"),
        ("resnet18_auroc_covid19", paths.SUMMARY, "test.model=resnet18.auroc_mean.covid19"),
        ("ap_micro", paths.SUMMARY, "test.model=ensemble.ap_micro_mean"),
        ("ap_micro_chance", paths.SUMMARY, "test.model=ensemble.ap_micro_chance_mean"),
    ],
    "audit": [
        ("{score}.full", paths.SHORTCUT_AUDIT, "scores.{score}.auroc.full"),
        ("{score}.outside_only", paths.SHORTCUT_AUDIT, "scores.{score}.auroc.outside_only"),
        ("{score}.lungs_only", paths.SHORTCUT_AUDIT, "scores.{score}.auroc.lungs_only"),
    ],
    "aoppc": [
        ("random", paths.AOPPC, f"pooled.random|{_AOPPC}.mean"),
        ("gain.{method}", paths.AOPPC, f"gain.pooled.{{method}}|{_AOPPC}"),
    ],
    # the ensemble's AUROC on each external source, for the labels a Kermany-style set scores (Kermany's
    # normal / pneumonia / bacterial); beside the same labels on the internal test set
    "external": [
        (f"{{source}}.{label}", paths.EXTERNAL_METRICS, f"{_EXT}.{label}.sets.{part}.auroc")
        for label, part in (("pneumonia", "external"), ("healthy", "external"), ("bacterial", "external"))
    ] + [("{source}.pneumonia_internal", paths.EXTERNAL_METRICS, f"{_EXT}.pneumonia.sets.internal.auroc")],
    "planted": [
        ("kendall_tau", paths.PLANTED, "ranking.scopes.pooled.kendall_tau"),
        ("spearman_rho", paths.PLANTED, "ranking.scopes.pooled.spearman_rho"),
    ],
}


# A train.task: multiclass run (cxrbench.classify.task) scores classes by argmax: its ensemble stage's headline
# is the combined model's accuracy and its COVID-19 class (metrics/summary.json: headline, written by
# cxrbench.classify.multiclass.headline_block) instead of seed 000's multi-label Table 2.
MULTICLASS: dict[str, list[tuple[str, str, str]]] = {
    "ensemble": [
        ("accuracy", paths.SUMMARY, "headline.accuracy"),
        ("accuracy_chance", paths.SUMMARY, "headline.accuracy_chance"),
        ("macro_f1", paths.SUMMARY, "headline.macro_f1"),
        ("recall_covid19", paths.SUMMARY, "headline.recall_covid19"),
        ("f1_covid19", paths.SUMMARY, "headline.f1_covid19"),
        ("auroc_covid19", paths.SUMMARY, "headline.auroc_covid19"),
    ],
}


def _param(params: dict, dotted: str) -> Any:
    obj: Any = params
    for part in dotted.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def entries(stage: str, params: dict) -> list[tuple[str, str, str]]:
    """The stage's entries with every ``{x}`` repeated over its params (dict params: their keys)."""
    out = []
    spec = SPEC.get(stage, [])
    if _param(params, "train.task") == "multiclass" and stage in MULTICLASS:
        spec = MULTICLASS[stage]
    for name, file, key in spec:
        slot = next((x for x in EACH if "{" + x + "}" in key), None)
        if slot is None:
            out.append((name, file, key))
            continue
        items = _param(params, EACH[slot]) or []
        out += [(name.replace("{" + slot + "}", str(i)), file, key.replace("{" + slot + "}", str(i)))
                for i in items if str(i) != "random"]
    return out


def lookup(obj: Any, key: str) -> Any:
    """The object at dotted ``key`` (None when absent); ``field=value`` picks a list item. A method key such
    as ``occlusion|aoppc_pixels_morf`` holds no dot of its own, so the split is exact."""
    for part in key.split("."):
        if isinstance(obj, dict) and part in obj:
            obj = obj[part]
        elif isinstance(obj, list) and "=" in part:
            field, value = part.split("=", 1)
            obj = next((o for o in obj if isinstance(o, dict) and str(o.get(field)) == value), None)
        else:
            return None
    return obj


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if not math.isfinite(v):
        return None
    return float(v) if isinstance(v, float) else int(v)


def value_of(obj: Any) -> float | dict | None:
    """A headline value: a number, or ``{"value", "low", "high"[, "n"]}`` for a CI (``{"value", "ci": STATUS}``
    where the interval has a status such as ``no_ci`` instead of bounds); None when not a finite
    number (NaN, a degenerate method's missing estimate, a status string)."""
    if isinstance(obj, dict):
        v = _number(obj.get("mean", obj.get("estimate")))
        if v is None:
            return None
        out: dict = {"value": v}
        low, high = _number(obj.get("low")), _number(obj.get("high"))
        if low is not None and high is not None:
            out.update(low=low, high=high)
        elif isinstance(obj.get("status"), str) and obj["status"] != "ok":
            out["ci"] = obj["status"]          # e.g. no_ci: the interval's own status is shown, never dropped
        if _number(obj.get("n")) is not None:
            out["n"] = _number(obj["n"])
        return out if len(out) > 1 else v
    return _number(obj)


def extract(stage: str, params: dict, root: Path = Path(".")) -> dict:
    """The headline of ``stage`` from the detailed JSONs under ``root``."""
    cache: dict[str, Any] = {}
    values: dict[str, Any] = {}
    missing = []
    for name, file, key in entries(stage, params):
        if file not in cache:
            path = root / file
            cache[file] = read_json(path) if path.is_file() else None
        v = value_of(lookup(cache[file], key)) if cache[file] is not None else None
        values[name] = NOT_SCORED if v is None else v
        if v is None:
            missing.append(name)
    for _, file, _ in SPEC.get(stage, []):      # a stage whose entries expand to none (external off) still
        if file not in cache:                   # shows the status of its detailed file
            path = root / file
            cache[file] = read_json(path) if path.is_file() else None
    status = next((d.get("status") for d in cache.values() if isinstance(d, dict)
                   and isinstance(d.get("status"), str)), None)
    out: dict = {}
    if status is not None:
        out["status"] = status
    out.update(values)
    out["not_scored"] = missing
    return out


def write(stage: str, params: dict, root: Path = Path(".")) -> dict:
    """Write ``metrics/headline/STAGE.json`` (atomically) and return it."""
    h = extract(stage, params, root)
    write_json(root / paths.headline(stage), h)
    return h


def load(root: Path = Path(".")) -> dict[str, dict]:
    """Every headline file under ``root`` by stage (absent files left out)."""
    out = {}
    for stage in SPEC:
        path = root / paths.headline(stage)
        if path.is_file():
            out[stage] = read_json(path)
    return out


def flatten(headlines: dict[str, dict]) -> dict[str, Any]:
    """``stage.name`` -> value (a number, a CI dict or None); statuses under ``stage.status``."""
    out = {}
    for stage, h in headlines.items():
        for name, v in h.items():
            if name != "not_scored":
                out[f"{stage}.{name}"] = v
    return out


def count(params: dict) -> int:
    """How many values the whole headline set holds under ``params`` (each with its CI where one exists)."""
    return sum(len(entries(stage, params)) for stage in SPEC)


def cell(v: Any, n_format: str = " n={}") -> str:
    """A headline value as text: ``0.812 [0.70, 0.90] n=40``; an interval's status (``no CI``) or "not scored"
    is written out, never left blank."""
    if v is None:
        return NOT_SCORED
    if isinstance(v, str):
        return v
    if isinstance(v, dict):
        s = f"{v['value']:.3f}"
        if "low" in v:
            s += f" [{v['low']:.3f}, {v['high']:.3f}]"
        elif "ci" in v:
            s += f" ({str(v['ci']).replace('_', ' ')})"
        return s + (n_format.format(v["n"]) if "n" in v else "")
    return f"{v:.3f}" if isinstance(v, float) else str(v)
