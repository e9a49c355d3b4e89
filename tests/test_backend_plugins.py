"""The quantization and kernel-patch plugins as ``factory plugins list --json`` shows them on this machine.

Each plugin's own tests check its behaviour; this one checks the listing a user sees, with the
status each plugin must have here: the CPU-capable backends ``ok``, the GPU-only patches
``unavailable`` with the compute capability they need (or ``ok`` where such a GPU exists).
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest

from factory import hardware

GPU_ONLY = {
    "factory-plugin-flash-attn": (
        {"patches": ["flash-attn", "flash-attn3"]},
        "unavailable: flash-attn needs a CUDA GPU with compute capability >= 8.0; none was found on this machine; "
        "flash-attn3 needs a CUDA GPU with compute capability >= 9.0; none was found on this machine",
    ),
    "factory-plugin-liger": (
        {"patches": ["liger"]},
        "unavailable: needs a CUDA GPU with compute capability >= 7.0; none was found on this machine",
    ),
}
ANYWHERE = {
    "factory-plugin-bitsandbytes": {"quantizers": ["bnb-4bit", "bnb-8bit"]},
    "factory-plugin-gptq": {"quantizers": ["gptq"]},
    "factory-plugin-awq": {"quantizers": ["awq"]},
    "factory-plugin-aqlm": {"quantizers": ["aqlm"]},
    "factory-plugin-s2attn": {"patches": ["s2attn"]},
}


def installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="module")
def listing() -> dict[str, dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "factory.cli", "plugins", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return {row["distribution"]: row for row in json.loads(proc.stdout)}


@pytest.mark.parametrize("distribution", sorted(ANYWHERE))
def test_cpu_capable_backends_are_ok(listing, distribution):
    if not installed(distribution):
        pytest.skip(f"{distribution} is not installed")
    row = listing[distribution]
    assert (row["provides"], row["status"], row["reason"]) == (ANYWHERE[distribution], "ok", None)


@pytest.mark.parametrize("distribution", sorted(GPU_ONLY))
def test_gpu_only_patches_say_what_they_need(listing, distribution):
    if not installed(distribution):
        pytest.skip(f"{distribution} is not installed")
    provides, status = GPU_ONLY[distribution]
    row = listing[distribution]
    assert row["provides"] == provides
    if hardware.cuda_devices():
        assert row["status"] in ("ok", status) or row["status"].startswith("unavailable: needs the package")
    else:
        assert row["status"] == status
        assert row["reason"] == status.removeprefix("unavailable: ")
