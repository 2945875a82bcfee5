"""How `micrec data build` scales: build seconds and peak memory against the number of reviews.

For each size N, bench/make_reviews.py writes a pair of categories of N/2 reviews each (sharing reviewers, in a
release layout, gzipped), then each engine builds the pair in a fresh subprocess (`build_dataset(..., engine=)`,
5-core by default). The default engine is "arrow" (micrec_core.data.columnar); "python" is the line reader it replaced,
run up to --python-max reviews for comparison, and where both ran the two builds are checked to be the same
dataset (dataset_sha256). Printed: a table of reviews, engine, build seconds, peak RSS of the build process (its
VmHWM, so Linux only) and interactions kept; --out writes the figures as JSON.

    .venv/bin/python bench/build_scale.py --sizes 100000,1000000 --out bench/results/build_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from make_reviews import LAYOUTS, write_pair

from micrec_core.data.atomic import write_json
from micrec_core.data.dataset import code_version
from micrec_core.training.provenance import code_sha256

# Runs in the child: build, then report seconds, peak RSS (VmHWM of the process, Linux; also after the imports,
# torch's included; ru_maxrss would count the parent's RSS at fork), the 1-minute load average before the build
# (other work on the machine) and what was kept.
CHILD = """
import json, os, sys, time
from micrec_core.data.dataset import SplitParams, build_dataset, dataset_sha256

def peak_mb():
    status = open("/proc/self/status").read()
    return round(int(status.split("VmHWM:")[1].split()[0]) / 1024)

raw, out, engine, release, min_count = sys.argv[1:6]
baseline, load = peak_mb(), os.getloadavg()[0]
started = time.perf_counter()
stats = build_dataset(raw, ("Scale_A", "Scale_B"), out, release, SplitParams(min_count=int(min_count)),
                      engine=engine)
seconds = time.perf_counter() - started
kept = sum(d["E_tr"] + d["E_new"] + d["E_val"] + d["E_test"] for d in stats["domains"].values())
print(json.dumps({"build_s": round(seconds, 2), "peak_rss_mb": peak_mb(), "imports_rss_mb": baseline,
                  "load_before": round(load, 2), "kept": kept, "overlap_users": stats["overlap_users"],
                  "dataset_sha256": dataset_sha256(out)}))
"""


def build(raw: Path, out: Path, engine: str, layout: str, min_count: int) -> dict[str, Any]:
    """Build in a fresh subprocess; its figures."""
    done = subprocess.run([sys.executable, "-c", CHILD, str(raw), str(out), engine, layout, str(min_count)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{engine} build of {raw} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def measure(workdir: Path, sizes: list[int], engines: list[str], python_max: int, layout: str,
            min_count: int) -> list[dict[str, Any]]:
    """Generate (or reuse) each size's files and build them with each engine; one row per build."""
    rows = []
    for size in sizes:
        raw = workdir / f"raw_{layout}_{size}"
        generated = None  # files reused from an earlier call
        if not raw.is_dir():
            started = time.perf_counter()
            write_pair(raw.with_name(raw.name + ".partial"), size // 2, layout)
            os.replace(raw.with_name(raw.name + ".partial"), raw)
            generated = round(time.perf_counter() - started, 1)
        digests = {}
        for engine in engines:
            if engine == "python" and size > python_max:
                continue
            out = workdir / f"build_{layout}_{size}_{engine}"
            figures = build(raw, out, engine, layout, min_count)
            shutil.rmtree(out)
            digests[engine] = figures.pop("dataset_sha256")
            rows.append({"reviews": size, "engine": engine, **figures, "generate_s": generated,
                         "gzip_mb": round(sum(p.stat().st_size for p in raw.rglob("*.gz")) / 2**20, 1)})
            print(_line(rows[-1]), flush=True)
        if len(digests) > 1:
            same = len(set(digests.values())) == 1
            for row in rows[-len(digests):]:
                row["same_dataset"] = same
            print(f"  engines build the same dataset: {same}", flush=True)
    return rows


HEADER = ("| reviews | engine | build s | peak RSS MB (after imports) | kept | overlap users | gzip MB | generate s "
          "| load |")


def _line(row: dict[str, Any]) -> str:
    """A table row."""
    return (f"| {row['reviews']:,} | {row['engine']} | {row['build_s']:.2f} | "
            f"{row['peak_rss_mb']:,} ({row['imports_rss_mb']:,}) | {row['kept']:,} | {row['overlap_users']:,} | "
            f"{row['gzip_mb']} | {row['generate_s'] or 'reused'} | {row['load_before']} |")


def _sizes(text: str) -> list[int]:
    """Parse --sizes: comma-separated counts, 1e6 notation allowed."""
    return [int(float(part)) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=_sizes, default=_sizes("1e5,1e6,1e7"),
                        help="reviews per pair, comma-separated (default: 1e5,1e6,1e7)")
    parser.add_argument("--engines", default="arrow,python", help="engines to time (default: arrow,python)")
    parser.add_argument("--python-max", type=float, default=1e6,
                        help="largest size the python engine builds (default: 1e6)")
    parser.add_argument("--layout", choices=LAYOUTS, default="2014", help="release layout (default: 2014)")
    parser.add_argument("--min-count", type=int, default=4,
                        help="keep users/items with more than this many interactions (default: 4, the 5-core)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where files go, reused across calls (default: a temporary folder, removed after)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures here as JSON (default: none)")
    args = parser.parse_args(argv)
    print(HEADER, "|---:|---|---:|---:|---:|---:|---:|---:|---:|", sep="\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="build_scale_") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        rows = measure(workdir, args.sizes, args.engines.split(","), int(args.python_max), args.layout,
                       args.min_count)
    if args.out:
        write_json(args.out, {
            "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "python": platform.python_version(), "layout": args.layout, "min_count": args.min_count,
            "reviews_are": "per pair (N/2 per category)", "git_commit": code_version()["git_commit"],
            "code_sha256": code_sha256(), "command": "python bench/build_scale.py " + " ".join(argv or sys.argv[1:]),
            "rows": rows,
        })


if __name__ == "__main__":
    main()
