"""The external stage: every source of ``external.sources`` scored by the run's classifiers
(sources declared as :mod:`cxrbench.studies.external.sources` reads them).

Per source: (1) its images with patient and labels (file names that fit no pattern are listed);
(2) patients with any image in ``data/index.csv`` (any split, linked patients included) are dropped when
``exclude_study_patients`` is true and are an error naming them otherwise, and the rest is verified
disjoint from the study; (3) at most ``external.max_images_per_class`` images per finding (seeded), and
the patients of any image that is a copy of a study image (exact, near, or altered: cropped, re-encoded,
mirrored, turned; the index stage's copy search against data/raw) dropped or refused the same way;
(4) each image decoded and preprocessed with the run's cache recipe (as
:mod:`cxrbench.studies.predict.inputs` does), in worker processes, cached under
``data/external/<name>/cache`` by file content and recipe; an image pixel-identical to a study image (the
index's exact hash) is an error naming both files; (5) every model of ``external.models`` predicts it
(probability: the mean over its members, :func:`cxrbench.studies.predict.apply.combine`; decision: the
vote of the members' validation cuts); (6) per label with both classes present, AUROC and average
precision with bootstrap CIs over patients, beside the same model on the study's held-out test set
(``data/predictions``; groups from ``data/index.csv``), all of it and its part from ``compare_with``;
sensitivity and specificity at the validation thresholds; reliability curves and expected calibration
error. Labels that cannot be scored are listed with the reason.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.classify import task as TK
from cxrbench.core import bootstrap as B
from cxrbench.core import paths
from cxrbench.core.io import write_csv, write_json, write_text
from cxrbench.data.labels import LabelTable
from cxrbench.core.params import section
from cxrbench.data import copies, dedupe
from cxrbench.studies.predict import apply as PA
from cxrbench.studies.predict import inputs as PI
from cxrbench.studies.predict import load as PL
from cxrbench.studies.external.images import prepare_images
from cxrbench.studies.external.overlap import (_listed, cap_per_class, kept_features, refuse_identical,
                                               separate_copies, separate_from_study)
from cxrbench.studies.external.sources import OUT_DIR, ExternalError, fetch_source, list_images, source_root, validate
from cxrbench.studies.external.stats import (EXTERNAL, INTERNAL, MIX, SAME, Scored, mix_weights, own_cut, score_label,
                                             validation_cut)
from cxrbench.studies.external.tables import markdown, plot_calibration, set_titles

INDEX = Path(paths.INDEX)
METRICS_JSON = Path(paths.EXTERNAL_METRICS)
METRICS_MD = Path(paths.EXTERNAL_MD)


def member_names(spec: str, run: PL.Run, params: dict) -> list[int]:
    """Indices into ``run.members`` of the models of one spec."""
    names = [m.name for m in run.members]
    wanted = PL.parse_models(spec, section(params, "train.backbones"), section(params, "train.folds"))
    return [names.index(f"{b}-f{k}") for b, k in wanted]


def subrun(run: PL.Run, idx: list[int]) -> PL.Run:
    return dataclasses.replace(run, members=[run.members[i] for i in idx])


def internal_test(run: PL.Run, index: pd.DataFrame, root: Path = Path(".")) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """The study's held-out test rows (path, y_*) and each member's test probabilities, from the evaluate
    stage's data/predictions (the images every member was tested on, in one order)."""
    base, probs = None, []
    for m in run.members:
        path = root / paths.run("main", m.backbone, m.fold).predictions
        if not path.is_file():
            raise ExternalError(f"{path} not found: the internal test predictions of {m.name} come from the "
                                f"evaluate stage; run it (dvc repro evaluate)")
        frame = pd.read_csv(path, keep_default_na=False)
        test = frame.loc[frame["split"] == "test"].sort_values("path", kind="stable").reset_index(drop=True)
        if base is None:
            base = test[["path", *(f"y_{n}" for n in run.labels)]]
        elif not np.array_equal(test["path"].to_numpy(), base["path"].to_numpy()):
            raise ExternalError(f"{path} covers other test images than the first model's predictions: rerun "
                                f"evaluate for every model (dvc repro evaluate)")
        probs.append(test[[f"prob_{n}" for n in run.labels]].to_numpy(np.float64).astype(np.float32))
    unknown = sorted(set(base["path"]) - set(index["path"]))
    if unknown:
        raise ExternalError(f"test images {_listed(unknown)} of data/predictions are not in data/index.csv: the "
                            f"predictions are older than the index; rerun evaluate (dvc repro evaluate)")
    return base, probs


def _mix_text(findings) -> str:
    return ", ".join(f"{k} {v}" for k, v in pd.Series(np.asarray(findings)).value_counts().sort_index().items())


def write_off(reason: str, out_dir: Path = OUT_DIR) -> dict:
    result = {"status": "off", "reason": reason}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "README.txt", f"External validation is off: {reason}\n")
    write_json(METRICS_JSON, result)
    write_text(METRICS_MD, markdown(result))
    plot_calibration(result, {})
    return result


def run_stage(params: dict, device=None, workers: int = 1, show: bool = True) -> dict:
    """The external stage: score every source of external.sources; write metrics/external.{json,md}, the
    calibration plot and data/external/<name>/ (cache and per-image predictions)."""
    from cxrbench.core import runtime

    start = time.perf_counter()
    cfg = validate(params)
    if not cfg.sources:
        return write_off("external.sources is empty; list entries of external.catalog there to score them "
                         "(profiles ci and mirror score kermany_unused)")
    if TK.task_of(params) == "multiclass":         # refused before any source is read, not scored wrongly
        raise ExternalError(f"external.sources {cfg.sources} is set, but train.task is multiclass: external "
                            f"validation scores multi-label runs (per-label AUROC, sensitivity and specificity at "
                            f"validation cuts), and a multiclass run has classes decided by argmax and no cuts. "
                            f"Set external.sources: [] for this run; its test-set class metrics are in metrics/eval")
    stats = B.validate(params)
    copy_params = {**dedupe.validate(params), **copies.validate(params)}
    table = LabelTable.from_params(params)
    if not INDEX.is_file():
        raise ExternalError(f"{INDEX} not found: the external stage checks its sources against the study's index; "
                            f"run the index stage (dvc repro index)")
    index = pd.read_csv(INDEX, dtype=str, keep_default_na=False)
    study_features = None           # the index stage's copy-search features, read once for every source
    selected = {}                   # every source selected and checked against the study before any model loads
    for src in cfg.sources:
        origin = fetch_source(src)
        root, prefix = source_root(src)
        frame, unparsed = list_images(src, root, prefix, table)
        listed = len(frame)
        frame, excluded = separate_from_study(frame, index, src)
        kept = len(frame)
        frame = cap_per_class(frame, cfg.max_images_per_class, cfg.seed)
        capped = kept - len(frame)
        if study_features is None:
            study_features = kept_features(index, Path(paths.RAW), copy_params, paths.COPY_FEATURES)
        frame, study_copies = separate_copies(frame, index, Path(paths.RAW), src, copy_params, workers,
                                              study_features)
        selected[src.name] = (origin, frame, unparsed, listed, excluded, kept, capped, study_copies)
    union = []
    for spec in cfg.models:
        for b, k in PL.parse_models(spec, section(params, "train.backbones"), section(params, "train.folds")):
            if f"{b}:{k}" not in union:
                union.append(f"{b}:{k}")
    run = PL.load_run(".", ",".join(union), params, device)
    if list(run.labels) != list(table.names):
        raise ExternalError(f"the models predict labels {run.labels} but labels.names is {list(table.names)}: "
                            f"retrain (dvc repro train) or use the params of the run")
    groups = {spec: member_names(spec, run, params) for spec in cfg.models}
    result = {"status": "on", "models": {s: [run.members[i].name for i in idx] for s, idx in groups.items()},
              "confidence": stats["confidence"], "resamples": stats["resamples"], "method": stats["method"],
              "calibration_bins": cfg.calibration_bins, "recipe": run.recipe.record(), "sources": {}}

    test, test_probs = internal_test(run, index)
    group_of = dict(zip(index["path"], index["group"]))
    source_of = dict(zip(index["path"], index["source"]))
    finding_of = dict(zip(index["path"], index["finding"]))
    y_test = test[[f"y_{n}" for n in run.labels]].to_numpy(int)
    internal = {spec: PA.combine(subrun(run, idx), [test_probs[i] for i in idx]) for spec, idx in groups.items()}
    g_test = np.array([group_of[p] for p in test["path"]])
    src_test = np.array([source_of[p] for p in test["path"]])
    finding_test = np.array([finding_of[p] for p in test["path"]])
    curves = {}
    for src in cfg.sources:
        origin, frame, unparsed, listed, excluded, kept, capped, study_copies = selected[src.name]
        images, state, reused = prepare_images(frame, run.recipe, OUT_DIR / src.name / "cache", workers, show)
        refuse_identical(frame, state, index, src)
        ok = (state["status"] == PI.OK).to_numpy()
        unreadable = [{"path": p, "status": st} for p, st in zip(frame["path"][~ok], state["status"][~ok])]
        scored = frame.loc[ok].reset_index(drop=True)
        if scored.empty:
            raise ExternalError(f"external source `{src.name}`: none of its {len(frame)} images could be read "
                                f"(first: {unreadable[0] if unreadable else '-'})")
        member_probs = [prob[ok] for prob in PA.predict_members(run, images)]     # batches read from the memmap
        y_ext = scored[[f"y_{n}" for n in run.labels]].to_numpy(int)
        same = src_test == src.compare_with if src.compare_with else None
        if same is not None and not same.any():
            raise ExternalError(f"{src.key}.compare_with: no test image of the study comes from "
                                f"{src.compare_with!r}; name a source of the study or null")
        mix = mix_weights(scored["finding"], finding_test[same]) if same is not None else None
        src_result = {"note": src.note, "origin": origin, "compare_with": src.compare_with,
                      "max_images_per_class": cfg.max_images_per_class, "excluded": excluded,
                      "unparsed": unparsed, "unreadable": unreadable, "reused_from_cache": reused,
                      "images": {"listed": listed, "outside_study": kept, "capped": capped,
                                 "scored": len(scored), "patients": int(scored["patient"].nunique()),
                                 "by_finding": _mix_text(scored["finding"])},
                      "disjoint": {"shared_patients": 0, "shared_files": 0, "pixel_identical": 0},
                      "study_copies": study_copies,
                      "compare_mix": _mix_text(finding_test[same]) if same is not None else None,
                      "mix_weights": None if mix is None else {
                          f: float(w) for f, w in sorted(dict(zip(scored["finding"], mix)).items())},
                      "models": {}}
        for spec, idx in groups.items():
            prob, pred = PA.combine(subrun(run, idx), [member_probs[i] for i in idx])
            iprob, ipred = internal[spec]
            sets = {INTERNAL: Scored(y_test, iprob, ipred, g_test)}
            if same is not None:
                sets[SAME] = Scored(y_test[same], iprob[same], ipred[same], g_test[same])
            sets[EXTERNAL] = Scored(y_ext, prob, pred, scored["patient"].to_numpy())
            diffs = [(EXTERNAL, SAME if same is not None else INTERNAL)]
            if mix is not None:
                sets[MIX] = Scored(y_ext, prob, pred, scored["patient"].to_numpy(), mix)
                diffs.append((MIX, SAME))
            labels = {n: score_label(sets, j, stats, cfg.calibration_bins, diffs) for j, n in enumerate(run.labels)}
            member_cuts = [run.members[i].cuts for i in idx]
            for j, n in enumerate(run.labels):            # the decisions at the external set's own cut
                if EXTERNAL in labels[n]["sets"]:
                    labels[n]["sets"][EXTERNAL]["own_cut"] = own_cut(
                        y_ext[:, j], prob[:, j], validation_cut(member_cuts, j), scored["patient"].to_numpy(), stats)
            src_result["models"][spec] = {"labels": labels}
            out = scored[["path", "patient", "finding"]].copy()
            out[[f"prob_{n}" for n in run.labels]] = prob
            out[[f"pred_{n}" for n in run.labels]] = pred
            out[[f"y_{n}" for n in run.labels]] = y_ext
            write_csv(OUT_DIR / src.name / f"predictions_{spec.replace(':', '-f')}.csv", out)
            if spec == cfg.models[0]:
                curves[src.name] = {"model": spec, "titles": set_titles(src_result), "labels": {
                    n: {s: r["sets"][s]["calibration"] for s in r["sets"]}
                    for n, r in labels.items() if EXTERNAL in r["sets"]}}
        result["sources"][src.name] = src_result
        print(f"external `{src.name}`: {len(scored)} images of {src_result['images']['patients']} patients "
              f"({excluded['images']} of study patients excluded, {study_copies['images']} of patients with "
              f"copies of study images excluded, {reused} from the cache)")
    result["seconds"] = time.perf_counter() - start
    result["runtime"] = runtime.info()
    write_json(METRICS_JSON, result)
    write_text(METRICS_MD, markdown(result))
    plot_calibration(result, curves)
    return result
