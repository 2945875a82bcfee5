"""Readers of the three Amazon Reviews release layouts, on fixtures written here."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from micrec_core.data.amazon import BadLineError, RawDataError, find_file, read_meta, read_reviews


def write_lines(path: Path, lines: list[str], gz: bool) -> Path:
    """Write text lines, gzipped or plain."""
    data = ("\n".join(lines) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [True, False])
def test_2014_reviews_and_python_literal_meta(tmp_path: Path, gz: bool) -> None:
    suffix = ".json.gz" if gz else ".json"
    reviews = write_lines(
        tmp_path / "Beauty" / f"reviews_Beauty_5{suffix}",
        [
            json.dumps({"reviewerID": "U1", "asin": "A1", "overall": 5.0, "unixReviewTime": 1400000000}),
            json.dumps({"reviewerID": "U1", "asin": "A2", "overall": 3.0}),
            "",
            json.dumps({"reviewerID": "U2", "asin": "A1"}),
        ],
        gz,
    )
    meta = write_lines(
        tmp_path / "Beauty" / f"meta_Beauty{suffix}",
        [
            repr({"asin": "A1", "title": "Rose &amp; soap", "categories": [["Beauty", "Bath"]], "imUrl": "http://x/a1.jpg"}),
            repr({"asin": "A2", "description": "It's a cream", "brand": "Acme"}),
        ],
        gz,
    )
    assert find_file(tmp_path, "Beauty", "2014", "reviews") == reviews
    assert find_file(tmp_path, "Beauty", "2014", "meta") == meta

    frame, report = read_reviews(reviews, "2014")
    assert list(frame["user_id"]) == ["U1", "U1", "U2"]
    assert frame["rating"].isna().tolist() == [False, False, True]
    assert frame["timestamp"].isna().tolist() == [False, True, True]
    assert report.records == 3 and report.lines == 4
    assert report.coverage == {"rating": pytest.approx(2 / 3), "timestamp": pytest.approx(1 / 3)}

    items, meta_report = read_meta(meta, "2014")
    first, second = items.to_dict("records")
    assert first["title"] == "Rose & soap" and first["categories"] == "Beauty > Bath"
    assert first["image_url"] == "http://x/a1.jpg"
    assert pd.isna(second["title"]) and second["description"] == "It's a cream" and second["brand"] == "Acme"
    assert meta_report.coverage["title"] == 0.5 and meta_report.coverage["image_url"] == 0.5


def test_2014_ratings_csv(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "ratings_Toys.csv", ["U1,A1,5.0,1400000000", "U2,A1,2.0,1400000001"], gz=False)
    assert find_file(tmp_path, "Toys", "2014", "reviews") == path
    frame, _ = read_reviews(path, "2014")
    assert frame["rating"].tolist() == [5.0, 2.0]
    assert frame["timestamp"].tolist() == [1400000000, 1400000001]


def test_2018_layout(tmp_path: Path) -> None:
    reviews = write_lines(
        tmp_path / "Beauty_5.json.gz",
        [json.dumps({"reviewerID": "U1", "asin": "A1", "overall": 4.0, "unixReviewTime": 5})],
        gz=True,
    )
    meta = write_lines(
        tmp_path / "meta_Beauty.json",
        [
            json.dumps(
                {
                    "asin": "A1",
                    "title": "Lip balm",
                    "description": ["Soft", "Shiny"],
                    "category": ["Beauty", "Lips"],
                    "imageURLHighRes": ["http://x/hi.jpg"],
                    "imageURL": ["http://x/lo.jpg"],
                }
            )
        ],
        gz=False,
    )
    assert find_file(tmp_path, "Beauty", "2018", "reviews") == reviews
    frame, _ = read_reviews(reviews, "2018")
    assert frame.iloc[0].to_dict() == {"user_id": "U1", "item_id": "A1", "rating": 4.0, "timestamp": 5}
    items, _ = read_meta(meta, "2018")
    row = items.iloc[0]
    assert row["description"] == "Soft | Shiny" and row["categories"] == "Beauty | Lips"
    assert row["image_url"] == "http://x/hi.jpg"


def test_2023_layout(tmp_path: Path) -> None:
    reviews = write_lines(
        tmp_path / "All_Beauty" / "All_Beauty.jsonl.gz",
        [json.dumps({"user_id": "U1", "parent_asin": "P1", "asin": "C1", "rating": 5.0, "timestamp": 1588687728923})],
        gz=True,
    )
    meta = write_lines(
        tmp_path / "All_Beauty" / "meta_All_Beauty.jsonl",
        [
            json.dumps(
                {
                    "parent_asin": "P1",
                    "title": "Serum",
                    "description": [],
                    "features": ["Vitamin C"],
                    "store": "Glow",
                    "images": [{"thumb": "http://x/t.jpg", "large": "http://x/l.jpg", "hi_res": None}],
                }
            )
        ],
        gz=False,
    )
    assert find_file(tmp_path, "All_Beauty", "2023", "meta") == meta
    frame, _ = read_reviews(reviews, "2023")
    assert frame.iloc[0]["item_id"] == "P1" and frame.iloc[0]["timestamp"] == 1588687728
    items, _ = read_meta(meta, "2023")
    row = items.iloc[0]
    assert row["description"] == "Vitamin C" and row["brand"] == "Glow" and row["image_url"] == "http://x/l.jpg"


def test_bad_line_names_file_and_line(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "reviews_X_5.json",
        [json.dumps({"reviewerID": "U1", "asin": "A1"}), "{not json", json.dumps({"asin": "A2"})],
        gz=False,
    )
    with pytest.raises(BadLineError, match=r"reviews_X_5\.json:2:"):
        read_reviews(path, "2014")
    frame, report = read_reviews(path, "2014", skip_bad_lines=True)
    assert len(frame) == 1
    assert report.bad_lines == 2
    assert report.bad_examples[0].endswith("reviews_X_5.json:2: neither JSON nor a Python literal (SyntaxError)")
    assert report.bad_examples[1].endswith(":3: missing user id")


def test_unknown_release_names_parameter(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--release"):
        read_reviews(tmp_path / "x.json", "2020")


def test_real_shared_copy_if_present() -> None:
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2014"
    path = find_file(root, "Beauty", "2014", "meta")
    if path is None:
        pytest.skip("../shared/data/amazon2014 is not beside this checkout")
    items, report = read_meta(path, "2014")
    assert report.bad_lines == 0 and len(items) == report.records > 10_000
    assert 0.99 < report.coverage["title"] <= 1.0 and report.coverage["image_url"] == 0.0
    assert isinstance(items, pd.DataFrame)


def review(**fields: object) -> str:
    """A 2014 review line with a user and an item, plus `fields`."""
    return json.dumps({"reviewerID": "U1", "asin": "A1", **fields})


def test_truncated_gzip_names_the_file_even_when_skipping(tmp_path: Path) -> None:
    lines = [review(overall=5.0, unixReviewTime=1_400_000_000 + k) for k in range(20_000)]
    whole = write_lines(tmp_path / "whole" / "reviews_X_5.json.gz", lines, gz=True).read_bytes()
    cut = tmp_path / "reviews_X_5.json.gz"
    cut.write_bytes(whole[: len(whole) // 2])  # what an interrupted download leaves
    for skip in (False, True):
        with pytest.raises(RawDataError, match=r"reviews_X_5\.json\.gz: truncated or corrupt gzip while reading line"):
            read_reviews(cut, "2014", skip_bad_lines=skip)
    meta = tmp_path / "meta_X.json.gz"
    meta.write_bytes(gzip.compress(b"{'asin': 'A1', 'title': 't'}\n" * 5000)[:-12])  # no trailer: CRC and size lost
    with pytest.raises(RawDataError, match=r"meta_X\.json\.gz: truncated or corrupt gzip"):
        read_meta(meta, "2014")


def test_invalid_utf8_is_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "reviews_X_5.json"
    path.write_bytes(b"\n".join([review().encode(), b'{"reviewerID": "U\xff\xfe", "asin": "A2"}', review().encode()]))
    with pytest.raises(BadLineError, match=r"reviews_X_5\.json:2: not UTF-8"):
        read_reviews(path, "2014")
    frame, report = read_reviews(path, "2014", skip_bad_lines=True)
    assert len(frame) == 2 and report.bad_lines == 1


@pytest.mark.parametrize("line", [
    '{"reviewerID": "U2", "asin": "A2", "helpful": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "{'reviewerID': 'U2', 'asin': 'A2', 'helpful': " + "[" * 100_000 + "]" * 100_000 + "}",
    "[" * 100_000,
])
def test_absurdly_nested_line_is_a_bad_line(tmp_path: Path, line: str) -> None:
    path = write_lines(tmp_path / "reviews_X_5.json", [review(), line], gz=False)
    with pytest.raises(BadLineError, match=r"reviews_X_5\.json:2: "):
        read_reviews(path, "2014")
    frame, report = read_reviews(path, "2014", skip_bad_lines=True)
    assert len(frame) == 1 and report.bad_lines == 1
    meta = write_lines(tmp_path / "meta_X.json", ["{'asin': 'A1'}", line.replace("reviewerID", "title")], gz=False)
    with pytest.raises(BadLineError, match=r"meta_X\.json:2: "):
        read_meta(meta, "2014")


@pytest.mark.parametrize(("fields", "reason"), [
    ({"overall": "five"}, "rating must be a number"),
    ({"overall": 7.0}, "rating 7 outside the 1-5 star scale"),
    ({"overall": -1}, "rating -1 outside"),
    ({"overall": float("nan")}, "rating must be a finite number"),
    ({"overall": True}, "rating must be a number, got bool"),
    ({"overall": [5]}, "rating must be a number, got list"),
    ({"unixReviewTime": "yesterday"}, "timestamp must be a number"),
    ({"unixReviewTime": -5}, "timestamp -5 is not a time from 1970 to 2100 in seconds"),
    ({"unixReviewTime": 1e20}, "timestamp 1e\\+20 is not a time"),
    ({"unixReviewTime": float("inf")}, "timestamp must be a finite number"),
    ({"unixReviewTime": {"t": 1}}, "timestamp must be a number, got dict"),
    ({"reviewerID": ["U1"]}, "user id must be a string, got list"),
])
def test_wrongly_typed_or_out_of_range_fields_are_bad_lines(tmp_path: Path, fields: dict, reason: str) -> None:
    path = write_lines(tmp_path / "reviews_X_5.json", [review(overall=4.0), review(**fields)], gz=False)
    with pytest.raises(BadLineError, match=rf"reviews_X_5\.json:2: {reason}"):
        read_reviews(path, "2014")
    frame, report = read_reviews(path, "2014", skip_bad_lines=True)
    assert len(frame) == 1 and report.bad_lines == 1


def test_2023_timestamps_are_milliseconds_and_checked(tmp_path: Path) -> None:
    good = json.dumps({"user_id": "U1", "parent_asin": "P1", "rating": 4.0, "timestamp": 1588687728923})
    bad = json.dumps({"user_id": "U1", "parent_asin": "P2", "rating": 4.0, "timestamp": 10**18})
    path = write_lines(tmp_path / "X.jsonl", [good, bad], gz=False)
    with pytest.raises(BadLineError, match=r"X\.jsonl:2: timestamp .* in milliseconds"):
        read_reviews(path, "2023")
    frame, _ = read_reviews(path, "2023", skip_bad_lines=True)
    assert frame["timestamp"].tolist() == [1588687728]


def test_csv_field_over_the_csv_limit_is_a_bad_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "ratings_X.csv", ["U1,A1,5.0,1400000000", "U2," + "A" * 200_000 + ",5,1"], gz=False)
    with pytest.raises(BadLineError, match=r"ratings_X\.csv:2: unreadable CSV"):
        read_reviews(path, "2014")


@pytest.mark.parametrize("gz", [True, False])
def test_empty_file_says_no_records(tmp_path: Path, gz: bool) -> None:
    suffix = ".json.gz" if gz else ".json"
    reviews = tmp_path / f"reviews_X_5{suffix}"
    reviews.write_bytes(gzip.compress(b"") if gz else b"")
    with pytest.raises(RawDataError, match=rf"reviews_X_5{suffix}: no records \(0 lines read\)"):
        read_reviews(reviews, "2014")
    meta = write_lines(tmp_path / f"meta_X{suffix}", ["{not a record"], gz)
    with pytest.raises(RawDataError, match=r"no records \(1 lines read, 1 skipped as bad\)"):
        read_meta(meta, "2014", skip_bad_lines=True)


def test_2023_description_given_as_one_string_stays_whole(tmp_path: Path) -> None:
    line = json.dumps({"parent_asin": "P1", "description": "Plain text", "features": "Soft"})
    items, _ = read_meta(write_lines(tmp_path / "meta_X.jsonl", [line], gz=False), "2023")
    assert items.loc[0, "description"] == "Plain text | Soft"
