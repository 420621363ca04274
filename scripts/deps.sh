#!/usr/bin/env bash
# scripts/deps.sh: install e8q's Debian 12 build and test dependencies (idempotent).
# Usage: bash scripts/deps.sh [--slurm]   (as root, or with sudo available)
#   --slurm  also the one-machine Slurm the Slurm tests bring up (munge, slurmctld, slurmd, client);
#            without it those tests are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake pkg-config python3         # python3: JSON checks in the integration tests
  openmpi-bin libopenmpi-dev                      # MPI
  libopenblas-dev liblapacke-dev                  # BLAS / LAPACK(E)
  libscalapack-openmpi-dev                        # distributed Cholesky of large Hessians
  libarchive-dev                                  # the .e8q artifact (tar)
  libcjson-dev                                    # JSON (config.json, manifests, plans)
  libssl-dev                                      # SHA-256 (libcrypto)
  libcmocka-dev                                   # unit tests
  libpcre2-dev                                    # byte-level BPE pre-tokenizers (Unicode classes)
  clang libomp-dev                                # libFuzzer + ASan/UBSan fuzz targets (fuzz/run.sh, E8Q_FUZZ=ON)
)
[ "${1:-}" = --slurm ] && packages+=(munge slurmctld slurmd slurm-client)
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "e8q: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

