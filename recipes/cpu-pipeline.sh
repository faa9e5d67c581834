#!/bin/bash
# The long-running compute on this project's 2-core CPU, as one resumable command: run it at the
# start of every session; it picks up where CACHE stands (every step skips what is done, every
# build and run resumes exactly) and returns at once, leaving two niced lanes, one pinned per core.
#
# Issue 33 (ckm-prior 2.0), STAGE=data (the default until 2.0's training recipe lands):
#   both lanes: the real cities' 12 validation tiles (RT_REAL_VAL, shard i/2) -> the held-out eval
#           split (shard i/2) -> generated city scenes (`ckm-data cities`,
#           seconds) -> the cities build: ray-traced tiles of CITIES generated cities plus munich and
#           etoile, TILES_PER_SCENE each (shard i/2; round-robin over scenes, so a build stopped part
#           way covers every city) -> the training and all-tiles snapshots once both shards are done
#   STAGE=train adds issue 16's stages on that data: the site-aware prior (ckm-site/2), the ten
#           end-to-end baselines (one queue, a lock each) and, with RELEASE set, the release steps.
#
# The cities build: tile TILES_PER_SCENE-1 of every scene is held back for validation
# (datasets/recipes/rt-cities-validation.txt; never trained on) and left out of the training
# snapshot CACHE/rt-cities-snap; CACHE/rt-cities-snap-all holds them too (what `ckm-bench tune`
# reads, minus the training snapshot). Solver: Sionna's defaults of the shipped builds except
# --samples-per-src 30000 (docs/raytrace.md: ray-tracing cost). The eval split is checked against
# the committed manifest (datasets/recipes/sionna-rt-eval-64.manifest.json): byte-identical on the
# same CPU; on another, the same placements with path-level differences (datasets/recipes/README.md).
#
#   bash recipes/cpu-pipeline.sh            # start (or resume) the lanes
#   bash recipes/cpu-pipeline.sh status     # what is done, what runs
#   bash recipes/cpu-pipeline.sh pause      # SIGSTOP both lanes (timing, the test suite) ... resume
#
# Environment: CACHE (/root/ckm-cache: data, runs, logs, models; nothing in the work tree), STAGE
# (data), the plan's CITIES (24), CITY_SEED (33), TILES_PER_SCENE (25), RT_SAMPLES (30000) (recipes/cities-plan.sh), PRIOR_STEPS (30000),
# BASELINE_STEPS (6000), BIN (.venv/bin), RELEASE (the version the release steps build; empty: none),
# RT_REAL_VAL (CACHE/rt-train-val-snap: the real cities' validation tiles the release calibrates on).
# The release writes the package, the RESULTS records and the model card into this work tree (its
# log: CACHE/logs/release.log), for a person to commit.
# A lent GPU trains the same mixture in minutes instead: recipes/gpu-train.sh (docs/training.md).
set -uo pipefail
cd "$(dirname "$0")/.."
CACHE=${CACHE:-/root/ckm-cache}
STAGE=${STAGE:-data}
CITY_DIR=${CITY_DIR:-${CACHE:-/root/ckm-cache}/cities}
# shellcheck source=recipes/cities-plan.sh
. recipes/cities-plan.sh
PRIOR_STEPS=${PRIOR_STEPS:-30000}
BASELINE_STEPS=${BASELINE_STEPS:-6000}
BIN=$(realpath "${BIN:-.venv/bin}")
# the end-to-end baselines: single- and multi-configuration, each also site-aware (issue 33: a
# single-configuration site-aware model per task, with the same ckm-site/2 condition as the prior)
BASELINES=${BASELINES:-multi multi-site ipbox iprandom sr2 jtqr ipbox-site iprandom-site sr2-site jtqr-site}
RELEASE=${RELEASE-}  # 1.0.0 shipped (models/repository/ckm-prior/1.0.0); a released version is never rebuilt
REPO=$PWD
RT_TRAIN=$CACHE/rt-cities
RT_EVAL=$CACHE/rt-eval
RT_REAL_VAL=${RT_REAL_VAL:-$CACHE/rt-train-val-snap}
SNAP=$CACHE/rt-cities-snap
PROC=$CACHE/data/proc-calibrated
VALIDATION=$REPO/datasets/recipes/rt-cities-validation.txt
EVAL_MANIFEST=$REPO/datasets/recipes/sionna-rt-eval-64.manifest.json
mkdir -p "$CACHE/logs" "$CACHE/runs" "$CACHE/models/baselines"
log() { echo "[$(date '+%F %T')] $*" >>"$CACHE/logs/pipeline.log"; }

tiles_done() { ls "$1/.raytrace/tiles" 2>/dev/null | grep -c '\.npz$'; }
# this shard's tiles of the cities build still missing (the plan's jobs k = scene * TILES + tile, k % 2 == shard)
train_missing() {
    local shard=$1 n=0 k=0 t scene region
    for scene in $(city_scenes); do
        region=$(basename "$scene" .xml)
        for ((t = 0; t < TILES_PER_SCENE; t++)); do
            if [ $((k % 2)) = "$shard" ] && [ ! -f "$RT_TRAIN/.raytrace/tiles/$region-$(printf %05d "$t").npz" ]; then n=$((n + 1)); fi
            k=$((k + 1))
        done
    done
    echo "$n"
}

eval_missing() {  # this shard's eval tiles still missing (florence and san_francisco tiles i, i+2, ...; 32 each)
    local shard=$1 n=0 i scene
    [ -f "$RT_EVAL/manifest.json" ] && { echo 0; return; }
    for ((i = shard; i < 32; i += 2)); do
        for scene in florence san_francisco; do
            [ -f "$RT_EVAL/.raytrace/tiles/$scene-$(printf %05d "$i").npz" ] || n=$((n + 1))
        done
    done
    echo "$n"
}

# Dr.Jit can abort at interpreter exit after a build has finished its tiles ("jit_kernel_free():
# munmap() failed"): a build counts as done by its tiles, not its exit status; rerun (it resumes)
# until they are there, at most 3 times.
build_until() {  # what-missing shard command...
    local what=$1 shard=$2 try
    shift 2
    for try in 1 2 3; do
        [ "$("$what" "$shard")" = 0 ] && return 0
        "$@" || log "lane $shard: $what: the build exited with $? (try $try; resumes)"
    done
    [ "$("$what" "$shard")" = 0 ]
}

cities() {  # the generated scenes (a pure function of CITY_SEED and the index; kept when already written)
    [ -f "$CITY_DIR/gencity-$(printf %03d $((CITIES - 1)))/city.json" ] && return 0
    mkdir -p "$CACHE/locks"
    if mkdir "$CACHE/locks/cities" 2>/dev/null; then
        "$BIN/ckm-data" cities --out "$CITY_DIR" --count "$CITIES" --seed "$CITY_SEED" >>"$CACHE/logs/cities.log" 2>&1
        rmdir "$CACHE/locks/cities"
    else
        until [ -f "$CITY_DIR/gencity-$(printf %03d $((CITIES - 1)))/city.json" ]; do sleep 5; done
    fi
}

rt_train() {  # shard i of the cities build
    local missing
    cities || { log "lane $1: the city scenes failed (CACHE/logs/cities.log)"; return 1; }
    missing=$(train_missing "$1")
    [ "$missing" = 0 ] && return 0
    log "lane $1: cities build, $missing tile(s) of this shard to trace"
    build_until train_missing "$1" build_train "$1"
}
build_train() {
    # shellcheck disable=SC2046
    "$BIN/ckm-data" raytrace --out "$RT_TRAIN" $(city_plan) --device cpu --shard "$1/2" --no-assemble \
        >>"$CACHE/logs/rt-train.log" 2>&1
}

rt_eval() {
    [ "$(eval_missing "$1")" = 0 ] || {
        log "lane $1: eval split, shard $1/2: $(eval_missing "$1") tile(s) to trace"
        build_until eval_missing "$1" "$BIN/ckm-data" raytrace --out "$RT_EVAL" --eval florence san_francisco \
            --tiles-per-scene 32 --seed 1 --device cpu --shard "$1/2" >>"$CACHE/logs/rt-eval.log" 2>&1 || return 1
    }
    # the shard that finds the other's tiles there assembles the dataset (also when it was not the last)
    if [ ! -f "$RT_EVAL/manifest.json" ] && [ "$(eval_missing 0)" = 0 ] && [ "$(eval_missing 1)" = 0 ]; then
        "$BIN/ckm-data" raytrace --out "$RT_EVAL" --eval florence san_francisco --tiles-per-scene 32 --seed 1 \
            --device cpu >>"$CACHE/logs/rt-eval.log" 2>&1
    fi
    if [ -f "$RT_EVAL/manifest.json" ] && [ ! -f "$RT_EVAL/.checked" ]; then
        local want got
        want=$("$BIN/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['checksum'])" "$EVAL_MANIFEST")
        got=$("$BIN/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['checksum'])" "$RT_EVAL/manifest.json")
        if [ "$want" = "$got" ]; then log "eval split complete, identical to the committed manifest"
        else log "eval split complete but its checksum $got differs from the committed $want"; fi
        touch "$RT_EVAL/.checked"
    fi
}

snapshot() {  # once both training shards are done: the training mixture's ray-traced part
    [ -f "$SNAP/manifest.json" ] && return 0
    until [ "$(train_missing 0)" = 0 ] && [ "$(train_missing 1)" = 0 ]; do sleep 300; done
    mkdir -p "$CACHE/locks"
    if mkdir "$CACHE/locks/snapshot" 2>/dev/null; then
        rm -rf "$SNAP.tmp"
        "$BIN/ckm-data" raytrace --out "$RT_TRAIN" --snapshot "$SNAP.tmp" --exclude "$VALIDATION" \
            >>"$CACHE/logs/rt-train.log" 2>&1 && mv "$SNAP.tmp" "$SNAP" && log "snapshot: $SNAP"
        # and every finished tile (the validation tiles with them): what `ckm-bench tune` reads, minus $SNAP
        rm -rf "$SNAP-all" && "$BIN/ckm-data" raytrace --out "$RT_TRAIN" --snapshot "$SNAP-all" \
            >>"$CACHE/logs/rt-train.log" 2>&1 && log "snapshot with the validation tiles: $SNAP-all"
        # the generated cities' validation tiles alone: one of the uncertainty calibration's sets (release)
        not_gen_validation >"$CACHE/locks/not-gen-validation.txt"
        rm -rf "$SNAP-val-gen" && "$BIN/ckm-data" raytrace --out "$RT_TRAIN" --snapshot "$SNAP-val-gen" \
            --exclude "$CACHE/locks/not-gen-validation.txt" >>"$CACHE/logs/rt-train.log" 2>&1 \
            && log "snapshot of the generated cities' validation tiles: $SNAP-val-gen"
        rmdir "$CACHE/locks/snapshot"
    else
        until [ -f "$SNAP/manifest.json" ]; do sleep 60; done
    fi
}

not_gen_validation() {  # the build's finished tiles other than the generated cities' validation tiles
    ls "$RT_TRAIN/.raytrace/tiles" | sed -n 's/\.npz$//p' | grep -vxF -f <(grep '^gencity-' "$VALIDATION")
}

procedural() {
    [ -f "$PROC/manifest.json" ] && return 0
    mkdir -p "$CACHE/locks"
    if mkdir "$CACHE/locks/procedural" 2>/dev/null; then
        rm -rf "$PROC.tmp"
        "$BIN/ckm-data" generate --out "$PROC.tmp" --preset calibrated --train-regions 8 --eval-regions 1 \
            --tiles-per-region 128 --seed 11 --workers 1 >>"$CACHE/logs/procedural.log" 2>&1 \
            && mv "$PROC.tmp" "$PROC" && log "procedural tiles: $PROC"
        rmdir "$CACHE/locks/procedural"
    else
        until [ -f "$PROC/manifest.json" ]; do sleep 60; done
    fi
}

mixture() { echo "$PROC $SNAP:3 $REPO/datasets/sionna-rt-small:30"; }  # ~67 % ray-traced samples with the 624-tile cities snapshot

args_for() {  # job -> ckm-train arguments (the data, run directory and schedule come from train)
    case $1 in
        prior) echo "prior --preset small --site-aware --lr 2e-4 --warmup 200" ;;
        baseline-*-site) local task=${1#baseline-}; echo "baseline --preset small --task ${task%-site} --site-aware --lr 5e-4 --warmup 50" ;;
        baseline-*) echo "baseline --preset small --task ${1#baseline-} --lr 5e-4 --warmup 50" ;;
        *) return 1 ;;
    esac
}

train() {  # job steps [extra ckm-train arguments]: a run that resumes exactly from CACHE/runs/job
    local job=$1 steps=$2 args
    shift 2
    args=$(args_for "$job") || { log "unknown job $job"; return 1; }
    local run=$CACHE/runs/$job
    if [ -f "$run/checkpoint.pt" ] && "$BIN/python" - "$run/checkpoint.pt" "$steps" <<'PY'; then return 0; fi
import sys, torch
ck = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
sys.exit(0 if int(ck.get("step", 0)) >= int(sys.argv[2]) else 1)
PY
    log "training $job to $steps steps"
    # shellcheck disable=SC2046
    "$BIN/ckm-train" $args "$@" --data $(mixture) --out "$run" --steps "$steps" --crop 64 --batch-size 16 \
        --precision bf16 --ema-decay 0.999 --eval-every 500 --sample-every 100000000 --checkpoint-every 250 \
        --log-every 50 >>"$CACHE/logs/$job.log" 2>&1
}

baselines() {  # the six baselines as one queue both lanes draw from (lane 1 once the prior is done)
    local task lock
    mkdir -p "$CACHE/locks"
    for task in $BASELINES; do
        [ -f "$CACHE/models/baselines/baseline-$task.pt" ] && continue
        lock=$CACHE/locks/baseline-$task
        mkdir "$lock" 2>/dev/null || continue  # the other lane trains it
        if ! train "baseline-$task" "$BASELINE_STEPS"; then log "lane $1: baseline-$task failed"; rmdir "$lock"; return 1; fi
        "$BIN/ckm-train" slim --checkpoint "$CACHE/runs/baseline-$task/checkpoint.pt" \
            --out "$CACHE/models/baselines/baseline-$task.pt" --half >>"$CACHE/logs/pipeline.log" 2>&1
        rmdir "$lock"
    done
    [ "$(baselines_missing)" = 0 ] && log "baselines done: $CACHE/models/baselines"
    return 0
}

baselines_missing() {
    local task n=0
    for task in $BASELINES; do [ -f "$CACHE/models/baselines/baseline-$task.pt" ] || n=$((n + 1)); done
    echo "$n"
}

release() {  # [UNTIL=wide] release: recipes/release-prior.sh on the prior of CACHE/runs/prior (resumes)
    # the uncertainty calibration holds on each of two sets of validation tiles (nothing to exclude):
    # the generated cities' and the real cities' (RT_REAL_VAL: the 12 munich/etoile tiles 1.0.0's build
    # held back, traced with `ckm-data raytrace --train munich etoile --tiles-per-scene 512 --seed 1`,
    # the rest --exclude'd, then --snapshot); without them, VALIDATION minus the training snapshot
    local cal=()
    if [ -f "$SNAP-val-gen/manifest.json" ] && [ -f "$RT_REAL_VAL/manifest.json" ]; then
        cal=(CAL_DATA="$SNAP-val-gen $RT_REAL_VAL" CAL_EXCLUDE=)
    fi
    env "${cal[@]}" VERSION=$RELEASE CHECKPOINT=$CACHE/runs/prior/checkpoint.pt RUNS=$CACHE/runs/prior \
        WORK=$CACHE/release-$RELEASE VALIDATION=$SNAP-all VALIDATION_EXCLUDE=$SNAP \
        CALIBRATION=$SNAP HELD=$RT_EVAL BASELINES=$CACHE/models/baselines BIN=$BIN \
        bash recipes/release-prior.sh >>"$CACHE/logs/release.log" 2>&1
}

# The real cities' validation tiles (RT_REAL_VAL): the 12 munich/etoile tiles 1.0.0's build held back
# (datasets/recipes/rt-train-validation.txt), traced alone from that build's plan (every other tile
# --exclude'd: it is 1.0.0's training data, not needed here) into CACHE/rt-train, then snapshotted.
# Plan job k = scene * 512 + tile, so shard i/2 traces the tiles of parity i.
RT_REAL=$CACHE/rt-train
REAL_VAL_LIST=$REPO/datasets/recipes/rt-train-validation.txt
real_val_missing() {  # shard -> its validation tiles not traced yet
    local n=0 t
    for t in $(cat "$REAL_VAL_LIST"); do
        [ $((10#${t##*-} % 2)) = "$1" ] && [ ! -f "$RT_REAL/.raytrace/tiles/$t.npz" ] && n=$((n + 1))
    done
    echo "$n"
}
rt_real_val() {
    [ -f "$RT_REAL_VAL/manifest.json" ] && return 0
    mkdir -p "$CACHE/locks"
    local others=$CACHE/locks/rt-train-not-validation-$1.txt s t
    for s in munich etoile; do for ((t = 0; t < 512; t++)); do printf '%s-%05d\n' "$s" "$t"; done; done \
        | grep -vxF -f "$REAL_VAL_LIST" >"$others"
    [ "$(real_val_missing "$1")" = 0 ] || {
        log "lane $1: the real cities' validation tiles, $(real_val_missing "$1") to trace"
        build_until real_val_missing "$1" "$BIN/ckm-data" raytrace --out "$RT_REAL" --train munich etoile \
            --tiles-per-scene 512 --seed 1 --device cpu --shard "$1/2" --no-assemble --exclude "$others" \
            >>"$CACHE/logs/rt-real-val.log" 2>&1 || return 1
    }
    # the lane that finds both shards done writes the snapshot (the other goes on; the release waits for it)
    if [ "$(real_val_missing 0)" = 0 ] && [ "$(real_val_missing 1)" = 0 ] && mkdir "$CACHE/locks/real-val" 2>/dev/null; then
        rm -rf "$RT_REAL_VAL.tmp"
        "$BIN/ckm-data" raytrace --out "$RT_REAL" --train munich etoile --tiles-per-scene 512 --seed 1 \
            --snapshot "$RT_REAL_VAL.tmp" >>"$CACHE/logs/rt-real-val.log" 2>&1 \
            && mv "$RT_REAL_VAL.tmp" "$RT_REAL_VAL" && log "the real cities' validation tiles: $RT_REAL_VAL"
        rmdir "$CACHE/locks/real-val"
    fi
}

lane() {
    local i=$1
    # the calibration's real validation tiles (minutes), then the held-out split: issue 35's
    # calibration and shift benchmarks measure 1.0.0 on them
    rt_real_val "$i" || { log "lane $i: the real validation tiles failed"; return 1; }
    rt_eval "$i" || { log "lane $i: eval split failed"; return 1; }
    rt_train "$i" || { log "lane $i: training build failed"; return 1; }
    snapshot
    if [ "$STAGE" = data ]; then log "lane $i: the data stage is done"; return 0; fi
    procedural
    if [ "$i" = 1 ]; then
        train prior "$PRIOR_STEPS" --init "$REPO/models/checkpoints/prior-small.pt" || { log "prior failed"; return 1; }
        log "prior done: $CACHE/runs/prior"
        if [ -n "$RELEASE" ]; then
            UNTIL=wide release || { log "release $RELEASE: the steps before accuracy failed (CACHE/logs/release.log)"; return 1; }
            log "release $RELEASE: tuned and packaged; accuracy waits for the baselines"
        fi
    fi
    baselines "$i" || return 1
    if [ -n "$RELEASE" ]; then
        # step 4b's two accuracy runs side by side: lane 0 the 100-evaluation one (lock: one journal),
        # lane 1 the defaults', then the model card (after the other run, whichever lane ran it)
        local work=$CACHE/release-$RELEASE lock=$CACHE/locks/accuracy-wide
        until [ "$(baselines_missing)" = 0 ] && [ -f "$work/.done-tune-${WIDE_BUDGET:-100}" ]; do sleep 120; done
        if [ "$i" = 0 ]; then
            if [ ! -f "$work/.done-accuracy-wide" ] && mkdir "$lock" 2>/dev/null; then
                ONLY=accuracy-wide release || log "release $RELEASE: the 100-evaluation accuracy run failed (CACHE/logs/release.log)"
                rmdir "$lock"
            fi
        else
            ONLY=accuracy release || { log "release $RELEASE: the accuracy run failed (CACHE/logs/release.log)"; return 1; }
            until mkdir "$lock" 2>/dev/null; do sleep 120; done  # lane 0's run finished (or never started)
            release || { rmdir "$lock"; log "release $RELEASE failed (CACHE/logs/release.log)"; return 1; }
            rmdir "$lock"
            log "release $RELEASE done: the package, RESULTS records and model card are in $REPO (to commit)"
        fi
    fi
}

# With autogroups (kernel.sched_autogroup_enabled) a process's nice orders it only within its
# session's group, and each lane is its own session: the group itself is set to nice 19, so the
# lanes yield the CPU to interactive work (tests, experiments) as `nice` alone does without them.
nice_group() {
    local pid=$1 try
    [ -w "/proc/$pid/autogroup" ] || return 0
    for try in 1 2 3 4 5 6 7 8 9 10; do
        # only once the lane runs in its own session: never the caller's group
        if [ "$(cut -d' ' -f1 "/proc/$pid/autogroup" 2>/dev/null)" != "$(cut -d' ' -f1 /proc/$$/autogroup)" ]; then
            echo 19 >"/proc/$pid/autogroup" 2>/dev/null
            return 0
        fi
        sleep 0.2
    done
}

pgids() { for f in "$CACHE"/lane-*.pid; do [ -f "$f" ] && kill -0 -- "-$(cat "$f")" 2>/dev/null && cat "$f"; done; }

main() {
case ${1:-start} in
start)
    # a lane stopped while holding a lock (the session ended mid-step) left it: with no lane running, none is held
    [ -z "$(pgids)" ] && rm -rf "$CACHE/locks"
    for i in 0 1; do
        f=$CACHE/lane-$i.pid
        if [ -f "$f" ] && kill -0 -- "-$(cat "$f")" 2>/dev/null; then echo "lane $i already running"; continue; fi
        # its own session (a process group to pause), one core, one thread, lowest priority
        OMP_NUM_THREADS=1 setsid nice -n 19 taskset -c "$i" bash "$0" lane "$i" >>"$CACHE/logs/pipeline.log" 2>&1 &
        echo $! >"$CACHE/lane-$i.pid"
        nice_group $!
    done
    log "started lanes (cache $CACHE)"
    echo "lanes started; log: $CACHE/logs/pipeline.log"
    ;;
lane) lane "$2" ;;
pause | resume)
    sig=$([ "$1" = pause ] && echo STOP || echo CONT)
    for g in $(pgids); do kill -"$sig" -- "-$g"; done
    echo "$1d: $(pgids | tr '\n' ' ')"
    ;;
status)
    echo "cities build: $(tiles_done "$RT_TRAIN") tiles (shard 0 missing $(train_missing 0), shard 1 missing $(train_missing 1))"
    if [ -f "$RT_REAL_VAL/manifest.json" ]; then echo "real validation tiles: complete ($RT_REAL_VAL)"
    else echo "real validation tiles: $((12 - $(real_val_missing 0) - $(real_val_missing 1))) of 12"; fi
    if [ -f "$RT_EVAL/manifest.json" ]; then echo "eval split: complete ($RT_EVAL)"
    else echo "eval split: $(tiles_done "$RT_EVAL") of 64 tiles"; fi
    for run in "$CACHE"/runs/*/; do
        [ -f "$run/log.jsonl" ] && echo "$(basename "$run"): $(tail -n 1 "$run/log.jsonl" | cut -c1-160)"
    done
    echo "lanes: $(pgids | tr '\n' ' ')"
    ;;
*) echo "usage: $0 [start|status|pause|resume]"; exit 2 ;;
esac
}

# parsed whole before it runs: editing this file while the lanes run cannot derail them
main "$@"; exit $?
