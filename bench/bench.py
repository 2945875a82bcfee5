"""Benchmark: per-epoch training time, inference + full-ranking evaluation time and peak memory per model.

Usage: python bench/bench.py --dataset DIR [--models micrec,inmo,lightgcn] [--device cpu|cuda] [--epochs 3]
       [--together K] [--union] [--graph] [--compile] [--early-stop] [--profile]
--models takes any `micrec grid` variant (micrec, no-mm, ..., inmo, lightgcn). With --together K, K seeds train
as one union graph (`micrec_core.training.batched`); steps/s then counts the optimizer steps of all K runs (K per union
step), the figure to compare with the plain path's. --union puts every model of --models x K seeds in ONE union,
as `micrec grid` does on a GPU; --graph replays each epoch of the union from a CUDA graph. Prints one line per model
(one for the union); a figure, not a test.
--early-stop instead trains to early stop (patience 50, at most --max-epochs) and prints the epochs run,
the best epoch and the wall seconds.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

from micrec_core.data.dataset import load_pair
from micrec_core.evaluation.inference import evaluate_test
from micrec_core.models.micrec import alpha_at
from micrec_core.models.setup import setup
from micrec_core.runs.grid import variant_config
from micrec_core.training.batched import Together, epoch_steps, train_together, validate_together
from micrec_core.training.train import start_run, train, train_step, validate


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory on CUDA, else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(
    dataset: Path, variants: list[str], device: str, epochs: int, together: int = 0, profile: bool = False,
    graph: bool = False, compile_losses: bool = False,
) -> dict[str, float]:
    """Time `epochs` epochs of training (after one warm-up epoch), one warm validation and one test evaluation.

    together = 0: the plain path (`train_step`) of the first variant; K >= 1: K seeds of every variant as one
    union graph (`Together.step`). profile: also count the aten operations per run-step over 10 steps and give
    the three with the largest share of time (eager steps). graph: each epoch of the union replays a CUDA graph
    (`batched.epoch_steps`; with profile: kernels and kernel time per step of the replays). compile_losses: the
    union's forward and loss through `torch.compile` (an experiment, not in the package: a union that changes
    recompiles). Validation and evaluation time one run (the first); with K >= 1, validate_union_s is one warm
    `validate_together` of the whole union (what an epoch of the grid validates). last_loss: the mean loss of the
    last timed step, to compare paths run with the same seeds.
    """
    pair = load_pair(dataset)
    configs = [variant_config(v, dataset, k, device=device) for v in variants for k in range(max(together, 1))]
    setups = [setup(pair, config) for config in configs]
    s, config = setups[0], configs[0]
    if together:
        union = Together.of([start_run(x, None, False, None) for x in setups])
        if compile_losses:
            union.losses = torch.compile(union.losses)  # type: ignore[method-assign]

        def step(alpha: float) -> torch.Tensor:
            return torch.stack(union.step(alpha))

        def epoch(alpha: float) -> torch.Tensor:
            return torch.stack(epoch_steps(union, alpha, config.batches_per_epoch, graph)[-1])
    else:
        run = start_run(s, None, False, None)

        def step(alpha: float) -> torch.Tensor:
            return train_step(s, alpha, run.generator, run.optimizer)

        def epoch(alpha: float) -> torch.Tensor:
            return torch.stack([step(alpha) for _ in range(config.batches_per_epoch)])[-1]
    epoch(alpha_at(0))
    sync(s.device)
    started = time.perf_counter()
    for e in range(epochs):
        last = epoch(alpha_at(e))
    sync(s.device)
    epoch_s = (time.perf_counter() - started) / epochs
    figures = {"last_loss": float(last.mean())}
    if profile and graph:
        with torch.profiler.profile() as prof:
            epoch(alpha_at(epochs))
            sync(s.device)
        kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
        figures["kernels_per_step"] = sum(e.count for e in kernels) / config.batches_per_epoch
        figures["kernel_ms_per_step"] = sum(e.self_device_time_total for e in kernels) / 1e3 / config.batches_per_epoch
        figures["wall_ms_per_step"] = epoch_s * 1e3 / config.batches_per_epoch
        total = max(sum(e.self_device_time_total for e in kernels), 1e-9)
        for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:3]:
            figures[f"share_{e.key[:40].replace(' ', '_')}"] = e.self_device_time_total / total
    elif profile:
        with torch.profiler.profile() as prof:
            for _ in range(10):
                step(alpha_at(epochs))
            sync(s.device)
        ops = [e for e in prof.key_averages() if e.key.startswith("aten::")]
        figures["aten_ops_per_run_step"] = sum(e.count for e in ops) / (10 * len(setups))
        own = {e.key: e.self_device_time_total if s.device.type == "cuda" else e.self_cpu_time_total for e in ops}
        total = max(sum(own.values()), 1e-9)
        for key in sorted(own, key=lambda k: -own[k])[:3]:
            figures[f"share_{key.removeprefix('aten::')}"] = own[key] / total
    validate(s, alpha_at(epochs))  # the first pass pays one-off costs (on a GPU ~1 s of kernel and handle set-up)
    sync(s.device)
    started = time.perf_counter()
    validate(s, alpha_at(epochs))
    sync(s.device)
    val_s = time.perf_counter() - started
    if together:
        validate_together(union, alpha_at(epochs))
        sync(s.device)
        started = time.perf_counter()
        validate_together(union, alpha_at(epochs))
        sync(s.device)
        figures["validate_union_s"] = time.perf_counter() - started
    started = time.perf_counter()
    phases = [s.model.prepare_inference(d) for d in range(2)]
    sync(s.device)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    evaluate_test(s, [alpha_at(epochs)] * 2, phases)
    sync(s.device)
    test_s = time.perf_counter() - started
    return {
        "steps_per_s": len(setups) * config.batches_per_epoch / epoch_s,
        "epoch_s": epoch_s,
        "validate_s": val_s,
        "inference_graph_s": build_s,
        "inference_eval_s": test_s,
        "peak_mb": peak_memory_mb(s.device),
    } | figures


def early_stop(dataset: Path, variants: list[str], device: str, together: int, max_epochs: int) -> dict[str, float]:
    """Train to early stop, plain (together = 0) or K seeds of every variant as one union; epochs, wall seconds."""
    pair = load_pair(dataset)
    configs = [variant_config(v, dataset, k, device=device, max_epochs=max_epochs)
               for v in variants for k in range(max(together, 1))]
    setups = [setup(pair, config) for config in configs]
    started = time.perf_counter()
    states = train_together(setups) if together else [train(setups[0])]
    sync(setups[0].device)
    return {
        "wall_s": time.perf_counter() - started,
        "epochs_run": max(state.epoch for state in states),
        "best_epoch": max(max(state.best_epoch) for state in states),
    }


def main() -> None:
    """Parse arguments and print one line per model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, type=Path)
    parser.add_argument("--models", default="micrec,inmo,lightgcn")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--together", type=int, default=0, help="K seeds as one union graph (0: plain path)")
    parser.add_argument("--union", action="store_true", help="every model x K seeds in one union graph")
    parser.add_argument("--graph", action="store_true", help="with --together: replay each epoch from a CUDA graph")
    parser.add_argument("--early-stop", action="store_true", help="train to early stop and time it")
    parser.add_argument("--max-epochs", type=int, default=1000)
    parser.add_argument("--profile", action="store_true", help="count operations per step and their time shares")
    parser.add_argument("--compile", action="store_true", help="with --together: torch.compile the union's losses")
    args = parser.parse_args()
    print(f"dataset={args.dataset} device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"together={args.together}")
    models = args.models.split(",")
    if (args.union or args.graph or args.compile) and not args.together:
        parser.error("--union, --graph and --compile need --together K")
    for variants in [models] if args.union else [[m] for m in models]:
        if args.early_stop:
            figures = early_stop(args.dataset, variants, args.device, args.together, args.max_epochs)
        else:
            figures = bench(args.dataset, variants, args.device, args.epochs, args.together, args.profile, args.graph,
                            args.compile)
        print("+".join(variants).ljust(9), "  ".join(f"{k}={v:.3f}" for k, v in figures.items()), flush=True)


if __name__ == "__main__":
    main()
