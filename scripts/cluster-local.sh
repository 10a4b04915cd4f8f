#!/usr/bin/env bash
# A real N-host Slurm cluster on this one machine, for testing multi-node jobs:
#
#   bash scripts/cluster-local.sh up N [--cpus-per-node C] [--gpus-per-node G]
#   bash scripts/cluster-local.sh status
#   bash scripts/cluster-local.sh down
#
# Each host is a network namespace `ftnodeI` (I = 1..N) with its own host name (a UTS
# namespace), its own address 10.213.77.(10+I)/24 on a bridge `ftbr0` (one veth pair per host)
# and its own `slurmd` (NodeName = NodeAddr's host name; spool, pid and log files per node).
# `slurmctld` and `munged` run on the machine itself, which has 10.213.77.1 on the bridge. The
# subnet is reserved for these test hosts: nothing is routed off the bridge, so traffic
# between hosts never leaves this machine. Jobs therefore really run "on" ftnode1..N: MPI
# ranks on different hosts see different host names and reach each other over TCP through the
# bridge (Open MPI cannot use shared memory between them: its locality comes from PMIx, i.e.
# from the node a rank was started on). The file system is shared, as on a real cluster, except
# /dev/shm and a node-local folder, which each host has for itself.
#
# Every node also carries a GPU GRES (`Gres=gpu:G`, default 4, placeholder files, no GPUs) so GPU
# templates can be submitted (`--gpus-per-node`) and their launch logic exercised on CPUs.
# Partition `debug` (default) holds all nodes; jobs may share a node's CPUs (OverSubscribe),
# because every "host" shares this machine's cores.
#
# `up` installs Debian's Slurm and munge when missing, is idempotent (an `up` with the same
# arguments leaves a running cluster alone; other arguments rebuild it), and waits until every
# node is idle. `down` stops every daemon and removes every namespace, link and file it made.
# Must run as root. Exits non-zero with one message when something cannot be done (e.g. the
# kernel refuses network namespaces).
set -euo pipefail

SUBNET=10.213.77
BRIDGE=ftbr0
PREFIX=ftnode
STATE=/run/ferrotron-cluster     # what `up` made (read by `status` and `down`)
CONF=/etc/slurm/slurm.conf
NODE_LOCAL=/var/lib/slurm/node-local  # each host's own folder here (its "local disk")

log() { printf 'cluster-local: %s\n' "$*"; }
die() { printf 'cluster-local: error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

need_root() { [[ "$(id -u)" == 0 ]] || die "must run as root (it creates network namespaces and starts daemons)"; }

install_slurm() {
  local p missing=()
  for p in slurmctld slurmd slurm-client munge iproute2; do
    [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" == "install ok installed" ]] || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed"
  apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}

# Host I's name and address.
node() { printf '%s%d' "$PREFIX" "$1"; }
addr() { printf '%s.%d' "$SUBNET" $((10 + $1)); }

start_munge() {
  if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged || die "munged did not start"
}

# The bridge with the controller's address, and host I: namespace, veth pair, address, host
# name file, hosts file (bound over /etc/hosts for the host's slurmd and its jobs).
make_network() {
  local n="$1" i name
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge || die "cannot create bridge $BRIDGE"
  fi
  ip addr replace "$SUBNET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  local hosts
  hosts="$(printf '127.0.0.1 localhost\n%s.1 %s\n' "$SUBNET" "$(hostname)")"
  for ((i = 1; i <= n; i++)); do hosts+=$'\n'"$(addr "$i") $(node "$i")"; done
  for ((i = 1; i <= n; i++)); do
    name="$(node "$i")"
    if ! ip netns list | grep -qw "$name"; then
      ip netns add "$name" || die "the kernel refused a network namespace ($name): run as root on a host that allows 'ip netns add' (not inside an unprivileged container)"
    fi
    if ! ip link show "ftv$i" >/dev/null 2>&1; then
      ip link add "ftv$i" type veth peer name eth0 netns "$name" || die "cannot create veth pair ftv$i"
    fi
    ip link set "ftv$i" master "$BRIDGE" up
    ip -n "$name" link set lo up
    ip -n "$name" addr replace "$(addr "$i")/24" dev eth0
    ip -n "$name" link set eth0 up
    mkdir -p "/etc/netns/$name"
    printf '%s\n' "$hosts" > "/etc/netns/$name/hosts"
    printf '%s\n' "$name" > "/etc/netns/$name/hostname"
  done
}

write_conf() {
  local n="$1" cpus="$2" gpus="$3" ctl i
  ctl="$(hostname)"
  {
    cat <<EOF
# Written by scripts/cluster-local.sh: a ${n}-host test cluster of network namespaces.
ClusterName=ferrotron
SlurmctldHost=${ctl}(${SUBNET}.1)
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmUser=root
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
GresTypes=gpu
StateSaveLocation=/var/lib/slurm/ctld
SlurmdSpoolDir=/var/lib/slurm/d/%n
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
MinJobAge=600
EOF
    for ((i = 1; i <= n; i++)); do
      echo "NodeName=$(node "$i") NodeAddr=$(addr "$i") NodeHostname=$(node "$i") CPUs=${cpus} RealMemory=4000 $( ((gpus > 0)) && echo "Gres=gpu:${gpus} ")State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=${PREFIX}[1-${n}] Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8"
  } > "$CONF.new"
  # The PMIx plugin's client directories would collide in the shared /tmp (their names hold
  # the job and step, not the node, and mpi.conf does not expand %n): a node-local directory,
  # the same path on every host, bound to a folder of its own in each host's mount namespace.
  # PMIxEnv: the PMIx clients (Open MPI's MPI_Init) use the hash store, not the ds21
  # shared-memory store, which now and then segfaults at start-up when several jobs start on
  # one host (a known PMIx 3/4 problem; PMIX_MCA_gds=hash is the usual site workaround).
  printf 'PMIxCliTmpDirBase=%s\nPMIxEnv=PMIX_MCA_gds=hash\n' "$NODE_LOCAL" > /etc/slurm/mpi.conf.new
  # Slurm drops a GPU GRES without character-device files, so each node's "GPUs" are
  # placeholders with /dev/null's device numbers (no GPU behind them): enough for Slurm to
  # allocate them and set CUDA_VISIBLE_DEVICES, which is what the GPU templates' launch logic
  # needs.
  mkdir -p "$STATE/dev"
  local g
  for ((g = 0; g < gpus; g++)); do
    [[ -c "$STATE/dev/gpu$g" ]] || mknod "$STATE/dev/gpu$g" c 1 3 # /dev/null's numbers
  done
  if ((gpus > 0)); then
    printf 'NodeName=%s[1-%d] Name=gpu File=%s/dev/gpu[0-%d]\n' "$PREFIX" "$n" "$STATE" $((gpus - 1)) > /etc/slurm/gres.conf.new
  else
    : > /etc/slurm/gres.conf.new
  fi
}

slurmd_pid() { cat "/run/slurmd-$(node "$1").pid" 2>/dev/null || true; }
# A slurmd with this pid runs (a pid file left by a killed daemon may name a reused pid).
alive() { [[ -n "$1" ]] && [[ "$(cat "/proc/$1/comm" 2>/dev/null)" == slurmd ]]; }

# slurmd for host I inside its namespace, with its own host name.
start_slurmd() {
  local i="$1" name
  name="$(node "$i")"
  alive "$(slurmd_pid "$i")" && return 0
  mkdir -p "/var/lib/slurm/d/$name/local" "$NODE_LOCAL"
  # Not `ip netns exec`: it remounts /sys, hiding the cgroup file system slurmd needs. A mount
  # namespace of our own binds the host's hosts file and its local folder instead, and gives
  # the host a /dev/shm of its own (shared memory never spans hosts, as on a real cluster).
  nsenter --net="/run/netns/$name" unshare --uts --mount --propagation private sh -c \
    "mount --bind /etc/netns/$name/hosts /etc/hosts && mount --bind /var/lib/slurm/d/$name/local $NODE_LOCAL && mount -t tmpfs -o size=4g,mode=1777 shm-$name /dev/shm && hostname $name && exec /usr/sbin/slurmd -N $name" \
    || die "slurmd on $name did not start (see /var/log/slurm/slurmd-$name.log)"
}

stop_daemons() {
  local pidf pid
  for pidf in /run/slurmd-"$PREFIX"*.pid; do
    [[ -f "$pidf" ]] || continue
    pid="$(cat "$pidf")"
    alive "$pid" && kill "$pid" 2>/dev/null || true
    rm -f "$pidf"
  done
  pkill -x slurmctld 2>/dev/null || true
  # A one-machine slurmd (the old scripts/slurm-local.sh) would hold port 6818 and the conf.
  pkill -x slurmd 2>/dev/null || true
  local t
  for t in $(seq 1 50); do
    pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || break
    sleep 0.1
  done
}

wait_idle() {
  local n="$1" t states
  for t in $(seq 1 60); do
    states="$(sinfo -h -N -o '%N %T' 2>/dev/null || true)"
    if [[ "$(grep -cE ' (idle|mixed|allocated)' <<<"$states")" == "$n" ]]; then
      log "Slurm is up: $n hosts ($(tr '\n' ' ' <<<"$states"| sed 's/ $//'))"
      return 0
    fi
    if grep -qE ' (down|drain)' <<<"$states"; then
      scontrol update nodename="${PREFIX}[1-$n]" state=resume >/dev/null 2>&1 || true
    fi
    sleep 1
  done
  die "the hosts did not become idle (sinfo: $(tr '\n' ' ' <<<"${states:-no answer}")); see /var/log/slurm/"
}

cmd_up() {
  local n="" cpus=8 gpus=4
  while (($#)); do
    case "$1" in
      --cpus-per-node) cpus="${2:?--cpus-per-node needs a value}"; shift 2 ;;
      --gpus-per-node) gpus="${2:?--gpus-per-node needs a value}"; shift 2 ;;
      [0-9]*) n="$1"; shift ;;
      *) usage ;;
    esac
  done
  [[ "$n" =~ ^[0-9]+$ && "$n" -ge 1 && "$n" -le 64 ]] || die "up needs a host count N in 1..64"
  [[ "$cpus" =~ ^[0-9]+$ && "$cpus" -ge 1 ]] || die "--cpus-per-node must be a positive integer"
  [[ "$gpus" =~ ^[0-9]+$ ]] || die "--gpus-per-node must be a non-negative integer"
  need_root
  install_slurm
  command -v unshare >/dev/null || die "unshare (util-linux) not found"
  local want="$n $cpus $gpus"
  if [[ "$(cat "$STATE/args" 2>/dev/null || true)" != "$want" ]] && [[ -f "$STATE/args" ]]; then
    log "rebuilding: was '$(cat "$STATE/args")', now '$want'"
    cmd_down
  fi
  mkdir -p "$STATE" /etc/slurm /var/lib/slurm/ctld /var/log/slurm
  start_munge
  make_network "$n"
  write_conf "$n" "$cpus" "$gpus"
  # Any changed file restarts the daemons (slurmd reads gres.conf and mpi.conf at start).
  local f changed=0
  for f in "$CONF" /etc/slurm/gres.conf /etc/slurm/mpi.conf; do
    if cmp -s "$f.new" "$f"; then rm -f "$f.new"; else mv "$f.new" "$f"; changed=1; fi
  done
  ((changed)) && stop_daemons
  # A slurmd outside the namespaces (left by an older one-machine set-up) cannot serve them.
  pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld || die "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
  local i
  for ((i = 1; i <= n; i++)); do start_slurmd "$i"; done
  echo "$want" > "$STATE/args"
  wait_idle "$n"
}

cmd_down() {
  need_root
  stop_daemons
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PREFIX[0-9]*$" || true); do
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "/etc/netns/$ns"
  done
  local l
  for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep '^ftv[0-9]*$' || true); do
    ip link del "$l" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  rm -rf /var/lib/slurm/d/"$PREFIX"* "$STATE" /etc/slurm/gres.conf /etc/slurm/mpi.conf
  # Jobs of the test cluster are meaningless without it: forget them.
  rm -rf /var/lib/slurm/ctld/*
  [[ -f "$CONF" ]] && grep -q '^# Written by scripts/cluster-local.sh' "$CONF" && rm -f "$CONF"
  log "down: daemons stopped, namespaces, links and files removed"
}

cmd_status() {
  if [[ ! -f "$STATE/args" ]]; then
    echo "cluster-local: not up"
    return 1
  fi
  read -r n cpus gpus < "$STATE/args"
  echo "cluster-local: $n hosts, $cpus CPUs and gpu:$gpus each, bridge $BRIDGE ($SUBNET.1/24)"
  local i name st
  for ((i = 1; i <= n; i++)); do
    name="$(node "$i")"
    if alive "$(slurmd_pid "$i")"; then st="slurmd pid $(slurmd_pid "$i")"; else st="slurmd NOT running"; fi
    printf '  %-10s %-14s %s\n' "$name" "$(addr "$i")" "$st"
  done
  pgrep -x slurmctld >/dev/null && echo "  slurmctld running" || echo "  slurmctld NOT running"
  pgrep -x munged >/dev/null && echo "  munged running" || echo "  munged NOT running"
  sinfo -N -o '  %N %T %c %G' 2>/dev/null || true
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) usage ;;
esac
