"""What this CPU can do, where it changes how TensorFlow should run: the tier, bfloat16, oneDNN.

Three tiers of 2-core x86 machine run this project, and the same training differs 10x between them
(README, "Measured"). The tier is read from /proc/cpuinfo, the file `scripts/as-avx2.sh` replaces to
run a command as on an AVX2-only CPU.
"""

from __future__ import annotations

import os
import platform
from collections.abc import MutableMapping

# A container's limits.cpu in whole CPUs (rounded up): the train template sets it through the downward
# API (resourceFieldRef), `fashion-pipeline train --threads` reads it.
CPU_LIMIT_ENV = "FASHION_PIPELINE_CPU_LIMIT"
ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
# Set by scripts/as-avx2.sh beside TF_ENABLE_ONEDNN_OPTS=0: that value is TensorFlow's own default on
# a real AVX2 CPU (which the emulation cannot make TensorFlow see), not a user's choice.
EMULATED_DEFAULT_ENV = "FASHION_PIPELINE_ONEDNN_EMULATED"

AMX = "amx"
AVX512_BF16 = "avx512-bf16"
AVX512 = "avx512"
AVX2 = "avx2"
BASELINE = "baseline"  # x86 without AVX2, or a CPU whose flags cannot be read
ARM64 = "arm64"
# Where oneDNN runs bfloat16 natively: AMX, or AVX-512 BF16. Elsewhere oneDNN emulates it: measured on
# an AVX2-only EPYC, the default CNN trained 4.8x slower in mixed_bfloat16 than in float32.
BF16_TIERS = (AMX, AVX512_BF16)


def _cpuinfo(*keys: str) -> str:
    """The first value of any of `keys` in /proc/cpuinfo ('' when unreadable or absent)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in keys:
                    return value.strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> set[str]:
    """The flags of the first CPU in /proc/cpuinfo (x86 `flags`, arm64 `Features`); empty when unreadable."""
    return set(_cpuinfo("flags", "Features").split())


def cpu_tier(flags: set[str] | None = None) -> str:
    """The tier this CPU trains in: amx, avx512-bf16, avx512, avx2, arm64 or baseline."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        return ARM64
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return AMX
    if "avx512_bf16" in flags:
        return AVX512_BF16
    if "avx512f" in flags:
        return AVX512
    return AVX2 if "avx2" in flags else BASELINE


def cpu_has_bf16() -> bool:
    """AMX or AVX-512 BF16: oneDNN runs bfloat16 convolutions natively (1.8x float32 on AVX-512 BF16)."""
    return cpu_tier() in BF16_TIERS


def cpu_model() -> str:
    """The CPU's model name as lscpu shows it ('' when unreadable)."""
    return _cpuinfo("model name")


# The CPUID features with which TensorFlow turns oneDNN on by itself on Linux (TF_ENABLE_ONEDNN_OPTS
# unset): DefaultOneDnnPolicy in tensorflow/core/util/util.cc. A CPU without any of them (an AVX2-only
# one) runs TensorFlow's Eigen kernels unless told.
TENSORFLOW_ONEDNN_FLAGS = frozenset({"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"})


def tensorflow_enables_onednn(flags: set[str] | None = None) -> bool:
    """Whether TensorFlow, left to itself, turns oneDNN on on this x86 CPU (read from /proc/cpuinfo).

    Under scripts/as-avx2.sh that is what it would decide on a real AVX2-only CPU; TensorFlow itself
    reads CPUID, which the emulation cannot change, so a baseline that stands for "TensorFlow's
    default" there must be given this value explicitly.
    """
    return bool((cpu_flags() if flags is None else flags) & TENSORFLOW_ONEDNN_FLAGS)


def onednn_wanted(tier: str) -> bool:
    """Whether the project turns oneDNN on here (False leaves it to TensorFlow).

    TensorFlow turns oneDNN on by itself only where CPUID shows AVX-512 VNNI/BF16 or AMX. On an
    AVX2-only CPU it runs its Eigen kernels, and oneDNN trains the default CNN 2.0x faster there
    (655 vs 1,323 images/s, DESIGN.md "CPU tiers"). On arm64 TensorFlow's own choice (oneDNN with ACL
    where it pays) stands, and below AVX2 nothing was measured.
    """
    return tier not in (ARM64, BASELINE)


def decide_onednn(environ: MutableMapping[str, str] | None = None, tier: str | None = None) -> str | None:
    """Set TF_ENABLE_ONEDNN_OPTS for this process (and those it starts) before TensorFlow loads.

    A value the user set wins; the one scripts/as-avx2.sh sets (TensorFlow's own default on a real
    AVX2 CPU, marked by EMULATED_DEFAULT_ENV) is decided over, as TensorFlow's default is. Returns the
    value in force ('0', '1') or None where TensorFlow decides.
    """
    env = os.environ if environ is None else environ
    if ONEDNN_ENV in env and not env.get(EMULATED_DEFAULT_ENV):
        return env[ONEDNN_ENV]
    if not onednn_wanted(cpu_tier() if tier is None else tier):
        return env.get(ONEDNN_ENV)
    env[ONEDNN_ENV] = "1"
    return "1"


def onednn_in_force(environ: MutableMapping[str, str] | None = None) -> bool:
    """Whether TensorFlow in this process runs oneDNN: TF_ENABLE_ONEDNN_OPTS if set, else its own default."""
    value = (os.environ if environ is None else environ).get(ONEDNN_ENV)
    if value is None:
        return tensorflow_enables_onednn()
    return value.strip().lower() in ("1", "true")


def bfloat16_problem(tier: str | None = None, onednn: bool | None = None) -> str | None:
    """Why training in bfloat16 cannot run on this CPU (None: it can).

    oneDNN has bfloat16 convolutions from AVX-512 up (emulated on AVX-512 without BF16, native with
    it or AMX). On an AVX2-only CPU with oneDNN on, which the project turns on there, TensorFlow
    fails at the first convolution ("could not create a primitive descriptor").
    """
    tier = cpu_tier() if tier is None else tier
    if tier in (AVX2, BASELINE) and (onednn_in_force() if onednn is None else onednn):
        return f"oneDNN has no bfloat16 convolutions on this CPU (tier {tier}; they need AVX-512 or AMX)"
    return None
