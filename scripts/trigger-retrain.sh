#!/usr/bin/env bash
# POST a retrain event to the webhook (port-forwarded by scripts/cluster-up.sh), with a fresh
# event id and the bearer token of the Secret fashion-pipeline-webhook.
#
# Usage: scripts/trigger-retrain.sh [KEY=VALUE ...]
#   e.g. scripts/trigger-retrain.sh epochs=2 train_limit=5000 reason="new drop"
# KEY is a field of workflows/triggers/retrain-payload.schema.json; VALUE is typed by that schema
# (numbers and true/false for numeric and boolean fields, text otherwise).
# Env: WEBHOOK_URL (default http://localhost:12000/retrain), EVENT_ID (default: a fresh one),
#      FASHION_PIPELINE_WEBHOOK_TOKEN (default: read from the cluster).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCHEMA="$REPO/workflows/triggers/retrain-payload.schema.json"
NAMESPACE=fashion
URL="${WEBHOOK_URL:-http://localhost:12000/retrain}"

die() {
  printf 'trigger-retrain: %s\n' "$*" >&2
  exit 1
}

command -v jq >/dev/null 2>&1 || die "jq is required (apt-get install jq)"
command -v curl >/dev/null 2>&1 || die "curl is required (apt-get install curl)"

event_id="${EVENT_ID:-manual-$(date -u +%Y%m%d-%H%M%S)-$RANDOM}"
payload="$(jq -n --arg id "$event_id" '{event_id: $id}')"
for pair in "$@"; do
  [[ "$pair" == *=* ]] || die "expected KEY=VALUE, got '$pair'"
  key="${pair%%=*}"
  value="${pair#*=}"
  type="$(jq -r --arg key "$key" '.properties[$key].type // "unknown"' "$SCHEMA")"
  case "$type" in
    unknown)
      die "'$key' is not something an event may set (the fields are: $(jq -r '.properties | keys_unsorted | join(", ")' "$SCHEMA")); the gate and rollout policy, the store and the target are the operator's: the WorkflowTemplate's arguments"
      ;;
    string) payload="$(jq --arg key "$key" --arg value "$value" '. + {($key): $value}' <<<"$payload")" ;;
    *)
      payload="$(jq --arg key "$key" --argjson value "$value" '. + {($key): $value}' <<<"$payload" 2>/dev/null)" ||
        die "$key must be a JSON $type, got '$value'"
      ;;
  esac
done

token="${FASHION_PIPELINE_WEBHOOK_TOKEN:-}"
if [[ -z "$token" ]]; then
  token="$(kubectl -n "$NAMESPACE" get secret fashion-pipeline-webhook -o 'jsonpath={.data.token}' | base64 --decode)" ||
    die "cannot read the webhook token from the cluster; set FASHION_PIPELINE_WEBHOOK_TOKEN"
fi

# The header goes through stdin: a token on the command line is visible to every user.
printf 'Authorization: Bearer %s\n' "$token" |
  curl --fail --silent --show-error --request POST "$URL" \
    --header @- --header 'Content-Type: application/json' --data-binary "$payload" ||
  die "the webhook at $URL did not take the event (is the port-forward of scripts/cluster-up.sh running?)"
printf '\nsent %s\n' "$payload"
cat <<EOT
The Sensor submits Workflow retrain-$event_id if the payload keeps the contract (it drops the
event otherwise; see kubectl -n $NAMESPACE logs -l sensor-name=fashion-retrain). Follow it with:
  argo -n $NAMESPACE watch retrain-$event_id
EOT
