"""A streaming, column-projected review reader on pyarrow: the default engine of `micrec data build`.

Why pyarrow. It is already a pinned dependency (the builds are parquet files); its JSON reader
(:func:`pyarrow.json.open_json`) streams a file block by block with an explicit schema, so only the four columns a
build needs (user, item, rating, time) are ever materialised and every other field of a review is skipped by the
parser; its CSV reader does the same for the 2014 ratings files; it decompresses gzip as a stream
(:class:`pyarrow.CompressedInputStream`); and its compute kernels (dictionary encoding, null counts, min/max) with
numpy's ``bincount`` give the per-domain counts and the k-core filter on integer codes without a Python loop per
row. DuckDB or polars would do the same work but add a package for no gain.

What is kept of a file: the user and item ids as int32 codes into a dictionary (an Arrow string array, in order of
first appearance), and the ratings as float64 (NaN where absent); timestamps are only checked and counted.

The line reader of :mod:`micrec_core.data.amazon` stays the authority on what a bad line is. This reader accepts a file
only when it can vouch that the line reader would return the same rows without a complaint: valid UTF-8, no byte
order mark, exactly one record per line (no blank line, no record spanning lines or sharing one), string ids that
are not empty, ratings from 1 to 5, timestamps from 1970 to 2100. Anything else (a parse error, a type pyarrow
refuses, a Python-literal line of the original 2014 files, a truncated gzip, an empty file) sends the whole file
back through :func:`micrec_core.data.amazon.read_reviews`, which raises :class:`~micrec_core.data.amazon.BadLineError`
naming the file and line, skips the bad lines when asked, or reads what pyarrow cannot (integer ids, numbers given as
strings). Such files are slower, never different. One known exception: a line whose ignored fields nest deeper than
Python's recursion limit is a bad line for the line reader and an ordinary record here.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson

from micrec_core.data.amazon import RATING_RANGE, TIMESTAMP_RANGE, ReadReport, check_release, read_reviews

BLOCK_SIZE = 16 << 20  # bytes per parsed block; a JSON record must fit in one
BOM = codecs.BOM_UTF8
# The fields each release names (user, item, fallback item, rating, time); 2023 items are parent_asin, else asin.
FIELDS = {
    "2014": ("reviewerID", "asin", None, "overall", "unixReviewTime"),
    "2018": ("reviewerID", "asin", None, "overall", "unixReviewTime"),
    "2023": ("user_id", "parent_asin", "asin", "rating", "timestamp"),
}
CSV_FIELDS = ("user", "item", None, "rating", "timestamp")


class _Unvouched(ValueError):
    """The fast path cannot vouch for a file; the line reader decides."""


@dataclass
class ReviewColumns:
    """A reviews file as columns: user and item codes into their dictionaries, and ratings (NaN where absent)."""

    users: np.ndarray
    items: np.ndarray
    rating: np.ndarray
    user_ids: pa.Array
    item_ids: pa.Array

    def frame(self, rows: np.ndarray) -> pd.DataFrame:
        """The given rows with read_reviews' columns and dtypes (user_id, item_id, rating; no timestamp)."""
        return pd.DataFrame({
            "user_id": _strings(self.user_ids, self.users[rows]),
            "item_id": _strings(self.item_ids, self.items[rows]),
            "rating": self.rating[rows],
        })


def _strings(dictionary: pa.Array, codes: np.ndarray) -> pd.Series:
    """Dictionary values at `codes` as a pandas "string" column (read_reviews' dtype)."""
    return pd.Series(dictionary.take(pa.array(codes)).to_pandas(), dtype="string")


class _CheckedStream:
    """A file-like view of a (decompressed) byte stream that counts lines and checks what pyarrow does not: that
    every byte is UTF-8 (pyarrow skips the fields it ignores unchecked) and that no byte order mark appears."""

    def __init__(self, stream: pa.NativeFile) -> None:
        self.stream = stream
        self.closed = False
        self.newlines = 0
        self.last = b"\n"
        self.decoder = codecs.getincrementaldecoder("utf-8")()

    def read(self, size: int = -1) -> bytes:
        """Read up to `size` bytes (all when negative), checking them."""
        data = self.stream.read() if size is None or size < 0 else self.stream.read(size)
        if data:
            self.newlines += data.count(b"\n")
            self.last = data[-1:]
            if not data.isascii():
                if BOM in data:
                    raise _Unvouched("byte order mark")
                self.decoder.decode(data)
        else:
            self.decoder.decode(b"", final=True)
        return data

    @property
    def lines(self) -> int:
        """Lines seen so far, counted as the line reader numbers them (a last line may lack its newline)."""
        return self.newlines + (self.last != b"\n")


def _open(path: Path) -> pa.NativeFile:
    """A plain or gzipped file as a stream of bytes (gzip detected by its magic bytes, not its name)."""
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    raw = pa.OSFile(str(path))
    return pa.CompressedInputStream(raw, "gzip") if gzipped else raw


def _reader(source: _CheckedStream, fields: tuple[str | None, ...], is_csv: bool) -> pa.RecordBatchReader:
    """pyarrow's streaming reader over `source`, projected onto `fields` (user, item, fallback item, rating,
    time) with their types."""
    user, item, fallback, rating, time = fields
    types = {name: pa.string() for name in (user, item, fallback) if name} | {rating: pa.float64(), time: pa.int64()}
    if is_csv:
        return pcsv.open_csv(
            source,
            read_options=pcsv.ReadOptions(column_names=list(types), block_size=BLOCK_SIZE),
            convert_options=pcsv.ConvertOptions(column_types=types, null_values=[""], strings_can_be_null=False),
        )
    return pjson.open_json(
        source,
        read_options=pjson.ReadOptions(block_size=BLOCK_SIZE),
        parse_options=pjson.ParseOptions(explicit_schema=pa.schema(types), unexpected_field_behavior="ignore"),
    )


def _ids(batch: pa.RecordBatch, name: str, fallback: str | None) -> pa.Array:
    """An id column, non-null and non-empty throughout (else the file is unvouched); a fallback column stands in
    where the first is null or empty (the 2023 parent_asin, else asin)."""
    ids = batch.column(name)
    if fallback is not None:
        ids = pc.if_else(pc.fill_null(pc.not_equal(ids, ""), False), ids, batch.column(fallback))
    if ids.null_count or (len(ids) and pc.min(pc.binary_length(ids)).as_py() == 0):
        raise _Unvouched(f"missing {name}")
    return pc.dictionary_encode(ids)


def _present(column: pa.Array, low: float, high: float) -> np.ndarray:
    """The non-null values of a numeric column, all within [low, high] (else the file is unvouched)."""
    values = column.drop_null().to_numpy()
    if not np.all((values >= low) & (values <= high)):
        raise _Unvouched(f"value outside {low}-{high}")
    return values


def _scan(path: Path, release: str) -> tuple[ReviewColumns, ReadReport]:
    """The fast path: stream `path` through pyarrow, or raise (_Unvouched, or pyarrow's own error)."""
    is_csv = ".csv" in path.name
    fields = CSV_FIELDS if is_csv else FIELDS[release]
    user, item, fallback, rating_field, time_field = fields
    milliseconds = release == "2023" and not is_csv  # checked raw: t // 1000 is in range iff t is, times 1000
    last_time = TIMESTAMP_RANGE[1] * (1000 if milliseconds else 1) - 1
    users, items, ratings = [], [], []
    rows = timed = rated = 0
    with _open(path) as stream:
        source = _CheckedStream(stream)
        for batch in _reader(source, fields, is_csv):
            users.append(_ids(batch, user, None))
            items.append(_ids(batch, item, fallback))
            rating = _present(batch.column(rating_field), *RATING_RANGE)
            _present(batch.column(time_field), TIMESTAMP_RANGE[0], last_time)
            ratings.append(batch.column(rating_field).fill_null(np.nan).to_numpy())
            rows += batch.num_rows
            rated += len(rating)
            timed += batch.num_rows - batch.column(time_field).null_count
    if not rows or rows != source.lines:
        raise _Unvouched(f"{rows} records in {source.lines} lines")
    user_codes, user_ids = _codes(users)
    item_codes, item_ids = _codes(items)
    report = ReadReport(path=str(path), lines=source.lines, records=rows,
                        coverage={"rating": rated / rows, "timestamp": timed / rows})
    return ReviewColumns(user_codes, item_codes, np.concatenate(ratings), user_ids, item_ids), report


def _codes(chunks: list[pa.DictionaryArray]) -> tuple[np.ndarray, pa.Array]:
    """One code array and one dictionary for per-block dictionary-encoded chunks."""
    unified = pa.chunked_array(chunks).unify_dictionaries()
    codes = np.concatenate([chunk.indices.to_numpy(zero_copy_only=False) for chunk in unified.chunks])
    return codes.astype(np.int32, copy=False), unified.chunks[0].dictionary


def scan_reviews(path: Path, release: str, skip_bad_lines: bool = False) -> tuple[ReviewColumns, ReadReport]:
    """Read a reviews / ratings file of any release as columns; the same rows and report as
    :func:`micrec_core.data.amazon.read_reviews` (which reads any file this reader cannot vouch for)."""
    check_release(release)
    path = Path(path)
    try:
        return _scan(path, release)
    except (pa.ArrowException, OSError, ValueError):
        frame, report = read_reviews(path, release, skip_bad_lines)
    user_codes, user_ids = pd.factorize(frame["user_id"])
    item_codes, item_ids = pd.factorize(frame["item_id"])
    columns = ReviewColumns(user_codes.astype(np.int32), item_codes.astype(np.int32),
                            frame["rating"].to_numpy(dtype=np.float64), pa.array(user_ids), pa.array(item_ids))
    return columns, report
