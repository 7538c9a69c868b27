"""``python -m cxrbench``: the same as the ``cxrbench`` command."""

import sys

from cxrbench.cli import main

sys.exit(main())
