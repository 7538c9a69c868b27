"""The downloader and archive reader under failure: cut connections, stale parts, changed upstream files,
swapped archives, zip bombs, damaged or ambiguous archives. A local HTTP server (loopback only) plays upstream."""

from __future__ import annotations

import errno
import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cxrbench.data import sources
from cxrbench.data.sources import ExtractLimits, SourceError, SourceSpec, fetch

LIMITS = ExtractLimits(max_bytes=2**30, max_ratio=200)


def _archive(seed: bytes = b"v1", n: int = 40) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for i in range(n):
            z.writestr(f"up/data/f{i}.bin", hashlib.sha256(seed + bytes([i])).digest() * 256)   # 8 KB each
    return buf.getvalue()


def _tar(seed: bytes = b"v1", n: int = 40) -> bytes:
    """A tar of the same layout as :func:`_archive`: two seeds give archives of equal size and member offsets."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for i in range(n):
            data = hashlib.sha256(seed + bytes([i])).digest() * 256
            info = tarfile.TarInfo(f"up/data/f{i}.bin")
            info.size, info.mtime = len(data), 0
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Upstream:
    """One file at /a.zip with an ETag; options cut the body short, drop Content-Length, ignore If-Range (and
    serve any range of the current file) or name the file by Last-Modified or by nothing instead of an ETag."""

    def __init__(self):
        self.body, self.cut, self.send_length, self.requests = _archive(), None, True, []
        self.honour_if_range, self.validator = True, "etag"
        up = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                return None

            def do_GET(self):
                up.requests.append(dict(self.headers))
                etag = '"' + hashlib.sha1(up.body).hexdigest() + '"'
                modified = f"Mon, 01 Jan 2024 00:{len(up.requests) % 60:02d}:00 GMT"   # changes on every request
                current = {"etag": etag, "last_modified": modified}.get(up.validator)
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng and (not up.honour_if_range or self.headers.get("If-Range", current) == current):
                    start = int(rng.split("=")[1].rstrip("-"))
                    if start >= len(up.body):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                data = up.body[start:]
                self.send_response(status)
                if up.validator == "etag":
                    self.send_header("ETag", etag)
                elif up.validator == "last_modified":
                    self.send_header("Last-Modified", modified)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(up.body) - 1}/{len(up.body)}")
                if up.send_length:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data if up.cut is None else data[:up.cut])
                self.wfile.flush()
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/a.zip"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def upstream(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    up = Upstream()
    yield up
    up.server.shutdown()
    up.server.server_close()


def _spec(up, sha256=None):
    return SourceSpec.from_params("toy", dict(url=up.url, sha256=sha256, archive_root="up", inner_archive=None,
                                              include=["data"], mirror=None))


DL = Path("data/downloads")


def _check_extracted(dest: Path, body: bytes):
    with zipfile.ZipFile(io.BytesIO(body)) as z:
        assert (dest / "data/f7.bin").read_bytes() == z.read("up/data/f7.bin")


def test_cut_connection_keeps_the_part_and_a_rerun_resumes_it(upstream, tmp_path):
    upstream.cut = len(upstream.body) // 2
    with pytest.raises(SourceError, match="rerun to resume"):
        fetch(_spec(upstream), tmp_path / "raw", LIMITS)
    assert (DL / "toy.part").stat().st_size == upstream.cut and not (DL / "toy.archive").exists()
    upstream.cut = None
    rec = fetch(_spec(upstream), tmp_path / "raw", LIMITS)
    assert upstream.requests[-1].get("Range") == f"bytes={len(upstream.body) // 2}-"
    assert (DL / "toy.archive").read_bytes() == upstream.body
    assert rec["sha256"] == hashlib.sha256(upstream.body).hexdigest()
    _check_extracted(tmp_path / "raw", upstream.body)


def test_truncated_download_without_a_length_is_refused_not_cached(upstream, tmp_path):
    upstream.send_length, upstream.cut = False, len(upstream.body) - 5000
    with pytest.raises(SourceError, match="not a complete archive.*deleted: rerun"):
        fetch(_spec(upstream), tmp_path / "raw", LIMITS)
    assert not any(DL.iterdir())                                       # nothing half-trusted is left
    upstream.cut = None
    fetch(_spec(upstream), tmp_path / "raw", LIMITS)
    _check_extracted(tmp_path / "raw", upstream.body)


def test_complete_part_left_by_a_kill_is_finished(upstream, tmp_path):
    fetch(_spec(upstream), tmp_path / "raw", LIMITS)
    # as if killed after the last byte, before the rename: the part and its record, no archive
    (DL / "toy.archive").rename(DL / "toy.part")
    (DL / "toy.json").unlink()
    etag = '"' + hashlib.sha1(upstream.body).hexdigest() + '"'
    sources.write_json(DL / "toy.part.json", {"url": upstream.url, "etag": etag, "last_modified": None,
                                              "total": len(upstream.body)})
    fetch(_spec(upstream), tmp_path / "raw2", LIMITS)                  # HTTP 416: complete, not "no internet"
    _check_extracted(tmp_path / "raw2", upstream.body)


def test_resume_after_the_upstream_file_changed_does_not_splice(upstream, tmp_path):
    upstream.cut = len(upstream.body) // 2
    with pytest.raises(SourceError):
        fetch(_spec(upstream), tmp_path / "raw", LIMITS)
    upstream.body, upstream.cut = _archive(b"v2"), None                 # same size, other content and ETag
    fetch(_spec(upstream), tmp_path / "raw", LIMITS)
    assert (DL / "toy.archive").read_bytes() == upstream.body
    _check_extracted(tmp_path / "raw", upstream.body)


@pytest.mark.parametrize("validator", ["etag", "last_modified", None])
def test_a_server_that_ignores_if_range_is_not_spliced(upstream, tmp_path, capsys, validator):
    """An unpinned tar: the server answers every Range with 206 of its current file, whatever If-Range says.
    A 206 of a changed file (another validator, or none to compare) is never appended: downloaded whole."""
    upstream.honour_if_range, upstream.validator = False, validator
    upstream.body, upstream.cut = _tar(b"v1"), len(_tar(b"v1")) // 2
    with pytest.raises(SourceError, match="rerun to resume"):
        fetch(_spec(upstream), tmp_path / "raw", LIMITS)
    upstream.body, upstream.cut = _tar(b"v2"), None                     # same size and offsets, other bytes
    fetch(_spec(upstream), tmp_path / "raw", LIMITS)
    assert (DL / "toy.archive").read_bytes() == upstream.body          # v2 whole, not v1's head + v2's tail
    assert "not resumed" in capsys.readouterr().out
    assert upstream.requests[-1].get("Range") is None
    with tarfile.open(DL / "toy.archive") as t:
        assert (tmp_path / "raw/data/f3.bin").read_bytes() == t.extractfile("up/data/f3.bin").read()


def test_an_unchanged_file_is_still_resumed_when_if_range_is_ignored(upstream, tmp_path):
    upstream.honour_if_range = False
    upstream.cut = len(upstream.body) // 3
    with pytest.raises(SourceError):
        fetch(_spec(upstream), tmp_path / "raw", LIMITS)
    upstream.cut = None
    fetch(_spec(upstream), tmp_path / "raw", LIMITS)
    assert upstream.requests[-1].get("Range") == f"bytes={len(upstream.body) // 3}-" and len(upstream.requests) == 2
    assert (DL / "toy.archive").read_bytes() == upstream.body


@pytest.mark.parametrize("pinned", [True, False])
def test_a_swapped_archive_is_rehashed_and_downloaded_again(upstream, tmp_path, capsys, pinned):
    pin = hashlib.sha256(upstream.body).hexdigest().upper() if pinned else None   # upper case is fine
    fetch(_spec(upstream, pin), tmp_path / "raw", LIMITS)
    (DL / "toy.archive").write_bytes(_archive(b"evil"))
    fetch(_spec(upstream, pin), tmp_path / "raw2", LIMITS)
    assert "changed since it was verified" in capsys.readouterr().out
    _check_extracted(tmp_path / "raw2", upstream.body)


def test_disk_full_is_not_reported_as_a_network_error(upstream, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(sources, "_stream", full)
    with pytest.raises(SourceError, match="disk full") as err:
        fetch(_spec(upstream), tmp_path / "raw", LIMITS)
    assert "internet" not in str(err.value)


def test_bad_pin_is_a_param_error():
    with pytest.raises(sources.ParamError, match="sources.toy.sha256"):
        SourceSpec.from_params("toy", dict(url="https://x", sha256="g" * 64))


# --- archives -------------------------------------------------------------------------------

def _extract(tmp_path, members: list[tuple[str, bytes]], compression=zipfile.ZIP_DEFLATED, limits=LIMITS,
             corrupt=None):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members:
            z.writestr(name, data)
    if corrupt is not None:
        raw = bytearray(path.read_bytes())
        raw[corrupt] ^= 0xFF
        path.write_bytes(bytes(raw))
    with open(path, "rb") as f:
        arc = sources._open_archive(f, "test")
        with arc:
            return sources.safe_extract(arc, tmp_path / "out", root=None, include=None, where="source `t`",
                                        limits=limits, packed_total=path.stat().st_size)


def test_zip_bomb_is_refused_before_writing(tmp_path):
    with pytest.raises(SourceError, match="max_compression_ratio.*bomb"):
        _extract(tmp_path, [("big.bin", bytes(50 * 2**20))])
    assert not (tmp_path / "out").exists()


def test_expanded_size_cap(tmp_path):
    with pytest.raises(SourceError, match="max_extract_gb"):
        _extract(tmp_path, [("a.bin", b"x" * 4000)], limits=ExtractLimits(max_bytes=1000, max_ratio=200))


def test_duplicate_member_names_are_refused(tmp_path):
    with pytest.warns(UserWarning, match="Duplicate name"):
        with pytest.raises(SourceError, match="appears twice"):
            _extract(tmp_path, [("a.txt", b"1"), ("a.txt", b"2")])


def test_a_file_that_is_also_a_folder_is_refused(tmp_path):
    with pytest.raises(SourceError, match="both a file and the folder"):
        _extract(tmp_path, [("a", b"1"), ("a/b", b"2")])


def test_bad_crc_names_the_member(tmp_path):
    data = b"0123456789" * 100
    with pytest.raises(SourceError, match=r"cannot extract member 'm.txt'.*delete it and rerun"):
        _extract(tmp_path, [("m.txt", data)], compression=zipfile.ZIP_STORED, corrupt=30 + len("m.txt") + 500)


def test_overlong_member_name_names_the_member(tmp_path):
    with pytest.raises(SourceError, match=r"cannot extract member 'x{300}'"):
        _extract(tmp_path, [("x" * 300, b"1")])


def test_truncated_tar_names_the_archive(tmp_path):
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        data = b"x" * 50000
        info = tarfile.TarInfo("up/data/a.bin")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    cut = io.BytesIO(buf.getvalue()[:20000])                      # the member's data stops half way
    with pytest.raises(SourceError, match=r"source `t`.*(truncated|'up/data/a.bin').*delete it and rerun"):
        with tarfile.open(fileobj=cut) as arc:
            sources.safe_extract(arc, tmp_path / "out", root=None, include=None, where="source `t`", limits=LIMITS)
