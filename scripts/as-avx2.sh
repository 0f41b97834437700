#!/usr/bin/env bash
# Run a command as on an AVX2-only CPU, on a machine with AVX-512 or AMX (the "AVX2" tier, emulated).
#
#   scripts/as-avx2.sh fashion-pipeline run
#
# In a private mount namespace (unshare -m, needs root or CAP_SYS_ADMIN), /proc/cpuinfo is replaced by
# a copy without the avx512*, amx* and avx_vnni* flags, which is how the project tells the tier (steps/hardware.py),
# and oneDNN is capped to AVX2 (ONEDNN_MAX_CPU_ISA), which is what it can use on such a CPU.
# What no mount can fake: TensorFlow's own oneDNN default comes from CPUID, so under emulation it would
# be on where a real AVX2 CPU leaves it off; the script sets that default (off) instead. The project
# decides oneDNN explicitly from the tier (TF_ENABLE_ONEDNN_OPTS), so a run takes the same path here
# as there, and so does anything run beside it (a test, a plain Keras loop).
set -euo pipefail

if (($# == 0)); then
  echo "usage: $0 COMMAND [ARG...]" >&2
  exit 2
fi
if [[ "${FASHION_PIPELINE_AS_AVX2:-}" != inside ]]; then
  if ! command -v unshare >/dev/null; then
    echo "$0: unshare (util-linux) is needed to emulate an AVX2-only CPU" >&2
    exit 1
  fi
  FASHION_PIPELINE_AS_AVX2=inside exec unshare --mount --propagation private "$0" "$@"
fi
unset FASHION_PIPELINE_AS_AVX2

cpuinfo="$(mktemp /dev/shm/cpuinfo-avx2.XXXXXX)"
# AVX-VNNI (VEX-encoded, on some CPUs without AVX-512) goes too: with it TensorFlow would turn oneDNN on
# by itself, as it never does on the AVX2-only EPYC this tier stands for.
sed -E '/^flags/ s/ (avx512[a-z0-9_]*|amx[a-z0-9_]*|avx_vnni[a-z0-9_]*)//g' /proc/cpuinfo >"$cpuinfo"
mount --bind "$cpuinfo" /proc/cpuinfo
rm -f "$cpuinfo" # the mount keeps it open; nothing is left behind
export ONEDNN_MAX_CPU_ISA=AVX2
# TensorFlow's own default on a real AVX2-only CPU is oneDNN off, but it reads CPUID, which no mount
# changes: give every process that default. The project's CLI decides over it as it decides over
# TensorFlow's (steps/hardware.py, EMULATED_DEFAULT_ENV); a value already set is the user's and stays.
if [[ -z "${TF_ENABLE_ONEDNN_OPTS+set}" ]]; then
  export TF_ENABLE_ONEDNN_OPTS=0 FASHION_PIPELINE_ONEDNN_EMULATED=1
fi
exec "$@"
