"""reuse_memory: glibc keeps freed blocks for the next step instead of faulting fresh pages in.

Each check runs in a fresh interpreter: glibc's allocator settings are process-wide, and the test
process has already trained many times with its own.
"""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    ctypes.util.find_library("c") is None or not hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallopt"),
    reason="reuse_memory is glibc's mallopt; other C libraries keep their own behaviour",
)

BLOCK = 64 * 2**20  # above glibc's largest mmap threshold (32 MB): always mmapped by default

PROBE = f"""
import json, resource, sys, torch
from factory.train.memory import reused_heap

def second_block():
    # Page faults of writing a fresh tensor of most of BLOCK right after a BLOCK-sized one was freed: a little
    # smaller, as a step's next activations or gradients are (exactly the freed size does not fit the freed
    # chunk once torch's 64-byte alignment is added).
    first = torch.empty({BLOCK}, dtype=torch.uint8).fill_(1)
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = torch.empty({BLOCK - 2**20}, dtype=torch.uint8).fill_(2)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del second
    return faults

enabled = sys.argv[1] == "on"
default = second_block()
with reused_heap(enabled):
    inside = second_block()
print(json.dumps([default, inside, second_block()]))
"""


def _faults(switch: str) -> list[int]:
    done = subprocess.run([sys.executable, "-c", PROBE, switch], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_inside_and_returned_outside():
    # Relative to the default, so huge pages (THP "always": 512 times fewer faults) do not matter.
    default, inside, after = _faults("on")
    assert default > 0  # the default: a fresh mapping, faulted in page by page
    assert inside * 20 < default
    assert after * 2 > default  # defaults restored on exit


def test_switched_off_it_changes_nothing():
    faults = _faults("off")
    assert min(faults) * 2 > max(faults) > 0
