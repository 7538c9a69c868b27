"""Stage confound: the planted shortcut's plan, after preprocessing.

Writes data/confounder/plan.csv (one row per image of data/splits.csv: stratum, target, tagged, box
x0 y0 x1 y1 in cache pixels, tag value) and metrics/confound.json (counts per stratum). With
confounder.enabled false the plan tags nothing, so every stage that applies it sees the untouched cache.
The stages that read the cache for the classifier stamp the tags in memory (cxrbench.data.confounder.apply).
"""



import numpy as np
import pandas as pd

from cxrbench.core import params as P
from cxrbench.core import paths
from cxrbench.core.io import write_csv, write_json
from cxrbench.data import confounder as C
from cxrbench.data.cache import Cache


def main(argv: list[str] | None = None) -> None:
    params = P.stage_params(__doc__, argv)
    cfg = C.validate(params)
    cache = Cache(paths.CACHE, paths.INDEX, in_memory=False)
    splits = pd.read_csv(paths.SPLITS, keep_default_na=False)
    frame = C.plan_for_cache(splits, cache.index, cache.images, params)
    write_csv(f"{C.PLAN_DIR}/{C.PLAN_FILE}", frame)
    by = frame.groupby(["stratum", "target"])["tagged"].agg(["sum", "count"])
    strata = {f"{s}|{'target' if t else 'other'}": {"tagged": int(r["sum"]), "images": int(r["count"])}
              for (s, t), r in by.iterrows()}
    side = int(cache.images.shape[-1])
    write_json(paths.CONFOUND_METRICS, {
        "enabled": cfg["enabled"], "label": cfg["label"], "tag_px": frame.attrs["tag"], "cache_px": side,
        "tagged": int(frame["tagged"].sum()), "images": len(frame),
        "target_tagged": int((frame["tagged"] & frame["target"]).sum()), "targets": int(frame["target"].sum()),
        "values": sorted(int(v) for v in np.unique(frame.loc[frame["tagged"], "value"])), "strata": strata})
    state = "on" if cfg["enabled"] else "off (confounder.enabled: false): nothing tagged"
    print(f"confound: {state}; {int(frame['tagged'].sum())}/{len(frame)} images tagged "
          f"({int((frame['tagged'] & frame['target']).sum())}/{int(frame['target'].sum())} {cfg['label']}), "
          f"{frame.attrs['tag']} px tag on the {side} px cache")


if __name__ == "__main__":
    P.run_stage(main)
