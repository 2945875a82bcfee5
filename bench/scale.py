"""Scaling benchmark: how one training step, the per-epoch time, the inductive evaluation and peak memory grow with
the number of interactions, on synthetic pairs of 10^5 to 10^7 interactions (issue 17, section 2).

Usage: python bench/scale.py [--sizes 1e5,3e5,1e6,3e6,1e7] [--models lightgcn,inmo,micrec] [--device cpu|cuda]
       [--steps 5] [--eval-up-to 3e6] [--limits micrec=3e5] [--out bench/results/scaling-cpu.json]

Each (size, model) runs in a subprocess of its own, so the peak memory it reports is its own (CPU: peak resident set
size of the process; CUDA: peak allocated GPU memory, and the RSS beside it). A row holds: the setup time (the model
and what it precomputes from E_tr: graph, templates, MICRec's modality neighbours), the seconds of one optimizer step
(median of --steps after one warm-up step) and of an epoch (`batches_per_epoch` steps: the step time times that
count, the epoch being a fixed number of steps here), one validation, the test evaluation over every user and item
(blocked full ranking, `metrics.topk_blocked`), and the peak memory after the training steps (`train_peak_*`) and
after the evaluations (`peak_*`). Sizes past --eval-up-to skip the two evaluations
(full ranking grows as |U| x |I|: on two CPU cores 10^7 interactions would take hours) and say so in the row;
--limits caps a model's sizes (MICRec's modality neighbours compare every pair of users and of items, O(|U|^2 +
|I|^2) work in bounded memory, so its setup alone passes an hour on two CPU cores near 10^6); the JSON lists what was
skipped and why.

The pairs are synthetic and only their sizes are realistic: per domain half the interactions, |U| = n / 10 and
|I| = n / 20 drawn from Zipf-like popularity (as in the Amazon 5-core builds: ~10 interactions per user, ~20 per
item), users shared by the two domains through one pool, 80 % of users and items seen; edges of seen users with seen
items split 90/10 into E_tr/E_val, the rest half E_new, half E_test. MICRec gets random 384-d text and 1280-d image
features (the widths of MiniLM and EfficientNet-Lite0). Results are appended row by row to --out (an atomic write per
row); rows already there for the same size, model and device are reused, so a run stopped by a time budget resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from micrec_core.config import Config
from micrec_core.data.atomic import write_json
from micrec_core.data.dataset import DomainData, PairData, code_version
from micrec_core.evaluation.inference import evaluate_test
from micrec_core.models.micrec import ItemModalities, alpha_at
from micrec_core.models.setup import setup
from micrec_core.runs.chapters import growth_exponent
from micrec_core.training.provenance import code_sha256
from micrec_core.training.train import train_step, validate

TEXT_DIM, IMAGE_DIM = 384, 1280
SEEN = 0.8


def _domain(name: str, n: int, pool: int, rng: np.random.Generator) -> DomainData:
    """One synthetic domain of about n interactions (duplicates dropped) over users drawn from a shared pool."""
    n_users, n_items = max(20, n // 10), max(10, n // 20)
    members = np.sort(rng.choice(pool, size=min(n_users, pool), replace=False))
    user_pop = 1.0 / np.arange(1, len(members) + 1) ** 0.6
    item_pop = 1.0 / np.arange(1, n_items + 1) ** 0.8
    users = rng.choice(len(members), size=n, p=user_pop / user_pop.sum())
    items = rng.choice(n_items, size=n, p=item_pop / item_pop.sum())
    pairs = np.unique(users.astype(np.int64) * n_items + items)
    users, items = pairs // n_items, pairs % n_items
    user_seen = rng.random(len(members)) < SEEN
    item_seen = rng.random(n_items) < SEEN
    known = user_seen[users] & item_seen[items]
    draw = rng.random(len(pairs))
    split = np.where(known, np.where(draw < 0.9, "train", "val"), np.where(draw < 0.5, "new", "test"))
    edges = {s: torch.from_numpy(np.stack([users[split == s], items[split == s]])) for s in ("train", "new", "val",
                                                                                             "test")}
    item_ids = [f"{name}{i}" for i in range(n_items)]
    return DomainData(
        name=name, user_ids=[f"u{m}" for m in members], item_ids=item_ids,
        user_seen=torch.from_numpy(user_seen), item_seen=torch.from_numpy(item_seen), edges=edges,
        items=pd.DataFrame({"item_id": item_ids, "title": pd.Series([None] * n_items, dtype="string"),
                            "image_path": pd.Series([None] * n_items, dtype="string")}),
    )


def synthetic_pair(n: int, seed: int = 0) -> PairData:
    """A synthetic pair of about n interactions in all (see the module docstring)."""
    rng = np.random.default_rng(seed)
    pool = max(40, int(n / 10 * 1.5))
    a, b = _domain("A", n // 2, pool, rng), _domain("B", n // 2, pool, rng)
    seen_b = {user: k for k, user in enumerate(b.user_ids) if b.user_seen[k]}
    overlap = [(k, seen_b[u]) for k, u in enumerate(a.user_ids) if a.user_seen[k] and u in seen_b]
    stats = {"domains": {d.name: {"users": d.n_users, "items": d.n_items} for d in (a, b)}, "synthetic": True}
    return PairData(Path("synthetic"), (a, b), torch.tensor(overlap, dtype=torch.long).reshape(-1, 2), stats)


def _features(pair: PairData, seed: int = 0) -> list[ItemModalities]:
    """Random text and image features of the real encoders' widths, every item with both modalities."""
    gen = torch.Generator().manual_seed(seed)
    return [ItemModalities(torch.randn(d.n_items, TEXT_DIM, generator=gen), torch.ones(d.n_items, dtype=torch.bool),
                           torch.randn(d.n_items, IMAGE_DIM, generator=gen), torch.ones(d.n_items, dtype=torch.bool))
            for d in pair.domains]


def _provenance(device: str) -> dict[str, Any]:
    """Where the figures came from: code commit and hash, device, torch, the config the rows used (seed 0)."""
    name = torch.cuda.get_device_name() if device == "cuda" else f"{platform.machine()}, {os.cpu_count()} cores"
    return {"git_commit": code_version()["git_commit"], "code_sha256": code_sha256(), "device": f"{device}: {name}",
            "torch": torch.__version__, "config": dataclasses.asdict(Config(device=device))}


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(n: int, model: str, device: str, steps: int, evaluate: bool) -> dict[str, Any]:
    """One row: sizes, setup / step / epoch / validation / evaluation seconds and peak memory of `model` at n."""
    pair = synthetic_pair(n)
    config = Config(model=model, device=device, seed=0)
    started = time.perf_counter()
    s = setup(pair, config, _features(pair) if model == "micrec" else None)
    _sync(s.device)
    row: dict[str, Any] = {
        "interactions": int(sum(sum(e.shape[1] for e in d.edges.values()) for d in pair.domains)),
        "train_edges": int(sum(d.edges["train"].shape[1] for d in pair.domains)),
        "users": int(sum(d.n_users for d in pair.domains)), "items": int(sum(d.n_items for d in pair.domains)),
        "overlap": len(pair.overlap), "setup_s": time.perf_counter() - started,
    }
    optimizer = torch.optim.Adam(s.model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        train_step(s, alpha_at(0), generator, optimizer)
        _sync(s.device)
        times.append(time.perf_counter() - started)
    row["step_s"] = statistics.median(times[1:])
    row["epoch_s"] = row["step_s"] * config.batches_per_epoch
    row["validation_s"] = row["evaluation_s"] = None
    row["train_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["train_peak_gpu_mb"] = torch.cuda.max_memory_allocated(s.device) / 2**20 if s.device.type == "cuda" else None
    if evaluate:
        started = time.perf_counter()
        validate(s, alpha_at(0))
        _sync(s.device)
        row["validation_s"] = time.perf_counter() - started
        started = time.perf_counter()
        evaluate_test(s, [alpha_at(0)] * 2)
        _sync(s.device)
        row["evaluation_s"] = time.perf_counter() - started
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["peak_gpu_mb"] = torch.cuda.max_memory_allocated(s.device) / 2**20 if s.device.type == "cuda" else None
    return row


def _child(size: int, model: str, device: str, steps: int, evaluate: bool) -> dict[str, Any]:
    """`measure` in a fresh process (its own peak memory); the row, or the error that stopped it."""
    done = subprocess.run(
        [sys.executable, __file__, "--one", str(size), model, device, str(steps), str(int(evaluate))],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        return {"error": tail[0]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    """Run (or resume) the grid of sizes x models and print one line per row, then the growth exponents."""
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        size, model, device, steps, evaluate = sys.argv[2:7]
        print(json.dumps(measure(int(size), model, device, int(steps), evaluate == "1")))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e5,3e5,1e6,3e6,1e7", help="interactions per pair (default: %(default)s)")
    parser.add_argument("--models", default="lightgcn,inmo,micrec", help="registered models (default: %(default)s)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="default: %(default)s")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after a warm-up (default: %(default)s)")
    parser.add_argument("--eval-up-to", type=float, default=3e6,
                        help="largest size whose validation and test evaluation are timed (default: %(default)s)")
    parser.add_argument("--limits", default="", metavar="MODEL=SIZE,...",
                        help="largest size per model (default: none)")
    parser.add_argument("--out", default="bench/results/scaling-cpu.json", help="results (default: %(default)s)")
    args = parser.parse_args()
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    result[f"provenance/{args.device}"] = _provenance(args.device)
    result["command"] = "python bench/scale.py " + " ".join(sys.argv[1:])
    limits = {k: float(v) for k, v in (item.split("=") for item in args.limits.split(",") if item)}
    result.setdefault("skipped", {})
    for size in (int(float(x)) for x in args.sizes.split(",")):
        for model in args.models.split(","):
            if size > limits.get(model, float("inf")):
                result["skipped"][f"{model}@{size}/{args.device}"] = f"past --limits {model}={limits[model]:g}"
                continue
            if any(r["size"] == size and r["model"] == model and r["device"] == args.device and "error" not in r
                   for r in result["rows"]):
                continue
            started = time.perf_counter()
            row = {"size": size, "model": model, "device": args.device,
                   **_child(size, model, args.device, args.steps, size <= args.eval_up_to)}
            row["wall_s"] = time.perf_counter() - started
            result["rows"] = [r for r in result["rows"]
                              if (r["size"], r["model"], r["device"]) != (size, model, args.device)] + [row]
            write_json(out, result)
            print(json.dumps(row), flush=True)
    result["growth"] = {
        model: {key: growth_exponent([r["interactions"] for r in rows], [r[key] for r in rows])
                for key in ("step_s", "evaluation_s", "train_peak_rss_mb", "train_peak_gpu_mb", "peak_rss_mb",
                            "peak_gpu_mb", "setup_s")}
        for model in args.models.split(",")
        if (rows := [r for r in result["rows"] if r["model"] == model and r["device"] == args.device
                     and "error" not in r])
    }
    write_json(out, result)
    print(json.dumps(result["growth"], indent=1))


if __name__ == "__main__":
    main()
