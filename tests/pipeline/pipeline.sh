#!/usr/bin/env bash
# tests/pipeline/pipeline.sh: end-to-end checks of `e8q quantize` on stories260K-hf.
#   pipeline.sh E8Q MPIEXEC CASE
# Every case quantizes with a small calibration set (lines after the first 1000 of
# tinystories_valid_head.txt, so calibration never overlaps the first-40-lines evaluation) and
# checks real outcomes: bytes of artifacts, error messages, recorded values.
set -u
E8Q=$1; MPIEXEC=$2; CASE=$3
SHARED=${E8Q_SHARED:?}
MODEL=$SHARED/models/stories260K-hf
TEXT=$SHARED/text/tinystories_valid_head.txt
TMP=${E8Q_TEST_TMP:-/tmp}/pipeline-$CASE-$$
rm -rf "$TMP"; mkdir -p "$TMP"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive  # ranks fill the cores
COMMON=(--model "$MODEL" --calib "$TEXT" --calib-skip 1000 --devset 24 --ctx 64 --tune-iters 2 --seed 7 --ft none
        --eval-text "$TEXT" --eval-lines 40)
fail() { echo "FAIL [$CASE]: $*" >&2; exit 1; }
q() { # q NP OUT [extra options...]: quantize on NP ranks
  local np=$1 out=$2; shift 2
  timeout -k 5 120 "$MPIEXEC" -np "$np" "$E8Q" quantize "${COMMON[@]}" --bits 2 --out "$out" "$@"
}
member() { # member ARCHIVE NAME: the member's bytes on stdout
  tar -xOf "$1" "$2"
}

case $CASE in
ranks)
  # the same options and seed give the same artifact bytes on 1, 2 and 4 ranks (and on rerun)
  q 1 "$TMP/a1.e8q" > "$TMP/log1" 2>&1 || { cat "$TMP/log1"; fail "1-rank run failed"; }
  "$E8Q" inspect "$TMP/a1.e8q" --verify > "$TMP/inspect" 2>&1 || { cat "$TMP/inspect"; fail "inspect --verify"; }
  grep -q "verify: *OK" "$TMP/inspect" || fail "inspect did not verify"
  q 2 "$TMP/a2.e8q" --log-json "$TMP/events.jsonl" > "$TMP/log2" 2>&1 || { cat "$TMP/log2"; fail "2-rank run failed"; }
  python3 - "$TMP/events.jsonl" <<'PY' || fail "--log-json events"
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
steps = [e for e in ev if e["event"] == "step"]
assert steps[-1]["done"] == steps[-1]["total"] == len(steps), (len(steps), steps[-1])
stages = [e["stage"] for e in steps]
assert stages[:3] == ["plan", "embed", "hessian"] and stages[-3:] == ["gather", "validate", "pack"], stages
assert sum(1 for e in ev if e["event"] == "linear") == 20
done = [e for e in ev if e["event"] == "done"][0]
assert len(done["peak_rss_bytes"]) == 2 and all(x > 1e6 for x in done["peak_rss_bytes"])
# wall time by stage: every stage of a fresh --ft none run ran, none of fine-tuning, and they add
# up to no more than the wall time
st = done["stage_s"]
ran = {"embed", "hessian", "quantize", "propagate", "gather", "validate", "pack"}
assert set(st) == ran | {"block-ft", "e2e-targets", "e2e"}, st
assert all(st[k] > 0 for k in ran) and all(st[k] == 0 for k in set(st) - ran), st
assert sum(st.values()) <= done["wall_s"], (st, done["wall_s"])
PY
  q 4 "$TMP/a4.e8q" > "$TMP/log4" 2>&1 || { cat "$TMP/log4"; fail "4-rank run failed"; }
  cmp "$TMP/a1.e8q" "$TMP/a2.e8q" || fail "1 and 2 ranks differ"
  cmp "$TMP/a1.e8q" "$TMP/a4.e8q" || fail "1 and 4 ranks differ"
  OPENBLAS_NUM_THREADS=2 OMP_NUM_THREADS=2 q 1 "$TMP/t2.e8q" > "$TMP/logt" 2>&1 || { cat "$TMP/logt"; fail "2-thread run failed"; }
  cmp "$TMP/a1.e8q" "$TMP/t2.e8q" || fail "the thread count changed the artifact"
  rm -rf "$TMP/a1.e8q.run"
  q 1 "$TMP/a1b.e8q" --run-dir "$TMP/a1.e8q.run" > "$TMP/log1b" 2>&1 || fail "rerun failed"
  cmp "$TMP/a1.e8q" "$TMP/a1b.e8q" || fail "rerun differs"
  # recorded values: perplexity, validation of every linear (5 layers x 4 groups)
  member "$TMP/a1.e8q" manifest.json > "$TMP/manifest.json"
  python3 - "$TMP/manifest.json" <<'PY' || fail "manifest values"
import json, sys
m = json.load(open(sys.argv[1]))
assert m["format"] == "e8q" and m["seed"] == 7 and m["options"]["bits"] == 2
lin = m["validation"]["linears"]
assert len(lin) == 20, len(lin)
assert all(0 < l["proxy_loss"] < 1 for l in lin), [l["proxy_loss"] for l in lin]
assert m["validation"]["max_fused_vs_dense_rel_err"] < 1e-3
ev = m["evaluation"]
assert ev["per_line"] == 40 and ev["tokens"] > 1000
assert 1.35651 < ev["mean_nll"] < 5.5, ev["mean_nll"]  # worse than FP (1.357), better than uniform (6.24)
assert 1.9 < m["size"]["linear_codes_bpw"] < 2.2, m["size"]
print("mean_nll", ev["mean_nll"], "ppl", ev["ppl"])
PY
  ;;
scalapack)
  # ScaLAPACK forced on 4 ranks: same model up to rounding in the factorisation
  q 1 "$TMP/ref.e8q" --scalapack never > "$TMP/log1" 2>&1 || { cat "$TMP/log1"; fail "reference run failed"; }
  q 4 "$TMP/sc.e8q" --scalapack always > "$TMP/log4" 2>&1 || { cat "$TMP/log4"; fail "ScaLAPACK run failed"; }
  # auto: only Hessians of n_pad >= 100 (down_proj, 176) go to ScaLAPACK
  q 2 "$TMP/auto.e8q" --scalapack auto --scalapack-min 100 > "$TMP/log2" 2>&1 || { cat "$TMP/log2"; fail "auto run failed"; }
  member "$TMP/ref.e8q" manifest.json > "$TMP/m1.json"
  member "$TMP/sc.e8q" manifest.json > "$TMP/m4.json"
  member "$TMP/auto.e8q" manifest.json > "$TMP/m2.json"
  python3 - "$TMP/m1.json" "$TMP/m4.json" "$TMP/m2.json" <<'PY' || fail "ScaLAPACK result differs"
import json, sys
a, b, c = (json.load(open(p)) for p in sys.argv[1:4])
assert b["options"]["scalapack"] == "always"
assert all(l["factorisation"].startswith("ScaLAPACK") for l in b["validation"]["linears"])
assert not any(l["factorisation"].startswith("ScaLAPACK") for l in a["validation"]["linears"])
assert all(l["factorisation"].startswith("ScaLAPACK") == (l["group"] == "mlp.down_proj") for l in c["validation"]["linears"])
for other in (b, c):
    for x, y in zip(a["validation"]["linears"], other["validation"]["linears"]):
        assert abs(x["proxy_loss"] - y["proxy_loss"]) <= 1e-3 * x["proxy_loss"] + 1e-9, (x, y)
    assert abs(a["evaluation"]["mean_nll"] - other["evaluation"]["mean_nll"]) < 1e-3
PY
  ;;
resume)
  # kill at every named stage boundary and mid-stage, rerun the same command: identical artifact
  q 1 "$TMP/ref.e8q" > "$TMP/ref.log" 2>&1 || { cat "$TMP/ref.log"; fail "reference run failed"; }
  for point in ${POINTS:-plan.done embed.done hessian.mid hessian.done quantize.mid quantize.done propagate.done commit.mid commit.done gather.mid gather.done validate.done pack.mid atomic.before_rename:7 journal.torn:5 hessian.done:3@1 quantize.mid:7@0 propagate.done:4@1}; do
    rm -rf "$TMP/r.e8q" "$TMP/r.e8q.run"
    # POINT[:n][@rank]: kill every rank (default) or only the given one
    local_rank=""; [[ $point == *@* ]] && local_rank=${point#*@}
    E8Q_FAULT=${point%@*} E8Q_FAULT_RANK=$local_rank q ${NP:-2} "$TMP/r.e8q" > "$TMP/kill.log" 2>&1 && fail "$point: the run was not killed"
    grep -q "fault injection: killing" "$TMP/kill.log" || { cat "$TMP/kill.log"; fail "$point: no fault message"; }
    [ -e "$TMP/r.e8q" ] && [ "$point" != "pack.done" ] && fail "$point: an artifact exists after the kill"
    q ${NP:-2} "$TMP/r.e8q" > "$TMP/resume.log" 2>&1 || { cat "$TMP/resume.log"; fail "$point: the rerun failed"; }
    cmp "$TMP/ref.e8q" "$TMP/r.e8q" || fail "$point: resumed artifact differs"
    # a finished run keeps no intermediate checkpoints, whatever the kill left behind
    left=$(cd "$TMP/r.e8q.run" && find acts hessians -mindepth 1; ls shards | grep -v '\.e8qs$'; ls -A .. | grep '^\.r\.e8q\.tmp\.')
    [ -z "$left" ] || fail "$point: the finished run kept intermediate files: $(echo $left)"
    echo "resume after $point: identical"
  done
  # killed on 2 ranks, resumed on 4 and on 1: the run directory does not depend on the rank count
  for np2 in 4 1; do
    rm -rf "$TMP/r.e8q" "$TMP/r.e8q.run"
    E8Q_FAULT=quantize.mid:6 q 2 "$TMP/r.e8q" > "$TMP/kill.log" 2>&1 && fail "not killed (rank change)"
    q $np2 "$TMP/r.e8q" > "$TMP/resume.log" 2>&1 || { cat "$TMP/resume.log"; fail "resume on $np2 ranks failed"; }
    cmp "$TMP/ref.e8q" "$TMP/r.e8q" || fail "killed on 2 ranks, resumed on $np2: artifact differs"
    echo "killed on 2 ranks, resumed on $np2: identical"
  done
  ;;
corrupt)
  # damaged checkpoints are detected by their checksum and recomputed
  q 1 "$TMP/ref.e8q" > "$TMP/ref.log" 2>&1 || fail "reference run failed"
  rm -rf "$TMP/r.e8q.run"
  E8Q_FAULT=quantize.mid:5 q 1 "$TMP/r.e8q" > "$TMP/kill.log" 2>&1 && fail "not killed"
  R=$TMP/r.e8q.run
  ls "$R"/shards/*.e8qs "$R"/hessians/*.ckpt >/dev/null || fail "expected checkpoints after the kill"
  f=$(ls "$R"/shards/*.e8qs | head -1); printf '\x00\x01' | dd of="$f" bs=1 seek=200 conv=notrunc 2>/dev/null
  h=$(ls "$R"/hessians/*.ckpt | head -1); truncate -s 100 "$h"
  q 1 "$TMP/r.e8q" > "$TMP/resume.log" 2>&1 || { cat "$TMP/resume.log"; fail "rerun failed"; }
  grep -q "does not match the sha256" "$TMP/resume.log" || fail "flipped shard not reported"
  grep -q "truncated" "$TMP/resume.log" || fail "truncated Hessian not reported"
  cmp "$TMP/ref.e8q" "$TMP/r.e8q" || fail "artifact after recomputation differs"
  ;;
refuse)
  # a rerun with other options or another model is refused, naming what differs
  q 1 "$TMP/r.e8q" > "$TMP/log" 2>&1 || fail "run failed"
  q 1 "$TMP/r.e8q" --tune-iters 3 > "$TMP/log2" 2>&1 && fail "other options accepted"
  grep -q "options.tune_iters: 3 now, 2 in" "$TMP/log2" || { cat "$TMP/log2"; fail "difference not named"; }
  mkdir -p "$TMP/other"; cp "$MODEL"/* "$TMP/other/"
  python3 -c "import sys; p=sys.argv[1]; d=open(p,'rb').read(); b=bytearray(d); b[-1]^=1; open(p,'wb').write(bytes(b))" "$TMP/other/model.safetensors"
  timeout 60 "$E8Q" quantize "${COMMON[@]/$MODEL/$TMP/other}" --bits 2 --out "$TMP/r.e8q" > "$TMP/log3" 2>&1 && fail "other model accepted"
  grep -q "fingerprint.files.model.safetensors" "$TMP/log3" || { cat "$TMP/log3"; fail "model difference not named"; }
  # a seed is an integer: 7.5 is refused (it used to become 7 and resume the --seed 7 run)
  q 1 "$TMP/r.e8q" --seed 7.5 > "$TMP/log4" 2>&1 && fail "--seed 7.5 accepted"
  grep -q "option --seed: '7.5' is not an integer" "$TMP/log4" || { cat "$TMP/log4"; fail "--seed 7.5 not refused by name"; }
  ;;
badinput)
  # calibration too short, unwritable output, disk full (injected ENOSPC) with a resuming rerun
  q 1 "$TMP/x.e8q" --devset 100000 > "$TMP/log" 2>&1 && fail "short calibration accepted"
  grep -q "too short" "$TMP/log" || { cat "$TMP/log"; fail "no 'too short' message"; }
  q 1 /proc/nonexistent-e8q/x.e8q --run-dir "$TMP/u.run" > "$TMP/log" 2>&1 && fail "unwritable output accepted"
  grep -q "/proc/nonexistent-e8q/x.e8q" "$TMP/log" || { cat "$TMP/log"; fail "output path not named"; }
  q 1 "$TMP/ref.e8q" > "$TMP/ref.log" 2>&1 || fail "reference run failed"
  # the disk fills while writing each kind of file (the n-th write of that kind fails)
  for kind in acts:30 hessian:6 part:3 shard:2 journal:40 validation artifact:5; do
    rm -rf "$TMP/f.e8q" "$TMP/f.e8q.run"
    E8Q_FAULT_ENOSPC=$kind q 1 "$TMP/f.e8q" > "$TMP/log" 2>&1 && fail "$kind: ENOSPC not reported"
    grep -q "No space left on device" "$TMP/log" || { cat "$TMP/log"; fail "$kind: no ENOSPC message"; }
    grep -q "rerun the same command" "$TMP/log" || { cat "$TMP/log"; fail "$kind: the message does not say what to do"; }
    [ -e "$TMP/f.e8q" ] && fail "$kind: an artifact exists after ENOSPC"
    ls -a "$TMP/f.e8q.run" "$TMP/f.e8q.run"/* 2>/dev/null | grep -q '\.tmp\.' && fail "$kind: a temporary file was left"
    # the artifact's own temporary lies beside the output, not in the run directory
    ls -A "$TMP" | grep -q '^\.f\.e8q\.tmp\.' && fail "$kind: the artifact's temporary was left"
    q 1 "$TMP/f.e8q" > "$TMP/log" 2>&1 || { cat "$TMP/log"; fail "$kind: rerun after ENOSPC failed"; }
    cmp "$TMP/ref.e8q" "$TMP/f.e8q" || fail "$kind: artifact after ENOSPC differs"
    echo "ENOSPC on $kind: reported, resumed, identical"
  done
  ;;
eval)
  # multi-rank evaluation of the artifact through the fused kernels: identical on 1, 2, 4 ranks,
  # equal to the manifest's evaluation (also through the fused kernels), within 1e-4 of the dense
  # decoded model
  q 2 "$TMP/a.e8q" > "$TMP/log" 2>&1 || { cat "$TMP/log"; fail "quantize failed"; }
  for np in 1 2 4; do
    timeout -k 5 120 "$MPIEXEC" -np $np "$E8Q" eval --artifact "$TMP/a.e8q" --text "$TEXT" --per-line 40 > "$TMP/e$np" 2> "$TMP/e$np.err" ||
      { cat "$TMP/e$np.err"; fail "eval on $np ranks failed"; }
  done
  timeout -k 5 120 "$E8Q" eval --artifact "$TMP/a.e8q" --dense --text "$TEXT" --per-line 40 > "$TMP/ed" 2>&1 || fail "dense eval failed"
  # a damaged artifact is refused before evaluating
  cp "$TMP/a.e8q" "$TMP/bad.e8q"
  printf '\x55' | dd of="$TMP/bad.e8q" bs=1 seek=5000 conv=notrunc 2>/dev/null
  timeout -k 5 120 "$MPIEXEC" -np 2 "$E8Q" eval --artifact "$TMP/bad.e8q" --text "$TEXT" --per-line 40 > "$TMP/eb" 2>&1 &&
    fail "a damaged artifact was evaluated"
  grep -q "fails verification" "$TMP/eb" || { cat "$TMP/eb"; fail "no verification message"; }
  # every rank that reports it gives the whole report (the damaged member named), not only rank 0
  grep "fails verification" "$TMP/eb" | grep -vE '\): [^ ]+: (sha256|[0-9]+ bytes|unreadable)' &&
    { cat "$TMP/eb"; fail "a rank reported the verification failure without the report"; }
  member "$TMP/a.e8q" manifest.json > "$TMP/m.json"
  python3 - "$TMP/e1" "$TMP/e2" "$TMP/e4" "$TMP/ed" "$TMP/m.json" <<'PY' || fail "evaluation results"
import json, sys
r = [json.loads(open(p).read().strip().splitlines()[-1]) for p in sys.argv[1:5]]
m = json.load(open(sys.argv[5]))
assert r[0]["linears"] == "fused kernels" and r[3]["linears"] == "dense decode"
assert r[0]["sum_nll"] == r[1]["sum_nll"] == r[2]["sum_nll"], [x["sum_nll"] for x in r]
assert r[0]["tokens"] == r[3]["tokens"] == m["evaluation"]["tokens"]
assert abs(r[0]["mean_nll"] - r[3]["mean_nll"]) < 1e-4, (r[0]["mean_nll"], r[3]["mean_nll"])
assert abs(r[0]["mean_nll"] - m["evaluation"]["mean_nll"]) < 1e-12  # recorded through the fused kernels
assert m["evaluation"]["weights"] == "quantized linears through the fused kernels"
print("fused", r[0]["mean_nll"], "dense", r[3]["mean_nll"])
PY
  ;;
ablation)
  # the noe8 and rtn ablations run end to end (dense weights in the artifact) and rank as expected
  for m in e8p noe8 rtn; do
    q 1 "$TMP/$m.e8q" --method $m > "$TMP/$m.log" 2>&1 || { cat "$TMP/$m.log"; fail "$m run failed"; }
    member "$TMP/$m.e8q" manifest.json > "$TMP/$m.json"
    member "$TMP/$m.e8q" config.json > "$TMP/$m.config"
  done
  python3 - "$TMP" <<'PY' || fail "ablation results"
import json, sys
d = sys.argv[1]
nll = {m: json.load(open(f"{d}/{m}.json"))["evaluation"]["mean_nll"] for m in ("e8p", "noe8", "rtn")}
cfg = {m: json.load(open(f"{d}/{m}.config"))["quantization_config"] for m in ("e8p", "noe8", "rtn")}
assert cfg["rtn"]["dense_ablation"] and cfg["noe8"]["method"] == "noe8" and "dense_ablation" not in cfg["e8p"]
assert nll["e8p"] < nll["rtn"], nll
print(nll)
PY
  ;;
ids)
  # a model directory without a tokenizer: calibration and held-out text as token id files
  mkdir -p "$TMP/m"; cp "$MODEL/config.json" "$MODEL/model.safetensors" "$TMP/m/"
  python3 - "$TMP" <<'PY'
import random, struct, sys
r = random.Random(5)
def ids(n, line):  # lines of `line` ids, each starting with BOS (1)
    out = []
    while len(out) < n:
        out += [1] + [r.randrange(3, 512) for _ in range(line - 1)]
    return out[:n]
for name, n, line in (("calib", 2000, 50), ("eval", 400, 20)):
    v = ids(n, line)
    open("%s/%s.ids" % (sys.argv[1], name), "wb").write(struct.pack("<%dI" % len(v), *v))
PY
  timeout -k 5 120 "$MPIEXEC" -np 2 "$E8Q" quantize --model "$TMP/m" --calib "$TMP/calib.ids" --eval-text "$TMP/eval.ids" \
    --eval-lines 10 --devset 24 --ctx 64 --tune-iters 2 --bits 2 --out "$TMP/i.e8q" > "$TMP/log" 2>&1 ||
    { cat "$TMP/log"; fail "quantize with id files and no tokenizer failed"; }
  member "$TMP/i.e8q" manifest.json > "$TMP/manifest.json"
  python3 - "$TMP/manifest.json" <<'PY' || fail "the evaluation on the id file is not recorded"
import json, sys
ev = json.load(open(sys.argv[1]))["evaluation"]
assert ev["tokens"] == 10 * 19 and ev["mean_nll"] > 0, ev
PY
  # held-out text (not ids) with no tokenizer: refused before any work, naming the option
  timeout -k 5 120 "$E8Q" quantize --model "$TMP/m" --calib "$TMP/calib.ids" --eval-text "$TEXT" --devset 24 --ctx 64 \
    --bits 2 --out "$TMP/t.e8q" > "$TMP/log" 2>&1 && fail "a text --eval-text without a tokenizer was accepted"
  grep -q -- "--eval-text $TEXT is text but no tokenizer" "$TMP/log" || { cat "$TMP/log"; fail "no message naming --eval-text"; }
  [ -e "$TMP/t.e8q.run" ] && fail "the refused run wrote a run directory"
  # held-out ids outside the vocabulary: refused before any work, naming the file
  python3 -c "import struct,sys; open(sys.argv[1],'wb').write(struct.pack('<4I',1,5,600,7))" "$TMP/bad.ids"
  timeout -k 5 120 "$E8Q" quantize --model "$TMP/m" --calib "$TMP/calib.ids" --eval-text "$TMP/bad.ids" --devset 24 \
    --ctx 64 --bits 2 --out "$TMP/b.e8q" > "$TMP/log" 2>&1 && fail "held-out ids outside the vocabulary were accepted"
  grep -q "$TMP/bad.ids: token id 600 at index 2 is outside" "$TMP/log" || { cat "$TMP/log"; fail "bad id file not named"; }
  [ -e "$TMP/b.e8q.run" ] && fail "the refused run wrote a run directory"
  # e8q eval --per-line on such a file names it too
  timeout -k 5 120 "$E8Q" eval --artifact "$TMP/i.e8q" --text "$TMP/bad.ids" --per-line 2 > "$TMP/log" 2>&1 &&
    fail "eval accepted ids outside the vocabulary"
  grep -q "$TMP/bad.ids: token id 600 at index 2 is outside" "$TMP/log" || { cat "$TMP/log"; fail "eval: bad id file not named"; }
  ;;
demo)
  # the built-in demo model through the whole pipeline with default settings (but --ft none: fine-tuning
  # takes minutes there, the ft case tests it), on 2 ranks
  "$E8Q" demo --out "$TMP/demo" > "$TMP/demo.log" 2>&1 || { cat "$TMP/demo.log"; fail "demo failed"; }
  timeout -k 5 200 "$MPIEXEC" -np 2 "$E8Q" quantize --model "$TMP/demo" --bits 2 --calib "$TMP/demo/calib.txt" \
    --eval-text "$TMP/demo/eval.txt" --ft none --out "$TMP/demo.e8q" > "$TMP/q.log" 2>&1 || { cat "$TMP/q.log"; fail "quantize failed"; }
  grep -q "devset 128 x ctx" "$TMP/q.log" || { cat "$TMP/q.log"; fail "defaults not printed"; }
  "$E8Q" inspect "$TMP/demo.e8q" --verify > "$TMP/inspect" 2>&1 || { cat "$TMP/inspect"; fail "inspect --verify"; }
  grep -q "16 linears" "$TMP/inspect" || { cat "$TMP/inspect"; fail "validation record"; }
  ;;
demo_default)
  # `e8q quantize` with no options at all: the built-in DEMO model, written into the run directory,
  # with the demo defaults; rank count, a plain rerun and a killed-then-resumed run give the same
  # bytes; the artifact verifies, evaluates and generates; other options on the same run directory
  # are refused; an unrelated --run-dir is never written into.
  mkdir -p "$TMP/one" "$TMP/two" "$TMP/kill" "$TMP/other"
  dq() { # dq DIR NP [options...]: quantize with the working directory DIR
    local dir=$1 np=$2; shift 2
    (cd "$dir" && timeout -k 5 120 "$MPIEXEC" -np "$np" "$E8Q" quantize "$@")
  }
  dq "$TMP/one" 1 > "$TMP/one.log" 2>&1 || { cat "$TMP/one.log"; fail "demo quantize on 1 rank failed"; }
  for want in "running on the built-in DEMO model" "RANDOM weights: it is NOT a trained model" \
              "For a real model: e8q quantize --model HF_DIR" "devset 64 x ctx 256" "2-bit e8p, 1 rank (DEMO model" \
              "held-out mean NLL" "DEMO done"; do
    grep -qF "$want" "$TMP/one.log" || { cat "$TMP/one.log"; fail "demo output lacks '$want'"; }
  done
  A=$TMP/one/demo.e8q; M=$TMP/one/demo.e8q.run/demo-model
  [ -f "$A" ] && [ -f "$M/config.json" ] && [ -f "$M/calib.txt" ] && [ -f "$M/eval.txt" ] || fail "demo files missing"
  "$E8Q" inspect "$A" --verify > "$TMP/inspect" 2>&1 || { cat "$TMP/inspect"; fail "inspect --verify"; }
  grep -q "verify: *OK" "$TMP/inspect" || fail "inspect did not verify"
  grep -q "16 linears" "$TMP/inspect" || { cat "$TMP/inspect"; fail "validation record"; }
  member "$A" config.json | grep -qE '"bits":[[:space:]]*2,' || fail "demo artifact is not 2-bit"
  timeout -k 5 120 "$MPIEXEC" -np 2 "$E8Q" eval --artifact "$A" --text "$M/eval.txt" --per-line 40 > "$TMP/eval" 2> "$TMP/eval.err" ||
    { cat "$TMP/eval.err"; fail "eval --artifact failed"; }
  member "$A" manifest.json > "$TMP/m.json"
  python3 - "$TMP/eval" "$TMP/m.json" <<'PY' || fail "demo evaluation"
import json, math, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
m = json.load(open(sys.argv[2]))
assert r["linears"] == "fused kernels" and r["lines"] == 40 and r["tokens"] > 1000, r
assert math.isfinite(r["mean_nll"]) and 0 < r["mean_nll"] < 20, r
ev = m["evaluation"]
assert ev["per_line"] == 40 and ev["tokens"] == r["tokens"], ev
assert abs(ev["mean_nll"] - r["mean_nll"]) < 1e-4, (ev["mean_nll"], r["mean_nll"])
assert m["options"]["devset"] == 64 and m["options"]["ctx"] == 256 and m["options"]["bits"] == 2, m["options"]
print("demo mean_nll", r["mean_nll"])
PY
  "$E8Q" generate --artifact "$A" --ids --tokens 20 > "$TMP/gen" 2> "$TMP/gen.err" || { cat "$TMP/gen.err"; fail "generate failed"; }
  grep -q "tokens/s" "$TMP/gen.err" || fail "generate printed no tokens/s"
  # a rerun of the same command resumes (everything is done) to the same bytes
  cp "$A" "$TMP/first.e8q"
  dq "$TMP/one" 1 > "$TMP/rerun.log" 2>&1 || { cat "$TMP/rerun.log"; fail "demo rerun failed"; }
  grep -q "resuming the run" "$TMP/rerun.log" || { cat "$TMP/rerun.log"; fail "rerun did not resume"; }
  cmp "$TMP/first.e8q" "$A" || fail "rerun changed the artifact"
  # 2 ranks: the same bytes
  dq "$TMP/two" 2 > "$TMP/two.log" 2>&1 || { cat "$TMP/two.log"; fail "demo quantize on 2 ranks failed"; }
  cmp "$TMP/first.e8q" "$TMP/two/demo.e8q" || fail "1 and 2 ranks differ"
  # killed mid-run on 2 ranks, rerun: resumes to the same bytes
  E8Q_FAULT=quantize.mid:6 dq "$TMP/kill" 2 > "$TMP/kill.log" 2>&1 && fail "the demo run was not killed"
  [ -e "$TMP/kill/demo.e8q" ] && fail "an artifact exists after the kill"
  dq "$TMP/kill" 2 > "$TMP/resume.log" 2>&1 || { cat "$TMP/resume.log"; fail "demo resume failed"; }
  grep -q "resuming the run" "$TMP/resume.log" || { cat "$TMP/resume.log"; fail "the killed demo run did not resume"; }
  cmp "$TMP/first.e8q" "$TMP/kill/demo.e8q" || fail "resumed demo artifact differs"
  # other options on the same run directory: refused, naming the difference
  dq "$TMP/one" 1 --bits 3 > "$TMP/refuse.log" 2>&1 && fail "other options accepted"
  grep -q "options.bits: 3 now, 2 in" "$TMP/refuse.log" || { cat "$TMP/refuse.log"; fail "difference not named"; }
  # an unrelated non-empty --run-dir: refused before the demo model is written into it
  echo keep > "$TMP/other/notes.txt"
  dq "$TMP" 1 --run-dir "$TMP/other" --out "$TMP/o.e8q" > "$TMP/other.log" 2>&1 && fail "unrelated run directory accepted"
  grep -q "not an e8q run directory" "$TMP/other.log" || { cat "$TMP/other.log"; fail "no refusal message"; }
  [ -e "$TMP/other/demo-model" ] && fail "the demo model was written into an unrelated directory"
  # the explicit path is unchanged: --model still requires --calib
  "$E8Q" quantize --model "$M" --out "$TMP/x.e8q" --bits 2 > "$TMP/calib.log" 2>&1 && fail "--model without --calib accepted"
  grep -q "\-\-calib FILE is required" "$TMP/calib.log" || { cat "$TMP/calib.log"; fail "no --calib message"; }
  ;;
ft)
  # block fine-tuning (--ft block, 2 epochs per round): better 40-line NLL than --ft none at 2 bits;
  # the same bytes on 1, 2 and 4 ranks; killed mid-epoch (ft.step) or after an epoch's checkpoint
  # (ft.epoch) and rerun: the same bytes; held-out MSE before/after per block and round recorded
  FT=(--ft block --ft-epochs 2)
  q 1 "$TMP/none.e8q" > "$TMP/none.log" 2>&1 || { cat "$TMP/none.log"; fail "--ft none run failed"; }
  q 1 "$TMP/b1.e8q" "${FT[@]}" --log-json "$TMP/events.jsonl" > "$TMP/b1.log" 2>&1 || { cat "$TMP/b1.log"; fail "1-rank --ft block run failed"; }
  grep -q "ft block: epochs 2, lr 5e-05, susv-lr 0.0005, batch 8, held-out 8 of 24" "$TMP/b1.log" || { cat "$TMP/b1.log"; fail "FT options not printed"; }
  grep -q "layer 4 mlp.upgate_proj: fine-tuning epoch 2/2: train MSE" "$TMP/b1.log" || { cat "$TMP/b1.log"; fail "no per-epoch progress line"; }
  q 2 "$TMP/b2.e8q" "${FT[@]}" > "$TMP/b2.log" 2>&1 || { cat "$TMP/b2.log"; fail "2-rank --ft block run failed"; }
  q 4 "$TMP/b4.e8q" "${FT[@]}" > "$TMP/b4.log" 2>&1 || { cat "$TMP/b4.log"; fail "4-rank --ft block run failed"; }
  cmp "$TMP/b1.e8q" "$TMP/b2.e8q" || fail "--ft block: 1 and 2 ranks differ"
  cmp "$TMP/b1.e8q" "$TMP/b4.e8q" || fail "--ft block: 1 and 4 ranks differ"
  for point in ft.step:3 ft.epoch:2 ft.step:14@1; do
    rm -rf "$TMP/r.e8q" "$TMP/r.e8q.run"
    local_rank=""; [[ $point == *@* ]] && local_rank=${point#*@}
    E8Q_FAULT=${point%@*} E8Q_FAULT_RANK=$local_rank q 2 "$TMP/r.e8q" "${FT[@]}" > "$TMP/kill.log" 2>&1 && fail "$point: the run was not killed"
    grep -q "fault injection: killing" "$TMP/kill.log" || { cat "$TMP/kill.log"; fail "$point: no fault message"; }
    q 2 "$TMP/r.e8q" "${FT[@]}" > "$TMP/resume.log" 2>&1 || { cat "$TMP/resume.log"; fail "$point: the rerun failed"; }
    cmp "$TMP/b1.e8q" "$TMP/r.e8q" || fail "$point: resumed artifact differs"
    left=$(cd "$TMP/r.e8q.run" && ls shards | grep -v '\.e8qs$')
    [ -z "$left" ] || fail "$point: the finished run kept fine-tuning checkpoints: $(echo $left)"
    echo "resume after $point: identical"
  done
  # killed after an epoch on 2 ranks with the Hessians on disk, resumed on 1 rank: the targets are
  # recomputed from the original block
  rm -rf "$TMP/r.e8q" "$TMP/r.e8q.run"
  E8Q_FAULT=ft.epoch:8 q 2 "$TMP/r.e8q" "${FT[@]}" > "$TMP/kill.log" 2>&1 && fail "ft.epoch:8: not killed"
  q 1 "$TMP/r.e8q" "${FT[@]}" > "$TMP/resume.log" 2>&1 || { cat "$TMP/resume.log"; fail "ft.epoch:8 rerun on 1 rank failed"; }
  cmp "$TMP/b1.e8q" "$TMP/r.e8q" || fail "killed at ft.epoch:8 on 2 ranks, resumed on 1: artifact differs"
  # other fine-tuning options on the same run directory: refused
  q 1 "$TMP/b1.e8q" --ft block --ft-epochs 3 > "$TMP/refuse.log" 2>&1 && fail "other --ft-epochs accepted"
  grep -q "options.ft_epochs: 3 now, 2 in" "$TMP/refuse.log" || { cat "$TMP/refuse.log"; fail "difference not named"; }
  member "$TMP/none.e8q" manifest.json > "$TMP/mn.json"
  member "$TMP/b1.e8q" manifest.json > "$TMP/mb.json"
  python3 - "$TMP/mn.json" "$TMP/mb.json" "$TMP/events.jsonl" <<'PY' || fail "fine-tuning results"
import json, sys
n, b = (json.load(open(p)) for p in sys.argv[1:3])
o = b["options"]
assert o["ft"] == "block" and o["ft_epochs"] == 2 and o["ft_valid"] == 8 and o["ft_batch"] == 8, o
assert o["ft_lr"] == 5e-5 and o["ft_susv_lr"] == 5e-4 and n["options"]["ft"] == "none", o
nn, nb = n["evaluation"]["mean_nll"], b["evaluation"]["mean_nll"]
assert nb < nn, (nb, nn)
rounds = [l for l in b["validation"]["linears"] if "fine_tuning" in l]
assert len(rounds) == 15 and all(l["group"] != "mlp.down_proj" for l in rounds), len(rounds)
for l in rounds:
    f = l["fine_tuning"]
    assert 0 < f["held_out_mse_after"] <= f["held_out_mse_before"], l
assert not any("fine_tuning" in l for l in n["validation"]["linears"])
ev = [json.loads(l) for l in open(sys.argv[3])]
assert sum(1 for e in ev if e["event"] == "ft_epoch") == 30
assert sum(1 for e in ev if e["event"] == "ft_round") == 15
st = [e for e in ev if e["event"] == "done"][0]["stage_s"]
assert st["block-ft"] > 0 and st["e2e"] == 0 and st["e2e-targets"] == 0, st
print("NLL --ft none", nn, "--ft block", nb)
PY
  ;;
e2e)
  # end-to-end fine-tuning: --ft all (block rounds + e2e) gives a lower 40-line NLL than --ft block
  # at 2 bits; --ft e2e gives the same bytes on 1, 2 and 4 ranks; killed mid-epoch (e2e.step) or
  # after an epoch's checkpoint (e2e.epoch) and rerun (also on another rank count): the same bytes;
  # the manifest records the held-out CE before and after
  E2E=(--ft e2e --e2e-epochs 2)
  q 2 "$TMP/block.e8q" --ft block --ft-epochs 1 > "$TMP/block.log" 2>&1 || { cat "$TMP/block.log"; fail "--ft block run failed"; }
  q 2 "$TMP/all.e8q" --ft all --ft-epochs 1 --e2e-epochs 2 > "$TMP/all.log" 2>&1 || { cat "$TMP/all.log"; fail "--ft all run failed"; }
  q 1 "$TMP/e1.e8q" "${E2E[@]}" --log-json "$TMP/events.jsonl" > "$TMP/e1.log" 2>&1 || { cat "$TMP/e1.log"; fail "1-rank --ft e2e run failed"; }
  grep -q "ft e2e: .* e2e-epochs 2, e2e-topk 64" "$TMP/e1.log" || { cat "$TMP/e1.log"; fail "e2e options not printed"; }
  grep -q "end-to-end fine-tuning epoch 2/2: train CE .*, held-out CE" "$TMP/e1.log" || { cat "$TMP/e1.log"; fail "no per-epoch progress line"; }
  q 2 "$TMP/e2.e8q" "${E2E[@]}" > "$TMP/e2.log" 2>&1 || { cat "$TMP/e2.log"; fail "2-rank --ft e2e run failed"; }
  q 4 "$TMP/e4.e8q" "${E2E[@]}" > "$TMP/e4.log" 2>&1 || { cat "$TMP/e4.log"; fail "4-rank --ft e2e run failed"; }
  cmp "$TMP/e1.e8q" "$TMP/e2.e8q" || fail "--ft e2e: 1 and 2 ranks differ"
  cmp "$TMP/e1.e8q" "$TMP/e4.e8q" || fail "--ft e2e: 1 and 4 ranks differ"
  left=$(cd "$TMP/e1.e8q.run" && ls e2e)
  [ "$left" = "state.ckpt" ] || fail "the finished run kept end-to-end intermediates: $(echo $left)"
  for point in e2e.step:3:2 e2e.epoch:1:2 e2e.step:2@1:2 e2e.epoch:1:4; do
    rm -rf "$TMP/r.e8q" "$TMP/r.e8q.run"
    p=${point%:*}; np2=${point##*:}; local_rank=""; [[ $p == *@* ]] && local_rank=${p#*@}
    E8Q_FAULT=${p%@*} E8Q_FAULT_RANK=$local_rank q 2 "$TMP/r.e8q" "${E2E[@]}" > "$TMP/kill.log" 2>&1 && fail "$p: the run was not killed"
    grep -q "fault injection: killing" "$TMP/kill.log" || { cat "$TMP/kill.log"; fail "$p: no fault message"; }
    q $np2 "$TMP/r.e8q" "${E2E[@]}" > "$TMP/resume.log" 2>&1 || { cat "$TMP/resume.log"; fail "$p: the rerun failed"; }
    cmp "$TMP/e1.e8q" "$TMP/r.e8q" || fail "$p: resumed artifact differs"
    echo "killed at $p on 2 ranks, resumed on $np2: identical"
  done
  member "$TMP/block.e8q" manifest.json > "$TMP/mb.json"
  member "$TMP/all.e8q" manifest.json > "$TMP/ma.json"
  member "$TMP/e1.e8q" manifest.json > "$TMP/me.json"
  python3 - "$TMP/mb.json" "$TMP/ma.json" "$TMP/me.json" "$TMP/events.jsonl" <<'PY' || fail "end-to-end fine-tuning results"
import json, sys
b, a, e = (json.load(open(p)) for p in sys.argv[1:4])
assert e["options"]["ft"] == "e2e" and e["options"]["e2e_epochs"] == 2 and e["options"]["e2e_topk"] == 64, e["options"]
nb, na, ne = (m["evaluation"]["mean_nll"] for m in (b, a, e))
assert na < nb, (na, nb)
assert "end_to_end_fine_tuning" not in b["validation"]
for m in (a, e):
    f = m["validation"]["end_to_end_fine_tuning"]
    assert 0 < f["held_out_ce_after"] <= f["held_out_ce_before"], f
    assert f["epochs"] == 2 and f["topk"] == 64, f
assert not any("fine_tuning" in l for l in e["validation"]["linears"])  # --ft e2e: no block rounds
ev = [json.loads(l) for l in open(sys.argv[4])]
assert sum(1 for x in ev if x["event"] == "e2e_epoch") == 2
assert sum(1 for x in ev if x["event"] == "e2e_done") == 1
steps = [x for x in ev if x["event"] == "step"]
assert steps[-1]["done"] == steps[-1]["total"] == len(steps), steps[-1]
assert [x["stage"] for x in steps][-4:] == ["e2e", "gather", "validate", "pack"]
print("NLL --ft block", nb, "--ft all", na, "--ft e2e", ne)
PY
  ;;
inputs)
  # every input and output is checked before plan.json is written; reporting-only options
  # (--eval-text, --eval-lines, --log-json) are not part of the run's identity
  BASE=(--model "$MODEL" --calib-skip 1000 --devset 24 --ctx 64 --tune-iters 2 --seed 7 --ft none --bits 2)
  qi() { timeout -k 5 120 "$MPIEXEC" -np 1 "$E8Q" quantize "${BASE[@]}" "$@"; }
  noplan() { [ -e "$1/plan.json" ] && fail "$2: plan.json was written"; return 0; }
  printf 'good line\n\xff\xfe bad bytes\n' > "$TMP/bad.txt"
  printf '\n   \n\t\n' > "$TMP/blank.txt"
  : > "$TMP/empty.txt"
  head -c 300 "$TEXT" > "$TMP/short.txt"
  # bad --eval-text: refused before plan.json, naming the option and the file
  qi --calib "$TEXT" --eval-text "$TMP/bad.txt" --out "$TMP/a.e8q" > "$TMP/log" 2>&1 && fail "non-UTF-8 --eval-text accepted"
  grep -q -- "--eval-text $TMP/bad.txt" "$TMP/log" && grep -q "UTF-8" "$TMP/log" || { cat "$TMP/log"; fail "bad --eval-text not named"; }
  noplan "$TMP/a.e8q.run" "non-UTF-8 --eval-text"
  qi --calib "$TEXT" --eval-text "$TMP/blank.txt" --out "$TMP/a.e8q" > "$TMP/log" 2>&1 && fail "blank --eval-text accepted"
  grep -q -- "--eval-text $TMP/blank.txt" "$TMP/log" || { cat "$TMP/log"; fail "blank --eval-text not named"; }
  noplan "$TMP/a.e8q.run" "blank --eval-text"
  # bad --calib: missing, a directory, empty, too short, skipped past its end: before plan.json
  for c in "$TMP/missing.txt" "$TMP" "$TMP/empty.txt" "$TMP/short.txt"; do
    qi --calib "$c" --out "$TMP/c.e8q" > "$TMP/log" 2>&1 && fail "--calib $c accepted"
    grep -q -- "--calib $c" "$TMP/log" || { cat "$TMP/log"; fail "--calib $c: option and file not named"; }
    grep -q "to hash it" "$TMP/log" && { cat "$TMP/log"; fail "--calib $c: the hashing message"; }
    noplan "$TMP/c.e8q.run" "--calib $c"
  done
  timeout -k 5 120 "$MPIEXEC" -np 1 "$E8Q" quantize --model "$MODEL" --calib "$TEXT" --calib-skip 100000 --devset 24 \
    --ctx 64 --ft none --bits 2 --out "$TMP/c.e8q" > "$TMP/log" 2>&1 && fail "--calib-skip past the end accepted"
  grep -q "too short" "$TMP/log" || { cat "$TMP/log"; fail "--calib-skip: no 'too short'"; }
  noplan "$TMP/c.e8q.run" "--calib-skip past the end"
  qi --calib "$TEXT" --eval-text "$TMP/missing.txt" --out "$TMP/c.e8q" > "$TMP/log" 2>&1 && fail "missing --eval-text accepted"
  grep -q -- "--eval-text $TMP/missing.txt" "$TMP/log" || { cat "$TMP/log"; fail "missing --eval-text not named"; }
  noplan "$TMP/c.e8q.run" "missing --eval-text"
  # --out naming a directory: refused before plan.json, naming --out
  mkdir -p "$TMP/dir.e8q"
  qi --calib "$TEXT" --out "$TMP/dir.e8q" > "$TMP/log" 2>&1 && fail "--out naming a directory accepted"
  grep -q -- "--out $TMP/dir.e8q is a directory" "$TMP/log" || { cat "$TMP/log"; fail "--out directory not named"; }
  noplan "$TMP/dir.e8q.run" "--out a directory"
  # the reference run, then reruns on its run directory with other reporting options: resumed,
  # validation recomputed, same model bytes
  qi --calib "$TEXT" --eval-text "$TEXT" --eval-lines 40 --out "$TMP/a.e8q" > "$TMP/log" 2>&1 || { cat "$TMP/log"; fail "reference run failed"; }
  head -n 20 "$TEXT" > "$TMP/eval2.txt"
  qi --calib "$TEXT" --eval-text "$TMP/eval2.txt" --eval-lines 10 --log-json "$TMP/ev.jsonl" --out "$TMP/b.e8q" \
    --run-dir "$TMP/a.e8q.run" > "$TMP/log" 2>&1 || { cat "$TMP/log"; fail "rerun with another --eval-text refused"; }
  grep -q "resuming the run" "$TMP/log" || { cat "$TMP/log"; fail "rerun did not resume"; }
  qi --calib "$TEXT" --out "$TMP/c.e8q" --run-dir "$TMP/a.e8q.run" > "$TMP/log" 2>&1 || { cat "$TMP/log"; fail "rerun without --eval-text refused"; }
  for x in a b c; do member "$TMP/$x.e8q" manifest.json > "$TMP/m$x.json"; member "$TMP/$x.e8q" model.safetensors > "$TMP/s$x"; done
  cmp "$TMP/sa" "$TMP/sb" && cmp "$TMP/sa" "$TMP/sc" || fail "the model differs after changing reporting options"
  python3 - "$TMP/ma.json" "$TMP/mb.json" "$TMP/mc.json" "$TMP/eval2.txt" <<'PY' || fail "evaluation records"
import hashlib, json, sys
a, b, c = (json.load(open(p)) for p in sys.argv[1:4])
h = hashlib.sha256(open(sys.argv[4], "rb").read()).hexdigest()
assert a["evaluation"]["per_line"] == 40, a["evaluation"]
assert b["evaluation"]["text_sha256"] == h and b["evaluation"]["per_line"] == 10, b["evaluation"]
assert c["evaluation"] == "no --eval-text given", c["evaluation"]
for m in (a, b, c):
    assert "eval_text_sha256" not in m["options"] and "eval_lines" not in m["options"], m["options"]
PY
  ;;
lock)
  # two runs on one run directory: the second is refused naming the first's host and pid, the
  # first completes and its artifact equals a solo run's
  q 1 "$TMP/solo.e8q" > "$TMP/solo.log" 2>&1 || { cat "$TMP/solo.log"; fail "solo run failed"; }
  q 1 "$TMP/a.e8q" --run-dir "$TMP/R" > "$TMP/a.log" 2>&1 &
  A=$!
  for i in $(seq 1 2000); do [ -s "$TMP/R/lock" ] && break; sleep 0.01; done
  [ -s "$TMP/R/lock" ] || fail "no lock file $TMP/R/lock"
  read -r host pid < "$TMP/R/lock"
  kill -STOP "$pid" # the first run holds the lock while the second tries (however fast the machine)
  q 1 "$TMP/b.e8q" --bits 4 --run-dir "$TMP/R" > "$TMP/b.log" 2>&1 && { kill -CONT "$pid"; fail "a second run on the same --run-dir was accepted"; }
  kill -CONT "$pid"
  wait $A || { cat "$TMP/a.log"; fail "the first run failed"; }
  grep -q "pid $pid" "$TMP/b.log" && grep -q "$host" "$TMP/b.log" || { cat "$TMP/b.log" "$TMP/R/lock"; fail "the refusal does not name the first run's host and pid"; }
  grep -q "another --run-dir" "$TMP/b.log" || { cat "$TMP/b.log"; fail "the refusal does not say what to do"; }
  cmp "$TMP/solo.e8q" "$TMP/a.e8q" || fail "the locked run's artifact differs from a solo run's"
  [ -e "$TMP/b.e8q" ] && fail "the refused run wrote an artifact"
  # the lock goes with its run: a rerun afterwards resumes
  q 1 "$TMP/c.e8q" --run-dir "$TMP/R" > "$TMP/c.log" 2>&1 || { cat "$TMP/c.log"; fail "rerun after the first run failed"; }
  cmp "$TMP/solo.e8q" "$TMP/c.e8q" || fail "rerun differs"
  ;;
source)
  # the source model changing under a run: truncated (SIGBUS on the mapped tensors) or
  # overwritten with other bytes of the same size: the run stops naming the file, commits nothing
  # read from the changed bytes, a rerun on the changed file is refused naming it, and once the
  # file is restored the rerun resumes to the artifact of an undisturbed run
  cp -r "$MODEL" "$TMP/m"
  ST="$TMP/m/model.safetensors"
  cp "$ST" "$TMP/orig.safetensors"
  q 1 "$TMP/solo.e8q" --model "$TMP/m" > "$TMP/solo.log" 2>&1 || { cat "$TMP/solo.log"; fail "solo run failed"; }
  disturb() { # disturb NAME CMD...: run on R_NAME, stopped after block 0 while CMD changes the model
    local name=$1; shift
    q 1 "$TMP/$name.e8q" --model "$TMP/m" --run-dir "$TMP/R_$name" > "$TMP/$name.log" 2>&1 &
    local A=$!
    for i in $(seq 1 3000); do [ -e "$TMP/R_$name/shards/0.e8qs" ] && [ -s "$TMP/R_$name/lock" ] && break; sleep 0.01; done
    local host pid; read -r host pid < "$TMP/R_$name/lock"
    kill -STOP "$pid"; "$@"; kill -CONT "$pid"
    wait $A && fail "$name: the run went on after the source model changed"
    grep -q "$ST" "$TMP/$name.log" || { cat "$TMP/$name.log"; fail "$name: the changed file is not named"; }
    [ -e "$TMP/$name.e8q" ] && fail "$name: an artifact was written"
    return 0
  }
  disturb trunc truncate -s 4096 "$ST"
  grep -q "changed" "$TMP/trunc.log" || { cat "$TMP/trunc.log"; fail "trunc: no clear message"; }
  grep -q "SIGBUS\|Bus error" "$TMP/trunc.log" && ! grep -q "e8q: " "$TMP/trunc.log" && fail "trunc: a bare SIGBUS"
  cp "$TMP/orig.safetensors" "$ST"
  q 1 "$TMP/trunc.e8q" --model "$TMP/m" --run-dir "$TMP/R_trunc" > "$TMP/log" 2>&1 || { cat "$TMP/log"; fail "trunc: rerun after restoring failed"; }
  cmp "$TMP/solo.e8q" "$TMP/trunc.e8q" || fail "trunc: resumed artifact differs"
  flip() { python3 -c "import os,sys; f=open(sys.argv[1],'r+b'); n=os.path.getsize(sys.argv[1]); f.seek(n-8192); b=f.read(4096); f.seek(n-8192); f.write(bytes(x^0x55 for x in b))" "$ST"; }
  disturb flip flip
  grep -q "changed" "$TMP/flip.log" || { cat "$TMP/flip.log"; fail "flip: no clear message"; }
  q 1 "$TMP/flip.e8q" --model "$TMP/m" --run-dir "$TMP/R_flip" > "$TMP/log" 2>&1 && fail "flip: rerun on the changed file accepted"
  grep -q "fingerprint.files.model.safetensors" "$TMP/log" && grep -q "restore the original file" "$TMP/log" ||
    { cat "$TMP/log"; fail "flip: the refusal does not name the file and say what to do"; }
  cp "$TMP/orig.safetensors" "$ST"
  q 1 "$TMP/flip.e8q" --model "$TMP/m" --run-dir "$TMP/R_flip" > "$TMP/log" 2>&1 || { cat "$TMP/log"; fail "flip: rerun after restoring failed"; }
  cmp "$TMP/solo.e8q" "$TMP/flip.e8q" || fail "flip: resumed artifact differs"
  ;;
head)
  # --head q8: the artifact stores the (tied) embedding at 8 bits (an I8 tensor and its F32 scales),
  # is smaller, and evaluates and generates with exactly the bits of the default artifact rounded
  # at load (eval/generate --head q8); a pipelined eval reads the 8-bit head as the others do
  q 1 "$TMP/a.e8q" > "$TMP/log" 2>&1 || { cat "$TMP/log"; fail "default quantize failed"; }
  q 1 "$TMP/h.e8q" --head q8 > "$TMP/log" 2>&1 || { cat "$TMP/log"; fail "--head q8 quantize failed"; }
  "$E8Q" inspect "$TMP/h.e8q" --verify > "$TMP/inspect" 2>&1 || { cat "$TMP/inspect"; fail "inspect --verify"; }
  ev() { timeout -k 5 120 "$@" --text "$TEXT" --per-line 40 2> "$TMP/ev.err" | tail -1 || { cat "$TMP/ev.err"; fail "eval: $*"; }; }
  ev "$E8Q" eval --artifact "$TMP/h.e8q" > "$TMP/eh"
  ev "$E8Q" eval --artifact "$TMP/a.e8q" --head q8 > "$TMP/ea"
  ev "$E8Q" eval --artifact "$TMP/a.e8q" > "$TMP/e0"
  ev "$MPIEXEC" -np 2 "$E8Q" eval --artifact "$TMP/h.e8q" --pipeline 2 > "$TMP/ep"
  ev "$MPIEXEC" -np 2 "$E8Q" eval --artifact "$TMP/a.e8q" --pipeline 2 --head q8 > "$TMP/epa"
  gen() { timeout -k 5 60 "$E8Q" generate "$@" --prompt "Once upon a time" --tokens 40 --ids 2> /dev/null; }
  gen --artifact "$TMP/h.e8q" > "$TMP/gh" || fail "generate with the 8-bit artifact"
  gen --artifact "$TMP/a.e8q" --head q8 > "$TMP/ga" || fail "generate --head q8"
  cmp "$TMP/gh" "$TMP/ga" || fail "generated ids differ between the stored and the load-time 8-bit head"
  member "$TMP/h.e8q" manifest.json > "$TMP/m.json"
  member "$TMP/h.e8q" model.safetensors > "$TMP/h.st"
  member "$TMP/a.e8q" model.safetensors > "$TMP/a.st"
  python3 - "$TMP/eh" "$TMP/ea" "$TMP/e0" "$TMP/ep" "$TMP/epa" "$TMP/m.json" "$TMP/h.st" "$TMP/a.st" <<'PY' || fail "8-bit head"
import json, os, struct, sys
eh, ea, e0, ep, epa = (json.loads(open(p).read()) for p in sys.argv[1:6])
m = json.load(open(sys.argv[6]))
def header(p):
    f = open(p, "rb"); n = struct.unpack("<Q", f.read(8))[0]; return json.loads(f.read(n))
h, a = header(sys.argv[7]), header(sys.argv[8])
E = "model.embed_tokens.weight"
assert h[E]["dtype"] == "I8" and h[E + ".q8_scales"]["dtype"] == "F32", (h[E], h.get(E + ".q8_scales"))
V, D = h[E]["shape"]
assert h[E + ".q8_scales"]["shape"] == [V, D // 32] and a[E]["shape"] == [V, D] and a[E]["dtype"] != "I8"
assert E + ".q8_scales" not in a
saved = os.path.getsize(sys.argv[8]) - os.path.getsize(sys.argv[7])
assert saved > 0.6 * V * D, (saved, V, D)  # F32 (4 bytes) -> 1 + 4/32 bytes per weight
assert eh["sum_nll"] == ea["sum_nll"], (eh["sum_nll"], ea["sum_nll"])  # the same bits
assert eh["sum_nll"] == ep["sum_nll"], (eh["sum_nll"], ep["sum_nll"])  # pipelined: the same bits
assert eh["sum_nll"] == epa["sum_nll"], (eh["sum_nll"], epa["sum_nll"])  # rounded as the pipeline reads
assert eh["sum_nll"] != e0["sum_nll"] and abs(eh["mean_nll"] - e0["mean_nll"]) < 0.05, (eh["mean_nll"], e0["mean_nll"])
assert m["options"]["head"] == "q8", m["options"].get("head")
assert abs(m["evaluation"]["mean_nll"] - eh["mean_nll"]) < 1e-12
print("8-bit head: mean NLL", eh["mean_nll"], "against", e0["mean_nll"], "; saved", saved, "bytes")
PY
  ;;
*) fail "unknown case" ;;
esac
rm -rf "$TMP"
echo "PASS [$CASE]"
