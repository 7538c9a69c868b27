"""Stage preprocess: resize, pad, percentile-normalise every indexed image (and mask) into data/cache."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from cxrbench import params as P  # noqa: E402
from cxrbench.runtime import workers  # noqa: E402
from cxrbench.preprocess import Recipe, build_cache, index_digest  # noqa: E402


def main() -> None:
    params = P.stage_params(__doc__)
    recipe = Recipe.from_params(params)
    index = pd.read_csv("data/index.csv", dtype={"mask": str}, keep_default_na=False)
    meta = build_cache(index, Path("data/raw"), Path("data/cache"), recipe, workers(),
                       index_digest(Path("data/index.csv")))
    print(f"preprocess: {meta['n']} images at {meta['size']}px, channels {meta['channels']}, "
          f"{meta['with_mask']} lung masks")


if __name__ == "__main__":
    main()
