"""One factor at a time: re-score the same trained models' test predictions under two threshold rules.

Only ``evaluate.min_val_positives`` changes between the two scorings (same
models, same predictions, cuts chosen on each fold's val rows); the difference
in test micro F1 (mean over the run's folds) gets a paired bootstrap CI over
test patient groups (``params.yaml: stats``). Chance level: random predictions
at the labels' prevalences (micro F1 = micro prevalence).

    python scripts/threshold_rule_effect.py [RUN_DIR] [--rules 1 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.classify import evaluation as E
from cxrbench.classify import training
from cxrbench.core import bootstrap as B
from cxrbench.core import params as P
from cxrbench.data.labels import LabelTable


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", default=".", help="a run's root (data/predictions/, data/index.csv, params.yaml)")
    ap.add_argument("--rules", nargs=2, type=int, default=[1, 5], metavar=("OLD", "NEW"))
    args = ap.parse_args()
    root = Path(args.run)
    params = P.load(root / "params.yaml")
    labels, tp, ev, stats = (list(LabelTable.from_params(params).names), training.validate(params),
                             E.validate(params), B.validate(params))
    group_of = dict(zip(*pd.read_csv(root / "data/index.csv", usecols=["path", "group"], dtype=str).to_numpy().T))
    kw = B.options(stats)                   # the run's whole stats section, as its stages use it
    old, new = args.rules
    for b in tp["backbones"]:
        ys, preds, groups = [], {old: [], new: []}, None
        for k in tp["folds"]:
            pred = pd.read_csv(root / f"data/predictions/{b}-f{k}.csv", keep_default_na=False)
            test = pred[pred["split"] == "test"]
            prob = test[E.prob_columns(labels)].to_numpy(float)
            ys.append(test[E.true_columns(labels)].to_numpy(int))
            for m in (old, new):
                cuts, _ = E.thresholds_from_frame(pred, labels, "val_f1", ev["fixed_threshold"], m)
                preds[m].append(prob >= cuts)
            g = np.array([group_of[x] for x in test["path"]])
            if groups is not None and not np.array_equal(groups, g):
                raise SystemExit("the folds have different test sets (cohort: paper): score them fold by fold")
            groups = g

        def score(m):
            return lambda i: float(np.mean([B.micro_f1(y[i], q[i]) for y, q in zip(ys, preds[m])]))
        a, c, d = B.group_ci(score(old), groups, **kw), B.group_ci(score(new), groups, **kw), \
            B.paired_ci(score(new), score(old), groups, **kw)
        print(f"{b}: test micro F1 over folds {tp['folds']}, n = {len(groups)} images / {d['groups']} patient "
              f"groups, chance {np.mean(ys[0]):.3f}\n"
              f"  min_val_positives {old}: {a['estimate']:.3f} [{a['low']:.3f}, {a['high']:.3f}]\n"
              f"  min_val_positives {new}: {c['estimate']:.3f} [{c['low']:.3f}, {c['high']:.3f}]\n"
              f"  difference: {d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] "
              f"({stats['confidence']:.0%} paired bootstrap, {stats['resamples']} resamples)")


if __name__ == "__main__":
    main()
