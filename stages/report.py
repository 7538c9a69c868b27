"""Stage report: a self-contained report of the run in report/ (README.md + img/)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrbench import params as P  # noqa: E402
from cxrbench.reporting import build  # noqa: E402


def main() -> None:
    params = P.stage_params(__doc__)
    report = build(params, Path("."), title=P.section(params, "report.title"))
    report.write(Path("report"))
    print(f"report: report/README.md with {len(report.images)} figures")


if __name__ == "__main__":
    main()
