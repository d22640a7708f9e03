#!/usr/bin/env bash
# Build (once) and install Horovod 0.28.1 against the TensorFlow of a given Python.
#
#   bash launch/build_horovod.sh [PYTHON]          # PYTHON defaults to python3
#
# Horovod 0.28.1 (its last release) does not build against TF 2.21 as shipped: this
# script downloads its sdist from PyPI, drops the XLA op variants (xla_mpi_ops.cc uses
# header paths that TF 2.21 no longer has), builds a wheel without build isolation (the
# build imports the installed TensorFlow) and caches it in
#   ${HOROVOD_WHEEL_CACHE:-~/.cache/tf-harness/wheels}/horovod-0.28.1/tf<TF>-<cpXY>-<variant>/
# so a second install takes seconds. The cache key holds the TF version, the Python tag
# and the feature variant, so a wheel is never reused against another TF ABI.
#
# Default variant: TensorFlow + Gloo, CPU (what CI and the tests use). For a cluster:
#   HOROVOD_WITH_MPI=1 HOROVOD_GPU_OPERATIONS=NCCL bash launch/build_horovod.sh .venv/bin/python
# (needs an MPI implementation with mpicxx on PATH, and CUDA + NCCL; HOROVOD_NCCL_HOME /
# HOROVOD_CUDA_HOME if they are not in the default places). Other HOROVOD_* build
# variables given in the environment are passed through to Horovod's setup.py.
#
# Options (environment): HOROVOD_WHEEL_CACHE (cache dir), HOROVOD_BUILD_DIR (scratch,
# default a temp dir), HOROVOD_REBUILD=1 (ignore the cache), MAKEFLAGS / HOROVOD_BUILD_JOBS.
set -euo pipefail

HVD_VERSION=0.28.1
PYTHON="${1:-python3}"

say() { echo "[build_horovod] $*"; }
die() { echo "[build_horovod] ERROR: $*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null 2>&1 || die "python '$PYTHON' not found (usage: bash launch/build_horovod.sh [PYTHON])"
# Absolute path (keeps a venv's python a venv's python; the check below runs from /).
if [[ "$PYTHON" == */* ]]; then
    PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"
fi
# TF version, plus "-cuda" for a CUDA build of TensorFlow: the wheel links against its ABI.
TF_VERSION=$("$PYTHON" -c 'import os; os.environ["TF_CPP_MIN_LOG_LEVEL"]="3"; import tensorflow as tf
print(tf.__version__ + ("-cuda" if tf.sysconfig.get_build_info().get("is_cuda_build") else ""))' 2>/dev/null) \
    || die "'$PYTHON' cannot import tensorflow; install the project first (pip install -e .), then rerun"
PY_TAG=$("$PYTHON" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')

# --- feature variant (part of the cache key) ---
export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1
export HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
VARIANT=gloo
if [[ "${HOROVOD_WITH_MPI:-0}" == 1 ]]; then
    unset HOROVOD_WITHOUT_MPI
    VARIANT+=-mpi
else
    unset HOROVOD_WITH_MPI
    export HOROVOD_WITHOUT_MPI=1
fi
if [[ -n "${HOROVOD_GPU_OPERATIONS:-}" ]]; then
    VARIANT+=-gpu$(echo "$HOROVOD_GPU_OPERATIONS" | tr '[:upper:]' '[:lower:]')
fi
for v in HOROVOD_GPU_ALLREDUCE HOROVOD_GPU_ALLGATHER HOROVOD_GPU_BROADCAST HOROVOD_GPU; do
    [[ -n "${!v:-}" ]] && VARIANT+=-$(echo "${v#HOROVOD_}_${!v}" | tr '[:upper:]' '[:lower:]')
done

CACHE_ROOT="${HOROVOD_WHEEL_CACHE:-$HOME/.cache/tf-harness/wheels}"
CACHE_DIR="$CACHE_ROOT/horovod-$HVD_VERSION/tf$TF_VERSION-$PY_TAG-$VARIANT"
say "python: $PYTHON ($PY_TAG), tensorflow $TF_VERSION, variant: $VARIANT"
say "wheel cache: $CACHE_DIR"

install_wheel() {
    say "installing $1"
    # Its runtime deps from the index (kept as they are if present), then the wheel itself,
    # forced: another build of the same version may be installed already.
    "$PYTHON" -m pip install -q cloudpickle psutil pyyaml packaging \
        && "$PYTHON" -m pip install -q --force-reinstall --no-deps "$1" \
        || die "pip install of $1 failed"
    local out
    if ! out=$(cd / && "$PYTHON" -c 'import horovod.tensorflow as hvd
assert hvd.gloo_built(), "horovod was built without Gloo"
print("horovod", __import__("horovod").__version__, "gloo=%s mpi=%s nccl=%s"
      % (bool(hvd.gloo_built()), bool(hvd.mpi_built()), bool(hvd.nccl_built())))' 2>&1); then
        echo "$out" | tail -n 5 >&2
        die "horovod installed but 'import horovod.tensorflow' fails (built for another TensorFlow? rerun with HOROVOD_REBUILD=1)"
    fi
    say "ok: $(echo "$out" | tail -n 1)"
    exit 0
}

shopt -s nullglob
cached=("$CACHE_DIR"/horovod-"$HVD_VERSION"-*.whl)
shopt -u nullglob
if [[ ${#cached[@]} -gt 0 && "${HOROVOD_REBUILD:-0}" != 1 ]]; then
    say "cached wheel found, skipping the build"
    install_wheel "${cached[0]}"
fi

# --- build tools ---
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v make >/dev/null || missing+=(make)
command -v g++ >/dev/null || missing+=(g++)
"$PYTHON" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || missing+=(python3-dev)
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        say "installing build tools: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
            || die "apt-get install ${missing[*]} failed"
    else
        die "missing build tools: ${missing[*]} (Debian/Ubuntu: sudo apt-get install -y ${missing[*]})"
    fi
fi
if [[ "$VARIANT" == *mpi* ]]; then
    command -v mpicxx >/dev/null || die "HOROVOD_WITH_MPI=1 but mpicxx is not on PATH (e.g. apt-get install -y libopenmpi-dev openmpi-bin)"
fi
# Horovod's setup.py imports these at build time; with --no-build-isolation they must be present.
"$PYTHON" -m pip install -q setuptools wheel cloudpickle psutil pyyaml packaging \
    || die "pip install of the build requirements failed"

# --- sources ---
if [[ -n "${HOROVOD_BUILD_DIR:-}" ]]; then
    WORK="$HOROVOD_BUILD_DIR"; mkdir -p "$WORK"
else
    WORK=$(mktemp -d -t horovod-build.XXXXXX)
    trap 'rm -rf "$WORK"' EXIT
fi
say "build dir: $WORK"
if [[ ! -f "$WORK/horovod-$HVD_VERSION.tar.gz" ]]; then
    say "downloading the horovod==$HVD_VERSION sdist from PyPI"
    "$PYTHON" -m pip download -q --no-deps --no-binary :all: -d "$WORK" "horovod==$HVD_VERSION" \
        || die "pip download horovod==$HVD_VERSION failed (needs PyPI access)"
fi
rm -rf "$WORK/horovod-$HVD_VERSION"
tar -xzf "$WORK/horovod-$HVD_VERSION.tar.gz" -C "$WORK"
SRC="$WORK/horovod-$HVD_VERSION"

# --- patch: drop the XLA op variants (idempotent) ---
CML="$SRC/horovod/tensorflow/CMakeLists.txt"
[[ -f "$CML" ]] || die "unexpected sdist layout: $CML missing"
sed -i '/xla_mpi_ops\.cc/d' "$CML"
if grep -q 'xla_mpi_ops\.cc' "$CML"; then
    die "could not remove xla_mpi_ops.cc from $CML; patch it by hand (see DESIGN.md)"
fi
say "patched $CML (xla_mpi_ops.cc removed)"

# --- build ---
export CMAKE_POLICY_VERSION_MINIMUM=3.5   # CMake >= 4 refuses Horovod's old cmake_minimum_required
export MAKEFLAGS="${MAKEFLAGS:--j${HOROVOD_BUILD_JOBS:-$(nproc)}}"
say "building the wheel (3 to 8 minutes on 2 cores; log: $WORK/build.log)"
start=$(date +%s)
if ! "$PYTHON" -m pip wheel -v --no-build-isolation --no-deps -w "$WORK/dist" "$SRC" >"$WORK/build.log" 2>&1; then
    tail -n 40 "$WORK/build.log" >&2
    trap - EXIT
    die "horovod build failed; full log kept at $WORK/build.log"
fi
say "built in $(( $(date +%s) - start ))s"
shopt -s nullglob
built=("$WORK"/dist/horovod-"$HVD_VERSION"-*.whl)
shopt -u nullglob
[[ ${#built[@]} -gt 0 ]] || die "pip wheel succeeded but no wheel in $WORK/dist"
mkdir -p "$CACHE_DIR"
rm -f "$CACHE_DIR"/horovod-"$HVD_VERSION"-*.whl
cp "${built[0]}" "$CACHE_DIR/"
say "cached $(basename "${built[0]}")"
install_wheel "$CACHE_DIR/$(basename "${built[0]}")"
