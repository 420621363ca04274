#!/usr/bin/env bash
# scripts/test.sh: configure a fresh build with warnings as errors, build everything (CUDA objects
# too when nvcc is present) and run the whole test suite with CTest. Exits non-zero on any failure.
# Tests read ../shared (override with E8Q_SHARED). MPI tests run under `timeout`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build_dir=${E8Q_TEST_BUILD_DIR:-build-test}
# the real test model (SmolLM2-135M GGUF, pinned by sha256; cached, so offline once fetched): the
# tests that need it fail rather than skip when it is missing
export E8Q_MODELS=${E8Q_MODELS:-$HOME/.cache/e8q}
bash scripts/fetch_smollm2.sh >/dev/null
export E8Q_REQUIRE_MODELS=1
rm -rf "$build_dir"
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DE8Q_WERROR=ON -DE8Q_CUDA="${E8Q_CUDA:-AUTO}"
cmake --build "$build_dir" -j"$(nproc)"
cd "$build_dir"
ctest --output-on-failure --timeout 900 -j"${E8Q_TEST_JOBS:-2}"
cd "$root"
# the file parsers under libFuzzer with ASan + UBSan, 20 s per target (fuzz/README.md): their own build
bash fuzz/run.sh "${E8Q_FUZZ_SECONDS:-20}"
