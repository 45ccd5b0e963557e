#!/usr/bin/env bash
# Set up the reference peers that Canon's goldens and benchmarks compare against.
#
# Everything lives OUTSIDE the repository, in ${CANON_PEERS:-$HOME/.cache/canon-peers}:
#   venv/                      Python venv: torch, transformers, sentence-transformers, accelerate,
#                              gguf, numpy, jinja2, peft (bench/lora_vs_peft.py), openai, cmake, ninja, llama-cpp-python (binding only)
#   src/                       the llama-cpp-python sdist
#   llama-cpp-python-<ver>/    the unpacked sdist (its vendored llama.cpp is what gets built)
#   llama.cpp-build/bin/       libllama.so, libggml*.so, llama-bench, llama-server and llama-quantize
#   llama.cpp-build-<isa>/bin/ the same built for a capped ISA (PEERS_ISA=avx2 or avx2vnni, below)
#
# The Python binding is installed WITHOUT its own native library (-DLLAMA_BUILD=OFF); point it at the
# library built here with LLAMA_CPP_LIB_PATH=<peers>/llama.cpp-build/bin (the script prints the exports).
#
# Why build llama.cpp ourselves: the sdist's own build uses -march=native, which on AMX-capable VMs
# enables ggml's AMX kernels and the first decode segfaults in ggml_backend_amx_mul_mat. Here the ISA
# set is explicit: AVX/AVX2/FMA/F16C/BMI2/AVX-VNNI/AVX-512 (+VBMI/VNNI/BF16) on where the CPU has
# them (PEERS_ISA=full: all of them regardless), AMX always off.
#
# Idempotent: re-running skips every step whose result is already present.
# Environment knobs:
#   CANON_PEERS   target directory (default ~/.cache/canon-peers)
#   PEERS_JOBS    parallel build jobs (default 2)
#   PEERS_PYTHON  python used to create the venv (default python3)
#   PEERS_ISA     auto (default: the reference ISA set minus what /proc/cpuinfo lacks), full, or a cap
#                 for comparisons on a CPU with more: avx2 (AVX/AVX2/FMA/F16C/BMI2) or avx2vnni (the
#                 same plus AVX-VNNI), no AVX-512; those build into llama.cpp-build-<isa>
#   PEERS_FORCE_BUILD=1  rebuild llama.cpp even if the libraries exist
set -euo pipefail

LLAMA_CPP_PY_VERSION=0.3.36
# sha256 of llama_cpp_python-0.3.36.tar.gz as downloaded when this script was written.
LLAMA_CPP_PY_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e

PEERS="${CANON_PEERS:-$HOME/.cache/canon-peers}"
JOBS="${PEERS_JOBS:-2}"
PY_BOOT="${PEERS_PYTHON:-python3}"
VENV="$PEERS/venv"
PY="$VENV/bin/python"
SRC_DIR="$PEERS/src"
SDIST="$SRC_DIR/llama_cpp_python-$LLAMA_CPP_PY_VERSION.tar.gz"
TREE="$PEERS/llama-cpp-python-$LLAMA_CPP_PY_VERSION"
BUILD="$PEERS/llama.cpp-build"
case "${PEERS_ISA:-auto}" in
    auto|full) ;;
    avx2|avx2vnni) BUILD="$PEERS/llama.cpp-build-$PEERS_ISA" ;;
    *) echo "error: PEERS_ISA must be auto, full, avx2 or avx2vnni, found '$PEERS_ISA'" >&2; exit 2 ;;
esac

log() { printf '[setup_peers] %s\n' "$*" >&2; }

mkdir -p "$PEERS" "$SRC_DIR"

# 1. venv with the Python peers -------------------------------------------------------------------
if [ ! -x "$PY" ]; then
    log "creating venv $VENV"
    "$PY_BOOT" -m venv "$VENV"
    "$PY" -m pip install --upgrade pip
fi
if ! "$PY" -c 'import torch, transformers, sentence_transformers, accelerate, gguf, numpy, jinja2, peft, openai' 2>/dev/null; then
    log "installing torch transformers sentence-transformers accelerate gguf numpy jinja2 peft openai"
    "$PY" -m pip install torch transformers sentence-transformers accelerate gguf numpy jinja2 peft openai
fi
if [ ! -x "$VENV/bin/cmake" ] || [ ! -x "$VENV/bin/ninja" ]; then
    log "installing cmake ninja into the venv"
    "$PY" -m pip install cmake ninja
fi
export PATH="$VENV/bin:$PATH"

# 2. llama-cpp-python sdist ----------------------------------------------------------------------
if [ ! -f "$SDIST" ]; then
    log "downloading llama-cpp-python==$LLAMA_CPP_PY_VERSION sdist"
    # --no-binary only for this package: build dependencies (cmake, ninja) may come as wheels.
    "$PY" -m pip download --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$LLAMA_CPP_PY_VERSION" -d "$SRC_DIR"
fi
got_sha=$(sha256sum "$SDIST" | cut -d' ' -f1)
if [ "$got_sha" != "$LLAMA_CPP_PY_SHA256" ]; then
    log "WARNING: sdist sha256 $got_sha differs from the recorded $LLAMA_CPP_PY_SHA256"
fi
if [ ! -f "$TREE/vendor/llama.cpp/CMakeLists.txt" ]; then
    log "unpacking sdist into $TREE"
    tmp="$PEERS/.unpack.$$"
    rm -rf "$tmp"; mkdir -p "$tmp"
    tar -xzf "$SDIST" -C "$tmp"
    rm -rf "$TREE"
    mv "$tmp/llama_cpp_python-$LLAMA_CPP_PY_VERSION" "$TREE"
    rm -rf "$tmp"
fi

# 3. build the vendored llama.cpp ----------------------------------------------------------------
# ISA: the reference set is AVX/AVX2/FMA/F16C/BMI2/AVX-VNNI/AVX-512(+VBMI/VNNI/BF16), AMX always off.
# PEERS_ISA=auto (default) keeps only the extensions this CPU reports in /proc/cpuinfo (a binary built
# with AVX-512 dies with "Illegal instruction" on an AVX2-only CPU); PEERS_ISA=full forces the whole set.
ISA_MODE="${PEERS_ISA:-auto}"
cpu_flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
isa_flag() {  # isa_flag GGML_OPTION cpuinfo-flag
    case "$ISA_MODE:$1" in
        avx2:GGML_AVX_VNNI|avx2:GGML_AVX512*|avx2vnni:GGML_AVX512*) echo "-D$1=OFF"; return ;;
    esac
    if [ "$ISA_MODE" = full ] || [[ "$cpu_flags" == *" $2 "* ]]; then echo "-D$1=ON"; else echo "-D$1=OFF"; fi
}
ISA_FLAGS=(
    "$(isa_flag GGML_AVX avx)" "$(isa_flag GGML_AVX2 avx2)" "$(isa_flag GGML_FMA fma)"
    "$(isa_flag GGML_F16C f16c)" "$(isa_flag GGML_BMI2 bmi2)" "$(isa_flag GGML_AVX_VNNI avx_vnni)"
    "$(isa_flag GGML_AVX512 avx512f)" "$(isa_flag GGML_AVX512_VBMI avx512_vbmi)"
    "$(isa_flag GGML_AVX512_VNNI avx512_vnni)" "$(isa_flag GGML_AVX512_BF16 avx512_bf16)"
)
log "ISA ($ISA_MODE): ${ISA_FLAGS[*]}"
CMAKE_FLAGS=(
    -G Ninja
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=ON
    -DGGML_NATIVE=OFF
    "${ISA_FLAGS[@]}"
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
    -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON
    -DLLAMA_OPENSSL=OFF
)
STAMP="$BUILD/.canon-build-flags"
want_stamp="$LLAMA_CPP_PY_VERSION ${CMAKE_FLAGS[*]}"
if [ "${PEERS_FORCE_BUILD:-0}" = 1 ] || [ ! -f "$BUILD/bin/libllama.so" ] || [ ! -x "$BUILD/bin/llama-bench" ] \
    || [ ! -x "$BUILD/bin/llama-server" ] || [ ! -x "$BUILD/bin/llama-quantize" ] \
    || [ "$(cat "$STAMP" 2>/dev/null)" != "$want_stamp" ]; then
    log "configuring llama.cpp in $BUILD"
    cmake -S "$TREE/vendor/llama.cpp" -B "$BUILD" "${CMAKE_FLAGS[@]}"
    log "building llama + llama-bench + llama-server + llama-quantize with -j$JOBS (about 20 minutes on 2 cores)"
    nice -n 10 cmake --build "$BUILD" --target llama llama-bench llama-server llama-quantize -j "$JOBS"
    printf '%s' "$want_stamp" > "$STAMP"
else
    log "llama.cpp already built in $BUILD"
fi

# 4. the Python binding, without its own native library --------------------------------------------
have_ver=$("$PY" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))' 2>/dev/null || true)
if [ "$have_ver" != "$LLAMA_CPP_PY_VERSION" ]; then
    log "installing the llama-cpp-python binding (LLAMA_BUILD=OFF)"
    CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" "$PY" -m pip install "$SDIST"
fi

# 5. smoke test ------------------------------------------------------------------------------------
LLAMA_CPP_LIB_PATH="$BUILD/bin" "$PY" - <<'EOF'
import llama_cpp, os
llama_cpp.llama_backend_init()
print("[setup_peers] llama_cpp", llama_cpp.__version__, "loaded from", os.environ["LLAMA_CPP_LIB_PATH"])
print("[setup_peers] system info:", llama_cpp.llama_print_system_info().decode())
EOF

cat <<EOF
# Canon reference peers are ready. Use:
export CANON_PEERS="$PEERS"
export LLAMA_CPP_LIB_PATH="$BUILD/bin"
export LLAMA_BENCH="$BUILD/bin/llama-bench"
export LLAMA_SERVER="$BUILD/bin/llama-server"
export PEERS_PYTHON="$PY"
EOF
