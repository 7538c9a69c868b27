"""Fetch the real upstream sources: an archive URL, or a local mirror with the same layout.

One call, :func:`fetch`, per source named in ``params.yaml: sources``. Archives
are downloaded to ``data/downloads/`` (kept, so a rerun does not download
again), checksum-verified when the source pins a sha256, and extracted safely:
absolute paths, ``..`` components and links are refused. The extracted tree is
renamed into place only when complete.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Iterable

from cxrbench.core import paths
from cxrbench.core.io import atomic_path, read_json, write_json
from cxrbench.core.params import ParamError, check_float, section
from cxrbench.core.runtime import progress as progress_bar

DOWNLOAD_DIR = Path(paths.DOWNLOADS)
CHUNK = 1 << 20


class SourceError(RuntimeError):
    """A source could not be fetched; the message names the source and the param to change."""


class UnsafeArchiveError(SourceError):
    """An archive member would escape the target folder or is a link."""


@dataclass(frozen=True)
class ExtractLimits:
    """Caps on what an archive may expand to (``params.yaml: download``): a zip bomb stops with its name."""
    max_bytes: int          # all extracted members together
    max_ratio: float        # expanded / compressed size of one member (zip) or of the whole archive

    @classmethod
    def from_params(cls, params: dict) -> "ExtractLimits":
        p = section(params, "download")
        gb, ratio = p.get("max_extract_gb"), p.get("max_compression_ratio")
        for key, v in (("max_extract_gb", gb), ("max_compression_ratio", ratio)):
            check_float(f"download.{key}", v, minimum=0, open_low=True, what="a positive number")
        return cls(int(gb * 2**30), float(ratio))


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
        if sha is not None and (not isinstance(sha, str) or len(sha) != 64
                                or any(c not in "0123456789abcdefABCDEF" for c in sha)):
            raise ParamError(f"{key}.sha256", f"expected 64 hex digits or null, got {sha!r}")
        sha = sha.lower() if sha else None                        # upper-case pins compare equal
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


def fetch(spec: SourceSpec, dest: Path, limits: ExtractLimits | None, *, repo_root: Path = Path(".")) -> dict:
    """Materialise ``spec`` at ``dest`` in its upstream layout; return a provenance record.

    ``limits`` caps what a downloaded archive may expand to (:class:`ExtractLimits`; None: no cap,
    for tests only).
    """
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
    n_files, n_bytes = _extract(archive, spec, dest, limits)
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
#
# data/downloads/NAME.archive   a complete download, with NAME.json (url, sha256, size, validators);
#                               re-hashed on every use, so a swapped or damaged archive is never trusted
# data/downloads/NAME.part      an unfinished download, with NAME.part.json (url, ETag / Last-Modified,
#                               total length): resumed only from the same URL, and only when the server
#                               answers the range request (If-Range) with 206, the part's validator and a
#                               Content-Range that continues it; otherwise downloaded whole again

def _record(path: Path) -> dict | None:
    try:
        rec = read_json(path)
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _drop(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def _download(spec: SourceSpec, archive: Path) -> str:
    """Download ``spec.url`` to ``archive`` unless a verified copy is already there; return its sha256."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    record, part = archive.with_suffix(".json"), archive.with_suffix(".part")
    part_record = part.with_name(part.name + ".json")
    archive.with_suffix(".sha256").unlink(missing_ok=True)          # marker of earlier versions: not trusted
    pin = spec.sha256.lower() if spec.sha256 else None

    if archive.is_file():
        rec = _record(record)
        if rec is not None and rec.get("url") == spec.url:
            digest = sha256_of(archive)
            expected = pin or rec.get("sha256")
            if digest == expected:
                return digest
            print(f"source `{spec.name}`: {archive} has sha256 {digest}, expected {expected} (changed since it "
                  f"was verified): deleted, downloading again")
        else:
            print(f"source `{spec.name}`: {archive} has no record of a verified download from {spec.url}: "
                  f"deleted, downloading again")
        _drop(archive, record)

    rec = _record(part_record)
    if part.exists() and (rec is None or rec.get("url") != spec.url):
        _drop(part, part_record)                                    # never splice two URLs or unknown bytes
        rec = None
    try:
        rec = _stream(spec.url, part, part_record, rec)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise SourceError(f"source `{spec.name}`: disk full while writing {part}: free space on "
                              f"{part.parent.resolve()} and rerun (the partial download is resumed)") from err
        if isinstance(err, urllib.error.HTTPError):
            what = f"HTTP {err.code} {err.reason}"
        else:
            what = str(err)
        raise SourceError(
            f"source `{spec.name}`: could not download {spec.url}: {what}. Without internet, point "
            f"`sources.{spec.name}.mirror` in params.yaml at a local copy with the upstream layout "
            f"(or run a profile: cxrbench profiles run mirror). A partial download is kept "
            f"in {part} and resumed on the next run.") from err
    except (http.client.HTTPException, TimeoutError) as err:
        raise SourceError(f"source `{spec.name}`: the connection to {spec.url} broke ({err!r}); rerun to "
                          f"resume {part}") from err
    size = part.stat().st_size
    if rec.get("total") is not None and size != rec["total"]:
        raise SourceError(f"source `{spec.name}`: the download of {spec.url} stopped at {size} of {rec['total']} "
                          f"bytes; rerun to resume {part}")
    digest = sha256_of(part)
    if pin is not None and digest != pin:
        _drop(part, part_record)
        raise SourceError(
            f"source `{spec.name}`: sha256 of the download from {spec.url} is {digest}, expected "
            f"`sources.{spec.name}.sha256` = {pin}. The file was deleted; check the URL or the pin.")
    if pin is None:                                                # no pin: at least a complete, readable archive
        try:
            _test_archive(part)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, SourceError, OSError) as err:
            _drop(part, part_record)
            raise SourceError(f"source `{spec.name}`: the download of {spec.url} is not a complete archive "
                              f"({str(err).splitlines()[0] if str(err) else type(err).__name__}); it was deleted: rerun to "
                              f"download it again") from err
    os.replace(part, archive)
    write_json(record, {"url": spec.url, "sha256": digest, "bytes": size, "pinned": pin is not None,
                        "etag": rec.get("etag"), "last_modified": rec.get("last_modified")})
    _drop(part_record)
    return digest


def _stream(url: str, part: Path, part_record: Path, rec: dict | None, _retry: bool = True) -> dict:
    """Append ``url`` to ``part`` (resuming when possible); return the part's record (url, validators, total)."""
    start = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "cxrbench"})
    if start:
        req.add_header("Range", f"bytes={start}-")
        validator = _validator(rec)
        if validator:
            req.add_header("If-Range", validator[1])               # changed upstream: the server sends it whole
    try:
        resp = urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:                              # nothing after `start`: complete, or stale
            if rec and rec.get("total") == start:
                return rec
            _drop(part, part_record)
            if _retry:
                return _stream(url, part, part_record, None, _retry=False)
        raise
    with resp:
        status = resp.status if getattr(resp, "status", None) is not None else 200
        if start and status == 206:
            why = _not_a_resume_of(resp, start, rec)
            if why:                                                # the server ignored If-Range: never splice
                print(f"{part}: not resumed ({why}): downloading {url} whole again")
                resp.close()
                _drop(part, part_record)                           # the retry starts at byte 0: no range
                return _stream(url, part, part_record, None, _retry=False)
        if start and status != 206:                                # range ignored or file changed: start over
            start = 0
        length = resp.headers.get("Content-Length")
        total = int(length) + start if length and length.isdigit() else None
        content_range = resp.headers.get("Content-Range") or ""
        if status == 206 and content_range.rpartition("/")[2].isdigit():
            total = int(content_range.rpartition("/")[2])
        new = {"url": url, "etag": resp.headers.get("ETag"), "last_modified": resp.headers.get("Last-Modified"),
               "total": total}
        write_json(part_record, new)                               # before any byte is appended
        with open(part, "ab" if start else "wb") as f, progress_bar(
                total=total, initial=start, unit="B", unit_scale=True, desc=part.stem) as bar:
            for block in iter(lambda: resp.read(CHUNK), b""):
                f.write(block)
                bar.update(len(block))
    return new


def _validator(rec: dict | None) -> tuple[str, str] | None:
    """The part's validator for If-Range: its strong ETag, else its Last-Modified (a weak ETag proves nothing)."""
    rec = rec or {}
    etag = rec.get("etag")
    if isinstance(etag, str) and etag and not etag.startswith("W/"):
        return "etag", etag
    modified = rec.get("last_modified")
    return ("last_modified", modified) if isinstance(modified, str) and modified else None


def _not_a_resume_of(resp, start: int, rec: dict | None) -> str:
    """Why a 206 answer to ``Range: bytes=START-`` cannot be appended to the part of record ``rec``; '' if it can.

    A server may honour ``Range`` yet ignore ``If-Range``: it then sends a range of a changed file. The
    answer continues the part only when it names the validator the part was started with (ETag, else
    Last-Modified) and its ``Content-Range`` starts at the part's end, within the recorded total length.
    """
    validator = _validator(rec)
    if validator is None:
        return "no strong ETag or Last-Modified was named when the part was started: nothing proves it unchanged"
    header = {"etag": "ETag", "last_modified": "Last-Modified"}[validator[0]]
    if resp.headers.get(header) != validator[1]:
        return f"{header} {resp.headers.get(header)!r}, the part was started from {validator[1]!r}"
    rec = rec or {}
    content_range = (resp.headers.get("Content-Range") or "").strip()
    unit, _, spec = content_range.partition(" ")
    first, _, total = spec.partition("/")
    lo, _, hi = first.partition("-")
    if unit != "bytes" or not lo.isdigit() or not hi.isdigit() or int(lo) != start or int(hi) < int(lo):
        return f"Content-Range {content_range!r} does not continue the part at byte {start}"
    if total != "*" and (not total.isdigit() or int(hi) >= int(total)
                         or (rec.get("total") is not None and int(total) != rec["total"])):
        return f"Content-Range {content_range!r}: the part was started from a file of {rec.get('total')} bytes"
    return ""


def _test_archive(path: Path) -> None:
    """Read every member of a zip (CRC checked) or tar archive; raise on a truncated or damaged one."""
    with open(path, "rb") as f:
        if zipfile.is_zipfile(f):
            with zipfile.ZipFile(f) as z:
                bad = z.testzip()
                if bad is not None:
                    raise SourceError(f"member {bad!r} fails its CRC check")
            return
        f.seek(0)
        with tarfile.open(fileobj=f) as t:
            for member in t:
                if member.isfile():
                    src = t.extractfile(member)
                    for _ in iter(lambda: src.read(CHUNK), b""):   # read to the end: a short member raises
                        continue


# --- extraction ---------------------------------------------------------------

EXTRACT_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError)


def _open_archive(fileobj: IO[bytes], where: str):
    fileobj.seek(0)
    if zipfile.is_zipfile(fileobj):
        fileobj.seek(0)
        try:
            return zipfile.ZipFile(fileobj)
        except (zipfile.BadZipFile, EOFError, OSError) as err:
            raise SourceError(f"{where}: damaged zip archive ({err})") from err
    fileobj.seek(0)
    try:
        return tarfile.open(fileobj=fileobj)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise SourceError(f"{where}: neither a zip nor a tar archive ({err})") from err


@dataclass(frozen=True)
class Member:
    name: str
    is_dir: bool
    is_link: bool
    size: int               # declared expanded size
    packed: int | None      # compressed size (zip members); None for tar


def _members(arc) -> list[Member]:
    out = []
    if isinstance(arc, zipfile.ZipFile):
        for info in arc.infolist():
            mode = info.external_attr >> 16
            out.append(Member(info.filename, info.is_dir(), stat.S_ISLNK(mode), info.file_size, info.compress_size))
    else:
        for info in arc.getmembers():
            out.append(Member(info.name, info.isdir(), not (info.isfile() or info.isdir()), info.size, None))
    return out


def _read_member(arc, name: str) -> IO[bytes]:
    if isinstance(arc, zipfile.ZipFile):
        return arc.open(name)
    f = arc.extractfile(name)
    if f is None:
        raise SourceError(f"archive member {name!r} is not a regular file")
    return f


def _check_limits(where: str, members: list[Member], limits: ExtractLimits | None, packed_total: int | None) -> None:
    if limits is None:
        return
    total = sum(m.size for m in members)
    if total > limits.max_bytes:
        raise SourceError(f"{where}: the selected members would expand to {total / 2**30:.2f} GiB, over "
                          f"`download.max_extract_gb` = {limits.max_bytes / 2**30:g}; raise it if this is expected")
    for m in members:
        if m.packed is not None and m.size > 2**20 and m.size > limits.max_ratio * max(m.packed, 1):
            raise SourceError(f"{where}: member {m.name!r} expands {m.size / max(m.packed, 1):.0f}x "
                              f"({m.packed} -> {m.size} bytes), over `download.max_compression_ratio` = "
                              f"{limits.max_ratio:g}: refusing a likely zip bomb")
    if packed_total and total > 2**20 and total > limits.max_ratio * packed_total:
        raise SourceError(f"{where}: the archive expands {total / packed_total:.0f}x, over "
                          f"`download.max_compression_ratio` = {limits.max_ratio:g}: refusing a likely bomb")


def _copy_capped(src: IO[bytes], out: IO[bytes], cap: int, name: str, where: str) -> int:
    """Copy at most ``cap`` bytes (a member's declared size): a member that lies about its size stops here."""
    n = 0
    for block in iter(lambda: src.read(CHUNK), b""):
        n += len(block)
        if n > cap:
            raise SourceError(f"{where}: member {name!r} is larger than its declared {cap} bytes: damaged or "
                              f"malicious archive")
        out.write(block)
    return n


def safe_extract(arc, dest: Path, *, root: str | None, include: Iterable[str] | None, where: str,
                 limits: ExtractLimits | None = None, packed_total: int | None = None) -> tuple[int, int]:
    """Extract the members under ``root`` (restricted to ``include``) into ``dest``.

    Every member of the archive is checked first (paths, links, duplicate names,
    a file that is also a folder, the size and ratio ``limits``), so an unsafe
    archive is refused before anything is written; a damaged member is an error
    that names the member and the archive.
    """
    root_p = _check_relative(root, where) if root else PurePosixPath()
    include_p = [_check_relative(i, where) for i in include] if include else None
    selected: list[tuple[Member, PurePosixPath]] = []
    seen: set[PurePosixPath] = set()
    try:
        members = _members(arc)
    except EXTRACT_ERRORS as err:
        raise SourceError(f"{where}: cannot read the list of members ({type(err).__name__}: {err}); the archive "
                          f"is truncated or damaged: delete it and rerun") from err
    for m in members:
        rel = _check_relative(m.name, where)
        if m.is_link:
            raise UnsafeArchiveError(f"{where}: refusing link member {m.name!r}")
        if m.is_dir or rel.parts[:len(root_p.parts)] != root_p.parts:
            continue
        sub = PurePosixPath(*rel.parts[len(root_p.parts):])
        if not sub.parts:
            continue
        if include_p is not None and not any(sub.parts[:len(i.parts)] == i.parts for i in include_p):
            continue
        if sub in seen:
            raise SourceError(f"{where}: member {m.name!r} appears twice in the archive: refusing to pick one")
        seen.add(sub)
        selected.append((m, sub))
    if not selected:
        raise SourceError(f"{where}: no files under {root!r} (include={include}); check archive_root/include")
    for _, sub in selected:
        for parent in sub.parents:
            if parent in seen:
                raise SourceError(f"{where}: {parent} is both a file and the folder of {sub}: refusing the archive")
    _check_limits(where, [m for m, _ in selected], limits, packed_total)
    n_bytes = 0
    for m, sub in progress_bar(selected, desc=f"extract {where}", unit="file"):
        target = dest.joinpath(*sub.parts)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with _read_member(arc, m.name) as src, open(target, "wb") as out:
                n_bytes += _copy_capped(src, out, m.size, m.name, where)
        except EXTRACT_ERRORS as err:
            if isinstance(err, OSError) and err.errno == errno.ENOSPC:
                raise SourceError(f"{where}: disk full while extracting {m.name!r}: free space and rerun") from err
            raise SourceError(f"{where}: cannot extract member {m.name!r} ({type(err).__name__}: {err}); if the "
                              f"archive is damaged, delete it and rerun") from err
    return len(selected), n_bytes


def _extract(archive: Path, spec: SourceSpec, dest: Path, limits: ExtractLimits | None) -> tuple[int, int]:
    where = f"source `{spec.name}` ({archive})"
    packed = archive.stat().st_size
    with open(archive, "rb") as f, atomic_path(dest) as tmp:
        tmp.mkdir()
        arc = _open_archive(f, where)
        with arc:
            if not spec.inner_archive:
                return safe_extract(arc, tmp, root=spec.archive_root, include=spec.include, where=where,
                                    limits=limits, packed_total=packed)
            _check_relative(spec.inner_archive, where)
            inner_where = f"{where}:{spec.inner_archive}"
            info = next((m for m in _members(arc) if m.name == spec.inner_archive), None)
            if info is None:
                raise SourceError(f"{where}: no member {spec.inner_archive!r}; check "
                                  f"`sources.{spec.name}.inner_archive`")
            _check_limits(where, [info], limits, None)
            # the inner archive goes to a temporary file beside the output, never whole into memory
            with tempfile.TemporaryFile(dir=tmp.parent) as inner:
                try:
                    with _read_member(arc, spec.inner_archive) as src:
                        _copy_capped(src, inner, info.size, spec.inner_archive, where)
                except EXTRACT_ERRORS as err:
                    raise SourceError(f"{where}: cannot read {spec.inner_archive!r} ({err}); if the archive is "
                                      f"damaged, delete it and rerun") from err
                with _open_archive(inner, inner_where) as arc2:
                    return safe_extract(arc2, tmp, root=spec.archive_root, include=spec.include, where=inner_where,
                                        limits=limits, packed_total=info.size)
