#!/usr/bin/env bash
# Install fashion-pipeline on the kind or minikube cluster of the current kubectl context:
# cert-manager, Knative Serving with Kourier, KServe (Knative mode, for canaries), Argo Workflows and
# Argo Events from their release manifests, then this repository's argo/ (static manifests first,
# then the generated ones) with freshly generated credentials. Finally it port-forwards the Argo UI
# (https://localhost:2746), the retrain webhook (http://localhost:12000/retrain) and MinIO's S3 API
# (http://localhost:9000, where data drops land) in the background; scripts/cluster-down.sh stops them.
#
# Data drops need nothing more on MinIO's side: the EventSource fashion-drops (argo/drop-events.yaml)
# subscribes with MinIO's ListenBucketNotification API, which takes the bucket, prefix, suffix and
# events from the subscriber, so no notification target (`mc event add`, MINIO_NOTIFY_*) is configured;
# the store's bucket exists (the minio-buckets Job) before the EventSource is applied.
#
# The CronWorkflows (the nightly retrain, the drop reconciler) are applied last, once the step images
# are on the nodes: a schedule that fired before would leave pods in ErrImagePull. Images the nodes do
# not hold yet are built and loaded with scripts/build-image.sh (BUILD_IMAGE overrides the command).
#
# Usage: scripts/cluster-up.sh
# Re-running it is safe: it updates everything and keeps the credentials already in the cluster.
# Before installing anything it checks the cluster: Kubernetes >= 1.33 (Knative 1.21's minimum) and at
# least MIN_CPUS CPUs and MIN_MEMORY_GIB GiB allocatable in total, e.g. `minikube start --cpus 6
# --memory 12g`, or a kind cluster on a Docker/podman machine of that size.
# Env: ALLOW_ANY_CONTEXT=1 to install into a context that is not kind-* or minikube;
#      WAIT_TIMEOUT (default 600s) for each wait; RETRY_DELAY_S (default 5) between tries of an apply.
set -euo pipefail

# Pinned upstream versions.
CERT_MANAGER_VERSION=v1.17.0        # KServe needs cert-manager >= 1.17 for its webhooks' certificates
KNATIVE_SERVING_VERSION=knative-v1.21.1
KNATIVE_KOURIER_VERSION=knative-v1.21.0
KSERVE_VERSION=v0.20.0              # the InferenceService CRD that `fashion-pipeline lint` validates against
ARGO_WORKFLOWS_VERSION=v4.1.2       # the schema `fashion-pipeline lint` validates against
ARGO_EVENTS_VERSION=v1.9.11         # ditto
KUBERNETES_MIN_MINOR=33             # Knative Serving 1.21 needs Kubernetes >= 1.33

# The smallest cluster the pipeline schedules on: the upstream components' requests plus the pipeline's
# peak (a rollout with three predictor revisions: production, canary, restored production) next to
# MinIO. tests/unit/test_cluster_sizing.py holds the workflow's and the predictor's requests against it.
MIN_CPUS=6
MIN_MEMORY_GIB=12
# A VM given --memory 12g shows a few hundred MiB less allocatable (the kernel and the kubelet's
# reservations): the check accepts that much under the figure it advises.
MEMORY_SLACK_MIB=1024
# Knative resolves every revision's image tag to a digest at its registry, except for the registries
# listed here (knative/serving pkg/reconciler/revision/resolve.go at knative-v1.21.1; its default is
# kind.local,ko.local,dev.local). The step image, which serving_runtime=custom runs, is loaded into the
# nodes and exists in no registry, so docker.io (index.docker.io once normalised) is skipped too, as
# KServe's own Knative install does.
SKIP_TAG_RESOLVING=kind.local,ko.local,dev.local,index.docker.io,docker.io

CERT_MANAGER_URL="https://github.com/cert-manager/cert-manager/releases/download/${CERT_MANAGER_VERSION}/cert-manager.yaml"
KNATIVE_CRDS_URL="https://github.com/knative/serving/releases/download/${KNATIVE_SERVING_VERSION}/serving-crds.yaml"
KNATIVE_CORE_URL="https://github.com/knative/serving/releases/download/${KNATIVE_SERVING_VERSION}/serving-core.yaml"
KOURIER_URL="https://github.com/knative/net-kourier/releases/download/${KNATIVE_KOURIER_VERSION}/kourier.yaml"
KSERVE_URL="https://github.com/kserve/kserve/releases/download/${KSERVE_VERSION}"
ARGO_WORKFLOWS_URL="https://github.com/argoproj/argo-workflows/releases/download/${ARGO_WORKFLOWS_VERSION}/install.yaml"
ARGO_EVENTS_URL="https://github.com/argoproj/argo-events/releases/download/${ARGO_EVENTS_VERSION}/install.yaml"

NAMESPACE=fashion
PLACEHOLDER=REPLACED-BY-cluster-up.sh
WEBHOOK_SERVICE=fashion-retrain-eventsource-svc
PREDICTOR_HOST="fashion-mnist-predictor.$NAMESPACE.svc.cluster.local"  # <isvc>-predictor.<ns>.<Knative domain>
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${FASHION_PIPELINE_STATE_DIR:-$REPO/.cluster}"
PIDS_FILE="$STATE_DIR/port-forward.pids"
LOG="$STATE_DIR/cluster-up.log"
TIMEOUT="${WAIT_TIMEOUT:-600s}"
POLL_S="${POLL_S:-5}"
BUILD_IMAGE="${BUILD_IMAGE:-$REPO/scripts/build-image.sh}"

log() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'cluster-up: %s\n' "$*" >&2
  exit 1
}

require() {
  command -v "$1" >/dev/null 2>&1 || die "$1 is required ($2)"
}

# Upstream manifests are large (CRDs past the client-side annotation limit): apply server-side.
# Usage: apply_url URL [NAMESPACE] (for manifests whose namespaced objects name no namespace).
apply_url() {
  log "applying $1"
  kubectl apply --server-side --force-conflicts ${2:+--namespace "$2"} -f "$1" >>"$LOG"
}

apply_url_retrying() {
  local try
  for try in 1 2 3; do
    apply_url "$1" && return 0
    ((try < 3)) && log "retrying in 5 s" && sleep "${RETRY_DELAY_S:-5}"
  done
  die "could not apply $1 (3 tries); see $LOG"
}

wait_rollout() {
  kubectl -n "$1" rollout status "deployment/$2" --timeout="$TIMEOUT" >>"$LOG"
}

wait_deployments() {
  log "waiting for the deployments in namespace $1"
  kubectl -n "$1" wait --for=condition=Available deployment --all --timeout="$TIMEOUT" >>"$LOG"
}

wait_crds() {
  kubectl wait --for=condition=Established crd --all --timeout="$TIMEOUT" >>"$LOG"
}

ensure_namespace() {
  kubectl create namespace "$1" --dry-run=client -o yaml | kubectl apply -f - >>"$LOG"
}

check_context() {
  local context
  context="$(kubectl config current-context 2>/dev/null)" ||
    die "no current kubectl context: create a cluster first (kind create cluster, or minikube start)"
  case "$context" in
    kind-* | minikube | minikube-*) ;;
    *)
      [[ "${ALLOW_ANY_CONTEXT:-}" == 1 ]] ||
        die "context '$context' is neither kind-* nor minikube; set ALLOW_ANY_CONTEXT=1 to install into it anyway"
      ;;
  esac
  kubectl cluster-info >/dev/null 2>&1 || die "the cluster of context '$context' does not answer"
  log "installing into context $context"
}

install_upstream() {
  apply_url "$CERT_MANAGER_URL"
  wait_crds
  wait_deployments cert-manager

  apply_url "$KNATIVE_CRDS_URL"
  wait_crds
  apply_url "$KNATIVE_CORE_URL"
  apply_url "$KOURIER_URL"
  kubectl -n knative-serving patch configmap/config-network --type merge \
    -p '{"data":{"ingress-class":"kourier.ingress.networking.knative.dev"}}' >>"$LOG"
  kubectl -n knative-serving patch configmap/config-deployment --type merge \
    -p "{\"data\":{\"registries-skipping-tag-resolving\":\"$SKIP_TAG_RESOLVING\"}}" >>"$LOG"
  wait_deployments knative-serving
  wait_deployments kourier-system

  ensure_namespace kserve
  apply_url "$KSERVE_URL/kserve-crds.yaml"
  wait_crds
  apply_url "$KSERVE_URL/kserve.yaml"
  wait_deployments kserve
  # Its validating webhook may still refuse connections just after the Deployments are Available:
  # retried, as KServe's own installer does.
  apply_url_retrying "$KSERVE_URL/kserve-cluster-resources.yaml"
  configure_kserve

  ensure_namespace argo
  apply_url "$ARGO_WORKFLOWS_URL" argo
  # Dev only: the UI acts with the server's own ServiceAccount instead of asking for a token.
  kubectl -n argo patch deployment argo-server --type json \
    -p '[{"op":"replace","path":"/spec/template/spec/containers/0/args","value":["server","--auth-mode=server"]}]' \
    >>"$LOG"
  wait_rollout argo argo-server
  wait_deployments argo

  ensure_namespace argo-events
  apply_url "$ARGO_EVENTS_URL" argo-events
  wait_deployments argo-events
}

# Knative mode (canaryTrafficPercent works only there), and no Istio VirtualService: Kourier routes.
# The mode is renamed only if raw: KServe spells it Serverless/RawDeployment or Knative/Standard.
configure_kserve() {
  local config deploy ingress
  config="$(kubectl -n kserve get configmap inferenceservice-config -o json)"
  deploy="$(jq -r '.data.deploy // "{}"' <<<"$config" | jq -c '
    if .defaultDeploymentMode == "RawDeployment" then .defaultDeploymentMode = "Serverless"
    elif .defaultDeploymentMode == "Standard" then .defaultDeploymentMode = "Knative"
    else . end')"
  ingress="$(jq -r '.data.ingress // "{}"' <<<"$config" | jq -c '.disableIstioVirtualHost = true')"
  jq -n --arg deploy "$deploy" --arg ingress "$ingress" '{data: {deploy: $deploy, ingress: $ingress}}' |
    kubectl -n kserve patch configmap inferenceservice-config --type merge --patch-file /dev/stdin >>"$LOG"
  kubectl -n kserve rollout restart deployment kserve-controller-manager >>"$LOG"
  wait_rollout kserve kserve-controller-manager
}

# The value of a Secret's key in the cluster, or nothing.
secret_value() {
  kubectl -n "$NAMESPACE" get secret "$1" -o "jsonpath={.data.$2}" 2>/dev/null | base64 --decode 2>/dev/null || true
}

# Keep a credential that is already set; otherwise a new random one of $2 bytes (hex).
credential() {
  local current
  current="$(secret_value "$1" "$3")"
  if [[ -n "$current" && "$current" != "$PLACEHOLDER" ]]; then
    printf '%s' "$current"
  else
    openssl rand -hex "$2"
  fi
}

# The Secrets of argo/secrets.yaml (annotations and all) with the placeholders replaced.
apply_secrets() {
  local access_key secret_key token
  access_key="$(credential fashion-pipeline-s3 10 AWS_ACCESS_KEY_ID)"
  secret_key="$(credential fashion-pipeline-s3 24 AWS_SECRET_ACCESS_KEY)"
  token="$(credential fashion-pipeline-webhook 32 token)"
  log "applying the Secrets with generated credentials"
  # Through the environment, not argv: other users can read a process's arguments.
  ACCESS_KEY="$access_key" SECRET_KEY="$secret_key" TOKEN="$token" PLACEHOLDER="$PLACEHOLDER" awk '
    /^ *AWS_ACCESS_KEY_ID:/ { sub(ENVIRON["PLACEHOLDER"], ENVIRON["ACCESS_KEY"]) }
    /^ *AWS_SECRET_ACCESS_KEY:/ { sub(ENVIRON["PLACEHOLDER"], ENVIRON["SECRET_KEY"]) }
    /^ *token:/ { sub(ENVIRON["PLACEHOLDER"], ENVIRON["TOKEN"]) }
    { print }
  ' "$REPO/argo/secrets.yaml" | kubectl apply -f - >>"$LOG"
}

is_generated() {
  head -n 1 "$1" | grep -q '^# Generated by'
}

is_cron() {
  grep -q '^kind: CronWorkflow' "$1"
}

install_fashion_pipeline() {
  local manifest
  kubectl apply -f "$REPO/argo/namespace.yaml" >>"$LOG"
  apply_secrets
  # The bucket Job is immutable once created; it is idempotent, so run it afresh.
  kubectl -n "$NAMESPACE" delete job minio-buckets --ignore-not-found >>"$LOG"
  for manifest in "$REPO"/argo/*.yaml; do
    case "$(basename "$manifest")" in namespace.yaml | secrets.yaml) continue ;; esac
    if ! is_generated "$manifest" && ! is_cron "$manifest"; then
      log "applying ${manifest#"$REPO"/}"
      kubectl apply -f "$manifest" >>"$LOG"
    fi
  done
  wait_deployments "$NAMESPACE"
  log "waiting for the MinIO buckets"
  kubectl -n "$NAMESPACE" wait --for=condition=Complete job/minio-buckets --timeout="$TIMEOUT" >>"$LOG"
  for manifest in "$REPO"/argo/*.yaml; do
    if is_generated "$manifest" && ! is_cron "$manifest"; then
      log "applying ${manifest#"$REPO"/}"
      kubectl apply -f "$manifest" >>"$LOG"
    fi
  done
}

# The step images every node must hold before anything is scheduled to run in them (IfNotPresent).
load_step_images() {
  local held image node nodes=0 wanted missing=()
  wanted="$("$BUILD_IMAGE" --print-image)" || die "cannot tell which step images to load ($BUILD_IMAGE --print-image failed)"
  [[ -n "$wanted" ]] || die "$BUILD_IMAGE --print-image named no image"
  # Every node must hold every image: a node's pod may land on any of them (IfNotPresent, no registry).
  while IFS=$'\t' read -r node held || [[ -n "$node" ]]; do
    [[ -n "$node" ]] || continue
    nodes=$((nodes + 1))
    for image in $wanted; do
      [[ " $held " == *" $image "* ]] || missing+=("$image on $node")
    done
  done < <(kubectl get nodes -o 'jsonpath={range .items[*]}{.metadata.name}{"\t"}{.status.images[*].names[*]}{"\n"}{end}')
  ((nodes)) || missing+=("(no node listed its images)")
  if ((${#missing[@]})); then
    held="$(printf '%s, ' "${missing[@]}")"
    log "building and loading the step images the nodes lack: ${held%, }"
    "$BUILD_IMAGE" >>"$LOG" 2>&1 || die "the step images did not build or load; see $LOG"
  else
    log "the nodes hold the step images"
  fi
}

apply_cron_workflows() {
  local manifest
  for manifest in "$REPO"/argo/*.yaml; do
    if is_cron "$manifest"; then
      log "applying ${manifest#"$REPO"/}"
      kubectl apply -f "$manifest" >>"$LOG"
    fi
  done
}

# The minio EventSource subscribes once its pod runs; until then a drop would go unnoticed.
# (The controller labels its pods eventsource-name=<name>; `kubectl wait` fails while there are none yet.)
wait_for_drop_listener() {
  local ready="" tries=0
  log "waiting for the data-drop EventSource (fashion-drops)"
  until [[ "$ready" == *true* ]]; do
    tries=$((tries + 1))
    ((tries <= 120)) ||
      die "the fashion-drops EventSource did not become ready; see kubectl -n $NAMESPACE logs -l eventsource-name=fashion-drops"
    sleep "$POLL_S"
    ready="$(kubectl -n "$NAMESPACE" get pods -l eventsource-name=fashion-drops \
      -o 'jsonpath={.items[*].status.containerStatuses[*].ready}' 2>/dev/null || true)"
  done
}

wait_for_webhook() {
  local ready="" tries=0
  log "waiting for the webhook EventSource"
  until [[ -n "$ready" ]]; do
    tries=$((tries + 1))
    ((tries <= 120)) || die "the webhook EventSource did not become ready; see kubectl -n $NAMESPACE get eventsource,pods"
    sleep "$POLL_S"
    ready="$(kubectl -n "$NAMESPACE" get endpointslices -l "kubernetes.io/service-name=$WEBHOOK_SERVICE" \
      -o 'jsonpath={.items[*].endpoints[?(@.conditions.ready==true)].addresses[0]}' 2>/dev/null || true)"
  done
}

stop_port_forwards() {
  local pid
  [[ -f "$PIDS_FILE" ]] || return 0
  while read -r pid; do
    if [[ -n "$pid" ]] && [[ "$(ps -p "$pid" -o comm= 2>/dev/null)" == kubectl ]]; then
      kill "$pid"
    fi
  done <"$PIDS_FILE"
  rm -f "$PIDS_FILE"
}

port_forward() {
  local name="$1" namespace="$2" target="$3" ports="$4"
  nohup kubectl -n "$namespace" port-forward "$target" "$ports" >"$STATE_DIR/port-forward-$name.log" 2>&1 &
  echo "$!" >>"$PIDS_FILE"
}

# Kubernetes version and allocatable CPU/memory, before anything is installed.
check_cluster() {
  local minor cpu_milli memory_mi
  minor="$(kubectl version -o json | jq -r '.serverVersion.major + "." + .serverVersion.minor')" ||
    die "cannot read the cluster's Kubernetes version"
  minor="${minor%%+*}"
  if [[ "${minor%%.*}" != 1 ]] || ((${minor#*.} < KUBERNETES_MIN_MINOR)); then
    die "Kubernetes $minor is too old: Knative Serving 1.21 needs 1.$KUBERNETES_MIN_MINOR or newer (e.g. kind create cluster --image kindest/node:v1.33.1 with kind v0.29 or newer, or minikube start --kubernetes-version v1.33.1)"
  fi
  read -r cpu_milli memory_mi < <(kubectl get nodes -o json | jq -r '
    def cpu: if endswith("m") then .[:-1] | tonumber else tonumber * 1000 end;
    def mem: if endswith("Ki") then .[:-2] | tonumber / 1024
      elif endswith("Mi") then .[:-2] | tonumber
      elif endswith("Gi") then .[:-2] | tonumber * 1024
      else tonumber / 1048576 end;
    [.items[].status.allocatable] | "\(map(.cpu | cpu) | add | floor) \(map(.memory | mem) | add | floor)"')
  if ((cpu_milli < MIN_CPUS * 1000 || memory_mi < MIN_MEMORY_GIB * 1024 - MEMORY_SLACK_MIB)); then
    die "the cluster has $((cpu_milli / 1000)).$(((cpu_milli % 1000) / 100)) CPUs and $((memory_mi / 1024)) GiB allocatable; fashion-pipeline needs at least $MIN_CPUS CPUs and $MIN_MEMORY_GIB GiB (minikube start --cpus $MIN_CPUS --memory ${MIN_MEMORY_GIB}g; for kind, give Docker/podman that much)"
  fi
  log "cluster: Kubernetes $minor, $((cpu_milli / 1000)) CPUs, $((memory_mi / 1024)) GiB allocatable"
}

main() {
  require kubectl "https://kubernetes.io/docs/tasks/tools/"
  require jq "apt-get install jq"
  require openssl "apt-get install openssl"
  mkdir -p "$STATE_DIR"
  : >"$LOG"
  check_context
  check_cluster
  install_upstream
  install_fashion_pipeline
  load_step_images
  apply_cron_workflows
  wait_for_webhook
  wait_for_drop_listener
  stop_port_forwards
  port_forward argo-ui argo svc/argo-server 2746:2746
  port_forward webhook "$NAMESPACE" "svc/$WEBHOOK_SERVICE" 12000:12000
  port_forward minio "$NAMESPACE" svc/minio 9000:9000
  # Knative >= 1.8 serves *.svc.cluster.local on Kourier's internal gateway only (port 80 -> 8081):
  # `predict --url http://localhost:8081 --host-header fashion-mnist-predictor.fashion.svc.cluster.local`.
  port_forward predictor kourier-system svc/kourier-internal 8081:80
  cat <<EOF
fashion-pipeline is up (log: ${LOG#"$REPO"/}).
  Argo UI:   https://localhost:2746 (self-signed certificate)
  Webhook:   http://localhost:12000/retrain   -> scripts/trigger-retrain.sh epochs=2 train_limit=5000
  Drops:     MinIO on http://localhost:9000 (credentials: Secret fashion-pipeline-s3); deliver a folder with
             S3_ENDPOINT=http://localhost:9000 fashion-pipeline --store s3://fashion-pipeline drop DIR --id ID
             and the Sensor fashion-drops submits Workflow drop-ID (argo list -n $NAMESPACE)
  Predict:   fashion-pipeline predict --url http://localhost:8081 --host-header $PREDICTOR_HOST shoe.png
  Rebuild and load the step images after a code change: scripts/build-image.sh
  Run:       argo submit -n $NAMESPACE --from workflowtemplate/fashion-mnist-train-deploy -p epochs=10 --watch
  Stop the port-forwards: scripts/cluster-down.sh --keep
EOF
}

main
