"""Compare two sets of grid runs of the same configs (e.g. on two GPUs): epochs, best epochs and test NDCG@N.

Usage: python bench/compare_runs.py A_ROOT B_ROOT [--n 20] [--csv OUT.csv]
Each root holds <pair>/<variant>/seed<k>/metrics.json (a `micrec grid --runs` folder). Prints, per pair and variant,
the mean ± std over seeds of the test NDCG@N (all users) of each domain in A and in B, and how many runs stopped at
the same epoch with the same best epoch; --csv writes one row per run found in both. A figure, not a test.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path


def _runs(root: Path) -> dict[tuple[str, str, str], dict]:
    """metrics.json of every run under root, keyed by (pair, variant, seed folder)."""
    return {tuple(f.relative_to(root).parts[:3]): json.loads(f.read_text())  # type: ignore[misc]
            for f in sorted(root.glob("*/*/seed*/metrics.json"))}


def _ndcg(metrics: dict, n: int) -> list[float]:
    """Test NDCG@n over all users, one per domain."""
    return [groups["all"][f"ndcg@{n}"] for groups in metrics["test"].values()]


def _spread(values: list[float]) -> str:
    """mean ± std over seeds."""
    return f"{statistics.mean(values):.4f}±{statistics.stdev(values) if len(values) > 1 else 0:.4f}"


def main() -> None:
    """Print the per-variant comparison; optionally write the per-run rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args()
    a, b = _runs(args.a), _runs(args.b)
    both = sorted(a.keys() & b.keys())
    if not both:
        raise SystemExit(f"no run is in both {args.a} and {args.b}")
    rows = []
    for key in both:
        ma, mb = a[key], b[key]
        rows.append({"pair": key[0], "variant": key[1], "seed": key[2].removeprefix("seed"),
                     "epochs_a": ma["epochs_run"], "best_a": ma["best_epoch"],
                     "epochs_b": mb["epochs_run"], "best_b": mb["best_epoch"],
                     **{f"ndcg{args.n}_a_{i}": v for i, v in enumerate(_ndcg(ma, args.n))},
                     **{f"ndcg{args.n}_b_{i}": v for i, v in enumerate(_ndcg(mb, args.n))}})
    for pair, variant in sorted({(r["pair"], r["variant"]) for r in rows}):
        cell = [r for r in rows if (r["pair"], r["variant"]) == (pair, variant)]
        same = sum(r["epochs_a"] == r["epochs_b"] and r["best_a"] == r["best_b"] for r in cell)
        spreads = {(side, i): _spread([r[f"ndcg{args.n}_{side}_{i}"] for r in cell]) for side in "ab" for i in (0, 1)}
        print(f"{pair:28s} {variant:15s} same stop {same}/{len(cell)}  NDCG@{args.n} A "
              f"{spreads['a', 0]} / {spreads['a', 1]}  B {spreads['b', 0]} / {spreads['b', 1]}")
    if args.csv is not None:
        with args.csv.open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
