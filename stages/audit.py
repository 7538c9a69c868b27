"""Stage audit: the shortcut audit's table, full image vs lungs hidden (metrics/shortcut_audit.{json,md})."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrbench import audit  # noqa: E402
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
    write_json("metrics/shortcut_audit.json", result)
    write_text("metrics/shortcut_audit.md", audit.markdown(result))
    s = result["summary"]
    print(f"audit: micro F1 full {s['micro_f1']['full']:.3f} -> {a['input_mode']} "
          f"{s['micro_f1'][a['input_mode']]:.3f}; COVID-19 AUROC {s['auroc_covid19']['full']} -> "
          f"{s['auroc_covid19'][a['input_mode']]}")


if __name__ == "__main__":
    main()
