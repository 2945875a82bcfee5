"""Check that the blocked evaluation reproduces the test metrics a run recorded: for every run folder with a model.pt
under RUNS, load the model, evaluate it with the default blocks and with one user per block, and compare both with the
metrics.json written when the run was trained (before evaluation scored users in blocks). A figure, not a test: the
unit test (tests/test_registry.py) covers every model on the synthetic pair; this covers the committed real runs.

Usage: python bench/check_blocked_eval.py --runs runs/Toys_and_Games_Video_Games/runs/Toys_and_Games_Video_Games \
       --dataset data/processed/Toys_and_Games_Video_Games
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from micrec_core.evaluation.inference import evaluate_test
from micrec_core.runs.experiment import load_run


def largest_difference(a: Any, b: Any) -> float:
    """The largest absolute difference between two nested dicts of numbers (None = NaN on both sides)."""
    if isinstance(a, dict):
        return max((largest_difference(a[k], b[k]) for k in a), default=0.0)
    if a is None or b is None:
        return 0.0 if a is None and b is None else math.inf
    return abs(float(a) - float(b))


def main() -> None:
    """Print one line per run: the largest difference to the recorded metrics, default blocks and one user per block."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="folder of run folders (<variant>/seed<k>/)")
    parser.add_argument("--dataset", required=True, help="the built dataset the runs trained on")
    args = parser.parse_args()
    worst = 0.0
    for model in sorted(Path(args.runs).glob("*/seed*/model.pt")):
        run = model.parent
        recorded = json.loads((run / "metrics.json").read_text())["test"]
        s, alphas = load_run(run, Path(args.dataset))
        default, single = evaluate_test(s, alphas), evaluate_test(s, alphas, block_elements=1)
        gaps = largest_difference(recorded, default), largest_difference(recorded, single)
        worst = max(worst, *gaps)
        print(f"{run.parent.name}/{run.name}: largest |difference| default blocks {gaps[0]:.3g}, "
              f"one user per block {gaps[1]:.3g}")
    print(f"largest over all runs: {worst:.3g}")


if __name__ == "__main__":
    main()
