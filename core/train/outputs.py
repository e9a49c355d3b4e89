"""What a run leaves in ``output_dir``: resolved config, metrics, loss plot, run record."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from factory.config import RunConfig
from factory.errors import ConfigError
from factory.plugins import PluginManager

CONFIG_FILE = "factory_config.yaml"
RECORD_FILE = "factory_run.json"
METRICS_FILE = "metrics.json"
PLOT_FILE = "training_loss.png"


def prepare_output_dir(cfg: RunConfig) -> Path:
    """The output folder, refusing to mix a new run into an old one unless told to."""
    out = Path(cfg.output_dir or f"outputs/{cfg.stage}-{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir '{out}' is a file; choose a folder")
    busy = out.is_dir() and any(out.iterdir())
    if busy and not (cfg.overwrite_output_dir or cfg.resume):
        raise ConfigError(
            f"output_dir '{out}' is not empty; pass overwrite_output_dir=true to replace it, "
            "resume=true to continue its run, or choose another folder"
        )
    if busy and cfg.overwrite_output_dir and not cfg.resume:
        for child in out.glob("checkpoint-*"):
            shutil.rmtree(child)  # stale checkpoints would otherwise be taken for this run's
    out.mkdir(parents=True, exist_ok=True)
    return out


def last_checkpoint(out: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(out)) if out.is_dir() else None


def _git_revision() -> str | None:
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except OSError:
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def write_config(out: Path, cfg: RunConfig) -> None:
    (out / CONFIG_FILE).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")


def write_record(out: Path, cfg: RunConfig, manager: PluginManager, started: float, extra: dict[str, Any]) -> None:
    """factory and plugin versions, library versions and the git revision: what is needed to redo the run."""
    record = {
        "factory": _version("factory-core"),
        "plugins": {r.name: {"distribution": r.distribution, "version": r.version} for r in manager.records.values()},
        "libraries": {name: _version(name) for name in ("torch", "transformers", "peft", "datasets", "accelerate")},
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_revision": _git_revision(),
        "argv": sys.argv,
        "stage": cfg.stage,
        "method": cfg.method,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 2),
        **extra,
    }
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")


def write_metrics(out: Path, metrics: dict[str, Any]) -> None:
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str), encoding="utf-8")


def plot_loss(out: Path, log_history: list[dict[str, Any]]) -> Path | None:
    """Training (and eval) loss against step, as a PNG; None when nothing was logged."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([s for s, _ in train], [v for _, v in train], label="train loss")
    if evals:
        ax.plot([s for s, _ in evals], [v for _, v in evals], marker="o", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / PLOT_FILE
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
