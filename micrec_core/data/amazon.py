"""Readers for the public Amazon Reviews releases (2014, 2018, 2023) in the layouts a user downloads.

Every reader returns a pandas DataFrame with one schema per kind of file, whatever the release:

- reviews: ``user_id``, ``item_id``, ``rating`` (float, NaN where absent), ``timestamp`` (seconds, <NA> where absent)
- meta: ``item_id``, ``title``, ``description``, ``categories``, ``brand``, ``image_url`` (None where absent)

and a :class:`ReadReport` with per-field coverage. Missing fields are normal (the shared offline copies have no
ratings, timestamps or images). A malformed line raises :class:`BadLineError` naming the file and line, unless
``skip_bad_lines`` is set, in which case it is counted and recorded in the report. Malformed means: not UTF-8, not
a JSON object or Python-literal dict (nested too deeply included), no user or item id, an id that is not a string or
integer, a rating that is not a number from 1 to 5, or a timestamp that is not a number of seconds from 1970 to
2100 (milliseconds in the 2023 release). A file that cannot be read as a whole (a truncated or corrupt gzip, the
usual trace of an interrupted download) or that holds no record raises :class:`RawDataError` naming the file, skip
or not.
"""

from __future__ import annotations

import ast
import csv
import gzip
import html
import json
import math
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd

RELEASES = ("2014", "2018", "2023")
REVIEW_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
META_COLUMNS = ["item_id", "title", "description", "categories", "brand", "image_url"]
MAX_BAD_EXAMPLES = 20
RATING_RANGE = (1.0, 5.0)
TIMESTAMP_RANGE = (0, 4_102_444_800)  # seconds: 1970-01-01 to 2100-01-01


class RawDataError(ValueError):
    """A release file that cannot be read: truncated or corrupt, or holding no record."""


class BadLineError(RawDataError):
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


def _open_binary(path: Path) -> BinaryIO:
    """Open a plain or gzipped file for reading bytes (gzip detected by its magic bytes, not its name)."""
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _lines(path: Path, skip_bad_lines: bool, report: ReadReport) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) for every non-blank line; a line that is not UTF-8 is a bad line, a file that
    ends or breaks inside its compressed stream is a RawDataError."""
    lineno = 0
    try:
        with _open_binary(path) as handle:
            for lineno, data in enumerate(handle, start=1):
                report.lines = lineno
                try:
                    line = data.decode("utf-8")
                except UnicodeDecodeError as err:
                    _bad_line(path, lineno, f"not UTF-8 (byte {err.start})", skip_bad_lines, report)
                    continue
                if line.strip():
                    yield lineno, line
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise RawDataError(
            f"{path}: truncated or corrupt gzip while reading line {lineno + 1} ({err}); an interrupted download "
            "leaves such a file: fetch it again"
        ) from None


def parse_record(line: str) -> dict[str, Any]:
    """Parse one line: JSON, or a Python-literal dict as in the original 2014 metadata files."""
    try:
        record = json.loads(line)
    except RecursionError:
        raise BadLineError("JSON nested too deeply") from None
    except json.JSONDecodeError:
        try:
            record = ast.literal_eval(line)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as err:
            raise BadLineError(f"neither JSON nor a Python literal ({type(err).__name__})") from None
    if not isinstance(record, dict):
        raise BadLineError(f"expected an object, got {type(record).__name__}")
    return record


def _records(path: Path, skip_bad_lines: bool, report: ReadReport) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) for every non-blank line, handling bad lines as configured."""
    for lineno, line in _lines(path, skip_bad_lines, report):
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
    """Pick (user, item, rating, timestamp) out of a review record of any release, unconverted."""
    if release == "2023":
        item = _first(record, "parent_asin", "asin")
        return record.get("user_id"), item, record.get("rating"), record.get("timestamp")
    return record.get("reviewerID"), record.get("asin"), record.get("overall"), record.get("unixReviewTime")


def _identifier(value: Any, what: str) -> str:
    """A user or item id: a non-empty string or an integer."""
    if value is None or value == "":
        raise ValueError(f"missing {what}")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    return str(value)


def _number(value: Any, what: str) -> float | None:
    """A finite number from a JSON number or a numeric string; None where absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{what} must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {value!r:.40}") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number, got {value!r:.40}")
    return number


def _review_values(
    user: Any, item: Any, rating: Any, stamp: Any, milliseconds: bool
) -> tuple[str, str, float | None, int | None]:
    """Validate and convert one review's fields (timestamps to whole seconds)."""
    user_id, item_id = _identifier(user, "user id"), _identifier(item, "item id")
    stars = _number(rating, "rating")
    if stars is not None and not RATING_RANGE[0] <= stars <= RATING_RANGE[1]:
        raise ValueError(f"rating {stars:g} outside the {RATING_RANGE[0]:g}-{RATING_RANGE[1]:g} star scale")
    number = _number(stamp, "timestamp")
    seconds = None if number is None else int(number) // 1000 if milliseconds else int(number)
    if seconds is not None and not TIMESTAMP_RANGE[0] <= seconds < TIMESTAMP_RANGE[1]:
        unit = "milliseconds" if milliseconds else "seconds"
        raise ValueError(f"timestamp {stamp!r:.40} is not a time from 1970 to 2100 in {unit}")
    return user_id, item_id, stars, seconds


def _csv_rows(path: Path, skip_bad_lines: bool, report: ReadReport) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) of a headerless ratings CSV (user,item,rating,timestamp)."""
    for lineno, line in _lines(path, skip_bad_lines, report):
        try:
            fields = next(csv.reader([line]))
        except csv.Error as err:
            _bad_line(path, lineno, f"unreadable CSV ({err})", skip_bad_lines, report)
            continue
        if len(fields) != 4:
            _bad_line(path, lineno, f"expected 4 CSV fields, got {len(fields)}", skip_bad_lines, report)
            continue
        yield lineno, fields


def _no_records(path: Path, report: ReadReport) -> RawDataError:
    """The error for a file that yielded no record at all."""
    skipped = f", {report.bad_lines} skipped as bad" if report.bad_lines else ""
    return RawDataError(f"{path}: no records ({report.lines} lines read{skipped}); is the file empty or cut short?")


def _coverage(frame: pd.DataFrame, columns: list[str]) -> dict[str, float]:
    """Fraction of rows with a non-null value, per column."""
    n = len(frame)
    return {c: (float(frame[c].notna().sum()) / n if n else 0.0) for c in columns}


def read_reviews(path: Path, release: str, skip_bad_lines: bool = False) -> tuple[pd.DataFrame, ReadReport]:
    """Read a reviews / ratings file of any release into (user_id, item_id, rating, timestamp)."""
    check_release(release)
    path = Path(path)
    report = ReadReport(path=str(path))
    rows: list[tuple[str, str, float | None, int | None]] = []
    is_csv = ".csv" in path.name
    source: Iterator[tuple[int, Any]] = (
        _csv_rows(path, skip_bad_lines, report) if is_csv else _records(path, skip_bad_lines, report)
    )
    to_row: Callable[[Any], tuple[Any, Any, Any, Any]] = (
        tuple if is_csv else (lambda r: _review_row(r, release))
    )
    milliseconds = release == "2023" and not is_csv
    for lineno, raw in source:
        try:
            rows.append(_review_values(*to_row(raw), milliseconds=milliseconds))
        except ValueError as err:
            _bad_line(path, lineno, str(err), skip_bad_lines, report)
    if not rows:
        raise _no_records(path, report)
    frame = pd.DataFrame(rows, columns=REVIEW_COLUMNS)
    frame["user_id"] = frame["user_id"].astype("string")
    frame["item_id"] = frame["item_id"].astype("string")
    frame["rating"] = frame["rating"].astype("float64")
    frame["timestamp"] = frame["timestamp"].astype("Int64")
    report.records = len(frame)
    report.coverage = _coverage(frame, ["rating", "timestamp"])
    return frame, report


def _as_list(value: Any) -> list[Any]:
    """A list field that a record may also give as one value (or not at all)."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _meta_row(record: dict[str, Any], release: str) -> tuple[str, str | None, str | None, str | None, str | None,
                                                                str | None]:
    """Map a metadata record of any release onto META_COLUMNS."""
    item = _first(record, "parent_asin", "asin") if release == "2023" else record.get("asin")
    description = _first(record, "description")
    if release == "2023":
        description = [*_as_list(description), *_as_list(_first(record, "features"))]
    url = _image_url(record, release)
    return (
        _identifier(item, "item id (asin / parent_asin)"),
        _as_text(record.get("title")),
        _as_text(description),
        _as_text(_first(record, "categories", "category")),
        _as_text(_first(record, "brand", "store")),
        url if isinstance(url, str) else None,
    )


def read_meta(path: Path, release: str, skip_bad_lines: bool = False) -> tuple[pd.DataFrame, ReadReport]:
    """Read a metadata file of any release into (item_id, title, description, categories, brand, image_url)."""
    check_release(release)
    path = Path(path)
    report = ReadReport(path=str(path))
    rows = []
    for lineno, record in _records(path, skip_bad_lines, report):
        try:
            rows.append(_meta_row(record, release))
        except RecursionError:
            _bad_line(path, lineno, "a field is nested too deeply", skip_bad_lines, report)
        except ValueError as err:
            _bad_line(path, lineno, str(err), skip_bad_lines, report)
    if not rows:
        raise _no_records(path, report)
    frame = pd.DataFrame(rows, columns=META_COLUMNS, dtype="string").drop_duplicates("item_id", keep="first")
    report.records = len(frame)
    report.coverage = _coverage(frame, META_COLUMNS[1:])
    return frame.reset_index(drop=True), report
