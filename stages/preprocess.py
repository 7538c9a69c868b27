"""Stage preprocess: resize, pad, percentile-normalise every indexed image (and mask) into data/cache."""

from pathlib import Path

import pandas as pd

from cxrbench.core import params as P
from cxrbench.core import paths
from cxrbench.core.runtime import workers
from cxrbench.data.preprocess import Recipe, build_cache, index_digest


def main(argv: list[str] | None = None) -> None:
    params = P.stage_params(__doc__, argv)
    recipe = Recipe.from_params(params)
    index = pd.read_csv(paths.INDEX, dtype={"mask": str}, keep_default_na=False)
    meta = build_cache(index, Path(paths.RAW), Path(paths.CACHE), recipe, workers(),
                       index_digest(Path(paths.INDEX)))
    print(f"preprocess: {meta['n']} images at {meta['size']}px, channels {meta['channels']}, "
          f"{meta['with_mask']} lung masks")


if __name__ == "__main__":
    P.run_stage(main)
