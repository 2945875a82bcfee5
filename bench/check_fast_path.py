"""Check, on a real pair and device, that runs trained together compute what each run computes alone.

Usage: python bench/check_fast_path.py --dataset DIR [--device cuda] [--variants micrec,no-mm,inmo] [--seeds 2]
       [--epochs 3] [--graph]
Trains each (variant, seed) alone (`train.train`) and all as one union graph (`batched.train_together`), then
compares every epoch's loss and validation NDCG, the final scores and the test metrics. Prints the largest
differences; exits 1 beyond the tolerances of `micrec_core.training.batched` (LOSS_RTOL, SCORE_RTOL, RANKING_ATOL).
tests/test_batched.py asserts the same on CPU; this is its check before GPU timings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from micrec_core.data.dataset import load_pair
from micrec_core.evaluation.inference import evaluate_test, inference_scores
from micrec_core.models.setup import setup
from micrec_core.runs.grid import variant_config
from micrec_core.training.batched import LOSS_RTOL, RANKING_ATOL, SCORE_RTOL, train_together
from micrec_core.training.train import domain_alphas, train


def _leaves(tree: dict, prefix: str = "") -> dict[str, float]:
    """Flatten nested metric dicts to {'a/b/c': value}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _leaves(value, f"{prefix}{key}/")
        elif isinstance(value, float):
            out[f"{prefix}{key}"] = value
    return out


def main() -> None:
    """Train alone and together, print the largest differences, exit 1 beyond the tolerances of `batched`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--variants", default="micrec,no-mm,inmo")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--graph", action="store_true", help="train the union from CUDA graphs (batched.epoch_steps)")
    args = parser.parse_args()
    pair = load_pair(args.dataset)
    configs = [variant_config(v, args.dataset, k, device=args.device, max_epochs=args.epochs)
               for v in args.variants.split(",") for k in range(args.seeds)]
    alone = []
    for config in configs:
        s = setup(pair, config)
        alone.append((s, train(s)))
    setups = [setup(pair, config) for config in configs]
    states = train_together(setups, graph=args.graph)
    loss, ranking, score, epochs_match = 0.0, 0.0, 0.0, True
    for (s_a, state_a), s_b, state_b in zip(alone, setups, states, strict=True):
        epochs_match &= state_a.best_epoch == state_b.best_epoch and state_a.epoch == state_b.epoch
        for a, b in zip(state_a.history, state_b.history, strict=True):
            loss = max(loss, abs(b["loss"] - a["loss"]) / max(abs(a["loss"]), 1e-12))
            ranking = max(ranking, *(abs(b[k] - a[k]) for k in a if k.startswith("val_")))
        test_a, test_b = (_leaves(evaluate_test(s, domain_alphas(s, st))) for s, st in ((s_a, state_a), (s_b, state_b)))
        ranking = max(ranking, *(abs(test_b[k] - v) for k, v in test_a.items()))
        scores_a, scores_b = (inference_scores(s, domain_alphas(s, st)) for s, st in ((s_a, state_a), (s_b, state_b)))
        for a, b in zip(scores_a, scores_b, strict=True):
            score = max(score, float((a - b).abs().max() / a.abs().max()))
    print(f"{args.variants} on {args.dataset.name}, {args.seeds} seeds x {args.epochs} epochs, device {args.device}"
          f"{', union from CUDA graphs' if args.graph else ''}")
    print(f"together vs alone: same epochs and best epochs: {epochs_match}; largest relative loss difference "
          f"{loss:.1e} (tolerance {LOSS_RTOL}), relative score difference {score:.1e} ({SCORE_RTOL}), absolute "
          f"validation/test metric difference {ranking:.1e} ({RANKING_ATOL})")
    ok = epochs_match and loss <= LOSS_RTOL and score <= SCORE_RTOL and ranking <= RANKING_ATOL
    print("OK: the fast path computes the plain path's function" if ok else "MISMATCH beyond the tolerances")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
