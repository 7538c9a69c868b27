"""Stage report: a self-contained report of the run in report/ (README.md + img/) and the model card of its
classifiers (report/model_card.md)."""

from pathlib import Path

from cxrbench.core import params as P
from cxrbench.core import paths
from cxrbench.report import model_card
from cxrbench.report.document import build


def main(argv: list[str] | None = None) -> None:
    params = P.stage_params(__doc__, argv)
    model_card.validate(params)
    report = build(params, Path("."), title=P.section(params, "report.title"))
    report.files[model_card.CARD] = model_card.build(params, Path("."))
    report.write(Path(paths.REPORT))
    print(f"report: report/README.md with {len(report.images)} figures, report/{model_card.CARD}")


if __name__ == "__main__":
    P.run_stage(main)
