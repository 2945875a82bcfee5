"""Where a validation pass spends its time: warm timings and a profile of one pass (CPU and, on CUDA, device).

Usage: python bench/profile_validation.py --dataset DIR [--variant micrec] [--device cuda] [--repeat 10]
A figure, not a test: prints the median wall time of `train.validate` after warm-up and the profiler's top rows.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from micrec_core.data.dataset import load_pair
from micrec_core.models.setup import setup
from micrec_core.runs.grid import variant_config
from micrec_core.training.train import validate


def main() -> None:
    """Time warm validation passes and print the profile of one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, type=Path)
    parser.add_argument("--variant", default="micrec")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    s = setup(load_pair(args.dataset), variant_config(args.variant, args.dataset, 0, device=args.device))
    cuda = s.device.type == "cuda"

    def timed() -> float:
        started = time.perf_counter()
        validate(s, 0.75)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started

    first = timed()
    times = [timed() for _ in range(args.repeat)]
    print(f"{args.variant} on {args.dataset.name}, {s.device}: first validation {first:.4f} s, warm median "
          f"{statistics.median(times):.4f} s (min {min(times):.4f}, max {max(times):.4f})")
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        timed()
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=12))
    if cuda:
        print(table.table(sort_by="self_device_time_total", row_limit=8))


if __name__ == "__main__":
    main()
