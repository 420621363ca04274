#!/bin/bash
# bench/whole_model.sh: issue 13's whole-model measurements in one run (bench/README.md).
#
#   bench/whole_model.sh ARTIFACT.e8q MODEL.gguf OUTDIR [BEFORE_E8Q]
#
# ARTIFACT: a 2-bit SmolLM2-135M artifact; MODEL: the SmolLM2 GGUF it came from (the f32 model);
# BEFORE_E8Q: optionally an older e8q binary for the decode "before" column. Every figure is at
# 2 threads. This machine's speed drifts by 20% over minutes (a shared host), so the e8q runs
# are interleaved and their medians printed with min and max. Writes OUTDIR/summary.txt and
# the raw logs; takes about 15 minutes and up to 14 GB of memory (the bf16 7B model).
set -euo pipefail
A=$1 G=$2 OUT=$3 BEFORE=${4:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
E8Q=${E8Q:-$ROOT/build/e8q}
BQ=$ROOT/build/bench/bench_qlinear BD=$ROOT/build/bench/bench_decode
TEXT=${E8Q_SHARED:-$ROOT/../shared}/text/wiki.test.raw
mkdir -p "$OUT"
export OMP_NUM_THREADS=2
S=$OUT/summary.txt
: > "$S"
say() { echo "$*" | tee -a "$S"; }

# median (min, max) of the numbers on stdin
stats() { sort -n | awk '{a[NR]=$1} END{printf "median %.1f (min %.1f, max %.1f, n=%d)", a[int((NR+1)/2)], a[1], a[NR], NR}'; }

say "# whole-model measurements, $(date -u +%FT%TZ), $(nproc) CPUs, OMP_NUM_THREADS=2"

# ---- decode: tokens/s of generate, 256 tokens after a 4-token prompt, 7 interleaved runs
gen() { "$1" generate --artifact "$A" --prompt "Once upon a time" --tokens 256 ${2:+--head $2} 2>&1 >/dev/null |
        grep -o "at [0-9.]* tokens/s" | grep -o "[0-9.]*"; }
declare -A R
for i in 1 2 3 4 5 6 7; do
  [ -n "$BEFORE" ] && R[before]+=" $(gen "$BEFORE")"
  R[source]+=" $(gen "$E8Q")"
  R[q8]+=" $(gen "$E8Q" q8)"
done
say "## decode (e8q generate, SmolLM2 2-bit, tokens/s)"
[ -n "$BEFORE" ] && say "before ($BEFORE): $(echo ${R[before]} | tr ' ' '\n' | stats)"
say "after, float16 head: $(echo ${R[source]} | tr ' ' '\n' | stats)"
say "after, --head q8:    $(echo ${R[q8]} | tr ' ' '\n' | stats)"

# ---- decode profile: perf over 700 tokens, the first 0.6 s (loading) left out
if command -v perf > /dev/null; then
  for v in before source q8; do
    bin=$E8Q head=""
    [ $v = before ] && { [ -n "$BEFORE" ] || continue; bin=$BEFORE; }
    [ $v = q8 ] && head="--head q8"
    perf record -q -D 600 -o "$OUT/perf.$v.data" "$bin" generate --artifact "$A" --prompt "Once upon a time" \
      --tokens 700 $head > /dev/null 2>&1 || true
    perf report -i "$OUT/perf.$v.data" --no-children --sort dso,symbol 2> /dev/null | grep -v '^#' | grep '%' |
      head -16 > "$OUT/profile.$v.txt" || true
  done
fi

# ---- prefill: eval at ctx 512, 16 windows, 3 interleaved runs each
ev() { "$E8Q" eval "$@" --text "$TEXT" --ctx 512 --windows 16 2>/dev/null | tail -1 |
       python3 -c "import sys, json; d = json.load(sys.stdin); print(d['tokens_per_s'], d['mean_nll'])"; }
for i in 1 2 3; do
  ev --artifact "$A" >> "$OUT/eval.2bit.txt"
  E8Q_NO_AMX=1 ev --artifact "$A" >> "$OUT/eval.2bit-noamx.txt"
  ev --model "$G" >> "$OUT/eval.f32.txt"
done
say "## prefill (e8q eval --ctx 512 --windows 16, tokens/s; mean NLL)"
for f in 2bit 2bit-noamx f32; do
  say "$f: $(cut -d' ' -f1 "$OUT/eval.$f.txt" | stats); NLL $(head -1 "$OUT/eval.$f.txt" | cut -d' ' -f2)"
done

# ---- the prefill path per layer shape against f32 sgemm of the same shape, batch 512
say "## prefill products (bench_qlinear --inference --batch 512, SmolLM2 shapes)"
for s in 960x576 576x576 3072x576 576x1536; do
  "$BQ" --shape $s --batch 512 --threads 2 --reps 7 --inference | tail -4 | tee -a "$S"
done

# ---- the fused product beyond the cache
say "## bench_qlinear --matrices auto (4096x14336, batch 1, 2 threads)"
"$BQ" --shape 4096x14336 --batch 1 --threads 2 --reps 5 --matrices auto | tail -5 | tee -a "$S"

# ---- 7B-shaped synthetic decode
say "## bench_decode (Llama-2-7B shape, 2 threads)"
"$BD" --threads 2 | tee "$OUT/bench_decode.txt" | tail -14 | tee -a "$S"
