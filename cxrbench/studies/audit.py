"""Shortcut audit: what does the classifier still score when it cannot see the lungs, or sees only them?

COVID-CXNet (seed 004) warns that the two sources differ in age
(pediatric Kermany vs adult covid-chestxray), resolution and acquisition. The
audit trains ``audit.backbones`` on every fold of ``audit.folds`` (of ``train.folds``) exactly as the
main classifiers, once per control of ``audit.controls``
(:mod:`cxrbench.lungs.controls`: the lungs' region hidden, everything else hidden,
the region's silhouette alone, the lung mask's silhouette alone, the
paper-style black lung hole), and scores each against the full-image model on
the same test images:

* every score of ``audit.scores``: an AUROC of one label's probability against
  a truth (a label, or ``source=NAME``), on the whole test set or ``within`` one
  source, so that "COVID-19" is also measured where source cannot explain it;
* per control: AUROC with a CI, its paired difference from the full image, and
  the share of the full image's margin over chance it retains,
  (control - 0.5) / (full - 0.5), with a CI; chance is 0.5;
* test images whose lung mask is implausible (empty, one component, too large)
  are excluded from every arm, counted and listed.

The finding is the pattern across controls, not one number.

:func:`run` is the audit stage: the predictions read, the table, its plots.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrbench.core import bootstrap, paths
from cxrbench.core import params as P
from cxrbench.core.io import read_json, write_json, write_text
from cxrbench.data.cache import Cache
from cxrbench.data.labels import scored_outputs
from cxrbench.lungs import controls as audit_inputs
from cxrbench.lungs import segmentation as seg
from cxrbench.core.params import ParamError, section

CHANCE = 0.5                      # AUROC of a score that carries no information
MIN_MARGIN = 0.05                 # retained share undefined when the full model is this close to chance


def validate(params: dict) -> dict:
    """Check ``params: audit``; return it."""
    p = section(params, "audit")
    known = section(params, "train.known_backbones")
    bbs = p.get("backbones")
    if not isinstance(bbs, list) or not bbs or any(b not in known for b in bbs):
        raise ParamError("audit.backbones", f"expected a non-empty list drawn from train.known_backbones {known}, "
                                            f"got {bbs!r}")
    folds, trained = p.get("folds"), section(params, "train.folds")
    if (not isinstance(folds, list) or not folds or len(set(map(str, folds))) != len(folds)
            or any(isinstance(k, bool) or not isinstance(k, int) or k not in trained for k in folds)):
        raise ParamError("audit.folds", f"expected a non-empty list without repeats drawn from train.folds "
                                        f"{trained} (the audit compares each control with the main model of the "
                                        f"same fold), got {folds!r}")
    controls = p.get("controls")
    if (not isinstance(controls, list) or not controls or not all(isinstance(c, str) for c in controls)
            or len(set(controls)) != len(controls)
            or any(c not in audit_inputs.CONTROLS for c in controls)):
        raise ParamError("audit.controls", f"expected a non-empty list without repeats drawn from "
                                           f"{list(audit_inputs.CONTROLS)}, got {controls!r}")
    audit_inputs.validate(p)
    labels = section(params, "labels.names")
    sources = list(section(params, "sources"))
    scores = p.get("scores")
    if not isinstance(scores, dict) or not scores:
        raise ParamError("audit.scores", "expected a mapping name -> {score: LABEL, truth: LABEL | source=NAME, "
                                         "within: SOURCE | null}")
    for name, spec in scores.items():
        key = f"audit.scores.{name}"
        if not isinstance(spec, dict) or set(spec) - {"score", "truth", "within"}:
            raise ParamError(key, f"expected {{score, truth, within}}, got {spec!r}")
        if spec.get("score") not in labels:
            raise ParamError(f"{key}.score", f"unknown label {spec.get('score')!r}; valid labels are labels.names")
        truth = spec.get("truth")
        if isinstance(truth, str) and truth.startswith("source="):
            if truth[len("source="):] not in sources:
                raise ParamError(f"{key}.truth", f"unknown source in {truth!r}; valid sources are {sources}")
        elif truth not in labels:
            raise ParamError(f"{key}.truth", f"expected a label of labels.names or source=NAME, got {truth!r}")
        if spec.get("within") is not None and spec["within"] not in sources:
            raise ParamError(f"{key}.within", f"unknown source {spec['within']!r}; valid sources are {sources}")
    return p


# --- scoring ------------------------------------------------------------------------------------

def subset_and_truth(spec: dict, fold: dict) -> tuple[np.ndarray, np.ndarray]:
    """Which of a fold's (kept) test images a score uses, and their 0/1 truth."""
    sel = fold["keep"].copy()
    if spec.get("within") is not None:
        sel &= fold["source"] == spec["within"]
    truth = spec["truth"]
    if truth.startswith("source="):
        y = (fold["source"] == truth[len("source="):]).astype(int)
    else:
        y = fold["y"][truth].astype(int)
    return sel, y


def auroc_margin(stats: dict) -> float:
    """The equivalence margin around chance for an AUROC (``stats.equivalence.auroc``; the library's default
    where a caller's stats lack it)."""
    return float(stats.get("equivalence", {}).get("auroc", bootstrap.DEFAULT_EQUIVALENCE["auroc"]))


def analyse(folds: list[dict], scores: dict, controls: list[str], stats: dict) -> dict:
    """Every score x arm (full + controls): AUROC, paired difference from full and retained share, with CIs.

    ``folds``: per model (backbone x fold) ``model``, ``groups``, ``source`` (per
    test image), ``keep`` (bool: plausible mask), ``y`` (label -> 0/1 array) and
    ``prob`` (arm -> label -> probabilities), all aligned on the same test images.
    """
    from cxrbench.core.bootstrap import auroc_statistic, fold_bootstrap

    arms = ["full", *controls]
    out = {}
    for name, spec in scores.items():
        per_fold, fold_arms, status = [], [], "ok"
        for f in folds:
            sel, y = subset_and_truth(spec, f)
            ys = y[sel]
            n_pos, n_neg = int(ys.sum()), int(len(ys) - ys.sum())
            per_fold.append({"model": f["model"], "images": int(sel.sum()), "positives": n_pos, "negatives": n_neg})
            if n_pos == 0 or n_neg == 0:
                status = (f"undefined: {f['model']} has {n_pos} positive and {n_neg} negative test images "
                          f"for this score")
                continue
            stats_of = {arm: auroc_statistic(ys, f["prob"][arm][spec["score"]][sel]) for arm in arms}
            for arm in arms:
                per_fold[-1][arm] = stats_of[arm](np.ones(len(ys)))
            per_fold[-1]["constant"] = [arm for arm in arms if np.ptp(f["prob"][arm][spec["score"]][sel]) == 0]
            fold_arms.append([(f["groups"][sel], stats_of[arm]) for arm in arms])
        entry = {"spec": spec, "chance": CHANCE, "status": status, "folds": per_fold}
        if status != "ok":
            out[name] = entry
            continue
        reducers = {f"auroc:{arm}": (lambda v, j=j: v[:, j].mean()) for j, arm in enumerate(arms)}
        for j, c in enumerate(controls, start=1):
            reducers[f"difference:{c}"] = lambda v, j=j: (v[:, j] - v[:, 0]).mean()
            reducers[f"retained:{c}"] = lambda v, j=j: _retained(v[:, j].mean(), v[:, 0].mean())
        margin = auroc_margin(stats)
        tests = {f"auroc:{arm}": {"equivalence": (CHANCE - margin, CHANCE + margin)} for arm in arms}
        cis = fold_bootstrap(fold_arms, reducers, stats["resamples"], stats["seed"], stats["confidence"],
                             stats.get("method", bootstrap.DEFAULT_METHOD),
                             stats.get("min_valid_share", bootstrap.DEFAULT_MIN_VALID), tests=tests)
        entry["auroc"] = {arm: _ci(cis[f"auroc:{arm}"]) for arm in arms}
        # a model whose output is the same for every image (e.g. a silhouette that is the same template
        # everywhere) scores exactly 0.5: a status to show, not a finding
        entry["constant_output"] = [arm for arm in arms if all(arm in f.get("constant", []) for f in per_fold)]
        entry["difference"] = {c: _ci(cis[f"difference:{c}"]) for c in controls}
        entry["retained"] = {c: _ci(cis[f"retained:{c}"]) for c in controls}
        out[name] = entry
    return out


def _retained(control: float, full: float) -> float:
    if not np.isfinite(full) or full - CHANCE < MIN_MARGIN:
        return float("nan")
    return (control - CHANCE) / (full - CHANCE)


def _ci(ci: dict) -> dict:
    out = {"mean": ci["estimate"], "low": ci["low"], "high": ci["high"], "undefined": ci["undefined"],
           "status": ci.get("status", "ok")}
    if ci.get("reason"):
        out["reason"] = ci["reason"]
    if ci.get("equivalence"):
        out["equivalence"] = ci["equivalence"]
    return out


def verdict(ci: dict) -> str:
    """Where an AUROC's CI lies relative to chance (0.5): above, below, ``chance`` only where an equivalence
    test (TOST, margin ``stats.equivalence.auroc``) puts it within the margin, else ``inconclusive``."""
    if ci["mean"] is None or ci.get("low") is None or not np.isfinite(ci["low"]):
        return "undefined"
    if ci["low"] > CHANCE:
        return "above chance"
    if ci["high"] < CHANCE:
        return "below chance"
    return "chance" if (ci.get("equivalence") or {}).get("equivalent") else "inconclusive"


# --- report -------------------------------------------------------------------------------------

CONTROL_TEXT = {
    "full": "the whole image (the main classifier)",
    "outside_only": "the lungs' region hidden: only what lies outside it",
    "lungs_only": "everything outside the region hidden: only the lungs' region",
    "silhouette_only": "the hidden region's shape alone (binary image)",
    "mask_silhouette": "the lung mask's shape alone (what the paper-style hole shows)",
    "lungs_removed": "paper-style: lung mask blacked out (a lung-shaped hole)",
}


def _fmt(ci: dict | None, signed: bool = False) -> str:
    if not ci or ci.get("mean") is None:
        return "–"
    f = "{:+.3f}" if signed else "{:.3f}"
    if ci.get("low") is None or not np.isfinite(ci["low"]):
        return f.format(ci["mean"]) + " [no CI]"
    return f"{f.format(ci['mean'])} [{f.format(ci['low'])}, {f.format(ci['high'])}]"


def markdown(result: dict) -> str:
    controls, scores = result["controls"], result["scores"]
    arms = ["full", *controls]
    conf = result["confidence"]
    o = result["options"]
    lines = [f"### Shortcut audit: what `{', '.join(result['backbones'])}` scores from each control "
             f"(test set, mean over folds {result['folds']}; [{conf:.0%} CI], bootstrap of test patient groups, "
             "one draw shared by every fold, paired across controls; variance: test patients only, one training "
             "seed per model. \"chance\": an equivalence test (TOST) puts the AUROC within "
             f"±{result.get('equivalence_margin', 0.05):g} of 0.5; a CI that only includes 0.5 is \"inconclusive\")",
             "",
             f"Region: `{o['region']}` dilated by {o['dilation']:g} x the image side, filled with `{o['fill']}`"
             + (f" (sigma {o['blur_sigma']} x side)" if o["fill"] == "blur" else "") + "; each control is a model "
             "trained like the main one on its input. Chance AUROC is 0.5 for every score.", ""]
    lines += ["| control | what the model sees |", "|---|---|"]
    lines += [f"| {a} | {CONTROL_TEXT[a]} |" for a in arms]
    lines += ["", "**AUROC** (chance 0.5)", "",
              "| score | test images (pos/neg, summed over folds) | " + " | ".join(arms) + " |",
              "|---|---|" + "---|" * len(arms)]
    for name, s in scores.items():
        pos = sum(f["positives"] for f in s["folds"])
        neg = sum(f["negatives"] for f in s["folds"])
        if s["status"] != "ok":
            lines.append(f"| {name} | {pos}/{neg} | {s['status']} |" + " |" * (len(arms) - 1))
            continue
        const = set(s.get("constant_output", []))
        lines.append(f"| {name} | {pos}/{neg} | " + " | ".join(
            _fmt(s["auroc"][a]) + (" constant output" if a in const else "") for a in arms) + " |")
    lines += ["", "**Share of the full image's margin over chance retained**, (control − 0.5) / (full − 0.5): "
              "1 = all of it, 0 = chance (undefined where full is within "
              f"{MIN_MARGIN} of chance)", "",
              "| score | " + " | ".join(controls) + " |", "|---|" + "---|" * len(controls)]
    for name, s in scores.items():
        if s["status"] == "ok":
            lines.append(f"| {name} | " + " | ".join(_fmt(s["retained"][c]) for c in controls) + " |")
    lines += ["", "**Against chance** (where each control's AUROC CI lies)", "",
              "| score | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for name, s in scores.items():
        if s["status"] == "ok":
            lines.append(f"| {name} | " + " | ".join(verdict(s["auroc"][a]) for a in arms) + " |")
    lines += ["", "Scores: " + "; ".join(f"`{n}` = AUROC of the {s['spec']['score']} probability for "
                                          f"{_truth_text(s['spec'])}" for n, s in scores.items()) + "."]
    ex = result["excluded"]
    lines += ["", f"Excluded from every arm: {ex['count']} test image(s) of {ex['of']} with an implausible lung "
                  f"mask ({_counts(ex['by_reason'])}; listed in metrics/shortcut_audit.json)."]
    plaus = result.get("mask_plausibility")
    if plaus:
        lines += ["", "**Lung masks per source** (all cached images; U-Net trained on adult V7 masks only; "
                      "pictures in plots/segment_grid.png)", "",
                  "| source | images | area fraction mean [q05, q95] | components 0 / 1 / 2+ | implausible |",
                  "|---|---|---|---|---|"]
        for src, v in plaus.items():
            a = v["area_fraction"]
            comp = v.get("components", {})
            lines.append(f"| {src} | {a.get('n', 0)} | {a.get('mean', float('nan')):.3f} "
                         f"[{a.get('quantiles', {}).get('q05', float('nan')):.3f}, "
                         f"{a.get('quantiles', {}).get('q95', float('nan')):.3f}] | "
                         f"{comp.get('0', '–')} / {comp.get('1', '–')} / {comp.get('2+', '–')} | "
                         f"{v.get('implausible', '–')} |")
    return "\n".join(lines) + "\n"


def _truth_text(spec: dict) -> str:
    t = spec["truth"]
    what = f"images from {t[len('source='):]} vs the rest" if t.startswith("source=") else f"{t} vs not {t}"
    return what + (f", within {spec['within']} only" if spec.get("within") else ", all test images")


def _counts(d: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in d.items()) or "none"


# --- figures ------------------------------------------------------------------------------------

def plot_scores(result: dict, path) -> None:
    """One panel per score: each arm's AUROC with its CI, chance marked."""
    from cxrbench.core.plotting import plt, save

    arms = ["full", *result["controls"]]
    scores = {n: s for n, s in result["scores"].items() if s["status"] == "ok"}
    fig, axes = plt.subplots(1, max(len(scores), 1), figsize=(3.2 * max(len(scores), 1), 0.45 * len(arms) + 1.4),
                             squeeze=False, sharey=True)
    for ax, (name, s) in zip(axes[0], scores.items()):
        for i, arm in enumerate(arms):
            ci = s["auroc"][arm]
            if ci["mean"] is None:
                continue
            err = [[ci["mean"] - ci["low"]], [ci["high"] - ci["mean"]]] if ci.get("low") is not None else None
            ax.errorbar(ci["mean"], i, xerr=err, fmt="o", color="C0" if arm == "full" else "C1", capsize=3)
        ax.axvline(CHANCE, color="grey", linestyle="--", linewidth=1)
        ax.set_xlim(0.3, 1.0)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("AUROC (chance 0.5)", fontsize=8)
        ax.set_yticks(range(len(arms)), arms, fontsize=8)
    axes[0][0].invert_yaxis()                   # shared y: the first arm (full) on top of every panel
    fig.suptitle(f"Shortcut audit ({', '.join(result['backbones'])}; {result['confidence']:.0%} CI over test "
                 "patient groups)", fontsize=9)
    fig.tight_layout()
    save(fig, path)


def plot_controls(examples: dict[str, np.ndarray], arms: list[str], path) -> None:
    """``examples``: source -> (arms, C, S, S) uint8, one test image per source under every arm."""
    from cxrbench.core.plotting import plt, save

    fig, axes = plt.subplots(len(examples), len(arms), figsize=(1.9 * len(arms), 2.1 * len(examples)),
                             squeeze=False)
    for r, (src, stack) in enumerate(examples.items()):
        for c, arm in enumerate(arms):
            ax = axes[r, c]
            ax.imshow(stack[c][0], cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{src}: {arm}", fontsize=7)
            ax.axis("off")
    fig.suptitle("What each audit model sees (one test image per source)", fontsize=9)
    fig.tight_layout()
    save(fig, path)


# --- the stage ----------------------------------------------------------------------------------

def test_part(path: str) -> pd.DataFrame:
    frame = pd.read_csv(path, keep_default_na=False)
    return frame[frame["split"] == "test"].reset_index(drop=True)


def run(params: dict) -> None:
    """The audit stage on ``params``: the table of every control against the full image, its plots and printout."""
    a = validate(params)
    stats = bootstrap.validate(params)
    max_area = P.section(params, "segment.implausible_max_area")
    folds = a["folds"]
    cache = Cache(paths.CACHE, paths.INDEX, in_memory=False)
    masks = seg.load_lung_masks(len(cache.index), mmap=True)
    index = cache.index.set_index("path")
    row_of = pd.Series(np.arange(len(cache.index)), index=cache.index["path"])

    records, excluded, unscored = [], {}, {}
    for bb in a["backbones"]:
        for k in folds:
            full = test_part(paths.run("main", bb, k).predictions)
            test_paths = list(full["path"])
            labels = scored_outputs(full)   # the outputs in use
            for name, s in a["scores"].items():    # e.g. a multiclass run's classes: a status, not a crash
                missing = sorted({v for v in (s["score"], s["truth"]) if not v.startswith("source=")} - set(labels))
                if missing:
                    unscored[name] = {"spec": s, "chance": CHANCE, "folds": [],
                                      "status": f"not scored: {missing} not among the classifier's outputs {labels}"}
            prob = {"full": full}
            for c in a["controls"]:
                frame = test_part(paths.run("audit", bb, k, c).predictions)
                if list(frame["path"]) != test_paths:
                    raise RuntimeError(f"{bb} fold {k}: the {c} model was evaluated on other test images than the "
                                       f"full-image model: rerun evaluate for both (dvc repro evaluate audit_evaluate)")
                prob[c] = frame
            keep = np.ones(len(test_paths), dtype=bool)
            for i, path in enumerate(test_paths):
                reasons = seg.implausible(masks[row_of[path]], max_area)
                if reasons:
                    keep[i] = False
                    if path not in excluded:
                        excluded[path] = {"path": path, "source": index.at[path, "source"], "reasons": reasons}
            records.append({
                "model": f"{bb}-f{k}", "paths": test_paths, "groups": index.loc[test_paths, "group"].to_numpy(),
                "source": index.loc[test_paths, "source"].to_numpy(), "keep": keep,
                "y": {n: full[f"y_{n}"].to_numpy(int) for n in labels},
                "prob": {arm: {n: f[f"prob_{n}"].to_numpy(float) for n in labels} for arm, f in prob.items()}})

    by_reason = {}
    for e in excluded.values():
        for r in e["reasons"]:
            by_reason[r] = by_reason.get(r, 0) + 1
    n_test = len({p for r in records for p in r["paths"]})
    options = audit_inputs.validate(a)
    segment = read_json(paths.SEGMENT_METRICS)
    result = {"backbones": a["backbones"], "folds": folds, "controls": a["controls"], "options": options,
              "confidence": stats["confidence"], "chance": CHANCE,
              "equivalence_margin": auroc_margin(stats),
              "scores": {**analyse(records, {n: v for n, v in a["scores"].items() if n not in unscored},
                                   a["controls"], stats), **unscored},
              "excluded": {"count": len(excluded), "of": n_test, "by_reason": by_reason,
                           "images": sorted(excluded.values(), key=lambda e: e["path"])},
              "mask_plausibility": segment.get("by_source")}
    write_json(paths.SHORTCUT_AUDIT, result)
    write_text(paths.SHORTCUT_AUDIT_MD, markdown(result))
    plot_scores(result, paths.SHORTCUT_AUDIT_PLOT)

    arms = ["full", *a["controls"]]
    first = records[0]
    picks = {}                                  # the first plausible test image of each source
    for path, src, ok in zip(first["paths"], first["source"], first["keep"]):
        if ok and src not in picks:
            picks[src] = int(row_of[path])
    rows = np.array(sorted(picks.values()))
    images = np.asarray(cache.images)           # the fill and template come from the whole cache, as in training
    shown = [images[rows]] + [audit_inputs.apply_control(images, np.asarray(masks), c,
                                                         P.section(params, "train.mask_dilation"), rows=rows,
                                                         **audit_inputs.options_for(c, a)) for c in a["controls"]]
    examples = {src: np.stack([s[list(rows).index(r)] for s in shown]) for src, r in sorted(picks.items())}
    plot_controls(examples, arms, paths.SHORTCUT_CONTROLS_PLOT)
    for name, s in result["scores"].items():
        if s["status"] != "ok":
            print(f"audit: {name}: {s['status']}")
            continue
        print(f"audit: {name}: " + ", ".join(f"{arm} {s['auroc'][arm]['mean']:.3f}" for arm in arms))
    print(f"audit: {len(excluded)} test image(s) with implausible masks excluded from every arm")
