"""Tests for the synthetic dataset: determinism, the 2014 layout, filtered sizes and the planted structure."""

from __future__ import annotations

import ast
import gzip
import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from micrec_core.data.amazon import find_file, read_meta, read_reviews
from micrec_core.data.atomic import sha256_file
from micrec_core.data.synth import DOMAINS, GENERATIVE_STORY, SIZES, synthesize

NAMES = [spec.name for spec in DOMAINS]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The small dataset for seed 0, generated once for this module."""
    root = tmp_path_factory.mktemp("synth") / "data"
    return root, synthesize(root, seed=0, size="small")


def _hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under root, by relative path."""
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _reviews(root: Path, name: str) -> pd.DataFrame:
    """A domain's reviews file as a DataFrame."""
    return pd.read_json(root / name / f"reviews_{name}_5.json.gz", lines=True, dtype={"reviewerID": str, "asin": str})


def _meta(root: Path, name: str) -> list[dict[str, Any]]:
    """A domain's metadata lines, parsed as Python literals."""
    with gzip.open(root / name / f"meta_{name}.json.gz", "rt", encoding="utf-8") as handle:
        return [ast.literal_eval(line) for line in handle]


def _clusters(root: Path, name: str) -> pd.Series:
    """The planted cluster of every item, indexed by asin."""
    return pd.read_csv(root / name / "truth_items.csv", dtype={"asin": str}).set_index("asin")["cluster"]


def _filter(reviews: pd.DataFrame) -> pd.DataFrame:
    """The project's filter, restated: rating >= 4, then users and items with > 10 interactions, iterated."""
    frame = reviews[reviews["overall"] >= 4]
    while True:
        users = frame.groupby("reviewerID")["asin"].transform("size")
        items = frame.groupby("asin")["reviewerID"].transform("size")
        keep = (users > 10) & (items > 10)
        if keep.all():
            return frame
        frame = frame[keep]


def _within_between(values: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean of a pairwise matrix over same-label pairs and over different-label pairs (diagonal excluded)."""
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    return float(values[same & off_diagonal].mean()), float(values[~same].mean())


def test_same_seed_is_byte_identical(dataset: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    root, summary = dataset
    again = synthesize(tmp_path / "again", seed=0, size="small")
    assert _hashes(tmp_path / "again") == _hashes(root)
    assert again["counts"] == summary["counts"]


def test_other_seed_differs_and_overwrites_a_previous_output(
    dataset: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    root, _ = dataset
    target = tmp_path / "copy"
    shutil.copytree(root, target)
    stale = target / NAMES[0] / "images" / f"{DOMAINS[0].asin_prefix}99999.png"
    shutil.copy(target / NAMES[0] / "images" / f"{DOMAINS[0].asin_prefix}00000.png", stale)
    synthesize(target, seed=1, size="small")
    old, new = _hashes(root), _hashes(target)
    assert not stale.exists()
    assert set(new) == set(old)
    for spec in DOMAINS:
        image = f"images/{spec.asin_prefix}00000.png"
        for file in (f"reviews_{spec.name}_5.json.gz", f"meta_{spec.name}.json.gz", image):
            assert new[f"{spec.name}/{file}"] != old[f"{spec.name}/{file}"], file
    assert json.loads((target / "SYNTHETIC.json").read_text())["seed"] == 1


def test_layout_and_provenance(dataset: tuple[Path, dict[str, Any]]) -> None:
    root, summary = dataset
    assert sorted(p.name for p in root.iterdir()) == sorted(["SYNTHETIC.json", *NAMES])
    assert all(name.startswith("Synthetic_") for name in NAMES)
    for name in NAMES:
        expected = {f"reviews_{name}_5.json.gz", f"meta_{name}.json.gz", "truth_items.csv", "truth_users.csv", "images"}
        assert {p.name for p in (root / name).iterdir()} == expected
    info = json.loads((root / "SYNTHETIC.json").read_text())
    assert info["synthetic"] is True and info["generator"] == "micrec_core.data.synth"
    assert (info["seed"], info["size"], info["domains"]) == (0, "small", NAMES)
    assert info["params"] == json.loads(json.dumps(asdict(SIZES["small"])))
    assert info["story"] == GENERATIVE_STORY and "SYNTHETIC" in GENERATIVE_STORY
    assert summary["synthetic"] is True and summary["domains"] == NAMES
    for name in NAMES:
        assert summary["counts"][name]["reviews"] == len(_reviews(root, name))


def test_reviews_follow_the_2014_format(dataset: tuple[Path, dict[str, Any]]) -> None:
    root, _ = dataset
    for spec in DOMAINS:
        path = root / spec.name / f"reviews_{spec.name}_5.json.gz"
        header = path.read_bytes()[:10]
        assert header[4:8] == b"\0\0\0\0" and not header[3] & 0x08  # mtime 0, no file name
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle]
        assert all(list(r) == ["reviewerID", "asin", "overall", "unixReviewTime"] for r in records)
        assert all(re.fullmatch(r"SYNU\d{6}", r["reviewerID"]) for r in records)
        assert all(re.fullmatch(rf"{spec.asin_prefix}\d{{5}}", r["asin"]) for r in records)
        assert all(isinstance(r["overall"], float) and 1.0 <= r["overall"] <= 5.0 for r in records)
        assert all(isinstance(r["unixReviewTime"], int) for r in records)
        keys = [(r["reviewerID"], r["unixReviewTime"]) for r in records]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)  # sorted, and times strictly increase per user
        frame = pd.DataFrame(records)
        assert not frame.duplicated(["reviewerID", "asin"]).any()
        assert frame.groupby("reviewerID").size().min() >= 5 and frame.groupby("asin").size().min() >= 5
        low = (frame["overall"] < 4).mean()
        assert 0.05 < low < 0.35


def test_meta_lines_are_python_literals_and_every_item_has_a_png(dataset: tuple[Path, dict[str, Any]]) -> None:
    root, _ = dataset
    for name in NAMES:
        with gzip.open(root / name / f"meta_{name}.json.gz", "rt", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        for line in lines:
            with pytest.raises(json.JSONDecodeError):
                json.loads(line)
        meta = [ast.literal_eval(line) for line in lines]
        assert all(set(m) == {"asin", "title", "categories", "brand"} for m in meta)
        assert all(m["categories"][0][0] == name and all(isinstance(c, str) for c in m["categories"][0])
                   for m in meta)
        asins = [m["asin"] for m in meta]
        assert sorted(asins) == sorted(_clusters(root, name).index)
        assert set(_reviews(root, name)["asin"]) <= set(asins)
        assert sorted(p.name for p in (root / name / "images").iterdir()) == sorted(f"{a}.png" for a in asins)
        for asin in asins:
            with Image.open(root / name / "images" / f"{asin}.png") as image:
                assert (image.format, image.mode, image.size) == ("PNG", "RGB", (64, 64))


def test_project_readers_load_it(dataset: tuple[Path, dict[str, Any]]) -> None:
    root, _ = dataset
    for name in NAMES:
        reviews, _ = read_reviews(find_file(root, name, "2014", "reviews"), "2014")
        meta, _ = read_meta(find_file(root, name, "2014", "meta"), "2014")
        assert len(reviews) == len(_reviews(root, name)) and reviews["rating"].notna().all()
        assert meta["title"].notna().all() and set(reviews["item_id"]) <= set(meta["item_id"])


def test_filtered_sizes_fit_the_small_budget(dataset: tuple[Path, dict[str, Any]]) -> None:
    root, _ = dataset
    kept = {}
    for name in NAMES:
        frame = _filter(_reviews(root, name))
        kept[name] = set(frame["reviewerID"])
        assert 500 <= frame["reviewerID"].nunique() <= 900, name
        assert 300 <= frame["asin"].nunique() <= 500, name
        assert 8_000 <= len(frame) <= 15_000, name
    assert 150 <= len(kept[NAMES[0]] & kept[NAMES[1]]) <= 500


def test_titles_share_words_within_clusters(dataset: tuple[Path, dict[str, Any]]) -> None:
    root, _ = dataset
    for name in NAMES:
        meta = _meta(root, name)
        labels = _clusters(root, name).loc[[m["asin"] for m in meta]].to_numpy()
        words = [set(m["title"].split()) for m in meta]
        vocab = {w: i for i, w in enumerate(sorted(set().union(*words)))}
        bag = np.zeros((len(meta), len(vocab)))
        for row, item_words in enumerate(words):
            bag[row, [vocab[w] for w in item_words]] = 1.0
        shared = bag @ bag.T
        sizes = bag.sum(axis=1)
        jaccard = shared / (sizes[:, None] + sizes[None, :] - shared)
        within, between = _within_between(jaccard, labels)
        assert within > 3 * between, name
        centroids = np.stack([bag[labels == c].mean(axis=0) for c in range(labels.max() + 1)])
        accuracy = (np.argmax(bag @ centroids.T, axis=1) == labels).mean()
        assert 0.5 < accuracy < 1.0, name  # titles carry the cluster, imperfectly


def test_images_of_a_cluster_are_closer_in_mean_colour(dataset: tuple[Path, dict[str, Any]]) -> None:
    root, _ = dataset
    for name in NAMES:
        clusters = _clusters(root, name)
        colours = np.stack([np.asarray(Image.open(root / name / "images" / f"{a}.png"), dtype=float).mean(axis=(0, 1))
                            for a in clusters.index])
        labels = clusters.to_numpy()
        distance = np.linalg.norm(colours[:, None, :] - colours[None, :, :], axis=2)
        within, between = _within_between(distance, labels)
        assert within < 0.7 * between, name
        centroids = np.stack([colours[labels == c].mean(axis=0) for c in range(labels.max() + 1)])
        nearest = np.argmin(np.linalg.norm(colours[:, None, :] - centroids[None], axis=2), axis=1)
        assert 0.4 < (nearest == labels).mean() < 1.0, name  # images carry the cluster, imperfectly


def _cluster_shares(root: Path, name: str, users: list[str]) -> np.ndarray:
    """Each user's share of reviews per planted cluster (rows follow `users`)."""
    reviews = _reviews(root, name)
    reviews["cluster"] = _clusters(root, name).loc[reviews["asin"]].to_numpy()
    counts = pd.crosstab(reviews["reviewerID"], reviews["cluster"]).reindex(index=users, fill_value=0)
    return (counts / counts.to_numpy().sum(axis=1, keepdims=True)).to_numpy()


def test_overlapping_users_preferences_correlate_across_domains(dataset: tuple[Path, dict[str, Any]]) -> None:
    root, _ = dataset
    a, b = (set(_reviews(root, name)["reviewerID"]) for name in NAMES)
    users = sorted(a & b)
    share_a, share_b = (_cluster_shares(root, name, users) for name in NAMES)
    cluster_map = np.array(json.loads((root / "SYNTHETIC.json").read_text())["cluster_map"]["map"])
    assert (np.argmax(share_a.T @ share_b, axis=1) == cluster_map).all()
    carried = np.empty_like(share_a)
    carried[:, cluster_map] = share_a
    real = np.mean([np.corrcoef(x, y)[0, 1] for x, y in zip(carried, share_b, strict=True)])
    shuffled = np.mean([np.corrcoef(x, y)[0, 1] for x, y in zip(carried, share_b[::-1], strict=True)])
    assert real > 0.4 and real > shuffled + 0.3


def test_truth_users_match_the_reviews(dataset: tuple[Path, dict[str, Any]]) -> None:
    root, _ = dataset
    for name in NAMES:
        truth = pd.read_csv(root / name / "truth_users.csv", dtype={"reviewerID": str})
        assert sorted(truth["reviewerID"]) == sorted(set(_reviews(root, name)["reviewerID"]))
        taste = np.array([[float(t) for t in row.split(";")] for row in truth["taste"]])
        assert np.allclose(taste.sum(axis=1), 1.0, atol=1e-3)
        dominant = truth["dominant_cluster"].to_numpy()
        assert np.array_equal(taste[np.arange(len(taste)), dominant], taste.max(axis=1))  # ties at 4 decimals
        assert np.allclose(truth["dominant_weight"], taste.max(axis=1))
        observed = np.argmax(_cluster_shares(root, name, list(truth["reviewerID"])), axis=1)
        assert (observed == dominant).mean() > 0.6, name
    flags = pd.read_csv(root / NAMES[0] / "truth_users.csv", dtype={"reviewerID": str})
    in_b = set(_reviews(root, NAMES[1])["reviewerID"])
    assert all(flag == 1 for user, flag in zip(flags["reviewerID"], flags["in_both_domains"], strict=True)
               if user in in_b)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"seed": -1}, "--seed"), ({"seed": 1.5}, "--seed"), ({"size": "huge"}, "--size")],
)
def test_bad_arguments_are_named(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        synthesize(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_refuses_a_folder_holding_other_things(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"notes\.txt"):
        synthesize(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    (tmp_path / "notes.txt").unlink()
    (tmp_path / NAMES[0]).mkdir()
    (tmp_path / NAMES[0] / "extra.csv").write_text("x")
    with pytest.raises(ValueError, match=r"extra\.csv"):
        synthesize(tmp_path)
    (tmp_path / NAMES[0] / "extra.csv").unlink()
    (tmp_path / NAMES[0] / "images").mkdir()
    (tmp_path / NAMES[0] / "images" / "photo.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"photo\.png"):
        synthesize(tmp_path)
    assert not (tmp_path / "SYNTHETIC.json").exists()
