"""The precision a run computes in, resolved from the config and the machine.

Its own module because both the model pipeline and the quantizer helpers need it, and neither
may import the other.
"""

from __future__ import annotations

from typing import Any

from factory import hardware


def resolve_precision(precision: str) -> str:
    """``auto`` -> bf16 where the device has it (CUDA >= 8.0, or a CPU with AMX/AVX512-BF16), else fp16 on CUDA, else fp32."""
    if precision != "auto":
        return precision
    gpus = hardware.cuda_devices()
    if gpus:
        return "bf16" if any(g.capability >= (8, 0) for g in gpus) else "fp16"
    return "bf16" if hardware.cpu_supports_bf16() else "fp32"


def torch_dtype(precision: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
