"""Repeatability of the maps across training seeds: the same method, the same held-out images, the models of
one fold trained with two seeds, beside two folds of one seed and the trained-vs-randomised control.

The reliability stage compares the models of two folds of one run (another training set as well as another
trajectory). Two runs of one profile that differ only in ``train.seed`` explain the same images with models
of the same fold and training set, so their maps differ by the training seed alone. This compares every such
pair of runs, per backbone and fold, from the attribute stage's stored maps (nothing is re-explained), with
the stage's own measures (:func:`cxrbench.explain.reliability_run.repeat_pair`: Spearman of |map| and SSIM,
zero-input pixels excluded, CAMs at feature-map resolution, patient CIs).

    python3 scripts/repeat_seeds.py RUN_S42 RUN_S43 RUN_S44 --out results/ci-seeds

RUN_DIR: a run's repository root after its attribute stages (``cxrbench run PROFILE --workspace --set
train.seed=43``). Runs that differ in any other param, or share a seed, are refused. Writes
OUT/repeatability_seeds.json and OUT/repeatability_seeds.md.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.core import bootstrap, paths, runtime
from cxrbench.core import params as P
from cxrbench.core.io import write_json, write_text
from cxrbench.explain import reliability as RL
from cxrbench.explain import reliability_run as RR
from cxrbench.explain import runner as A

SEEDS_INTRO = ("The same method's maps of the same held-out images from models of the same fold trained with two "
               "seeds (**repeat**: same training images, another trajectory), beside the trained model vs its "
               "weight-randomised copy (**randomised**, the attribute stage's sanity images of the first run of each "
               "pair). Zero-input pixels excluded; CAMs at feature-map resolution; 95 % CI over patients. Flag: the "
               "maps change more between two seeds than under randomisation.")
FOLDS_INTRO = ("For comparison, the reliability stage's measure within each run: the models of two folds (another "
               "training set too), pooled over the runs, beside the same randomised control.")


def _pairs(run_a: Path, pa: dict, run_b: Path | None = None) -> tuple[list[dict], dict]:
    """Rows and compared-model notes: run A's fold k against run B's fold k (seeds), or, without run B, run A's
    consecutive folds (the stage's comparison)."""
    cfg, seed_a = RL.validate(pa), int(pa["train"]["seed"])
    seed_b = int(P.load(run_b / P.PARAMS_FILE)["train"]["seed"]) if run_b is not None else None
    tag = f"seed {seed_a} vs {seed_b}" if run_b is not None else f"seed {seed_a}"
    with contextlib.chdir(run_a):
        s, _, backbones, folds, _, device, cache, group_of = A.model_stage(pa)
        rows, notes = [], {}
        steps = [(k, k) for k in folds] if run_b is not None else list(zip(folds[:-1], folds[1:]))
        for bb in backbones:
            for ka, kb in steps:
                za = np.load(paths.attributions(bb, ka), allow_pickle=False)
                zb = np.load((run_b or Path(".")).resolve() / paths.attributions(bb, kb), allow_pickle=False)
                name = f"{bb} f{ka} {tag}" if run_b is not None else f"{bb} f{ka} vs f{kb} {tag}"
                got = RR.repeat_pair(pa, cfg, s, bb, za, zb, ka, name, cache, device, group_of)
                if not got:
                    continue
                for r in got:
                    r["model_a"] = f"{bb}-f{ka}@seed{seed_a}"
                rows += got
                label = str(za["target_name"][0])
                auc_a = RR.model_auroc(bb, ka, label)
                if run_b is not None:
                    with contextlib.chdir(run_b):
                        auc_b = RR.model_auroc(bb, kb, label)
                else:
                    auc_b = RR.model_auroc(bb, kb, label)
                notes[name] = {"label": label, "test_auroc": [auc_a, auc_b], "cam_side": int(got[0]["cam_side"])}
    return rows, notes


def _frame(rows: list[dict]) -> pd.DataFrame:
    """The rows with each randomised comparison once (a run is model A of several pairs)."""
    f = pd.DataFrame(rows)
    rand = f["comparison"] == "randomised"
    once = f[rand].drop_duplicates(["model_a", "method", "image", "metric"])
    return pd.concat([f[~rand], once], ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="a run's repository root")
    ap.add_argument("--out", type=Path, required=True, help="folder for repeatability_seeds.{json,md}")
    args = ap.parse_args(argv)
    try:
        loaded = P.load_seed_runs(args.run_dirs, [paths.ATTRIBUTIONS], "attribute stages", one_run=(
            "one run: its metrics/reliability.md compares its folds; give two or more seeds"))
        runs = [(d.resolve(), p) for d, p in loaded]
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    seed = {d: int(p["train"]["seed"]) for d, p in runs}
    seed_rows, seed_notes, fold_rows, fold_notes = [], {}, [], {}
    for (da, pa), (db, _) in itertools.combinations(runs, 2):
        rows, notes = _pairs(da, pa, db)
        seed_rows += rows
        seed_notes.update(notes)
    for d, p in runs:
        rows, notes = _pairs(d, p)
        fold_rows += rows
        fold_notes.update(notes)
    st = bootstrap.validate(runs[0][1])
    by_seed = RL.summarise_repeatability(_frame(seed_rows), st) if seed_rows else {}
    by_fold = RL.summarise_repeatability(_frame(fold_rows), st) if fold_rows else {}
    commit = runtime.git_commit(Path(__file__).resolve().parents[1], short=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "repeatability_seeds.json", {
        "seeds": sorted(seed.values()), "runs": [str(d) for d, _ in runs], "commit": commit, "stats": st,
        "across_seeds": by_seed, "across_seeds_models": seed_notes,
        "across_folds": by_fold, "across_folds_models": fold_notes})
    text = ("### Repeatability of the maps across training seeds\n\n"
            + RL.repeatability_markdown(by_seed, seed_notes, SEEDS_INTRO) + "\n"
            + RL.repeatability_markdown(by_fold, fold_notes, FOLDS_INTRO)
            + f"\nComputed by scripts/repeat_seeds.py at commit {commit} from the runs' stored maps.\n")
    write_text(args.out / "repeatability_seeds.md", text)
    print(f"wrote {args.out / 'repeatability_seeds.json'} and {args.out / 'repeatability_seeds.md'} "
          f"({len(runs)} runs, {len(seed_notes)} seed pairs of models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
