#!/usr/bin/env bash
# The pipeline on the embedded default, step by step as the workflow runs it:
# fetch-dataset -> train -> evaluate -> gate -> (promote when the gate says so).
set -euo pipefail
cd "$(dirname "$0")/.."
fp=".venv/bin/fashion-pipeline"
out="outputs/$(date -u +%Y%m%d-%H%M%S)"

"$fp" fetch --out "$out/fetch"
dataset=$(cat "$out/fetch/dataset_uri")
"$fp" train --dataset "$dataset" --out "$out/train" "$@"
"$fp" evaluate --dataset "$dataset" --model "$(cat "$out/train/model_version")" --out "$out/evaluate"
"$fp" gate --metrics "$out/evaluate/metrics.json" --out "$out/gate"
if [ "$(cat "$out/gate/decision")" = promote ]; then
  "$fp" models promote "$(cat "$out/gate/model_version")" --reason "gate decision in $out/gate/decision.json"
else
  echo "gate rejected the candidate; production is unchanged (see $out/gate/decision.json)"
fi
echo "reports: $out"
