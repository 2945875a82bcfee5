"""Dataset construction: the >k filter's fixed point, the inductive split's invariants, build outputs."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from micrec_core.cli import main
from micrec_core.data import dataset as dataset_module
from micrec_core.data.amazon import RawDataError
from micrec_core.data.atomic import folder_lock, sha256_file
from micrec_core.data.dataset import (
    EmptyDomainError,
    SplitParams,
    build_dataset,
    build_problems,
    dataset_sha256,
    ensure_built,
    filter_domain,
    inductive_split,
    load_pair,
)
from micrec_core.data.features import _image_content


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


def gone_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


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


PARAMS = SplitParams(min_count=5)


def make_raw(root: Path, images: bool = False) -> Path:
    """Two random domains A, B in the 2014 layout; with `images`, a local image for every other item."""
    raw = root / "raw"
    for name, seed in (("A", 4), ("B", 5)):
        frame = random_reviews(seed, n=8000)
        write_domain(raw, name, frame)
        for item in sorted(set(frame["item_id"]))[::2] if images else []:
            path = raw / name / "images" / f"{name}-{item}.png"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(f"image of {name}-{item}".encode())
    return raw


def matches_manifest(out: Path) -> bool:
    """Whether every table of a build has the sha256 its manifest records."""
    outputs = json.loads((out / "manifest.json").read_text())["outputs"]
    return all((out / name).is_file() and sha256_file(out / name) == digest for name, digest in outputs.items())


def test_identity_does_not_depend_on_where_the_raw_files_lie(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "here", images=True)
    moved = tmp_path / "elsewhere" / "deeper" / "raw"
    shutil.copytree(raw, moved)
    build_dataset(raw, ("A", "B"), tmp_path / "x1", params=PARAMS)
    build_dataset(moved, ("A", "B"), tmp_path / "x2", params=PARAMS)
    assert dataset_sha256(tmp_path / "x1") == dataset_sha256(tmp_path / "x2")
    shutil.rmtree(tmp_path / "here")  # the build keeps its images
    items = pd.read_parquet(tmp_path / "x1" / "A" / "items.parquet")
    paths = items["image_path"].dropna()
    assert len(paths) > 0 and not any(Path(p).is_absolute() for p in paths)
    for item, path in zip(items["item_id"], items["image_path"], strict=True):
        if pd.notna(path):
            assert (tmp_path / "x1" / path).read_bytes() == f"image of {item}".encode()
            assert _image_content(path, tmp_path / "x1")[1] == "ok"  # where `micrec features` looks
    stats = json.loads((tmp_path / "x1" / "stats.json").read_text())
    assert stats["domains"]["A"]["image_coverage"] == len(paths) / len(items)
    loaded = load_pair(tmp_path / "x1").domains[0].items["image_path"]  # what the chapters open, from notebooks/
    assert loaded.notna().sum() == len(paths)
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in loaded.dropna())


def test_a_failed_build_leaves_the_previous_build_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, out = make_raw(tmp_path), tmp_path / "built"
    build_dataset(raw, ("A", "B"), out, params=PARAMS)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    killed = tmp_path / f".built.{gone_pid()}-0123abcd.tmpdir"  # what a build killed with -9 leaves
    (killed / "A").mkdir(parents=True)
    (killed / "A" / "items.parquet").write_bytes(b"half")
    calls = []

    def write_then_fail(frame: pd.DataFrame, path: Path) -> None:
        calls.append(path)
        if len(calls) == 4:
            raise OSError("disk full")
        write_parquet(frame, path)

    write_parquet = dataset_module._write_parquet
    monkeypatch.setattr(dataset_module, "_write_parquet", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        build_dataset(raw, ("A", "B"), out, params=SplitParams(min_count=6))
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert matches_manifest(out)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["built", "raw"]


def test_build_refuses_a_folder_that_holds_something_else(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw, out = make_raw(tmp_path), tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(ValueError, match=r"mine/notes\.txt, which is not part of a dataset built by micrec"):
        build_dataset(raw, ("A", "B"), out, params=PARAMS)
    assert main(["data", "build", "--raw", str(raw), "--pair", "A,B", "--out", str(raw)]) == 2
    assert "not part of a dataset built by micrec" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "my notes"
    (out / "notes.txt").unlink()
    (out / "A" / "features").mkdir(parents=True)  # what `micrec features` adds belongs; a file beside it does not
    (out / "A" / "extra.csv").write_text("x")
    with pytest.raises(ValueError, match=r"mine/A/extra\.csv, which is not part of"):
        build_dataset(raw, ("A", "B"), out, params=PARAMS)


def test_rebuild_keeps_the_feature_cache(tmp_path: Path) -> None:
    raw, out = make_raw(tmp_path), tmp_path / "built"
    build_dataset(raw, ("A", "B"), out, params=PARAMS)
    for path in (out / "cache" / "features" / "m" / "shard-0.npz", out / "A" / "features" / "features.json"):
        path.parent.mkdir(parents=True)
        path.write_text(path.name)
    build_dataset(raw, ("A", "B"), out, params=SplitParams(min_count=6))
    assert json.loads((out / "manifest.json").read_text())["params"]["min_count"] == 6 and matches_manifest(out)
    assert (out / "cache" / "features" / "m" / "shard-0.npz").read_text() == "shard-0.npz"
    assert (out / "A" / "features" / "features.json").read_text() == "features.json"


def test_builds_into_one_folder_run_one_after_the_other(tmp_path: Path) -> None:
    raw, out = make_raw(tmp_path), tmp_path / "built"
    waiting, errors = threading.Event(), []

    class Signal(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waiting" in record.getMessage():
                waiting.set()

    def build() -> None:
        try:
            build_dataset(raw, ("A", "B"), out, params=PARAMS)
        except Exception as err:  # reported by the assertion below
            errors.append(err)

    handler = Signal()
    logging.getLogger("micrec.atomic").addHandler(handler)
    try:
        with folder_lock(out):  # another build holds the folder
            thread = threading.Thread(target=build)
            thread.start()
            assert waiting.wait(60), "the build did not wait for the lock"
            assert not out.exists()
        thread.join(120)
    finally:
        logging.getLogger("micrec.atomic").removeHandler(handler)
    assert not errors and matches_manifest(out)


def test_ensure_built_rebuilds_a_tampered_build(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw, out = make_raw(tmp_path, images=True), tmp_path / "built"
    ensure_built(out, raw, ("A", "B"), params=PARAMS)
    manifest_inode = (out / "manifest.json").stat().st_ino
    ensure_built(out, raw, ("A", "B"), params=PARAMS)
    assert (out / "manifest.json").stat().st_ino == manifest_inode  # intact: reused
    items = pd.read_parquet(out / "A" / "items.parquet")
    items.iloc[1:].to_parquet(out / "A" / "items.parquet", index=False)
    assert not matches_manifest(out)
    with caplog.at_level(logging.WARNING, logger="micrec.dataset"):
        ensure_built(out, raw, ("A", "B"), params=PARAMS)
    assert matches_manifest(out)
    assert "A/items.parquet does not match the sha256 its manifest records" in caplog.text


def test_vanished_images_are_detected_and_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw, out = make_raw(tmp_path, images=True), tmp_path / "built"
    ensure_built(out, raw, ("A", "B"), params=PARAMS)
    assert build_problems(out) == []
    images = sorted((out / "B" / "images").iterdir())
    images[0].unlink()
    assert build_problems(out) == [
        f"{out / 'B' / 'images'}: image files vanished or changed since the build "
        f"({len(images) - 1} of {len(images)} files, {sum(p.stat().st_size for p in images[1:])} of "
        f"{sum(len(f'image of {p.stem}') for p in images)} bytes)"
    ]
    with caplog.at_level(logging.WARNING, logger="micrec.dataset"):
        ensure_built(out, raw, ("A", "B"), params=PARAMS)
    assert "image files vanished" in caplog.text and build_problems(out) == [] and images[0].is_file()


def test_metadata_without_usable_text_is_recorded_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = make_raw(tmp_path)
    lines = gzip.decompress((raw / "B" / "reviews_B_5.json.gz").read_bytes()).decode().splitlines()
    items = sorted({json.loads(line)["asin"] for line in lines})
    (raw / "B" / "meta_B.json").write_text("".join(repr({"asin": i, "imUrl": "http://x/y.jpg"}) + "\n" for i in items))
    with caplog.at_level(logging.WARNING, logger="micrec.dataset"):
        build_dataset(raw, ("A", "B"), tmp_path / "built", params=PARAMS)
    manifest = json.loads((tmp_path / "built" / "manifest.json").read_text())
    assert manifest["coverage"]["B"]["text"] == 0 and manifest["coverage"]["A"]["text"] > 0
    message = "B: no item has usable text (title, description, categories or brand) in meta_B.json"
    assert any(w.startswith(message) for w in manifest["warnings"]) and message in caplog.text


def test_empty_reviews_file_is_named_not_a_filter_step(tmp_path: Path) -> None:
    raw = make_raw(tmp_path)
    (raw / "A" / "reviews_A_5.json.gz").write_bytes(gzip.compress(b""))
    with pytest.raises(RawDataError, match=r"reviews_A_5\.json\.gz: no records"):
        build_dataset(raw, ("A", "B"), tmp_path / "built", params=PARAMS)
