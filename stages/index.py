"""Stage index: one table of the usable frontal X-rays, their labels, hashes and duplicates.

Reads data/raw/{covid_chestxray,kermany,v7_masks}; writes data/index.csv,
data/index_report.json (missing, corrupt, duplicate files) and data/copy_features.npz
(the copy search's features of the indexed images, which the external stage reuses).
"""

import warnings
from pathlib import Path

from cxrbench.core import params as P
from cxrbench.core import paths
from cxrbench.core.io import write_csv, write_json
from cxrbench.core.runtime import workers
from cxrbench.data import cohort, copies, dedupe, indexing
from cxrbench.data.labels import LabelTable

RAW = Path(paths.RAW)


def main(argv: list[str] | None = None) -> None:
    params = P.stage_params(__doc__, argv)
    table = LabelTable.from_params(params)
    p = indexing.validate(params)
    d = dedupe.validate(params)
    copies.validate(params)

    report = indexing.IndexReport()
    paper = params["cohort"] == "paper"
    if paper:  # the authors' image list (source diagnopp), nothing added, nothing dropped
        if not (RAW / cohort.DIAGNOPP).is_dir():
            raise P.ParamError("cohort", f"cohort: paper needs {RAW / cohort.DIAGNOPP}: add diagnopp to "
                                         f"download.sources (and its mirror or URL under sources.diagnopp)")
        rows_frame, cohort_report = cohort.cohort_rows(RAW, p["views"])
        report.missing = cohort_report["missing"]
        rows = cohort.index_rows(rows_frame, table, cohort.rules(params)["labels"])
    else:
        rows = indexing.covid_rows(RAW, p, table, report) + indexing.kermany_rows(RAW, p, table, report)
    if report.missing:
        warnings.warn(f"{len(report.missing)} file(s) listed in metadata.csv are missing from the source and "
                      f"skipped (listed in data/index_report.json): " + ", ".join(report.missing), stacklevel=1)
    rows = indexing.describe_images(RAW, rows, workers(), report, hash_size=d["phash_size"])
    frame = indexing.attach_masks(RAW, indexing.to_frame(rows, table))
    frame, dup = dedupe.dedupe(frame, d["phash_max_distance"], "merge" if paper else d["near_action"],
                               drop_exact=not paper)
    frame, altered = copies.link_altered_copies(frame, RAW, d, workers(), keep=paths.COPY_FEATURES)
    dup["altered_copies"] = altered
    dup["groups"] = int(frame["group"].nunique())           # after the copies merged groups
    dup["patients_merged_into_shared_groups"] = int(frame["patient"].nunique() - dup["groups"])

    write_csv(paths.INDEX, frame)
    write_json(paths.INDEX_REPORT, {
        "images": len(frame), "missing_files": len(report.missing), "missing": report.missing,
        "corrupt_files": len(report.corrupt), "corrupt": report.corrupt,
        "excluded_by_view_or_modality": report.excluded_view_modality,
        "relisted_in_metadata": report.relisted,
        "kermany_available": report.kermany_available, "kermany_unparsed_names": report.unparsed_kermany,
        "duplicates": dup, "cohort": params["cohort"], "protocol": params["protocol"],
        **({"paper_cohort": cohort_report} if paper else {})})
    print(f"index: {len(frame)} images, {frame['patient'].nunique()} patients, {dup['groups']} groups; "
          f"{len(report.missing)} missing, {len(report.corrupt)} corrupt, "
          f"{dup['exact_copies_dropped']} exact copies dropped, "
          f"{dup['near_duplicate_pairs_across_patients']} near-duplicate pairs across patients, "
          f"{altered['altered_copies_across_groups']} altered copies across groups")


if __name__ == "__main__":
    P.run_stage(main)
