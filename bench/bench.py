"""Benchmark: per-epoch training time, inference + full-ranking evaluation time and peak memory per model.

Usage: python bench/bench.py --dataset DIR [--models micrec,inmo,lightgcn] [--device cpu|cuda] [--epochs 3]
Prints one line per model; a figure, not a test.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

from micrec_core.config import Config
from micrec_core.dataset import load_pair
from micrec_core.inference import evaluate_test
from micrec_core.model import alpha_at
from micrec_core.train import setup, train_step, validate


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory on CUDA, else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(dataset: Path, model: str, device: str, epochs: int) -> dict[str, float]:
    """Time `epochs` epochs of training (after one warm-up epoch), one validation and one test evaluation."""
    config = Config(model=model, dataset=str(dataset), device=device)
    pair = load_pair(dataset)
    s = setup(pair, config)
    optimizer = torch.optim.Adam(s.model.parameters(), lr=config.lr)
    generator = torch.Generator(device=s.device).manual_seed(0)
    for _ in range(config.batches_per_epoch):
        train_step(s, alpha_at(0), generator, optimizer)
    sync(s.device)
    started = time.perf_counter()
    for epoch in range(epochs):
        for _ in range(config.batches_per_epoch):
            train_step(s, alpha_at(epoch), generator, optimizer)
    sync(s.device)
    epoch_s = (time.perf_counter() - started) / epochs
    started = time.perf_counter()
    validate(s, alpha_at(epochs))
    sync(s.device)
    val_s = time.perf_counter() - started
    started = time.perf_counter()
    evaluate_test(s, [alpha_at(epochs)] * 2)
    sync(s.device)
    test_s = time.perf_counter() - started
    return {
        "steps_per_s": config.batches_per_epoch / epoch_s,
        "epoch_s": epoch_s,
        "validate_s": val_s,
        "inference_eval_s": test_s,
        "peak_mb": peak_memory_mb(s.device),
    }


def main() -> None:
    """Parse arguments and print one line per model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, type=Path)
    parser.add_argument("--models", default="micrec,inmo,lightgcn")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    print(f"dataset={args.dataset} device={args.device} torch={torch.__version__} threads={torch.get_num_threads()}")
    for model in args.models.split(","):
        figures = bench(args.dataset, model, args.device, args.epochs)
        print(model.ljust(9), "  ".join(f"{k}={v:.3f}" for k, v in figures.items()), flush=True)


if __name__ == "__main__":
    main()
