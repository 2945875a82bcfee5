#!/usr/bin/env bash
# The prepared device session (issues #5, #6, #13): one call, everything it measures written under $OUT.
#
# Before the call, on the CPU machine, build the pairs and their text features (a few minutes); Food & Kitchen
# only builds at --min-count 5 from the shared copy (its SOURCES.md), which every number of it must say:
#   for p in Beauty,Electronics Toys_and_Games,Video_Games; do n=${p/,/_}
#     .venv/bin/micrec data build --raw ../shared/data/amazon2014 --pair $p --out data/processed/$n
#     .venv/bin/micrec features --dataset data/processed/$n; done
#   .venv/bin/micrec data build --raw ../shared/data/amazon2014 --pair Grocery_and_Gourmet_Food,Home_and_Kitchen \
#     --min-count 5 --out data/processed/Grocery_and_Gourmet_Food_Home_and_Kitchen
#   .venv/bin/micrec features --dataset data/processed/Grocery_and_Gourmet_Food_Home_and_Kitchen
#   mkdir -p .gpu && tar czf .gpu/data.tar.gz --exclude=cache data/processed/Beauty_Electronics \
#     data/processed/Grocery_and_Gourmet_Food_Home_and_Kitchen
# (4 MB: the uncovered modalities' zero features compress away; the folders themselves are over the 64 MiB a call
# carries). Then run it on the device with carry = [".gpu"] and the command `bash bench/gpu_session.sh`
# (timeout_s 600). The device image has torch, pandas, pyarrow and tqdm, which is all the core needs to train (the
# encoders are not loaded: features come cached). .gpu/ is git-ignored.
#
# Runs that CPU sessions finished (bench/cpu_session.sh) are not trained again: pack their json files with
#   PYTHONPATH=. .venv/bin/python bench/pack_finished.py <the CPU sessions' RUNS> .gpu/runs.tar.gz
# (early-stopped and diverged runs only; a few hundred kB), which this script unpacks into RUNS_DIR first, and
# `micrec grid` reuses each by its configuration and data sha256. A CPU run stopped by a time budget starts afresh
# here (its checkpoint is too large to carry).
#
# Run it as `MICREC_GIT_COMMIT=<the commit> bash bench/gpu_session.sh`: the device copy of .git can be stale (seen
# 2026-11-27), and the runs must record the code that ran.
#
# To time the issue's 70-run grid alone (#5), leave out MICRec-InfoNCE: VARIANTS=micrec,no-mm,no-cd,no-vis,no-txt,
# inmo,lightgcn, and name kind nvidia-h100-x1, the issue's card (done 2026-11-27 at e5a1575: 614 s in two calls;
# bench/RESULTS.md). With CHECK_SECONDS=45 BENCH_SECONDS=150 the check and the bench rows take ~100 s of a call.
#
# The runs live in RUNS_DIR (default .gpu_runs/, git-ignored), which a warm device machine keeps between calls: a
# second call at once with CONTINUE=1 resumes every run the first call's time budget stopped, from its checkpoint
# (`micrec grid` does so for any run stopped by a time budget whose checkpoint is there); CONTINUE=1 on a fresh
# machine, where that folder is gone, exits at once instead of starting the grid over.
#
# CHECK_SECONDS=0 and BENCH_SECONDS=0 skip the check and the benchmark (done on 2026-11-27, bench/RESULTS.md) and
# give the grid the whole budget: epochs to early stop on these pairs were 119-210 on a CPU (RESULTS.md), ~1.5 s
# each for a 30-run union from CUDA graphs.
#
# The whole script keeps to BUDGET seconds of wall time: the fast-path check and the benchmark are cut by their
# own timeouts, and the grid gets what is left less MARGIN, through `micrec grid --stop-after`: a run still
# training then stops at its epoch's end, is evaluated at its best epoch so far, and its metrics.json says
# "stopped": "time budget" (the book counts such runs apart from those that early-stopped).
#
# Issues #14 and #15's ten baselines (BASELINES; empty skips them) train after MICRec's union, on the plain path (no
# union of theirs), seed 0 of each first so that a budget-stopped call still leaves one full Table 2 row per model.
# Not yet timed on a GPU: on 2 CPU cores their epochs on Beauty x Electronics take 3-25 s (IDCF ~85 s, NeuMF ~100 s
# with its full-ranking validation; bench/RESULTS.md), so expect them to need calls of their own
# (CONTINUE=1); bench/cpu_session.sh trains the same runs on a CPU, session after session.
#
# Issue #13's sensitivity sweep (chapter 6) runs after the grid when SWEEP is set, per pair, one seed per point:
#   SWEEP="--set gamma_cl=1,0.1,0.01,0.001 --set loss_reduction=mean,sum --set cl_loss=paper,infonce"
# (a second group, e.g. gamma x tau, in a second call with SWEEP changed); the 5-seed test rows of chapter 6 are the
# grid's runs plus INMO with the full W (SE_FULL=1 adds `inmo --set se_weight=full`), and the validation-selected
# point's other seeds, which a later call trains with SWEEP naming that point and SWEEP_SEEDS=5.
#
# Issue #17's scaling curves on the GPU: SCALE_SECONDS=N (default 0: skipped) runs bench/scale.py --device cuda for at
# most N seconds before the grid (sizes 1e5..1e7, LightGCN, INMO and MICRec, evaluation at every size) and writes
# scaling-cuda.json; copy it to bench/results/ here, and it resumes from that file when given it back (the appendix
# chapter notebooks/appendix_scaling reads it).
#
# It writes: device.txt (GPU, torch, commit), check.txt (the union from CUDA graphs == each run alone, on the GPU),
# bench.txt (steps/s, inference + evaluation time, peak memory; MICRec eager with operation counts, one MICRec run
# from a CUDA graph with kernels per step, the same with torch.compile, the grid's 30-run union), grid_<pair>.log
# (the grid's wall time; per pair three unions: MICRec + ablations + INMO, MICRec with InfoNCE, LightGCN; one
# process each) and runs_<pair>.tar.gz (every run's metrics.json and config.json, and model.pt of the seed-0
# MICRec and INMO runs that chapters 4 and 9 load). Back here, each pair's runs go where `micrec reproduce`
# points the chapters:
#   mkdir -p runs/<pair>/runs/<pair> && tar xzf runs_<pair>.tar.gz -C runs/<pair>/runs/<pair>
set -uo pipefail
: "${OUT:?set OUT to the folder that comes back}"
START=$(date +%s)
BUDGET=${BUDGET:-560}
MARGIN=${MARGIN:-100}
DEVICE=${DEVICE:-cuda}
SEEDS=${SEEDS:-5}
MAX_EPOCHS=${MAX_EPOCHS:-1000}
BENCH_PAIR=${BENCH_PAIR:-Beauty_Electronics}
BENCH_EPOCHS=${BENCH_EPOCHS:-2}
CHECK_SECONDS=${CHECK_SECONDS:-75}
BENCH_SECONDS=${BENCH_SECONDS:-110}
PAIRS=${PAIRS:-"Beauty_Electronics Grocery_and_Gourmet_Food_Home_and_Kitchen"}
SWEEP=${SWEEP:-}
SWEEP_SEEDS=${SWEEP_SEEDS:-1}
SE_FULL=${SE_FULL:-1}
VARIANTS=${VARIANTS:-micrec,no-mm,no-cd,no-vis,no-txt,inmo,micrec-infonce,lightgcn}
# The last two: SGL and XSimGCL meeting unseen users and items with a random row (chapter 7's other reading); in
# the call that trains their mean-reading runs they train too (a later call would only evaluate those runs again).
BASELINES=${BASELINES:-multvae,imcgae,idcf,alpharec,unicdr,ppa,xsimgcl,ngcf,sgl,neumf,sgl+unseen_init=random,xsimgcl+unseen_init=random}
UNION=micrec,no-mm,no-cd,no-vis,no-txt,inmo
TOGETHER=${TOGETHER:-auto}
RUNS_DIR=${RUNS_DIR:-.gpu_runs}
CONTINUE=${CONTINUE:-0}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
say() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s] $*"; }
if [ "$CONTINUE" = 1 ] && [ ! -d "$RUNS_DIR" ]; then
  say "CONTINUE=1 but $RUNS_DIR is not here (a fresh machine): nothing to resume"; exit 3
fi
if [ -f .gpu/data.tar.gz ]; then tar xzf .gpu/data.tar.gz; fi
if [ -f .gpu/runs.tar.gz ]; then mkdir -p "$RUNS_DIR" && tar xzf .gpu/runs.tar.gz -C "$RUNS_DIR"; fi

{ echo "commit ${MICREC_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null)}"; nvidia-smi 2>/dev/null; nproc
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"
} > "$OUT/device.txt" 2>&1

if [ "$CHECK_SECONDS" -gt 0 ]; then
  say "fast path check on $BENCH_PAIR"
  timeout "$CHECK_SECONDS" python3 bench/check_fast_path.py --dataset "data/processed/$BENCH_PAIR" --device "$DEVICE" \
    --variants micrec,inmo --seeds 1 --epochs 3 $([ "$DEVICE" = cuda ] && echo --graph) > "$OUT/check.txt" 2>&1
  say "check exit $?"
fi

if [ "$BENCH_SECONDS" -gt 0 ]; then
  say "bench: MICRec plain (eager), one run from a CUDA graph (profiled), the grid's union, then one run with torch.compile"
  g=$([ "$DEVICE" = cuda ] && echo --graph)
  { timeout "$BENCH_SECONDS" bash -c "
    row() { timeout \$1 python3 bench/bench.py --dataset data/processed/$BENCH_PAIR --device $DEVICE \${@:2}; echo \"exit \$?\"; }
    row 40 --models micrec --epochs 1 --profile
    row 40 --models micrec --epochs 3 --together 1 $g --profile
    row 60 --models $UNION --epochs 2 --together $SEEDS --union $g
    row 90 --models micrec --epochs 3 --together 1 $g --compile"
  } > "$OUT/bench.txt" 2>&1
  say "bench done"
fi

SCALE_SECONDS=${SCALE_SECONDS:-0}
if [ "$SCALE_SECONDS" -gt 0 ]; then
  say "scaling benchmark on the GPU (at most $SCALE_SECONDS s)"
  [ -f bench/results/scaling-cuda.json ] && cp bench/results/scaling-cuda.json "$OUT/"
  timeout "$SCALE_SECONDS" python3 bench/scale.py --device "$DEVICE" --sizes 1e5,3e5,1e6,3e6,1e7 \
    --eval-up-to 1e7 --out "$OUT/scaling-cuda.json" > "$OUT/scale.txt" 2>&1
  say "scale exit $?"
fi

stop_after=$(( BUDGET - MARGIN - ($(date +%s) - START) ))
say "grid: $PAIRS, $SEEDS seeds, $VARIANTS, runs stop after $stop_after s"
for pair in $PAIRS; do
  ( start=$(date +%s)
    grid() { left=$(( stop_after - ($(date +%s) - start) ))
      [ "$left" -gt 30 ] || { echo "skipped (only $left s left): $*"; return; }
      timeout $(( left + MARGIN - 10 )) python3 -m micrec_core.cli grid \
      --dataset "data/processed/$pair" --device "$DEVICE" --max-epochs "$MAX_EPOCHS" --runs "$RUNS_DIR" --jobs 3 \
      --threads 2 --together "$TOGETHER" --stop-after "$left" --quiet "$@"
      echo "exit $? after $(( $(date +%s) - start )) s wall"; }
    grid --variants "$VARIANTS" --seeds "$SEEDS"
    [ "$SE_FULL" = 1 ] && grid --variants inmo --set se_weight=full --seeds "$SEEDS"
    if [ -n "$BASELINES" ]; then grid --variants "$BASELINES" --seeds 1; grid --variants "$BASELINES" --seeds "$SEEDS"; fi
    # shellcheck disable=SC2086
    [ -n "$SWEEP" ] && grid --variants micrec $SWEEP --seeds "$SWEEP_SEEDS"
  ) > "$OUT/grid_$pair.log" 2>&1 &
done
wait
say "grid done"

for pair in $PAIRS; do
  [ -d "$RUNS_DIR/$pair" ] || continue
  (cd "$RUNS_DIR/$pair" && { find . -name metrics.json -o -name config.json -o -name failed.json
     ls ./micrec/seed0/model.pt ./inmo/seed0/model.pt 2>/dev/null; } | tar czf "$OUT/runs_$pair.tar.gz" -T -)
  say "$pair: $(find "$RUNS_DIR/$pair" -name metrics.json | wc -l) runs in runs_$pair.tar.gz," \
    "$(grep -l '"stopped": "time budget"' "$RUNS_DIR/$pair"/*/seed*/metrics.json | wc -l) of them stopped by the budget"
done
say "done"
