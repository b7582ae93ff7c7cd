#!/usr/bin/env bash
# Build llama.cpp's own server, llama-server, the inference benchmark's peer: it batches
# requests in parallel slots, which llama-cpp-python's server (one request at a time) cannot.
#
# The source is the llama.cpp that llama-cpp-python's sdist vendors (PyPI is reachable here,
# GitHub is not). It is built for the CPU it runs on, with the instruction sets that
# /proc/cpuinfo lists set explicitly (GGML_NATIVE=OFF) and AMX always off: -march=native
# builds died with "Illegal instruction" on a VM that advertises AMX it does not allow.
#
# llama-quantize comes with it: it rewrites the base model's Q4_1 GGUF as BF16 and F32 (the
# same weights, dequantized), so the benchmark can also compare at equal precision.
#
#   tools/build-llama-server.sh   -> .bench/llama-server/llama-server, .../llama-quantize
set -euo pipefail

VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
ROOT=${BENCH_DIR:-.bench}
OUT=$ROOT/llama-server
SRC=$ROOT/src/llama_cpp_python-$VERSION
BUILD=$ROOT/build-llama-server
PYTHON=${PYTHON:-python3}

if [ -x "$OUT/llama-server" ] && [ -x "$OUT/llama-quantize" ]; then
    echo "llama-server: already built ($OUT/llama-server)"
    exit 0
fi
mkdir -p "$ROOT/src" "$OUT"
if [ ! -d "$SRC" ]; then
    "$PYTHON" -m pip download -q --no-deps --no-binary :all: -d "$ROOT/src" \
        "llama-cpp-python==$VERSION"
    tar -xzf "$ROOT/src/llama_cpp_python-$VERSION.tar.gz" -C "$ROOT/src"
fi

# ON when the CPU lists the flag, else OFF.
has() { grep -q -m1 -w "$1" /proc/cpuinfo && echo ON || echo OFF; }

cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF \
    -DGGML_SSE42="$(has sse4_2)" -DGGML_AVX="$(has avx)" -DGGML_AVX2="$(has avx2)" \
    -DGGML_BMI2="$(has bmi2)" -DGGML_FMA="$(has fma)" -DGGML_F16C="$(has f16c)" \
    -DGGML_AVX512="$(has avx512f)" -DGGML_AVX512_VBMI="$(has avx512vbmi)" \
    -DGGML_AVX512_VNNI="$(has avx512_vnni)" -DGGML_AVX512_BF16="$(has avx512_bf16)" \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >"$ROOT/cmake-configure.log"
nice -n 10 cmake --build "$BUILD" --target llama-server llama-quantize -j "${JOBS:-2}" >"$ROOT/cmake-build.log"
cp "$BUILD/bin/llama-server" "$BUILD/bin/llama-quantize" "$OUT/"
"$OUT/llama-server" --version 2>&1 | head -2
echo "llama-server: built ($OUT/llama-server)"
