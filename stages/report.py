"""Stage report: a self-contained report of the run in report/ (README.md with the summary first, the offline
one-page index.html, img/) and the model card of its classifiers (report/model_card.md)."""

from cxrbench.core import params as P
from cxrbench.report import model_card
from cxrbench.report.document import write_report


def main(argv: list[str] | None = None) -> None:
    report = write_report(P.stage_params(__doc__, argv))
    print(f"report: report/README.md with {len(report.images)} figures, report/index.html, report/{model_card.CARD}")


if __name__ == "__main__":
    P.run_stage(main)
