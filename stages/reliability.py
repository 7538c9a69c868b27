"""Stage reliability: how reliable are the explanation metrics themselves?

Robustness of every method of ``reliability.methods`` through Captum: max-sensitivity (each method re-run on
uniformly perturbed inputs; ``reliability.sensitivity_methods``) and infidelity of the stored maps, on the
first ``reliability.images`` images of each model, with a random map and the Sobel edge map as controls; the
agreement of every metric (``reliability.agreement_metrics``: the aoppc stage's per-image scores and the
robustness ones) on the methods' ranking: ranks, Kendall's tau between metrics with CIs over patients and the
median-standardised aggregate rank; the repeatability of each method's maps across the models of two folds
beside the trained-vs-randomised similarity, zero-input pixels excluded and CAMs at feature-map resolution
(cxrbench/explain/reliability.py; the run: cxrbench/explain/reliability_run.py).

Writes metrics/reliability.json, metrics/reliability.md and metrics/reliability_per_image.csv.
"""

from cxrbench.core import params as P
from cxrbench.explain import reliability_run


def main(argv: list[str] | None = None) -> None:
    reliability_run.run_stage(P.stage_params(__doc__, argv))


if __name__ == "__main__":
    P.run_stage(main)
