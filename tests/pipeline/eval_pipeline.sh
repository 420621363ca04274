#!/usr/bin/env bash
# tests/pipeline/eval_pipeline.sh E8Q MPIEXEC: layer-pipelined evaluation (e8q eval --pipeline P)
# and the evaluation memory table (e8q plan --artifact) on a 2-bit stories260K artifact.
#   - --pipeline 1, 2, 4 on 4 ranks (4 groups of 1, 2 groups of 2, 1 group of 4) and --pipeline 2
#     on 2 ranks give the same sum_nll and mean_nll bits as the data-parallel run on 1 and 4 ranks,
#     per line and in --ctx windows, fused and --dense;
#   - every rank's peak RSS is printed on stderr and in the JSON (peak_rss_bytes);
#   - the stages' layers are the plan's, contiguous, covering every layer once;
#   - plan --artifact --mem: a "NO" row and exit 3 when a rank does not fit, exit 0 when all do;
#   - bad --pipeline values are refused with a message.
set -u
E8Q=$1; MPIEXEC=$2
SHARED=${E8Q_SHARED:?}
MODEL=$SHARED/models/stories260K-hf
TEXT=$SHARED/text/tinystories_valid_head.txt
TMP=${E8Q_TEST_TMP:-/tmp}/eval-pipeline-$$
rm -rf "$TMP"; mkdir -p "$TMP"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
fail() { echo "FAIL [eval_pipeline]: $*" >&2; exit 1; }
A=$TMP/a.e8q
timeout -k 5 120 "$MPIEXEC" -np 2 "$E8Q" quantize --model "$MODEL" --calib "$TEXT" --calib-skip 1000 --devset 16 --ctx 64 \
  --tune-iters 2 --seed 7 --ft none --bits 2 --out "$A" > "$TMP/q.log" 2>&1 || { cat "$TMP/q.log"; fail "quantize failed"; }
ev() { # ev NAME NP [options...]: eval on NP ranks, stdout in NAME.json, stderr in NAME.err
  local name=$1 np=$2; shift 2
  timeout -k 5 120 "$MPIEXEC" -np "$np" "$E8Q" eval --artifact "$A" --text "$TEXT" "$@" > "$TMP/$name.json" 2> "$TMP/$name.err" ||
    { cat "$TMP/$name.err"; fail "eval $name ($np ranks: $*) failed"; }
}
for mode in "line --per-line 40" "ctx --ctx 48 --windows 13" "dense --per-line 12 --dense"; do
  set -- $mode; m=$1; shift
  ev "$m-dp1" 1 "$@"
  ev "$m-dp4" 4 "$@"
  for p in 1 2 4; do ev "$m-p$p" 4 "$@" --pipeline $p; done
  ev "$m-p2n2" 2 "$@" --pipeline 2
done
# a stage's log names its layers; the plan for the same ranks names the same ones
for p in 2 4; do
  "$E8Q" plan --artifact "$A" --ranks 4 --pipeline $p > "$TMP/plan$p" 2>&1 || { cat "$TMP/plan$p"; fail "plan --pipeline $p"; }
done
python3 - "$TMP" <<'PY' || fail "pipelined results"
import json, re, sys
d = sys.argv[1]
def load(n):
    return json.loads(open(f"{d}/{n}.json").read().strip().splitlines()[-1])
for m in ("line", "ctx", "dense"):
    runs = {n: load(f"{m}-{n}") for n in ("dp1", "dp4", "p1", "p2", "p4", "p2n2")}
    ref = runs["dp1"]
    for n, r in runs.items():
        assert r["sum_nll"] == ref["sum_nll"] and r["mean_nll"] == ref["mean_nll"] and r["tokens"] == ref["tokens"], (m, n, r, ref)
        assert len(r["peak_rss_bytes"]) == r["ranks"] and all(x > 1e6 for x in r["peak_rss_bytes"]), (m, n, r)
        err = open(f"{d}/{m}-{n}.err").read()
        for k in range(r["ranks"]):
            assert re.search(rf"eval: rank {k} peak RSS [0-9.]+ MiB", err), (m, n, k)
        if n.startswith("p"):
            P = 1 if n == "p1" else 4 if n == "p4" else 2
            assert r["pipeline"] == P and r["groups"] == r["ranks"] // P, r
    assert ref["linears"] == ("dense decode" if m == "dense" else "fused kernels"), ref
    print(m, "mean NLL", ref["mean_nll"], "on every layout")
L = 5
for p in (2, 4):
    err = open(f"{d}/line-p{p}.err").read()
    stages = [tuple(map(int, x)) for x in re.findall(r"pipeline stage \d+: layers (\d+)-(\d+)", err)]
    assert len(stages) == p, stages
    assert stages[0][0] == 0 and stages[-1][1] == L - 1 and all(stages[i][1] + 1 == stages[i + 1][0] for i in range(p - 1)), stages
    rows = [l.split() for l in open(f"{d}/plan{p}") if re.match(r"\s+\d+\s+\d+\s+\d+\s", l)]
    assert len(rows) == 4, rows
    assert [tuple(map(int, r[3].split("-"))) for r in rows[:p]] == stages, (rows, stages)
    assert rows[0][4].startswith("embed") and rows[p - 1][4].endswith("head"), rows
PY
# plan --artifact: whether every rank fits
"$E8Q" plan --artifact "$A" --ranks 4 --pipeline 4 --mem 0.001 > "$TMP/small" 2>&1; rc=$?
[ $rc -eq 3 ] || { cat "$TMP/small"; fail "plan --mem 0.001 should exit 3, got $rc"; }
grep -q " NO$" "$TMP/small" || { cat "$TMP/small"; fail "no rank marked NO"; }
"$E8Q" plan --artifact "$A" --ranks 4 --mem 64 > "$TMP/big" 2>&1 || { cat "$TMP/big"; fail "plan --mem 64 should fit"; }
grep -q "data parallel" "$TMP/big" && [ "$(grep -c ' yes$' "$TMP/big")" = 4 ] || { cat "$TMP/big"; fail "data-parallel table"; }
# refusals
timeout -k 5 60 "$MPIEXEC" -np 4 "$E8Q" eval --artifact "$A" --text "$TEXT" --per-line 4 --pipeline 3 > "$TMP/bad" 2>&1 && fail "--pipeline 3 on 4 ranks ran"
grep -q "do not form whole groups of 3" "$TMP/bad" || { cat "$TMP/bad"; fail "no message for --pipeline 3"; }
timeout -k 5 60 "$MPIEXEC" -np 2 "$E8Q" eval --model "$MODEL" --text "$TEXT" --per-line 4 --pipeline 2 > "$TMP/bad" 2>&1 && fail "--pipeline with --model ran"
grep -q "give --artifact" "$TMP/bad" || { cat "$TMP/bad"; fail "no message for --pipeline with --model"; }
"$E8Q" plan --artifact "$A" --ranks 6 --pipeline 6 > "$TMP/bad" 2>&1 && fail "6 stages of 5 layers planned"
grep -q "exceeds the model's 5 layers" "$TMP/bad" || { cat "$TMP/bad"; fail "no message for --pipeline 6"; }
rm -rf "$TMP"
echo "PASS [eval_pipeline]"
