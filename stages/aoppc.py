"""Stage aoppc: explanation metrics of every backbone x fold of data/attributions.

Per method, backbone and fold (mean +- std over images): AOPPC with the
paper's threshold levels (CXR-Net eq. 12), pixel deletion (the top 10 %, ...,
100 % of pixels zeroed) and region perturbation (Samek et al. 2017: patches,
``aoppc.region.steps`` steps) under each fill of ``aoppc.region.fills`` (black,
blur, ROAD's noisy linear imputation); the least-important-first (LeRF)
control; the random-map baseline and each method's gain over it per image
(bootstrap CI over patients); the rank agreement of the methods across fills;
the share of the image each threshold level removes; the share of attribution
mass inside the lung mask; the Spearman rank correlation with the maps of a
weight-randomised model. Degenerate maps (constant or non-finite) are a status,
not a score, and the common-set tables compare all methods on the same
(backbone, fold, image) set (cxrbench/explain/metrics/scoring.py, tables.py;
the run: cxrbench/explain/aoppc_run.py).

Writes metrics/aoppc.json, metrics/aoppc_table.md (next to CXR-Net's values),
plots/aoppc/curves.csv (method, level, p_drop: threshold MoRF, pooled),
plots/aoppc/curves_all.csv (every backbone/fold/perturbation/order),
plots/aoppc/curves.png and plots/attributions/{backbone}.png (first fold).
"""

from cxrbench.core import headline
from cxrbench.core import params as P
from cxrbench.explain import aoppc_run


def main(argv: list[str] | None = None) -> None:
    params = P.stage_params(__doc__, argv)
    aoppc_run.run_stage(params)
    headline.write("aoppc", params)


if __name__ == "__main__":
    P.run_stage(main)
