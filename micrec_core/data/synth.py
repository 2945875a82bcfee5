"""An embedded, clearly synthetic, multimodal cross-domain dataset in the Amazon Reviews 2014 layout.

Everything here is made up: the domains are called ``Synthetic_Gadgets`` and ``Synthetic_Pantry``, ids start
with ``SYN``, and titles are built from invented words. The data exists so that the whole pipeline (readers,
filters, feature encoders, models, notebooks) runs offline, in minutes, on a planted structure that we know.

Generative story (also in :data:`GENERATIVE_STORY`, for notebooks to print):

1. Each domain has ``n_clusters`` latent item clusters. Every cluster owns a title vocabulary (invented
   adjectives and nouns), a few brands, a category name and a visual style (a colour palette and a shape).
2. Items are spread evenly over the clusters and get a long-tailed popularity weight (lognormal). A title is
   brand + one or two adjectives + a noun: each word comes from the item's own cluster most of the time, else
   from a pool shared by all clusters or from another cluster. An image is the cluster's shape in the
   cluster's colours, with jittered position, size and colour plus pixel noise; some images use another
   cluster's palette or shape. So titles and images carry the cluster, imperfectly.
3. People are in domain A only, B only, or both. A person's taste in A is a Dirichlet mix over A's clusters
   (slightly smoothed). For people in both domains, the taste in B is the A taste carried over by a fixed
   one-to-one cluster map (A cluster a -> B cluster map[a]) mixed with fresh Dirichlet noise; people in B only
   draw a fresh B taste.
4. The number of interactions of a person in a domain is long-tailed (lognormal). Each interaction picks a
   cluster from the taste, then an item of that cluster in proportion to popularity, never repeating an item
   (sampling without replacement with the product of both probabilities).
5. Ratings are mostly 4 or 5 with some 1-3 (which the usual rating >= 4 filter removes); each person's review
   times increase strictly, one or more days apart.
6. As in the real ``*_5`` files, the reviews are reduced to their 5-core (users and items with >= 5 reviews,
   iterated). Metadata and images cover every generated item, as real metadata covers more items than the
   reviews mention.

Ground truth is written beside the data: ``truth_items.csv``, ``truth_users.csv`` per domain and
``SYNTHETIC.json`` (seed, size, every generator parameter, the cluster map).
"""

from __future__ import annotations

import colorsys
import csv
import gzip
import io
import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from micrec_core.data.atomic import Verdict, check_layout, write_bytes, write_json

GENERATOR = "micrec_core.data.synth"
MARKER = "SYNTHETIC.json"
DAY = 86_400
START_DAY = 14_245  # 2009-01-01
START_SPAN_DAYS = 4 * 365

GENERATIVE_STORY = """\
SYNTHETIC DATA (micrec_core.data.synth): two made-up domains, Synthetic_Gadgets (A) and Synthetic_Pantry (B).
1. Each domain has latent item clusters; each cluster owns invented title words, brands, a category name,
   a colour palette and a shape.
2. Items: evenly spread over clusters, lognormal (long-tailed) popularity. Titles mix the cluster's own
   words with shared words and other clusters' words; images draw the cluster's shape in its palette with
   jitter and noise, sometimes in another cluster's palette or shape.
3. People are in A only, B only, or both. Taste in A = Dirichlet mix over A's clusters. For people in both,
   taste in B = A taste carried over a fixed cluster-to-cluster map, mixed with fresh Dirichlet noise.
4. Interactions per person and domain are long-tailed (lognormal). Each interaction: pick a cluster from
   the taste, then an item of that cluster by popularity, no repeats.
5. Ratings mostly 4-5, some 1-3; review times strictly increase per person.
6. Reviews are cut to their 5-core like the real *_5 files; metadata and images cover all items.
Ground truth: <Domain>/truth_items.csv, <Domain>/truth_users.csv, SYNTHETIC.json (parameters, cluster map).
"""

ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "gl", "kr", "pl", "qu",
          "sn", "tr", "zh")
VOWELS = ("a", "e", "i", "o", "u", "ai", "ee", "oo")
CODAS = ("", "", "", "n", "r", "x", "m", "sh", "k")
ADJECTIVE_SUFFIXES = ("ish", "ic", "y", "ous", "al")
SHAPES = ("circle", "square", "diamond", "ring", "cross", "triangle", "stripes", "checker")
CONSTANTS = {"start_day": START_DAY, "start_span_days": START_SPAN_DAYS, "shapes": SHAPES, "onsets": ONSETS,
             "vowels": VOWELS, "codas": CODAS, "adjective_suffixes": ADJECTIVE_SUFFIXES}


@dataclass(frozen=True)
class DomainSpec:
    """A synthetic domain: its name, asin prefix and the invented flavour of its nouns and categories."""

    name: str
    asin_prefix: str
    noun_suffixes: tuple[str, ...]
    category_word: str
    hue_offset: float


DOMAINS = (
    DomainSpec("Synthetic_Gadgets", "SYNA", ("tron", "ix", "izer", "omat"), "Devices", 0.0),
    DomainSpec("Synthetic_Pantry", "SYNB", ("ella", "ino", "ette", "ola"), "Provisions", 0.5 / 8),
)


@dataclass(frozen=True)
class SynthParams:
    """Every knob of the generator (all recorded in SYNTHETIC.json)."""

    n_people: int
    n_items: int
    p_both: float = 0.4
    n_clusters: int = 8
    taste_alpha: float = 0.3
    taste_floor: float = 0.03
    transfer_noise: float = 0.3
    popularity_sigma: float = 0.8
    count_median: float = 15.0
    count_sigma: float = 0.6
    count_min: int = 5
    count_max_fraction: float = 0.25
    rating_probs: tuple[float, ...] = (0.04, 0.05, 0.09, 0.27, 0.55)
    gap_days_mean: float = 6.0
    core: int = 5
    adjectives_per_cluster: int = 6
    nouns_per_cluster: int = 3
    shared_words: int = 10
    brands_per_cluster: int = 3
    n_brands: int = 30
    p_word_own: float = 0.65
    p_word_shared: float = 0.2
    p_noun_own: float = 0.8
    p_brand_own: float = 0.5
    p_category_own: float = 0.8
    p_second_adjective: float = 0.5
    p_model_code: float = 0.4
    image_size: int = 64
    image_noise_sd: float = 14.0
    colour_jitter: float = 28.0
    p_off_palette: float = 0.15
    p_off_shape: float = 0.15


SMALL = SynthParams(n_people=1550, n_items=480)
SIZES = {"small": SMALL, "medium": replace(SMALL, n_people=3 * SMALL.n_people, n_items=3 * SMALL.n_items)}


@dataclass
class Items:
    """A domain's generated items: ids, clusters, popularity, metadata and image styles."""

    asins: list[str]
    cluster: np.ndarray
    popularity: np.ndarray
    meta: list[dict[str, Any]]
    palette_cluster: np.ndarray
    shape_cluster: np.ndarray


@dataclass
class Reviews:
    """A domain's reviews as parallel arrays (person index, item index, rating, unix time)."""

    person: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    time: np.ndarray


def _word(rng: np.random.Generator, suffix: str) -> str:
    """One pronounceable invented word of two syllables plus `suffix`."""
    parts = [ONSETS[rng.integers(len(ONSETS))] + VOWELS[rng.integers(len(VOWELS))] + CODAS[rng.integers(len(CODAS))]
             for _ in range(2)]
    return ("".join(parts) + suffix).capitalize()


def _words(rng: np.random.Generator, n: int, suffixes: tuple[str, ...], taken: set[str]) -> list[str]:
    """`n` new invented words, unique against (and added to) `taken`."""
    out: list[str] = []
    while len(out) < n:
        word = _word(rng, suffixes[rng.integers(len(suffixes))])
        if word not in taken and len(word) <= 11:
            taken.add(word)
            out.append(word)
    return out


def _pick_other(rng: np.random.Generator, k: int, own: int) -> int:
    """A cluster index uniformly among the k - 1 clusters other than `own`."""
    other = int(rng.integers(k - 1))
    return other + (other >= own)


def make_items(spec: DomainSpec, params: SynthParams, rng: np.random.Generator) -> Items:
    """Generate a domain's items: cluster, popularity, title, brand, categories and image style."""
    k, n = params.n_clusters, params.n_items
    taken: set[str] = set()
    adjectives = [_words(rng, params.adjectives_per_cluster, ADJECTIVE_SUFFIXES, taken) for _ in range(k)]
    nouns = [_words(rng, params.nouns_per_cluster, spec.noun_suffixes, taken) for _ in range(k)]
    shared = _words(rng, params.shared_words, ADJECTIVE_SUFFIXES, taken)
    brands = _words(rng, params.n_brands, ("co", "ex", "a", ""), taken)
    own_brands = [rng.choice(params.n_brands, params.brands_per_cluster, replace=False) for _ in range(k)]
    categories = [f"{nouns[c][0]} {spec.category_word}" for c in range(k)]
    cluster = rng.permutation(np.arange(n) % k)
    popularity = rng.lognormal(0.0, params.popularity_sigma, n)

    def adjective(c: int) -> str:
        """An adjective for cluster c: own, shared or another cluster's."""
        u = rng.random()
        if u < params.p_word_own:
            return adjectives[c][rng.integers(len(adjectives[c]))]
        if u < params.p_word_own + params.p_word_shared:
            return shared[rng.integers(len(shared))]
        other = adjectives[_pick_other(rng, k, c)]
        return other[rng.integers(len(other))]

    asins = [f"{spec.asin_prefix}{i:05d}" for i in range(n)]
    meta: list[dict[str, Any]] = []
    for asin, c in zip(asins, cluster.tolist(), strict=True):
        brand_pool = own_brands[c] if rng.random() < params.p_brand_own else np.arange(params.n_brands)
        brand = brands[int(brand_pool[rng.integers(len(brand_pool))])]
        words = [adjective(c)]
        if rng.random() < params.p_second_adjective:
            second = adjective(c)
            if second != words[0]:
                words.append(second)
        noun_cluster = c if rng.random() < params.p_noun_own else _pick_other(rng, k, c)
        words.append(nouns[noun_cluster][rng.integers(params.nouns_per_cluster)])
        if rng.random() < params.p_model_code:
            words.append(f"{'QXZVK'[rng.integers(5)]}{int(rng.integers(1, 100)) * 10}")
        category_cluster = c if rng.random() < params.p_category_own else _pick_other(rng, k, c)
        meta.append({"asin": asin, "title": " ".join([brand, *words]),
                     "categories": [[spec.name, categories[category_cluster]]], "brand": brand})
    palette_cluster = np.array([c if rng.random() >= params.p_off_palette else _pick_other(rng, k, c)
                                for c in cluster.tolist()])
    shape_cluster = np.array([c if rng.random() >= params.p_off_shape else _pick_other(rng, k, c)
                              for c in cluster.tolist()])
    return Items(asins, cluster, popularity, meta, palette_cluster, shape_cluster)


def palettes(spec: DomainSpec, k: int) -> np.ndarray:
    """Per-cluster (background, foreground) RGB colours, shape (k, 2, 3), hues evenly spread."""
    out = np.empty((k, 2, 3))
    for c in range(k):
        hue = (c / k + spec.hue_offset) % 1.0
        out[c, 0] = colorsys.hsv_to_rgb(hue, 0.35, 0.95)
        out[c, 1] = colorsys.hsv_to_rgb((hue + 0.08) % 1.0, 0.9, 0.6)
    return out * 255.0


def cluster_shapes(domain: int, k: int) -> list[str]:
    """The shape each of a domain's k clusters draws (domains start at different points of SHAPES)."""
    return [SHAPES[(c + 3 * domain) % len(SHAPES)] for c in range(k)]


def _shape_mask(shape: str, size: int, cx: float, cy: float, r: float) -> np.ndarray:
    """Boolean mask of `shape` centred at (cx, cy) with radius r on a size x size grid."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    dx, dy = xx - cx, yy - cy
    ax, ay = np.abs(dx), np.abs(dy)
    box = (ax <= r) & (ay <= r)
    masks = {
        "circle": lambda: dx**2 + dy**2 <= r**2,
        "square": lambda: (ax <= 0.85 * r) & (ay <= 0.85 * r),
        "diamond": lambda: ax + ay <= r,
        "ring": lambda: ((dx**2 + dy**2) <= r**2) & ((dx**2 + dy**2) >= (0.55 * r) ** 2),
        "cross": lambda: ((ax <= r / 3) & (ay <= r)) | ((ay <= r / 3) & (ax <= r)),
        "triangle": lambda: (dy >= -r) & (dy <= 0.8 * r) & (ax <= (dy + r) * 0.6),
        "stripes": lambda: box & ((yy.astype(int) // 4) % 2 == 0),
        "checker": lambda: box & (((xx.astype(int) // 5) + (yy.astype(int) // 5)) % 2 == 0),
    }
    return masks[shape]()


def render_image(palette: np.ndarray, shape: str, params: SynthParams, rng: np.random.Generator) -> bytes:
    """PNG bytes of one item image: a jittered shape in jittered palette colours, plus pixel noise."""
    size = params.image_size
    background = palette[0] + rng.normal(0.0, params.colour_jitter / 2, 3)
    foreground = palette[1] + rng.normal(0.0, params.colour_jitter, 3)
    cx, cy = size / 2 + rng.uniform(-size / 8, size / 8, 2)
    radius = size * rng.uniform(0.22, 0.36)
    pixels = np.broadcast_to(background, (size, size, 3)).copy()
    pixels[_shape_mask(shape, size, cx, cy, radius)] = foreground
    pixels += rng.normal(0.0, params.image_noise_sd, pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class People:
    """Who is in which domain, their tastes per domain, and the A -> B cluster map."""

    ids: list[str]
    in_domain: np.ndarray
    taste: np.ndarray
    cluster_map: np.ndarray


def make_people(params: SynthParams, rng: np.random.Generator) -> People:
    """Draw domain membership, Dirichlet tastes and the cross-domain cluster map with correlated B tastes."""
    n, k = params.n_people, params.n_clusters
    p_one = (1.0 - params.p_both) / 2
    group = rng.choice(3, size=n, p=[p_one, p_one, params.p_both])
    in_domain = np.stack([group != 1, group != 0])
    alpha = np.full(k, params.taste_alpha)
    taste_a = rng.dirichlet(alpha, n)
    cluster_map = rng.permutation(k)
    carried = np.empty_like(taste_a)
    carried[:, cluster_map] = taste_a
    fresh = rng.dirichlet(alpha, n)
    noise = np.where((group == 2)[:, None], params.transfer_noise, 1.0)
    taste_b = (1.0 - noise) * carried + noise * fresh
    taste = np.stack([taste_a, taste_b])
    taste = (1.0 - params.taste_floor) * taste + params.taste_floor / k
    return People([f"SYNU{i:06d}" for i in range(n)], in_domain, taste, cluster_map)


def make_reviews(members: np.ndarray, taste: np.ndarray, items: Items, params: SynthParams,
                 rng: np.random.Generator) -> Reviews:
    """Sample each member's long-tailed number of distinct items (cluster by taste, item by popularity)."""
    cluster_mass = np.bincount(items.cluster, weights=items.popularity, minlength=params.n_clusters)
    within = items.popularity / cluster_mass[items.cluster]
    cap = max(params.count_min, int(params.count_max_fraction * params.n_items))
    counts = np.clip(np.rint(rng.lognormal(np.log(params.count_median), params.count_sigma, len(members))),
                     params.count_min, cap).astype(int)
    person, item, time = [], [], []
    for who, count in zip(members.tolist(), counts.tolist(), strict=True):
        probs = taste[who][items.cluster] * within
        person.append(np.full(count, who))
        item.append(rng.choice(params.n_items, size=count, replace=False, p=probs / probs.sum()))
        gaps = 1 + rng.geometric(1.0 / params.gap_days_mean, count)
        day = START_DAY + int(rng.integers(START_SPAN_DAYS)) + np.cumsum(gaps)
        time.append(day * DAY)
    n_total = int(counts.sum())
    rating = rng.choice(np.arange(1, 6), size=n_total, p=params.rating_probs).astype(float)
    return Reviews(np.concatenate(person), np.concatenate(item), rating, np.concatenate(time))


def core_filter(reviews: Reviews, core: int) -> Reviews:
    """Keep users and items with at least `core` reviews, iterated to a fixed point (the 2014 *_5 files)."""
    keep = np.ones(len(reviews.person), dtype=bool)
    while True:
        users = np.unique(reviews.person[keep], return_counts=True)
        items = np.unique(reviews.item[keep], return_counts=True)
        ok = keep & np.isin(reviews.person, users[0][users[1] >= core]) & np.isin(
            reviews.item, items[0][items[1] >= core])
        if (ok == keep).all():
            break
        keep = ok
    return Reviews(reviews.person[keep], reviews.item[keep], reviews.rating[keep], reviews.time[keep])


def _gzip(text: str) -> bytes:
    """Deterministic gzip bytes (mtime 0, no file name in the header)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as handle:
        handle.write(text.encode("utf-8"))
    return buffer.getvalue()


def _csv(header: list[str], rows: list[list[Any]]) -> bytes:
    """CSV bytes with a header and '\\n' line ends."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def reviews_text(reviews: Reviews, people: People, items: Items) -> str:
    """JSON lines of the reviews, sorted by (reviewerID, unixReviewTime)."""
    order = np.lexsort((reviews.time, reviews.person))
    lines = [
        json.dumps({"reviewerID": people.ids[p], "asin": items.asins[i], "overall": float(r),
                    "unixReviewTime": int(t)})
        for p, i, r, t in zip(reviews.person[order].tolist(), reviews.item[order].tolist(),
                              reviews.rating[order].tolist(), reviews.time[order].tolist(), strict=True)
    ]
    return "\n".join(lines) + "\n"


def _synthetic_entry(out: Path, path: Path) -> Verdict:
    """What a (possibly partial) synthetic dataset folder may hold (`check_layout`): its marker, and per domain the
    reviews, metadata, truth tables and the images folder of that domain's PNGs."""
    parts = path.relative_to(out).parts
    specs = {spec.name: spec for spec in DOMAINS}
    if len(parts) == 1:
        if path.name == MARKER and path.is_file():
            return "keep"
        return "open" if path.name in specs and path.is_dir() else "foreign"
    domain = parts[0]
    if len(parts) == 2:
        if path.name == "images":
            return "open" if path.is_dir() else "foreign"
        files = {f"reviews_{domain}_5.json.gz", f"meta_{domain}.json.gz", "truth_items.csv", "truth_users.csv"}
        return "keep" if path.name in files and not path.is_dir() else "foreign"
    image = re.fullmatch(rf"{specs[domain].asin_prefix}\d{{5}}\.png", path.name)
    return "keep" if len(parts) == 3 and image and path.is_file() else "foreign"


def _remove_stale_images(folder: Path, written: set[str]) -> None:
    """Delete the PNGs of an earlier run that this run did not write."""
    for path in sorted(folder.iterdir()):
        if path.name not in written:
            path.unlink()


def _write_domain(root: Path, spec: DomainSpec, params: SynthParams, items: Items, reviews: Reviews,
                  people: People, domain: int, rng: np.random.Generator) -> dict[str, int]:
    """Write one domain's reviews, metadata, images and truth files; return its counts."""
    folder = root / spec.name
    write_bytes(folder / f"reviews_{spec.name}_5.json.gz", _gzip(reviews_text(reviews, people, items)))
    write_bytes(folder / f"meta_{spec.name}.json.gz", _gzip("".join(f"{m!r}\n" for m in items.meta)))
    styles = palettes(spec, params.n_clusters)
    shapes = cluster_shapes(domain, params.n_clusters)
    images = folder / "images"
    written = set()
    for asin, pal, shp in zip(items.asins, items.palette_cluster.tolist(), items.shape_cluster.tolist(),
                              strict=True):
        write_bytes(images / f"{asin}.png", render_image(styles[pal], shapes[shp], params, rng))
        written.add(f"{asin}.png")
    _remove_stale_images(images, written)
    write_bytes(folder / "truth_items.csv", _csv(
        ["asin", "cluster", "palette_cluster", "shape_cluster"],
        [[a, c, p, s] for a, c, p, s in zip(items.asins, items.cluster.tolist(), items.palette_cluster.tolist(),
                                            items.shape_cluster.tolist(), strict=True)]))
    present = np.unique(reviews.person)
    both = people.in_domain.all(axis=0)
    rows = []
    for who in present.tolist():
        taste = people.taste[domain, who]
        rows.append([people.ids[who], int(taste.argmax()), f"{taste.max():.4f}", int(both[who]),
                     ";".join(f"{t:.4f}" for t in taste)])
    write_bytes(folder / "truth_users.csv",
                _csv(["reviewerID", "dominant_cluster", "dominant_weight", "in_both_domains", "taste"], rows))
    return {"users": len(present), "items_in_reviews": len(np.unique(reviews.item)), "items": len(items.asins),
            "reviews": len(reviews.person), "images": len(written)}


def synthesize(out: Path, seed: int = 0, size: str = "small") -> dict[str, Any]:
    """Write the synthetic dataset under `out` (2014 Amazon layout plus ground truth); return a summary."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    if size not in SIZES:
        raise ValueError(f"--size must be one of {', '.join(SIZES)}, got {size!r}")
    out = Path(out)
    params = SIZES[size]
    check_layout(out, lambda path: _synthetic_entry(out, path), "a synthetic dataset")
    (out / MARKER).unlink(missing_ok=True)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(1 + 3 * len(DOMAINS))]
    people = make_people(params, streams[0])
    counts: dict[str, dict[str, int]] = {}
    present: list[set[int]] = []
    for d, spec in enumerate(DOMAINS):
        items_rng, reviews_rng, images_rng = streams[1 + 3 * d: 4 + 3 * d]
        items = make_items(spec, params, items_rng)
        members = np.flatnonzero(people.in_domain[d])
        reviews = core_filter(make_reviews(members, people.taste[d], items, params, reviews_rng), params.core)
        counts[spec.name] = _write_domain(out, spec, params, items, reviews, people, d, images_rng)
        present.append(set(np.unique(reviews.person).tolist()))
    names = [spec.name for spec in DOMAINS]
    summary = {"synthetic": True, "out": str(out), "seed": seed, "size": size, "domains": names,
               "counts": counts, "overlap_users": len(present[0] & present[1])}
    write_json(out / MARKER, {
        "synthetic": True, "generator": GENERATOR, "seed": seed, "size": size, "domains": names,
        "params": asdict(params), "domain_specs": [asdict(spec) for spec in DOMAINS], "constants": CONSTANTS,
        "cluster_map": {"from": names[0], "to": names[1], "map": people.cluster_map.tolist()},
        "counts": counts, "overlap_users": summary["overlap_users"], "story": GENERATIVE_STORY,
    })
    return summary
