#!/usr/bin/env bash
# A short device call (~3 min) for issue #5: is the union step capturable in a CUDA graph, does the graphed union
# compute what each run computes alone, and how much faster is it than the eager union (same call, same card)?
# Carry [".gpu"] (bench/gpu_session.sh says how to make it); run with MICREC_GIT_COMMIT=<this commit> set in the
# command (the device's copy of .git can be stale). Writes check_graph.txt and bench_graph.txt under $OUT.
set -uo pipefail
: "${OUT:?set OUT to the folder that comes back}"
PAIR=${PAIR:-Beauty_Electronics}
DEVICE=${DEVICE:-cuda}
UNION=micrec,no-mm,no-cd,no-vis,no-txt,inmo
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
say() { echo "[$(date -u +%H:%M:%S)] $*"; }
if [ -f .gpu/data.tar.gz ]; then tar xzf .gpu/data.tar.gz; fi
data=data/processed/$PAIR

say "graphed union == runs alone on $PAIR"
timeout 90 python3 bench/check_fast_path.py --dataset "$data" --device "$DEVICE" --variants micrec,inmo --seeds 2 \
  --epochs 2 --graph > "$OUT/check_graph.txt" 2>&1
say "check exit $?"
tail -3 "$OUT/check_graph.txt"

say "bench: one MICRec run and the grid's 30-run union, eager and from CUDA graphs"
for args in "--together 1 --models micrec" "--together 1 --models micrec --graph" \
            "--together 5 --union --models $UNION" "--together 5 --union --models $UNION --graph"; do
  timeout 60 python3 bench/bench.py --dataset "$data" --device "$DEVICE" --epochs 2 $args 2>&1 | grep -v USDT
  echo "exit $? for $args"
done > "$OUT/bench_graph.txt"
cat "$OUT/bench_graph.txt"
say "done"
