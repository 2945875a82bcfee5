"""Dataset construction (paper §5.1) and the inductive cross-domain split (paper §3).

Per domain: keep ratings >= 4 where ratings exist, then keep users and items with MORE than `min_count`
interactions, repeated until stable. Then, seeded: each user's interactions are split 70/10/20 at random, and
20% of users and 20% of items are drawn as unseen. With U_s, I_s the seen users and items:

- E_tr  = train interactions within U_s x I_s (the only edges training ever sees);
- E_new = the other train interactions, plus validation interactions that touch an unseen user or item
  (validation is defined on U_s x I_s only; those interactions are observed at inference rather than lost);
- E_val = validation interactions within U_s x I_s;
- E_test = all test interactions.

The overlapping users U_o of a pair are the users seen in both domains (the anchors of the contrastive loss).

Reading: by default a domain's reviews stream through pyarrow (:mod:`micrec_core.data.columnar`, only the id, rating and
time columns) and are filtered on integer codes (:func:`filter_columns`); ``engine="python"`` reads them with the line
reader of :mod:`micrec_core.data.amazon` and filters them with pandas (:func:`filter_domain`), the reference that builds
the same tables, stats and manifest byte for byte.

Ratings: where some interactions of a domain have a rating and others none, the rating filter drops the rated ones
below `min_rating` and keeps the unrated ones (the manifest counts them); it is skipped only where none has one.

Build folder. A build is written into a temporary folder beside `out` and swapped in whole
(:func:`micrec_core.data.atomic.atomic_folder`), under a lock beside `out`, so builds into one folder run one after the
other and a killed build leaves the previous build (or nothing), never a mix. `out` must be new, empty or a build;
a rebuild keeps what `micrec features` wrote there (hard links of its cache and per-domain features, which check
themselves against the new tables). The manifest records the sha256 of every table; :func:`ensure_built` reuses a
build only when its inputs match and :func:`build_problems` finds every table and image as built.

Identity. `dataset_sha256` hashes the tables only, and they hold no path outside the build: an item's image is
hard-linked (copied where the file system refuses a link) from RAW/<domain>/images/ into OUT/<domain>/images/, and
items.parquet stores its path relative to OUT ("<domain>/images/<file>"), so the same raw files give the same
dataset wherever they and the build lie, and a build moved or copied elsewhere keeps its images. The image files
themselves are not hashed into the identity (features hash each image's bytes); the manifest records their count,
size and a digest of their names and sizes, which :func:`build_problems` checks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from micrec_core import __version__
from micrec_core.data.amazon import find_file, image_dir, read_meta, read_reviews
from micrec_core.data.atomic import (
    Verdict,
    atomic_folder,
    atomic_path,
    check_layout,
    folder_lock,
    fsync_path,
    is_temp_name,
    sha256_file,
    write_json,
)
from micrec_core.data.columnar import ReviewColumns, scan_reviews
from micrec_core.data.synth import DOMAINS, synthesize

log = logging.getLogger("micrec.dataset")
SPLITS = ("train", "new", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif")
TEXT_COLUMNS = ["title", "description", "categories", "brand"]
TABLES = ("interactions.parquet", "users.parquet", "items.parquet")
BUILD_FORMAT = 2  # 2: image paths relative to the build, images linked into it


class EmptyDomainError(ValueError):
    """A domain lost every interaction under a filter step."""


@dataclass(frozen=True)
class SplitParams:
    """Parameters of dataset construction; serialised in every manifest."""

    seed: int = 0
    min_count: int = 10
    min_rating: float = 4.0
    train: float = 0.7
    val: float = 0.1
    test: float = 0.2
    unseen_users: float = 0.2
    unseen_items: float = 0.2


def _counts(frame: pd.DataFrame) -> dict[str, int]:
    """Users, items and interactions of an interaction frame."""
    return {
        "users": int(frame["user_id"].nunique()),
        "items": int(frame["item_id"].nunique()),
        "interactions": len(frame),
    }


def filter_domain(
    reviews: pd.DataFrame, domain: str, params: SplitParams
) -> tuple[pd.DataFrame, list[dict[str, Any]], list[str]]:
    """Rating filter then iterated k-core (> min_count); returns the frame, the steps taken and warnings."""
    steps: list[dict[str, Any]] = [{"step": "raw", **_counts(reviews)}]
    warnings: list[str] = []
    frame = reviews.drop_duplicates(["user_id", "item_id"], keep="first")
    steps.append({"step": "deduplicate (user, item)", **_counts(frame)})
    rated = frame["rating"].notna()
    unrated = int((~rated).sum())
    if rated.any():
        frame = frame[~rated | (frame["rating"] >= params.min_rating)]
        steps.append({"step": f"rating >= {params.min_rating:g}", **_counts(frame)})
        if unrated:
            steps[-1]["unrated_kept"] = unrated
    warnings.extend(_rating_warnings(domain, unrated, len(rated), params.min_rating))
    _require_nonempty(frame, domain, steps[-1]["step"])
    rounds = 0
    while True:
        user_deg = frame.groupby("user_id")["item_id"].transform("size")
        item_deg = frame.groupby("item_id")["user_id"].transform("size")
        keep = (user_deg > params.min_count) & (item_deg > params.min_count)
        if keep.all():
            break
        frame = frame[keep]
        rounds += 1
        _require_nonempty(frame, domain, f"more than {params.min_count} interactions (round {rounds})")
    steps.append({"step": f"users and items with > {params.min_count} interactions ({rounds} rounds)",
                  **_counts(frame)})
    return frame.reset_index(drop=True), steps, warnings


def _rating_warnings(domain: str, unrated: int, total: int, min_rating: float) -> list[str]:
    """The warnings of the rating filter step for `unrated` of `total` interactions without a rating."""
    if unrated == total:
        return [f"{domain}: rating >= {min_rating:g} filter skipped: {unrated} of {total} interactions have no rating"]
    if unrated:
        return [f"{domain}: {unrated} of {total} interactions have no rating; they are kept, the rating >= "
                f"{min_rating:g} filter applies to the others"]
    return []


def _code_counts(users: np.ndarray, items: np.ndarray) -> dict[str, int]:
    """Users, items and interactions of coded interaction columns."""
    return {
        "users": int(np.count_nonzero(np.bincount(users))),
        "items": int(np.count_nonzero(np.bincount(items))),
        "interactions": len(users),
    }


def filter_columns(
    reviews: ReviewColumns, domain: str, params: SplitParams
) -> tuple[pd.DataFrame, list[dict[str, Any]], list[str]]:
    """:func:`filter_domain` on coded columns (vectorised, for the arrow engine): the same frame (without the
    timestamp column, which nothing downstream reads), steps and warnings."""
    users, items, rating = reviews.users, reviews.items, reviews.rating
    rows = np.arange(len(users))
    steps: list[dict[str, Any]] = [{"step": "raw", **_code_counts(users, items)}]
    pair = users.astype(np.int64) * (int(items.max(initial=0)) + 1) + items
    rows = rows[~pd.Series(pair).duplicated(keep="first").to_numpy()]
    steps.append({"step": "deduplicate (user, item)", **_code_counts(users[rows], items[rows])})
    rated = ~np.isnan(rating[rows])
    unrated = int((~rated).sum())
    if rated.any():
        rows = rows[~rated | (rating[rows] >= params.min_rating)]
        steps.append({"step": f"rating >= {params.min_rating:g}", **_code_counts(users[rows], items[rows])})
        if unrated:
            steps[-1]["unrated_kept"] = unrated
    warnings = _rating_warnings(domain, unrated, len(rated), params.min_rating)
    _require_nonempty(rows, domain, steps[-1]["step"])
    rounds = 0
    while True:
        user_deg, item_deg = np.bincount(users[rows]), np.bincount(items[rows])
        keep = (user_deg[users[rows]] > params.min_count) & (item_deg[items[rows]] > params.min_count)
        if keep.all():
            break
        rows = rows[keep]
        rounds += 1
        _require_nonempty(rows, domain, f"more than {params.min_count} interactions (round {rounds})")
    steps.append({"step": f"users and items with > {params.min_count} interactions ({rounds} rounds)",
                  **_code_counts(users[rows], items[rows])})
    return reviews.frame(rows), steps, warnings


def _require_nonempty(frame: pd.DataFrame | np.ndarray, domain: str, step: str) -> None:
    """Fail with a message naming the domain and the step that emptied it."""
    if not len(frame):
        raise EmptyDomainError(f"domain {domain!r} has no interactions left after the filter step: {step}")


def _domain_rng(seed: int, domain: str) -> np.random.Generator:
    """A generator fixed by (seed, domain name), independent of the order domains are processed in."""
    return np.random.default_rng([seed, zlib.crc32(domain.encode())])


def _draw(ids: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask marking round(fraction * n) entries of sorted `ids` drawn uniformly."""
    mask = np.zeros(len(ids), dtype=bool)
    mask[rng.choice(len(ids), size=int(np.floor(fraction * len(ids) + 0.5)), replace=False)] = True
    return mask


def inductive_split(
    frame: pd.DataFrame, domain: str, params: SplitParams
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split one filtered domain; returns (interactions with split, users with seen, items with seen)."""
    rng = _domain_rng(params.seed, domain)
    frame = frame.sort_values(["user_id", "item_id"]).reset_index(drop=True)
    order = frame.assign(key=rng.random(len(frame))).sort_values(["user_id", "key"])
    position = order.groupby("user_id").cumcount().reindex(frame.index).to_numpy()
    size = frame.groupby("user_id")["item_id"].transform("size").to_numpy()
    n_test = np.floor(params.test * size + 0.5)
    n_val = np.floor(params.val * size + 0.5)
    split = np.where(position < n_test, "test", np.where(position < n_test + n_val, "val", "train"))

    users = np.sort(frame["user_id"].unique())
    items = np.sort(frame["item_id"].unique())
    user_unseen = _draw(users, params.unseen_users, rng)
    item_unseen = _draw(items, params.unseen_items, rng)
    seen_pair = ~(
        pd.Series(user_unseen, index=users).reindex(frame["user_id"]).to_numpy()
        | pd.Series(item_unseen, index=items).reindex(frame["item_id"]).to_numpy()
    )
    split = np.where((split == "train") & ~seen_pair, "new", split)
    split = np.where((split == "val") & ~seen_pair, "new", split)
    interactions = pd.DataFrame(
        {"user_id": frame["user_id"].astype("string"), "item_id": frame["item_id"].astype("string"),
         "split": pd.Series(split, dtype="string")}
    )
    user_frame = pd.DataFrame({"user_id": pd.Series(users, dtype="string"), "seen": ~user_unseen})
    item_frame = pd.DataFrame({"item_id": pd.Series(items, dtype="string"), "seen": ~item_unseen})
    return interactions, user_frame, item_frame


def _find_image(folder: Path, item: str) -> Path | None:
    """An item's local (non-empty) image file in `folder`, if one exists."""
    for suffix in IMAGE_SUFFIXES:
        path = folder / f"{item}{suffix}"
        if path.is_file() and path.stat().st_size > 0:
            return path
    return None


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` at `target`, or copy it (flushed to disk) where the file system refuses a link."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
        fsync_path(target)


def _link_images(item_ids: Iterable[str], source: Path, root: Path, domain: str) -> dict[str, str]:
    """Link (or copy) each item's local image from `source` into root/<domain>/images/; returns {item: the path
    relative to `root` that items.parquet stores}."""
    found = {item: path for item in item_ids if (path := _find_image(source, item))} if source.is_dir() else {}
    folder = root / domain / "images"
    if found:
        folder.mkdir(parents=True)
    for path in found.values():
        _link_or_copy(path, folder / path.name)
    return {item: f"{domain}/images/{path.name}" for item, path in found.items()}


def _image_listing(folder: Path) -> dict[str, Any]:
    """Count, total bytes and a digest of the names and sizes of the files in an images folder (cheap to check)."""
    digest, total, count = hashlib.sha256(), 0, 0
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}\n".encode())
        total, count = total + size, count + 1
    return {"files": count, "bytes": total, "names_sizes_sha256": digest.hexdigest()}


def attach_metadata(items: pd.DataFrame, meta: pd.DataFrame | None, images: dict[str, str]) -> pd.DataFrame:
    """Join titles and other text fields from the metadata, and the items' image paths, onto the item table."""
    if meta is None:
        joined = items.assign(**{c: pd.Series([None] * len(items), dtype="string") for c in TEXT_COLUMNS})
    else:
        joined = items.merge(meta[["item_id", *TEXT_COLUMNS]], on="item_id", how="left")
        for column in TEXT_COLUMNS:
            joined[column] = joined[column].astype("string")
    joined["image_path"] = pd.Series([images.get(item) for item in joined["item_id"]], dtype="string")
    return joined[["item_id", "seen", *TEXT_COLUMNS, "image_path"]]


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write a parquet file atomically (same frame, same bytes)."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False, engine="pyarrow", compression="zstd")


def _git_commit() -> str | None:
    """The commit of the code that runs: $MICREC_GIT_COMMIT when set (a copied tree whose .git may be stale, as on
    the device machine), else HEAD of the git checkout it lives in, if any."""
    if os.environ.get("MICREC_GIT_COMMIT"):
        return os.environ["MICREC_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def code_version() -> dict[str, str | None]:
    """Package version and git commit, for manifests and run provenance."""
    return {"micrec": __version__, "git_commit": _git_commit()}


def domain_stats(interactions: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> dict[str, Any]:
    """The per-domain block of stats.json."""
    counts = interactions["split"].value_counts()
    n = len(items)
    return {
        "users": len(users),
        "items": n,
        "E_tr": int(counts.get("train", 0)),
        "E_new": int(counts.get("new", 0)),
        "E_val": int(counts.get("val", 0)),
        "E_test": int(counts.get("test", 0)),
        "text_coverage": float(items[TEXT_COLUMNS].notna().any(axis=1).sum()) / n,
        "image_coverage": float(items["image_path"].notna().sum()) / n,
    }


def _check_pair(pair: tuple[str, ...]) -> None:
    """A pair is two different domain names."""
    if len(pair) != 2 or pair[0] == pair[1]:
        raise ValueError(f"--pair needs two different domains, got {','.join(pair)!r}")


def _build_entry(out: Path, path: Path) -> Verdict:
    """What a build folder may hold (`check_layout`): manifest and stats, the feature cache, and per domain its
    tables, images and features; temporaries of atomic writes anywhere."""
    depth = len(path.relative_to(out).parts)
    if is_temp_name(path.name):
        return "keep"
    if depth == 1:
        top = ("manifest.json", "stats.json") if path.is_file() else ("cache",) if path.is_dir() else ()
        if path.name in top:
            return "keep"
        return "open" if path.is_dir() else "foreign"
    ours = (path.is_file() and path.name in TABLES) or (path.is_dir() and path.name in ("images", "features"))
    return "keep" if ours else "foreign"


def _keep_features(old: Path, new: Path, domains: Iterable[str]) -> None:
    """Hard-link what `micrec features` wrote into the old build (its cache, keyed by content, and each domain's
    features, which `load_features` checks against the new items.parquet) into the new one."""
    for part in ["cache", *(f"{domain}/features" for domain in domains)]:
        if (old / part).is_dir():
            shutil.copytree(old / part, new / part, copy_function=os.link)


# How a build reads and filters reviews: arrow (micrec_core.data.columnar) by default; python (the line reader and
# pandas) is the reference that tests and the benchmark hold arrow to.
ENGINES: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "arrow": (scan_reviews, filter_columns),
    "python": (read_reviews, filter_domain),
}


def build_dataset(
    raw: Path,
    pair: tuple[str, str],
    out: Path,
    release: str = "2014",
    params: SplitParams | None = None,
    skip_bad_lines: bool = False,
    engine: str = "arrow",
) -> dict[str, Any]:
    """Build a cross-domain inductive dataset for a pair of categories into `out` (atomically, one build at a time);
    returns stats.json's content. Every engine (:data:`ENGINES`) builds the same dataset."""
    _check_pair(pair)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    with folder_lock(out):
        return _build(Path(raw), pair, Path(out), release, params or SplitParams(), skip_bad_lines, engine)


def _build(
    raw: Path, pair: tuple[str, str], out: Path, release: str, params: SplitParams, skip_bad_lines: bool,
    engine: str = "arrow",
) -> dict[str, Any]:
    """build_dataset's work, with the lock on `out` held."""
    check_layout(out, lambda path: _build_entry(out, path), "a dataset built by micrec")
    manifest: dict[str, Any] = {
        "format": BUILD_FORMAT,
        "raw": str(raw.resolve()),
        "release": release,
        "pair": list(pair),
        "params": asdict(params),
        "code": code_version(),
        "sources": {},
        "warnings": [],
        "filter_steps": {},
        "read_reports": {},
        "coverage": {},
        "images": {},
    }
    splits: dict[str, tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]] = {}
    metas: dict[str, tuple[Path | None, pd.DataFrame | None]] = {}
    for domain in pair:
        reviews_path = find_file(raw, domain, release, "reviews")
        if reviews_path is None:
            raise FileNotFoundError(f"no {release} reviews file for domain {domain!r} under {raw} (or {raw / domain})")
        meta_path = find_file(raw, domain, release, "meta")
        read, filter_reviews = ENGINES[engine]
        reviews, review_report = read(reviews_path, release, skip_bad_lines)
        meta, meta_report = (None, None) if meta_path is None else read_meta(meta_path, release, skip_bad_lines)
        if meta_path is None:
            manifest["warnings"].append(f"{domain}: no metadata file found; items have no text")
        filtered, steps, warnings = filter_reviews(reviews, domain, params)
        splits[domain] = inductive_split(filtered, domain, params)
        metas[domain] = (meta_path, meta)
        manifest["warnings"] += warnings
        manifest["filter_steps"][domain] = steps
        manifest["sources"][domain] = {
            p.name: sha256_file(p) for p in (reviews_path, meta_path) if p is not None
        }
        manifest["read_reports"][domain] = [asdict(r) for r in (review_report, meta_report) if r is not None]
        for report in manifest["read_reports"][domain]:
            report["path"] = Path(report["path"]).name
    with atomic_folder(out) as tmp:
        tables: dict[str, tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]] = {}
        for domain, (interactions, users, items) in splits.items():
            images = _link_images(items["item_id"], image_dir(raw, domain), tmp, domain)
            items = attach_metadata(items, metas[domain][1], images)
            tables[domain] = (interactions, users, items)
            for name, frame in zip(TABLES, tables[domain], strict=True):
                _write_parquet(frame, tmp / domain / name)
            manifest["images"][domain] = _image_listing(tmp / domain / "images")
        seen_users = [set(u.loc[u["seen"], "user_id"]) for _, u, _ in tables.values()]
        present_users = [set(u["user_id"]) for _, u, _ in tables.values()]
        stats = {
            "domains": {d: domain_stats(*tables[d]) for d in pair},
            "overlap_users": len(seen_users[0] & seen_users[1]),
        }
        manifest["overlap_users_present_in_both"] = len(present_users[0] & present_users[1])
        for domain in pair:
            block = stats["domains"][domain]
            manifest["coverage"][domain] = {"text": block["text_coverage"], "image": block["image_coverage"]}
            meta_path = metas[domain][0]
            if meta_path is not None and block["text_coverage"] == 0:
                manifest["warnings"].append(
                    f"{domain}: no item has usable text (title, description, categories or brand) in "
                    f"{meta_path.name}; the text modality of this domain is empty"
                )
        manifest["outputs"] = {f"{d}/{name}": sha256_file(tmp / d / name) for d in pair for name in TABLES}
        write_json(tmp / "stats.json", stats)
        write_json(tmp / "manifest.json", manifest)
        _keep_features(out, tmp, pair)
    for warning in manifest["warnings"]:
        log.warning(warning)
    return stats


def build_problems(dataset: Path) -> list[str]:
    """What differs in a built dataset from its manifest: tables missing or not matching their recorded sha256,
    image files vanished or changed in size since the build. Empty when the build is intact."""
    dataset = Path(dataset)
    try:
        manifest = json.loads((dataset / "manifest.json").read_text())
        outputs, images = dict(manifest["outputs"]), dict(manifest.get("images", {}))
    except (OSError, ValueError, KeyError, TypeError) as err:
        return [f"{dataset / 'manifest.json'} is missing or unreadable ({type(err).__name__}: {err})"]
    problems = []
    for name, digest in sorted(outputs.items()):
        path = dataset / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif sha256_file(path) != digest:
            problems.append(f"{path} does not match the sha256 its manifest records (changed or corrupt)")
    for domain, built in sorted(images.items()):
        now = _image_listing(dataset / domain / "images")
        if now != built:
            problems.append(f"{dataset / domain / 'images'}: image files vanished or changed since the build "
                            f"({now['files']} of {built['files']} files, {now['bytes']} of {built['bytes']} bytes)")
    return problems


@dataclass
class DomainData:
    """One domain of a built dataset as index tensors; row order of users/items.parquet defines the indices."""

    name: str
    user_ids: list[str]
    item_ids: list[str]
    user_seen: torch.Tensor
    item_seen: torch.Tensor
    edges: dict[str, torch.Tensor]
    items: pd.DataFrame

    @property
    def n_users(self) -> int:
        """Number of users (seen and unseen)."""
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        """Number of items (seen and unseen)."""
        return len(self.item_ids)

    def edges_of(self, *splits: str) -> torch.Tensor:
        """The [2, E] (user, item) index pairs of the given splits, concatenated."""
        return torch.cat([self.edges[s] for s in splits], dim=1)


@dataclass
class PairData:
    """A built cross-domain dataset: two domains and the index pairs of their overlapping (seen) users."""

    path: Path
    domains: tuple[DomainData, DomainData]
    overlap: torch.Tensor
    stats: dict[str, Any]


def load_domain(dataset: Path, domain: str) -> DomainData:
    """Load one domain's parquet tables into index tensors; the items' image paths, stored relative to the build,
    are made absolute (under `dataset`) so that they open from any working directory."""
    folder = Path(dataset) / domain
    if not (folder / "interactions.parquet").is_file():
        raise FileNotFoundError(f"{folder / 'interactions.parquet'} not found: run `micrec data build` first")
    users = pd.read_parquet(folder / "users.parquet")
    items = pd.read_parquet(folder / "items.parquet")
    root = Path(dataset).resolve()
    items["image_path"] = items["image_path"].map(lambda path: str(root / path), na_action="ignore").astype("string")
    interactions = pd.read_parquet(folder / "interactions.parquet")
    user_index = pd.Series(np.arange(len(users)), index=users["user_id"])
    item_index = pd.Series(np.arange(len(items)), index=items["item_id"])
    u = torch.tensor(user_index.reindex(interactions["user_id"]).to_numpy(), dtype=torch.long)
    i = torch.tensor(item_index.reindex(interactions["item_id"]).to_numpy(), dtype=torch.long)
    split = interactions["split"].to_numpy()
    edges = {s: torch.stack([u[split == s], i[split == s]]) for s in SPLITS}
    return DomainData(
        name=domain,
        user_ids=users["user_id"].tolist(),
        item_ids=items["item_id"].tolist(),
        user_seen=torch.tensor(users["seen"].to_numpy(dtype=bool)),
        item_seen=torch.tensor(items["seen"].to_numpy(dtype=bool)),
        edges=edges,
        items=items,
    )


def load_pair(dataset: Path) -> PairData:
    """Load a dataset built by `build_dataset`; U_o = users seen in both domains, as (index in A, index in B)."""
    dataset = Path(dataset)
    stats_path = dataset / "stats.json"
    if not stats_path.is_file():
        raise FileNotFoundError(f"{stats_path} not found: is {dataset} a dataset built by `micrec data build`?")
    stats = json.loads(stats_path.read_text())
    a, b = (load_domain(dataset, name) for name in stats["domains"])
    seen_b = {user: k for k, user in enumerate(b.user_ids) if b.user_seen[k]}
    pairs = [(k, seen_b[user]) for k, user in enumerate(a.user_ids) if a.user_seen[k] and user in seen_b]
    overlap = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
    return PairData(path=dataset, domains=(a, b), overlap=overlap, stats=stats)


def dataset_sha256(dataset: Path) -> str:
    """One hash over the tables that define a built dataset (manifest outputs, in a fixed order)."""
    digest = hashlib.sha256()
    for path in sorted(Path(dataset).glob("*/*.parquet")):
        digest.update(f"{path.parent.name}/{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _reusable(out: Path, raw: Path, pair: tuple[str, str], release: str, params: SplitParams) -> bool:
    """Whether `out` holds an intact build of these inputs (a damaged one is logged as a warning)."""
    path = out / "manifest.json"
    if not path.is_file():
        return False
    try:
        saved = json.loads(path.read_text())
    except ValueError as err:
        log.warning("rebuilding %s: %s is unreadable (%s)", out, path, err)
        return False
    wanted = {"format": BUILD_FORMAT, "raw": str(raw.resolve()), "pair": list(pair), "release": release,
              "params": asdict(params)}
    if not isinstance(saved, dict) or {key: saved.get(key) for key in wanted} != wanted:
        log.info("%s holds a build of other inputs or of an older layout; rebuilding it", out)
        return False
    problems = build_problems(out)
    for problem in problems:
        log.warning("rebuilding %s: %s", out, problem)
    return not problems


def ensure_built(
    out: Path, raw: Path | None = None, pair: tuple[str, str] | None = None, release: str = "2014",
    params: SplitParams | None = None,
) -> Path:
    """Build `out` unless it already holds this build; with no `raw`, synthesise the default data beside it.

    A build is reused only when its manifest records the same raw folder, pair, release, parameters and layout, and
    its tables and images are as the manifest records them (:func:`build_problems`); otherwise it is rebuilt.
    """
    out, params = Path(out), params or SplitParams()
    with folder_lock(out):
        if raw is None:
            raw = out.parent / f"{out.name}_raw"
            if not (raw / "SYNTHETIC.json").is_file():
                synthesize(raw, seed=0)
            pair = pair or (DOMAINS[0].name, DOMAINS[1].name)
        if pair is None:
            raise ValueError("pair is required when raw is given")
        _check_pair(pair)
        raw = Path(raw)
        if not _reusable(out, raw, pair, release, params):
            _build(raw, pair, out, release, params, skip_bad_lines=False)
    return out
