"""Readers for the public Amazon Reviews releases (2014, 2018, 2023) in the layouts a user downloads.

Every reader returns a pandas DataFrame with one schema per kind of file, whatever the release:

- reviews: ``user_id``, ``item_id``, ``rating`` (float, NaN where absent), ``timestamp`` (seconds, <NA> where absent)
- meta: ``item_id``, ``title``, ``description``, ``categories``, ``brand``, ``image_url`` (None where absent)

and a :class:`ReadReport` with per-field coverage. Missing fields are normal (the shared offline copies have no
ratings, timestamps or images); a malformed line raises :class:`BadLineError` naming the file and line, unless
``skip_bad_lines`` is set, in which case it is counted and recorded in the report.
"""

from __future__ import annotations

import ast
import csv
import gzip
import html
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

RELEASES = ("2014", "2018", "2023")
REVIEW_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
META_COLUMNS = ["item_id", "title", "description", "categories", "brand", "image_url"]
MAX_BAD_EXAMPLES = 20


class BadLineError(ValueError):
    """A line of a release file that cannot be parsed into a record."""


@dataclass
class ReadReport:
    """What a reader saw: line counts, skipped bad lines, and the fraction of records having each field."""

    path: str
    lines: int = 0
    records: int = 0
    bad_lines: int = 0
    bad_examples: list[str] = field(default_factory=list)
    coverage: dict[str, float] = field(default_factory=dict)


def check_release(release: str) -> str:
    """Validate a release name."""
    if release not in RELEASES:
        raise ValueError(f"--release must be one of {', '.join(RELEASES)}, got {release!r}")
    return release


def _candidates(category: str, release: str, kind: str) -> list[str]:
    """File names a release uses for a category's reviews or metadata, most preferred first."""
    if kind == "meta":
        return {
            "2014": [f"meta_{category}.json.gz", f"meta_{category}.json"],
            "2018": [f"meta_{category}.json.gz", f"meta_{category}.json"],
            "2023": [f"meta_{category}.jsonl.gz", f"meta_{category}.jsonl"],
        }[release]
    return {
        "2014": [
            f"reviews_{category}_5.json.gz",
            f"reviews_{category}_5.json",
            f"reviews_{category}.json.gz",
            f"reviews_{category}.json",
            f"ratings_{category}.csv",
            f"ratings_{category}.csv.gz",
        ],
        "2018": [f"{category}_5.json.gz", f"{category}_5.json", f"{category}.json.gz", f"{category}.json"],
        "2023": [f"{category}.jsonl.gz", f"{category}.jsonl"],
    }[release]


def find_file(raw: Path, category: str, release: str, kind: str) -> Path | None:
    """Locate a category's reviews (kind='reviews') or metadata (kind='meta') file under `raw` or `raw/category`."""
    check_release(release)
    for folder in (raw / category, raw):
        for name in _candidates(category, release, kind):
            if (folder / name).is_file():
                return folder / name
    return None


def image_dir(raw: Path, category: str) -> Path:
    """Where a category's images live: downloads and the synthetic generator both write here."""
    return raw / category / "images"


def _open_text(path: Path) -> io.TextIOBase:
    """Open a plain or gzipped text file (detected by its magic bytes, not its name)."""
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    if gzipped:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def parse_record(line: str) -> dict[str, Any]:
    """Parse one line: JSON, or a Python-literal dict as in the original 2014 metadata files."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        try:
            record = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
            raise BadLineError(f"neither JSON nor a Python literal ({type(err).__name__})") from None
    if not isinstance(record, dict):
        raise BadLineError(f"expected an object, got {type(record).__name__}")
    return record


def _records(path: Path, skip_bad_lines: bool, report: ReadReport) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) for every non-blank line, handling bad lines as configured."""
    with _open_text(path) as handle:
        for lineno, line in enumerate(handle, start=1):
            report.lines = lineno
            if not line.strip():
                continue
            try:
                yield lineno, parse_record(line)
            except BadLineError as err:
                _bad_line(path, lineno, str(err), skip_bad_lines, report)


def _bad_line(path: Path, lineno: int, reason: str, skip: bool, report: ReadReport) -> None:
    """Raise for a bad line, or count and remember it when skipping."""
    message = f"{path}:{lineno}: {reason}"
    if not skip:
        raise BadLineError(f"{message} (pass --skip-bad-lines to count and skip such lines)")
    report.bad_lines += 1
    if len(report.bad_examples) < MAX_BAD_EXAMPLES:
        report.bad_examples.append(message)


def _first(record: dict[str, Any], *keys: str) -> Any:
    """The first present, non-empty value among `keys`."""
    for key in keys:
        value = record.get(key)
        if value not in (None, "", [], {}):
            return value
    return None


def _as_text(value: Any) -> str | None:
    """Flatten a string / list / nested list field into one string (lists joined by ' | ', nesting by ' > ').

    HTML entities, which the released metadata carries (e.g. '&amp;'), are decoded.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = html.unescape(value).strip()
    elif isinstance(value, list | tuple):
        parts = [html.unescape(" > ".join(map(str, v)) if isinstance(v, list | tuple) else str(v)) for v in value]
        text = " | ".join(p.strip() for p in parts if p and p.strip())
    else:
        text = str(value).strip()
    return text or None


def _image_url(record: dict[str, Any], release: str) -> str | None:
    """The best image URL a metadata record offers."""
    if release == "2014":
        return _first(record, "imUrl")
    if release == "2018":
        urls = _first(record, "imageURLHighRes", "imageURL")
        return urls[0] if isinstance(urls, list) and urls else urls
    images = record.get("images") or []
    for image in images if isinstance(images, list) else []:
        if isinstance(image, dict):
            url = _first(image, "hi_res", "large", "thumb")
            if url:
                return url
    return None


def _review_row(record: dict[str, Any], release: str) -> tuple[Any, Any, Any, Any]:
    """Map a review record of any release onto (user_id, item_id, rating, timestamp seconds)."""
    if release == "2023":
        user, item = record.get("user_id"), _first(record, "parent_asin", "asin")
        rating, stamp = record.get("rating"), record.get("timestamp")
        stamp = None if stamp is None else int(stamp) // 1000
    else:
        user, item = record.get("reviewerID"), record.get("asin")
        rating, stamp = record.get("overall"), record.get("unixReviewTime")
    return user, item, rating, stamp


def _csv_rows(path: Path, skip_bad_lines: bool, report: ReadReport) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) of a headerless ratings CSV (user,item,rating,timestamp)."""
    with _open_text(path) as handle:
        for lineno, fields in enumerate(csv.reader(handle), start=1):
            report.lines = lineno
            if not fields:
                continue
            if len(fields) != 4:
                _bad_line(path, lineno, f"expected 4 CSV fields, got {len(fields)}", skip_bad_lines, report)
                continue
            yield lineno, fields


def _coverage(frame: pd.DataFrame, columns: list[str]) -> dict[str, float]:
    """Fraction of rows with a non-null value, per column."""
    n = len(frame)
    return {c: (float(frame[c].notna().sum()) / n if n else 0.0) for c in columns}


def read_reviews(path: Path, release: str, skip_bad_lines: bool = False) -> tuple[pd.DataFrame, ReadReport]:
    """Read a reviews / ratings file of any release into (user_id, item_id, rating, timestamp)."""
    check_release(release)
    path = Path(path)
    report = ReadReport(path=str(path))
    rows: list[tuple[Any, Any, Any, Any]] = []
    is_csv = ".csv" in path.name
    source: Iterator[tuple[int, Any]] = (
        _csv_rows(path, skip_bad_lines, report) if is_csv else _records(path, skip_bad_lines, report)
    )
    to_row: Callable[[Any], tuple[Any, Any, Any, Any]] = (
        (lambda f: (f[0], f[1], f[2], f[3])) if is_csv else (lambda r: _review_row(r, release))
    )
    for lineno, raw in source:
        user, item, rating, stamp = to_row(raw)
        try:
            if not user or not item:
                raise ValueError("missing user or item id")
            rows.append(
                (
                    str(user),
                    str(item),
                    float(rating) if rating not in (None, "") else None,
                    int(float(stamp)) if stamp not in (None, "") else None,
                )
            )
        except (TypeError, ValueError) as err:
            _bad_line(path, lineno, str(err), skip_bad_lines, report)
    frame = pd.DataFrame(rows, columns=REVIEW_COLUMNS)
    frame["user_id"] = frame["user_id"].astype("string")
    frame["item_id"] = frame["item_id"].astype("string")
    frame["rating"] = frame["rating"].astype("float64")
    frame["timestamp"] = frame["timestamp"].astype("Int64")
    report.records = len(frame)
    report.coverage = _coverage(frame, ["rating", "timestamp"])
    return frame, report


def read_meta(path: Path, release: str, skip_bad_lines: bool = False) -> tuple[pd.DataFrame, ReadReport]:
    """Read a metadata file of any release into (item_id, title, description, categories, brand, image_url)."""
    check_release(release)
    path = Path(path)
    report = ReadReport(path=str(path))
    rows: list[tuple[str, str | None, str | None, str | None, str | None, str | None]] = []
    for lineno, record in _records(path, skip_bad_lines, report):
        item = _first(record, "parent_asin", "asin") if release == "2023" else record.get("asin")
        if not item:
            _bad_line(path, lineno, "missing item id (asin / parent_asin)", skip_bad_lines, report)
            continue
        description = _first(record, "description")
        if release == "2023":
            description = _as_text([*(_first(record, "description") or []), *(_first(record, "features") or [])])
        rows.append(
            (
                str(item),
                _as_text(record.get("title")),
                _as_text(description),
                _as_text(_first(record, "categories", "category")),
                _as_text(_first(record, "brand", "store")),
                _image_url(record, release),
            )
        )
    frame = pd.DataFrame(rows, columns=META_COLUMNS, dtype="string").drop_duplicates("item_id", keep="first")
    report.records = len(frame)
    report.coverage = _coverage(frame, META_COLUMNS[1:])
    return frame.reset_index(drop=True), report
