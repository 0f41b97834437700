#!/usr/bin/env bash
# Undo scripts/cluster-up.sh: stop its port-forwards and delete the namespace fashion (the
# pipeline's workflows, MinIO and its data, the Secrets). The upstream components stay installed;
# to remove everything, delete the cluster (kind delete cluster / minikube delete).
#
# Usage: scripts/cluster-down.sh [--keep]    (--keep: only stop the port-forwards)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${FASHION_PIPELINE_STATE_DIR:-$REPO/.cluster}"
PIDS_FILE="$STATE_DIR/port-forward.pids"
NAMESPACE=fashion

die() {
  printf 'cluster-down: %s\n' "$*" >&2
  exit 1
}

keep=0
for arg in "$@"; do
  case "$arg" in
    --keep) keep=1 ;;
    *) die "unknown argument '$arg' (usage: scripts/cluster-down.sh [--keep])" ;;
  esac
done

# Only the processes cluster-up started, by the PIDs it wrote, and only if they are still kubectl.
if [[ -f "$PIDS_FILE" ]]; then
  while read -r pid; do
    if [[ -n "$pid" ]] && [[ "$(ps -p "$pid" -o comm= 2>/dev/null)" == kubectl ]]; then
      kill "$pid"
      printf 'stopped port-forward %s\n' "$pid"
    fi
  done <"$PIDS_FILE"
  rm -f "$PIDS_FILE"
fi

((keep)) && exit 0
kubectl delete namespace "$NAMESPACE" --ignore-not-found --wait=true
