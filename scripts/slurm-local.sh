#!/usr/bin/env bash
# Starts a one-machine Slurm (Debian's Slurm 22.05 + munge) for testing the sbatch templates:
# installs the packages if missing (apt), writes a munge key and /etc/slurm/slurm.conf for this
# host (partition `debug`, 8 CPUs, oversubscription, `srun --mpi=pmix`), and starts munged,
# slurmctld and slurmd unless they are running. Idempotent; run as root. Exits non-zero with a
# message when Slurm cannot be started. `scripts/test.sh` runs it before the tests.
set -euo pipefail

log() { printf 'slurm-local: %s\n' "$*"; }
die() { printf 'slurm-local: error: %s\n' "$*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || die "must run as root (it installs packages and starts daemons)"

PKGS=(slurmctld slurmd slurm-client munge)
missing=()
for p in "${PKGS[@]}"; do
  [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed"
  apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
fi

host="$(hostname)"
# munge: a key owned by munge, mode 400, and the daemon running as munge.
if [[ ! -s /etc/munge/munge.key ]]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- /usr/sbin/munged || die "munged did not start"
fi

mkdir -p /etc/slurm /var/lib/slurm/ctld /var/lib/slurm/d /var/log/slurm
conf="$(cat <<EOF
ClusterName=ferrotron
SlurmctldHost=${host}
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmUser=root
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
StateSaveLocation=/var/lib/slurm/ctld
SlurmdSpoolDir=/var/lib/slurm/d
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
MinJobAge=600
NodeName=${host} CPUs=8 RealMemory=20000 State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
EOF
)"
restart=0
if [[ ! -f /etc/slurm/slurm.conf ]] || [[ "$(cat /etc/slurm/slurm.conf)" != "$conf" ]]; then
  printf '%s\n' "$conf" > /etc/slurm/slurm.conf
  restart=1
fi
if ((restart)); then
  pkill -x slurmctld 2>/dev/null || true
  pkill -x slurmd 2>/dev/null || true
  sleep 1
fi
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld || die "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd || die "slurmd did not start (see /var/log/slurm/slurmd.log)"

for _ in $(seq 1 30); do
  state="$(sinfo -h -o '%T' 2>/dev/null | head -1 || true)"
  if [[ "$state" == idle* || "$state" == mix* || "$state" == alloc* ]]; then
    log "Slurm is up (node ${host}: ${state})"
    exit 0
  fi
  [[ "$state" == down* || "$state" == drain* ]] && scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
  sleep 1
done
die "the node did not become idle (sinfo: ${state:-no answer}); see /var/log/slurm/"
