#!/usr/bin/env bash
# Build a Python 3.11 Debian bookworm base image from Debian packages (debootstrap), equivalent to
# python:3.11-slim-bookworm for the step image, for air-gapped machines where no image registry
# can be pulled from. The result is imported as a local image; pass it to the step image build:
#   scripts/build-base-image.sh && PYTHON_IMAGE=localhost/fashion-pipeline/python:3.11-bookworm scripts/build-image.sh
#
# Usage: scripts/build-base-image.sh [--print-image]
# Env: CONTAINER_ENGINE=docker|podman (default: whichever answers, podman first);
#      DEBIAN_MIRROR (default http://deb.debian.org/debian); BASE_IMAGE (the name to import as).
# Needs root (debootstrap) and debootstrap itself (apt-get install debootstrap).
set -euo pipefail

BASE_IMAGE="${BASE_IMAGE:-localhost/fashion-pipeline/python:3.11-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

die() {
  printf 'build-base-image: %s\n' "$*" >&2
  exit 1
}

for arg in "$@"; do
  case "$arg" in
    --print-image)
      printf '%s\n' "$BASE_IMAGE"
      exit 0
      ;;
    *) die "unknown argument '$arg' (usage: scripts/build-base-image.sh [--print-image])" ;;
  esac
done

command -v debootstrap >/dev/null 2>&1 || die "debootstrap is not installed (apt-get install debootstrap)"
[[ "$(id -u)" == 0 ]] || die "debootstrap needs root: run it as root (or with sudo)"

# shellcheck source=scripts/lib/container-engine.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/container-engine.sh"
engine="$(pick_engine podman docker)" || die "no container engine answers: install and start podman or docker"

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
# minbase: no init system, no docs tools; python3 of bookworm is 3.11, venv for the step image's
# builder stage, CA certificates for pip over HTTPS.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$MIRROR" >&2
# The python:3.11 images' conventions: `python` is Python 3, apt lists and caches are not shipped.
ln -sf python3 "$root/usr/bin/python"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
tar -C "$root" -c . | "$engine" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$BASE_IMAGE" >/dev/null
printf 'built %s\n' "$BASE_IMAGE"
