#!/usr/bin/env bash
# scripts/install.sh: install e8q's Debian 12 dependencies (idempotent) and build e8q into build/.
# Usage: bash scripts/install.sh        (as root, or with sudo available)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
# CUDA kernels and the NCCL backend are built when nvcc is found (/usr/local/cuda), E8Q_CUDA=OFF skips them.
build_dir=${E8Q_BUILD_DIR:-build}
# shellcheck disable=SC2086  # E8Q_CMAKE_ARGS holds several words on purpose
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DE8Q_CUDA="${E8Q_CUDA:-AUTO}" ${E8Q_CMAKE_ARGS:-} >/dev/null
cmake --build "$build_dir" -j"$(nproc)"
echo "e8q: built $build_dir/e8q" >&2
