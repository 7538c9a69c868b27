"""Fetch the real upstream sources: an archive URL, or a local mirror with the same layout.

One call, :func:`fetch`, per source named in ``params.yaml: sources``. Archives
are downloaded to ``data/downloads/`` (kept, so a rerun does not download
again), checksum-verified when the source pins a sha256, and extracted safely:
absolute paths, ``..`` components and links are refused. The extracted tree is
renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Iterable


from .io import atomic_path
from .params import ParamError
from .runtime import progress as progress_bar

DOWNLOAD_DIR = Path("data/downloads")
CHUNK = 1 << 20


class SourceError(RuntimeError):
    """A source could not be fetched; the message names the source and the param to change."""


class UnsafeArchiveError(SourceError):
    """An archive member would escape the target folder or is a link."""


@dataclass(frozen=True)
class SourceSpec:
    name: str
    url: str | None
    sha256: str | None
    archive_root: str | None
    inner_archive: str | None
    include: tuple[str, ...] | None
    mirror: str | None

    @classmethod
    def from_params(cls, name: str, spec: dict) -> "SourceSpec":
        key = f"sources.{name}"
        if not isinstance(spec, dict):
            raise ParamError(key, "expected a mapping with url, sha256, archive_root, include, mirror")
        unknown = set(spec) - {"url", "sha256", "archive_root", "inner_archive", "include", "mirror"}
        if unknown:
            raise ParamError(key, f"unknown field(s) {sorted(unknown)}")
        if not spec.get("url") and not spec.get("mirror"):
            raise ParamError(key, "needs a `url` (upstream) or a `mirror` (local folder)")
        sha = spec.get("sha256")
        if sha is not None and (not isinstance(sha, str) or len(sha) != 64):
            raise ParamError(f"{key}.sha256", f"expected 64 hex digits or null, got {sha!r}")
        include = spec.get("include")
        if include is not None:
            if not isinstance(include, list) or not all(isinstance(i, str) and i for i in include):
                raise ParamError(f"{key}.include", f"expected a list of paths or null, got {include!r}")
            for item in include:
                _check_relative(item, f"{key}.include")
            include = tuple(include)
        return cls(name, spec.get("url"), sha, spec.get("archive_root"), spec.get("inner_archive"),
                   include, spec.get("mirror"))


def _check_relative(member: str, where: str) -> PurePosixPath:
    """Refuse absolute paths and ``..`` components; return the normalised path."""
    p = PurePosixPath(member.replace("\\", "/"))
    if p.is_absolute() or (p.parts and ":" in p.parts[0]) or ".." in p.parts:
        raise UnsafeArchiveError(f"{where}: refusing path {member!r}: absolute or contains '..'")
    return p


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def fetch(spec: SourceSpec, dest: Path, *, repo_root: Path = Path(".")) -> dict:
    """Materialise ``spec`` at ``dest`` in its upstream layout; return a provenance record."""
    if spec.mirror:
        mirror = Path(spec.mirror)
        if not mirror.is_absolute():
            mirror = repo_root / mirror
        if not mirror.is_dir():
            raise SourceError(
                f"source `{spec.name}`: mirror folder {mirror} not found. Fix `sources.{spec.name}.mirror` "
                f"in params.yaml (a local copy with the upstream layout), or set it to null to download "
                f"{spec.url}")
        n_files, n_bytes = _copy_mirror(mirror, spec.include, dest, spec.name)
        return {"source": spec.name, "origin": "mirror", "mirror": str(spec.mirror),
                "files": n_files, "bytes": n_bytes}

    archive = DOWNLOAD_DIR / f"{spec.name}.archive"
    digest = _download(spec, archive)
    n_files, n_bytes = _extract(archive, spec, dest)
    return {"source": spec.name, "origin": "url", "url": spec.url, "sha256": digest,
            "sha256_pinned": spec.sha256 is not None, "files": n_files, "bytes": n_bytes}


# --- mirror -------------------------------------------------------------------

def _copy_mirror(root: Path, include: Iterable[str] | None, dest: Path, name: str) -> tuple[int, int]:
    items = list(include) if include else sorted(p.name for p in root.iterdir())
    n_files = n_bytes = 0
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        for item in items:
            src = root / item
            if not src.exists():
                raise SourceError(
                    f"source `{name}`: {src} is missing from the mirror; `sources.{name}.include` lists "
                    f"{item!r}. Point `sources.{name}.mirror` at a complete copy of the upstream layout.")
            if src.is_symlink():
                raise UnsafeArchiveError(f"source `{name}`: refusing link {src} in the mirror")
            if src.is_dir():
                shutil.copytree(src, tmp / item, symlinks=True)
                for p in (tmp / item).rglob("*"):
                    if p.is_symlink():
                        raise UnsafeArchiveError(f"source `{name}`: refusing link {root / p.relative_to(tmp)}")
                    if p.is_file():
                        n_files += 1
                        n_bytes += p.stat().st_size
            else:
                (tmp / item).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, tmp / item)
                n_files += 1
                n_bytes += src.stat().st_size
    return n_files, n_bytes


# --- download -----------------------------------------------------------------

def _download(spec: SourceSpec, archive: Path) -> str:
    """Download ``spec.url`` to ``archive`` unless a verified copy is already there."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    done_marker = archive.with_suffix(".sha256")
    if archive.is_file() and done_marker.is_file():
        digest = done_marker.read_text().strip()
        if spec.sha256 is None or digest == spec.sha256:
            return digest
    part = archive.with_suffix(".part")
    try:
        _stream(spec.url, part)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise SourceError(
            f"source `{spec.name}`: could not download {spec.url}: {err}. Without internet, point "
            f"`sources.{spec.name}.mirror` in params.yaml at a local copy with the upstream layout "
            f"(or run a profile: python -m cxrbench.profiles run mirror). A partial download is kept "
            f"in {part} and resumed on the next run.") from err
    digest = sha256_of(part)
    if spec.sha256 is not None and digest != spec.sha256:
        part.unlink()
        raise SourceError(
            f"source `{spec.name}`: sha256 of the download from {spec.url} is {digest}, expected "
            f"`sources.{spec.name}.sha256` = {spec.sha256}. The file was deleted; check the URL or the pin.")
    os.replace(part, archive)
    done_marker.write_text(digest + "\n")
    return digest


def _stream(url: str, part: Path) -> None:
    start = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "cxrbench"})
    if start:
        req.add_header("Range", f"bytes={start}-")
    with urllib.request.urlopen(req, timeout=60) as resp:
        if start and resp.status != 206:  # server ignored the range: start over
            start = 0
        total = resp.headers.get("Content-Length")
        total = int(total) + start if total else None
        with open(part, "ab" if start else "wb") as f, progress_bar(
                total=total, initial=start, unit="B", unit_scale=True, desc=part.stem) as bar:
            for block in iter(lambda: resp.read(CHUNK), b""):
                f.write(block)
                bar.update(len(block))


# --- extraction ---------------------------------------------------------------

def _open_archive(fileobj: IO[bytes], where: str):
    fileobj.seek(0)
    if zipfile.is_zipfile(fileobj):
        fileobj.seek(0)
        return zipfile.ZipFile(fileobj)
    fileobj.seek(0)
    try:
        return tarfile.open(fileobj=fileobj)
    except tarfile.TarError as err:
        raise SourceError(f"{where}: neither a zip nor a tar archive ({err})") from err


def _members(arc) -> list[tuple[str, bool, bool]]:
    """(name, is_dir, is_link) of every archive member."""
    out = []
    if isinstance(arc, zipfile.ZipFile):
        for info in arc.infolist():
            mode = info.external_attr >> 16
            out.append((info.filename, info.is_dir(), stat.S_ISLNK(mode)))
    else:
        for info in arc.getmembers():
            out.append((info.name, info.isdir(), not (info.isfile() or info.isdir())))
    return out


def _read_member(arc, name: str) -> IO[bytes]:
    if isinstance(arc, zipfile.ZipFile):
        return arc.open(name)
    f = arc.extractfile(name)
    if f is None:
        raise SourceError(f"archive member {name!r} is not a regular file")
    return f


def safe_extract(arc, dest: Path, *, root: str | None, include: Iterable[str] | None, where: str) -> tuple[int, int]:
    """Extract the members under ``root`` (restricted to ``include``) into ``dest``.

    Every member of the archive is checked first, so an unsafe archive is refused
    before anything is written.
    """
    root_p = _check_relative(root, where) if root else PurePosixPath()
    include_p = [_check_relative(i, where) for i in include] if include else None
    selected = []
    for name, is_dir, is_link in _members(arc):
        rel = _check_relative(name, where)
        if is_link:
            raise UnsafeArchiveError(f"{where}: refusing link member {name!r}")
        if is_dir or rel.parts[:len(root_p.parts)] != root_p.parts:
            continue
        sub = PurePosixPath(*rel.parts[len(root_p.parts):])
        if not sub.parts:
            continue
        if include_p is not None and not any(sub.parts[:len(i.parts)] == i.parts for i in include_p):
            continue
        selected.append((name, sub))
    if not selected:
        raise SourceError(f"{where}: no files under {root!r} (include={include}); check archive_root/include")
    n_bytes = 0
    for name, sub in progress_bar(selected, desc=f"extract {where}", unit="file"):
        target = dest.joinpath(*sub.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        with _read_member(arc, name) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK)
        n_bytes += target.stat().st_size
    return len(selected), n_bytes


def _extract(archive: Path, spec: SourceSpec, dest: Path) -> tuple[int, int]:
    where = f"source `{spec.name}` ({archive})"
    with open(archive, "rb") as f, atomic_path(dest) as tmp:
        tmp.mkdir()
        arc = _open_archive(f, where)
        with arc:
            if spec.inner_archive:
                _check_relative(spec.inner_archive, where)
                inner = io.BytesIO(_read_member(arc, spec.inner_archive).read())
                with _open_archive(inner, f"{where}:{spec.inner_archive}") as arc2:
                    return safe_extract(arc2, tmp, root=spec.archive_root, include=spec.include, where=where)
            return safe_extract(arc, tmp, root=spec.archive_root, include=spec.include, where=where)
