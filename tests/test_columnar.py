"""The arrow engine (micrec_core.data.columnar) reads and builds exactly what the python line reader does, in every
release layout, and leaves bad lines to the line reader's file:line errors."""

from __future__ import annotations

import dataclasses
import filecmp
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from micrec_core.data import columnar
from micrec_core.data.amazon import BadLineError, RawDataError, read_reviews
from micrec_core.data.columnar import scan_reviews
from micrec_core.data.dataset import SplitParams, build_dataset

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "amazon2014"
NAMES = {"2014": "reviews_{}_5.json", "2018": "{}_5.json", "2023": "{}.jsonl", "csv": "ratings_{}.csv"}


def review(layout: str, user: str, item: str, rating: float | None = 5.0, stamp: int | None = 1_400_000_000,
           **extra: Any) -> str:
    """One line of a reviews file in `layout` (2014, 2018, 2023, or csv for the 2014 ratings files)."""
    if layout == "csv":
        return ",".join(["" if v is None else str(v) for v in (user, item, rating, stamp)])
    if layout == "2023":
        record = {"user_id": user, "parent_asin": item, "asin": f"x{item}", "rating": rating,
                  "timestamp": None if stamp is None else stamp * 1000 + 123, "text": "Nice, \u00e9l\u00e9gant."}
    else:
        record = {"reviewerID": user, "asin": item, "overall": rating, "unixReviewTime": stamp,
                  "helpful": [0, 1], "reviewText": "Nice, \u00e9l\u00e9gant."}
    return json.dumps({k: v for k, v in (record | extra).items() if v is not None}, ensure_ascii=False)


def write(path: Path, lines: list[str], gz: bool) -> Path:
    """Write lines (newline-terminated), gzipped or plain."""
    data = "".join(f"{line}\n" for line in lines).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def domain_lines(layout: str, seed: int, n: int = 1500) -> list[str]:
    """A random long-tailed domain: missing and low ratings, missing times; 2023 items falling back to asin."""
    rng = np.random.default_rng(seed)
    lines = []
    for u, i, r, t in zip(rng.integers(0, 70, n), rng.zipf(1.4, n) % 60, rng.integers(0, 6, n),
                          rng.integers(0, 10, n), strict=True):
        rating = None if r == 0 else float(r)
        stamp = None if t == 0 else 1_300_000_000 + int(t) * 86_400
        extra = {"parent_asin": ""} if layout == "2023" and u % 7 == 0 else {}
        lines.append(review(layout, f"U{u:03d}", f"I{i:03d}", rating, stamp, **extra))
    return lines


def release_of(layout: str) -> str:
    """The release whose reader a layout needs."""
    return "2014" if layout == "csv" else layout


def path_of(root: Path, layout: str, domain: str, gz: bool) -> Path:
    """Where a domain's reviews file goes."""
    return root / domain / (NAMES[layout].format(domain) + (".gz" if gz else ""))


def outcome(reader: Any, path: Path, release: str, skip: bool) -> tuple[Any, ...]:
    """What a reader returns (rows and report) or raises (type and message), comparably."""
    try:
        read, report = reader(path, release, skip)
    except RawDataError as err:
        return type(err).__name__, str(err)
    frame = read.frame(np.arange(len(read.users))) if isinstance(read, columnar.ReviewColumns) else read
    rows = frame[["user_id", "item_id", "rating"]].astype(object).where(frame.notna(), None)
    return rows.to_dict("records"), dataclasses.asdict(report)


def differing(a: Path, b: Path) -> list[str]:
    """Files that differ between two folders (any present in one only included)."""
    files = {p.relative_to(a) for p in a.rglob("*") if p.is_file()} | {p.relative_to(b) for p in b.rglob("*")
                                                                         if p.is_file()}
    return sorted(str(f) for f in files if not ((a / f).is_file() and (b / f).is_file()
                                                 and filecmp.cmp(a / f, b / f, shallow=False)))


def build_both(raw: Path, out: Path, pair: tuple[str, str], release: str, params: SplitParams,
               skip: bool = False) -> list[str]:
    """Build with both engines; the files in which the builds differ."""
    for engine in ("arrow", "python"):
        build_dataset(raw, pair, out / engine, release, params, skip_bad_lines=skip, engine=engine)
    return differing(out / "arrow", out / "python")


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", ["2014", "2018", "2023", "csv"])
def test_engines_build_the_same_dataset_in_every_layout(
    tmp_path: Path, layout: str, gz: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(columnar, "BLOCK_SIZE", 1 << 12)  # many blocks, each with its own dictionary
    for seed, domain in enumerate(("A", "B")):
        path = write(path_of(tmp_path / "raw", layout, domain, gz), domain_lines(layout, seed), gz)
        columns, report = columnar._scan(path, release_of(layout))  # the fast path vouches for these files
        assert report.records == 1500 and len(np.unique(columns.users)) == len(columns.user_ids)
        assert outcome(scan_reviews, path, release_of(layout), False) == outcome(
            read_reviews, path, release_of(layout), False)
    diff = build_both(tmp_path / "raw", tmp_path / "out", ("A", "B"), release_of(layout), SplitParams(min_count=2))
    assert diff == []
    manifest = json.loads((tmp_path / "out" / "arrow" / "manifest.json").read_text())
    assert [s["step"] for s in manifest["filter_steps"]["A"]][:3] == ["raw", "deduplicate (user, item)", "rating >= 4"]


U1 = review("2014", "U1", "A1")
ODD_FILES: dict[str, tuple[str, list[str] | bytes, bool]] = {
    # name: (layout, lines or raw bytes, gzipped)
    "python literal (2014 originals)": ("2014", [U1, "{'reviewerID': 'U2', 'asin': 'A2', 'overall': 4.0}"], True),
    "not JSON": ("2014", [U1, U1, '{"reviewerID": "U3", "asin": '], True),
    "not UTF-8 in a skipped field": ("2014", b'{"reviewerID": "U1", "asin": "A1"}\n'
                                             b'{"reviewerID": "U2", "asin": "A1", "summary": "\xff"}\n', False),
    "blank line": ("2014", [U1, "", review("2014", "U2", "A1")], False),
    "integer ids": ("2014", [U1, json.dumps({"reviewerID": 7, "asin": "A1"})], True),
    "rating as a string": ("2018", [U1, review("2018", "U2", "A1", rating="4")], False),  # type: ignore[arg-type]
    "rating out of range": ("2018", [U1, review("2018", "U2", "A1", 7.0)], True),
    "negative time": ("2014", [U1, review("2014", "U2", "A1", stamp=-5)], False),
    "missing user": ("2014", [U1, json.dumps({"asin": "A1"})], False),
    "empty item": ("2023", [review("2023", "U1", "A1"), json.dumps({"user_id": "U1", "parent_asin": ""})], False),
    "time in seconds for 2023": ("2023", [review("2023", "U1", "A1"), json.dumps(
        {"user_id": "U2", "parent_asin": "A1", "timestamp": 10**18})], True),
    "two records on a line": ("2014", [U1 + U1, U1], False),
    "a record over two lines": ("2014", ['{"reviewerID": "U1",', '"asin": "A1"}'], False),
    "byte order mark": ("2014", b"\xef\xbb\xbf" + U1.encode() + b"\n", False),
    "no final newline": ("2014", (U1 + "\n" + U1).encode(), False),
    "empty file": ("2014", b"", True),
    "truncated gzip": ("2014", gzip.compress(("\n".join([U1] * 500) + "\n").encode())[:-40], False),
    "csv with three fields": ("csv", ["U1,A1,5.0,1400000000", "U2,A1,5.0"], False),
    "csv rating nan": ("csv", ["U1,A1,5.0,1400000000", "U2,A1,nan,1400000000"], False),
}


@pytest.mark.parametrize("name", list(ODD_FILES))
def test_odd_files_read_as_the_line_reader_reads_them(tmp_path: Path, name: str) -> None:
    layout, content, gz = ODD_FILES[name]
    path = path_of(tmp_path, layout, "X", gz)
    if isinstance(content, bytes):
        path.parent.mkdir(parents=True)
        path.write_bytes(content)
    else:
        write(path, content, gz)
    for skip in (False, True):
        assert outcome(scan_reviews, path, release_of(layout), skip) == outcome(
            read_reviews, path, release_of(layout), skip)


def test_bad_line_fails_the_build_with_its_file_and_line_unless_skipped(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write(path_of(raw, "2014", "A", True), [*domain_lines("2014", 0)[:2], "{not json", *domain_lines("2014", 1)],
          True)
    write(path_of(raw, "2014", "B", True), domain_lines("2014", 2), True)
    with pytest.raises(BadLineError, match=r"reviews_A_5\.json\.gz:3: neither JSON nor a Python literal"):
        build_dataset(raw, ("A", "B"), tmp_path / "failed", params=SplitParams(min_count=2))
    assert not (tmp_path / "failed").exists()
    assert build_both(raw, tmp_path / "out", ("A", "B"), "2014", SplitParams(min_count=2), skip=True) == []
    reports = json.loads((tmp_path / "out" / "arrow" / "manifest.json").read_text())["read_reports"]["A"]
    assert reports[0]["bad_lines"] == 1 and reports[0]["bad_examples"][0].endswith(":3: neither JSON nor a Python "
                                                                                 "literal (SyntaxError)")


def test_scale_benchmark_generates_reviews_both_engines_build_alike(tmp_path: Path) -> None:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "build_scale.py"), "--sizes", "6000", "--layout",
                           "2023", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "scale.json")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "scale.json").read_text())["rows"]
    assert [r["engine"] for r in rows] == ["arrow", "python"] and all(r["same_dataset"] for r in rows)
    assert 0 < rows[0]["kept"] < 6000 and rows[0]["overlap_users"] > 0
    for path in (tmp_path / "work" / "raw_2023_6000").rglob("*.jsonl.gz"):
        assert len(gzip.decompress(path.read_bytes()).splitlines()) == 3000
        columnar._scan(path, "2023")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "make_reviews.py"), str(tmp_path / "one"),
                           "--reviews", "1200", "--layout", "2018", "--category", "Toys"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    report = columnar._scan(tmp_path / "one" / "Toys" / "Toys.json.gz", "2018")[1]
    assert report.records == 1200 and 0 < report.coverage["rating"] == report.coverage["timestamp"] == 1.0


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/amazon2014 is not beside this checkout")
def test_engines_build_the_same_dataset_from_the_shared_2014_copies(tmp_path: Path) -> None:
    pair = ("Toys_and_Games", "Video_Games")
    for domain in pair:
        columnar._scan(SHARED / domain / f"reviews_{domain}_5.json.gz", "2014")
    assert build_both(SHARED, tmp_path, pair, "2014", SplitParams()) == []
