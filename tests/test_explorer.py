"""Chapter 10's Figure 3 table and explorer (micrec_core.runs.explorer), on a hand-made domain of five users."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from micrec_core.data.dataset import DomainData
from micrec_core.runs.explorer import (
    DomainView,
    build_explorer,
    explorer_users,
    figure3_html,
    history_html,
    page_html,
    pick_target,
    planted_clusters,
    thumbnails,
    titles,
)

NAN = float("nan")


def domain(n_users: int = 5, n_items: int = 20) -> DomainData:
    """Users u0..u4 (u4 unseen at training) and items i00..i19 titled "item NN" (item 0's title needs escaping)."""
    items = pd.DataFrame({"item_id": [f"i{i:02d}" for i in range(n_items)],
                          "title": ["<b>item 00</b>", *(f"item {i:02d}" for i in range(1, n_items))],
                          "image_path": [None] * n_items})
    return DomainData("Toys", [f"u{u}" for u in range(n_users)], list(items["item_id"]),
                      torch.tensor([True] * (n_users - 1) + [False]), torch.ones(n_items, dtype=torch.bool), {}, items)


def view(histories: list[list[int]], top1: list[float], clusters: bool = False) -> DomainView:
    """Each user's two most similar users are the next two (cyclically); user 1 has no similar user."""
    data = domain()
    n = data.n_users
    index = torch.tensor([[(u + 1) % n, (u + 2) % n] for u in range(n)])
    valid = torch.ones(n, 2, dtype=torch.bool)
    valid[1] = False
    scores = torch.tensor([[s, s / 2] for s in top1])
    scores[~valid] = NAN
    test_items = [{19} if u == 0 else set() for u in range(n)]
    item_cluster, user_cluster = ([i % 3 for i in range(data.n_items)], [0, 1, 0, 1, 0]) if clusters else (None, None)
    return DomainView(data, histories, index, valid, scores, test_items, titles(data.items), {}, item_cluster,
                      user_cluster)


HISTORIES = [[0, 1, 2], [3, 4], [1, 2, 5, 6], list(range(5, 15)), [2, 7, 8]]


def test_figure3_s_target_follows_the_stated_rule() -> None:
    # in range (3..8 items) and usable: users 0, 2 and 4; user 3 (10 items) is out of range; user 1 has no neighbour
    assert pick_target(view(HISTORIES, [0.5, 0.99, 0.7, 0.95, 0.7]), (3, 8)) == 2  # highest, then lowest index
    assert pick_target(view(HISTORIES, [0.5, 0.99, 0.6, 0.95, 0.7]), (3, 8)) == 4
    # nobody in range: the shortest usable histories (3 items: users 0 and 4), the higher top-1 of them
    assert pick_target(view(HISTORIES, [0.5, 0.99, 0.6, 0.95, 0.7]), (20, 30)) == 4


def test_explorer_users_start_with_the_target_and_span_the_ranking() -> None:
    v = view(HISTORIES, [0.5, 0.99, 0.6, 0.95, 0.7])
    assert explorer_users(v, 2, 3) == [2, 3, 0]  # the target, then the best and the worst by top-1 (user 1: none)
    assert explorer_users(v, 2, 10) == [2, 3, 4, 0]
    assert explorer_users(v, 2, 1) == [2]


def test_a_history_lists_shared_items_first_escaped_and_cut_only_after_them() -> None:
    v = view(HISTORIES, [0.5] * 5)
    page = history_html(v, 3, other=[14, 5])
    assert page.index("item 05") < page.index("item 14") < page.index("item 06")
    assert page.count("class=s") == 2
    cut = history_html(v, 3, other=[5, 6, 7], limit=4)
    assert cut.count("<li") == 5 and "… and 6 more, none shared" in cut
    assert history_html(v, 3, other=list(range(5, 11)), limit=4).count("class=s") == 6  # every shared item stays
    assert "&lt;b&gt;item 00&lt;/b&gt;" in history_html(v, 0) and "<b>item 00" not in history_html(v, 0)


def test_a_user_s_page_marks_test_items_and_items_of_similar_users() -> None:
    v = view(HISTORIES, [0.5] * 5, clusters=True)
    page = page_html(v, 0, [(19, 2.0), (5, 1.5), (9, 1.0)])  # neighbours of user 0: users 1 and 2
    assert "u0" in page and "micrec-explorer-view" in page and "planted cluster" in page
    assert page.count("in E_test") == 1 and "1 in its E_test of 1 items" in page
    assert page.count("1 of 2 similar users have it") == 1  # item 5: user 2 has it; item 9: nobody
    assert "MICRec's top 3" in page
    plain = page_html(view(HISTORIES, [0.5] * 5), 0, [])
    assert "planted cluster" not in plain and "dominant cluster" not in plain


def test_figure3_pairs_each_target_with_its_most_similar_user() -> None:
    v = view(HISTORIES, [0.5] * 5)
    table = figure3_html({"Toys": v}, {"Toys": 0}, "SYNTHETIC data", (3, 8))
    assert "u0 · seen · 3 items" in table and "u1 · seen · 2 items" in table and "0 shared, Jaccard 0.00" in table
    assert "Figure 3 on SYNTHETIC data" in table


def test_the_explorer_links_each_dropdown_to_its_pages() -> None:
    v = view(HISTORIES, [0.5, 0.99, 0.6, 0.95, 0.7])
    recommendations = {"Toys": {2: [(9, 1.0)], 3: [(0, 2.0)], 0: []}}
    explorer = build_explorer({"Toys": v}, recommendations, {"Toys": 2})
    assert len(explorer.pages["Toys"]) == len(explorer.stacks["Toys"].children) == 3
    assert [label.endswith("[Figure 3]") for label, _ in explorer.pickers["Toys"].options] == [True, False, False]
    linked = {(link.source[0].model_id, link.target[0].model_id) for link in explorer.links}
    assert linked == {(explorer.pickers["Toys"].model_id, explorer.stacks["Toys"].model_id),
                      (explorer.domain_picker.model_id, explorer.domain_stack.model_id)}
    empty = build_explorer({}, {}, {})
    assert empty.domain_stack.selected_index is None and not empty.domain_stack.children


def test_titles_thumbnails_and_planted_clusters_come_from_the_files(tmp_path: Path) -> None:
    data = domain()
    long = pd.DataFrame({"item_id": ["a", "b"], "title": ["word " * 40, None], "image_path": [None, None]})
    shortened = titles(long, chars=30)
    assert len(shortened[0]) <= 30 and shortened[0].endswith(" …") and shortened[1] == "(no title) b"
    Image.new("RGB", (100, 60), "red").save(tmp_path / "a.png")
    images = pd.DataFrame({"image_path": [str(tmp_path / "a.png"), str(tmp_path / "missing.png"), None]})
    thumbs = thumbnails(images, px=16)
    assert list(thumbs) == [0] and thumbs[0].startswith("data:image/jpeg;base64,")
    assert planted_clusters(tmp_path, data) is None
    (tmp_path / "Toys").mkdir()
    pd.DataFrame({"asin": data.item_ids, "cluster": range(20)}).to_csv(tmp_path / "Toys" / "truth_items.csv")
    pd.DataFrame({"reviewerID": data.user_ids, "dominant_cluster": [4, 3, 2, 1, 0]}).to_csv(
        tmp_path / "Toys" / "truth_users.csv")
    assert planted_clusters(tmp_path, data) == (list(range(20)), [4, 3, 2, 1, 0])


@pytest.mark.parametrize("limit", [None, 2])
def test_a_history_holds_each_item_once(limit: int | None) -> None:
    page = history_html(view(HISTORIES, [0.5] * 5), 3, other=[5, 5, 6], limit=limit)
    assert page.count("item 05") == 1 and page.count("item 06") == 1
