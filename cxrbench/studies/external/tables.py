"""The external stage's report: metrics/external.md and the calibration plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrbench.core import bootstrap as B
from cxrbench.core import paths
from cxrbench.studies.external.stats import AUROC_CHANCE, EXTERNAL, INTERNAL, MIX, SAME

PLOT = Path(paths.EXTERNAL_CALIBRATION_PLOT)


def _diff(v: dict | None) -> str:
    return B.format_ci(v, signed=True)


def set_titles(src_result: dict) -> dict[str, str]:
    same = src_result.get("compare_with")
    return {INTERNAL: "internal test", SAME: f"internal test, {same} part" if same else "",
            EXTERNAL: "external", MIX: f"external at the {same} part's mix" if same else ""}


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(result: dict) -> str:
    """metrics/external.md: per source, internal vs external AUROC and AP with CIs, thresholded rates and
    calibration, labels that cannot be scored and why."""
    if result.get("status") != "on":
        return f"## External validation\n\nOff: {result.get('reason', '')}\n"
    conf = f"{result['confidence']:.0%}"
    lines = ["## External validation: the run's classifiers on patients that no model has seen", "",
             f"Cells: estimate [{conf} CI, {B.method_name(result.get('method', B.DEFAULT_METHOD))} bootstrap, "
             f"{result['resamples']} resamples of patients "
             f"(external) or patient groups (internal test), each set drawn on its own; differences on the same "
             f"draws]. Chance: AUROC {AUROC_CHANCE}; AP = the label's prevalence in that set (in brackets after "
             f"AP). Models: "
             + "; ".join(f"`{k}` = mean probability of {', '.join(v)}" if len(v) > 1 else f"`{k}` = {v[0]}"
                         for k, v in result["models"].items())
             + ". The internal columns are the same model (the same mean) on the study's held-out test set, "
               "from the evaluate stage's predictions.", ""]
    for name, src in result["sources"].items():
        t = set_titles(src)
        same = src.get("compare_with")
        comp = SAME if same else INTERNAL
        im = src["images"]
        lines += [f"### `{name}`", "", src["note"] or "", "",
                  f"{im['scored']} images of {im['patients']} patients scored; {im['listed']} listed, "
                  f"{src['excluded']['images']} image(s) of {src['excluded']['patients']} study patient(s) "
                  f"excluded, {im['capped']} left out by external.max_images_per_class "
                  f"({src['max_images_per_class']}), {len(src['unreadable'])} unreadable, "
                  f"{len(src['unparsed'])} file name(s) fitting no pattern. Disjoint from data/index.csv: "
                  f"{src['disjoint']['shared_patients']} shared patients, {src['disjoint']['shared_files']} shared "
                  f"files, {src['disjoint']['pixel_identical']} pixel-identical images (checked). Findings: "
                  f"external {im['by_finding']}" + (f"; {t[SAME]} {src['compare_mix']}" if same else "") + ".", ""]
        if same:
            lines += [f"A label scored against the rest depends on the mix of the rest (bacterial vs viral is "
                      f"harder than bacterial vs normal), so `{t[MIX]}` reweights the external images to the "
                      f"findings mix of the {t[SAME]} (" + (
                          "not available: the two sets do not share their findings" if not src.get("mix_weights")
                          else ", ".join(f"{k} x{v:.2f}" for k, v in src["mix_weights"].items())) + ").", ""]
        head = ["model", "label", f"AUROC {t[INTERNAL]}"] + ([f"AUROC {t[SAME]}"] if same else []) \
            + ["AUROC external"] + ([f"AUROC {t[MIX]}"] if same else []) \
            + [f"external − {t[comp]}"] + ([f"{t[MIX]} − {t[comp]}"] if same else []) \
            + [f"AP {t[comp]} [chance]", "AP external [chance]", "external positives / images"]
        rows, rows2, rows3, skipped = [], [], [], {}
        first = next(iter(src["models"]))
        for label, r in src["models"][first]["labels"].items():     # the truth is the same for every model
            if EXTERNAL not in r["sets"]:
                skipped.setdefault(r["not_scorable"][EXTERNAL], []).append(label)
        for model, res in src["models"].items():
            for label, r in res["labels"].items():
                sets = r["sets"]
                if EXTERNAL not in sets:
                    continue

                def cell(set_name, metric="auroc"):
                    if set_name in sets:
                        return B.format_ci(sets[set_name][metric])
                    return f"– ({r['not_scorable'].get(set_name, 'not computed')})"

                def ap(set_name):
                    return f"{cell(set_name, 'ap')} [{sets[set_name]['ap_chance']:.3f}]" if set_name in sets \
                        else cell(set_name, "ap")

                diffs = r.get("auroc_differences", {})
                rows.append([f"`{model}`", label, cell(INTERNAL)] + ([cell(SAME)] if same else []) + [cell(EXTERNAL)]
                            + ([cell(MIX)] if same else []) + [_diff(diffs.get(f"{EXTERNAL}-{comp}"))]
                            + ([_diff(diffs.get(f"{MIX}-{comp}"))] if same else [])
                            + [ap(comp), ap(EXTERNAL), f"{sets[EXTERNAL]['positives']} / {sets[EXTERNAL]['n']}"])
                ece = [f"{sets[x]['calibration']['ece']:.3f}" if x in sets else "–" for x in (comp, EXTERNAL)]
                rows2.append([f"`{model}`", label, cell(comp, "sensitivity"), cell(EXTERNAL, "sensitivity"),
                              cell(comp, "specificity"), cell(EXTERNAL, "specificity"), *ece])
                own = sets[EXTERNAL].get("own_cut")
                if own and own.get("status") == "ok":
                    rows3.append([f"`{model}`", label, f"{own['validation_cut']:.3f}", f"{own['cut']:.3f}",
                                  f"{own['shift']:+.3f}", cell(EXTERNAL, "sensitivity"),
                                  B.format_ci(own["sensitivity"]), cell(EXTERNAL, "specificity"),
                                  B.format_ci(own["specificity"])])
        lines += _table(head, rows)
        lines += ["", f"At each model's validation thresholds (the vote of its members' cuts, as `python -m "
                      f"cxrbench.studies.predict` decides), and calibration (expected calibration error over "
                      f"{result['calibration_bins']} equal-width bins; reliability diagrams in {PLOT}):", ""]
        lines += _table(["model", "label", f"sensitivity {t[comp]}", "sensitivity external",
                         f"specificity {t[comp]}", "specificity external", f"ECE {t[comp]}", "ECE external"], rows2)
        if rows3:
            lines += ["", "The decisions under shift: sensitivity and specificity on the external set at the "
                          "validation cut and at the external set's own cut (Youden's J, re-chosen in each "
                          "bootstrap resample so that its CI includes the choice; it is what a site that "
                          "recalibrates on its own labelled images would reach: `cxrbench predict --calibrate`). "
                          "The cut moved by the shift column (for an ensemble, from the mean of its members' cuts, "
                          "which vote):", ""]
            lines += _table(["model", "label", "validation cut", "external Youden cut", "shift",
                             "sensitivity at validation cut", "sensitivity at own cut",
                             "specificity at validation cut", "specificity at own cut"], rows3)
        if skipped:
            lines += ["", "Not scorable on this external set (listed, not dropped): " + "; ".join(
                f"{', '.join(v)}: {k}" for k, v in skipped.items()) + "."]
        lines.append("")
    rt = result["runtime"]
    lines.append(f"Stage time {result['seconds']:.0f} s ({rt.get('cpu', '?')}, {rt.get('torch_threads', '?')} torch "
                 f"threads, torch {rt.get('torch', '?')}).")
    return "\n".join(lines) + "\n"


def plot_calibration(result: dict, curves: dict, path: Path = PLOT) -> None:
    """Reliability diagrams of the first model of external.models: one row per source, one panel per label
    scorable on the external set, internal vs external (the diagonal is perfect calibration)."""
    from cxrbench.core.plotting import plt, save

    if result.get("status") != "on" or not curves:
        fig, ax = plt.subplots(figsize=(5, 1.6))
        ax.axis("off")
        ax.text(0.5, 0.5, "External validation off:\n" + str(result.get("reason", ""))[:120], ha="center",
                va="center", fontsize=8, wrap=True)
        save(fig, path)
        return
    width = max(len(v["labels"]) for v in curves.values())
    fig, axes = plt.subplots(len(curves), width, figsize=(3.6 * width, 4.0 * len(curves)), squeeze=False,
                             layout="constrained")
    styles = {INTERNAL: ("tab:blue", "o"), SAME: ("tab:green", "s"), EXTERNAL: ("tab:red", "^"),
              MIX: ("tab:orange", "v")}
    for row, (name, c) in zip(axes, curves.items()):
        for ax in row[len(c["labels"]):]:
            ax.axis("off")
        for col, (ax, (label, sets)) in enumerate(zip(row, c["labels"].items())):
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
            for set_name, rel in sets.items():
                pts = rel["points"]
                colour, marker = styles[set_name]
                ax.plot([p["mean_probability"] for p in pts], [p["observed_frequency"] for p in pts], color=colour,
                        lw=1, label=f"{c['titles'][set_name]} (ECE {rel['ece']:.3f})")
                ax.scatter([p["mean_probability"] for p in pts], [p["observed_frequency"] for p in pts],
                           s=[4 + 2 * np.sqrt(p["n"]) for p in pts], color=colour, marker=marker)
            ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability",
                   ylabel="observed frequency" if col == 0 else None)
            ax.set_title(f"{name}: {label} ({c['model']})", fontsize=8)
            ax.legend(fontsize=5.5, loc="upper left")
    fig.suptitle("Calibration, internal test vs external (reliability diagram; marker area ~ images in the bin)",
                 fontsize=9)
    save(fig, path)
