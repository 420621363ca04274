#!/usr/bin/env bash
# scripts/smollm2_results.sh: the README's results tables, measured on this machine.
#
#   bash scripts/smollm2_results.sh [OUTDIR] [CONFIG ...]          (PRESET=smollm2, the default)
#   PRESET=stories bash scripts/smollm2_results.sh [OUTDIR] [CONFIG ...]
#
# PRESET=smollm2 (README "Results: SmolLM2-135M"): the model is SmolLM2-135M-Instruct from
# scripts/fetch_smollm2.sh (GGUF, linears Q4_1 dequantized to f32 as the "FP" model). Evaluation:
# the first 16 windows of 512 tokens of wiki.test.raw (8,176 scored tokens, no BOS, as the GGUF
# says). Calibration: lines of wiki.test.raw after the first 2000 non-empty ones (the evaluation
# windows end near line 130, so the two never overlap), devset $DEVSET sequences of $CTX tokens,
# --tune-iters $TUNE, seed 0.
# PRESET=stories (README "Results: stories260K"): stories260K-hf from ../shared, calibration
# $DEVSET (default 128) windows of $CTX (default 256) tokens from the lines of
# tinystories_valid_head.txt after the first 1000, evaluated with --per-line 40 (the recorded
# protocol, FP 1.35651).
# Each CONFIG is NAME:OPTIONS, e.g. "e8p2:--bits 2" or "ft2:--bits 2 --ft block"; by default the
# no-fine-tuning table: FP, e8p at 2/3/4 bits, and the 2-bit ablations nearest, noe8, rtn.
# Quantization runs on $NP ranks (default 2; NP1=1 also times every config on 1 rank), one
# OpenMP thread each. Writes OUTDIR/results.jsonl (one object per config, with the wall time by
# stage of every run) and prints a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-smollm2-results}
shift || true
E8Q=${E8Q:-./build/e8q}
MPIEXEC=${MPIEXEC:-mpirun}
NP=${NP:-2}
TUNE=${TUNE:-10}
SHARED=${E8Q_SHARED:-../shared}
case ${PRESET:-smollm2} in
smollm2)
  DEVSET=${DEVSET:-32}
  CTX=${CTX:-512}
  TEXT=$SHARED/text/wiki.test.raw
  SKIP=2000
  EVAL=(--text "$TEXT" --ctx 512 --windows 16)
  model=$(bash scripts/fetch_smollm2.sh)
  ;;
stories)
  DEVSET=${DEVSET:-128}
  CTX=${CTX:-256}
  TEXT=$SHARED/text/tinystories_valid_head.txt
  SKIP=1000
  EVAL=(--text "$TEXT" --per-line 40)
  model=$SHARED/models/stories260K-hf
  ;;
*) echo "PRESET=$PRESET: use smollm2 or stories" >&2; exit 2 ;;
esac
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=("fp:" "e8p4:--bits 4 --ft none" "e8p3:--bits 3 --ft none" "e8p2:--bits 2 --ft none"
                                     "nearest2:--bits 2 --method nearest --ft none" "noe82:--bits 2 --method noe8 --ft none"
                                     "rtn2:--bits 2 --method rtn --ft none")
evaluate() { # evaluate NAME (--model M | --artifact A): the eval JSON line
  OMP_NUM_THREADS=2 "$E8Q" eval "${@:2}" "${EVAL[@]}" 2> "$out/$1.eval.log" | tail -1
}
for c in "${configs[@]}"; do
  name=${c%%:*}
  opts=${c#*:}
  if [ "$name" = fp ]; then
    ev=$(evaluate fp --model "$model")
    echo "{\"name\":\"fp\",\"eval\":$ev}" >> "$out/results.jsonl"
    continue
  fi
  times=""
  stages=""
  for np in $NP ${NP1:+1}; do
    rm -rf "$out/$name.np$np.e8q" "$out/$name.np$np.e8q.run"
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086  # opts holds several options on purpose
    OMP_NUM_THREADS=1 "$MPIEXEC" -np "$np" "$E8Q" quantize --model "$model" --calib "$TEXT" --calib-skip "$SKIP" \
      --devset "$DEVSET" --ctx "$CTX" --tune-iters "$TUNE" --seed 0 $opts --out "$out/$name.np$np.e8q" \
      --log-json "$out/$name.np$np.events.jsonl" > "$out/$name.np$np.log" 2>&1
    t1=$(date +%s.%N)
    times="$times\"np$np\":$(python3 -c "print(round($t1 - $t0, 1))"),"
    st=$(python3 -c 'import json,sys; print(json.dumps([json.loads(l) for l in open(sys.argv[1]) if "\"done\"" in l][-1]["stage_s"]))' "$out/$name.np$np.events.jsonl")
    stages="$stages\"np$np\":$st,"
  done
  ev=$(evaluate "$name" --artifact "$out/$name.np$NP.e8q")
  man=$(tar -xOf "$out/$name.np$NP.e8q" manifest.json | python3 -c 'import json,sys; m=json.load(sys.stdin); print(json.dumps({"size": m["size"], "options": m["options"]}))')
  echo "{\"name\":\"$name\",\"quantize_s\":{${times%,}},\"stage_s\":{${stages%,}},\"eval\":$ev,\"manifest\":$man}" >> "$out/results.jsonl"
done
python3 - "$out/results.jsonl" <<'PY'
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
fp = next((r["eval"]["mean_nll"] for r in rows if r["name"] == "fp"), None)
print("| config | mean NLL | perplexity | linears bpw (codes) | model bpw | quantize s (ranks) | by stage, s (ranks) |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    e = r["eval"]
    if r["name"] == "fp":
        print(f"| FP | {e['mean_nll']:.4f} | {e['ppl']:.2f} | | | | |")
        continue
    s = r["manifest"]["size"]
    t = ", ".join(f"{v:.0f} ({k[2:]})" for k, v in r["quantize_s"].items())
    st = "; ".join(f"{k[2:]}: " + ", ".join(f"{n} {v:.0f}" for n, v in d.items() if v >= 0.5)
                   for k, d in r.get("stage_s", {}).items())
    print(f"| {r['name']} | {e['mean_nll']:.4f} | {e['ppl']:.2f} | {s['linear_bpw']:.3f} ({s['linear_codes_bpw']:.2f}) | {s['model_bpw']:.2f} | {t} | {st} |")
PY
