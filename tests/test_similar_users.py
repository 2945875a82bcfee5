"""The §5.4 overlap study: shares and Jaccard overlaps against a hand count."""

from __future__ import annotations

import pytest
import torch

from micrec_core.evaluation.similar_users import histories, overlap


def test_overlap_by_hand() -> None:
    edges = torch.tensor([[0, 0, 1, 1, 2, 2, 0], [0, 1, 1, 2, 3, 4, 0]])  # a repeated edge counts once
    history = histories(edges, 3)
    assert history == [[0, 1], [1, 2], [3, 4]]
    index = torch.tensor([[1, 2], [0, 2], [0, 1]])  # each user's ranked similar users
    valid = torch.tensor([[True, True], [True, True], [True, False]])
    summary, by_rank = overlap(history, 5, index, valid, chunk=2)
    assert summary["top-1 shares >= 1 item"] == pytest.approx(2 / 3)  # users 0 and 1 share item 1; user 2 none
    assert summary["random user shares >= 1 item"] == pytest.approx(2 / 6)  # 2 of the 6 ordered pairs
    assert summary["some user shares >= 1 item (ceiling)"] == pytest.approx(2 / 3)
    assert summary["Jaccard, top-1"] == pytest.approx((1 / 3 + 1 / 3 + 0) / 3)
    assert summary["Jaccard, random user"] == pytest.approx((1 / 3 + 1 / 3) / 6)
    assert by_rank["shares >= 1 item"].tolist() == pytest.approx([2 / 3, 0.0])  # rank 2 counts valid slots only
