"""Chapter 10's views of the similar users (paper §4.2, §5.4, Figure 3): the Figure 3 table and the explorer widget.

The numbers come from `evaluation.similar_users` and the trained model; this module picks the users shown, by the
rules the chapter states, and renders them as HTML, with ipywidgets Dropdowns linked to Stacks in the browser
(`widgets.jslink`), so that the published page works without a kernel.
"""

from __future__ import annotations

import base64
import html
import io
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import pandas as pd
import torch
from PIL import Image

from micrec_core.data.dataset import DomainData

THUMB_PX = 40  # thumbnail size, inlined into the page
TITLE_CHARS = 90  # long real titles are shortened for display, at a word boundary
CARD_ITEMS = 15  # a similar user's card lists its shared items and at most this many items in all
PURPLE, LIGHT_PURPLE, GREEN = "#7b2fbe", "#efe3fa", "#1b7f3b"
STYLE = (
    "<style>"
    ".mx-list {list-style:none;padding-left:0;margin:0} .mx-recs {margin:0;padding-left:2em}"
    ".mx-list li, .mx-recs li {padding:1px 6px;margin:2px 0;border-radius:4px;border-left:4px solid #ddd}"
    f".mx-list li.s, .mx-recs li.s {{background:{LIGHT_PURPLE};border-left-color:{PURPLE}}}"
    ".mx-list img {vertical-align:middle;margin-right:6px} .mx-list i, .mx-recs i {color:#777;font-size:80%}"
    ".mx-note {color:#555;font-size:85%} .mx-card {flex:0 0 15em;font-size:85%}"
    ".mx-badge {color:white;border-radius:3px;padding:0 4px;margin-left:4px;font-size:80%}"
    ".mx-cell {vertical-align:top;padding:6px} .mx-view {font-size:90%;line-height:1.35}"
    ".mx-title {font-weight:bold;font-size:115%;margin:4px 0} .mx-list li, .mx-recs li {line-height:1.3}"
    ".mx-view table {margin:0;font-size:90%} .mx-view td, .mx-view th {padding:1px 6px;text-align:left}"
    "</style>"
)


def titles(items: pd.DataFrame, chars: int = TITLE_CHARS) -> list[str]:
    """Each item's title for display, shortened at a word boundary; "(no title) <id>" where it has none."""
    return [textwrap.shorten(t, chars, placeholder=" …") if isinstance(t, str) and t.strip() else f"(no title) {i}"
            for t, i in zip(items["title"], items["item_id"], strict=True)]


def thumbnails(items: pd.DataFrame, px: int = THUMB_PX) -> dict[int, str]:
    """A px x px JPEG data URL of each item whose image file exists, by item index."""
    thumbs = {}
    for k, path in enumerate(items["image_path"]):
        if isinstance(path, str) and Path(path).is_file():
            with Image.open(path) as image:
                small = image.convert("RGB")
                small.thumbnail((px, px))
                buffer = io.BytesIO()
                small.save(buffer, format="JPEG", quality=85)
            thumbs[k] = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    return thumbs


def planted_clusters(raw: Path, data: DomainData) -> tuple[list[int], list[int]] | None:
    """The synthetic data's planted cluster of each item and dominant cluster of each user (`truth_items.csv`,
    `truth_users.csv` beside the raw files), or None where the data has none (real data)."""
    truth_items, truth_users = raw / data.name / "truth_items.csv", raw / data.name / "truth_users.csv"
    if not (truth_items.is_file() and truth_users.is_file()):
        return None
    clusters = pd.read_csv(truth_items, dtype={"asin": str}).set_index("asin")["cluster"]
    dominant = pd.read_csv(truth_users, dtype={"reviewerID": str}).set_index("reviewerID")["dominant_cluster"]
    return [int(clusters[i]) for i in data.items["item_id"]], [int(dominant[u]) for u in data.user_ids]


@dataclass
class DomainView:
    """One domain as the chapter shows it: each user's history (E_tr + E_new) and test items, its top-k similar
    users (`similar_users.nearest_users`: index, validity, similarity), item titles and thumbnails, and on synthetic
    data the planted clusters of items and users."""

    data: DomainData
    histories: list[list[int]]
    index: torch.Tensor
    valid: torch.Tensor
    scores: torch.Tensor
    test_items: list[set[int]]
    titles: list[str]
    thumbs: dict[int, str]
    item_cluster: list[int] | None = None
    user_cluster: list[int] | None = None

    @property
    def name(self) -> str:
        """The domain's name."""
        return self.data.name

    @property
    def top1(self) -> np.ndarray:
        """Each user's similarity to its most similar user (NaN where it has none)."""
        return self.scores[:, 0].numpy()

    @property
    def top_k(self) -> int:
        """How many similar users per user the view holds."""
        return self.index.shape[1]

    def neighbours(self, u: int) -> list[int]:
        """User u's similar users that exist, most similar first."""
        return [int(self.index[u, k]) for k in range(self.top_k) if bool(self.valid[u, k])]


def pick_target(view: DomainView, history_range: tuple[int, int]) -> int:
    """Figure 3's user: a history length in `history_range` (else the shortest), then the highest top-1
    similarity, then the lowest index."""
    sizes = np.array([len(h) for h in view.histories])
    usable = view.valid[:, 0].numpy() & (sizes > 0)
    in_range = usable & (sizes >= history_range[0]) & (sizes <= history_range[1])
    pool = np.flatnonzero(in_range) if in_range.any() else np.flatnonzero(usable & (sizes == sizes[usable].min()))
    top1 = view.top1
    return int(max(pool, key=lambda u: (top1[u], -u)))


def explorer_users(view: DomainView, target: int, n: int) -> list[int]:
    """The explorer's users: the Figure 3 target, then users evenly spread over the ranking by top-1 similarity
    (best to worst), n at most."""
    top1 = view.top1
    ranked = sorted(np.flatnonzero(view.valid[:, 0].numpy()), key=lambda u: (-top1[u], u))
    spread = [int(ranked[round(float(p))]) for p in np.linspace(0, len(ranked) - 1, min(n, len(ranked)))]
    return [target, *(u for u in dict.fromkeys(spread) if u != target)][:n]


def item_html(view: DomainView, i: int, shared: bool, thumbnails: bool = True) -> str:
    """One list item: thumbnail (if any), title, planted cluster tag (synthetic); purple when `shared`."""
    image = view.thumbs.get(i) if thumbnails else None
    picture = f'<img src="{image}" width="{THUMB_PX}" height="{THUMB_PX}" alt="">' if image else ""
    tag = f" <i>c{view.item_cluster[i]}</i>" if view.item_cluster is not None else ""
    return f"<li{' class=s' if shared else ''}>{picture}{html.escape(view.titles[i])}{tag}</li>"


def history_html(view: DomainView, u: int, other: Iterable[int] = (), thumbnails: bool = True,
                 limit: int | None = None) -> str:
    """User u's history as a list, the items in `other` first (purple), each group sorted by title; with `limit`,
    every shared item and at most `limit` items in all."""
    shared = set(other)
    items = sorted(view.histories[u], key=lambda i: (i not in shared, view.titles[i]))
    shown = items if limit is None else items[: max(limit, len(shared & set(items)))]
    more = f"<li>… and {len(items) - len(shown)} more, none shared</li>" if len(shown) < len(items) else ""
    return f'<ul class="mx-list">{"".join(item_html(view, i, i in shared, thumbnails) for i in shown)}{more}</ul>'


def user_caption(view: DomainView, u: int) -> str:
    """Id, seen or unseen, history length and (synthetic) dominant planted cluster of user u."""
    parts = [html.escape(view.data.user_ids[u]), "seen" if view.data.user_seen[u] else "unseen at training",
             f"{len(view.histories[u])} items"]
    if view.user_cluster is not None:
        parts.append(f"dominant cluster c{view.user_cluster[u]}")
    return " · ".join(parts)


def figure3_html(views: Mapping[str, DomainView], targets: Mapping[str, int], data_label: str,
                 history_range: tuple[int, int]) -> str:
    """Figure 3 on our data: per domain the target user's history beside its most similar user's, shared items
    first and in purple."""
    rows = []
    for name, u in targets.items():
        view = views[name]
        top = int(view.index[u, 0])
        a, b = set(view.histories[u]), set(view.histories[top])
        rows.append(
            f'<tr><td class="mx-cell"><b>{html.escape(name)}</b></td>'
            f'<td class="mx-cell"><div class="mx-note">{user_caption(view, u)}</div>{history_html(view, u, b)}</td>'
            f'<td class="mx-cell"><div class="mx-note">{user_caption(view, top)}'
            f' · sim {float(view.scores[u, 0]):.3f} · {len(a & b)} shared, Jaccard {len(a & b) / len(a | b):.2f}'
            f'</div>{history_html(view, top, a)}</td></tr>'
        )
    head = ("<tr><th></th><th style='text-align:left'>Target user's purchase history</th>"
            "<th style='text-align:left'>Top similar user's purchase history</th></tr>")
    return (f'{STYLE}<table style="border-collapse:collapse">{head}{"".join(rows)}</table>'
            f'<p style="font-size:85%">Figure 3 on {html.escape(data_label)}: per domain, the target user '
            f'(histories of {history_range[0]}-{history_range[1]} items, highest top-1 similarity) and its most '
            f'similar user by the §4.2 similarity; shared items in purple, shown first.</p>')


def badge(text: str, colour: str) -> str:
    """A small coloured label."""
    return f'<span class="mx-badge" style="background:{colour}">{html.escape(text)}</span>'


def page_html(view: DomainView, u: int, recommendations: list[tuple[int, float]]) -> str:
    """The view of one user: its history, its similar users with their histories, and the model's recommendations
    (`recommendations`: (item, score), best first), each marked when in the user's E_test or a similar user's
    history."""
    mine = set(view.histories[u])
    neighbours = view.neighbours(u)
    rows, cards = [], []
    for rank in range(view.top_k):
        if not bool(view.valid[u, rank]):
            continue
        other = int(view.index[u, rank])
        theirs = set(view.histories[other])
        cluster = ""
        if view.user_cluster is not None:
            same = view.user_cluster[other] == view.user_cluster[u]
            cluster = f"<td>c{view.user_cluster[other]}{' (same)' if same else ''}</td>"
        rows.append(
            f"<tr><td>{rank + 1}</td><td>{html.escape(view.data.user_ids[other])}</td>"
            f"<td>{'seen' if view.data.user_seen[other] else 'unseen'}</td><td>{float(view.scores[u, rank]):.3f}</td>"
            f"<td>{len(mine & theirs)}</td><td>{len(mine & theirs) / len(mine | theirs):.2f}</td>{cluster}</tr>"
        )
        cards.append(
            f'<div class="mx-card"><b>#{rank + 1} {html.escape(view.data.user_ids[other])}</b>'
            f"{history_html(view, other, mine, thumbnails=False, limit=CARD_ITEMS)}</div>"
        )
    header = "<tr><th>rank</th><th>user</th><th></th><th>similarity</th><th>shared items</th><th>Jaccard</th>"
    header += "<th>planted cluster</th></tr>" if view.user_cluster is not None else "</tr>"
    neighbour_sets = [set(view.histories[other]) for other in neighbours]
    neighbour_histories = set().union(*neighbour_sets)
    recs = []
    for i, score in recommendations:
        marks = badge("in E_test", GREEN) if i in view.test_items[u] else ""
        count = sum(i in theirs for theirs in neighbour_sets)
        marks += badge(f"{count} of {view.top_k} similar users have it", PURPLE) if count else ""
        tag = f" <i>c{view.item_cluster[i]}</i>" if view.item_cluster is not None else ""
        recs.append(f"<li{' class=s' if i in neighbour_histories else ''}>{html.escape(view.titles[i])}{tag} "
                    f'<span class="mx-note">score {score:.3f}</span>{marks}</li>')
    hits = sum(i in view.test_items[u] for i, _ in recommendations)
    return (
        f'<div class="micrec-explorer-view mx-view">'
        f"<div class='mx-title'>{html.escape(view.name)}: user {user_caption(view, u)}</div>"
        f"<div style='display:flex;gap:16px;flex-wrap:wrap'>"
        f"<div style='flex:0 0 17em'><b>History (E_tr ∪ E_new)</b>"
        f" <span class='mx-note'>purple: a similar user has it</span>"
        f"{history_html(view, u, neighbour_histories, thumbnails=False)}</div>"
        f"<div style='flex:1 1 30em'><b>Top {view.top_k} similar users (§4.2 similarity)</b>"
        f"<table>{header}{''.join(rows)}</table></div></div>"
        f"<p style='margin:6px 0 2px'><b>Their histories</b> (purple: also in this user's history)</p>"
        f"<div style='display:flex;gap:10px;flex-wrap:wrap'>{''.join(cards)}</div>"
        f"<p style='margin:6px 0 2px'><b>MICRec's top {len(recs)} for this user</b> (known items masked; {hits} in "
        f"its E_test of {len(view.test_items[u])} items; purple: in a similar user's history)</p>"
        f"<ol class='mx-recs'>{''.join(recs)}</ol></div>"
    )


def user_label(view: DomainView, u: int, target: int) -> str:
    """The dropdown label of user u."""
    return (f"{view.data.user_ids[u]} ({'seen' if view.data.user_seen[u] else 'unseen'}, "
            f"{len(view.histories[u])} items, top-1 sim {view.top1[u]:.3f})" + ("  [Figure 3]" if u == target else ""))


def _label(text: str) -> widgets.HTML:
    """A dropdown's label as an HTML widget: a `description` would make ipywidgets call MathJax 2's API, which the
    book's MathJax 3 lacks (an error in the browser console)."""
    return widgets.HTML(value=f"<b>{text}</b>", layout=widgets.Layout(width="5em"))


@dataclass
class Explorer:
    """The explorer widget and its parts: per domain the users' pages, their Stack and the Dropdown linked to it;
    the domain Dropdown and Stack; and every browser-side link."""

    widget: widgets.VBox
    pages: dict[str, list[str]]
    pickers: dict[str, widgets.Dropdown]
    stacks: dict[str, widgets.Stack]
    domain_picker: widgets.Dropdown
    domain_stack: widgets.Stack
    links: list[widgets.Link]


Recommendations = Mapping[int, list[tuple[int, float]]]  # user -> the model's (item, score) list, best first


def build_explorer(views: Mapping[str, DomainView], recommendations: Mapping[str, Recommendations],
                   targets: Mapping[str, int]) -> Explorer:
    """One precomputed page per user of `recommendations[name]` (in its order) and domain of `views`, a Dropdown per
    domain linked to its pages' Stack and one linked to the domains' Stack, so that it works without a kernel."""
    pages, pickers, stacks, links = {}, {}, {}, []
    for name, view in views.items():
        users = list(recommendations[name])
        pages[name] = [page_html(view, u, recommendations[name][u]) for u in users]
        stacks[name] = widgets.Stack([widgets.HTML(value=page) for page in pages[name]], selected_index=0)
        pickers[name] = widgets.Dropdown(options=[(user_label(view, u, targets[name]), k) for k, u in enumerate(users)],
                                         value=0, layout=widgets.Layout(width="42em"))
        links.append(widgets.jslink((pickers[name], "index"), (stacks[name], "selected_index")))
    names = list(views)
    domain_picker = widgets.Dropdown(options=[(name, k) for k, name in enumerate(names)], value=0 if names else None,
                                     layout=widgets.Layout(width="42em"))
    domain_stack = widgets.Stack(
        [widgets.VBox([widgets.HBox([_label("user"), pickers[name]]), stacks[name]]) for name in names],
        selected_index=0 if names else None,
    )
    links.append(widgets.jslink((domain_picker, "index"), (domain_stack, "selected_index")))
    widget = widgets.VBox([widgets.HTML(value=STYLE), widgets.HBox([_label("domain"), domain_picker]), domain_stack])
    return Explorer(widget, pages, pickers, stacks, domain_picker, domain_stack, links)
