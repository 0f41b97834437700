"""What this CPU can do, where it changes how TensorFlow should run."""

from __future__ import annotations

# A container's limits.cpu in whole CPUs (rounded up): the train template sets it through the downward
# API (resourceFieldRef), `fashion-pipeline train --threads` reads it.
CPU_LIMIT_ENV = "FASHION_PIPELINE_CPU_LIMIT"


def cpu_has_bf16() -> bool:
    """AMX or AVX-512 BF16: oneDNN then runs bfloat16 convolutions natively (several times faster).

    Without them bfloat16 is emulated: measured on a 2-core AVX2 EPYC, the default CNN trained
    4.8x slower in mixed_bfloat16 than in float32.
    """
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags
