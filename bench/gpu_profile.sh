#!/usr/bin/env bash
# A short device call (~3 min) for issue #5: where a validation pass spends its time on the GPU, and the grid's
# union of 30 runs (MICRec, 4 ablations, INMO x 5 seeds) trained from CUDA graphs under a wall budget, for its
# epochs per second. Carry [".gpu"]; run as `MICREC_GIT_COMMIT=<commit> bash bench/gpu_profile.sh`.
# Writes profile_validation.txt, grid_graph.log and grid_graph_runs.txt under $OUT.
set -uo pipefail
: "${OUT:?set OUT to the folder that comes back}"
PAIR=${PAIR:-Beauty_Electronics}
DEVICE=${DEVICE:-cuda}
STOP_AFTER=${STOP_AFTER:-90}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
say() { echo "[$(date -u +%H:%M:%S)] $*"; }
if [ -f .gpu/data.tar.gz ]; then tar xzf .gpu/data.tar.gz; fi
data=data/processed/$PAIR

say "validation profile"
timeout 45 python3 bench/profile_validation.py --dataset "$data" --device "$DEVICE" 2>&1 | grep -v USDT \
  > "$OUT/profile_validation.txt"
head -1 "$OUT/profile_validation.txt"

say "grid union from CUDA graphs, runs stop after $STOP_AFTER s"
start=$(date +%s)
timeout $(( STOP_AFTER + 60 )) python3 -m micrec_core.cli grid --dataset "$data" \
  --variants micrec,no-mm,no-cd,no-vis,no-txt,inmo --seeds 5 --device "$DEVICE" --runs "$OUT/grid" --together yes \
  --graph ${GRAPH:-yes} --threads 4 --stop-after "$STOP_AFTER" --quiet > "$OUT/grid_graph.log" 2>&1
echo "exit $? after $(( $(date +%s) - start )) s wall" >> "$OUT/grid_graph.log"
tail -1 "$OUT/grid_graph.log"
python3 - "$OUT/grid" > "$OUT/grid_graph_runs.txt" <<'PY'
import json, sys
from pathlib import Path
for path in sorted(Path(sys.argv[1]).glob("*/*/seed*/metrics.json")):
    m = json.loads(path.read_text())
    print(path.parent.parent.name, path.parent.name, m["stopped"], m["epochs_run"], m["best_epoch"],
          round(m["train_seconds"], 1), m["provenance"]["cuda_graphs"], m["provenance"]["trained_together"],
          round(m["test"][next(iter(m["test"]))]["all"]["ndcg@20"], 4))
PY
head -3 "$OUT/grid_graph_runs.txt"
rm -rf "$OUT/grid"
say "done"
