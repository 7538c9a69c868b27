"""Shortcut audit: does the classifier still score with the lungs hidden?

COVID-CXNet (seed 004) warns that the two sources differ in age (pediatric
Kermany vs adult covid-chestxray), resolution and acquisition. The audit trains
``audit.backbones`` on every fold of ``train.folds`` exactly as the main
classifiers, except the input mode (``audit.input_mode``, default
``lungs_removed``: the U-Net's lung masks blacked out), and reports how much of
the full-image score survives. A score that survives without lungs is learnt
from something other than the lungs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .params import ParamError, check_choice, section
from .segmentation import INPUT_MODES

VARIANTS = ("main", "audit")


@dataclass(frozen=True)
class Paths:
    model_dir: str
    train_metrics: str
    live_dir: str
    predictions: str
    eval_metrics: str
    roc: str


def paths(variant: str, backbone: str, fold: int) -> Paths:
    """Where the train and evaluate stages of ``variant`` write for one backbone x fold."""
    name = f"{backbone}-f{fold}"
    if variant == "main":
        return Paths(f"models/classifier/{backbone}/fold{fold}", f"metrics/train/{name}.json",
                     f"dvclive/train/{name}", f"data/predictions/{name}.csv", f"metrics/eval/{name}.json",
                     f"plots/roc/{name}.csv")
    if variant == "audit":
        return Paths(f"models/audit/{backbone}/fold{fold}", f"metrics/audit/train/{name}.json",
                     f"dvclive/audit/{name}", f"data/predictions_audit/{name}.csv",
                     f"metrics/audit/eval/{name}.json", f"plots/roc_audit/{name}.csv")
    raise ValueError(f"unknown variant {variant!r}; valid variants are {list(VARIANTS)}")


def validate(params: dict) -> dict:
    p = section(params, "audit")
    known = section(params, "train.known_backbones")
    bbs = p.get("backbones")
    if not isinstance(bbs, list) or not bbs or any(b not in known for b in bbs):
        raise ParamError("audit.backbones", f"expected a non-empty list drawn from train.known_backbones {known}, "
                                            f"got {bbs!r}")
    mode = check_choice("audit.input_mode", p.get("input_mode"), INPUT_MODES)
    if mode == "full":
        raise ParamError("audit.input_mode", "the audit must hide something: use lungs_removed (or lung_crop)")
    return p


def _test(m: dict) -> dict:
    t = m["test"]
    return {"micro_f1": t["micro"]["f1"], "macro_f1": t["macro"]["f1"], "auroc_macro": t.get("auroc_macro"),
            "auroc_covid19": (t.get("auroc") or {}).get("covid19")}


def compare(main: dict[str, dict], audit: dict[str, dict], mode: str) -> dict:
    """``main``/``audit``: eval metrics by ``backbone-fK``. Returns per-model rows and a summary."""
    rows = []
    for name in sorted(audit):
        if name not in main:
            raise ValueError(f"audit model {name} has no full-image counterpart in metrics/eval: add its backbone "
                             f"to train.backbones")
        f, a = _test(main[name]), _test(audit[name])
        rows.append({"model": name, **{f"full_{k}": v for k, v in f.items()},
                     **{f"{mode}_{k}": v for k, v in a.items()}})

    def mean(key):
        vals = [r[key] for r in rows if r[key] is not None]
        return float(np.mean(vals)) if vals else None

    summary = {}
    for k in ("micro_f1", "macro_f1", "auroc_macro", "auroc_covid19"):
        full, hidden = mean(f"full_{k}"), mean(f"{mode}_{k}")
        summary[k] = {"full": full, mode: hidden,
                      "retained": (hidden / full) if (full and hidden is not None) else None}
    return {"input_mode": mode, "models": rows, "summary": summary}


def paired_intervals(folds: list[dict], label: str, stats: dict) -> dict:
    """COVID-19 (``label``) AUROC with the full image, with the lungs hidden, and their difference, mean over
    folds, each with a CI over test patient groups; the difference is paired (same images, same draws).

    ``folds``: per fold ``groups`` and ``y`` (test truth of ``label``), ``full`` and ``hidden`` (probabilities)."""
    from .bootstrap import fold_mean_ci, weighted_micro_auroc

    def _auroc(y, prob):            # one label: the micro AUROC of a single column
        return lambda w: weighted_micro_auroc(y[:, None], prob[:, None], w)

    kw = dict(n_boot=stats["resamples"], seed=stats["seed"], confidence=stats["confidence"])
    out = {"label": label, "confidence": stats["confidence"], "chance": 0.5}
    for key, arms in (("full", lambda f: [(f["groups"], _auroc(f["y"], f["full"]))]),
                      ("hidden", lambda f: [(f["groups"], _auroc(f["y"], f["hidden"]))]),
                      ("difference", lambda f: [(f["groups"], _auroc(f["y"], f["full"])),
                                                (f["groups"], _auroc(f["y"], f["hidden"]))])):
        ci = fold_mean_ci([arms(f) for f in folds], **kw)
        out[key] = {"mean": ci["estimate"], "low": ci["low"], "high": ci["high"], "undefined": ci["undefined"]}
    return out


def markdown(result: dict) -> str:
    mode = result["input_mode"]
    lines = [f"### Shortcut audit: full image vs `{mode}` (held-out test set, mean over models and folds)", "",
             f"| metric | full image | {mode} | share retained |", "|---|---|---|---|"]
    for k, v in result["summary"].items():
        f = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
        lines.append(f"| {k} | {f(v['full'])} | {f(v[mode])} | {f(v['retained'])} |")
    ci = result.get("covid19_auroc_ci")
    if ci:
        c = lambda v: f"{v['mean']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"  # noqa: E731
        lines += ["", f"COVID-19 AUROC, mean over models and folds [{ci['confidence']:.0%} CI, bootstrap of test "
                      f"patient groups, paired]: full {c(ci['full'])}, {mode} {c(ci['hidden'])}, "
                      f"lost {c(ci['difference'])} (chance 0.5)."]
    lines += ["", f"Models: {', '.join(r['model'] for r in result['models'])}. AUROC 0.5 is chance; a COVID-19 "
              "AUROC far above 0.5 with the lungs removed means the classifier separates the sources by "
              "something outside the lungs."]
    return "\n".join(lines) + "\n"
