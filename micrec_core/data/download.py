"""Download the public Amazon review/meta files (2014, 2018, 2023 releases) and, optionally, item images.

Files land in ``out/<category>/<filename>``, the layout the readers expect. A file is streamed into
``<filename>.part`` (resumed with an HTTP Range request when a partial one exists), checked against the
size the server announced, flushed to disk and only then renamed onto its final name, so a final name always
holds a complete file and an existing one is skipped. Images are fetched by a bounded thread pool; dead URLs are
recorded in ``images/failures.json`` and never stop the run.
"""

from __future__ import annotations

import http.client
import os
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from tqdm import tqdm

from micrec_core.data.atomic import fsync_path, write_bytes, write_json

USER_AGENT = "micrec-download/0.1 (research reproduction)"

# HTTP statuses worth retrying for an image; anything else (404, 403, 410, ...) is a dead URL.
TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})

_CATEGORY_RE = re.compile(r"[A-Za-z0-9_-]+")
_ITEM_ID_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_EXT_RE = re.compile(r"\.[A-Za-z0-9]{1,5}")
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


class DownloadError(RuntimeError):
    """A file could not be downloaded completely; the message names the URL."""


@dataclass(frozen=True)
class ReleaseFiles:
    """The two public files of one release and category: the 5-core reviews and the item metadata."""

    reviews: str
    meta: str


@dataclass(frozen=True)
class ImageReport:
    """Outcome of one image run: fetched now, already on disk, and failed ({item_id: reason})."""

    ok: int
    cached: int
    failed: int
    failures: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """The three counts as a plain dict (for JSON reports)."""
        return {"ok": self.ok, "cached": self.cached, "failed": self.failed}


RELEASES: dict[str, ReleaseFiles] = {
    "2014": ReleaseFiles(
        reviews="http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_{cat}_5.json.gz",
        meta="http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/meta_{cat}.json.gz",
    ),
    "2018": ReleaseFiles(
        reviews="https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/categoryFilesSmall/{cat}_5.json.gz",
        meta="https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/metaFiles2/meta_{cat}.json.gz",
    ),
    "2023": ReleaseFiles(
        reviews="https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/raw/review_categories/{cat}.jsonl.gz",
        meta="https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/raw/meta_categories/meta_{cat}.jsonl.gz",
    ),
}


def _check_release(release: str) -> ReleaseFiles:
    """Return the URL templates of `release`, or raise a ValueError naming the allowed values."""
    if release not in RELEASES:
        allowed = ", ".join(sorted(RELEASES))
        raise ValueError(f"parameter 'release': unknown release {release!r}; allowed values: {allowed}")
    return RELEASES[release]


def _check_category(category: str) -> str:
    """Return `category` if it is a safe file/URL component (letters, digits, '_' and '-')."""
    if not _CATEGORY_RE.fullmatch(category):
        raise ValueError(
            f"parameter 'category': {category!r} is not a category name "
            "(letters, digits, '_' and '-' only, e.g. 'Beauty' or 'All_Beauty')"
        )
    return category


def filename_of(url: str) -> str:
    """The last path component of `url` (the name the file gets on disk)."""
    name = PurePosixPath(urlsplit(url).path).name
    if not name:
        raise ValueError(f"URL {url!r} has no file name in its path")
    return name


def _relocate(url: str, base_url: str | None) -> str:
    """`url`, or the same file name under `base_url` when one is given."""
    return url if base_url is None else f"{base_url.rstrip('/')}/{filename_of(url)}"


def release_files(release: str, category: str, base_url: str | None = None) -> ReleaseFiles:
    """The reviews and meta URLs of `release` for `category`, optionally moved under `base_url`."""
    templates = _check_release(release)
    cat = _check_category(category)
    return ReleaseFiles(
        reviews=_relocate(templates.reviews.format(cat=cat), base_url),
        meta=_relocate(templates.meta.format(cat=cat), base_url),
    )


def release_urls(release: str, category: str, base_url: str | None = None) -> list[str]:
    """The public file URLs of `release` for `category`: [reviews, meta]."""
    files = release_files(release, category, base_url)
    return [files.reviews, files.meta]


def _part_path(dest: Path) -> Path:
    """Where the partial download of `dest` lives."""
    return dest.with_name(dest.name + ".part")


def _request(url: str, offset: int = 0) -> urllib.request.Request:
    """A GET request for `url`, asking for bytes from `offset` on when it is positive."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.Request(url, headers=headers)


def _content_range(value: str | None, url: str) -> tuple[int | None, int | None]:
    """Parse a Content-Range header into (first byte, total size); None where the server sent '*'."""
    match = _CONTENT_RANGE_RE.fullmatch((value or "").strip())
    if match is None:
        raise DownloadError(f"{url}: unreadable Content-Range header {value!r}")
    first, _, total = match.groups()
    return (
        int(first) if first is not None else None,
        int(total) if total != "*" else None,
    )


def _stream(response: Any, part: Path, mode: str, initial: int, total: int | None, chunk: int) -> None:
    """Copy `response` into `part` block by block, with a byte progress bar."""
    with (
        open(part, mode) as handle,
        tqdm(
            total=total,
            initial=initial,
            unit="B",
            unit_scale=True,
            desc=part.name.removesuffix(".part"),
            disable=None,
        ) as bar,
    ):
        while block := response.read(chunk):
            handle.write(block)
            bar.update(len(block))


def _fetch_into(url: str, part: Path, offset: int, timeout: float, chunk: int) -> int | None:
    """Fill `part` with the body of `url`, resuming at `offset`; return the size the server announced."""
    try:
        response = urllib.request.urlopen(_request(url, offset), timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code != 416 or not offset:
            raise
        header = exc.headers.get("Content-Range")
        total = _content_range(header, url)[1] if header else None
        if total == offset:
            return total
        part.unlink()
        return _fetch_into(url, part, 0, timeout, chunk)
    with response:
        length = response.headers.get("Content-Length")
        if response.status == 206:
            first, total = _content_range(response.headers.get("Content-Range"), url)
            if first != offset:
                raise DownloadError(f"{url}: asked for bytes from {offset}, server sent bytes from {first}")
            if total is None and length is not None:
                total = offset + int(length)
            _stream(response, part, "ab", offset, total, chunk)
            return total
        total = int(length) if length is not None else None
        _stream(response, part, "wb", 0, total, chunk)
        return total


def download_file(url: str, dest: Path, timeout: float = 60.0, chunk: int = 1 << 20) -> Path:
    """Download `url` to `dest` with resume and a size check; an existing `dest` is kept as is."""
    dest = Path(dest)
    if dest.is_file():
        return dest
    if chunk < 1:
        raise ValueError(f"parameter 'chunk': must be a positive byte count, got {chunk}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    offset = part.stat().st_size if part.is_file() else 0
    try:
        expected = _fetch_into(url, part, offset, timeout, chunk)
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"{url}: download failed ({exc}); partial data kept in {part}") from exc
    received = part.stat().st_size
    if expected is not None and received != expected:
        raise DownloadError(
            f"{url}: size mismatch: server announced {expected} bytes (Content-Length), "
            f"received {received}; partial file kept at {part} for resume"
        )
    fsync_path(part)
    os.replace(part, dest)
    fsync_path(dest.parent)
    return dest


def image_path(out_dir: Path, item_id: str, url: str) -> Path:
    """Where the image of `item_id` is stored: out_dir/<item_id><ext of the URL path, default .jpg>."""
    suffix = PurePosixPath(urlsplit(url).path).suffix
    ext = suffix.lower() if _EXT_RE.fullmatch(suffix) else ".jpg"
    return Path(out_dir) / f"{item_id}{ext}"


def _cached(path: Path) -> bool:
    """Whether `path` already holds a (non-empty) image."""
    return path.is_file() and path.stat().st_size > 0


def _fetch_image(url: str, dest: Path, retries: int, timeout: float, backoff: float) -> str | None:
    """Fetch one image into `dest`; return None on success, else the reason it failed."""
    if urlsplit(url).scheme not in ("http", "https"):
        return f"unsupported URL {url!r} (http/https only)"
    reason = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            with urllib.request.urlopen(_request(url), timeout=timeout) as response:
                data = response.read()
        except urllib.error.HTTPError as exc:
            exc.close()
            reason = f"HTTP {exc.code} {exc.reason}"
            if exc.code not in TRANSIENT_HTTP:
                return reason
            continue
        except ValueError as exc:
            return f"invalid URL {url!r}: {exc}"
        except (OSError, http.client.HTTPException) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            continue
        if not data:
            reason = "empty response body"
            continue
        write_bytes(dest, data)
        return None
    return f"{reason} (after {retries + 1} attempts)"


def download_images(
    urls: dict[str, str],
    out_dir: Path,
    concurrency: int = 8,
    retries: int = 3,
    timeout: float = 20.0,
    backoff: float = 1.0,
) -> ImageReport:
    """Fetch {item_id: url} into out_dir/<item_id>.<ext>; failures go to out_dir/failures.json."""
    if concurrency < 1:
        raise ValueError(f"parameter 'concurrency': must be at least 1, got {concurrency}")
    if retries < 0:
        raise ValueError(f"parameter 'retries': must be 0 or more, got {retries}")
    if backoff < 0:
        raise ValueError(f"parameter 'backoff': must be 0 or more seconds, got {backoff}")
    bad = [item_id for item_id in urls if not _ITEM_ID_RE.fullmatch(item_id)]
    if bad:
        raise ValueError(f"parameter 'urls': item ids unusable as file names: {bad[:5]!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = {item_id: image_path(out_dir, item_id, url) for item_id, url in urls.items()}
    pending = {item_id: path for item_id, path in targets.items() if not _cached(path)}
    failures: dict[str, str] = {}
    with (
        ThreadPoolExecutor(max_workers=concurrency) as pool,
        tqdm(total=len(pending), desc="images", unit="img", disable=None) as bar,
    ):
        futures = {
            pool.submit(_fetch_image, urls[item_id], path, retries, timeout, backoff): item_id
            for item_id, path in pending.items()
        }
        for future in as_completed(futures):
            reason = future.result()
            if reason is not None:
                failures[futures[future]] = reason
            bar.update(1)
    write_json(out_dir / "failures.json", failures)
    return ImageReport(
        ok=len(pending) - len(failures),
        cached=len(targets) - len(pending),
        failed=len(failures),
        failures=failures,
    )


def _image_urls(meta_path: Path, release: str) -> dict[str, str]:
    """{item_id: image_url} for the items of a meta file that have an image URL."""
    from micrec_core.data.amazon import read_meta

    frame, _ = read_meta(meta_path, release)
    return {
        str(item_id): url
        for item_id, url in zip(frame["item_id"], frame["image_url"], strict=True)
        if isinstance(url, str) and url
    }


def download_category(
    release: str,
    category: str,
    out: Path,
    images: bool = False,
    base_url: str | None = None,
    concurrency: int = 8,
    retries: int = 3,
    backoff: float = 1.0,
) -> dict[str, Any]:
    """Download one category's reviews and meta (and images) into out/<category>/; return a report."""
    files = release_files(release, category, base_url)
    folder = Path(out) / category
    written = [download_file(url, folder / filename_of(url)) for url in (files.reviews, files.meta)]
    report: dict[str, Any] = {
        "release": release,
        "category": category,
        "files": [{"path": str(path), "bytes": path.stat().st_size} for path in written],
        "images": None,
    }
    if images:
        outcome = download_images(
            _image_urls(written[1], release),
            folder / "images",
            concurrency=concurrency,
            retries=retries,
            backoff=backoff,
        )
        report["images"] = outcome.counts()
    return report
