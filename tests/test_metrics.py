"""Tests for micrec_core.evaluation.metrics against a brute-force pure-Python reference and a hand-computed case."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest
import torch

from micrec_core.evaluation.metrics import (
    DEFAULT_NS,
    GROUPS,
    group_metrics,
    low_degree_mask,
    ranking_metrics,
    score_rows,
    topk_blocked,
    topk_items,
)

Pair = tuple[int, int]


def reference_metrics(
    scores: list[list[float]],
    excluded: set[Pair],
    targets: set[Pair],
    ns: tuple[int, ...],
    user_ok: Callable[[int], bool],
    item_ok: Callable[[int], bool],
) -> dict[str, float]:
    """Brute force: rank the non-excluded items of each user by score, then loop over users, N and ranks."""
    sums = {f"{m}@{n}": 0.0 for m in ("precision", "recall", "ndcg") for n in ns}
    users = 0
    for u, row in enumerate(scores):
        wanted = {i for (v, i) in targets if v == u and item_ok(i)}
        if not user_ok(u) or not wanted:
            continue
        users += 1
        ranking = sorted((i for i in range(len(row)) if (u, i) not in excluded), key=lambda i: -row[i])
        for n in ns:
            hit_ranks = [r for r, i in enumerate(ranking[:n], start=1) if i in wanted]
            dcg = sum(1 / math.log2(r + 1) for r in hit_ranks)
            idcg = sum(1 / math.log2(r + 1) for r in range(1, min(len(wanted), n) + 1))
            sums[f"precision@{n}"] += len(hit_ranks) / n
            sums[f"recall@{n}"] += len(hit_ranks) / len(wanted)
            sums[f"ndcg@{n}"] += dcg / idcg
    out = {key: (value / users if users else math.nan) for key, value in sums.items()}
    out["users"] = users
    return out


def assert_same(got: dict[str, float], want: dict[str, float]) -> None:
    """Equal keys and values (NaN matching NaN), up to float rounding."""
    assert set(got) == set(want)
    for key, value in want.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def random_case(seed: int, n_users: int = 25, n_items: int = 150, max_excluded: int = 30) -> dict:
    """Random float64 scores (no ties), exclusions, and targets: empty, all excluded, duplicated."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(n_users, n_items, generator=gen, dtype=torch.float64)
    excluded: list[Pair] = []
    targets: list[Pair] = []
    for u in range(n_users):
        banned = rng.sample(range(n_items), rng.randint(1, max_excluded))
        excluded += [(u, i) for i in banned]
        kind = rng.random()
        if kind < 0.2:
            continue  # no target at all
        if kind < 0.35:
            chosen = rng.sample(banned, rng.randint(1, len(banned)))  # every target is excluded
        else:
            free = [i for i in range(n_items) if i not in set(banned)]
            chosen = rng.sample(free, rng.randint(1, 20)) + banned[: rng.randint(0, 1)]
        targets += [(u, i) for i in chosen]
    targets += rng.sample(targets, 5)  # duplicate pairs count once
    rng.shuffle(targets)
    return {
        "scores": scores,
        "excluded": excluded,
        "targets": targets,
        "user_seen": torch.rand(n_users, generator=gen) < 0.6,
        "item_seen": torch.rand(n_items, generator=gen) < 0.7,
        "degree": torch.randint(0, 6, (n_items,), generator=gen),
    }


def as_tensors(pairs: list[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
    """Split (user, item) pairs into two int64 tensors."""
    users, items = zip(*pairs, strict=True) if pairs else ((), ())
    return torch.tensor(users, dtype=torch.long), torch.tensor(items, dtype=torch.long)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_group_metrics_match_brute_force(seed: int) -> None:
    case = random_case(seed)
    scores, n_items = case["scores"], case["scores"].shape[1]
    low = low_degree_mask(case["degree"])
    top = topk_items(scores, *as_tensors(case["excluded"]), k=max(DEFAULT_NS))
    got = group_metrics(
        top, *as_tensors(case["targets"]), n_items, DEFAULT_NS, case["user_seen"], case["item_seen"], low
    )
    seen_u, seen_i, low_i = case["user_seen"].tolist(), case["item_seen"].tolist(), low.tolist()
    rules: dict[str, tuple[Callable[[int], bool], Callable[[int], bool]]] = {
        "all": (lambda u: True, lambda i: True),
        "seen_users": (lambda u: seen_u[u], lambda i: True),
        "unseen_users": (lambda u: not seen_u[u], lambda i: True),
        "seen_items": (lambda u: True, lambda i: seen_i[i]),
        "unseen_items": (lambda u: True, lambda i: not seen_i[i]),
        "low_degree_items": (lambda u: True, lambda i: low_i[i]),
    }
    assert tuple(got) == GROUPS
    rows, excluded, targets = scores.tolist(), set(case["excluded"]), set(case["targets"])
    for group, (user_ok, item_ok) in rules.items():
        want = reference_metrics(rows, excluded, targets, DEFAULT_NS, user_ok, item_ok)
        assert want["users"] > 0, group  # the random case exercises every group
        assert_same(got[group], want)


@pytest.mark.parametrize("seed", [4, 5])
def test_ranking_metrics_with_user_mask_and_small_ns(seed: int) -> None:
    case = random_case(seed, n_users=12, n_items=40, max_excluded=10)
    ns = (1, 3, 7, 30)
    top = topk_items(case["scores"], *as_tensors(case["excluded"]), k=30)
    users, items = as_tensors(case["targets"])
    mask = case["user_seen"]
    got = ranking_metrics(top.int(), users.int(), items.int(), 40, ns=ns, user_mask=mask)
    seen = mask.tolist()
    want = reference_metrics(
        case["scores"].tolist(),
        set(case["excluded"]),
        set(case["targets"]),
        ns,
        lambda u: seen[u],
        lambda i: True,
    )
    assert_same(got, want)


def test_hand_computed_two_users_five_items() -> None:
    # user 0: item 0 excluded, so the ranking is 3 (.7), 2 (.5), 4, 1; targets {1, 2}.
    #   N=1: no hit -> P=R=NDCG=0.  N=2: item 2 hit at rank 2 -> P=1/2, R=1/2,
    #   DCG=1/log2(3), IDCG=1+1/log2(3), so NDCG = 1/(log2(3)+1) = 1/log2(6).
    # user 1: ranking 1 (.8), 2 (.6), ...; target {1}.  N=1: P=R=NDCG=1.  N=2: P=1/2, R=1, NDCG=1.
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.7, 0.3], [0.2, 0.8, 0.6, 0.4, 0.0]])
    top = topk_items(scores, torch.tensor([0]), torch.tensor([0]), k=2)
    assert top.tolist() == [[3, 2], [1, 2]]
    users, items = torch.tensor([0, 0, 1]), torch.tensor([2, 1, 1])
    got = ranking_metrics(top, users, items, 5, ns=(2, 1))
    assert list(got) == [
        "precision@1", "precision@2", "recall@1", "recall@2", "ndcg@1", "ndcg@2", "users"
    ]  # fmt: skip
    assert got["users"] == 2
    assert got["precision@1"] == pytest.approx(0.5) and got["precision@2"] == pytest.approx(0.5)
    assert got["recall@1"] == pytest.approx(0.5) and got["recall@2"] == pytest.approx(0.75)
    assert got["ndcg@1"] == pytest.approx(0.5)
    assert got["ndcg@2"] == pytest.approx((1 / math.log2(6) + 1) / 2)
    only_user_1 = ranking_metrics(top, users, items, 5, ns=(1,), user_mask=torch.tensor([False, True]))
    assert only_user_1 == {"precision@1": 1.0, "recall@1": 1.0, "ndcg@1": 1.0, "users": 1}
    # item 2 unseen: only user 0 has an unseen target {2}: hit at rank 2 -> P=1/2, R=1, NDCG=1/log2(3).
    # low-degree item 4: nobody targets it, so that group counts no user and its means are NaN.
    groups = group_metrics(
        top,
        users,
        items,
        5,
        (2,),
        user_seen=torch.tensor([True, False]),
        item_seen=torch.tensor([True, True, False, True, True]),
        low_degree=torch.tensor([False, False, False, False, True]),
    )
    assert groups["unseen_items"] == pytest.approx(
        {"precision@2": 0.5, "recall@2": 1.0, "ndcg@2": 1 / math.log2(3), "users": 1}
    )
    assert groups["seen_users"] == pytest.approx(
        {"precision@2": 0.5, "recall@2": 0.5, "ndcg@2": 1 / math.log2(6), "users": 1}
    )
    assert groups["low_degree_items"]["users"] == 0
    assert math.isnan(groups["low_degree_items"]["ndcg@2"])


def test_no_targets_gives_zero_users_and_nan() -> None:
    top = torch.tensor([[0, 1], [1, 0]])
    empty = torch.zeros(0, dtype=torch.long)
    got = ranking_metrics(top, empty, empty, 3, ns=(2,))
    assert got["users"] == 0 and math.isnan(got["recall@2"])


def test_topk_does_not_mutate_scores_unless_inplace() -> None:
    scores = torch.rand(4, 6, generator=torch.Generator().manual_seed(0))
    before = scores.clone()
    users, items = torch.tensor([0, 2, 2]), torch.tensor([5, 1, 3])
    top = topk_items(scores, users, items, k=3)
    assert torch.equal(scores, before)
    assert torch.equal(topk_items(scores, users, items, k=3, inplace=True), top)
    assert torch.isneginf(scores[users, items]).all()
    assert torch.isneginf(scores).sum() == 3


@pytest.mark.parametrize("block", [1, 3, 7, 40, 1000])
def test_topk_in_blocks_of_users_equals_one_topk(block: int) -> None:
    gen = torch.Generator().manual_seed(block)
    left, right = torch.randn(40, 8, generator=gen), torch.randn(30, 8, generator=gen)
    scores = left @ right.T
    scores[5] = scores[6]  # ties inside a row are broken as torch.topk breaks them, row by row
    users, items = torch.randint(0, 40, (200,), generator=gen), torch.randint(0, 30, (200,), generator=gen)
    expected = topk_items(scores, users, items, 10)
    assert torch.equal(topk_blocked(score_rows(scores.clone()), 40, 30, users, items, 10, block), expected)
    assert torch.equal(topk_blocked(score_rows((left, right)), 40, 30, users, items, 10, block),
                       topk_items(left @ right.T, users, items, 10))


def test_topk_in_blocks_refuses_a_bad_block_or_row_shape() -> None:
    rows = score_rows(torch.zeros(4, 5))
    none = torch.zeros(0, dtype=torch.long)
    with pytest.raises(ValueError, match="block must be a positive int"):
        topk_blocked(rows, 4, 5, none, none, 2, 0)
    with pytest.raises(ValueError, match=r"rows\(0, 2\) gave shape"):
        topk_blocked(lambda a, b: torch.zeros(b - a, 4), 4, 5, none, none, 2, 2)
    with pytest.raises(ValueError, match="k must be an int"):
        topk_blocked(rows, 4, 5, none, none, 6, 2)


def test_low_degree_mask_tie_rule() -> None:
    degree = torch.tensor([3, 1, 1, 2, 1, 5])
    # ascending (degree, index): 1, 2, 4 (degree 1), 3 (degree 2), 0, 5
    assert low_degree_mask(degree, 0.5).nonzero().flatten().tolist() == [1, 2, 4]
    assert low_degree_mask(degree, 1 / 3).nonzero().flatten().tolist() == [1, 2]  # item 4 loses the tie
    assert low_degree_mask(degree, 0.0).sum() == 0 and low_degree_mask(degree, 1.0).all()
    assert low_degree_mask(torch.zeros(100), 0.29).sum() == 29  # 0.29 * 100 is 28.999... in floats
    assert low_degree_mask(torch.zeros(99), 0.25).sum() == 24  # floor(24.75)
    gen = torch.Generator().manual_seed(7)
    random_degree = torch.randint(0, 4, (57,), generator=gen)
    values = random_degree.tolist()
    expected = sorted(range(57), key=lambda i: (values[i], i))[: math.floor(0.25 * 57)]
    assert low_degree_mask(random_degree).nonzero().flatten().tolist() == sorted(expected)


def test_errors_name_the_parameter() -> None:
    scores = torch.rand(3, 4)
    no = torch.zeros(0, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^k must"):
        topk_items(scores, no, no, k=5)
    with pytest.raises(ValueError, match=r"^k must"):
        topk_items(scores, no, no, k=0)
    with pytest.raises(ValueError, match=r"^scores must"):
        topk_items(scores[0], no, no, k=2)
    with pytest.raises(ValueError, match="exclude_users and exclude_items"):
        topk_items(scores, torch.tensor([0]), no, k=2)
    with pytest.raises(ValueError, match=r"^exclude_items must lie in \[0, 4\)"):
        topk_items(scores, torch.tensor([0]), torch.tensor([4]), k=2)
    with pytest.raises(ValueError, match=r"^exclude_users must be int64"):
        topk_items(scores, torch.tensor([0.0]), torch.tensor([1]), k=2)
    top = topk_items(scores, no, no, k=2)
    users, items = torch.tensor([0, 1]), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"^ns has max 3"):
        ranking_metrics(top, users, items, 4, ns=(1, 3))
    with pytest.raises(ValueError, match=r"^ns must"):
        ranking_metrics(top, users, items, 4, ns=())
    with pytest.raises(ValueError, match=r"^ns must"):
        ranking_metrics(top, users, items, 4, ns=(0, 1))
    with pytest.raises(ValueError, match=r"^target_users must lie in \[0, 3\)"):
        ranking_metrics(top, torch.tensor([3, 0]), items, 4, ns=(1,))
    with pytest.raises(ValueError, match=r"^target_items must lie"):
        ranking_metrics(top, users, torch.tensor([1, 4]), 4, ns=(1,))
    with pytest.raises(ValueError, match="target_users and target_items"):
        ranking_metrics(top, users, items[:1], 4, ns=(1,))
    with pytest.raises(ValueError, match=r"^n_items must"):
        ranking_metrics(top, users, items, 0, ns=(1,))
    with pytest.raises(ValueError, match=r"^top must"):
        ranking_metrics(top.float(), users, items, 4, ns=(1,))
    with pytest.raises(ValueError, match=r"^user_mask must be a bool tensor of shape \(3,\)"):
        ranking_metrics(top, users, items, 4, ns=(1,), user_mask=torch.ones(2, dtype=torch.bool))
    seen_u, seen_i = torch.ones(3, dtype=torch.bool), torch.ones(4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"^low_degree must"):
        group_metrics(top, users, items, 4, (1,), seen_u, seen_i, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"^item_seen must"):
        group_metrics(top, users, items, 4, (1,), seen_u, seen_i.long(), seen_i)
    with pytest.raises(ValueError, match=r"^fraction must"):
        low_degree_mask(torch.ones(4), 1.5)
    with pytest.raises(ValueError, match=r"^item_degree must"):
        low_degree_mask(torch.ones(2, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    case = random_case(11)
    ex_users, ex_items = as_tensors(case["excluded"])
    users, items = as_tensors(case["targets"])
    low = low_degree_mask(case["degree"])
    masks = (case["user_seen"], case["item_seen"], low)
    top = topk_items(case["scores"], ex_users, ex_items, k=100)
    cpu = group_metrics(top, users, items, 150, DEFAULT_NS, *masks)
    cuda = "cuda"
    top_gpu = topk_items(case["scores"].to(cuda), ex_users.to(cuda), ex_items.to(cuda), k=100)
    gpu = group_metrics(
        top_gpu, users.to(cuda), items.to(cuda), 150, DEFAULT_NS, *(m.to(cuda) for m in masks)
    )
    assert torch.equal(top_gpu.cpu(), top)
    for group in GROUPS:
        assert_same(gpu[group], cpu[group])
