# tests/slurm/slurm_test_env.sh: sourced by the Slurm tests (after `set -u`, with E8Q, SRC and
# NAME set): the shared model and text, a fresh work directory, fail(), and a one-machine test
# cluster of 4 CPUs, torn down on exit; exits 77 (skipped) when Slurm is not installed
# (scripts/deps.sh --slurm installs it).
SHARED=${E8Q_SHARED:?}
MODEL=$SHARED/models/stories260K-hf
TEXT=$SHARED/text/tinystories_valid_head.txt
work=${E8Q_TEST_TMP:-/tmp}/slurm-$NAME-$$
rm -rf "$work"; mkdir -p "$work"
fail() { echo "FAIL [slurm-$NAME]: $*" >&2; exit 1; }

# the trap comes first: an `up` that fails half-way has already started some daemons
# (`down` skips the ones whose PID file was never written)
trap '"$SRC/tests/slurm/slurm_cluster.sh" down "$work/cluster"' EXIT
env_line=$("$SRC/tests/slurm/slurm_cluster.sh" up "$work/cluster" 4); rc=$?
[ $rc -eq 77 ] && exit 77
[ $rc -eq 0 ] || fail "the test cluster did not come up"
eval "$env_line"
export OMP_NUM_THREADS=1
