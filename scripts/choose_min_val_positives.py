"""Measure, on validation data only, how many validation positives a label needs before its F1-best cut
beats the fixed cut; this chose ``evaluate.min_val_positives``.

For every predictions table (``data/predictions/*.csv`` of a run), the fold's
validation rows are split in two halves by patient group, ``--repeats`` times
(seeded). Cuts are chosen on half A under the rule "F1-best cut where the
label has at least m positives in A, else ``evaluate.fixed_threshold``", and
micro F1 / precision / recall are measured on half B, for each m. The test
rows are never read.

    python scripts/choose_min_val_positives.py [RUN_DIR] [--repeats 50]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_fscore_support

from cxrbench.classify import evaluation as E
from cxrbench.core import params as P
from cxrbench.data.labels import LabelTable

CANDIDATES = (1, 2, 3, 5, 8, 10, 15, 20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", default=".", help="a run's root (with data/predictions/ and params.yaml)")
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    root = Path(args.run)
    params = P.load(root / "params.yaml")
    labels = list(LabelTable.from_params(params).names)
    fixed = float(params["evaluate"]["fixed_threshold"])
    rows = []
    files = sorted((root / "data/predictions").glob("*.csv"))
    if not files:
        raise SystemExit(f"no predictions under {root / 'data/predictions'}: run the evaluate stages first")
    for f in files:
        pred = pd.read_csv(f, keep_default_na=False)
        val = pred[pred["split"] == "val"].reset_index(drop=True)
        y, p = val[E.true_columns(labels)].to_numpy(int), val[E.prob_columns(labels)].to_numpy(float)
        groups = val["patient"].to_numpy()
        uniq = np.unique(groups)
        rng = np.random.default_rng(0)
        for r in range(args.repeats):
            half = set(rng.permutation(uniq)[: len(uniq) // 2])
            a = np.array([g in half for g in groups])
            for m in CANDIDATES:
                cuts, _ = E.select_thresholds(y[a], p[a], "val_f1", fixed, m)
                pr, rc, f1, _ = precision_recall_fscore_support(y[~a], p[~a] >= cuts, average="micro", zero_division=0)
                rows.append({"model": f.stem, "repeat": r, "min_val_positives": m, "micro_f1": f1,
                             "precision": pr, "recall": rc, "flagged": int((p[~a] >= cuts).sum())})
    frame = pd.DataFrame(rows)
    table = frame.groupby("min_val_positives")[["micro_f1", "precision", "recall", "flagged"]].mean()
    table.insert(1, "micro_f1_sd", frame.groupby("min_val_positives")["micro_f1"].std())   # over halves and models
    per_model = frame.groupby(["min_val_positives", "model"])["micro_f1"].mean().unstack()
    n_val = int(np.mean([(pd.read_csv(f, usecols=["split"])["split"] == "val").sum() for f in files]))
    print(f"{len(files)} predictions tables x {args.repeats} random halves of their validation patients "
          f"(~{n_val} val images each); cuts on one half, scored on the other (test rows never read)\n")
    print(table.round(4).to_string())
    print("\nmicro F1 per model:\n" + per_model.round(4).to_string())
    best = table["micro_f1"].idxmax()
    print(f"\nbest min_val_positives on held-out validation halves: {best} "
          f"(micro F1 {table.loc[best, 'micro_f1']:.4f} vs {table.loc[1, 'micro_f1']:.4f} for 1)")


if __name__ == "__main__":
    main()
