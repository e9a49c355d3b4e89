"""What a run leaves in ``output_dir``: resolved config, metrics, loss plot, run record."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from factory.config import RunConfig
from factory.errors import ConfigError
from factory.plugins import PluginManager
from factory.train.checkpoints import STAGING_PREFIX, fsync_tree

CONFIG_FILE = "factory_config.yaml"
RECORD_FILE = "factory_run.json"
METRICS_FILE = "metrics.json"
PLOT_FILE = "training_loss.png"
OWNER_FILE = ".factory-output"  # marks a folder factory claimed for a run


def prepare_output_dir(cfg: RunConfig) -> Path:
    """The output folder, claimed for this run.

    A folder with files is refused unless told: ``resume=true`` continues it; ``overwrite_output_dir``
    empties it first, but only when factory wrote it (its marker file, or an older run's record),
    so a stale model of another method can never sit beside the new outputs and a folder of the
    user's own is never wiped.
    """
    out = Path(cfg.output_dir or f"outputs/{cfg.stage}-{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}")
    _refuse_unwritable(out)
    contents = [child for child in out.iterdir() if child.name != OWNER_FILE] if out.is_dir() else []
    if contents and not cfg.resume:
        if not cfg.overwrite_output_dir:
            raise ConfigError(
                f"output_dir '{out}' is not empty; pass overwrite_output_dir=true to replace it, "
                "resume=true to continue its run, or choose another folder"
            )
        if not any((out / name).exists() for name in (OWNER_FILE, RECORD_FILE, CONFIG_FILE)):
            raise ConfigError(
                f"output_dir '{out}' holds files factory did not write (e.g. '{sorted(c.name for c in contents)[0]}'); "
                "overwrite_output_dir=true only replaces factory's own runs: empty the folder yourself or choose another"
            )
        for child in contents:
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        claim = {"claimed": time.strftime("%Y-%m-%dT%H:%M:%S"), "created": created}
        (out / OWNER_FILE).write_text(json.dumps(claim), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"output_dir '{out}' cannot be written ({exc.strerror or exc}); choose a writable folder"
        ) from None
    return out


def release_output_dir(out: Path) -> None:
    """Undo :func:`prepare_output_dir` for a run that failed before writing anything: no empty folder is left behind."""
    marker = out / OWNER_FILE
    if not marker.is_file() or any(child.name != OWNER_FILE for child in out.iterdir()):
        return
    try:
        created = json.loads(marker.read_text(encoding="utf-8")).get("created", False)
    except ValueError:
        created = False
    marker.unlink()
    if created:
        out.rmdir()


def _refuse_unwritable(out: Path) -> None:
    """One sentence for an output folder that is a file, lies under a file, or cannot be created."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir '{out}' is a file; choose a folder")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"output_dir '{out}' lies under '{parent}', which is a file; choose a folder elsewhere"
                )
            where = out if out.exists() else parent
            if os.statvfs(where).f_flag & os.ST_RDONLY:
                raise ConfigError(
                    f"output_dir '{out}' cannot be written ('{where}' is on a read-only file system); choose a writable folder"
                )
            if not os.access(where, os.W_OK | os.X_OK):
                raise ConfigError(
                    f"output_dir '{out}' cannot be written ('{where}' is not writable); choose a writable folder"
                )
            return


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while finished files are renamed into place, then deliver them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, _frame: caught.append(signum)) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            signal.raise_signal(caught[0])


def save_final(out: Path, write: Callable[[Path], None]) -> None:
    """Write a run's final outputs with ``write(folder)`` into a staging folder, then move them into ``out``.

    Interrupted or failed (a full disk), the staging folder is removed and ``out`` keeps what it
    had: never a half-written or zero-byte adapter beside the checkpoints. The run record moves
    last, so its presence says the outputs beside it are whole.
    """
    staging = out / f"{STAGING_PREFIX}final"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        write(staging)
        fsync_tree(staging)
        with _interrupts_deferred():
            for child in sorted(staging.iterdir(), key=lambda c: c.name == RECORD_FILE):
                target = out / child.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(child, target)
            staging.rmdir()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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
    from factory.extras import hint, missing

    if missing("plots"):
        logging.getLogger(__name__).warning("%s not drawn: %s", PLOT_FILE, hint("plots"))
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
