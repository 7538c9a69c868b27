"""``python -m cxrbench.studies.predict``: the same as ``cxrbench predict``."""

import sys

from cxrbench.studies.predict.cli import main

if __name__ == "__main__":
    sys.exit(main())
