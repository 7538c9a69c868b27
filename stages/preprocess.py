"""Stage preprocess: resize, pad, percentile-normalise every indexed image (and mask) into data/cache."""

from pathlib import Path

import pandas as pd

from cxrbench.core import params as P
from cxrbench.core.runtime import workers
from cxrbench.data.preprocess import Recipe, build_cache, index_digest


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
