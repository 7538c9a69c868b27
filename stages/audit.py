"""Stage audit: the shortcut audit's table, full image vs lungs hidden (metrics/shortcut_audit.{json,md})."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from cxrbench import audit, bootstrap  # noqa: E402
from cxrbench import params as P  # noqa: E402
from cxrbench.io import read_json, write_json, write_text  # noqa: E402


def main() -> None:
    params = P.stage_params(__doc__)
    a = audit.validate(params)
    folds = P.section(params, "train.folds")
    main_m, audit_m = {}, {}
    for bb in a["backbones"]:
        for k in folds:
            name = f"{bb}-f{k}"
            main_m[name] = read_json(audit.paths("main", bb, k).eval_metrics)
            audit_m[name] = read_json(audit.paths("audit", bb, k).eval_metrics)
    result = audit.compare(main_m, audit_m, a["input_mode"])
    group_of = pd.read_csv("data/index.csv", usecols=["path", "group"], dtype=str,
                           keep_default_na=False).set_index("path")["group"]
    folds_data = []
    for bb in a["backbones"]:
        for k in folds:
            full = pd.read_csv(audit.paths("main", bb, k).predictions, keep_default_na=False)
            hidden = pd.read_csv(audit.paths("audit", bb, k).predictions, keep_default_na=False)
            full, hidden = full[full["split"] == "test"], hidden[hidden["split"] == "test"]
            if list(full["path"]) != list(hidden["path"]):
                raise RuntimeError(f"{bb} fold {k}: the audit model was evaluated on other test images than the "
                                   f"full-image model: rerun evaluate for both")
            if "prob_covid19" in full.columns:
                folds_data.append({"groups": group_of.loc[full["path"]].to_numpy(),
                                   "y": full["y_covid19"].to_numpy(int),
                                   "full": full["prob_covid19"].to_numpy(float),
                                   "hidden": hidden["prob_covid19"].to_numpy(float)})
    if folds_data:
        result["covid19_auroc_ci"] = audit.paired_intervals(folds_data, "covid19", bootstrap.validate(params))
    write_json("metrics/shortcut_audit.json", result)
    write_text("metrics/shortcut_audit.md", audit.markdown(result))
    s = result["summary"]
    print(f"audit: micro F1 full {s['micro_f1']['full']:.3f} -> {a['input_mode']} "
          f"{s['micro_f1'][a['input_mode']]:.3f}; COVID-19 AUROC {s['auroc_covid19']['full']} -> "
          f"{s['auroc_covid19'][a['input_mode']]}")


if __name__ == "__main__":
    main()
