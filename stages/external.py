"""Stage external: the trained classifiers scored on sources that no model has seen (params: external).

Off when external.sources is empty: it then writes an "off" metrics/external.json, metrics/external.md and
plots/external_calibration.png at once. Otherwise reads data/index.csv, data/cache/meta.json (the recipe),
models/classifier, metrics/eval (thresholds), data/predictions (internal test) and each source's images;
writes data/external/<source>/ (preprocessed cache, per-image predictions), metrics/external.{json,md} and
plots/external_calibration.png. See cxrbench/external.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrbench import external  # noqa: E402
from cxrbench import params as P  # noqa: E402
from cxrbench import runtime  # noqa: E402


def main() -> None:
    params = P.stage_params(__doc__)
    external.validate(params)                      # every key checked before torch is started
    runtime.configure()
    result = external.run_stage(params, workers=runtime.workers(), show=True)
    if result["status"] == "on":
        print(f"external: {external.METRICS_MD}, {external.METRICS_JSON}, {external.PLOT} "
              f"in {result['seconds']:.0f} s")
    else:
        print(f"external: off ({result['reason']})")


if __name__ == "__main__":
    main()
