"""Stage evaluate BACKBONE FOLD: predict the fold's val and the test set, pick thresholds on val only.

Writes data/predictions/BACKBONE-fK.csv (path, patient, split, prob_*, y_*),
metrics/eval/BACKBONE-fK.json (thresholds, val and test metrics) and
plots/roc/BACKBONE-fK.csv (micro-averaged test ROC).
"""

import argparse

import pandas as pd

from cxrbench.classify import evaluation as E
from cxrbench.classify import fuse, identity, multiclass, training
from cxrbench.classify import task as TK
from cxrbench.core import bootstrap
from cxrbench.core import params as P
from cxrbench.core import paths, runtime
from cxrbench.core.io import write_csv, write_json
from cxrbench.data import confounder
from cxrbench.data.cache import Cache
from cxrbench.data.labels import LabelTable
from cxrbench.lungs import controls as audit_inputs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("backbone")
    ap.add_argument("fold", type=int)
    ap.add_argument("--device", default=None)
    P.add_stage_arguments(ap)
    ap.add_argument("--variant", choices=paths.VARIANTS, default="main",
                    help="audit: evaluate a shortcut-audit control's model (models/audit/CONTROL)")
    ap.add_argument("--control", choices=audit_inputs.CONTROLS, default=None,
                    help="with --variant audit: which control")
    args = ap.parse_args(argv)
    if (args.variant == "audit") != (args.control is not None):
        ap.error("--control goes with --variant audit, and --variant audit needs --control")
    rt = runtime.configure()
    out = paths.run(args.variant, args.backbone, args.fold, args.control)
    params = P.from_arguments(args)
    ev = E.validate(params)
    training.validate(params)
    table = LabelTable.from_params(params)
    device = runtime.device(args.device)
    # refused unless trained to the end on the current params and data (cxrbench.classify.identity)
    model, meta = identity.load(params, args.backbone, args.fold, device, args.variant, args.control)
    model, _, folded = fuse.fold_batchnorm(model)          # forward passes only: the same function, faster
    print(f"evaluate {args.backbone} fold {args.fold}: {folded}", flush=True)
    if list(meta["labels"]) != TK.output_names(params, table.names):
        raise RuntimeError(f"classifier labels {meta['labels']} differ from the labels in use (labels.names, or the paper's with cohort: paper and paper_rules.labels: paper): rerun the train stage")
    cache = Cache(paths.CACHE, paths.INDEX)
    confounder.apply(cache)                                 # the planted shortcut (confounder.enabled; else a no-op)
    splits = pd.read_csv(paths.SPLITS, keep_default_na=False)
    if meta.get("task") == "multiclass":                    # argmax decisions, no thresholds (classify.multiclass)
        pred, metrics = multiclass.evaluate_run(model, meta, cache, splits, args.fold, device, ev["batch_size"],
                                                bootstrap.validate(params), out.model_dir)
        write_csv(out.predictions, pred)
        test = pred[pred["split"] == "test"]
        write_csv(out.roc, E.micro_roc(test[E.true_columns(meta["labels"])].to_numpy(),
                                       test[E.prob_columns(meta["labels"])].to_numpy()))
        write_json(out.eval_metrics, {"backbone": args.backbone, "fold": args.fold, "checkpoint": ev["checkpoint"],
                                      "checkpoint_epoch": meta.get("epoch"), "runtime": rt, **metrics})
        print(TK.metrics_markdown(f"{args.backbone}-f{args.fold} (test)", metrics["test"]))
        if "test_sequential" in metrics:                    # a two-stage classifier: the paper's hard rule too
            print(TK.metrics_markdown(f"{args.backbone}-f{args.fold} (test, stage by stage)", metrics["test_sequential"]))
        return
    pred = E.predict_fold(model, meta, cache, splits, args.fold, device, ev["batch_size"])
    cuts, how = E.thresholds_from_frame(pred, table.names, ev["threshold"], ev["fixed_threshold"],
                                        ev["min_val_positives"])
    metrics = E.evaluate_frame(pred, table.names, cuts, table, ev["cut"])
    name = f"{args.backbone}-f{args.fold}" + (f"-{args.control}" if args.control else "")
    write_csv(out.predictions, pred)
    test = pred[pred["split"] == "test"]
    roc = E.micro_roc(test[E.true_columns(table.names)].to_numpy(), test[E.prob_columns(table.names)].to_numpy())
    roc.insert(0, "model", name)
    write_csv(out.roc, roc)
    write_json(out.eval_metrics, {
        "backbone": args.backbone, "input_mode": meta["input_mode"], "input_options": meta.get("input_options") or {},
        "fold": args.fold, "checkpoint": ev["checkpoint"],
        "checkpoint_epoch": meta.get("epoch"), "threshold_method": ev["threshold"], "cut": ev["cut"], "runtime": rt,
        "thresholds": {n: {"cut": float(c), "how": h} for n, c, h in zip(table.names, cuts, how)},
        **metrics})
    t = metrics["test"]
    print(f"evaluate: {name} test micro P {t['micro']['precision']:.3f} R {t['micro']['recall']:.3f} "
          f"F1 {t['micro']['f1']:.3f}, macro F1 {t['macro']['f1']:.3f}, AUROC {t['auroc_macro'] or float('nan'):.3f}")


if __name__ == "__main__":
    P.run_stage(main)
