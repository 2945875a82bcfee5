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

Ratings: where some interactions of a domain have a rating and others none, the rating filter drops the rated ones
below `min_rating` and keeps the unrated ones (the manifest counts them); it is skipped only where none has one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from micrec_core import __version__
from micrec_core.amazon import find_file, image_dir, read_meta, read_reviews
from micrec_core.atomic import atomic_path, sha256_file, write_json
from micrec_core.synth import DOMAINS, synthesize

log = logging.getLogger("micrec.dataset")
SPLITS = ("train", "new", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif")


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
            warnings.append(
                f"{domain}: {unrated} of {len(rated)} interactions have no rating; they are kept, the rating >= "
                f"{params.min_rating:g} filter applies to the others"
            )
    else:
        warnings.append(
            f"{domain}: rating >= {params.min_rating:g} filter skipped: {unrated} of {len(frame)} "
            "interactions have no rating"
        )
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


def _require_nonempty(frame: pd.DataFrame, domain: str, step: str) -> None:
    """Fail with a message naming the domain and the step that emptied it."""
    if frame.empty:
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


def _find_image(folder: Path, item: str) -> str | None:
    """Absolute path of an item's local image file, if one exists."""
    for suffix in IMAGE_SUFFIXES:
        path = folder / f"{item}{suffix}"
        if path.is_file() and path.stat().st_size > 0:
            return str(path.resolve())
    return None


def attach_metadata(items: pd.DataFrame, meta: pd.DataFrame | None, images: Path) -> pd.DataFrame:
    """Join titles and other text fields from the metadata, and local image paths, onto the item table."""
    columns = ["title", "description", "categories", "brand"]
    if meta is None:
        joined = items.assign(**{c: pd.Series([None] * len(items), dtype="string") for c in columns})
    else:
        joined = items.merge(meta[["item_id", *columns]], on="item_id", how="left")
        for column in columns:
            joined[column] = joined[column].astype("string")
    paths = [_find_image(images, item) for item in joined["item_id"]] if images.is_dir() else [None] * len(joined)
    joined["image_path"] = pd.Series(paths, dtype="string")
    return joined[["item_id", "seen", *columns, "image_path"]]


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
        "text_coverage": float(items[["title", "description", "categories", "brand"]].notna().any(axis=1).sum())
        / n,
        "image_coverage": float(items["image_path"].notna().sum()) / n,
    }


def build_dataset(
    raw: Path,
    pair: tuple[str, str],
    out: Path,
    release: str = "2014",
    params: SplitParams | None = None,
    skip_bad_lines: bool = False,
) -> dict[str, Any]:
    """Build a cross-domain inductive dataset for a pair of categories; returns stats.json's content."""
    params = params or SplitParams()
    raw, out = Path(raw), Path(out)
    if len(pair) != 2 or pair[0] == pair[1]:
        raise ValueError(f"--pair needs two different domains, got {','.join(pair)!r}")
    manifest: dict[str, Any] = {
        "raw": str(raw.resolve()),
        "release": release,
        "pair": list(pair),
        "params": asdict(params),
        "code": code_version(),
        "sources": {},
        "warnings": [],
        "filter_steps": {},
        "read_reports": {},
    }
    tables: dict[str, tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]] = {}
    for domain in pair:
        reviews_path = find_file(raw, domain, release, "reviews")
        if reviews_path is None:
            raise FileNotFoundError(f"no {release} reviews file for domain {domain!r} under {raw} (or {raw / domain})")
        meta_path = find_file(raw, domain, release, "meta")
        reviews, review_report = read_reviews(reviews_path, release, skip_bad_lines)
        meta, meta_report = (None, None) if meta_path is None else read_meta(meta_path, release, skip_bad_lines)
        if meta_path is None:
            manifest["warnings"].append(f"{domain}: no metadata file found; items have no text")
        filtered, steps, warnings = filter_domain(reviews, domain, params)
        interactions, users, items = inductive_split(filtered, domain, params)
        items = attach_metadata(items, meta, image_dir(raw, domain))
        tables[domain] = (interactions, users, items)
        manifest["warnings"] += warnings
        manifest["filter_steps"][domain] = steps
        manifest["sources"][domain] = {
            p.name: sha256_file(p) for p in (reviews_path, meta_path) if p is not None
        }
        manifest["read_reports"][domain] = [asdict(r) for r in (review_report, meta_report) if r is not None]
        for report in manifest["read_reports"][domain]:
            report["path"] = Path(report["path"]).name
    seen_users = [set(u.loc[u["seen"], "user_id"]) for _, u, _ in tables.values()]
    present_users = [set(u["user_id"]) for _, u, _ in tables.values()]
    stats = {
        "domains": {d: domain_stats(*tables[d]) for d in pair},
        "overlap_users": len(seen_users[0] & seen_users[1]),
    }
    manifest["overlap_users_present_in_both"] = len(present_users[0] & present_users[1])
    for domain, (interactions, users, items) in tables.items():
        _write_parquet(interactions, out / domain / "interactions.parquet")
        _write_parquet(users, out / domain / "users.parquet")
        _write_parquet(items, out / domain / "items.parquet")
    manifest["outputs"] = {
        f"{d}/{name}": sha256_file(out / d / name)
        for d in pair
        for name in ("interactions.parquet", "users.parquet", "items.parquet")
    }
    write_json(out / "stats.json", stats)
    write_json(out / "manifest.json", manifest)
    for warning in manifest["warnings"]:
        log.warning(warning)
    return stats


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
    """Load one domain's parquet tables into index tensors."""
    folder = Path(dataset) / domain
    if not (folder / "interactions.parquet").is_file():
        raise FileNotFoundError(f"{folder / 'interactions.parquet'} not found: run `micrec data build` first")
    users = pd.read_parquet(folder / "users.parquet")
    items = pd.read_parquet(folder / "items.parquet")
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


def ensure_built(
    out: Path, raw: Path | None = None, pair: tuple[str, str] | None = None, release: str = "2014",
    params: SplitParams | None = None,
) -> Path:
    """Build `out` unless it already holds this build; with no `raw`, synthesise the default data beside it.

    A build is reused only when its manifest records the same raw folder, pair, release and parameters.
    """
    out, params = Path(out), params or SplitParams()
    if raw is None:
        raw = out.parent / f"{out.name}_raw"
        if not (raw / "SYNTHETIC.json").is_file():
            synthesize(raw, seed=0)
        pair = pair or (DOMAINS[0].name, DOMAINS[1].name)
    if pair is None:
        raise ValueError("pair is required when raw is given")
    manifest = out / "manifest.json"
    if manifest.is_file():
        saved = json.loads(manifest.read_text())
        same = (saved["raw"], saved["pair"], saved["release"], saved["params"]) == (
            str(Path(raw).resolve()), list(pair), release, asdict(params)
        )
        if same:
            return out
    build_dataset(Path(raw), pair, out, release, params)
    return out
