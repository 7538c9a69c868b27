"""Stage split: held-out test set and K group-stratified folds, by patient group.

Writes data/splits.csv, metrics/data.json and plots/label_distribution.png; with ``cohort: paper``, the
authors' folds instead, and the audit of their cohort (metrics/cohort_audit.{json,md}).
"""

from pathlib import Path

import pandas as pd

from cxrbench.core import headline
from cxrbench.core import params as P
from cxrbench.core import paths
from cxrbench.core.io import read_json, write_csv, write_json, write_text
from cxrbench.core.plotting import label_distribution
from cxrbench.data import cohort, splitting
from cxrbench.data.labels import LabelTable


def main(argv: list[str] | None = None) -> None:
    params = P.stage_params(__doc__, argv)
    table = LabelTable.from_params(params)
    s = splitting.validate(params)
    index = pd.read_csv(paths.INDEX, keep_default_na=False)
    if params["cohort"] == "paper":
        splits, leaks, audit = cohort.paper_cohort(params, index, Path(paths.RAW), read_json(paths.INDEX_REPORT))
        write_json(paths.COHORT_AUDIT, audit)
        write_text(paths.COHORT_AUDIT_MD, cohort.audit_markdown(audit))
    else:
        splits = splitting.split(index, table, s["test_fraction"], s["folds"], s["seed"])
        leaks = splitting.leakage(splits)
        if any(leaks.values()):
            raise RuntimeError(f"split leaks patients across sides: {leaks}")  # a bug, never expected
        note = "Not applicable: cohort is `rebuilt` (run with cohort: paper for the audit of the authors' cohort)."
        write_json(paths.COHORT_AUDIT, {"cohort": "rebuilt", "note": note})
        write_text(paths.COHORT_AUDIT_MD, f"*{note}*\n")
    write_csv(paths.SPLITS, splits)

    full = index.merge(splits[["path", "split", "fold"]], on="path", validate="one_to_one")
    summary = splitting.data_summary(full, table.names, s["folds"], read_json(paths.INDEX_REPORT), leaks)
    write_json(paths.DATA_METRICS, summary)
    label_distribution(full, table.names, paths.LABEL_DISTRIBUTION_PLOT)
    print(f"split: test {summary['test_images']} images, folds {summary['fold_images']}, leaks {leaks}")
    headline.write("split", params)


if __name__ == "__main__":
    P.run_stage(main)
