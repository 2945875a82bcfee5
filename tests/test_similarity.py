"""Tests for micrec_core.models.similarity: user features from incomplete item features, renormalised
multimodal similarity and deterministic top-K neighbours (§4.2), each checked against a plain loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from micrec_core.models.similarity import modality_similarity, top_k_neighbours, top_k_similar, user_features


def hand_user_features(
    users: list[int], items: list[int], n_users: int, feat: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: for each user, the mean over the *set* of interacted items that have the modality."""
    out = torch.zeros(n_users, feat.shape[1], dtype=feat.dtype)
    has = torch.zeros(n_users, dtype=torch.bool)
    for user in range(n_users):
        mine = sorted({i for u, i in zip(users, items, strict=True) if u == user and bool(mask[i])})
        if mine:
            out[user] = feat[mine].mean(dim=0)
            has[user] = True
    return out, has


def hand_similarity(
    ta: torch.Tensor,
    mta: torch.Tensor,
    va: torch.Tensor,
    mva: torch.Tensor,
    tb: torch.Tensor,
    mtb: torch.Tensor,
    vb: torch.Tensor,
    mvb: torch.Tensor,
    w: float,
) -> torch.Tensor:
    """Reference: w*c_text + (1-w)*c_image with weights renormalised over the shared modalities."""
    out = torch.empty(ta.shape[0], tb.shape[0], dtype=torch.float64)
    for a in range(ta.shape[0]):
        for b in range(tb.shape[0]):
            terms = []
            if mta[a] and mtb[b]:
                terms.append((w, F.cosine_similarity(ta[a], tb[b], dim=0).item()))
            if mva[a] and mvb[b]:
                terms.append((1 - w, F.cosine_similarity(va[a], vb[b], dim=0).item()))
            weight = sum(t[0] for t in terms)
            out[a, b] = sum(t[0] * t[1] for t in terms) / weight if terms else -math.inf
    return out


def hand_top_k(
    sim: torch.Tensor, k: int, candidates: torch.Tensor, exclude_self: bool
) -> tuple[list[list[int]], list[list[bool]]]:
    """Reference: sort eligible finite columns by (-similarity, index), pad with (0, False)."""
    indices, valid = [], []
    for a in range(sim.shape[0]):
        eligible = [
            b
            for b in range(sim.shape[1])
            if candidates[b] and not (exclude_self and a == b) and math.isfinite(sim[a, b].item())
        ]
        best = sorted(eligible, key=lambda b: (-sim[a, b].item(), b))[:k]
        indices.append(best + [0] * (k - len(best)))
        valid.append([True] * len(best) + [False] * (k - len(best)))
    return indices, valid


# ---------------------------------------------------------------------------------- user features


def test_user_features_match_hand_loop_with_missing_modalities() -> None:
    generator = torch.Generator().manual_seed(0)
    n_users, n_items = 7, 9
    feat = torch.randn(n_items, 5, generator=generator)
    mask = torch.tensor([True, False, True, True, False, True, True, True, False])
    feat[~mask] = 0.0
    users = [0, 0, 0, 1, 1, 2, 3, 3, 3, 5, 5, 6, 6]
    items = [0, 2, 0, 1, 4, 8, 3, 5, 6, 1, 7, 7, 7]  # user 0 repeats item 0, users 1/2 only see masked items
    got, has = user_features(torch.tensor(users), torch.tensor(items), n_users, feat, mask)
    want, want_has = hand_user_features(users, items, n_users, feat, mask)
    torch.testing.assert_close(got, want)
    assert has.tolist() == want_has.tolist() == [True, False, False, True, False, True, True]
    assert not got[~has].any()


def test_user_features_ignore_features_of_masked_items() -> None:
    feat = torch.tensor([[1.0, 0.0], [100.0, 100.0], [0.0, 3.0]])
    mask = torch.tensor([True, False, True])
    got, has = user_features(torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2]), 1, feat, mask)
    torch.testing.assert_close(got, torch.tensor([[0.5, 1.5]]))
    assert has.tolist() == [True]


def test_user_features_random_graph_against_hand_loop() -> None:
    generator = torch.Generator().manual_seed(1)
    n_users, n_items, n_edges = 30, 20, 120
    users = torch.randint(0, n_users, (n_edges,), generator=generator)
    items = torch.randint(0, n_items, (n_edges,), generator=generator)
    feat = torch.randn(n_items, 4, generator=generator, dtype=torch.float64)
    mask = torch.rand(n_items, generator=generator) > 0.4
    got, has = user_features(users, items, n_users, feat, mask)
    want, want_has = hand_user_features(users.tolist(), items.tolist(), n_users, feat, mask)
    torch.testing.assert_close(got, want)
    assert has.tolist() == want_has.tolist()


def test_user_features_width_zero_and_no_edges() -> None:
    got, has = user_features(
        torch.tensor([0, 1]), torch.tensor([0, 0]), 3, torch.zeros(2, 0), torch.zeros(2, dtype=torch.bool)
    )
    assert got.shape == (3, 0) and has.tolist() == [False, False, False]
    empty = torch.zeros(0, dtype=torch.long)
    got, has = user_features(empty, empty, 2, torch.ones(3, 4), torch.ones(3, dtype=torch.bool))
    assert not got.any() and has.tolist() == [False, False]


def test_user_features_reject_bad_input() -> None:
    feat, mask = torch.ones(3, 2), torch.ones(3, dtype=torch.bool)
    with pytest.raises(ValueError, match="item_idx out of range"):
        user_features(torch.tensor([0]), torch.tensor([3]), 1, feat, mask)
    with pytest.raises(ValueError, match="user_idx out of range"):
        user_features(torch.tensor([2]), torch.tensor([0]), 2, feat, mask)
    with pytest.raises(ValueError, match="int64"):
        user_features(torch.tensor([0.0]), torch.tensor([0]), 1, feat, mask)
    with pytest.raises(ValueError, match="item_feat mask"):
        user_features(torch.tensor([0]), torch.tensor([0]), 1, feat, torch.ones(2, dtype=torch.bool))


# ------------------------------------------------------------------------------------- similarity


def random_side(n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Text (width 6) and image (width 4) features with random masks, masked rows zeroed."""
    text, image = torch.randn(n, 6, generator=generator), torch.randn(n, 4, generator=generator)
    text_mask, image_mask = torch.rand(n, generator=generator) > 0.3, torch.rand(n, generator=generator) > 0.3
    return text * text_mask[:, None], text_mask, image * image_mask[:, None], image_mask


def test_similarity_renormalises_over_shared_modalities() -> None:
    ta = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    mta = torch.tensor([True, True, False, False])
    va = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    mva = torch.tensor([True, False, True, False])
    tb = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    mtb = torch.tensor([True, False])
    vb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mvb = torch.tensor([True, True])
    sim = modality_similarity(ta, mta, va, mva, tb, mtb, vb, mvb, w=0.8)
    c = 1 / math.sqrt(2)
    expected = torch.tensor(
        [
            [0.8 * c + 0.2 * c, c],  # both modalities; image only (b1 has no text)
            [c, -math.inf],  # text only; nothing shared
            [1.0, 0.0],  # image only
            [-math.inf, -math.inf],  # entity without any modality
        ]
    )
    torch.testing.assert_close(sim, expected)


def test_similarity_matches_hand_loop_on_random_data() -> None:
    generator = torch.Generator().manual_seed(2)
    side_a, side_b = random_side(9, generator), random_side(7, generator)
    sim = modality_similarity(*side_a, *side_b, w=0.7)
    torch.testing.assert_close(sim.double(), hand_similarity(*side_a, *side_b, w=0.7), atol=1e-6, rtol=1e-5)
    chunked = modality_similarity(*side_a, *side_b, w=0.7, chunk_size=2)
    torch.testing.assert_close(chunked, sim)


def test_dropping_a_modality_gives_the_other_cosine_alone() -> None:
    generator = torch.Generator().manual_seed(3)
    _, _, image, image_mask = random_side(5, generator)
    text, text_mask = torch.randn(5, 6, generator=generator), torch.ones(5, dtype=torch.bool)
    no_image = torch.zeros(5, dtype=torch.bool)
    text_only = modality_similarity(text, text_mask, image, no_image, text, text_mask, image, no_image)
    torch.testing.assert_close(text_only, F.normalize(text, dim=1) @ F.normalize(text, dim=1).T)
    width_zero = modality_similarity(
        text, text_mask, torch.zeros(5, 0), no_image, text, text_mask, torch.zeros(5, 0), no_image
    )
    torch.testing.assert_close(width_zero, text_only)
    no_text = torch.zeros(5, dtype=torch.bool)
    image_only = modality_similarity(text, no_text, image, image_mask, text, no_text, image, image_mask)
    cos = F.normalize(image, dim=1) @ F.normalize(image, dim=1).T
    shared = image_mask[:, None] & image_mask[None, :]
    torch.testing.assert_close(image_only, torch.where(shared, cos, -math.inf))


def test_similarity_rejects_bad_input() -> None:
    t, m = torch.ones(2, 3), torch.ones(2, dtype=torch.bool)
    with pytest.raises(ValueError, match="w must lie in"):
        modality_similarity(t, m, t, m, t, m, t, m, w=1.0)
    with pytest.raises(ValueError, match="width 0"):
        modality_similarity(t, m, torch.zeros(2, 0), m, t, m, torch.zeros(2, 0), m)
    with pytest.raises(ValueError, match="widths differ"):
        modality_similarity(t, m, t, m, torch.ones(2, 4), m, t, m)
    with pytest.raises(ValueError, match="text_b mask"):
        modality_similarity(t, m, t, m, t, m.float(), t, m)


# ---------------------------------------------------------------------------------------- top-k


def test_top_k_excludes_self_respects_candidates_and_marks_invalid_slots() -> None:
    sim = torch.tensor(
        [
            [9.0, 0.5, 0.7, 0.1],
            [0.5, 9.0, -math.inf, 0.2],
            [-math.inf, -math.inf, 9.0, -math.inf],
            [0.3, 0.4, 0.3, 9.0],
        ]
    )
    candidates = torch.tensor([True, True, True, False])
    indices, valid = top_k_neighbours(sim, 2, candidates, exclude_self=True)
    assert indices.tolist() == [[2, 1], [0, 0], [0, 0], [1, 0]]
    assert valid.tolist() == [[True, True], [True, False], [False, False], [True, True]]
    assert indices.dtype == torch.long and valid.dtype == torch.bool


def test_top_k_breaks_ties_by_lower_index_and_is_deterministic() -> None:
    sim = torch.tensor([[0.5, 0.9, 0.5, 0.9, 0.5, 0.1], [0.2, 0.2, 0.2, 0.2, 0.2, 0.2]])
    indices, valid = top_k_neighbours(sim, 3, torch.ones(6, dtype=torch.bool), exclude_self=False)
    assert indices.tolist() == [[1, 3, 0], [0, 1, 2]] and valid.all()
    again, _ = top_k_neighbours(sim, 3, torch.ones(6, dtype=torch.bool), exclude_self=False, chunk_size=1)
    assert torch.equal(indices, again)


def test_top_k_matches_reference_on_random_matrices_with_ties() -> None:
    generator = torch.Generator().manual_seed(4)
    sim = torch.round(torch.rand(40, 40, generator=generator) * 4) / 4  # many ties
    sim[torch.rand(40, 40, generator=generator) < 0.2] = -math.inf
    sim[5] = -math.inf
    sim[7, 3] = math.nan
    candidates = torch.rand(40, generator=generator) > 0.25
    for exclude_self in (True, False):
        for chunk_size in (1, 7, 2048):
            indices, valid = top_k_neighbours(sim, 6, candidates, exclude_self, chunk_size=chunk_size)
            want_indices, want_valid = hand_top_k(sim, 6, candidates, exclude_self)
            assert indices.tolist() == want_indices and valid.tolist() == want_valid


def test_top_k_with_k_larger_than_columns_pads_invalid() -> None:
    sim = torch.tensor([[0.1, 0.3], [0.2, -math.inf]])
    indices, valid = top_k_neighbours(sim, 4, torch.ones(2, dtype=torch.bool), exclude_self=False)
    assert indices.tolist() == [[1, 0, 0, 0], [0, 0, 0, 0]]
    assert valid.tolist() == [[True, True, False, False], [True, False, False, False]]


def test_top_k_rejects_bad_input() -> None:
    sim = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="square"):
        top_k_neighbours(torch.zeros(4, 3), 1, torch.ones(3, dtype=torch.bool), exclude_self=True)
    with pytest.raises(ValueError, match="candidates"):
        top_k_neighbours(sim, 1, torch.ones(2, dtype=torch.bool), exclude_self=False)
    with pytest.raises(ValueError, match="k must be"):
        top_k_neighbours(sim, 0, torch.ones(3, dtype=torch.bool), exclude_self=False)


def test_pipeline_gives_no_neighbours_to_entities_without_modalities() -> None:
    generator = torch.Generator().manual_seed(5)
    item_text, item_text_mask, item_image, item_image_mask = random_side(12, generator)
    users = torch.tensor([0, 0, 1, 2, 2, 3])
    items = torch.tensor([0, 1, 2, 3, 4, 5])
    item_text_mask[2] = item_image_mask[2] = False  # user 1 only saw an item without attributes
    ut, mut = user_features(users, items, 5, item_text, item_text_mask)
    uv, muv = user_features(users, items, 5, item_image, item_image_mask)
    sim = modality_similarity(ut, mut, uv, muv, ut, mut, uv, muv)
    indices, valid = top_k_neighbours(sim, 2, torch.ones(5, dtype=torch.bool), exclude_self=True)
    assert not valid[1].any() and not valid[4].any()  # user 4 has no interactions at all
    usable = (mut | muv).tolist()
    for user in (0, 2, 3):
        assert all(usable[j] for j, ok in zip(indices[user].tolist(), valid[user].tolist(), strict=True) if ok)


@pytest.mark.parametrize("budget", [1, 7 * 50, 1 << 26])
def test_top_k_similar_in_blocks_equals_ranking_the_whole_matrix(budget: int) -> None:
    gen = torch.Generator().manual_seed(budget)
    n = 50
    text, img = torch.randn(n, 6, generator=gen), torch.randn(n, 4, generator=gen)
    text_mask, img_mask = torch.rand(n, generator=gen) > 0.2, torch.rand(n, generator=gen) > 0.3
    text_mask[:3] = img_mask[:3] = False  # three entities share no modality with anyone
    img[10] = img[11]  # a tie
    candidates = torch.rand(n, generator=gen) > 0.1
    sim = modality_similarity(text, text_mask, img, img_mask, text, text_mask, img, img_mask, w=0.7)
    expected = top_k_neighbours(sim, 5, candidates, exclude_self=True)
    got = top_k_similar(text, text_mask, img, img_mask, 5, candidates, w=0.7, budget=budget)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_top_k_excludes_self_at_a_row_offset() -> None:
    sim = torch.arange(12.0).reshape(2, 6)  # rows 3 and 4 of a 6 x 6 matrix
    index, valid = top_k_neighbours(sim, 2, torch.ones(6, dtype=torch.bool), exclude_self=True, row_offset=3)
    assert index.tolist() == [[5, 4], [5, 3]] and valid.all()
    with pytest.raises(ValueError, match="exclude_self"):
        top_k_neighbours(sim, 2, torch.ones(6, dtype=torch.bool), exclude_self=True, row_offset=5)
