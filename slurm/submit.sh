#!/usr/bin/env bash
# slurm/submit.sh: turn an e8q command into an sbatch job script and submit it.
#
#   slurm/submit.sh [--nodes N] [--ntasks-per-node R] [--cpus-per-task C] [--gpus-per-node G]
#                   [--time HH:MM:SS] [--partition P] [--launcher srun|mpirun] [--job-dir DIR] [--dry-run]
#                   -- COMMAND [options...]
#
# COMMAND is any e8q command; every one gets the same generated job script (slurm/e8q.sbatch.in)
# and environment (one BLAS thread per rank, OMP_NUM_THREADS = cpus per task, no busy-waiting).
#   quantize --model DIR --out OUT.e8q --run-dir RUN ...: the job script and the job's log go to
#       RUN.slurm/ beside the run directory (job.sbatch, slurm-JOBID.out); the run directory is
#       required: it is what makes a requeued job resume.
#   eval, inspect, plan, generate, demo: plain batch jobs in --job-dir DIR (default
#       ./e8q-COMMAND-DATE-TIME.slurm): job.sbatch, slurm-JOBID.out (the log: stderr of every rank)
#       and stdout-JOBID (the command's stdout: for eval, its JSON result on the last line). A
#       requeued eval starts over (it keeps no state) and rewrites stdout-JOBID.
# Use `e8q plan --model DIR --ranks N` (quantize) or `e8q plan --artifact A --ranks N --pipeline P
# --mem G` (eval) first to pick N and the memory. The job directory is printed on stderr.
# --dry-run writes the script and prints it without submitting.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
nodes=1 tpn=1 cpt=1 gpn=0 time=24:00:00 partition="" launcher=srun dry=0 job_dir=""
e8q=${E8Q_BIN:-$(command -v e8q || echo "$here/../build/e8q")}
die() { echo "slurm/submit.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes=$2; shift 2 ;;
    --ntasks-per-node) tpn=$2; shift 2 ;;
    --cpus-per-task) cpt=$2; shift 2 ;;
    --gpus-per-node) gpn=$2; shift 2 ;;
    --time) time=$2; shift 2 ;;
    --partition) partition=$2; shift 2 ;;
    --launcher) launcher=$2; shift 2 ;;
    --job-dir) job_dir=$2; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --) shift; break ;;
    *) die "unknown option '$1' (options go before --, the e8q command after it)" ;;
  esac
done
[ $# -gt 0 ] || die "no e8q command after --"
for v in "$nodes" "$tpn" "$cpt" "$gpn"; do [[ "$v" =~ ^[0-9]+$ ]] || die "counts must be integers, got '$v'"; done
args=("$@")
cmd=${args[0]}
stdout=""
case "$cmd" in
  quantize)
    run_dir=""
    for ((i = 0; i < ${#args[@]}; i++)); do
      [ "${args[$i]}" = "--run-dir" ] && run_dir=${args[$((i + 1))]:-}
    done
    [ -n "$run_dir" ] || die "quantize needs --run-dir RUN so that a requeued job resumes from it"
    [ -z "$job_dir" ] || die "--job-dir is for the other commands; a quantize job lives in RUN.slurm beside --run-dir"
    mkdir -p "$(dirname "$run_dir")"
    run_dir="$(cd "$(dirname "$run_dir")" && pwd)/$(basename "$run_dir")"
    job_dir="$run_dir.slurm" ;;
  eval|inspect|plan|generate|demo)
    [ -n "$job_dir" ] || job_dir="$PWD/e8q-$cmd-$(date +%Y%m%d-%H%M%S)-$$.slurm"
    mkdir -p "$job_dir"
    job_dir="$(cd "$job_dir" && pwd)"
    stdout=" > $(printf '%q' "$job_dir")/stdout-\${SLURM_JOB_ID}" ;;
  *) die "unknown e8q command '$cmd' (quantize, eval, inspect, plan, generate, demo)" ;;
esac
mkdir -p "$job_dir"
[ -x "$e8q" ] || die "e8q binary not found at '$e8q' (set E8Q_BIN)"
case "$launcher" in
  srun) launch="srun --mpi=pmix" ;;
  mpirun) launch="mpirun" ;;
  *) die "--launcher must be srun or mpirun" ;;
esac
extra=""
[ -n "$partition" ] && extra+="#SBATCH --partition=$partition"$'\n'
[ "$gpn" -gt 0 ] && extra+="#SBATCH --gpus-per-node=$gpn"$'\n'
quoted=$(printf '%q ' "${args[@]}")
script="$job_dir/job.sbatch"
tmpl=$(<"$here/e8q.sbatch.in")
for kv in "JOB_NAME=e8q-${args[0]}" "NODES=$nodes" "TASKS_PER_NODE=$tpn" "CPUS_PER_TASK=$cpt" \
          "TIME=$time" "JOB_DIR=$job_dir" "LAUNCHER=$launch" "E8Q=$(printf '%q' "$e8q")" \
          "ARGS=${quoted% }" "STDOUT=$stdout"; do
  tmpl=${tmpl//"@${kv%%=*}@"/"${kv#*=}"}
done
tmpl=${tmpl//"@EXTRA_SBATCH@"$'\n'/"$extra"}
printf '%s\n' "$tmpl" > "$script.tmp"
mv "$script.tmp" "$script"
if [ "$dry" = 1 ]; then cat "$script"; exit 0; fi
echo "slurm/submit.sh: job directory $job_dir" >&2
sbatch --parsable "$script"
