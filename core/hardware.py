"""What this machine can do, found without importing torch.

``factory plugins list`` must answer in well under two seconds, so the device facts behind
"available here?" come from ``nvidia-smi`` and ``/proc/cpuinfo`` rather than from torch.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class CudaDevice:
    name: str
    capability: tuple[int, int]


@functools.lru_cache(maxsize=1)
def cuda_devices() -> tuple[CudaDevice, ...]:
    """The CUDA GPUs visible here (empty on a CPU-only machine or with CUDA_VISIBLE_DEVICES='')."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return ()
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    devices = []
    for line in out.splitlines():
        name, _, cap = line.rpartition(",")
        try:
            major, minor = (int(x) for x in cap.strip().split("."))
        except ValueError:
            continue
        devices.append(CudaDevice(name.strip(), (major, minor)))
    return tuple(devices)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where that file does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 matrix instructions (AMX-BF16 or AVX512-BF16)."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())
