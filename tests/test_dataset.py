"""Dataset construction: the >k filter's fixed point, the inductive split's invariants, build outputs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from micrec_core.cli import main
from micrec_core.dataset import EmptyDomainError, SplitParams, build_dataset, filter_domain, inductive_split


def random_reviews(seed: int, n_users: int = 120, n_items: int = 60, n: int = 3000, rated: bool = True) -> pd.DataFrame:
    """Long-tailed random interactions with ratings."""
    rng = np.random.default_rng(seed)
    users = rng.zipf(1.3, n) % n_users
    items = rng.zipf(1.2, n) % n_items
    frame = pd.DataFrame(
        {
            "user_id": [f"u{u:03d}" for u in users],
            "item_id": [f"i{i:03d}" for i in items],
            "rating": rng.integers(1, 6, n).astype(float) if rated else np.nan,
            "timestamp": pd.array([None] * n, dtype="Int64"),
        }
    )
    return frame


def test_filter_reaches_fixed_point() -> None:
    reviews = random_reviews(0, n=8000)
    params = SplitParams(min_count=5)
    frame, steps, warnings = filter_domain(reviews, "D", params)
    assert not warnings
    assert (frame["rating"] >= 4).all()
    assert not frame.duplicated(["user_id", "item_id"]).any()
    assert frame.groupby("user_id").size().min() > 5
    assert frame.groupby("item_id").size().min() > 5
    again, _, _ = filter_domain(frame, "D", params)
    assert len(again) == len(frame)
    assert steps[-1]["interactions"] == len(frame)
    assert [s["interactions"] for s in steps] == sorted((s["interactions"] for s in steps), reverse=True)


def test_missing_ratings_skip_filter_with_warning() -> None:
    frame, steps, warnings = filter_domain(random_reviews(1, n=8000, rated=False), "D", SplitParams(min_count=5))
    assert len(warnings) == 1 and "rating >= 4 filter skipped" in warnings[0]
    assert not any(s["step"].startswith("rating") for s in steps)
    assert len(frame) > 0


def test_partial_ratings_filter_the_rated_rows_and_keep_the_others() -> None:
    reviews = random_reviews(6, n=8000)
    reviews.loc[reviews.index % 3 == 0, "rating"] = np.nan
    frame, steps, warnings = filter_domain(reviews, "D", SplitParams(min_count=0))
    deduplicated = reviews.drop_duplicates(["user_id", "item_id"])
    unrated = int(deduplicated["rating"].isna().sum())
    assert unrated > 0 and (deduplicated["rating"] < 4).any()
    assert len(frame) == unrated + (deduplicated["rating"] >= 4).sum()
    assert frame["rating"].isna().sum() == unrated and (frame["rating"].dropna() >= 4).all()
    rating_step = next(step for step in steps if step["step"].startswith("rating"))
    assert rating_step["unrated_kept"] == unrated and rating_step["interactions"] == len(frame)
    assert len(warnings) == 1 and f"{unrated} of {len(deduplicated)} interactions have no rating" in warnings[0]


def test_empty_domain_names_domain_and_step() -> None:
    with pytest.raises(EmptyDomainError, match=r"'Kitchen'.*more than 50 interactions"):
        filter_domain(random_reviews(2, n=500), "Kitchen", SplitParams(min_count=50))


def split_of(seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Filter and split a random domain."""
    params = SplitParams(seed=seed, min_count=5)
    frame, _, _ = filter_domain(random_reviews(3, n=8000), "D", params)
    return inductive_split(frame, "D", params)


def test_split_invariants() -> None:
    interactions, users, items = split_of(seed=7)
    assert set(interactions["split"]) <= {"train", "new", "val", "test"}
    assert not interactions.duplicated(["user_id", "item_id"]).any()  # splits are disjoint
    seen_user = dict(zip(users["user_id"], users["seen"], strict=True))
    seen_item = dict(zip(items["item_id"], items["seen"], strict=True))
    both_seen = interactions["user_id"].map(seen_user) & interactions["item_id"].map(seen_item)
    split = interactions["split"]
    assert both_seen[split == "train"].all()  # E_tr within U_s x I_s
    assert both_seen[split == "val"].all()  # E_val within U_s x I_s
    assert not both_seen[split == "new"].any()  # E_new touches an unseen user or item
    assert (~users["seen"]).sum() == round(0.2 * len(users))
    assert (~items["seen"]).sum() == round(0.2 * len(items))
    # per-user proportions: 20% test, 10% val (incl. those moved to new), rounded half up
    per_user = interactions.groupby("user_id")["split"].agg(lambda s: (s == "test").sum())
    sizes = interactions.groupby("user_id").size()
    assert (per_user == np.floor(0.2 * sizes + 0.5)).all()


def test_split_determinism() -> None:
    a, b, c = split_of(seed=7), split_of(seed=7), split_of(seed=8)
    for x, y in zip(a, b, strict=True):
        pd.testing.assert_frame_equal(x, y)
    assert not a[0]["split"].equals(c[0]["split"])
    assert not a[1]["seen"].equals(c[1]["seen"])


def write_domain(root: Path, name: str, frame: pd.DataFrame) -> None:
    """Write a domain in the 2014 layout (reviews JSON lines + Python-literal meta)."""
    folder = root / name
    folder.mkdir(parents=True)
    lines = [
        json.dumps({"reviewerID": r.user_id, "asin": f"{name}-{r.item_id}", "overall": r.rating})
        for r in frame.itertuples()
    ]
    (folder / f"reviews_{name}_5.json.gz").write_bytes(gzip.compress("\n".join(lines).encode(), mtime=0))
    meta = [repr({"asin": f"{name}-{i}", "title": f"thing {i}"}) for i in sorted(set(frame["item_id"]))[::2]]
    (folder / f"meta_{name}.json").write_text("\n".join(meta) + "\n")


def test_build_outputs_are_complete_and_byte_identical(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_domain(raw, "A", random_reviews(4, n=8000))
    write_domain(raw, "B", random_reviews(5, n=8000))
    out1, out2 = tmp_path / "x1", tmp_path / "x2"
    for out in (out1, out2):
        assert main(["data", "build", "--raw", str(raw), "--pair", "A,B", "--out", str(out), "--min-count", "5"]) == 0
    for path in sorted(p.relative_to(out1) for p in out1.rglob("*") if p.is_file()):
        assert (out1 / path).read_bytes() == (out2 / path).read_bytes(), path
    stats = json.loads((out1 / "stats.json").read_text())
    assert set(stats) == {"domains", "overlap_users"}
    for name in ("A", "B"):
        block = stats["domains"][name]
        assert set(block) == {"users", "items", "E_tr", "E_new", "E_val", "E_test", "text_coverage", "image_coverage"}
        interactions = pd.read_parquet(out1 / name / "interactions.parquet")
        items = pd.read_parquet(out1 / name / "items.parquet")
        users = pd.read_parquet(out1 / name / "users.parquet")
        assert list(interactions.columns) == ["user_id", "item_id", "split"]
        assert list(users.columns) == ["user_id", "seen"]
        assert {"item_id", "seen", "title", "image_path"} <= set(items.columns)
        assert block["E_tr"] == (interactions["split"] == "train").sum()
        assert block["items"] == len(items) and block["users"] == len(users)
        assert 0.4 < block["text_coverage"] < 0.6 and block["image_coverage"] == 0.0
    users_a = pd.read_parquet(out1 / "A" / "users.parquet")
    users_b = pd.read_parquet(out1 / "B" / "users.parquet")
    seen_both = set(users_a.loc[users_a["seen"], "user_id"]) & set(users_b.loc[users_b["seen"], "user_id"])
    assert stats["overlap_users"] == len(seen_both) > 0
    manifest = json.loads((out1 / "manifest.json").read_text())
    assert manifest["params"]["min_count"] == 5
    assert any("rating" in w for w in manifest["warnings"]) is False
    assert set(manifest["sources"]["A"]) == {"reviews_A_5.json.gz", "meta_A.json"}


def test_build_missing_domain_is_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="'Nope'"):
        build_dataset(tmp_path, ("Nope", "Other"), tmp_path / "out")
