"""Stage randomisation: do the maps depend on the model's weights and on the class explained?

For every classifier of train.backbones x train.folds, on the first ``randomisation.images`` images of
data/attributions/{backbone}-f{fold}.npz (the attribute stage's held-out images, targets and masks), the
methods of ``randomisation.methods`` (null: explain.methods, with the explain.* settings) are run on the
trained model, on each step of the cascading randomisation (the top k layer groups re-initialised,
k = 1 .. all; Adebayo et al. 2018), on a second, independent full randomisation (the null reference) and,
on the trained model, for another label drawn per image (the random-logit check; Sixt et al. 2020).
Per image: signed and |map| Spearman and SSIM (randomisation.metrics); degenerate maps are counted, not
scored (cxrbench/explain/randomisation.py holds the definitions; the run:
cxrbench/explain/randomisation_run.py).

Writes metrics/randomisation.json (per method x backbone, per step, the null and the random logit: mean
over folds of the mean over images, patient-bootstrap CI, n and status counts; the layer groups and the
timings per model), metrics/randomisation.md, plots/randomisation/cascade.csv (the curves, long form) and
plots/randomisation/cascade.png (similarity vs number of randomised groups, one curve per method, the
null reference as a band).
"""

from cxrbench.core import params as P
from cxrbench.explain import randomisation_run


def main(argv: list[str] | None = None) -> None:
    randomisation_run.run_stage(P.stage_params(__doc__, argv))


if __name__ == "__main__":
    P.run_stage(main)
