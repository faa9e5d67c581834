#!/bin/bash
# Build .carry/sionna-cp312.tar.xz here: Sionna RT, Mitsuba and Dr.Jit for a lent GPU machine
# (Python 3.12, no package index reachable, 64 MiB per call), cut to what a headless build of
# the training scenes uses — the Mitsuba variants cuda_ad_mono_polarized (GPU) and
# llvm_ad_mono_polarized (CPU, to check the bundle here), the plugins Sionna's radio-map solver
# loads (recorded from /proc/self/maps during a trace), the munich and etoile scenes only (the
# held-out cities never travel), and stand-ins for the notebook-only imports (ipywidgets,
# pythreejs, IPython: names resolve, using one raises). Unpacks to site/ and standins/.
#   bash recipes/sionna-bundle.sh            # then: carry [".carry"] (recipes/gpu-raytrace.sh)
#   CHECK=1 bash recipes/sionna-bundle.sh    # also trace one small tile with the bundle on this CPU
#                                            # (needs a Python 3.12 with numpy, scipy, matplotlib)
set -euo pipefail
VERSIONS="sionna-rt==2.2.0 mitsuba==3.9.1 drjit==1.5.0"
PLUGINS="diffuse independent merge ply rectangle uniform obj"
VARIANTS="cuda_ad_mono_polarized llvm_ad_mono_polarized scalar_rgb"
SCENES="munich etoile"
ROOT=$PWD
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
PIP=${PIP:-$ROOT/.venv/bin/pip}
$PIP download -q -d "$W/whl" --only-binary=:all: --python-version 3.12 --implementation cp --no-deps \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 $VERSIONS
S=$W/site
mkdir -p "$S"
for w in "$W"/whl/*.whl; do unzip -q -o "$w" -d "$S"; done
# keep only what a headless radio-map build loads
for f in "$S"/mitsuba/*.cpython-312-x86_64-linux-gnu.so; do
    v=$(basename "$f" .cpython-312-x86_64-linux-gnu.so)
    case " $VARIANTS mitsuba_alias mitsuba_ext " in *" $v "*) ;; *) rm "$f" ;; esac
done
mkdir "$W/keep" && for p in $PLUGINS; do mv "$S/mitsuba/plugins/$p.so" "$W/keep/"; done
rm -rf "$S/mitsuba/plugins" "$S/mitsuba/include" "$S/mitsuba/data/srgb.coeff" "$S/drjit/include" "$S/drjit/cmake" "$S/share"
mv "$W/keep" "$S/mitsuba/plugins"
for d in "$S"/sionna/rt/scenes/*/; do
    case " $SCENES " in *" $(basename "$d") "*) ;; *) rm -rf "$d" ;; esac
done
find "$S" -name "*.pyi" -delete
find "$S" -name __pycache__ -prune -exec rm -rf {} +
# stand-ins for the notebook-only imports of sionna.rt (preview, viewer), in a folder of their own
# that goes last on PYTHONPATH: real packages, where installed, win
mkdir -p "$W/standins" && S=$W/standins
mkdir -p "$S/ipywidgets" "$S/pythreejs" "$S/IPython" "$S/importlib_resources"
cat >"$S/ipywidgets/__init__.py" <<'EOF'
"""Stand-in for ipywidgets (Sionna RT's notebook previewer only): names resolve, using one raises."""
import types as _types


def _unavailable(*args, **kwargs):
    raise RuntimeError("ipywidgets is not installed: no notebook preview in this headless bundle")


class _Module(_types.ModuleType):
    def __getattr__(self, name):
        return type(name, (), {"__init__": _unavailable})


widgets = _Module("ipywidgets.widgets")
EOF
echo "from . import _unavailable as embed_snippet  # noqa: F401" >"$S/ipywidgets/embed.py"
cat >"$S/pythreejs/__init__.py" <<'EOF'
"""Stand-in for pythreejs (Sionna RT's notebook previewer only): names resolve, using one raises."""


def __getattr__(name):
    def unavailable(*args, **kwargs):
        raise RuntimeError(f"pythreejs is not installed: pythreejs.{name} is unavailable in this headless bundle")

    return type(name, (), {"__init__": unavailable})
EOF
echo '"""Stand-in for IPython (Sionna RT notebook previewer only)."""' >"$S/IPython/__init__.py"
printf 'def display(*args, **kwargs):\n    raise RuntimeError("IPython is not installed: no display in this headless bundle")\n' >"$S/IPython/display.py"
echo "from importlib.resources import as_file, files  # noqa: F401" >"$S/importlib_resources/__init__.py"
mkdir -p "$ROOT/.carry"
tar -C "$W" -cf - site standins | xz -T2 -6 >"$ROOT/.carry/sionna-cp312.tar.xz"
ls -la "$ROOT/.carry/sionna-cp312.tar.xz"
if [ "${CHECK:-0}" = 1 ]; then
    PY312=${PY312:-python3.12}
    mkdir -p "$W/pp" && ln -s "$ROOT" "$W/pp/ckm_edge"
    PYTHONPATH="$W/site:$W/pp:$W/standins" $PY312 -m ckm_edge.training.data_cli raytrace --out "$W/rt" --train etoile \
        --tiles-per-scene 1 --tile-size 32 --cell-size 4 --samples-per-src 20000 --device cpu
fi
