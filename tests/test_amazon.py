"""Readers of the three Amazon Reviews release layouts, on fixtures written here."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from micrec_core.amazon import BadLineError, find_file, read_meta, read_reviews


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
    assert ":3: missing user or item id" in report.bad_examples[1]


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
