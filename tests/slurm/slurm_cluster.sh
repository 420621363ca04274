#!/usr/bin/env bash
# tests/slurm/slurm_cluster.sh: a one-machine Slurm cluster for tests (no systemd, runs as root).
#   slurm_cluster.sh up WORKDIR [CPUS]   start munged, slurmctld and slurmd under WORKDIR; prints
#                                        `export SLURM_CONF=...` to eval
#   slurm_cluster.sh down WORKDIR        stop them by recorded PID
# Recipe: ../shared/INFRA.md ("Slurm on one machine").
set -euo pipefail
cmd=${1:?up|down} work=${2:?work directory}
cpus=${3:-4}
case "$cmd" in
up)
  for b in munged mungekey slurmctld slurmd sinfo; do
    command -v "$b" >/dev/null || { echo "SKIP: $b not installed (apt-get install munge slurmctld slurmd slurm-client)" >&2; exit 77; }
  done
  rm -rf "$work"; mkdir -p "$work"/{munge,state,spool,log}
  work=$(cd "$work" && pwd)
  chmod 700 "$work/munge"
  mungekey -c -k "$work/munge/munge.key" 2>/dev/null || dd if=/dev/urandom of="$work/munge/munge.key" bs=1024 count=1 2>/dev/null
  chmod 600 "$work/munge/munge.key"
  munged --key-file="$work/munge/munge.key" --socket="$work/munge/munge.socket" \
         --pid-file="$work/munge/munged.pid" --log-file="$work/munge/munged.log" --seed-file="$work/munge/seed" --force
  host=$(hostname -s)
  cat > "$work/slurm.conf" <<CONF
ClusterName=e8qtest
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$work/munge/munge.socket,cred_expire=10
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
SlurmctldPort=$((7000 + RANDOM % 500))
SlurmdPort=$((7600 + RANDOM % 500))
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=pmix
EnforcePartLimits=ALL
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF=$work/slurm.conf
  slurmctld -D -i >"$work/log/slurmctld.out" 2>&1 & echo $! > "$work/slurmctld.bgpid"
  slurmd -D >"$work/log/slurmd.out" 2>&1 & echo $! > "$work/slurmd.bgpid"
  for _ in $(seq 1 100); do
    state=$(sinfo -h -N -o %T 2>/dev/null | head -n 1 || true)
    [ "$state" = idle ] && { echo "export SLURM_CONF=$work/slurm.conf"; exit 0; }
    sleep 0.2
  done
  echo "slurm did not come up; logs in $work/log" >&2
  tail -n 20 "$work"/log/* >&2 || true
  exit 1 ;;
down)
  for f in slurmd.bgpid slurmctld.bgpid; do
    [ -f "$work/$f" ] && kill "$(cat "$work/$f")" 2>/dev/null || true
  done
  [ -f "$work/munge/munged.pid" ] && kill "$(cat "$work/munge/munged.pid")" 2>/dev/null || true
  sleep 0.5
  exit 0 ;;
*) echo "usage: $0 up|down WORKDIR [CPUS]" >&2; exit 2 ;;
esac
