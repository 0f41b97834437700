#!/usr/bin/env bash
# Sourced by the image scripts: pick_engine CANDIDATE... prints $CONTAINER_ENGINE if set, otherwise the
# first candidate that is installed and answers; nothing (and status 1) when none does.
pick_engine() {
  if [[ -n "${CONTAINER_ENGINE:-}" ]]; then
    printf '%s\n' "$CONTAINER_ENGINE"
    return 0
  fi
  local candidate
  for candidate in "$@"; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" info >/dev/null 2>&1; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  return 1
}
