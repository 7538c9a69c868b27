"""Attribution overlays of predict (``--overlays``): the ``predict`` params and the PNGs."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from cxrbench.core.params import ParamError, check_fraction, section
from cxrbench.core.plotting import CONSTANT_MAP
from cxrbench.studies.predict.inputs import OK
from cxrbench.studies.predict.load import PredictError, Run

TOP = "top"                                                # predict.overlay_target: each image's likeliest label
CONSTANT = CONSTANT_MAP                                    # the words on a PNG whose map explains nothing


def constant_maps(a: np.ndarray) -> np.ndarray:
    """Per map of ``a`` (N, H, W): True where it is constant or not finite, so it explains nothing (a blank or a
    solid overlay would look like an answer)."""
    flat = a.reshape(len(a), -1)
    finite = np.isfinite(flat).all(1)
    spread = np.where(finite, np.ptp(np.where(np.isfinite(flat), flat, 0), axis=1), 0)
    return ~finite | (spread == 0)


def validate(params: dict) -> dict:
    """The ``predict`` section (read only for ``--overlays``), every key checked."""
    from cxrbench.explain.attribution import check_method

    p = section(params, "predict")
    if not isinstance(p, dict):
        raise ParamError("predict", "expected a mapping with overlay_method, overlay_target, overlay_alpha")
    method = section(params, "predict.overlay_method")
    if not isinstance(method, str):
        raise ParamError("predict.overlay_method", f"expected the name of an attribution method, got {method!r}")
    check_method(method, "predict.overlay_method")
    target = section(params, "predict.overlay_target")
    if not isinstance(target, str) or not target:
        raise ParamError("predict.overlay_target", f"expected a label name (labels.names) or {TOP!r}, got {target!r}")
    check_fraction("predict.overlay_alpha", section(params, "predict.overlay_alpha"), open_high=False)
    return p


def check_dir(folder: str | Path, make: bool = False) -> Path:
    """``--overlays DIR``: a folder, or a path where one can be made (``make``: made now); checked before
    any model is loaded, so a file given by mistake is a message, not a traceback."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise PredictError(f"--overlays {folder}: is a file, not a folder; name a folder for the overlay PNGs")
    base = next(p for p in [path, *path.absolute().parents] if p.exists())
    if not base.is_dir():
        raise PredictError(f"--overlays {folder}: {base} is a file, not a folder; name a folder for the overlay PNGs")
    if not os.access(base, os.W_OK | os.X_OK):
        raise PredictError(f"--overlays {folder}: {base} is not writable; name a folder you can write")
    if make:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise PredictError(f"--overlays {folder}: cannot make the folder ({err}); name a folder you can "
                               f"write") from err
    return path


class Overlays:
    """Attribution overlays (``predict.overlay_method`` with the ``explain`` settings) as PNGs.

    The map of an image is the mean over the models of each model's map divided by its own largest
    absolute value (models' raw maps have unrelated scales), shown over the preprocessed image: red is
    evidence for the explained label, blue against it.
    """

    def __init__(self, run: Run, out_dir: str | Path):
        from cxrbench.explain import attribution as A

        p = validate(run.params)
        self.A, self.run, self.out_dir = A, run, Path(out_dir)
        self.settings = A.validate(run.params)
        self.method, self.alpha = p["overlay_method"], float(p["overlay_alpha"])
        self.target = p["overlay_target"]
        if self.target != TOP and self.target not in run.labels:
            raise ParamError("predict.overlay_target", f"{self.target!r} is not a label of the models "
                                                       f"{run.labels}; name one, or write {TOP!r}")
        if A.METHODS[self.method].needs_layer:       # a backbone without a Grad-CAM layer fails now, not mid-run
            for m in run.members:
                A.target_layer(m.model, m.backbone, self.settings.target_layers)
        self.prepared: dict[str, object] = {}
        check_dir(self.out_dir, make=True)

    def maps(self, x, target) -> tuple[np.ndarray | None, str, np.ndarray | None]:
        """(mean over the models of each model's map scaled by its largest |value|, note, per image the number
        of models whose map is constant or not finite: those models are left out of that image's mean)."""
        A = self.A
        total, used, constant = None, None, None
        for m in self.run.members:
            if m.name not in self.prepared:        # a hookable copy, only for the methods that hook activations
                needs = A.METHODS[self.method].needs_prepared
                self.prepared[m.name] = A.prepare_for_attribution(m.model, x)[0] if needs else m.model
            max_batch = self.settings.max_batch or A.estimate_max_batch(m.model, x, self.settings.memory_fraction)
            method = A.make(self.method, m.model, self.prepared[m.name], self.settings, max_batch, m.backbone)
            try:
                with warnings.catch_warnings():
                    for note in A.HARMLESS_CAPTUM_NOTES:
                        warnings.filterwarnings("ignore", message=note)
                    a = method.attribute(x, target).detach().cpu().numpy().astype(np.float32)
            except A.EXPECTED_ERRORS as err:
                return None, f"{self.method} failed on {m.name}: {type(err).__name__}: {err}"[:300], None
            bad = constant_maps(a)
            a = np.where(bad[:, None, None], 0, np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0))
            scale = np.abs(a).reshape(len(a), -1).max(1)
            a = a / np.where(scale > 0, scale, 1.0)[:, None, None]
            total = a if total is None else total + a
            used = (~bad).astype(int) if used is None else used + ~bad
            constant = bad.astype(int) if constant is None else constant + bad
        return total / np.maximum(used, 1)[:, None, None], OK, constant

    def draw(self, images: np.ndarray, prob: np.ndarray, paths: list[str], rows: np.ndarray) -> list[str]:
        """One PNG per image; returns the file written per image, or why none was."""
        import torch

        from cxrbench.data.cache import to_float
        from cxrbench.core.plotting import plt, save

        labels = self.run.labels
        target = (prob.argmax(1) if self.target == TOP
                  else np.full(len(images), labels.index(self.target)))
        x = to_float(torch.from_numpy(np.ascontiguousarray(images)), self.run.device)
        maps, note, constant = self.maps(x, torch.from_numpy(target).to(self.run.device))
        if maps is None:
            return [note] * len(images)
        out = []
        n_models = len(self.run.members)
        for img, m, t, p, path, row, k in zip(images, maps, target, prob, paths, rows, constant):
            name = self.out_dir / f"{int(row):05d}_{Path(path).stem}.{self.method}.png"
            fig, ax = plt.subplots(figsize=(4.2, 4.6))
            try:
                ax.imshow(img[0], cmap="gray", vmin=0, vmax=255)
                if k < n_models:
                    ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1, alpha=np.clip(np.abs(m), 0, 1) * self.alpha)
                else:                              # every model's map is constant: say so on the image itself
                    ax.text(0.5, 0.5, CONSTANT.replace(": ", ":\n"), transform=ax.transAxes, ha="center",
                            va="center", fontsize=9, color="black", parse_math=False,
                            bbox=dict(boxstyle="round", facecolor="white", alpha=0.9))
                part = f"; constant for {k} of {n_models} model(s), left out" if 0 < k < n_models else ""
                # a file name is text, never mathtext: `a_$5_$6.png` must not be parsed as a formula
                ax.set_title(f"{Path(path).name[-40:]}\n{self.method}: {labels[t]} (p = {p[t]:.3f}), "
                             f"{n_models} model(s){part}", fontsize=7, parse_math=False)
                ax.axis("off")
                save(fig, name)
            except (ValueError, RuntimeError, OSError) as err:     # one overlay lost, never the run
                plt.close(fig)
                out.append(f"overlay not written: {type(err).__name__}: {err}".replace("\n", " ")[:300])
                continue
            out.append(str(name) if k < n_models else f"{name} ({CONSTANT})")
        return out
