"""Keep native memory from growing with every new batch shape (``kernel_cache_limit``, ``trim_memory``).

Padding-free batches give every step a different shape. Two things grow with new shapes:

- oneDNN's primitive cache and ideep's computation cache (the CPU matmul kernels torch builds per
  shape) keep up to 1024 entries each by default, and each holds its own buffers. A step of the
  default workload uses a few dozen shapes, none of which recur in the next step, so bounding the
  caches to one step's worth (64 oneDNN primitives, 16 ideep computations) keeps the speed and
  took the default workload's peak from 2.8 to 2.0 GB. Both libraries read their capacity from the
  environment once, at their first matmul, so :func:`bound_kernel_caches` runs before the model
  loads; values already set in the environment win.
- glibc's allocator keeps freed blocks: ``malloc_trim`` after every step returns them, at some
  speed (the next step faults the pages back in), hence a switch that is off by default. No
  library exposes this (jemalloc/tcmalloc would, but they are not installable from pip).
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

from transformers import TrainerCallback

from factory.errors import ConfigError

# Measured on the default workload (docs/performance.md): 64 oneDNN primitives hold one step's
# kernels; below that the kernels of each layer are rebuilt (16: -18% speed). ideep's cache only
# saves a lookup, so 16 costs nothing.
KERNEL_CACHE_LIMITS = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64", "LRU_CACHE_CAPACITY": "16"}


def bound_kernel_caches() -> None:
    """Bound torch's CPU kernel caches for this process, unless the environment already sizes them.

    Process-wide and read once: it has no effect if this process already ran a oneDNN matmul.
    """
    for name, value in KERNEL_CACHE_LIMITS.items():
        os.environ.setdefault(name, value)


def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class TrimHeap(TrainerCallback):
    """Calls glibc's ``malloc_trim(0)`` at the end of each optimizer step."""

    def __init__(self) -> None:
        trim = _malloc_trim()
        if trim is None:
            raise ConfigError(
                "trim_memory=true needs glibc's malloc_trim, which this system's C library lacks; set trim_memory=false"
            )
        self._trim = trim

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._trim(0)
