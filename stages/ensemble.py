"""Stage ensemble: per fold, the backbones' mean probability (seed 000) and majority vote;
summaries over folds of every model; the Table-2-style comparison with the paper.

Reads data/predictions/BACKBONE-fK.csv and metrics/eval/BACKBONE-fK.json of
train.backbones x train.folds. Writes data/ensemble/fK.csv (mean probabilities),
metrics/ensemble.json (per fold: thresholds, mean and vote metrics),
metrics/summary.{json,md} (every model, mean ± std over folds), metrics/table2.{json,md}
and plots/roc_ensemble.csv. (Outside data/predictions and metrics/eval, which it reads.)
"""

import pandas as pd

from cxrbench.classify import ensemble as EN
from cxrbench.classify import evaluation as E
from cxrbench.classify import multiclass, paper_scoring, training
from cxrbench.classify import task as TK
from cxrbench.core import bootstrap, paths
from cxrbench.core import headline
from cxrbench.core import params as P
from cxrbench.core.io import write_csv, write_json, write_text
from cxrbench.data.labels import LabelTable


def main(argv: list[str] | None = None) -> None:
    params = P.stage_params(__doc__, argv)
    tp = training.validate(params)
    ev = E.validate(params)
    ens = EN.validate(params, len(tp["backbones"]))
    vote_rule = EN.vote_rule_name(len(tp["backbones"]), ens["vote_tie"])
    table = LabelTable.from_params(params)
    backbones, folds = tp["backbones"], tp["folds"]
    stats = bootstrap.validate(params)
    if TK.task_of(params) == "multiclass":
        return multiclass_main(params, backbones, folds, stats)

    c = EN.combine(table, backbones, folds, ev, ens["vote_tie"], vote_rule)
    for k, mean in c["means"].items():
        write_csv(paths.ensemble_predictions(k), mean)
    write_csv(paths.ROC_ENSEMBLE, pd.concat(c["rocs"], ignore_index=True))
    write_json(paths.ENSEMBLE_METRICS, {"folds": c["fold_records"]})

    s = EN.compare(c["per_fold"], c["test_rows"], backbones, folds, stats, vote_rule, paper_scoring.rule(params))
    rows, val_rows = s["rows"], s["val_rows"]
    write_json(paths.SUMMARY, {"folds": folds, "test": rows, "val": val_rows, "paired_test": s["paired"]})
    write_text(paths.SUMMARY_MD, E.summary_markdown(rows, "test") + "\n" + E.summary_markdown(val_rows, "val"))
    write_json(paths.TABLE2, {"rows": s["table2"], "majority_vote": [r for r in rows if r["model"] == "vote"][0],
                              "paired_test": s["paired"], "folds": folds})
    write_text(paths.TABLE2_MD, EN.table2_markdown(s["table2"], s["note"], stats["confidence"]))
    print(EN.table2_markdown(s["table2"], s["note"], stats["confidence"]))
    headline.write("ensemble", params)


def multiclass_main(params: dict, backbones: list, folds: list, stats: dict) -> None:
    """A multiclass run: members combined by ensemble.combine (mean: SCPA | max: PM), argmax, CIs."""
    classes, mc = TK.output_names(params, []), multiclass.validate(params)
    frames = {k: {b: pd.read_csv(paths.run("main", b, k).predictions, keep_default_na=False) for b in backbones}
              for k in folds}
    res = multiclass.ensemble_run(frames, classes, mc["combine"], mc["snapshots"], stats)
    tables = res.pop("tables")
    for k, t in tables.items():
        write_csv(paths.ensemble_predictions(k), t)
    t = tables[folds[0]][tables[folds[0]]["split"] == "test"]          # the first fold's ensemble
    write_csv(paths.ROC_ENSEMBLE, E.micro_roc(t[E.true_columns(classes)].to_numpy(), t[E.prob_columns(classes)].to_numpy()))
    write_json(paths.ENSEMBLE_METRICS, res)
    write_json(paths.SUMMARY, {"task": "multiclass", "folds": folds, **{k: v for k, v in res.items() if k != "folds"},
                               "headline": multiclass.headline_block(res)})
    write_text(paths.SUMMARY_MD, multiclass.ensemble_markdown(res, classes))
    na = "not applicable: Table 2 of seed 000 scores multi-label predictions; this run is train.task: multiclass"
    write_json(paths.TABLE2, {"status": na})
    write_text(paths.TABLE2_MD, na + "\n")
    print(multiclass.ensemble_markdown(res, classes))
    headline.write("ensemble", params)                      # core.headline.MULTICLASS: accuracy, covid19's rates


if __name__ == "__main__":
    P.run_stage(main)
