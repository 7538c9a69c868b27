"""Stage report: a self-contained report of the run in report/ (README.md + img/) and the model card of its
classifiers (report/model_card.md)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrbench import model_card  # noqa: E402
from cxrbench import params as P  # noqa: E402
from cxrbench.reporting import build  # noqa: E402


def main() -> None:
    params = P.stage_params(__doc__)
    model_card.validate(params)
    report = build(params, Path("."), title=P.section(params, "report.title"))
    report.files[model_card.CARD] = model_card.build(params, Path("."))
    report.write(Path("report"))
    print(f"report: report/README.md with {len(report.images)} figures, report/{model_card.CARD}")


if __name__ == "__main__":
    main()
