"""Check, on a real pair and device, that runs trained together compute what each run computes alone.

Usage: python bench/check_fast_path.py --dataset DIR [--device cuda] [--variants micrec,no-mm,inmo] [--seeds 2]
       [--epochs 3]
Trains each (variant, seed) alone (`train.train`) and all as one union graph (`batched.train_together`), then
compares every epoch's loss and validation NDCG and the test metrics. Prints the largest differences; exits 1 when
any exceeds the tolerance. tests/test_batched.py asserts the same on CPU; this is its check before GPU timings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from micrec_core.batched import train_together
from micrec_core.dataset import load_pair
from micrec_core.grid import variant_config
from micrec_core.inference import evaluate_test
from micrec_core.train import domain_alphas, setup, train

RELATIVE = 1e-3


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
    """Train alone and together, print the largest relative differences, exit 1 on a mismatch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--variants", default="micrec,no-mm,inmo")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    pair = load_pair(args.dataset)
    configs = [variant_config(v, args.dataset, k, device=args.device, max_epochs=args.epochs)
               for v in args.variants.split(",") for k in range(args.seeds)]
    results = []
    for config in configs:
        s = setup(pair, config)
        state = train(s)
        results.append((state, evaluate_test(s, domain_alphas(s, state))))
    setups = [setup(pair, config) for config in configs]
    states = train_together(setups)
    worst: dict[str, float] = {}
    for (state_a, test_a), s, state_b in zip(results, setups, states, strict=True):
        test_b = evaluate_test(s, domain_alphas(s, state_b))
        pairs = [(_leaves(a), _leaves(b)) for a, b in zip(state_a.history, state_b.history, strict=True)]
        pairs.append((_leaves(test_a), _leaves(test_b)))
        for a, b in pairs:
            for key, value in a.items():
                diff = abs(b[key] - value) / max(abs(value), 1e-6)
                worst[key] = max(worst.get(key, 0.0), diff)
    top = sorted(worst.items(), key=lambda kv: -kv[1])[:5]
    print(f"{args.variants} on {args.dataset.name}, {args.seeds} seeds x {args.epochs} epochs, device {args.device}")
    print("largest relative differences, together vs alone:", ", ".join(f"{k}={v:.2e}" for k, v in top))
    ok = all(v <= RELATIVE for v in worst.values())
    print("OK: the fast path computes the plain path's function" if ok else f"MISMATCH above {RELATIVE}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
