#!/bin/bash
# Ray tracing on a lent GPU (issue 33): continue the cities build (recipes/cities-plan.sh: generated
# cities + munich + etoile, the plan of /root/ckm-cache/rt-cities) with Sionna RT's CUDA variant for
# MINUTES, skipping the tiles the CPU build has finished; the tiles come back to be merged into the
# CPU build. The generated scenes are made there again (deterministic, seconds) at the same path.
# Prepare here (the bundle once; the list each time):
#   bash recipes/sionna-bundle.sh
#   ls /root/ckm-cache/rt-cities/.raytrace/tiles > .carry/rt-done.txt
# Device tool: carry [".carry"], command "MINUTES=4 bash recipes/gpu-raytrace.sh"; then here:
#   mkdir -p /root/ckm-cache/gpu-rt && cat rt.tar.xz.part-* | tar -xJ -C /root/ckm-cache/gpu-rt
#   .venv/bin/ckm-data raytrace --out /root/ckm-cache/rt-cities --merge /root/ckm-cache/gpu-rt/rt-cities
# Followed in the same command by training on what it traced too (a snapshot at $SNAPSHOT):
#   MINUTES=3 bash recipes/gpu-raytrace.sh; EXTRA_DATA=/tmp/rt-gpu:8 MINUTES=5 bash recipes/gpu-train.sh
# The build's arguments must stay those of the CPU build (same plan): see PLAN below.
set -uo pipefail
MINUTES=${MINUTES:-4}
OUT=${OUT:-/tmp/ckm-out}
BUILD=${BUILD:-/tmp/rt-cities}
PY=${PY:-python3}
# shellcheck source=recipes/cities-plan.sh
. recipes/cities-plan.sh
PLAN=${PLAN:-$(city_plan)}
DEVICE=${DEVICE:-cuda}  # cpu: a dry run of this recipe on a machine without a GPU
mkdir -p "$OUT" /tmp/ckm-sionna /tmp/ckm-pp
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/raytrace.log"; }
[ -f .carry/sionna-cp312.tar.xz ] || { log "no .carry/sionna-cp312.tar.xz (bash recipes/sionna-bundle.sh)"; exit 1; }
tar -xJf .carry/sionna-cp312.tar.xz -C /tmp/ckm-sionna
ln -sfn "$PWD" /tmp/ckm-pp/ckm_edge
export PYTHONPATH=/tmp/ckm-sionna/site:/tmp/ckm-pp:/tmp/ckm-sionna/standins PYTHONUNBUFFERED=1
# OptiX (Mitsuba's CUDA variants trace with it) comes with the driver
log "OptiX: $(ldconfig -p | grep -o 'libnvoptix[^ ]*' | head -1) $(ls /usr/local/nvidia/lib64 2>/dev/null | grep -i optix | head -1)"
$PY -m ckm_edge.training.data_cli raytrace --check --device "$DEVICE" 2>&1 | tee -a "$OUT/raytrace.log"
$PY -m ckm_edge.training.data_cli cities --out "$CITY_DIR" --count "$CITIES" --seed "$CITY_SEED" >>"$OUT/raytrace.log" 2>&1
EXCLUDE=()
[ -f .carry/rt-done.txt ] && EXCLUDE=(--exclude .carry/rt-done.txt)
# shellcheck disable=SC2086
timeout --signal=INT "${MINUTES}m" $PY -m ckm_edge.training.data_cli raytrace --out "$BUILD" $PLAN --device "$DEVICE" \
    --no-assemble "${EXCLUDE[@]}" >>"$OUT/raytrace.log" 2>&1
rc=$?
n=$(ls "$BUILD/.raytrace/tiles" 2>/dev/null | grep -c '\.npz$')
log "traced $n tile(s) (exit $rc; 124 = stopped at $MINUTES min, as planned)"
tail -3 "$OUT/raytrace.log"
[ -f "$BUILD/manifest.json" ] && log "the plan is complete: $BUILD is the dataset itself" && n=1
[ "$n" -gt 0 ] || exit 1
# what training in the same command can read (recipes/gpu-train.sh EXTRA_DATA=$SNAPSHOT:8)
SNAPSHOT=${SNAPSHOT:-/tmp/rt-gpu}
if [ -f "$BUILD/manifest.json" ]; then ln -sfn "$BUILD" "$SNAPSHOT"
else rm -rf "$SNAPSHOT"; $PY -m ckm_edge.training.data_cli raytrace --out "$BUILD" --snapshot "$SNAPSHOT" | tee -a "$OUT/raytrace.log"; fi
tar -C "$(dirname "$BUILD")" -cf - "$(basename "$BUILD")" | xz -T0 -6 | split -b 15M -d - "$OUT/rt.tar.xz.part-"
ls -la "$OUT"
