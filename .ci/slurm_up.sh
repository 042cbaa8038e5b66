#!/usr/bin/env bash
# Bring up a one-node SLURM cluster on this machine (munged + slurmctld + slurmd), so the
# SLURM tests (tests/test_launch_slurm.py) submit real jobs. Used by .ci/run; on your own
# machine: `sudo bash .ci/slurm_up.sh`, run the tests, then `sudo bash .ci/slurm_down.sh`.
#
# Debian/Ubuntu, as root, no systemd needed: the daemons are started directly and their pids are
# recorded in $STATE_DIR, so slurm_down.sh stops exactly what this script started.
# Things this has to get right on a bare container/VM:
#   - /run/munge does not exist without systemd's tmpfiles, and munged refuses to start without it;
#   - jobs resolve the node name (`scontrol show hostnames` -> rendezvous host), so it must resolve;
#   - there is no accounting database: accounting and job completion plugins are off;
#   - no cgroup hierarchy to rely on: process tracking by the process tree (proctrack/linuxproc).
# It refuses to touch an /etc/slurm/slurm.conf that it did not write (a real cluster's).
set -euo pipefail

STATE_DIR=${DIST_LLM_SLURM_STATE:-/run/dist_llm-slurm}
WAIT_S=${DIST_LLM_SLURM_WAIT:-60}
APT_TIMEOUT_S=${DIST_LLM_SLURM_APT_TIMEOUT:-600}
CONF=/etc/slurm/slurm.conf
OURS="# written by dist_llm .ci/slurm_up.sh"
t0=$(date +%s)
say() { echo "[slurm_up +$(($(date +%s) - t0))s] $*"; }
die() {
    echo "[slurm_up] ERROR: $*" >&2
    for f in /var/log/munge/munged.log /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log; do
        [ -f "$f" ] && { echo "--- last lines of $f" >&2; tail -n 20 "$f" >&2; }
    done
    exit 1
}
# is_running PIDFILE NAME: the pid in PIDFILE is alive and really is NAME (pids get reused).
is_running() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}
# wait_for SECONDS CMD...: poll CMD every 0.5 s until it succeeds or SECONDS pass.
wait_for() {
    local deadline=$(($(date +%s) + $1)); shift
    until "$@"; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}

[ "$(id -u)" = 0 ] || die "run as root: sudo bash $0"
mkdir -p "$STATE_DIR"

# --- 1. packages (the slow part in CI: time it) ---------------------------------------------------
missing=0
for cmd in munged slurmctld slurmd sbatch srun scontrol sinfo; do command -v "$cmd" >/dev/null || missing=1; done
if [ "$missing" = 1 ]; then
    command -v apt-get >/dev/null || die "slurm/munge are not installed and there is no apt-get to install them"
    say "installing munge, slurmctld, slurmd, slurm-client (apt-get)"
    # Package scripts must not start services themselves: we start the daemons below.
    policy_added=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        policy_added=1
    fi
    rc=0
    { timeout "$APT_TIMEOUT_S" apt-get update -q &&
        DEBIAN_FRONTEND=noninteractive timeout "$APT_TIMEOUT_S" apt-get install -y -q \
            --no-install-recommends munge slurmctld slurmd slurm-client; } >"$STATE_DIR/apt.log" 2>&1 || rc=$?
    [ "$policy_added" = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ "$rc" = 0 ] || { tail -n 20 "$STATE_DIR/apt.log" >&2; die "apt-get failed with exit code $rc (124 = timed out)"; }
    say "packages installed in $(($(date +%s) - t0))s"
fi

# --- 2. munge: the authentication every SLURM daemon and client uses --------------------------------
install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_works; then
    # --force: a socket left behind by a killed munged would otherwise block the start.
    runuser -u munge -- /usr/sbin/munged --force || die "munged did not start"
    wait_for 10 is_running /run/munge/munged.pid munged || die "munged wrote no pid file"
    cp /run/munge/munged.pid "$STATE_DIR/munged.pid"
    wait_for 10 munge_works || die "munged runs but 'munge -n | unmunge' fails"
    say "munged started"
fi

# --- 3. slurm.conf for one node with this machine's real CPU count ---------------------------------
node=$(hostname -s)
if ! getent hosts "$node" >/dev/null; then
    echo "127.0.0.1 $node # dist_llm slurm_up" >>/etc/hosts
    echo "$node" >"$STATE_DIR/hosts_entry"
    say "added $node to /etc/hosts"
fi
# `slurmd -C` prints the node line as SLURM sees the hardware; keep its CPU layout and leave some
# memory unclaimed (declaring more than exists would drain the node).
hw=$(slurmd -C | head -n1)
layout=$(grep -oE '\b(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+' <<<"$hw" | tr '\n' ' ')
mem=$(grep -oE '\bRealMemory=[0-9]+' <<<"$hw" | cut -d= -f2)
[ -n "$mem" ] && [[ "$layout" == *CPUs=* ]] || die "cannot read the node's hardware from 'slurmd -C': $hw"
if [ -f "$CONF" ] && ! grep -qxF "$OURS" "$CONF"; then
    die "$CONF exists and was not written by this script (a real cluster's?); not touching it"
fi
mkdir -p /etc/slurm
cat >"$CONF.new" <<EOF
$OURS
ClusterName=dist_llm_ci
SlurmctldHost=$node(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
# Look at pending jobs every 2 s (defaults: 60 s, backfill 30 s), so a requeued test job that becomes
# eligible starts at once.
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# "sbatch --wait" polls every 2 s only while 2 >= MinJobAge/2; from the default (300) its interval
# grows to 32 s, which would triple the time of a 15 s test job. 4 s still outlasts one poll.
MinJobAge=4
KillWait=10
InactiveLimit=0
NodeName=$node NodeAddr=127.0.0.1 ${layout}RealMemory=$((mem * 9 / 10)) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
mv "$CONF.new" "$CONF"
install -d -o slurm -g slurm /var/spool/slurmctld /var/log/slurm /run/slurm
install -d /var/spool/slurmd

# --- 4. daemons ---------------------------------------------------------------------------------------
for daemon in slurmctld slurmd; do
    if is_running "/run/slurm/$daemon.pid" "$daemon" && ! is_running "$STATE_DIR/$daemon.pid" "$daemon"; then
        die "$daemon is already running and was not started by this script; stop it first"
    fi
done
if ! is_running "$STATE_DIR/slurmctld.pid" slurmctld; then
    slurmctld -c || die "slurmctld did not start" # -c: forget jobs of an earlier run
    wait_for 15 is_running /run/slurm/slurmctld.pid slurmctld || die "slurmctld wrote no pid file"
    cp /run/slurm/slurmctld.pid "$STATE_DIR/slurmctld.pid"
    say "slurmctld started"
else
    scontrol reconfigure
fi
wait_for "$WAIT_S" bash -c "scontrol ping 2>/dev/null | grep -q UP" || die "slurmctld does not answer"
if ! is_running "$STATE_DIR/slurmd.pid" slurmd; then
    slurmd -N "$node" || die "slurmd did not start"
    wait_for 15 is_running /run/slurm/slurmd.pid slurmd || die "slurmd wrote no pid file"
    cp /run/slurm/slurmd.pid "$STATE_DIR/slurmd.pid"
    say "slurmd started"
fi
node_ready() { sinfo -h -n "$node" -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; }
if ! wait_for "$WAIT_S" node_ready; then
    scontrol update nodename="$node" state=resume 2>/dev/null || true
    wait_for 10 node_ready || die "node $node is not idle: $(sinfo -h -n "$node" -o '%T %E')"
fi
sinfo
say "SLURM cluster ready in $(($(date +%s) - t0))s"
