#!/usr/bin/env bash
# tests/slurm/test_slurm_requeue.sh E8Q SRC_DIR
# `e8q quantize` on 2 ranks as a Slurm batch job made by slurm/submit.sh, on a one-machine cluster:
# the first attempt is killed (SIGKILL at the second shard commit, via E8Q_FAULT, only while
# SLURM_RESTART_COUNT is 0); `scontrol requeue` restarts the job, which resumes from the run
# directory. The artifact must be byte-identical to an uninterrupted mpirun run.
# Exit 77 (skipped) when Slurm is not installed (scripts/deps.sh --slurm installs it).
set -u
E8Q=$1 SRC=$2
NAME=requeue
. "$SRC/tests/slurm/slurm_test_env.sh" # MODEL, TEXT, $work, fail, the test cluster

opts=(quantize --model "$MODEL" --bits 2 --calib "$TEXT" --calib-skip 1000 --devset 8 --ctx 64
      --tune-iters 2 --seed 11 --eval-text "$TEXT" --eval-lines 10)

# the uninterrupted reference
timeout -k 5 200 mpirun -np 2 "$E8Q" "${opts[@]}" --out "$work/ref.e8q" --run-dir "$work/ref.run" \
  > "$work/ref.log" 2>&1 || { cat "$work/ref.log"; fail "reference run failed"; }

# the job's e8q: killed at the second shard commit on its first attempt only
cat > "$work/e8q-once" <<WRAP
#!/usr/bin/env bash
[ "\${SLURM_RESTART_COUNT:-0}" = 0 ] && export E8Q_FAULT=commit.done:2
exec "$E8Q" "\$@"
WRAP
chmod +x "$work/e8q-once"
id=$(E8Q_BIN="$work/e8q-once" "$SRC/slurm/submit.sh" --ntasks-per-node 2 --time 00:10:00 -- \
       "${opts[@]}" --out "$work/job.e8q" --run-dir "$work/job.run") || fail "sbatch failed"
echo "submitted job $id"

field() { scontrol show job "$id" 2>/dev/null | grep -o "$1=[^ ]*" | head -n 1 | cut -d= -f2; }
wait_terminal() { # wait_terminal RESTARTS: until the job has restarted that often and ended
  for _ in $(seq 1 600); do
    st=$(field JobState); rs=$(field Restarts)
    if [ "${rs:-0}" -ge "$1" ]; then
      case "$st" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) echo "$st"; return 0 ;; esac
    fi
    sleep 0.5
  done
  echo "STUCK($st)"; return 1
}
st=$(wait_terminal 0)
echo "first attempt: $st"
[ "$st" = FAILED ] || { cat "$work"/job.run.slurm/slurm-*.out; fail "the first attempt should have died at the fault point, ended $st"; }
[ -f "$work/job.e8q" ] && fail "the killed attempt left an artifact"
scontrol requeue "$id" || fail "scontrol requeue failed"
st=$(wait_terminal 1)
echo "after requeue: $st"
log=$(cat "$work"/job.run.slurm/slurm-*.out)
[ "$st" = COMPLETED ] || { echo "$log"; fail "the requeued job ended $st"; }
grep -q "restart 1" <<<"$log" || { echo "$log"; fail "the job log shows no restart"; }
cmp "$work/ref.e8q" "$work/job.e8q" || fail "the requeued job's artifact differs from the uninterrupted run"
echo "PASS [slurm-requeue]: requeued job $id resumed and matches the uninterrupted run byte for byte"
rm -rf "$work/ref.run" "$work/job.run" "$work/job.run.slurm"
