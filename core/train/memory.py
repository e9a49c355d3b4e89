"""Native memory across training steps (``kernel_cache_limit``, ``reuse_memory``, ``trim_memory``).

Padding-free batches give every step a different shape. Two things grow with new shapes:

- oneDNN's primitive cache and ideep's computation cache (the CPU matmul kernels torch builds per
  shape) keep up to 1024 entries each by default, and each holds its own buffers. A step of the
  default workload uses a few dozen shapes, none of which recur in the next step, so bounding the
  caches to one step's worth (64 oneDNN primitives, 16 ideep computations) keeps the speed and
  took the default workload's peak from 2.8 to 2.0 GB. Both libraries read their capacity from the
  environment once, at their first matmul, so :func:`bound_kernel_caches` runs before the model
  loads; values already set in the environment win.
- glibc's allocator serves every block above its mmap threshold (128 KB, rising to at most 32 MB)
  with fresh pages from the kernel and unmaps it on free, so a step that allocates what the last
  one freed (activations, a gradient per weight, the vocabulary-sized head gradient) faults all of
  it in again, zero-filled by the kernel: 180,000-400,000 page faults per step of full fine-tuning
  on SmolLM2, a sixth of its time. :func:`reused_heap` turns mmap off for the training loop and
  keeps the freed heap, so later steps reuse warm pages (~500 faults a step); afterwards it
  restores the defaults and hands the heap back. The price is that memory freed mid-run stays
  with the process until the run ends.
- ``malloc_trim`` after every step returns the heap instead, at some speed (the next step faults
  the pages back in), hence a switch that is off by default and takes precedence over reuse.

No library exposes these (jemalloc/tcmalloc would, but they are not installable from pip), hence
ctypes calls into glibc; on another C library both are skipped.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from transformers import TrainerCallback

from factory.errors import ConfigError

log = logging.getLogger(__name__)

# mallopt parameters and glibc's defaults (malloc.h, mallopt(3)).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
KEEP_ALL = 2**31 - 1  # mallopt takes an int: the largest trim threshold it accepts

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


def _glibc(name: str) -> Any:
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def _malloc_trim() -> Any:
    return _glibc("malloc_trim")


@contextmanager
def reused_heap(enabled: bool = True) -> Iterator[None]:
    """Within the block, glibc serves large blocks from its heap and keeps what is freed (see the module's notes).

    Process-wide while it lasts. On exit the defaults come back and the freed heap is returned to
    the system, so a long-lived process (the web UI, a model server) does not keep a run's peak.
    """
    mallopt, trim = _glibc("mallopt"), _malloc_trim()
    if not enabled or mallopt is None or trim is None:
        yield
        return
    applied = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, KEEP_ALL) == 1
    if not applied:
        log.debug("glibc refused mallopt; freed memory is returned to the system as usual")
    try:
        yield
    finally:
        mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        trim(0)


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
