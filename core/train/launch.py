"""Data-parallel runs: ``nproc=N`` re-launches the same run under torchrun (gloo on CPU)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from factory.config import RunConfig
from factory.errors import FactoryError
from factory.train import outputs

CHECKED_ENV = "FACTORY_CHECKED"  # set for the workers of a launch whose config the parent checked


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_distributed(cfg: RunConfig) -> dict[str, Any]:
    """Run ``cfg`` in ``cfg.nproc`` torchrun workers and return rank 0's metrics."""
    out = outputs.prepare_output_dir(cfg)
    data = cfg.to_dict()
    data["output_dir"] = str(out)
    # The parent already checked the folder; workers must not race each other over that check.
    data["overwrite_output_dir"] = True
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        yaml.safe_dump(data, fh)
        config_path = fh.name
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(cfg.nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "factory.cli",
        "finetune",
        config_path,
    ]
    try:
        proc = subprocess.run(cmd, check=False, env={**os.environ, CHECKED_ENV: "1"})
    finally:
        Path(config_path).unlink(missing_ok=True)
    if proc.returncode != 0:
        raise FactoryError(
            f"the {cfg.nproc}-process run failed with exit code {proc.returncode}; see the worker output above"
        )
    return json.loads((out / outputs.METRICS_FILE).read_text())
