"""Stage attribute BACKBONE FOLD: attribution maps of one classifier on held-out test images.

For each target class of ``explain.targets`` a seeded sample of the test-split images positive for it
(``explain.max_images`` patients, one image each, drawn at random within each source: ``explain.sample_seed``),
every method of ``explain.methods`` on the trained model and, for the first
``explain.sanity_images``, on a weight-randomised copy. Writes data/attributions/{backbone}-f{fold}.npz (the
maps, scaled per image; cxrbench/explain/store.py) and metrics/attribute/{backbone}-f{fold}.json (per
method: ran or the recorded reason, degenerate maps, DeepLIFT's completeness, LRP's conservation; see
cxrbench/explain/attribute_run.py). No matching test image: the fold is recorded as skipped.
"""

import argparse

from cxrbench.core import params as P
from cxrbench.explain import attribute_run


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("backbone")
    ap.add_argument("fold", type=int)
    P.add_stage_arguments(ap)
    args = ap.parse_args(argv)
    attribute_run.run_stage(P.from_arguments(args), args.backbone, args.fold)


if __name__ == "__main__":
    P.run_stage(main)
