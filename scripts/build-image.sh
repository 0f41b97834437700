#!/usr/bin/env bash
# Build the step images (images/Dockerfile) with docker or podman: docker.io/fashion-pipeline/steps:<version>
# and its slim flavour ...:<version>-slim (no TensorFlow, for the steps that never import it), under the
# exact, fully qualified names the templates reference (podman would otherwise tag localhost/..., which
# no kind or minikube node resolves), then load both into the kind or minikube cluster of the current
# kubectl context, where imagePullPolicy IfNotPresent finds them.
#
# Usage: scripts/build-image.sh [--no-load] [--no-cache] [--print-image]
# Env: CONTAINER_ENGINE=docker|podman (default: whichever answers, docker first);
#      PYTHON_IMAGE: the base (default python:3.11-slim-bookworm; scripts/build-base-image.sh makes
#      an equivalent one from Debian packages where no registry can be reached).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() {
  printf 'build-image: %s\n' "$*" >&2
  exit 1
}

# The name workflows/templates.py puts in every step: docker.io/fashion-pipeline/steps:<steps.__version__>.
version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO/steps/__init__.py")"
[[ -n "$version" ]] || die "no __version__ in steps/__init__.py"
image="docker.io/fashion-pipeline/steps:$version"
images=("$image" "$image-slim") # FLAVOR=full, FLAVOR=slim

load=1
build_args=()
for arg in "$@"; do
  case "$arg" in
    --no-load) load=0 ;;
    --no-cache) build_args+=(--no-cache) ;;
    --print-image)
      printf '%s\n' "${images[@]}"
      exit 0
      ;;
    *) die "unknown argument '$arg' (usage: scripts/build-image.sh [--no-load] [--no-cache] [--print-image])" ;;
  esac
done

# shellcheck source=scripts/lib/container-engine.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/container-engine.sh"
engine="$(pick_engine docker podman)" || die "no container engine answers: install and start docker or podman"

# The same code version steps/registry.py records when run from a checkout: <version>+g<sha>[.dirty].
revision="unknown"
code_version="$version"
if sha="$(git -C "$REPO" rev-parse --short=12 HEAD 2>/dev/null)"; then
  revision="$(git -C "$REPO" rev-parse HEAD)"
  code_version="$version+g$sha"
  if [[ -n "$(git -C "$REPO" status --porcelain --untracked-files=no)" ]]; then
    code_version="$code_version.dirty"
  fi
fi
# Never put credentials embedded in a remote URL into an image label.
source_url="$(git -C "$REPO" config --get remote.origin.url 2>/dev/null | sed -E 's#://[^/@]+@#://#' || true)"

[[ -n "${PYTHON_IMAGE:-}" ]] && build_args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
# The machine's package-index configuration reaches pip inside the build: podman mounts the pip
# config and CA bundle read-only for the RUN steps; both engines get pip's environment variables.
pip_vars=(PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_DEFAULT_TIMEOUT)
if [[ "$engine" == podman ]]; then
  for path in /etc/pip.conf /etc/ssl/certs "${PIP_CONFIG_FILE:-}" "${PIP_CERT:-}"; do
    if [[ -n "$path" && -e "$path" ]]; then build_args+=(--volume "$path:$path:ro"); fi
  done
  pip_vars+=(PIP_CONFIG_FILE PIP_CERT) # paths, mounted above
fi
for var in "${pip_vars[@]}"; do
  if [[ -n "${!var:-}" ]]; then build_args+=(--build-arg "$var=${!var}"); fi
done

for flavor in full slim; do
  tag="$image"
  [[ "$flavor" == full ]] || tag="$image-$flavor"
  "$engine" build \
    --network host \
    "${build_args[@]}" \
    --file "$REPO/images/Dockerfile" \
    --build-arg "FLAVOR=$flavor" \
    --build-arg "VERSION=$version" \
    --build-arg "CODE_VERSION=$code_version" \
    --build-arg "REVISION=$revision" \
    --build-arg "SOURCE=${source_url:-unknown}" \
    --tag "$tag" \
    "$REPO"
  printf 'built %s (%s)\n' "$tag" "$code_version"
done

((load)) || exit 0
context="$(kubectl config current-context 2>/dev/null)" || die "no current kubectl context to load $image into (or pass --no-load)"
archive="$(mktemp -d)"
trap 'rm -rf "$archive"' EXIT
for tag in "${images[@]}"; do
  # Through an archive, which kind and minikube both take from either engine.
  "$engine" save --output "$archive/image.tar" "$tag"
  case "$context" in
    kind-*)
      require_kind="$(command -v kind)" || die "kind is not installed"
      "$require_kind" load image-archive "$archive/image.tar" --name "${context#kind-}"
      ;;
    minikube | minikube-*)
      command -v minikube >/dev/null 2>&1 || die "minikube is not installed"
      minikube --profile "$context" image load "$archive/image.tar"
      ;;
    *) die "context '$context' is neither kind-* nor minikube: push ${images[*]} to a registry the cluster pulls from" ;;
  esac
  rm -f "$archive/image.tar"
  printf 'loaded %s into %s\n' "$tag" "$context"
done
