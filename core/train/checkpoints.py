"""Checkpoints that are complete or absent, and resuming from the newest complete one.

The Trainer writes ``checkpoint-N`` in place, file after file: a process killed mid-way leaves a
folder that looks like a checkpoint and fails to load (or loads half old, half new). The
Trainer has no setting for where a checkpoint is staged, so :func:`stage_checkpoints` wraps the
one method that writes them (``_save_checkpoint``, the same for every Trainer subclass, TRL's
included): it writes into ``.partial-checkpoint-N``, records a manifest of every file and its
size, flushes the files to disk, and only then renames the folder to ``checkpoint-N``. A
``checkpoint-N`` therefore exists only when it is whole; :func:`choose_resume` still checks each
one (a disk can fail later) and names what it skipped and why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

STAGING_PREFIX = ".partial-"
MANIFEST = "factory_checkpoint.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` (and the folder entries) to disk."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    for path in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_manifest(folder: Path) -> None:
    """Record every file of ``folder`` with its size, so truncation is caught on resume."""
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1), encoding="utf-8")


def stage_checkpoints(trainer: Any) -> None:
    """Make ``trainer`` write each checkpoint into a staging folder and rename it into place when whole."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
    from transformers.trainer_utils import rotate_checkpoints as rotate

    save = trainer._save_checkpoint

    def staged_save(model: Any, trial: Any) -> None:
        run_dir = Path(trainer._get_output_dir(trial=trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
        staging_root = run_dir / f"{STAGING_PREFIX}{name}"
        # The Trainer joins its output dir and the checkpoint name: point it at the staging root.
        trainer._get_output_dir = lambda trial=None: str(staging_root)
        try:
            save(model, trial)
        finally:
            del trainer._get_output_dir  # back to the class's method
        trainer.accelerator.wait_for_everyone()  # every rank has written its part (sharded optimizers)
        if trainer.args.should_save:
            staged, target = staging_root / name, run_dir / name
            write_manifest(staged)
            fsync_tree(staged)
            if target.exists():  # the same step saved again (a resumed run): replace it whole
                shutil.rmtree(target)
            os.replace(staged, target)
            shutil.rmtree(staging_root, ignore_errors=True)
            best = trainer.state.best_model_checkpoint
            if best and best.startswith(str(staging_root)):
                trainer.state.best_model_checkpoint = str(run_dir / Path(best).name)
            rotate(
                output_dir=str(run_dir),
                save_total_limit=trainer.args.save_total_limit,
                best_model_checkpoint=trainer.state.best_model_checkpoint,
                use_mtime=False,
            )
        trainer.accelerator.wait_for_everyone()

    trainer._save_checkpoint = staged_save


def problem(folder: Path) -> str | None:
    """Why ``folder`` is not a loadable checkpoint (naming the file), or None when it is whole."""
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        except (ValueError, KeyError, TypeError):
            return f"its {MANIFEST} is unreadable"
        for rel, size in files.items():
            path = folder / rel
            if not path.is_file():
                return f"{rel} is missing"
            if path.stat().st_size != size:
                return f"{rel} is truncated ({path.stat().st_size} of {size} bytes)"
    elif not (folder / "trainer_state.json").is_file():
        return "it has no trainer_state.json"
    for path in sorted(folder.rglob("*")):
        reason = _unreadable(path) if path.is_file() else None
        if reason:
            return f"{path.relative_to(folder)} {reason}"
    return None


def _unreadable(path: Path) -> str | None:
    """A cheap structural check of one checkpoint file by its kind (no tensors are loaded)."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                fh.keys()
        elif path.suffix in (".pt", ".pth", ".bin") and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f"is corrupt (its entry {bad} fails its checksum)"
        elif path.suffix in (".pt", ".pth", ".bin"):
            return "is corrupt (not a readable torch file)"
    except Exception as exc:  # any failure to read is the reason to skip it
        return f"is corrupt ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'})"
    return None


def numbered(out: Path) -> list[Path]:
    """The ``checkpoint-N`` folders of ``out``, newest step first."""
    found = ((int(m.group(1)), p) for p in out.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name)))
    return [folder for _, folder in sorted(found, reverse=True)]


def choose_resume(out: Path) -> tuple[Path | None, list[tuple[str, str]]]:
    """The newest whole checkpoint of ``out`` and the (name, reason) of every newer one skipped.

    Staging folders of checkpoints interrupted while being written are listed and removed.
    """
    skipped: list[tuple[str, str]] = []
    for staging in sorted(out.glob(f"{STAGING_PREFIX}*")):
        skipped.append((staging.name, "it was interrupted while being written"))
        shutil.rmtree(staging, ignore_errors=True)
    for folder in numbered(out):
        reason = problem(folder)
        if reason is None:
            return folder, skipped
        skipped.append((folder.name, reason))
    return None, skipped


def latest_complete(out: Path) -> Path | None:
    """The newest whole checkpoint of ``out``, without touching anything (for messages)."""
    return next((folder for folder in numbered(out) if problem(folder) is None), None) if out.is_dir() else None
