#!/usr/bin/env bash
# A one-host Slurm for trying the sbatch templates: `scripts/cluster-local.sh up 1` (a single
# network-namespace host, ftnode1, with its own slurmd; slurmctld and munged on this machine).
# Kept for older instructions; see cluster-local.sh for N hosts, `status` and `down`.
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/cluster-local.sh" up 1 "$@"
