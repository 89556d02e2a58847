#!/usr/bin/env bash
# A one-node SLURM on this machine, for the tests and CI: installs Debian's packages if missing, writes
# a one-node slurm.conf, starts munged, slurmctld and slurmd, and waits until the node is idle.
# Idempotent: a cluster already up is left as it is. Needs root (packages, daemons, /etc/slurm).
# Exit 0: ready. Exit 77: this machine cannot run it (the reason on stderr). Other: a failure.
set -euo pipefail

PARTITION=${VLCACHE_SLURM_PARTITION:-debug}
STATE=${VLCACHE_SLURM_STATE:-/var/lib/vlcache-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by vlcache tests/slurm/start.sh"

cannot() { echo "cannot start a test SLURM here: $*" >&2; exit 77; }

node_idle() { timeout 10 sinfo --noheader --partition "$PARTITION" --format '%t' 2>/dev/null | grep -Eq '^(idle|mix)'; }

if command -v sinfo >/dev/null && node_idle; then
    exit 0
fi
[ "$(id -u)" = 0 ] || cannot "not root (installing packages and starting slurmctld need it)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
        || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || cannot "no apt-get to install slurmctld, slurmd, slurm-client and munge"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq slurmctld slurmd slurm-client munge; } >/tmp/vlcache-slurm-apt.log 2>&1 \
        || cannot "installing Debian's slurm and munge packages failed (see /tmp/vlcache-slurm-apt.log)"
fi

if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    cannot "$CONF exists and is not ours; start that cluster yourself"
fi
HOST=$(hostname -s)
# What slurmd sees of this machine (CPUs, memory), less a margin so that the node is never drained.
read -r CPUS MEMORY < <(slurmd -C | awk -F'[ =]' '/^NodeName/ {for (i = 1; i < NF; i++) {
    if ($i == "CPUs") c = $(i + 1); if ($i == "RealMemory") m = $(i + 1)}} END {print c, int(m * 0.9)}')
mkdir -p "$STATE"/ctld "$STATE"/d /var/log/slurm /etc/slurm
cat >"$CONF" <<CONFEOF
$MARK
ClusterName=vlcache-test
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/builtin
ReturnToService=2
MpiDefault=none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# A cancelled job's processes get SIGTERM, then SIGKILL 2 s later (30 s by default).
KillWait=2
MinJobAge=60
# A job that does not say how much memory it wants gets 1 GB a core, not the whole node.
DefMemPerCPU=1024
InactiveLimit=0
NodeName=$HOST CPUs=$CPUS RealMemory=$MEMORY State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONFEOF

pgrep -x munged >/dev/null || {
    mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
    [ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; }
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    runuser -u munge -- munged 2>/dev/null || munged --force
}
# A daemon still shutting down from an earlier start is waited for, then started anew.
start_daemon() { pgrep -x "$1" >/dev/null || "$1"; }
start_daemon slurmctld
start_daemon slurmd

for _ in $(seq 1 60); do
    if node_idle; then
        exit 0
    fi
    start_daemon slurmctld
    start_daemon slurmd
    # A node that comes back from an earlier run may need resuming.
    timeout 5 scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    sleep 1
done
echo "the test SLURM did not bring its node up within 60 s:" >&2
timeout 5 sinfo >&2 || true
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
