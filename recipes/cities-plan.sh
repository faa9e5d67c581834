# Issue 33's ray-traced training data, one definition for every machine that builds it (sourced by
# recipes/cpu-pipeline.sh and recipes/gpu-raytrace.sh): CITIES generated cities (`ckm-data cities`,
# a pure function of CITY_SEED and the index) plus munich and etoile, TILES_PER_SCENE tiles each,
# Sionna's settings of the shipped builds but RT_SAMPLES rays per solve (docs/raytrace.md). A merge
# needs equal plans, and a plan names each scene by its absolute path: CITY_DIR must be the same
# path wherever the build runs.
CITIES=${CITIES:-24}
CITY_SEED=${CITY_SEED:-33}
TILES_PER_SCENE=${TILES_PER_SCENE:-25}
RT_SAMPLES=${RT_SAMPLES:-30000}
CITY_DIR=${CITY_DIR:-/root/ckm-cache/cities}

city_scenes() {  # the build's training scenes, in plan order
    local i name
    for ((i = 0; i < CITIES; i++)); do
        name=gencity-$(printf %03d "$i")
        printf '%s ' "$CITY_DIR/$name/$name.xml"
    done
    echo munich etoile
}

city_plan() {  # the plan's arguments of `ckm-data raytrace`
    echo "--train $(city_scenes) --tiles-per-scene $TILES_PER_SCENE --seed 1 --samples-per-src $RT_SAMPLES"
}
