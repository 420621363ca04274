#!/usr/bin/env bash
# scripts/gpu_check.sh: on a lent GPU machine, run every GPU test and benchmark of the pack that
# scripts/gpu_pack.sh made (.gpu/e8q-gpu.tar.xz), in one call, within about 8 minutes.
#
#   bash scripts/gpu_check.sh [ARCHIVE]        (from the repo root, as the device tool runs it:
#                                               run(carry=[".gpu"], command="bash scripts/gpu_check.sh"))
#
# It unpacks the archive to /tmp/e8q (where /tmp is noexec: to .gpu/root); the binaries run through
# the carried Debian 12 loader and libraries (the wrappers in /tmp/e8q/bin). It sets E8Q_LIBPATH (the
# carried libraries first, then the host's NVIDIA ones: the pip nvidia-* packages' lib folders for
# libnccl, libcudart, cuBLAS, cuSOLVER; the driver's folders for libcuda; the CUDA toolkit's as a
# fallback), Open MPI's and PMIx's paths (OPAL_*, PMIX_*) and the environment CTest gives the tests,
# then runs, each under its own timeout and never stopping at a failure:
#   the loader check (e8q --version, alone and on 2 ranks through the carried mpirun), the GPU tests
#   (test_qlinear_gpu with the libraries' origins logged, test_quantize_gpu, test_finetune_gpu,
#   test_forward_gpu, test_comm_nccl on 1 and 2 ranks), tests/pipeline/device.sh's gpu case (then its
#   cpu case: --device auto picks the GPU), and the benchmarks (bench_gpu, bench_qlinear --quick)
#   where packed.
# Without a GPU (HERE) every GPU test skips (exit 77): that is how the script itself is tested.
# Writes: /tmp/e8q (unpacked), /tmp/e8q-tmp (test scratch), the log $OUT/gpu_check.log (without
# $OUT: /tmp/gpu_check.log), ending in one line per step: PASS, SKIP 77, FAIL rc N, TIMEOUT, or
# NOT RUN. Exit status: 0, unless the archive could not be unpacked (2).
# E8Q_CHECK_BUDGET (seconds, default 450) bounds all the steps together.
set -u

REPO=$(cd "$(dirname "$0")/.." && pwd)
ARCHIVE=${1:-$REPO/.gpu/e8q-gpu.tar.xz}
R=/tmp/e8q                                    # the wrappers' default root (they read E8Q_ROOT)
LOG=${OUT:+$OUT/gpu_check.log}
LOG=${LOG:-/tmp/gpu_check.log}
BUDGET=${E8Q_CHECK_BUDGET:-450}
T0=$SECONDS
SUMMARY=()

# ---------------------------------------------------------------- helpers
# the folders that hold the host's NVIDIA libraries, in the order they are searched
nvidia_libdirs() {
  # pip's nvidia-* packages (nvidia/nccl/lib, nvidia/cu13/lib, ...), where python3 finds them
  python3 - 2> /dev/null <<'PY'
import os
try:
    import nvidia
    for p in list(nvidia.__path__):
        for d in sorted(os.listdir(p)):
            if os.path.isdir(os.path.join(p, d, "lib")):
                print(os.path.join(p, d, "lib"))
except Exception:
    pass
PY
  local d
  for d in /opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib /usr/local/lib/python3*/dist-packages/nvidia/*/lib \
           /usr/local/lib/python3*/site-packages/nvidia/*/lib /usr/lib/python3/dist-packages/nvidia/*/lib; do
    [ -d "$d" ] && echo "$d"
  done
  # the driver (libcuda.so.1, libnvidia-ml.so.1): where ldconfig knows it, the host's
  # LD_LIBRARY_PATH (which the carried loader ignores: --library-path replaces it), the usual mounts
  local ldconfig
  ldconfig=$(command -v ldconfig || command -v /sbin/ldconfig || command -v /usr/sbin/ldconfig)
  [ -n "$ldconfig" ] && "$ldconfig" -p 2> /dev/null | awk '/libcuda\.so\.1 / {print $NF}' | xargs -r -n1 dirname
  tr ':' '\n' <<< "${LD_LIBRARY_PATH:-}" | grep '^/'
  echo /usr/local/nvidia/lib64; echo /usr/local/nvidia/lib
  # the CUDA toolkit (a fallback: HERE the only place libcudart and libnccl are)
  echo /usr/local/cuda/lib64; echo /usr/local/cuda-13.0/lib; echo /usr/local/cuda/lib
  echo /usr/lib/x86_64-linux-gnu; echo /usr/lib64
}

# step NAME SECONDS COMMAND...: run it under timeout (no longer than the budget left), record the result
step() {
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - (SECONDS - T0)))
  if [ "$left" -lt 20 ]; then
    echo "==== $name: NOT RUN (the ${BUDGET} s budget is spent)"
    SUMMARY+=("$(printf '%-24s NOT RUN (out of time)' "$name")")
    return
  fi
  [ "$limit" -le "$left" ] || limit=$left
  echo
  echo "==== $name (timeout ${limit} s): $*"
  local t=$SECONDS rc
  timeout -k 10 "$limit" "$@" < /dev/null
  rc=$?
  local took=$((SECONDS - t)) verdict
  case $rc in
    0) verdict=PASS ;;
    77) verdict="SKIP 77" ;;
    124 | 137) verdict="TIMEOUT after ${limit} s (rc $rc)" ;;
    *) verdict="FAIL rc $rc" ;;
  esac
  echo "==== $name: $verdict (${took} s)"
  SUMMARY+=("$(printf '%-24s %s (%d s)' "$name" "$verdict" "$took")")
}

# unpack DIR: the archive into DIR (tar + xz; Python's tarfile where that fails: no xz)
unpack() {
  rm -rf "$1" && mkdir -p "$1" || return 1
  if ! tar -xJf "$ARCHIVE" -C "$1"; then
    echo "gpu_check: tar -xJf failed: trying Python's tarfile"
    rm -rf "$1" && mkdir -p "$1" || return 1
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$ARCHIVE" "$1" || return 1
  fi
  [ -f "$1/lib/ld-linux-x86-64.so.2" ]        # -f: -x is false on a noexec mount
}

# which folder of E8Q_LIBPATH gives a library (the loader takes the first)
origin() {
  local d
  local dirs; IFS=: read -r -a dirs <<< "$E8Q_LIBPATH"
  for d in "${dirs[@]}"; do [ -e "$d/$1" ] && { echo "$d/$1"; return; }; done
  echo "NOT FOUND in E8Q_LIBPATH (the host's ld.so.cache is the loader's last resort)"
}

main() {
  echo "gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(cat /proc/sys/kernel/hostname) ($(uname -srm)), log $LOG"
  # ------------------------------------------------------------ unpack
  [ -f "$ARCHIVE" ] || { echo "gpu_check: ERROR: $ARCHIVE not found (run scripts/gpu_pack.sh; carry .gpu)"; return 2; }
  unpack "$R" || { echo "gpu_check: ERROR: unpacking $ARCHIVE to $R failed"; return 2; }
  if ! "$R/lib/ld-linux-x86-64.so.2" --version > /dev/null 2>&1; then
    echo "gpu_check: cannot execute the carried loader in $R (/tmp mounted noexec?): unpacking to $REPO/.gpu/root"
    rm -rf "$R"; R=$REPO/.gpu/root
    unpack "$R" && "$R/lib/ld-linux-x86-64.so.2" --version > /dev/null \
      || { echo "gpu_check: ERROR: the carried loader does not run from $R either"; return 2; }
  fi
  export E8Q_ROOT=$R                            # the wrappers' root (default /tmp/e8q)
  echo "unpacked $(du -sh "$R" | cut -f1) to $R in $((SECONDS - T0)) s"
  cat "$R/MANIFEST.txt"

  # ------------------------------------------------------------ environment
  local libpath=$R/lib d
  while read -r d; do
    [ -d "$d" ] || continue
    case ":$libpath:" in *":$d:"*) ;; *) libpath=$libpath:$d ;; esac
  done < <(nvidia_libdirs)
  export E8Q_LIBPATH=$libpath
  local np=$(nproc)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((np > 1 ? np / 2 : 1))} OPENBLAS_NUM_THREADS=1
  export E8Q_SHARED=$R/shared E8Q_TEST_TMP=/tmp/e8q-tmp
  rm -rf "$E8Q_TEST_TMP"; mkdir -p "$E8Q_TEST_TMP"
  # Open MPI as CTest runs it (tests/CMakeLists.txt), its files from the pack
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
         OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_mpi_yield_when_idle=1 OMPI_MCA_btl=self,vader \
         OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_pml=ob1
  export OPAL_PREFIX=$R/ompi OPAL_EXEC_PREFIX=$R/ompi OPAL_BINDIR=$R/bin OPAL_LIBDIR=$R/lib \
         OPAL_PKGLIBDIR=$R/ompi/lib/openmpi3 OPAL_DATAROOTDIR=$R/ompi/share OPAL_DATADIR=$R/ompi/share \
         OPAL_PKGDATADIR=$R/ompi/share/openmpi OPAL_SYSCONFDIR=$R/ompi/etc \
         OMPI_MCA_mca_base_component_path=$R/ompi/lib/openmpi3
  export PMIX_PREFIX=$R/ompi/pmix PMIX_EXEC_PREFIX=$R/ompi/pmix PMIX_LIBDIR=$R/ompi/pmix/lib \
         PMIX_PKGLIBDIR=$R/ompi/pmix/lib/pmix PMIX_DATAROOTDIR=$R/ompi/pmix/share PMIX_DATADIR=$R/ompi/pmix/share \
         PMIX_PKGDATADIR=$R/ompi/pmix/share/pmix PMIX_SYSCONFDIR=$R/ompi/pmix/share \
         PMIX_MCA_mca_base_component_path=$R/ompi/pmix/lib/pmix
  export HWLOC_PLUGINS_PATH=$R/lib/hwloc       # none carried: hwloc's built-in discovery only

  echo
  echo "E8Q_LIBPATH=$E8Q_LIBPATH"
  echo "OMP_NUM_THREADS=$OMP_NUM_THREADS, $np CPUs, host $(ldd --version 2> /dev/null | head -1)"
  local lib
  for lib in libcuda.so.1 libnvidia-ml.so.1 libcudart.so.13 libnccl.so.2 libcublas.so.13 libcublasLt.so.13 \
             libcusolver.so.12 libnvJitLink.so.13 libc.so.6 libmpi.so.40; do
    printf '  %-20s %s\n' "$lib" "$(origin "$lib")"
  done
  if command -v nvidia-smi > /dev/null; then
    timeout 20 nvidia-smi -L
    timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader
  else
    echo "nvidia-smi: not present"
  fi
  echo "Open MPI paths as the carried ompi_info resolves them:"
  timeout 30 "$R/bin/ompi_info" --path all --parsable 2>&1 | grep -E "path:(bindir|libdir|pkglibdir|pkgdatadir|sysconfdir):" | sed 's/^/  /'

  # ------------------------------------------------------------ steps
  local B=$R/bin
  step start 30 "$B/e8q" --version
  step mpirun_np2 60 "$B/mpirun" -np 2 "$B/e8q" --version
  # the first GPU test through the loader directly, with the loader's log of every library it
  # loads (dlopen'ed ones too: libcuda, cuBLAS): where each came from
  local dbg=$E8Q_TEST_TMP/ld-debug
  step test_qlinear_gpu 120 env LD_DEBUG=libs LD_DEBUG_OUTPUT="$dbg" "$R/lib/ld-linux-x86-64.so.2" \
    --library-path "$E8Q_LIBPATH" "$B/real/test_qlinear_gpu"
  echo "libraries test_qlinear_gpu loaded (LD_DEBUG=libs):"
  cat "$dbg".* 2> /dev/null | sed -n 's/.*calling init: //p' | sort -u | sed 's/^/  /'
  step test_quantize_gpu 120 "$B/test_quantize_gpu"
  step test_finetune_gpu 150 "$B/test_finetune_gpu"
  step test_forward_gpu 120 "$B/test_forward_gpu"
  step test_comm_nccl_np1 60 "$B/mpirun" -np 1 "$B/test_comm_nccl"
  step test_comm_nccl_np2 60 "$B/mpirun" -np 2 "$B/test_comm_nccl"
  step device_gpu 300 bash "$R/tests/pipeline/device.sh" "$B/e8q" "$B/mpirun" gpu
  # the cpu case on a GPU machine: --device auto must pick the device (elsewhere: the fallback)
  step device_cpu 120 bash "$R/tests/pipeline/device.sh" "$B/e8q" "$B/mpirun" cpu
  if [ -x "$B/bench_gpu" ]; then step bench_gpu 180 "$B/bench_gpu"
  else echo "bench_gpu: not packed"; SUMMARY+=("$(printf '%-24s NOT PACKED' bench_gpu)"); fi
  if [ -x "$B/bench_qlinear" ]; then step bench_qlinear_quick 120 "$B/bench_qlinear" --quick
  else echo "bench_qlinear: not packed"; SUMMARY+=("$(printf '%-24s NOT PACKED' bench_qlinear_quick)"); fi

  echo
  echo "==== summary ($((SECONDS - T0)) s in all)"
  printf '%s\n' "${SUMMARY[@]}"
  return 0
}

mkdir -p "$(dirname "$LOG")"
main "$@" 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
