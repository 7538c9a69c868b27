"""Apply a trained run's classifiers to new radiographs: probabilities, labels, overlays.

    cxrbench predict my_xrays/ --out predictions.csv                     # every model of the run
    cxrbench predict a.png b.jpg --models resnet18:0 --out p.csv       # one backbone x fold
    cxrbench predict scans/ --models resnet18 --device cuda            # every fold of resnet18
    cxrbench predict scans/ --models ensemble:0 --overlays overlays/    # fold 0's backbones, with maps
    cxrbench predict scans/ --run ../exp-folder --set predict.overlay_method=saliency --overlays maps/
    cxrbench predict scans/ --calibrate site_labels.csv --out p.csv    # cuts refitted on the site's own labels

IMAGES are files or folders (searched recursively for *.png, *.jpg, *.jpeg, *.dcm, any case, linked folders
followed). A FIFO or device, an image whose header declares more than ``predict.max_pixels`` pixels (it is not
decoded) and a float image with NaN or infinite pixels are listed as bad, with the reason. DICOM is read
only when the optional ``pydicom`` is installed (``pip install pydicom``); otherwise each ``.dcm`` file is
listed as bad with that reason. ``--run`` is the folder of a trained run (default: the workspace ``.``): its
``params.yaml``, ``data/cache/meta.json`` (the preprocessing recipe), ``models/classifier/<backbone>/fold<k>/``
(the checkpoint ``evaluate.checkpoint`` names) and ``metrics/eval/<backbone>-f<k>.json`` (the validation
thresholds). A DVC experiment is predicted from a folder where it is checked out (``git worktree`` +
``dvc checkout``, or ``dvc exp apply`` in a clone).

``--models``: ``BACKBONE:FOLD`` (one model), ``BACKBONE`` (its ``train.folds``), ``ensemble`` (every
``train.backbones`` x ``train.folds``, the default) or ``ensemble:FOLD`` (the backbones of one fold, the
ensemble stage's members); several specs are joined with commas.

Every image gets exactly the training input: decoded by :func:`cxrbench.data.images.load_grey`, preprocessed by
:func:`cxrbench.data.preprocess.prepare` with the run's cache recipe (an image that is in the run's cache gives
byte-identical uint8 input), fed to each model as :func:`cxrbench.classify.training.predict` feeds it: the same
images in the evaluate stage's batches (``evaluate.batch_size``) get its probabilities bit for bit (other
batches: within about 1e-7, CPU kernels sum in another order). Before any image is read, the run's params
are checked against ``data/cache/meta.json`` and every model's ``cache_size`` / ``in_chans`` against that
recipe (a disagreement is an error naming both files), and each model's thresholds against its checkpoint.
Models trained with the lungs hidden or cropped (``input_mode`` other than ``full``) need lung masks of the
new images and are refused.

The CSV has one row per image, in input order (``--help`` lists the same columns as docs/predict.md):

  path           the input file
  status         ok, or why the image could not be read (such rows have no probabilities or decisions)
  decision       the labels called, in words, most probable first: "pneumonia (p 0.91), bacterial (p 0.62)",
                 or "no label called"
  training_copy  "no"; "yes: ..." when the input is one of the run's training or validation images, or an
                 exact, near or altered copy (crop, marks, mirror, turn) of one (the index stage's copy search);
                 "not checked: ..." without the run's data/index.csv, data/splits.csv and data/raw/
  prob_<label>   per label, the mean of the models' sigmoid probabilities (the ensemble stage's mean score;
                 one model: its own)
  pred_<label>   per label, 0/1: each model thresholds its probability at its own validation cut of
                 metrics/eval with its evaluate.cut (>= or >), and the label is on when more than half of the
                 models say so; a tie follows ensemble.vote_tie (the ensemble stage's vote rule); one model:
                 its own decision
  models         the backbone-fK models that voted
  overlay        with --overlays: the PNG written (with "constant map: no usable explanation" when the
                 method's map is constant for that image), or why none was

A model whose validation micro F1 (metrics/eval, as in the model card) is below ``predict.min_val_f1`` gets a
printed warning: its decisions are weak. A path given on the command line that does not exist is an error
(exit status 2) before any model is loaded.

``--calibrate LABELS.csv`` (columns ``path``, ``y_<label>``: a labelled sample of the user's own site) refits
the decision of each label on those images before predicting (``--calibrate-method cut``: Youden's cut of the
mean probability; ``platt``: Platt scaling, adding ``cal_prob_<label>``): :mod:`cxrbench.studies.predict.calibrate`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cxrbench.core import params as P
from cxrbench.core import runtime
from cxrbench.core.io import OutputPathError, check_writable, write_csv, write_json
from cxrbench.core.params import ParamError
from cxrbench.studies.predict import calibrate as C
from cxrbench.studies.predict.apply import predict_files
from cxrbench.studies.predict.inputs import OK, find_images, max_pixels
from cxrbench.studies.predict.load import ENSEMBLE, PredictError, load_run
from cxrbench.studies.predict.overlays import check_dir, validate
from cxrbench.studies.predict.readable import min_val_f1, quality_warning


def check_device(name: str | None) -> None:
    """``--device``: cpu, cuda or cuda:N present on this machine (mps where available); a message otherwise."""
    if name is None:
        return
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError) as err:
        raise PredictError(f"--device {name!r}: not a device name ({err}); use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PredictError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise PredictError(f"--device {name}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
        return
    if dev.type == "mps" and torch.backends.mps.is_available():
        return
    raise PredictError(f"--device {name}: not available for predict here; use cpu, cuda or cuda:N")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cxrbench predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders (searched recursively)")
    ap.add_argument("--run", default=".", help="folder of the trained run (default: the workspace)")
    ap.add_argument("--models", default=ENSEMBLE,
                    help="BACKBONE:FOLD | BACKBONE (its folds) | ensemble | ensemble:FOLD, comma-joined "
                         "(default: ensemble, every backbone x fold)")
    ap.add_argument("--out", default="predictions.csv",
                    help="the CSV to write (default predictions.csv); checked before any work: never a folder, "
                         "and its folder must be writable")
    ap.add_argument("--overlays", default=None, metavar="DIR",
                    help="also write attribution overlays (predict.overlay_method) as PNGs into DIR")
    ap.add_argument("--explain", default=None, metavar="LABEL",
                    help="with --overlays: the label the maps explain (default predict.overlay_target: top, each "
                         "image's most probable label)")
    ap.add_argument("--no-copy-check", action="store_true",
                    help="do not compare the inputs with the run's training images (training_copy: not checked)")
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    ap.add_argument("--params", default=None, help="the run's params file (default: RUN/params.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params key, e.g. --set predict.overlay_method=saliency (repeatable)")
    ap.add_argument("--calibrate", default=None, metavar="LABELS.csv",
                    help="refit each label's decision on a labelled sample of your site (columns path, y_<label>; "
                         "0, 1 or empty); the fit is written beside --out as <stem>.calibration.json")
    ap.add_argument("--calibrate-method", default="cut", choices=C.METHODS,
                    help="cut: Youden's cut of the probability (default) | platt: Platt scaling, cut at 0.5")
    args = ap.parse_args(argv)
    try:
        overrides = P.parse_overrides(args.set)
    except ValueError as err:
        ap.error(str(err))
    if args.explain is not None:
        overrides["predict.overlay_target"] = args.explain
    try:
        missing = [i for i in args.images if not os.path.lexists(i)]
        if missing:
            raise PredictError(f"{len(missing)} input path(s) do not exist: {', '.join(missing[:5])}"
                               + (" ..." if len(missing) > 5 else "") + "; name existing files or folders")
        check_writable(args.out, "--out")            # before any work: never compute predictions that cannot be kept
        rt = runtime.configure()
        check_device(args.device)
        params_file = Path(args.params) if args.params else Path(args.run) / P.PARAMS_FILE
        params = P.load(params_file, overrides)
        max_pixels(params)                           # checked now; read again by predict_files
        min_val_f1(params)
        if args.overlays is not None:
            validate(params)                         # before any model is loaded
            check_dir(args.overlays)
        run = load_run(args.run, args.models, params, args.device, params_file)
        paths = find_images(args.images)
        if not paths:
            raise PredictError(f"no images (*.png, *.jpg, *.jpeg, *.dcm) found in {args.images}")
        warning = quality_warning(run)
        if warning:
            print(f"predict: {warning}", file=sys.stderr, flush=True)
        print(f"predict: {len(paths)} image(s), {len(run.members)} model(s) "
              f"[{', '.join(m.name for m in run.members)}] on {run.device}, "
              f"{run.recipe.size} px {list(run.recipe.channels)}; pred_*: {run.rule}", flush=True)
        fitted = calibrate(run, args.calibrate, args.calibrate_method) if args.calibrate else None
        frame = predict_files(run, paths, args.overlays, runtime.workers(), check_copies=not args.no_copy_check)
        if fitted is not None:
            frame = C.apply(frame, fitted)
            write_json(C.report_path(args.out), {"labels_csv": str(args.calibrate), "method": args.calibrate_method,
                                                 "models": [m.name for m in run.members], "labels": fitted})
    except (PredictError, ParamError, FileNotFoundError, OutputPathError) as err:
        print(f"predict: error: {err}", file=sys.stderr)
        return 2
    try:
        write_csv(args.out, frame)
    except OSError as err:                           # e.g. the disk filled up while predicting
        print(f"predict: error: cannot write --out {args.out}: {err}", file=sys.stderr)
        return 2
    bad = frame.loc[frame["status"] != OK]
    print(f"predict: wrote {args.out}: {len(frame) - len(bad)} image(s) predicted, {len(bad)} unreadable "
          f"(torch {rt['torch']}, {rt['torch_threads']} thread(s))")
    for _, row in bad.head(20).iterrows():
        print(f"  bad: {row['path']}: {row['status']}")
    if len(bad) > 20:
        print(f"  ... and {len(bad) - 20} more (status column of {args.out})")
    return 0


def calibrate(run, labels_csv: str, method: str) -> dict:
    """The site's decision rule per label, fitted on the labelled images of ``labels_csv`` (:mod:`calibrate`)."""
    import numpy as np

    labelled = C.read_labels(labels_csv, list(run.labels))
    scored = predict_files(run, labelled["path"].tolist(), None, runtime.workers())
    ok = (scored["status"] == OK).to_numpy()
    if not ok.any():
        raise PredictError(f"--calibrate {labels_csv}: none of its {len(labelled)} images could be read")
    prob = scored[[f"prob_{n}" for n in run.labels]].to_numpy(np.float64)[ok]
    y = labelled[[f"y_{n}" for n in run.labels]].to_numpy(np.float64)[ok]
    cuts = np.mean([m.cuts for m in run.members], axis=0)
    fitted = C.fit(y, prob, list(run.labels), method, cuts)
    for name, e in fitted.items():
        if e["n"]:
            how = (f"cut {e['cut']:.3f} (moved {e['shift']:+.3f})" if e.get("cut") is not None and "shift" in e
                   else e.get("reason", e["status"]))
            print(f"  calibrate {name}: {e['positives']}+/{e['negatives']}- labelled images: {how}")
    return fitted


if __name__ == "__main__":
    sys.exit(main())
