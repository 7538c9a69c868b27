"""Stage severity: do the maps spread over the lungs as the radiologists' severity scores do?

covid-chestxray-dataset's annotations/covid-severity-scores.csv gives, for 94 images, the mean of three
radiologists' geographic extent (0-8) and opacity (0-6) scores (CC BY-SA, Cohen et al. 2020). For the
held-out test images that have a score, each classifier of train.backbones x train.folds is explained
with every method of severity.methods (target: severity.target), and the share of positive relevance
inside the segment stage's lung mask is rank-correlated with the score (Spearman, CI over patients);
per backbone the share is the mean over its folds. Control: a uniform random map (its share is the lung
mask's area share), so a method is only plausible where it beats the mask's own correlation.

Writes metrics/severity.json and metrics/severity.md; with severity.methods empty, only that status.
Images are untagged (the planted tag is not applied here).
"""

from cxrbench.core import params as P
from cxrbench.studies import severity


def main(argv: list[str] | None = None) -> None:
    severity.run(P.stage_params(__doc__, argv))


if __name__ == "__main__":
    P.run_stage(main)
