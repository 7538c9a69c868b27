"""Stage external: the trained classifiers scored on sources that no model has seen (params: external).

Off when external.sources is empty: it then writes an "off" metrics/external.json, metrics/external.md and
plots/external_calibration.png at once. Otherwise reads data/index.csv, data/cache/meta.json (the recipe),
models/classifier, metrics/eval (thresholds), data/predictions (internal test) and each source's images;
writes data/external/<source>/ (preprocessed cache, per-image predictions), metrics/external.{json,md},
plots/external_calibration.png and the headline metrics/headline/external.json (the ensemble's external
AUROC per source). See cxrbench/studies/external/.
"""

from cxrbench.core import headline
from cxrbench.core import params as P
from cxrbench.core import paths, runtime
from cxrbench.studies.external import run as external
from cxrbench.studies.external import sources


def main(argv: list[str] | None = None) -> None:
    params = P.stage_params(__doc__, argv)
    sources.validate(params)                       # every key checked before torch is started
    runtime.configure()
    result = external.run_stage(params, workers=runtime.workers(), show=True)
    if result["status"] == "on":
        print(f"external: {paths.EXTERNAL_MD}, {paths.EXTERNAL_METRICS}, {paths.EXTERNAL_CALIBRATION_PLOT} "
              f"in {result['seconds']:.0f} s")
    else:
        print(f"external: off ({result['reason']})")
    headline.write("external", params)


if __name__ == "__main__":
    P.run_stage(main)
