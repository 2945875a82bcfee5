"""Tests for micrec_core.data.download against a loopback HTTP server (127.0.0.1 only)."""

from __future__ import annotations

import contextlib
import gzip
import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from micrec_core.data.download import (
    DownloadError,
    download_category,
    download_file,
    download_images,
    release_urls,
)


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that knows its file root and logs (path, Range, body bytes sent)."""

    root: Path
    log: list[tuple[str, str | None, int]]
    lock: threading.Lock


class _Handler(BaseHTTPRequestHandler):
    """Serves /files/<rel> with Range support; /dead 404s, /drop hangs up, /slow stalls,
    /short announces more bytes than it sends, /norange ignores Range."""

    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""

    def _record(self, sent: int) -> None:
        """Log this request with the number of body bytes it gets (before replying, so clients see it)."""
        with self.server.lock:
            self.server.log.append((self.path, self.headers.get("Range"), sent))

    def _send(self, status: int, body: bytes, headers: dict[str, str], length: int | None = None) -> None:
        """Log, then send a response whose Content-Length is `length` (default: the body size)."""
        self._record(len(body))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        """Dispatch on the first path component."""
        kind, _, rel = self.path.lstrip("/").partition("/")
        if kind == "dead":
            self._record(0)
            self.send_error(404, "Not Found")
        elif kind == "drop":
            self._record(0)
        elif kind == "slow":
            self._record(0)
            time.sleep(1.0)
            with contextlib.suppress(OSError):
                self._send(200, b"late", {})
        elif kind == "short":
            data = (self.server.root / rel).read_bytes()
            self._send(200, data[: len(data) // 2], {}, length=len(data))
        elif kind == "norange":
            self._send(200, (self.server.root / rel).read_bytes(), {})
        else:
            self._serve_file((self.server.root / rel).read_bytes())

    def _serve_file(self, data: bytes) -> None:
        """Answer with `data`, honouring a 'bytes=N-' Range header."""
        requested = self.headers.get("Range")
        if requested is None:
            self._send(200, data, {})
            return
        start = int(requested.removeprefix("bytes=").removesuffix("-"))
        if start >= len(data):
            self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            return
        content_range = f"bytes {start}-{len(data) - 1}/{len(data)}"
        self._send(206, data[start:], {"Content-Range": content_range})


@dataclass
class Served:
    """A running loopback server: its file root, base URL and request log."""

    root: Path
    url: str
    server: _Server

    def requests(self) -> list[tuple[str, str | None, int]]:
        """A copy of the request log."""
        with self.server.lock:
            return list(self.server.log)

    def clear(self) -> None:
        """Forget the requests seen so far."""
        with self.server.lock:
            self.server.log.clear()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """Start the loopback server on a free port for one test."""
    root = tmp_path / "srv"
    root.mkdir()
    server = _Server(("127.0.0.1", 0), _Handler)
    server.root, server.log, server.lock = root, [], threading.Lock()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield Served(root, f"http://127.0.0.1:{server.server_address[1]}", server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _payload(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


def test_release_urls_template_category_and_move_under_base_url() -> None:
    """Defaults are the public locations; base_url keeps the file names."""
    public = release_urls("2023", "All_Beauty")
    assert [url.rsplit("/", 1)[1] for url in public] == ["All_Beauty.jsonl.gz", "meta_All_Beauty.jsonl.gz"]
    assert all(url.startswith("https://mcauleylab.ucsd.edu/") for url in public)
    assert release_urls("2014", "Beauty", base_url="http://127.0.0.1:9/x/") == [
        "http://127.0.0.1:9/x/reviews_Beauty_5.json.gz",
        "http://127.0.0.1:9/x/meta_Beauty.json.gz",
    ]


def test_unknown_release_and_bad_category_are_rejected(tmp_path: Path) -> None:
    """Bad parameters raise a ValueError naming the parameter, before anything is written."""
    with pytest.raises(ValueError, match=r"'release'.*2014, 2018, 2023"):
        release_urls("2020", "Beauty")
    with pytest.raises(ValueError, match="'release'"):
        download_category("1999", "Beauty", tmp_path / "out")
    with pytest.raises(ValueError, match="'category'"):
        download_category("2014", "../etc", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_download_category_fetches_both_files_into_category_folder(served: Served, tmp_path: Path) -> None:
    """Reviews and meta land byte-identical in out/<category>/ with no .part left behind."""
    reviews, meta = _payload(50_000, 1), _payload(20_000, 2)
    (served.root / "reviews_Beauty_5.json.gz").write_bytes(reviews)
    (served.root / "meta_Beauty.json.gz").write_bytes(meta)
    report = download_category("2014", "Beauty", tmp_path / "out", base_url=f"{served.url}/files")
    folder = tmp_path / "out" / "Beauty"
    assert (folder / "reviews_Beauty_5.json.gz").read_bytes() == reviews
    assert (folder / "meta_Beauty.json.gz").read_bytes() == meta
    assert [entry["bytes"] for entry in report["files"]] == [len(reviews), len(meta)]
    assert report["images"] is None
    assert sorted(p.name for p in folder.iterdir()) == ["meta_Beauty.json.gz", "reviews_Beauty_5.json.gz"]


def test_resume_from_partial_file_uses_range(served: Served, tmp_path: Path) -> None:
    """A .part is resumed with a Range request; only the missing bytes travel."""
    data = _payload(100_000)
    (served.root / "big.bin").write_bytes(data)
    dest = tmp_path / "big.bin"
    (tmp_path / "big.bin.part").write_bytes(data[:30_000])
    download_file(f"{served.url}/files/big.bin", dest, chunk=4096)
    assert dest.read_bytes() == data
    assert not (tmp_path / "big.bin.part").exists()
    assert served.requests() == [("/files/big.bin", "bytes=30000-", 70_000)]


def test_download_is_flushed_to_disk_before_the_rename(
    served: Served, tmp_path: Path, durability_events: list[tuple[str, int]]
) -> None:
    """The .part is fsynced before it takes the final name (a crash cannot leave a final name with lost data)."""
    (served.root / "f.bin").write_bytes(_payload(10_000))
    events = durability_events
    inode = download_file(f"{served.url}/files/f.bin", tmp_path / "f.bin").stat().st_ino
    assert ("fsync", inode) in events
    assert events.index(("fsync", inode)) < events.index(("replace", inode))


def test_server_ignoring_range_restarts_from_scratch(served: Served, tmp_path: Path) -> None:
    """When the server answers 200 to a Range request, the stale .part is overwritten."""
    data = _payload(10_000)
    (served.root / "f.bin").write_bytes(data)
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"x" * 500)
    download_file(f"{served.url}/norange/f.bin", dest)
    assert dest.read_bytes() == data


def test_complete_part_is_finished_on_416(served: Served, tmp_path: Path) -> None:
    """A .part that already holds the whole file is renamed without fetching the body again."""
    data = _payload(5_000)
    (served.root / "f.bin").write_bytes(data)
    (tmp_path / "f.bin.part").write_bytes(data)
    download_file(f"{served.url}/files/f.bin", tmp_path / "f.bin")
    assert (tmp_path / "f.bin").read_bytes() == data
    assert served.requests() == [("/files/f.bin", "bytes=5000-", 0)]


def test_size_mismatch_names_url_and_sizes_and_keeps_part(served: Served, tmp_path: Path) -> None:
    """A short body is an error; the .part stays and a later download resumes from it."""
    data = _payload(8_000)
    (served.root / "f.bin").write_bytes(data)
    dest = tmp_path / "f.bin"
    url = f"{served.url}/short/f.bin"
    with pytest.raises(DownloadError, match=rf"{url}.*8000 bytes.*received 4000"):
        download_file(url, dest)
    assert not dest.exists()
    assert (tmp_path / "f.bin.part").read_bytes() == data[:4000]
    download_file(f"{served.url}/files/f.bin", dest)
    assert dest.read_bytes() == data
    assert served.requests()[-1] == ("/files/f.bin", "bytes=4000-", 4000)


def test_http_error_names_url(served: Served, tmp_path: Path) -> None:
    """A 404 on a data file raises a DownloadError naming the URL."""
    url = f"{served.url}/dead/meta_Beauty.json.gz"
    with pytest.raises(DownloadError, match=f"{url}.*404"):
        download_file(url, tmp_path / "meta_Beauty.json.gz")
    assert not (tmp_path / "meta_Beauty.json.gz").exists()


def test_existing_file_is_skipped(served: Served, tmp_path: Path) -> None:
    """A file already under its final name is kept and not requested."""
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"already here")
    assert download_file(f"{served.url}/files/missing.bin", dest) == dest
    assert dest.read_bytes() == b"already here"
    assert served.requests() == []


def test_images_record_dead_urls_and_rerun_hits_cache(served: Served, tmp_path: Path) -> None:
    """Good images are written, 404/hang-up/timeout are recorded, and a rerun fetches no good image."""
    (served.root / "img").mkdir()
    images = {"a.jpg": _payload(3000, 3), "b.png": _payload(2000, 4), "c": _payload(1000, 5)}
    for name, data in images.items():
        (served.root / "img" / name).write_bytes(data)
    urls = {
        "A": f"{served.url}/files/img/a.jpg",
        "B": f"{served.url}/files/img/b.png",
        "C": f"{served.url}/files/img/c",
        "D": f"{served.url}/dead/d.jpg",
        "E": f"{served.url}/drop/e.jpg",
        "F": f"{served.url}/slow/f.jpg",
    }
    out = tmp_path / "images"
    out.mkdir()
    (out / "A.jpg").write_bytes(b"")
    report = download_images(urls, out, concurrency=3, retries=1, timeout=0.3, backoff=0.0)
    assert (report.ok, report.cached, report.failed) == (3, 0, 3)
    assert (out / "A.jpg").read_bytes() == images["a.jpg"]
    assert (out / "B.png").read_bytes() == images["b.png"]
    assert (out / "C.jpg").read_bytes() == images["c"]
    failures = json.loads((out / "failures.json").read_text())
    assert failures == report.failures
    assert set(failures) == {"D", "E", "F"}
    assert "404" in failures["D"]
    paths = [path for path, _, _ in served.requests()]
    assert paths.count("/dead/d.jpg") == 1
    assert paths.count("/drop/e.jpg") == 2

    served.clear()
    again = download_images(urls, out, concurrency=3, retries=0, timeout=0.3, backoff=0.0)
    assert (again.ok, again.cached, again.failed) == (0, 3, 3)
    assert not [path for path, _, _ in served.requests() if path.startswith("/files/")]


def test_images_reject_bad_parameters(tmp_path: Path) -> None:
    """Unusable item ids and a zero pool size are refused before any request."""
    with pytest.raises(ValueError, match="'urls'"):
        download_images({"../evil": "http://127.0.0.1:9/x.jpg"}, tmp_path)
    with pytest.raises(ValueError, match="'concurrency'"):
        download_images({}, tmp_path, concurrency=0)


def test_download_category_with_images_reads_meta(served: Served, tmp_path: Path) -> None:
    """images=True reads image URLs from the 2014 meta file and fetches them into images/."""
    pytest.importorskip("micrec_core.data.amazon")
    (served.root / "img").mkdir()
    photo = _payload(1500, 6)
    (served.root / "img" / "x.jpg").write_bytes(photo)
    rows = [
        {"asin": "B000000001", "imUrl": f"{served.url}/files/img/x.jpg"},
        {"asin": "B000000002", "imUrl": f"{served.url}/dead/y.jpg"},
        {"asin": "B000000003"},
    ]
    (served.root / "meta_Beauty.json.gz").write_bytes(
        gzip.compress("".join(json.dumps(row) + "\n" for row in rows).encode())
    )
    (served.root / "reviews_Beauty_5.json.gz").write_bytes(gzip.compress(b"{}\n"))
    report = download_category(
        "2014", "Beauty", tmp_path / "out", images=True, base_url=f"{served.url}/files", backoff=0.0
    )
    folder = tmp_path / "out" / "Beauty" / "images"
    assert report["images"] == {"ok": 1, "cached": 0, "failed": 1}
    assert (folder / "B000000001.jpg").read_bytes() == photo
    assert set(json.loads((folder / "failures.json").read_text())) == {"B000000002"}
