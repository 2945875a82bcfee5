#!/usr/bin/env bash
# The prepared device session for issues #5 and #6: one call, everything it measures written under $OUT.
#
# Before the call, on the CPU machine, build both pairs and their text features (a few minutes):
#   for p in Beauty,Electronics Toys_and_Games,Video_Games; do n=${p/,/_}
#     .venv/bin/micrec data build --raw ../shared/data/amazon2014 --pair $p --out data/processed/$n
#     .venv/bin/micrec features --dataset data/processed/$n; done
#   mkdir -p .gpu && tar czf .gpu/data.tar.gz --exclude=cache data/processed/Beauty_Electronics \
#     data/processed/Toys_and_Games_Video_Games
# (4 MB: the uncovered modalities' zero features compress away; the folders themselves are over the 64 MiB a call
# carries). Then run it on the device with carry = [".gpu"] and the command `bash bench/gpu_session.sh`
# (timeout_s 600). The device image has torch, pandas, pyarrow and tqdm, which is all the core needs to train (the
# encoders are not loaded: features come cached). .gpu/ is git-ignored.
#
# It writes: device.txt (GPU, torch, commit), check.txt (fast path == plain path on the GPU), bench.txt (steps/s,
# inference + evaluation time, peak memory; plain and 5 seeds together), grid_<pair>.log (the grid's wall time: per
# pair two unions, the 30 MICRec / ablation / INMO runs and the 5 LightGCN runs, one process each)
# and runs.tar.gz (every finished run's metrics.json and config.json). Back here, each pair's runs go where
# `micrec reproduce` points the chapters:
#   mkdir -p runs/<pair>/runs && tar xzf runs.tar.gz -C runs/<pair>/runs ./<pair>
# A grid cut off by GRID_SECONDS leaves its unfinished runs out of the tarball; a later session trains them.
set -uo pipefail
: "${OUT:?set OUT to the folder that comes back}"
DEVICE=${DEVICE:-cuda}
SEEDS=${SEEDS:-5}
MAX_EPOCHS=${MAX_EPOCHS:-1000}
JOBS=${JOBS:-2}
GRID_SECONDS=${GRID_SECONDS:-420}
BENCH_PAIR=${BENCH_PAIR:-Beauty_Electronics}
BENCH_EPOCHS=${BENCH_EPOCHS:-3}
PAIRS=${PAIRS:-"Toys_and_Games_Video_Games Beauty_Electronics"}
VARIANTS=${VARIANTS:-micrec,no-mm,no-cd,no-vis,no-txt,inmo,lightgcn}
TOGETHER=${TOGETHER:-auto}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
say() { echo "[$(date -u +%H:%M:%S)] $*"; }
if [ -f .gpu/data.tar.gz ]; then tar xzf .gpu/data.tar.gz; fi

{ git rev-parse HEAD 2>/dev/null; nvidia-smi 2>/dev/null
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"
} > "$OUT/device.txt" 2>&1

say "fast path check on $BENCH_PAIR"
python3 bench/check_fast_path.py --dataset "data/processed/$BENCH_PAIR" --device "$DEVICE" > "$OUT/check.txt" 2>&1
say "check exit $?"

say "bench: plain path, then 5 seeds together"
{ python3 bench/bench.py --dataset "data/processed/$BENCH_PAIR" --device "$DEVICE" --epochs "$BENCH_EPOCHS" --profile
  python3 bench/bench.py --dataset "data/processed/$BENCH_PAIR" --device "$DEVICE" --epochs "$BENCH_EPOCHS" \
    --together 5 --models micrec,inmo --profile
} > "$OUT/bench.txt" 2>&1
say "bench done"

say "grid: $PAIRS, $SEEDS seeds, $VARIANTS, at most $GRID_SECONDS s"
for pair in $PAIRS; do
  ( start=$(date +%s)
    timeout "$GRID_SECONDS" python3 -m micrec_core.cli grid --dataset "data/processed/$pair" --variants "$VARIANTS" \
      --seeds "$SEEDS" --device "$DEVICE" --max-epochs "$MAX_EPOCHS" --runs "$OUT/grid" --jobs "$JOBS" --together "$TOGETHER" --quiet
    echo "exit $? after $(( $(date +%s) - start )) s wall"
  ) > "$OUT/grid_$pair.log" 2>&1 &
done
wait
say "grid done"

if [ -d "$OUT/grid" ]; then
  finished=$(cd "$OUT/grid" && find . -name metrics.json | sed 's|/metrics.json$||')
  (cd "$OUT/grid" && for run in $finished; do echo "$run/metrics.json"; echo "$run/config.json"; done) \
    | tar czf "$OUT/runs.tar.gz" -C "$OUT/grid" -T -
  say "$(echo "$finished" | grep -c seed) finished runs in runs.tar.gz"
  rm -rf "$OUT/grid"
fi
