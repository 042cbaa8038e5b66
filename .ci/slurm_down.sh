#!/usr/bin/env bash
# Stop the one-node SLURM cluster that .ci/slurm_up.sh started: cancel its leftover jobs, stop the
# daemons whose pids it recorded (never anything found by name), undo its /etc/hosts line.
# Packages, /etc/slurm/slurm.conf, the munge key and the logs stay. Running it twice is harmless.
set -uo pipefail

STATE_DIR=${DIST_LLM_SLURM_STATE:-/run/dist_llm-slurm}
say() { echo "[slurm_down] $*"; }
is_running() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

[ "$(id -u)" = 0 ] || { echo "[slurm_down] ERROR: run as root: sudo bash $0" >&2; exit 1; }
[ -d "$STATE_DIR" ] || { say "nothing was started (no $STATE_DIR)"; exit 0; }

# Jobs first, while slurmctld still runs, so no job processes outlive the cluster.
if is_running "$STATE_DIR/slurmctld.pid" slurmctld; then
    jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
        say "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        scancel --full $jobs 2>/dev/null
        for _ in $(seq 40); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
    fi
fi

status=0
for daemon in slurmd slurmctld munged; do
    pidfile="$STATE_DIR/$daemon.pid"
    [ -f "$pidfile" ] || continue
    if is_running "$pidfile" "$daemon"; then
        pid=$(cat "$pidfile")
        kill -TERM "$pid"
        for _ in $(seq 100); do is_running "$pidfile" "$daemon" || break; sleep 0.2; done
        if is_running "$pidfile" "$daemon"; then
            say "$daemon (pid $pid) ignored SIGTERM for 20 s; SIGKILL"
            kill -KILL "$pid"; sleep 0.5
            is_running "$pidfile" "$daemon" && { say "ERROR: $daemon (pid $pid) survives SIGKILL"; status=1; continue; }
        fi
        say "stopped $daemon (pid $pid)"
    fi
    rm -f "$pidfile"
done

if [ -f "$STATE_DIR/hosts_entry" ]; then
    line="127.0.0.1 $(cat "$STATE_DIR/hosts_entry") # dist_llm slurm_up"
    # Rewrite in place, not by rename: /etc/hosts is often a bind mount in containers.
    kept=$(grep -vxF "$line" /etc/hosts)
    printf '%s\n' "$kept" >/etc/hosts
    rm -f "$STATE_DIR/hosts_entry"
fi
exit "$status"
