#!/usr/bin/env bash
# scripts/gpu_pack.sh: build the GPU binaries HERE (Debian 12) and pack everything they need to run
# on a lent GPU machine that cannot build the project (no Open MPI, OpenBLAS, ScaLAPACK, libarchive,
# cJSON, ... there; maybe another glibc) into ONE archive, .gpu/e8q-gpu.tar.xz, which
# scripts/gpu_check.sh unpacks to /tmp/e8q there and runs.
#
#   bash scripts/gpu_pack.sh          (from anywhere; E8Q_SHARED overrides ../shared)
#
# What it does:
#   1. configures and builds the Release tree build-gpu (-DE8Q_CUDA=ON -DE8Q_CUDA_ARCHS=90a-real, the
#      H200 only) with the targets e8q, the GPU tests and, where those targets exist, bench_qlinear
#      and bench_gpu;
#   2. stages, in build-gpu/gpu-stage, the tree that becomes /tmp/e8q on the GPU machine:
#        bin/real/NAME   the binaries (and Open MPI's orterun as mpirun, orted, ompi_info)
#        bin/NAME        a wrapper per binary: runs it through the CARRIED loader,
#                        /tmp/e8q/lib/ld-linux-x86-64.so.2 --library-path "$E8Q_LIBPATH", so Debian 12's
#                        glibc and libraries are used whatever the host has (E8Q_ROOT, if set,
#                        replaces /tmp/e8q: gpu_check.sh's fallback where /tmp is noexec)
#        lib/            every shared library the binaries and Open MPI's/PMIx's plugins need (ldd),
#                        the glibc family too, except the NVIDIA ones the host provides (libcuda,
#                        libnvidia-*, libnccl, libcudart, cuBLAS, cuSOLVER, ...)
#        ompi/           Open MPI's runtime: lib/openmpi3 (MCA components), share/openmpi (help
#                        files), etc (sysconf dir), pmix/{lib/pmix,share/pmix} (PMIx plugins, help);
#                        found through OPAL_* / PMIX_* variables that gpu_check.sh sets
#        shared/         the test data the GPU tests read (device.sh: stories260K-hf and the
#                        TinyStories head)
#        tests/          the test scripts the check runs (tests/pipeline/device.sh)
#        MANIFEST.txt    what was packed, from which commit, when
#   3. writes .gpu/e8q-gpu.tar.xz (fails if it is not under 60 MiB), adds /.gpu/ to
#      .git/info/exclude, and prints the `run` call to make with the device tool.
# Writes: build-gpu/ (build and stage), .gpu/e8q-gpu.tar.xz, .gpu/MANIFEST.txt.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$ROOT/build-gpu
STAGE=$BUILD/gpu-stage          # outside .gpu/, so that carrying .gpu carries the archive alone
DEST=$ROOT/.gpu
ARCHIVE=$DEST/e8q-gpu.tar.xz
SHARED=${E8Q_SHARED:-$ROOT/../shared}
PREFIX=/tmp/e8q                 # where gpu_check.sh unpacks it (the wrappers' default)
MAX_MIB=${E8Q_PACK_MAX_MIB:-60}     # the archive must stay under this (the tool carries 64 MiB in all)
REQUIRED=(e8q test_qlinear_gpu test_quantize_gpu test_finetune_gpu test_forward_gpu test_comm_nccl)
OPTIONAL=(bench_qlinear bench_gpu)
# libraries the GPU host provides (driver, pip nvidia-* packages): never carried
NVIDIA_RE='^(libcuda\.so|libnvidia-|libnccl|libcudart|libcublas|libcublasLt|libcusolver|libcusparse|libnvJitLink|libcufft|libcurand|libnvrtc|libcudnn)'

die() { echo "gpu_pack: ERROR: $*" >&2; exit 1; }
LDCONFIG=$(command -v ldconfig || command -v /sbin/ldconfig || command -v /usr/sbin/ldconfig) || { echo "gpu_pack: ERROR: ldconfig not found" >&2; exit 1; }
say() { echo "gpu_pack: $*"; }

# ---------------------------------------------------------------- 1. build
gen=()
if [ ! -f "$BUILD/CMakeCache.txt" ] && command -v ninja > /dev/null; then gen=(-G Ninja); fi
say "configuring $BUILD (Release, CUDA on, sm_90a only)"
mkdir -p "$BUILD"
cmake -S "$ROOT" -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DE8Q_CUDA=ON -DE8Q_CUDA_ARCHS=90a-real > "$BUILD/gpu-configure.log" 2>&1 \
  || { cat "$BUILD/gpu-configure.log"; die "configure failed"; }
grep -q "CUDA kernels" "$BUILD/gpu-configure.log" || { cat "$BUILD/gpu-configure.log"; die "configured without the CUDA kernels"; }

# a target exists when the generator lists it (Makefiles: `cmake --build --target help`; Ninja lists
# only phony targets there, so ask ninja for all of them)
targets=$( { cmake --build "$BUILD" --target help 2> /dev/null || true
             if [ -f "$BUILD/build.ninja" ]; then ninja -C "$BUILD" -t targets all 2> /dev/null || true; fi; } \
           | sed -E 's/^\.\.\. //; s/:.*//' | sort -u)
has_target() { grep -qx "$1" <<< "$targets"; }
build_targets=()
for t in "${REQUIRED[@]}"; do has_target "$t" || die "target $t does not exist in $BUILD"; build_targets+=("$t"); done
for t in "${OPTIONAL[@]}"; do
  if has_target "$t"; then build_targets+=("$t"); else say "target $t does not exist (yet): skipped"; fi
done
say "building ${build_targets[*]}"
cmake --build "$BUILD" -j"$(nproc)" --target "${build_targets[@]}"

# ---------------------------------------------------------------- 2. stage
rm -rf "$STAGE"
mkdir -p "$STAGE"/{bin/real,lib/hwloc,ompi/lib/openmpi3,ompi/share,ompi/etc,ompi/pmix/lib/pmix,ompi/pmix/share,shared,tests/pipeline}

wrap() { # wrap NAME: bin/NAME runs bin/real/NAME through the carried loader
  cat > "$STAGE/bin/$1" <<EOF
#!/bin/sh
# $1 through the carried loader and libraries (scripts/gpu_pack.sh); E8Q_LIBPATH: scripts/gpu_check.sh
# (E8Q_ROOT: where the pack was unpacked, if not $PREFIX)
R=\${E8Q_ROOT:-$PREFIX}
exec "\$R/lib/ld-linux-x86-64.so.2" --library-path "\${E8Q_LIBPATH:-\$R/lib}" "\$R/bin/real/$1" "\$@"
EOF
  chmod 755 "$STAGE/bin/$1"
}

for t in "${build_targets[@]}"; do
  f=$(find "$BUILD" -path "$STAGE" -prune -o -path '*/CMakeFiles' -prune -o -type f -name "$t" -perm -u+x -print | head -1)
  [ -n "$f" ] || die "built target $t not found under $BUILD"
  install -m 755 "$f" "$STAGE/bin/real/$t"
  wrap "$t"
done

# Open MPI: mpirun (orterun), ompi_info (to check the paths it resolves), components, help, sysconf
command -v mpirun > /dev/null || die "mpirun not found (apt-get install openmpi-bin)"
install -m 755 "$(readlink -f "$(command -v mpirun)")" "$STAGE/bin/real/mpirun"; wrap mpirun
# orted: a process that calls MPI_Init without mpirun (a singleton: e8q run alone) starts one, from
# OPAL_BINDIR, that is the wrapper /tmp/e8q/bin/orted
for p in orted ompi_info; do
  command -v $p > /dev/null || die "$p not found (apt-get install openmpi-bin)"
  install -m 755 "$(readlink -f "$(command -v $p)")" "$STAGE/bin/real/$p"; wrap $p
done
ompi_pkglibdir=$(ompi_info --path pkglibdir --parsable | sed -n 's/^path:pkglibdir://p')
ompi_pkgdatadir=$(ompi_info --path pkgdatadir --parsable | sed -n 's/^path:pkgdatadir://p')
ompi_sysconfdir=$(ompi_info --path sysconfdir --parsable | sed -n 's/^path:sysconfdir://p')
[ -d "$ompi_pkglibdir" ] && [ -d "$ompi_pkgdatadir" ] && [ -d "$ompi_sysconfdir" ] \
  || die "Open MPI paths not found: '$ompi_pkglibdir' '$ompi_pkgdatadir' '$ompi_sysconfdir'"
cp -L "$ompi_pkglibdir"/*.so "$STAGE/ompi/lib/openmpi3/"
cp -rL "$ompi_pkgdatadir" "$STAGE/ompi/share/openmpi"
cp -rL "$ompi_sysconfdir"/. "$STAGE/ompi/etc/"
# external PMIx (Debian: libpmix2): its plugins and help files
pmix_lib=$(readlink -f "$("$LDCONFIG" -p | awk '$1 == "libpmix.so.2" {print $NF; exit}')" 2> /dev/null || true)
if [ -n "$pmix_lib" ] && [ -d "$(dirname "$pmix_lib")/pmix" ]; then
  pmix_root=$(dirname "$(dirname "$pmix_lib")")
  cp -L "$pmix_root"/lib/pmix/*.so "$STAGE/ompi/pmix/lib/pmix/"
  [ -d "$pmix_root/share" ] && cp -rL "$pmix_root/share/." "$STAGE/ompi/pmix/share/"
  # Debian's pmix-mca-params.conf names the plugin directory: point it at the carried one
  find "$STAGE/ompi/pmix/share" -name '*.conf' -exec sed -i "s|$pmix_root|$PREFIX/ompi/pmix|g" {} +
else
  say "warning: PMIx's plugin directory not found (Open MPI with an internal PMIx?)"
fi

# libraries: everything ldd resolves for the binaries and the plugins, but the NVIDIA ones
declare -A seen=()
copy_lib() { # copy_lib NAME PATH
  local name=$1 path=$2
  [ -n "${seen[$name]:-}" ] && return 0
  seen[$name]=1
  install -m 755 "$(readlink -f "$path")" "$STAGE/lib/$name"
}
missing=()
while read -r name path; do
  if [[ $name =~ $NVIDIA_RE ]]; then continue; fi
  if [ "$path" = "not-found" ]; then missing+=("$name"); continue; fi
  copy_lib "$name" "$path"
done < <(for f in "$STAGE"/bin/real/* "$STAGE"/ompi/lib/openmpi3/*.so "$STAGE"/ompi/pmix/lib/pmix/*.so; do
           ldd "$f" 2> /dev/null || true; done | awk '
  $2 == "=>" && $3 == "not" { print $1, "not-found"; next }
  $2 == "=>" && $3 ~ /^\// { print $1, $3; next }
  $1 ~ /^\// && $1 ~ /ld-linux/ { n = split($1, p, "/"); print p[n], $1 }')
[ ${#missing[@]} -eq 0 ] || die "ldd cannot resolve: ${missing[*]}"
# the glibc family, whether or not ldd named it (dlopen'ed by glibc itself or by plugins)
for n in ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libdl.so.2 libpthread.so.0 librt.so.1 libresolv.so.2 libutil.so.1 \
         libnss_files.so.2 libnss_dns.so.2 libstdc++.so.6 libgcc_s.so.1; do
  p=$("$LDCONFIG" -p | awk -v n="$n" '$1 == n && /x86-64/ {print $NF; exit}')
  for q in "$p" /lib/x86_64-linux-gnu/$n /lib64/$n; do [ -n "$q" ] && [ -e "$q" ] && { p=$q; break; }; done
  [ -n "$p" ] && [ -e "$p" ] || die "glibc library $n not found"
  copy_lib "$n" "$p"
done
[ -x "$STAGE/lib/ld-linux-x86-64.so.2" ] || die "the dynamic loader was not staged"

# test data and scripts
for p in models/stories260K-hf text/tinystories_valid_head.txt; do
  [ -e "$SHARED/$p" ] || die "test data $SHARED/$p not found (set E8Q_SHARED)"
  mkdir -p "$STAGE/shared/$(dirname "$p")"
  cp -rL "$SHARED/$p" "$STAGE/shared/$p"
done
chmod -R u+w "$STAGE/shared"
install -m 755 "$ROOT/tests/pipeline/device.sh" "$STAGE/tests/pipeline/device.sh"

{
  echo "e8q GPU pack: unpack to $PREFIX (scripts/gpu_check.sh), built by scripts/gpu_pack.sh"
  echo "date:   $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git -C "$ROOT" rev-parse HEAD 2> /dev/null || echo unknown)$(git -C "$ROOT" --no-optional-locks diff --quiet HEAD 2> /dev/null || echo ' + local changes')"
  echo "glibc:  $(ldd --version | head -1)"
  echo "mpi:    $(ompi_info --version | head -1)"
  echo "nvcc:   $(/usr/local/cuda/bin/nvcc --version 2> /dev/null | tail -1)"
  echo "targets: ${build_targets[*]}"
  echo "libs:   $(cd "$STAGE/lib" && ls | grep -v '^hwloc$' | tr '\n' ' ')"
} > "$STAGE/MANIFEST.txt"

# ---------------------------------------------------------------- 3. archive
mkdir -p "$DEST"
exclude=$(git -C "$ROOT" rev-parse --git-path info/exclude 2> /dev/null || echo "$ROOT/.git/info/exclude")
case $exclude in /*) ;; *) exclude=$ROOT/$exclude ;; esac
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.gpu/' "$exclude" 2> /dev/null || { echo '/.gpu/' >> "$exclude"; say "added /.gpu/ to $exclude"; }
rm -rf "$ARCHIVE" "$ARCHIVE.tmp" "$DEST/root"    # .gpu/root: gpu_check.sh's noexec fallback, never carried
say "compressing $(du -sh "$STAGE" | cut -f1) of staged files"
tar -C "$STAGE" --sort=name --owner=0 --group=0 --numeric-owner -cf - . | xz -T0 -9 > "$ARCHIVE.tmp"
mv "$ARCHIVE.tmp" "$ARCHIVE"
cp "$STAGE/MANIFEST.txt" "$DEST/MANIFEST.txt"
bytes=$(stat -c %s "$ARCHIVE")
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
say "archive $ARCHIVE: $bytes bytes ($mib MiB)"
[ "$bytes" -lt $((MAX_MIB * 1048576)) ] || { rm -f "$ARCHIVE"; die "the archive is $mib MiB, over the $MAX_MIB MiB limit (removed)"; }
cat <<EOF

gpu_pack: done. On a lent GPU machine, make ONE call of the device tool:
  run(carry=[".gpu"], command="bash scripts/gpu_check.sh", timeout_s=540)
The log comes back as gpu_check.log (\$OUT/gpu_check.log); the check ends within about 8 minutes.
EOF
