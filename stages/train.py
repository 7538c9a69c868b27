"""Stage train BACKBONE FOLD: one classifier of the matrix train.backbones x train.folds.

With ``--variant audit --control C``: the shortcut audit's model of control C
(audit.backbones x audit.folds x audit.controls), under models/audit/C.

Writes models/classifier/BACKBONE/foldK/{best,last}.pt, metrics/train/BACKBONE-fK.json
and dvclive/train/BACKBONE-fK. Reruns resume from last.pt when its configuration matches.
"""

import argparse

from cxrbench.classify import identity, training
from cxrbench.core import params as P
from cxrbench.core import paths, runtime
from cxrbench.core.io import write_json
from cxrbench.data import confounder
from cxrbench.data.cache import Cache
from cxrbench.lungs import controls as audit_inputs
from cxrbench.studies import audit


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("backbone")
    ap.add_argument("fold", type=int)
    ap.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    ap.add_argument("--no-progress", action="store_true")
    P.add_stage_arguments(ap)
    ap.add_argument("--variant", choices=paths.VARIANTS, default="main",
                    help="audit: a shortcut-audit control's model (--control), outputs under models/audit/CONTROL")
    ap.add_argument("--control", choices=audit_inputs.CONTROLS, default=None,
                    help="with --variant audit: which control of audit.controls")
    args = ap.parse_args(argv)
    if (args.variant == "audit") != (args.control is not None):
        ap.error("--control goes with --variant audit, and --variant audit needs --control")
    rt = runtime.configure()
    params = P.from_arguments(args)
    training.validate(params)                                    # before the cache is read into memory
    if args.variant == "audit":
        a = audit.validate(params)
        if args.control not in a["controls"]:
            raise P.ParamError("audit.controls", f"control {args.control!r} is not in audit.controls {a['controls']}")
    cache = Cache(paths.CACHE, paths.INDEX)
    tags = confounder.apply(cache)                          # the planted shortcut (confounder.enabled; else a no-op)
    if tags["tagged"]:
        print(f"train: planted tag on {tags['tagged']} images of the cache ({tags['target_tagged']} of the target label)")
    # the test part is never touched; the readers recompute the same inputs to check a model's identity
    inp = identity.inputs(params, args.backbone, args.fold, args.variant, args.control, cache=cache)
    out = paths.run(args.variant, args.backbone, args.fold, args.control)
    name = f"{args.backbone}-f{args.fold}" + (f" ({args.control})" if args.control else "")
    with runtime.exit_on_deadline():               # CXRBENCH_DEADLINE: stop after a checkpoint, exit 75
        summary = training.train(inp.cfg, inp.images, inp.targets, inp.train_rows, inp.val_rows, out.model_dir,
                                 live_dir=out.live_dir, device=args.device, progress=not args.no_progress,
                                 paths=inp.paths, cache_id=identity.cache_digest(inp.cache_meta))
    write_json(out.train_metrics, {**summary, "runtime": rt})
    print(f"train: {name} best epoch {summary['best_epoch'] + 1} val_loss {summary['best_val_loss']:.4f}")


if __name__ == "__main__":
    P.run_stage(main)
