#!/usr/bin/env bash
# A real pair's runs on this project's 2-core CPU, one session at a time (issues #13-#15), for sessions lent no
# device: every run the pair's chapters read, trained in the order the book needs them, within BUDGET seconds of
# wall time. A run the budget stops is evaluated at its best epoch so far and says "stopped": "time budget" in its
# metrics.json; the next call resumes it from its checkpoint (`micrec grid` does so), so calls add up across sessions
# and the book's chapters (`micrec reproduce`) then reuse every finished run. A session's machine may not outlive it
# (on 2026-12-03 a session found a fresh machine holding only what had landed, and 20 h of runs kept outside the
# checkout gone): at the end of each session commit the finished runs' files (`git add $(python
# bench/pack_finished.py --list RUNS)`); a budget-stopped run's checkpoint is not committed (.gitignore) and lives
# only as long as its machine. The machine may also outlive a session, and its processes with it (on 2026-12-04 the
# grid had run on through the 4.6 h between two sessions) or not (later that day the machine was kept but the grid was
# stopped at the session's end, its runs' checkpoints intact): a BUDGET reaching past the session's end keeps training
# in between where the processes survive, and the next session commits what finished and restarts the script, which
# resumes each unfinished run from its checkpoint. Past
# the deadline every run of the current grid call not yet finished still trains one epoch and is evaluated, so that
# each has metrics (the epoch is kept in its checkpoint): runs stop MARGIN seconds (default 600) before BUDGET to
# leave time for that.
#
#   bash bench/cpu_session.sh                 # Beauty x Electronics, 2 jobs of 1 thread, BUDGET=4200 s
#   PLAN=1 bash bench/cpu_session.sh          # train nothing: each stage's runs by state (`micrec grid --plan`)
#   PAIR=Grocery_and_Gourmet_Food,Home_and_Kitchen MIN_COUNT=5 bash bench/cpu_session.sh
#   STAGES=scale bash bench/cpu_session.sh    # stages 1-3 only (issue #13's runs), e.g. for each pair before the rest
#
# It needs a clean checkout (every run records the commit that trained it) and builds the pair, then its item
# features, first when they are missing. To go on editing the code meanwhile, run it from a clone of the commit with
# DATA and RUNS pointing back at this checkout (each run imports the code when it starts). RUNS defaults to
# runs/<pair>/runs, where the chapters read them; to keep a checkout clean while the pair is unfinished, point RUNS
# outside it and copy the folder in once every run is there. Code changes between calls are expected, so a run is
# resumed across them (ACROSS_CODE=1, the default; 0 refuses such checkpoints): the new code must first reproduce the
# checkpoint's last validation NDCG, and the run's metrics.json lists every code version that trained it
# (provenance.code_history; the book's provenance tables show such a run's commits joined by "+"). The order:
#   1. seed 0 of what chapters 5 and 6 (issue #13, the contrastive loss's scale) need: MICRec, INMO, the ablations
#      (Table 3; on data without images w/o VIS is MICRec's run and w/o TXT w/o MM's, trained once: grid.twin_of),
#      MICRec with InfoNCE, and INMO with the full W, in one grid call so that both cores stay busy to its end;
#   2. chapter 6's sensitivity sweep, one seed per point (the groups the Toys x Games copy ran; the chapter itself then
#      trains the other seeds of the point validation selects);
#   3. seeds 1..SEEDS-1 of stage 1 and of the sweep point chapter 6 selects on validation (`micrec select`), MICRec,
#      INMO and the selected point first (the comparison issue #13 reports per pair), then INMO with the full W and
#      the ablations;
#   4-6. Table 2's other baselines seed by seed (seed 0 of every model, then seed 1 of every model, ...), so that a
#      pair's Table 2 has every row at one seed long before it has five (the chapter trains every registered model,
#      so a partial row set publishes nothing; on Beauty x Electronics one seed of all of them is ~16 core-hours).
#      Once every baseline has seed 0, chapter 7 publishes the whole table with MICRec and INMO at their 5 seeds and
#      the others at 1: `micrec reproduce --like runs/<pair> --only 7 --chapter baseline_seeds=1` (then =2, ... as
#      the seeds land; every caption says which rows have how many seeds).
#      Within a seed: the nine faster baselines first (finished and committed within a session), then IDCF (whose
#      relation model attends over every key user and item) and NeuMF (whose validation runs its MLP over every
#      user x item pair), which together cost about as much as the nine; then SGL and XSimGCL meeting unseen users
#      and items with a random row (chapter 7's other reading, `sgl+unseen_init=random`): training never reads that
#      parameter, so the grid evaluates each such run's trained model again (seconds; `experiment.reevaluate`)
#      where its model.pt is still there, and trains it otherwise.
# Stages 1-3 serve issue #13 (the principal one) and 4-6 Table 2's baselines (#14, #15), so the sessions of
# 2026-12-04 ran each pair's first three stages before either pair's baselines, in one chain:
#   STAGES=scale bash bench/cpu_session.sh \
#     && PAIR=Grocery_and_Gourmet_Food,Home_and_Kitchen MIN_COUNT=5 STAGES=scale bash bench/cpu_session.sh \
#     && bash bench/cpu_session.sh && PAIR=Grocery_and_Gourmet_Food,Home_and_Kitchen MIN_COUNT=5 bash bench/cpu_session.sh
# Since 2026-12-05 (stages 1-3 done for both pairs) each pair's seed 0 of every baseline comes before any pair's
# seeds 1-4 (SEEDS=1 stops a call after seed 0: a whole Table 2 per pair first), and the two pairs train side by
# side, one core each (JOBS=1), because at the end of a seed's grid call one slow run (IDCF on Beauty x Electronics,
# past 100 epochs at ~2 min each) kept one core for hours while the other idled:
#   JOBS=1 SEEDS=1 bash bench/cpu_session.sh && JOBS=1 bash bench/cpu_session.sh &
#   F="PAIR=Grocery_and_Gourmet_Food,Home_and_Kitchen MIN_COUNT=5"
#   env $F JOBS=1 SEEDS=1 bash bench/cpu_session.sh && env $F JOBS=1 bash bench/cpu_session.sh &
# The runs are niced, but where the kernel shares the CPU between sessions first (autogroup, as on this project's
# machines: /proc/sys/kernel/sched_autogroup_enabled = 1) a nice value only ranks processes within one session, so
# the grid still takes half of the cores from a test run or a benchmark started elsewhere: pause it meanwhile
# (kill -STOP, then kill -CONT, the grid's process and its workers; the budget counts wall time, so it loses the pause).
# Measured on Beauty x Electronics (2 cores, one run at 2 torch threads, 2026-12-03): LightGCN, INMO and MICRec take
# ~5-6 s an epoch, UniCDR, PPA, Mult-VAE, XSimGCL and IMC-GAE 4-9 s, AlphaRec ~13 s, NGCF ~15 s, SGL ~25 s, IDCF
# ~85 s (about half since its fused attention), NeuMF ~100 s with its validation (bench/RESULTS.md); early stopping
# comes after 100-200 epochs, so the stages take many sessions: a GPU (bench/gpu_session.sh) trains them far faster.
set -uo pipefail
PAIR=${PAIR:-Beauty,Electronics}
NAME=${PAIR/,/_}
MIN_COUNT=${MIN_COUNT:-10}
RAW=${RAW:-../shared/data/amazon2014}
BUDGET=${BUDGET:-4200}
MARGIN=${MARGIN:-600}
SEEDS=${SEEDS:-5}
JOBS=${JOBS:-2}
PY=${PY:-.venv/bin/python}
DATA=${DATA:-data/processed/$NAME}
RUNS=${RUNS:-runs/$NAME/runs}
ACROSS_CODE=${ACROSS_CODE:-1}
PLAN=${PLAN:-0}
STAGES=${STAGES:-all}  # all, or scale: stop after stage 3
[ "$STAGES" = all ] || [ "$STAGES" = scale ] || { echo "STAGES must be all or scale, got $STAGES" >&2; exit 2; }
# Chapter 6's sweep, narrowed for 2 CPU cores from the 24 points Toys x Games ran (SWEEP_FULL: gamma 1..0.001 x
# reduction x denominator; gamma x tau) to 8, 6 of them new: the scale axis the issue is about (gamma x reduction;
# the mean reduction at gamma g weighs L_CL as the sum at about g x the batch size) and the denominator at the two
# largest gammas. On Toys x Games every cut point (gamma 0.001, tau 0.2 or 0.5, InfoNCE below gamma 0.1) stopped at
# MICRec's best epoch (49) with validation NDCG@20 within 0.002 of its own in each domain, below what its seeds
# differ by. SWEEP_CHAPTER is in the `sweep` syntax of chapter 6 (`micrec reproduce --chapter sweep=...`, which says
# what it leaves out when also given `--chapter full_sweep=<SWEEP_FULL>`); each of its groups is one grid call.
SWEEP_CHAPTER="gamma_cl=1,0.1,0.01 loss_reduction=mean,sum; gamma_cl=1,0.1 cl_loss=paper,infonce"
SWEEP_FULL="gamma_cl=1,0.1,0.01,0.001 loss_reduction=mean,sum cl_loss=paper,infonce; gamma_cl=1,0.1,0.01,0.001 tau=0.2,0.5"
START=$(date +%s)
say() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s] $*"; }
if [ "$PLAN" != 1 ] && [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  say "the checkout has uncommitted changes: the runs would record a commit that is not the code that trained them"
  exit 2
fi
missing=""
[ -f "$DATA/manifest.json" ] || missing="the built pair"
[ -f "$DATA/${PAIR%,*}/features/features.json" ] && [ -f "$DATA/${PAIR#*,}/features/features.json" ] \
  || missing="${missing:+$missing and }its item features"
if [ "$PLAN" = 1 ] && [ -n "$missing" ]; then
  say "plan: $DATA lacks $missing, which a call without PLAN builds first; no stage can be planned before"
  exit 0
fi
if [ ! -f "$DATA/manifest.json" ]; then
  say "building $PAIR (min_count $MIN_COUNT)"
  "$PY" -m micrec_core.cli data build --raw "$RAW" --pair "$PAIR" \
    --min-count "$MIN_COUNT" --out "$DATA" || exit 1
fi
if [ -n "$missing" ]; then
  say "encoding $PAIR's item features"
  "$PY" -m micrec_core.cli features --dataset "$DATA" || exit 1
fi
grid() {
  if [ "$PLAN" = 1 ]; then
    say "plan: grid $*"
    "$PY" -m micrec_core.cli grid --plan --dataset "$DATA" --runs "$RUNS" --device cpu --max-epochs 1000 \
      $([ "$ACROSS_CODE" = 1 ] && echo --resume-across-code) "$@" 2>/dev/null | tail -n 1
    return 0
  fi
  left=$(( BUDGET - MARGIN - ($(date +%s) - START) ))
  [ "$left" -gt 60 ] || { say "budget spent; skipped: $*"; return 1; }
  say "grid $* (runs stop after $left s)"
  nice -n 19 "$PY" -m micrec_core.cli grid --dataset "$DATA" --runs "$RUNS" --device cpu --jobs "$JOBS" \
    --threads 1 --max-epochs 1000 --stop-after "$left" --quiet $([ "$ACROSS_CODE" = 1 ] && echo --resume-across-code) "$@"
  say "exit $?"
}
SCALE_HEAD=micrec,inmo
SCALE_TAIL=inmo+se_weight=full,no-cd,no-mm,no-vis,no-txt,micrec-infonce  # no-vis, no-txt: see grid.twin_of
SCALE=$SCALE_HEAD,$SCALE_TAIL
BASELINES=lightgcn,unicdr,ppa,multvae,xsimgcl,imcgae,alpharec,ngcf,sgl
SLOW=idcf,neumf
INIT=sgl+unseen_init=random,xsimgcl+unseen_init=random
stages() {
  grid --variants "$SCALE" --seeds 1 || return
  IFS=';' read -ra groups <<< "$SWEEP_CHAPTER"
  for group in "${groups[@]}"; do
    # shellcheck disable=SC2086
    grid --variants micrec $(printf -- '--set %s ' $group) --seeds 1 || return
  done
  selected=""
  if chosen=$("$PY" -m micrec_core.cli select --dataset "$DATA" --runs "$RUNS" --sweep "$SWEEP_CHAPTER" 2>&1); then
    selected=$(tail -n 1 <<< "$chosen")
    say "the sweep's validation-selected point (micrec select): $selected"
  elif [ "$PLAN" = 1 ]; then
    say "plan: the sweep's validation-selected point: not yet ($(tail -n 1 <<< "$chosen"))"
  else
    say "no selection though the sweep ran: $(tail -n 1 <<< "$chosen")"; return 1
  fi
  variants=$SCALE
  if [ -n "$selected" ] && [[ ",$SCALE_HEAD," != *",$selected,"* ]]; then  # the selected point right after INMO
    tail=$(tr ',' '\n' <<< "$SCALE_TAIL" | grep -vxF "$selected" | paste -sd, -)
    variants="$SCALE_HEAD,$selected,$tail"
  fi
  grid --variants "$variants" --seeds "$SEEDS" || return
  [ "$STAGES" = all ] || return 0
  for seeds in $(seq 1 "$SEEDS"); do  # --seeds n adds seed n-1: past the deadline each unfinished run trains an epoch
    grid --variants "$BASELINES,$SLOW" --seeds "$seeds" || return
    grid --variants "$INIT" --seeds "$seeds" || return
  done
}
stages
[ "$PLAN" = 1 ] && say "chapter 6: --chapter \"sweep=$SWEEP_CHAPTER\" --chapter \"full_sweep=$SWEEP_FULL\""
say "finished: $(find "$RUNS" -name metrics.json | wc -l) runs," \
  "$(grep -l '"stopped": "time budget"' -r "$RUNS" --include=metrics.json | wc -l) of them stopped by the budget"
