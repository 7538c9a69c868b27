"""Stage ensemble: per fold, the backbones' mean probability (seed 000) and majority vote;
summaries over folds of every model; the Table-2-style comparison with the paper.

Reads data/predictions/BACKBONE-fK.csv and metrics/eval/BACKBONE-fK.json of
train.backbones x train.folds. Writes data/ensemble/fK.csv (mean probabilities),
metrics/ensemble.json (per fold: thresholds, mean and vote metrics),
metrics/summary.{json,md} (every model, mean ± std over folds), metrics/table2.{json,md}
and plots/roc_ensemble.csv. (Outside data/predictions and metrics/eval, which it reads.)
"""

import argparse

import numpy as np
import pandas as pd

from cxrbench.classify import ensemble as EN
from cxrbench.classify import evaluation as E
from cxrbench.classify import paper_scoring, training
from cxrbench.core import bootstrap
from cxrbench.core import params as P
from cxrbench.core.io import read_json, write_csv, write_json, write_text
from cxrbench.data.labels import LabelTable


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    P.add_stage_arguments(ap)
    params = P.from_arguments(ap.parse_args())
    tp = training.validate(params)
    ev = E.validate(params)
    ens = EN.validate(params, len(tp["backbones"]))
    vote_rule = EN.vote_rule_name(len(tp["backbones"]), ens["vote_tie"])
    table = LabelTable.from_params(params)
    labels = list(table.names)
    backbones, folds = tp["backbones"], tp["folds"]

    per_fold: dict[str, list[dict]] = {b: [] for b in backbones}
    per_fold["ensemble"], per_fold["vote"] = [], []
    fold_records, rocs = [], []
    stats = bootstrap.validate(params)
    index = pd.read_csv("data/index.csv", usecols=["path", "group", "finding", "source"], dtype=str,
                        keep_default_na=False).set_index("path")
    group_of = index["group"].to_dict()
    test_rows: list[dict] = []      # per fold: y, paths, groups and every model's thresholded test predictions
    for k in folds:
        frames, cuts = {}, {}
        for b in backbones:
            frames[b] = pd.read_csv(f"data/predictions/{b}-f{k}.csv", keep_default_na=False)
            m = read_json(f"metrics/eval/{b}-f{k}.json")
            per_fold[b].append(m)
            cuts[b] = np.array([m["thresholds"][n]["cut"] for n in labels])
        mean = EN.mean_probs(frames, labels)
        mcuts, how = E.thresholds_from_frame(mean, labels, ev["threshold"], ev["fixed_threshold"],
                                             ev["min_val_positives"])
        m_mean = E.evaluate_frame(mean, labels, mcuts, table, ev["cut"])
        keys, votes = EN.majority_vote(frames, cuts, labels, ev["cut"])
        m_vote = {}
        for part in ("val", "test"):
            sel = (keys["split"] == part).to_numpy()
            m_vote[part] = E.multilabel_metrics(keys.loc[sel, E.true_columns(labels)].to_numpy(int),
                                                EN.vote_decision(votes[sel], ens["vote_tie"]), votes[sel],
                                                labels, table)
        per_fold["ensemble"].append(m_mean)
        per_fold["vote"].append(m_vote)
        sel = (mean["split"] == "test").to_numpy()
        test_rows.append({
            "y": mean.loc[sel, E.true_columns(labels)].to_numpy(int), "paths": mean.loc[sel, "path"].to_numpy(),
            "groups": np.array([group_of[x] for x in mean.loc[sel, "path"]]), "labels": labels,
            "meta": index.loc[mean.loc[sel, "path"], ["finding", "source"]].reset_index(drop=True),
            "prob": {"ensemble": mean.loc[sel].reset_index(drop=True),
                     **{b: frames[b].loc[sel].reset_index(drop=True) for b in backbones}},
            "pred": {"ensemble": E.positive(mean.loc[sel, E.prob_columns(labels)], mcuts, ev["cut"]),
                     **{b: E.positive(frames[b].loc[sel, E.prob_columns(labels)], cuts[b], ev["cut"])
                        for b in backbones}}})
        write_csv(f"data/ensemble/f{k}.csv", mean)
        test = mean[mean["split"] == "test"]
        roc = E.micro_roc(test[E.true_columns(labels)].to_numpy(), test[E.prob_columns(labels)].to_numpy())
        roc.insert(0, "model", f"ensemble-f{k}")
        rocs.append(roc)
        fold_records.append({
            "fold": k, "backbones": backbones, "threshold_method": ev["threshold"],
            "thresholds": {n: {"cut": float(c), "how": h} for n, c, h in zip(labels, mcuts, how)},
            "mean": m_mean, "vote": m_vote, "vote_rule": vote_rule})
    write_csv("plots/roc_ensemble.csv", pd.concat(rocs, ignore_index=True))
    write_json("metrics/ensemble.json", {"folds": fold_records})

    rows = E.summary_rows(per_fold, "test")
    val_rows = E.summary_rows(per_fold, "val")
    # the best single backbone is chosen on validation micro F1, never on test
    best = max(backbones, key=lambda b: np.mean([f["val"]["micro"]["f1"] for f in per_fold[b]]))
    paired = {"ensemble": "ensemble (mean probability)", "best_single": best,
              "best_single_chosen_by": "mean validation micro F1",
              **EN.paired_difference([t["y"] for t in test_rows], [t["pred"]["ensemble"] for t in test_rows],
                                     [t["pred"][best] for t in test_rows], [t["groups"] for t in test_rows],
                                     [t["paths"] for t in test_rows], stats)}
    for r in rows + val_rows:
        if r["model"] == "vote":
            r["rule"] = vote_rule
    write_json("metrics/summary.json", {"folds": folds, "test": rows, "val": val_rows, "paired_test": paired})
    write_text("metrics/summary.md", E.summary_markdown(rows, "test") + "\n" + E.summary_markdown(val_rows, "val"))

    models = [*backbones, "ensemble"]
    t2 = EN.table2({m: per_fold[m] for m in models}, "test",
                   EN.table2_intervals(test_rows, models, stats, paper_scoring.rule(params)))
    note = (f"Ensemble vs best single backbone ({best}, chosen on validation micro F1), test micro F1, mean over "
            f"{len(folds)} folds: difference {paired['difference']:+.3f}" + (
                f", {stats['confidence']:.0%} CI [{paired['ci']['low']:+.3f}, {paired['ci']['high']:+.3f}] "
                f"(paired bootstrap over {paired['ci']['groups']} test patient groups, {stats['resamples']} "
                f"resamples)" if paired["ci"] else ", per-fold CIs in metrics/table2.json (each fold has its own "
                                                   "test set)") +
            f"; per fold {', '.join(f'{d:+.3f}' for d in paired['fold_differences'])} (training variation). "
            f"Majority vote: {vote_rule}. No p value: 2-5 folds support none.")
    write_json("metrics/table2.json", {"rows": t2, "majority_vote": [r for r in rows if r["model"] == "vote"][0],
                                       "paired_test": paired, "folds": folds})
    write_text("metrics/table2.md", EN.table2_markdown(t2, note, stats["confidence"]))
    print(EN.table2_markdown(t2, note, stats["confidence"]))


if __name__ == "__main__":
    main()
