"""reuse_memory: glibc keeps freed blocks for the next step instead of faulting fresh pages in."""

from __future__ import annotations

import ctypes.util
import resource

import pytest
import torch

from factory.train.memory import reused_heap

pytestmark = pytest.mark.skipif(
    ctypes.util.find_library("c") is None or not hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallopt"),
    reason="reuse_memory is glibc's mallopt; other C libraries keep their own behaviour",
)

BLOCK = 64 * 2**20  # above glibc's largest mmap threshold (32 MB): always mmapped by default
PAGES = BLOCK // 4096


def _faults_of_a_second_block() -> int:
    """Minor page faults of writing a fresh tensor of most of BLOCK right after a BLOCK-sized one was freed.

    A little smaller, as a training step's next activations or gradients are: an allocation of exactly the
    freed size does not fit the freed chunk once torch's 64-byte alignment is added.
    """
    first = torch.empty(BLOCK, dtype=torch.uint8).fill_(1)
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = torch.empty(BLOCK - 2**20, dtype=torch.uint8).fill_(2)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del second
    return faults


def test_freed_blocks_are_reused_inside_and_returned_outside():
    assert _faults_of_a_second_block() > PAGES // 2  # the default: a fresh mapping, faulted in page by page
    with reused_heap():
        assert _faults_of_a_second_block() < PAGES // 20
    assert _faults_of_a_second_block() > PAGES // 2  # defaults restored on exit


def test_switched_off_it_changes_nothing():
    with reused_heap(False):
        assert _faults_of_a_second_block() > PAGES // 2
