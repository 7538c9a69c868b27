"""Stage audit: the shortcut audit's table, every control against the full image (metrics/shortcut_audit.{json,md}).

Reads the test predictions of the main models and of every audit control's
models (audit.backbones x audit.folds x audit.controls), drops test images whose
lung mask is implausible from every arm, scores audit.scores with paired
bootstrap CIs, and draws plots/shortcut_audit.png (AUROC per control) and
plots/shortcut_controls.png (what each model sees).
"""

from cxrbench.core import headline
from cxrbench.core import params as P
from cxrbench.studies import audit


def main(argv: list[str] | None = None) -> None:
    params = P.stage_params(__doc__, argv)
    audit.run(params)
    headline.write("audit", params)


if __name__ == "__main__":
    P.run_stage(main)
