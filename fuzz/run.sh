#!/usr/bin/env bash
# fuzz/run.sh SECONDS [TARGET...]: build the libFuzzer targets (clang, ASan + UBSan, E8Q_FUZZ=ON) in
# their own build directory and run each for SECONDS, one after another on one core, at nice 10.
# The corpus of each target starts from fuzz/make_corpus.py's seeds and grows in
# $E8Q_FUZZ_BUILD_DIR/corpus/<target> (kept between runs, so longer campaigns build on shorter ones).
# Prints one line per target (executions, seconds, corpus size, result) and exits non-zero when a
# target finds a crash, a hang (-timeout), a leak or a sanitizer report; the input that did it is
# kept in $E8Q_FUZZ_BUILD_DIR/findings/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
build=${E8Q_FUZZ_BUILD_DIR:-build-fuzz}
shared=${E8Q_SHARED:-$(cd .. && pwd)/shared}
all=(safetensors config tokenizer_spm tokenizer_bin bpe_json gguf artifact journal ckpt)
if [ $# -gt 0 ]; then targets=("$@"); else targets=("${all[@]}"); fi

mkdir -p "$build"
cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo -DE8Q_FUZZ=ON -DE8Q_CUDA=OFF \
  -DE8Q_WERROR=OFF >"$build/configure.log" 2>&1 || { cat "$build/configure.log"; exit 1; }
cmake --build "$build" -j"${E8Q_FUZZ_JOBS:-$(nproc)}" --target fuzz_all >/dev/null
python3 fuzz/make_corpus.py "$build/seeds" "$shared"
mkdir -p "$build/findings"

fail=0
printf '%-15s %12s %8s %10s  %s\n' target executions seconds corpus result
for t in "${targets[@]}"; do
  corpus="$build/corpus/$t"
  mkdir -p "$corpus"
  cp -n "$build/seeds/$t/"* "$corpus/" 2>/dev/null || true
  log="$build/findings/$t.log"
  set +e
  nice -n 10 "$build/fuzz/fuzz_$t" "$corpus" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -malloc_limit_mb=1024 -max_len=65536 -print_final_stats=1 -artifact_prefix="$build/findings/$t-" >"$log" 2>&1
  rc=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  files=$(find "$corpus" -type f | wc -l)
  if [ $rc -eq 0 ]; then
    result=ok
  else
    result="FAILED (exit $rc): $(grep -m1 -E 'ERROR|Timeout|out-of-memory|leak' "$log" || echo see "$log")"
    fail=1
  fi
  printf '%-15s %12s %8s %10s  %s\n' "$t" "${runs:-?}" "${took:-$secs}" "$files" "$result"
done
exit $fail
