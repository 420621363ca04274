#!/usr/bin/env bash
# tests/slurm/test_slurm_eval.sh E8Q SRC_DIR
# `e8q eval --pipeline 2` on 4 ranks (2 groups of 2 layer-pipelined stages) and `e8q inspect
# --verify`, each submitted as a plain batch job by slurm/submit.sh on a one-machine cluster: the
# eval's JSON result (the last line of JOB_DIR/stdout-JOBID) must equal, bit for bit, a direct
# 1-rank data-parallel run's, with every rank's peak RSS; the inspect job's stdout says OK.
# Exit 77 (skipped) when Slurm is not installed (scripts/deps.sh --slurm installs it).
set -u
E8Q=$1 SRC=$2
NAME=eval
. "$SRC/tests/slurm/slurm_test_env.sh" # MODEL, TEXT, $work, fail, the test cluster

A=$work/a.e8q
timeout -k 5 120 mpirun -np 2 "$E8Q" quantize --model "$MODEL" --bits 2 --calib "$TEXT" --calib-skip 1000 --devset 8 \
  --ctx 64 --tune-iters 2 --seed 11 --ft none --out "$A" > "$work/q.log" 2>&1 || { cat "$work/q.log"; fail "quantize failed"; }
EV=(eval --artifact "$A" --text "$TEXT" --per-line 40)
timeout -k 5 120 "$E8Q" "${EV[@]}" > "$work/ref.json" 2> "$work/ref.err" || { cat "$work/ref.err"; fail "reference eval failed"; }

field() { scontrol show job "$1" 2>/dev/null | grep -o "$2=[^ ]*" | head -n 1 | cut -d= -f2; }
wait_done() { # wait_done JOBID: prints the terminal state
  local st=""
  for _ in $(seq 1 400); do
    st=$(field "$1" JobState)
    case "$st" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) echo "$st"; return 0 ;; esac
    sleep 0.5
  done
  echo "STUCK($st)"; return 1
}
id=$(E8Q_BIN="$E8Q" "$SRC/slurm/submit.sh" --ntasks-per-node 4 --time 00:10:00 --job-dir "$work/eval.slurm" -- \
       "${EV[@]}" --pipeline 2) || fail "sbatch of the eval failed"
iid=$(E8Q_BIN="$E8Q" "$SRC/slurm/submit.sh" --time 00:05:00 --job-dir "$work/inspect.slurm" -- inspect "$A" --verify) ||
  fail "sbatch of the inspect failed"
echo "submitted eval job $id, inspect job $iid"
grep -q -- "--pipeline 2 > .*/stdout-\${SLURM_JOB_ID}" "$work/eval.slurm/job.sbatch" || { cat "$work/eval.slurm/job.sbatch"; fail "job script"; }
grep -q "^#SBATCH --ntasks-per-node=4" "$work/eval.slurm/job.sbatch" || fail "job script lacks the task count"
st=$(wait_done "$id")
[ "$st" = COMPLETED ] || { cat "$work"/eval.slurm/slurm-*.out; fail "the eval job ended $st"; }
st=$(wait_done "$iid")
[ "$st" = COMPLETED ] || { cat "$work"/inspect.slurm/slurm-*.out; fail "the inspect job ended $st"; }
grep -q "verify: *OK" "$work/inspect.slurm/stdout-$iid" || { cat "$work/inspect.slurm/stdout-$iid"; fail "inspect job output"; }
for k in 0 1 2 3; do
  grep -q "eval: rank $k peak RSS" "$work/eval.slurm/slurm-$id.out" || { cat "$work/eval.slurm/slurm-$id.out"; fail "no peak RSS of rank $k in the job log"; }
done
python3 - "$work/eval.slurm/stdout-$id" "$work/ref.json" <<'PY' || fail "the job's JSON result"
import json, sys
job, ref = (json.loads(open(p).read().strip().splitlines()[-1]) for p in sys.argv[1:3])
assert job["ranks"] == 4 and job["pipeline"] == 2 and job["groups"] == 2, job
assert job["sum_nll"] == ref["sum_nll"] and job["mean_nll"] == ref["mean_nll"] and job["tokens"] == ref["tokens"], (job, ref)
assert len(job["peak_rss_bytes"]) == 4 and all(x > 1e6 for x in job["peak_rss_bytes"]), job
print("slurm eval job mean NLL", job["mean_nll"], "peak RSS MiB", [round(x / 2**20, 1) for x in job["peak_rss_bytes"]])
PY
echo "PASS [slurm-eval]: eval job $id (4 ranks, --pipeline 2) matches the direct run; inspect job $iid verified"
rm -rf "$work/eval.slurm" "$work/inspect.slurm" "$A"
