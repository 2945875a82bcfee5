"""Shared fixtures: a tiny built cross-domain dataset with random item features, and a spy on fsync and rename."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from micrec_core.data.dataset import PairData, SplitParams, build_dataset, load_pair
from micrec_core.data.features import encode_features
from micrec_core.models.micrec import ItemModalities


def write_random_domain(root: Path, name: str, seed: int, n_users: int = 90, n_items: int = 50, n: int = 2600) -> None:
    """A random long-tailed domain in the 2014 layout; user ids are shared across domains."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n)
    items = (rng.zipf(1.3, n) + users) % n_items
    lines = [
        json.dumps({"reviewerID": f"u{u:03d}", "asin": f"{name}{i:03d}", "overall": 5.0})
        for u, i in zip(users, items, strict=True)
    ]
    folder = root / name
    folder.mkdir(parents=True)
    (folder / f"reviews_{name}_5.json.gz").write_bytes(gzip.compress("\n".join(lines).encode(), mtime=0))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A built pair of two small random domains (min_count 5)."""
    root = tmp_path_factory.mktemp("tiny")
    write_random_domain(root / "raw", "A", seed=1)
    write_random_domain(root / "raw", "B", seed=2)
    build_dataset(root / "raw", ("A", "B"), root / "built", params=SplitParams(seed=0, min_count=5))
    return root / "built"


@pytest.fixture(scope="session")
def text_only_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pair like Beauty x Electronics: titles in domain A only, no image anywhere; features encoded."""
    root = tmp_path_factory.mktemp("text_only")
    write_random_domain(root / "raw", "A", seed=1)
    write_random_domain(root / "raw", "B", seed=2)
    titles = "\n".join(repr({"asin": f"A{i:03d}", "title": f"{colour} toy number {i}"})
                       for i, colour in zip(range(50), ["red", "blue", "green", "wooden", "plush"] * 10, strict=True))
    (root / "raw" / "A" / "meta_A.json.gz").write_bytes(gzip.compress(titles.encode(), mtime=0))
    build_dataset(root / "raw", ("A", "B"), root / "built", params=SplitParams(seed=0, min_count=5))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        encode_features(root / "built", device="cpu")
    return root / "built"


@pytest.fixture
def tiny_pair(tiny_dataset: Path) -> PairData:
    """The tiny pair loaded as tensors."""
    return load_pair(tiny_dataset)


def random_features(pair: PairData, seed: int = 0) -> list[ItemModalities]:
    """Random text/image features per item; a few items lack a modality."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for data in pair.domains:
        n = data.n_items
        text_mask = torch.rand(n, generator=gen) > 0.1
        image_mask = torch.rand(n, generator=gen) > 0.2
        out.append(
            ItemModalities(
                torch.randn(n, 8, generator=gen) * text_mask.unsqueeze(1), text_mask,
                torch.randn(n, 6, generator=gen) * image_mask.unsqueeze(1), image_mask,
            )
        )
    return out


@pytest.fixture
def durability_events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Each os.fsync and os.replace the test makes, in order, with the inode it acted on: a file written durably is
    fsynced before it is renamed to its final name."""
    events: list[tuple[str, int]] = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd: int) -> None:
        events.append(("fsync", os.fstat(fd).st_ino))
        fsync(fd)

    def spy_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append(("replace", os.stat(src).st_ino))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    return events
