#!/bin/bash
# One lent-GPU session of training (issue 16): the site-aware foundation prior, the end-to-end
# baselines and the network-size curve's priors, all trained side by side on the one GPU for the
# same wall time, on the same mixture of data:
#   - calibrated procedural tiles, generated on the machine (its 16 cores; nothing to carry),
#   - a snapshot of the ray-traced training build (munich, etoile), carried in .carry/rt-train
#     (`ckm-data raytrace --out BUILD --snapshot .carry/rt-train --exclude HELD-BACK`: the
#     validation tiles stay out; a few MB),
#   - datasets/sionna-rt-small's training split (tracked).
# The ray-traced held-out cities (florence, san_francisco) are never read here.
#
# Run from the repository root on the device machine (the device tool: carry [".carry"]):
#   MINUTES=7 bash recipes/gpu-train.sh
# Environment: MINUTES (training wall time, default 7), JOBS (default: the prior and ten baselines),
# TILES_PER_REGION / REGIONS (procedural data: default 128 x 9), RT_REPEAT (how often each ray-traced
# tile is seen per epoch: default 30), OUT (where results go).
# Resume: a run directory carried back in .carry/runs/<job> (checkpoint.pt) continues exactly;
# else a job warm-starts from .carry/init/<job>.pt when present (the prior: from the shipped
# prior's weights, models/checkpoints/prior-small.pt).
# Results in $OUT (the device tool brings back at most 8 files of 16 MiB): models.tar.part-* (every
# job's slim EMA weights as <job>.pt, so `ckm-bench accuracy --checkpoints DIR` finds the baselines;
# runs/<job>/log.jsonl; with RESUME=1 also runs/prior/checkpoint.pt, 24 MB, for an exact resume),
# and train.log. Unpack here:  cat models.tar.part-* | tar -x -C /root/ckm-cache/gpu-runs
set -uo pipefail
MINUTES=${MINUTES:-7}
OUT=${OUT:-/tmp/ckm-out}
REGIONS=${REGIONS:-9}
RT_REPEAT=${RT_REPEAT:-30}  # with 9 x 128 procedural tiles: about 58 % ray-traced samples, as the CPU run's stage 3
TILES_PER_REGION=${TILES_PER_REGION:-128}
JOBS=${JOBS:-prior baseline-ipbox baseline-iprandom baseline-sr2 baseline-jtqr baseline-multi baseline-multi-site baseline-ipbox-site baseline-iprandom-site baseline-sr2-site baseline-jtqr-site}
# the network-size curve (ckm-bench netsize LABEL=CHECKPOINT): curve-tiny curve-small curve-medium,
# each site-aware and from scratch, so that only the size differs
WORK=/tmp/ckm-work
mkdir -p "$OUT" "$WORK/runs" /tmp/ckm-pp
ln -sfn "$PWD" /tmp/ckm-pp/ckm_edge  # the repository root is the package ckm_edge (pyproject.toml)
export PYTHONPATH=/tmp/ckm-pp PYTHONUNBUFFERED=1
PY=${PY:-python3}
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/train.log"; }

$PY -c "import torch; ok = torch.cuda.is_available(); assert ok or ${ALLOW_CPU:-0}, 'no CUDA device'; \
print(torch.__version__, torch.cuda.get_device_name() if ok else 'cpu')" 2>&1 | tee -a "$OUT/train.log" || exit 1
RT=.carry/rt-train
[ -f $RT/manifest.json ] || { log "no ray-traced snapshot at $RT (carry .carry)"; exit 1; }

t0=$(date +%s)
$PY -m ckm_edge.training.data_cli generate --out $WORK/proc-cal --preset calibrated --train-regions "$REGIONS" \
    --eval-regions 1 --tiles-per-region "$TILES_PER_REGION" --seed 11 --workers "$(nproc)" >>"$OUT/train.log" 2>&1 \
    || { log "procedural generation failed"; exit 1; }
log "calibrated procedural tiles: $((REGIONS * TILES_PER_REGION)) train in $(( $(date +%s) - t0 )) s"
DATA="$WORK/proc-cal $RT:$RT_REPEAT datasets/sionna-rt-small:$RT_REPEAT"
for extra in ${EXTRA_DATA:-}; do  # e.g. the tiles traced earlier in this command (recipes/gpu-raytrace.sh)
    if [ -f "${extra%:*}/manifest.json" ]; then DATA="$DATA $extra"; else log "EXTRA_DATA ${extra%:*}: no dataset, left out"; fi
done
log "data: $DATA"

# job -> arguments (every job: crops of 64, batch 64, bf16 autocast on the GPU)
args_for() {
    case $1 in
        prior) echo "prior --preset small --site-aware" ;;
        curve-*) echo "prior --preset ${1#curve-} --site-aware" ;;
        baseline-*-site) local task=${1#baseline-}; echo "baseline --preset small --task ${task%-site} --site-aware" ;;
        baseline-*) echo "baseline --preset small --task ${1#baseline-}" ;;
        *) return 1 ;;
    esac
}
pids=()
for job in $JOBS; do
    a=$(args_for "$job") || { log "unknown job $job"; exit 1; }
    run=$WORK/runs/$job
    [ -f .carry/runs/$job/checkpoint.pt ] && mkdir -p "$run" && cp .carry/runs/$job/* "$run/"
    init=""
    if [ ! -f "$run/checkpoint.pt" ]; then
        if [ -f .carry/init/$job.pt ]; then init="--init .carry/init/$job.pt"
        elif [ "$job" = prior ]; then init="--init models/checkpoints/prior-small.pt"; fi
    fi
    # shellcheck disable=SC2086
    OMP_NUM_THREADS=1 $PY -m ckm_edge.training.cli $a --data $DATA --out "$run" $init --crop 64 --batch-size 64 \
        --lr 3e-4 --warmup 200 --steps 200000 --ema-decay 0.999 --eval-every 1000 --sample-every 10000000 \
        --checkpoint-every 1000 --log-every 100 --max-minutes "$MINUTES" >"$WORK/$job.log" 2>&1 &
    pids+=($!)
    log "started $job (pid $!): $a $init"
done
fails=0
for p in "${pids[@]}"; do wait "$p" || fails=$((fails + 1)); done
log "training done ($fails failed)"
mkdir -p "$WORK/pack"
for job in $JOBS; do
    run=$WORK/runs/$job
    tail -c 2000 "$WORK/$job.log" | tr '\r' '\n' | tail -4 >>"$OUT/train.log"
    [ -f "$run/checkpoint.pt" ] || continue
    mkdir -p "$WORK/pack/runs/$job"
    half=$([ "$job" = prior ] || echo --half)  # the prior in float32 (it is exported), the others float16
    $PY -m ckm_edge.training.cli slim --checkpoint "$run/checkpoint.pt" --out "$WORK/pack/$job.pt" $half >>"$OUT/train.log" 2>&1
    cp "$run/log.jsonl" "$WORK/pack/runs/$job/" 2>/dev/null
    [ "$job" = prior ] && [ "${RESUME:-0}" = 1 ] && cp "$run/checkpoint.pt" "$WORK/pack/runs/$job/"
done
tar -C "$WORK/pack" -cf "$WORK/models.tar" . && split -b 15M -d "$WORK/models.tar" "$OUT/models.tar.part-"
ls -la "$OUT" | tee -a "$OUT/train.log"
[ "$fails" = 0 ]
