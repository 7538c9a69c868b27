"""Stage planted: does the model use the planted tag, and which attribution method finds it?

With confounder.enabled (the `planted` profile) every classifier of the run was trained on tagged images.
This stage scores each on the held-out test images as they were tagged, with the tags removed and with
the tag moved onto every non-target image (reliance, patient-bootstrap CIs); scores every attribution
map of the attribute stage against the tag's box (pointing game, relevance mass, relevance rank, AUROC;
random-map control; CIs over patients, on the set of maps where every method is defined); and ranks the
methods by localisation next to their AOPPC gain on the same models.

Writes metrics/planted.json, metrics/planted.md and plots/planted/. With confounder.enabled false it
writes only that status (nothing was planted, so nothing can be localised).
"""

from cxrbench.core import headline
from cxrbench.core import params as P
from cxrbench.studies.planted import run as planted


def main(argv: list[str] | None = None) -> None:
    params = P.stage_params(__doc__, argv)
    planted.run(params)
    headline.write("planted", params)


if __name__ == "__main__":
    P.run_stage(main)
