"""Benchmark of the explainability code on CPU.

1. Seconds per image per attribution method for one small backbone (timm
   resnet18, 1 channel, random weights, 18 classes) at 128 px.
2. AOPPC: all 1 + 10 copies of each image in one forward (batched) vs one
   forward per copy (sequential); speed-up = sequential / batched time.
3. Grad-CAM: ours (Captum's LayerGradCam, one batched backward, upsampled in
   torch) vs pytorch-grad-cam's GradCAM on the same inputs and layer, both as
   the attribute stage would run it (the library's map at layer resolution,
   upsampled the same way) and as the library returns it by default (min-max
   scaled, cv2 resize); seconds per image (best of --repeats), the ratio
   library / ours, and the largest difference of the min-max scaled maps.

    python benchmarks/bench_explain.py [--images 4] [--size 128] [--steps 50] [--threads 2] [--methods ...]

Prints a JSON object; timings depend on the machine and its load.
"""

import argparse
import json
import sys
import time
import warnings

import numpy as np
import torch

from cxrbench.explain import attribution as A
from cxrbench.explain.methods.perturbation import _pixels
from cxrbench.explain.metrics import perturbation as EM


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50, help="integrated gradients steps")
    ap.add_argument("--window", type=float, default=0.0625, help="occlusion window (fraction of side)")
    ap.add_argument("--stride", type=float, default=0.03125, help="occlusion stride (fraction of side)")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", nargs="*", default=list(A.METHODS))
    ap.add_argument("--repeats", type=int, default=5, help="Grad-CAM comparison: best of this many runs")
    ap.add_argument("--region-steps", type=int, default=50, help="region perturbation: patches removed (8 px patches)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=18, in_chans=1, pretrained=False).eval()
    x = torch.rand(args.images, 1, args.size, args.size)
    target = torch.full((args.images,), 5)
    prepared, rep = A.prepare_for_attribution(model, x)
    s = A.Settings(methods=args.methods, steps=args.steps, window=args.window, stride=args.stride,
                   interpolate="bilinear", target_layers={"resnet": "layer4"}, max_batch=args.max_batch,
                   memory_fraction=0.5, scorecam_batch=None, lrp_composite="epsilon_gamma_box")
    import pytorch_grad_cam  # noqa: F401  (imported before timing: the libraries' import is not a method's cost)
    import zennit.attribution  # noqa: F401
    with torch.no_grad():
        model(x)                                                     # warm-up
    per_image = {}
    for name in args.methods:
        t = time.perf_counter()
        A.make(name, model, prepared, s, args.max_batch, "resnet18").attribute(x, target)
        per_image[name] = round((time.perf_counter() - t) / args.images, 4)
        print(f"{name}: {per_image[name]:.3f} s/image", file=sys.stderr)

    maps = EM.random_maps((args.images, args.size, args.size), 0)
    timing = {}
    for label, kw in [("batched", {"images_per_batch": 1}), ("batched_4_images", {"images_per_batch": 4}),
                      ("sequential", {"sequential": True})]:
        t = time.perf_counter()
        r = EM.perturbation_curves(model, x, maps, target, scheme="threshold", **kw)
        timing[label] = round(time.perf_counter() - t, 4)
        timing[label + "_aoppc"] = round(float(r["aoppc"].mean()), 6)
    out = {"backbone": "resnet18", "size": args.size, "images": args.images, "threads": args.threads,
           "ig_steps": args.steps, "occlusion_window_px": _pixels(args.window, args.size),
           "occlusion_stride_px": _pixels(args.stride, args.size), "max_batch": args.max_batch,
           "seconds_per_image": per_image,
           "aoppc_seconds": {k: v for k, v in timing.items() if not k.endswith("_aoppc")},
           "aoppc_same_value": timing["batched_aoppc"] == timing["sequential_aoppc"],
           "aoppc_speedup_batched_vs_sequential": round(timing["sequential"] / timing["batched"], 2),
           "aoppc_speedup_4_images_vs_sequential": round(timing["sequential"] / timing["batched_4_images"], 2),
           "gradcam_libraries": gradcam_libraries(model, prepared, x, target, s, args.max_batch, args.repeats),
           "region_perturbation_vs_quantus": region_vs_quantus(model, x, maps, target, args.region_steps),
           "torch": torch.__version__, "machine": machine(), "prepare": rep.as_dict()}
    print(json.dumps(out, indent=2))


def region_vs_quantus(model, x, maps, target, steps: int, patch: int = 8) -> dict:
    """Region perturbation (black fill, MoRF) by our batched implementation and by Quantus 0.6.0's
    RegionPerturbation on the same model, images and maps: seconds and the largest difference of the
    probability drops (Quantus is given the sigmoid probabilities with softmax off, as in the test)."""
    import quantus
    t = time.perf_counter()
    ours = EM.perturbation_curves(model, x, maps, target, scheme="region", patch=patch, steps=steps,
                                  images_per_batch=4)
    t_ours = time.perf_counter() - t
    metric = quantus.RegionPerturbation(patch_size=patch, regions_evaluation=steps, order="morf", abs=False,
                                        normalise=False, perturb_baseline=0.0, disable_warnings=True)
    prob = torch.nn.Sequential(model, torch.nn.Sigmoid()).eval()
    t = time.perf_counter()
    q = np.array(metric(model=prob, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=maps[:, None],
                        softmax=False, device="cpu", batch_size=len(x)))
    t_q = time.perf_counter() - t
    return {"steps": steps, "patch_px": patch, "ours_s": round(t_ours, 3), "quantus_s": round(t_q, 3),
            "speedup": round(t_q / t_ours, 2), "max_abs_drop_difference": float(np.abs(q - ours["drop"]).max())}


def machine() -> str:
    import os

    from cxrbench.core import runtime
    return (f"CPU {runtime.cpu_model()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
            f"torch threads {torch.get_num_threads()}")


def gradcam_libraries(model, prepared, x, target, s, max_batch: int, repeats: int) -> dict:
    """Grad-CAM of resnet18's layer4: Captum (``gradcam``, ours) vs pytorch-grad-cam's GradCAM."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class LibraryGradCam(A.LibraryCamMethod):
        library_name = "GradCAM"

    ours = A.make("gradcam", model, prepared, s, max_batch, "resnet18")
    layer = A.target_layer(prepared, "resnet18", s.target_layers)[1]
    lib = LibraryGradCam(prepared, s.method_settings(), max_batch, layer)

    def lib_default():
        cam = GradCAM(model=prepared, target_layers=[layer])
        try:
            return torch.from_numpy(cam(x, [ClassifierOutputTarget(int(t)) for t in target]))
        finally:
            cam.activations_and_grads.release()

    def best(fn):
        times, out = [], None
        for _ in range(repeats):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
        return min(times) / len(x), out

    def minmax(m):
        lo, hi = m.amin((1, 2), keepdim=True), m.amax((1, 2), keepdim=True)
        return (m - lo) / (hi - lo + 1e-7)

    t_ours, m_ours = best(lambda: ours.attribute(x, target))
    t_lib, m_lib = best(lambda: lib.attribute(x, target))
    t_def, m_def = best(lib_default)
    return {"seconds_per_image": {"captum_LayerGradCam (ours)": round(t_ours, 5),
                                  "pytorch_grad_cam_GradCAM (as the stage runs it)": round(t_lib, 5),
                                  "pytorch_grad_cam_GradCAM (library default output)": round(t_def, 5)},
            "ratio_library_over_ours": round(t_lib / t_ours, 2),
            "ratio_library_default_over_ours": round(t_def / t_ours, 2),
            "max_abs_diff_minmax_maps": float((minmax(m_ours) - minmax(m_lib)).abs().max()),
            "max_abs_diff_minmax_vs_library_default": float((minmax(m_ours) - m_def).abs().max()),
            "repeats": repeats}


if __name__ == "__main__":
    main()
