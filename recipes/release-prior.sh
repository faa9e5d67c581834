#!/bin/bash
# From a trained prior to a shipped `ckm-prior` package with its evidence (issue 16), in order:
#   1. slim weights of the run's EMA model;
#   2. an fp32 package, and its default constructions tuned on VALIDATION tiles
#      (`ckm-bench tune`: a training-city dataset minus the tiles training read; never HELD);
#   3. the package (fp32, fp16, INT8 calibrated on CALIBRATION's training split; accuracy record on
#      HELD's eval split) with the tuned table (`ckm-export package --samplers`);
#   3b. its uncertainty calibration on the same VALIDATION tiles (`ckm-bench uncertainty --write`:
#      the manifest's "uncertainty" section), CAL_ROUNDS rounds (default 2: a calibrated construction's
#      bounded cells report the calibrated predictive's truncated mean, so each round fits the errors
#      of the map made with the previous round's section), CAL_TILES tiles (default 48) of each of
#      CAL_DATA's datasets (default VALIDATION; several, e.g. generated cities' and real cities'
#      validation tiles: the interval is fitted to hold on each) minus CAL_EXCLUDE's tiles (default
#      VALIDATION_EXCLUDE; empty where CAL_DATA holds validation tiles only: the exclusion matches
#      tiles by region and index, which across two builds' plans names different placements);
#   4. how WIDE_BUDGET (100: the limit, what an edge GPU affords) network evaluations per map
#      are best spent: from the tuned table, the steps x samples split searched on the same validation
#      tiles (`ckm-bench tune --coordinates split`, WIDE_SAMPLES the sample counts tried), the
#      parameters held; then `ckm-bench accuracy` on the held-out split against the end-to-end
#      baselines in BASELINES and classical interpolation — run once, on the candidate; nothing is
#      chosen from it: with the shipped defaults (at most 25 network evaluations per map, the 2 s
#      CPU target), and with the WIDE_BUDGET table, whose constructions get uncertainty fits of their
#      own first (`ckm-bench uncertainty --samplers --write`, as in 3b: a fit made at the defaults
#      over-covers at constructions that average more samples over more steps);
#   5. the model card: samples next to held-out tiles, sample statistics against the held-out split (unconditional and
#      each given a held-out site; beside them the ray-traced training data's own distance to it), the training
#      history of RUNS.
# RESULTS.md gets tune-<package>, tune-<package>-budget-<WIDE_BUDGET>, uncertainty-<package>, uncertainty-<package>-samplers-<WIDE_BUDGET>, accuracy-<HELD> and
# accuracy-<HELD>-samplers-<WIDE_BUDGET>; the card goes to CARD.
# Resumable (a release is hours on a 2-core CPU): run the same command again and it skips the steps
# WORK records as done; the tune and both accuracy runs resume from their journals in WORK.
#
#   C=/root/ckm-cache   # what recipes/cpu-pipeline.sh builds
#   VERSION=1.0.0 CHECKPOINT=$C/runs/prior/checkpoint.pt RUNS=$C/runs/prior WORK=$C/release-1.0.0 \
#   VALIDATION=$C/rt-train-snap-all VALIDATION_EXCLUDE=$C/rt-train-snap CALIBRATION=$C/rt-train-snap HELD=$C/rt-eval \
#   BASELINES=$C/models/baselines bash recipes/release-prior.sh
# Also: RESULTS (records' directory), TUNE_ARGS (extra `ckm-bench tune` arguments), TILES, VAL_TILES, CAL_DATA, CAL_EXCLUDE, CAL_TILES, CAL_ROUNDS,
# WIDE_BUDGET, WIDE_SAMPLES, STATS_SAMPLES, NAME, OUT, CARD, BIN; UNTIL=wide stops after step 4a
# (what needs no baselines: recipes/cpu-pipeline.sh runs it while the baselines still train);
# ONLY=accuracy | accuracy-wide runs that one of step 4b's two runs (earlier steps done first).
set -euo pipefail
: "${VERSION:?}" "${CHECKPOINT:?}" "${VALIDATION:?}" "${CALIBRATION:?}" "${HELD:?}" "${BASELINES:?}"
case ${UNTIL:-} in "" | wide) ;; *) echo "UNTIL=$UNTIL: only 'wide' (stop after step 4a) is known"; exit 2 ;; esac
case ${ONLY:-} in "" | accuracy | accuracy-wide) ;; *) echo "ONLY=$ONLY: 'accuracy' or 'accuracy-wide' (one run of step 4b)"; exit 2 ;; esac
NAME=${NAME:-ckm-prior}
OUT=${OUT:-models/repository/$NAME/$VERSION}
CARD=${CARD:-docs/model-card}
WORK=${WORK:-/tmp/release-$NAME-$VERSION}  # keep it where a stopped release can resume (the tune's journal)
TILES=${TILES:-64}
BIN=${BIN:-.venv/bin}
RESULTS=${RESULTS:-benchmarks/results}  # where the tune and accuracy records go (RESULTS.md beside them)
# a package this release did not start (.packaging in WORK) is a released version
[ -e "$OUT" ] && [ ! -f "$WORK/.packaging" ] && { echo "$OUT exists: a released version is never rebuilt in place (bump VERSION)"; exit 1; }
mkdir -p "$WORK"
log() { echo "[$(date +%T)] $*"; }
done_() { [ -f "$WORK/.done-$1" ] && log "$1: done earlier (WORK=$WORK)"; }

if ! done_ slim; then
    log "1. slim weights"
    "$BIN/ckm-train" slim --checkpoint "$CHECKPOINT" --out "$WORK/prior.pt"
    touch "$WORK/.done-slim"
fi

if ! done_ tune; then
    log "2. tune the default constructions on validation tiles"
    rm -rf "$WORK/fp32"
    "$BIN/ckm-export" package --checkpoint "$WORK/prior.pt" --data "$CALIBRATION" --out "$WORK/fp32" --name "$NAME" \
        --version "$VERSION" --precisions fp32 --accuracy-tiles 0
    # shellcheck disable=SC2086
    "$BIN/ckm-bench" --results "$RESULTS" tune --package "$WORK/fp32" --data "$VALIDATION" --exclude ${VALIDATION_EXCLUDE:-} --tiles "${VAL_TILES:-12}" \
        --out "$WORK/samplers.json" --journal "$WORK/tune-journal.jsonl" ${TUNE_ARGS:-}
    touch "$WORK/.done-tune"
fi

if ! done_ package; then
    log "3. the package"
    touch "$WORK/.packaging"
    rm -rf "$OUT"
    "$BIN/ckm-export" package --checkpoint "$WORK/prior.pt" --data "$CALIBRATION" --eval-data "$HELD" --out "$OUT" \
        --name "$NAME" --version "$VERSION" --samplers "$WORK/samplers.json"
    touch "$WORK/.done-package"
    du -sh "$OUT"
fi

for round in $(seq 1 "${CAL_ROUNDS:-2}"); do
    done_ "uncertainty-$round" && continue
    log "3b. calibrate the package's uncertainty on validation tiles, round $round"
    # shellcheck disable=SC2086
    "$BIN/ckm-bench" --results "$RESULTS" uncertainty --package "$OUT" --data ${CAL_DATA:-"$VALIDATION"} --exclude ${CAL_EXCLUDE-${VALIDATION_EXCLUDE:-}} \
        --tiles "${CAL_TILES:-48}" --write --cache "$WORK/uncertainty-round-$round.npz"
    touch "$WORK/.done-uncertainty-$round"
done

WIDE=${WIDE_BUDGET:-100}
if ! done_ "tune-$WIDE"; then
    log "4a. the split of $WIDE network evaluations per map, from the tuned table, on validation tiles"
    # shellcheck disable=SC2086
    "$BIN/ckm-bench" --results "$RESULTS" tune --package "$WORK/fp32" --data "$VALIDATION" --exclude ${VALIDATION_EXCLUDE:-} \
        --tiles "${VAL_TILES:-12}" --budget "$WIDE" --coordinates split --samples ${WIDE_SAMPLES:-2 4 8 12} --rounds 1 \
        --samplers "$WORK/samplers.json" --out "$WORK/samplers-$WIDE.json" --journal "$WORK/tune-$WIDE-journal.jsonl"
    touch "$WORK/.done-tune-$WIDE"
fi
for round in $(seq 1 "${CAL_ROUNDS:-2}"); do
    done_ "uncertainty-$WIDE-$round" && continue
    log "4a. calibrate the $WIDE-evaluation table's constructions on the same validation tiles, round $round"
    # shellcheck disable=SC2086
    "$BIN/ckm-bench" --results "$RESULTS" uncertainty --package "$OUT" --data ${CAL_DATA:-"$VALIDATION"} --exclude ${CAL_EXCLUDE-${VALIDATION_EXCLUDE:-}} \
        --tiles "${CAL_TILES:-48}" --samplers "$WORK/samplers-$WIDE.json" --write --cache "$WORK/uncertainty-$WIDE-round-$round.npz"
    touch "$WORK/.done-uncertainty-$WIDE-$round"
done
[ "${UNTIL:-}" = wide ] && { log "stopped after step 4a (UNTIL=wide)"; exit 0; }

# 4b: two runs, each its own step (ONLY=accuracy or ONLY=accuracy-wide runs just that one: the two
# can run side by side, one per core, from two calls; never the same one twice at once: one journal)
if [ "${ONLY:-accuracy}" = accuracy ] && ! done_ accuracy; then
    log "4b. accuracy on the held-out split, once, the shipped defaults (resumes from its journal)"
    "$BIN/ckm-bench" --results "$RESULTS" accuracy --data "$HELD" --tiles "$TILES" --package "$OUT" --checkpoints "$BASELINES" \
        --journal "$WORK/accuracy-journal.jsonl"
    touch "$WORK/.done-accuracy"
fi
if [ "${ONLY:-accuracy-wide}" = accuracy-wide ] && ! done_ accuracy-wide; then
    log "4b. accuracy on the held-out split, once, the $WIDE-evaluation table (resumes from its journal)"
    "$BIN/ckm-bench" --results "$RESULTS" accuracy --data "$HELD" --tiles "$TILES" --package "$OUT" --checkpoints "$BASELINES" \
        --samplers "$WORK/samplers-$WIDE.json" --journal "$WORK/accuracy-$WIDE-journal.jsonl"
    touch "$WORK/.done-accuracy-wide"
fi
[ -n "${ONLY:-}" ] && exit 0

done_ card && exit 0
log "5. the model card"
# shellcheck disable=SC2086
"$BIN/python" -m ckm_edge.training.model_card --checkpoint "$WORK/prior.pt" --data "$HELD" --out "$CARD" \
    --stats-samples "${STATS_SAMPLES:-64}" --site-stats --reference "$CALIBRATION" ${RUNS:+--runs $RUNS}
rm -rf "$CARD/prior-samples" "$CARD/prior-samples-site"  # the samples as a dataset: regenerated by the command, not tracked
touch "$WORK/.done-card"
log "done: $OUT; RESULTS.md (tune-*, accuracy-*), $CARD"
