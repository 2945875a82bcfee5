"""Write Amazon-layout review files of any size, for the build benchmark (bench/build_scale.py).

One category is a gzipped JSON-lines file of N reviews in the 2014, 2018 or 2023 layout, with every field of the
release (ids, names, texts, ratings, times), so that a reader pays for the fields it skips as on the real files.
Users and items are drawn with power-law popularity (bounded Pareto ranks), so a few are heavy and most have one or
two reviews, and a 5-core keeps a fraction of the reviews as on the real releases; ratings lean to 4-5 stars.
Categories written with the same `users` pool share reviewers (each category ranks the pool in its own random
order). Rows are made and compressed a chunk at a time (pyarrow string kernels, no Python loop per row), so memory
stays bounded whatever N. No metadata is written: the builder reads reviews alone (items then have no text).

    .venv/bin/python bench/make_reviews.py OUT --reviews 1000000 --layout 2018 --category Gadgets
"""

from __future__ import annotations

import argparse
import gzip
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from micrec_core.data.atomic import atomic_path

LAYOUTS = ("2014", "2018", "2023")
CHUNK = 500_000  # reviews made and compressed at a time
USER_EXPONENT, ITEM_EXPONENT = 0.6, 0.95  # popularity ~ rank^-exponent
STARS = pa.array(["1.0", "2.0", "3.0", "4.0", "5.0"])
STAR_P = [0.05, 0.05, 0.10, 0.25, 0.55]
FIRST_TIME, LAST_TIME = 1_104_537_600, 1_406_851_200  # 2005-01-01 to 2014-08-01, seconds
WORDS = ("great", "fine", "cheap", "sturdy", "works", "broke", "love", "returned", "value", "quality", "small",
         "bright", "smells", "fits", "gift", "again", "price", "quickly", "perfect", "okay")
NAMES = pa.array([f"{a} {b}." for a in ("Alex", "Sam", "Kim", "Lee", "Ana", "Max", "Eve", "Bo") for b in "ABCDEFGH"])


def file_name(category: str, layout: str) -> str:
    """The file name a release gives a category's full reviews file."""
    return {"2014": f"reviews_{category}.json.gz", "2018": f"{category}.json.gz", "2023": f"{category}.jsonl.gz"}[
        layout]


def _sentences(rng: np.random.Generator, count: int, words: int) -> pa.Array:
    """`count` made-up sentences of `words` words (JSON-safe)."""
    picks = rng.choice(WORDS, size=(count, words))
    return pa.array([" ".join(row).capitalize() + "." for row in picks])


def _ranks(rng: np.random.Generator, n: int, size: int, exponent: float) -> np.ndarray:
    """`size` ranks in [0, n) drawn with probability ~ (rank + 1)^-exponent (inverse CDF of a bounded Pareto)."""
    a = 1.0 - exponent
    x = ((n + 1.0) ** a - 1.0) * rng.random(size) + 1.0
    return np.minimum(x ** (1.0 / a), n).astype(np.int64) - 1


def _padded(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """Ids like A0000000042: `prefix` then the number zero-padded to `width` digits."""
    digits = pc.utf8_lpad(pc.cast(pa.array(numbers), pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _quoted(values: pa.Array) -> pa.Array:
    """JSON string literals of values that need no escaping."""
    return pc.binary_join_element_wise('"', values, '"', "")


def _fields(layout: str, user: pa.Array, item: pa.Array, stars: pa.Array, seconds: np.ndarray,
            texts: tuple[pa.Array, pa.Array, pa.Array]) -> list[tuple[str, pa.Array | str]]:
    """A chunk's (key, JSON value) pairs in the release's field order."""
    name, text, summary = texts
    stamp = pa.array(seconds).cast(pa.timestamp("s"))
    review_time = _quoted(pc.strftime(stamp, format="%m %d, %Y"))
    unix = pc.cast(pa.array(seconds), pa.string())
    if layout == "2014":
        return [("reviewerID", _quoted(user)), ("asin", _quoted(item)), ("reviewerName", _quoted(name)),
                ("helpful", "[0, 0]"), ("reviewText", _quoted(text)), ("overall", stars),
                ("summary", _quoted(summary)), ("unixReviewTime", unix), ("reviewTime", review_time)]
    if layout == "2018":
        return [("overall", stars), ("verified", "true"), ("reviewTime", review_time), ("reviewerID", _quoted(user)),
                ("asin", _quoted(item)), ("reviewerName", _quoted(name)), ("reviewText", _quoted(text)),
                ("summary", _quoted(summary)), ("unixReviewTime", unix)]
    millis = pc.cast(pa.array(seconds * 1000), pa.string())
    return [("rating", stars), ("title", _quoted(summary)), ("text", _quoted(text)), ("images", "[]"),
            ("asin", _quoted(item)), ("parent_asin", _quoted(item)), ("user_id", _quoted(user)),
            ("timestamp", millis), ("helpful_vote", "0"), ("verified_purchase", "true")]


def _lines(fields: list[tuple[str, pa.Array | str]]) -> memoryview:
    """The chunk's JSON lines, each ending in a newline, as one buffer."""
    parts: list[pa.Array | str] = []
    for k, (key, value) in enumerate(fields):
        parts += ["{" if k == 0 else ", ", f'"{key}": ', value]
    joined = pc.binary_join_element_wise(*parts, "}\n", "")
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32)
    return memoryview(joined.buffers()[2])[offsets[joined.offset]:offsets[joined.offset + len(joined)]]


def write_reviews(path: Path, n: int, layout: str, users: int, items: int, seed: int, category_index: int = 0) -> Path:
    """Write `n` reviews of `items` items by reviewers of a pool of `users` to `path` (gzipped JSON lines)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    rng = np.random.default_rng([seed, category_index])
    user_of_rank = rng.permutation(users)
    user_ids = _padded("A", np.arange(users), 13)
    item_ids = _padded(f"B{category_index}", rng.permutation(items), 8)
    texts = (NAMES, _sentences(rng, 997, 12), _sentences(rng, 101, 3))
    with atomic_path(path) as tmp, open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1,
                                                                             mtime=0) as out:
        for start in range(0, n, CHUNK):
            size = min(CHUNK, n - start)
            user = user_ids.take(user_of_rank[_ranks(rng, users, size, USER_EXPONENT)])
            item = item_ids.take(_ranks(rng, items, size, ITEM_EXPONENT))
            stars = STARS.take(rng.choice(5, size=size, p=STAR_P))
            seconds = rng.integers(FIRST_TIME, LAST_TIME, size)
            chosen = tuple(t.take(rng.integers(0, len(t), size)) for t in texts)
            out.write(_lines(_fields(layout, user, item, stars, seconds, chosen)))
    return path


def pool_sizes(n: int) -> tuple[int, int]:
    """Default reviewer pool and item count for n reviews (a 5-core then keeps about 37 % of them)."""
    return max(n // 5, 10), max(n // 25, 10)


def write_pair(root: Path, n: int, layout: str, seed: int = 0) -> tuple[str, str]:
    """Two categories of n reviews each, sharing one pool of reviewers, under root/<category>/; their names."""
    pair = ("Scale_A", "Scale_B")
    users, items = pool_sizes(n)
    for index, category in enumerate(pair):
        write_reviews(root / category / file_name(category, layout), n, layout, users, items, seed, index)
    return pair


def main(argv: list[str] | None = None) -> None:
    """Command line: one category file."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="raw folder; the file goes to OUT/<category>/")
    parser.add_argument("--reviews", type=int, required=True, help="number of reviews N")
    parser.add_argument("--layout", choices=LAYOUTS, default="2014", help="release layout (default: 2014)")
    parser.add_argument("--category", default="Scale_A", help="category name (default: Scale_A)")
    parser.add_argument("--users", type=int, default=None, help="reviewer pool size (default: N // 5)")
    parser.add_argument("--items", type=int, default=None, help="number of items (default: N // 25)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    users, items = pool_sizes(args.reviews)
    users, items = args.users or users, args.items or items
    index = zlib.crc32(args.category.encode()) % 100
    path = args.out / args.category / file_name(args.category, args.layout)
    print(write_reviews(path, args.reviews, args.layout, users, items, args.seed, index))


if __name__ == "__main__":
    main()
